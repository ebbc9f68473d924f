"""Every reachable error code, as the plugin's Failure: ``VGPU_<CODE>`` with
``[message, details_json]``, details an object (SPEC section 4), on every variant.

NO_FREE_VM_ID is not reachable here: it needs all 4294967295 ids taken."""

import os
import sys

import pytest

from plugin_support import (CUDA_DEV, DB_PRIMARY, ML_TRAIN_B, RENDER_01, RENDER_02, SAMPLE_MEMBER, TWIN_HALTED,
                            TWIN_RUNNING)

MISSING_VM = "00000000-1111-4222-8333-444444444444"


def test_invalid_argument_unknown_key(pool):
    code, message, details = pool.fail("list", {"pool": "A", "colour": "red"})
    assert code == "VGPU_INVALID_ARGUMENT"
    assert '"colour"' in message
    assert details == {"argument": "argument for list", "value": "colour",
                       "reason": "it takes pool, priority, quarantined"}


@pytest.mark.parametrize("args,needle", [
    ({"vm-uuid": RENDER_01, "pool": "C", "priority": "low"}, '"C"'),
    ({"vm-uuid": RENDER_01, "pool": "A", "priority": "urgent"}, '"urgent"'),
    ({"vm-uuid": RENDER_01, "pool": "A", "priority": "low", "vm-id": "-1"}, '"-1"'),
    ({"vm-uuid": "not-a-uuid", "pool": "A", "priority": "low"}, '"not-a-uuid"'),
    ({"vm-uuid": RENDER_01, "pool": "A"}, "priority"),
    ({"vm-uuid": RENDER_01, "pool": "A", "priority": "low", "restart": "maybe"}, '"maybe"'),
])
def test_invalid_argument_values(pool, args, needle):
    code, message, details = pool.fail("register", args)
    assert code == "VGPU_INVALID_ARGUMENT"
    assert needle in message
    assert pool.call("list") == []


def test_vm_not_found(pool):
    code, message, details = pool.fail("register", {"vm-uuid": MISSING_VM, "pool": "A", "priority": "low"})
    assert code == "VGPU_VM_NOT_FOUND"
    assert MISSING_VM in message and MISSING_VM in details["selector"]


def test_ambiguous_vm_name(pool):
    code, message, details = pool.fail("register", {"vm-name": "twin", "pool": "A", "priority": "low"})
    assert code == "VGPU_AMBIGUOUS_VM_NAME"
    assert TWIN_RUNNING in message and TWIN_HALTED in message
    assert details["vm_name"] == "twin"
    assert sorted(c["vm_uuid"] for c in details["candidates"]) == sorted([TWIN_RUNNING, TWIN_HALTED])


def test_not_registered(pool):
    code, message, details = pool.fail("show", {"vm-uuid": RENDER_02})
    assert code == "VGPU_NOT_REGISTERED"
    assert RENDER_02 in message
    assert details["vm_uuid"] == RENDER_02


def test_already_registered(pool):
    pool.call("register", {"vm-uuid": RENDER_01, "pool": "A", "priority": "low"})
    code, message, details = pool.fail("register", {"vm-uuid": RENDER_01, "pool": "B", "priority": "high"})
    assert code == "VGPU_ALREADY_REGISTERED"
    assert details == {"vm_uuid": RENDER_01, "vm_name": "render-01", "pool": "A", "priority": "low", "vm_id": 1}


def test_vm_id_in_use(pool):
    pool.call("register", {"vm-uuid": RENDER_01, "pool": "A", "priority": "low", "vm-id": "100"})
    pool.call("register", {"vm-uuid": ML_TRAIN_B, "pool": "A", "priority": "low"})
    code, message, details = pool.fail("set-vm-id", {"vm-uuid": ML_TRAIN_B, "vm-id": "100"})
    assert code == "VGPU_VM_ID_IN_USE"
    assert message == "VM ID 100 already in use by VM %s (render-01)" % RENDER_01
    assert details == {"vm_id": 100, "vm_uuid": RENDER_01, "vm_name": "render-01", "next_free_vm_id": 2}


def test_xapi_error(pool):
    pool.sim.inject_fault("VM.get_all_records_where", code="INTERNAL_ERROR", params=["injected"])
    code, message, details = pool.fail("scan")
    assert code == "VGPU_XAPI_ERROR"
    assert details["xapi_code"] == "INTERNAL_ERROR" and details["xapi_params"] == ["injected"]


def test_database_error(pool):
    with open(pool.db(), "wb") as f:
        f.write(b"this is not an SQLite database\n" * 10)
    code, message, details = pool.fail("list")
    assert code == "VGPU_DATABASE_ERROR"
    assert details["path"] == pool.db()


def test_confirmation_required(pool):
    code, message, details = pool.fail("register", {"vm-uuid": CUDA_DEV, "pool": "A", "priority": "high",
                                                    "restart": "true"})
    assert code == "VGPU_CONFIRMATION_REQUIRED"
    assert pool.call("list") == []
    assert pool.sim.get_vm(CUDA_DEV)["power_state"] == "Running"


def test_vm_state(pool):
    code, message, details = pool.fail("register", {"vm-uuid": DB_PRIMARY, "pool": "A", "priority": "high",
                                                    "restart": "true", "yes": "true"})
    assert code == "VGPU_VM_STATE"
    assert details["vm_uuid"] == DB_PRIMARY


def test_internal_forwarded_call_on_a_member(pool):
    """A call that says it was forwarded, arriving at a host that is not the master: refused with
    INTERNAL instead of being forwarded again."""
    pool.sim.clear_call_log()
    code, message, details = pool.fail("list", {"forwarded-by": pool.master}, host=SAMPLE_MEMBER)
    assert code == "VGPU_INTERNAL", (code, message)
    assert "not the pool master" in message and SAMPLE_MEMBER in message
    assert len(pool.sim.call_log("host.call_plugin")) == 1  # ours only: no second hop


def test_internal_when_the_cli_is_missing(pool, workdir):
    missing = os.path.join(workdir, "no-such-vgpu-admin")
    pool.set_env(pool.master, VGPU_ADMIN=missing, VGPU_PLUGIN_BACKEND="cli")
    code, message, details = pool.fail("list")
    assert code == "VGPU_INTERNAL"
    assert "no-such-vgpu-admin" in message and details["admin_path"] == missing


def test_internal_when_the_cli_cannot_be_executed(pool, workdir):
    """A file that is there but not executable: the exec failure reaches the plugin as an error
    naming the file, not as a child that exits 255."""
    stub = os.path.join(workdir, "not-executable-vgpu-admin")
    with open(stub, "w") as f:
        f.write("not a program\n")
    os.chmod(stub, 0o644)
    pool.set_env(pool.master, VGPU_ADMIN=stub, VGPU_PLUGIN_BACKEND="cli")
    code, message, details = pool.fail("list")
    assert code == "VGPU_INTERNAL", (code, message)
    assert "not-executable-vgpu-admin" in message and details["admin_path"] == stub
    assert "ermission denied" in message, message


def test_internal_when_the_cli_is_killed_by_a_signal(pool, workdir):
    """vgpu-admin killed by a signal (the OOM killer, an administrator): the status is minus the
    signal, as subprocess reports it, and the call fails as INTERNAL."""
    stub = os.path.join(workdir, "killed-vgpu-admin")
    with open(stub, "w") as f:
        f.write("#!%s\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n" % sys.executable)
    os.chmod(stub, 0o755)
    pool.set_env(pool.master, VGPU_ADMIN=stub, VGPU_PLUGIN_BACKEND="cli")
    code, message, details = pool.fail("list")
    assert code == "VGPU_INTERNAL", (code, message)
    assert details["exit_status"] == -9, details


def test_internal_when_native_is_forced_but_missing(pool, workdir):
    pool.set_env(pool.master, VGPU_PLUGIN_BACKEND="native", VGPU_PYTHONPATH=os.path.join(workdir, "empty"))
    code, message, details = pool.fail("list")
    assert code == "VGPU_INTERNAL"
    assert "vgpu_registry" in message


def test_bad_backend_name(pool):
    pool.set_env(pool.master, VGPU_PLUGIN_BACKEND="rust")
    code, message, details = pool.fail("list")
    assert code == "VGPU_INVALID_ARGUMENT"
    assert details["argument"] == "VGPU_PLUGIN_BACKEND" and details["value"] == "rust"

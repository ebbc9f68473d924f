"""vgpu-admin on a pool member, and with --remote anywhere, forwards to the master's plugin
(SPEC §3): the registry lives on the master, members create none, codes survive the trip, and a
forwarded call is never forwarded again. The master's plugin is the real plugin/vgpu file, run
by the simulator the way xapi runs it (CLI backend, this suite's vgpu-admin)."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO_DIR, TESTS_DIR, Simulator, base_env, fixture_uuid

POOL3 = "three_host_pool.json"
MASTER = fixture_uuid(POOL3, "fwd-01", kind="hosts")
MEMBER_2 = fixture_uuid(POOL3, "fwd-02", kind="hosts")
MEMBER_3 = fixture_uuid(POOL3, "fwd-03", kind="hosts")
ALPHA = fixture_uuid(POOL3, "alpha")
BETA = fixture_uuid(POOL3, "beta")
DELTA = fixture_uuid(POOL3, "delta")
HOSTS = (MASTER, MEMBER_2, MEMBER_3)


@pytest.fixture(scope="module")
def pool3(tmp_path_factory):
    with Simulator(fixture="three_host_pool.json", transport="unix", plugin_python=sys.executable) as sim:
        yield sim


@pytest.fixture
def fwd(pool3, binary, tmp_path):
    pool3.reset()
    pool3.clear_call_log()
    dbs = {h: str(tmp_path / ("host-%s.db" % h[:8])) for h in HOSTS}
    for h in HOSTS:
        pool3.set_plugin_env(h, {
            "PYTHONPATH": os.path.join(TESTS_DIR, "plugin"),  # the XenAPIPlugin stand-in
            "VGPU_PLUGIN_BACKEND": "cli",
            "VGPU_ADMIN": binary,
            "VGPU_CONFIG": str(tmp_path / "absent.conf"),
            "VGPU_DB": dbs[h],
        })

    def run(host, *args, remote=False):
        env = base_env()
        env.update({"VGPU_XAPI": pool3.url, "VGPU_CONFIG": str(tmp_path / "absent.conf"),
                    "VGPU_DB": dbs.get(host, str(tmp_path / "workstation.db"))})
        if host in HOSTS:
            env["VGPU_HOST_UUID"] = host
        argv = [binary] + (["--remote"] if remote else []) + list(args)
        p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def rows(host):
        conn = sqlite3.connect(dbs[host])
        try:
            return conn.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id").fetchall()
        finally:
            conn.close()

    return run, rows, dbs, tmp_path


def test_member_forwards_to_the_master_and_creates_no_registry(fwd, pool3):
    run, rows, dbs, _ = fwd
    code, out, err = run(MEMBER_2, "--format", "json", "register-vm", "--vm-uuid", ALPHA,
                         "--pool", "B", "--priority", "high", "--vm-id", "7")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["vm_uuid"], doc["vm_id"], doc["pool"], doc["priority"]) == (ALPHA, 7, "B", "high")
    assert rows(MASTER) == [(ALPHA, 7, "B", 2)]
    # It went through the master's plugin, once; then the master had every other host refresh
    # its replica (SPEC §9), and each holds exactly the master's rows.
    plugin_calls = pool3.call_log("host.call_plugin")
    register = [c for c in plugin_calls if c["params"][3] == "register"]
    assert len(register) == 1 and register[0]["params"][2] == "vgpu"
    refreshes = sorted(c["params"][1] for c in plugin_calls if c["params"][3] == "refresh")
    assert refreshes == sorted(pool3.call("host.get_by_uuid", pool3.session, h) for h in (MEMBER_2, MEMBER_3))
    assert len(plugin_calls) == 3
    assert [r["ok"] for r in doc["replicas"]] == [True, True], doc["replicas"]
    assert rows(MEMBER_2) == rows(MEMBER_3) == rows(MASTER)
    # A read from the other member sees the same registry, in table form too.
    code, out, err = run(MEMBER_3, "list-vms")
    assert code == 0, err
    assert ALPHA in out and " 7 " in out


def test_master_runs_changes_itself_and_refreshes_the_replicas(fwd, pool3):
    run, rows, dbs, _ = fwd
    code, _, err = run(MASTER, "register-vm", "--vm-uuid", BETA, "--pool", "A", "--priority", "low")
    assert code == 0, err
    assert rows(MASTER) == [(BETA, 1, "A", 0)]
    # No plugin runs the change; the master only asks the other hosts to refresh their replicas.
    calls = pool3.call_log("host.call_plugin")
    assert sorted(c["params"][3] for c in calls) == ["refresh", "refresh"]
    assert rows(MEMBER_2) == rows(MASTER)


def test_remote_from_a_workstation_lands_on_the_master(fwd):
    run, rows, dbs, tmp = fwd
    code, _, err = run("workstation", "register-vm", "--vm-uuid", DELTA, "--pool", "A",
                       "--priority", "medium", remote=True)
    assert code == 0, err
    assert rows(MASTER) == [(DELTA, 1, "A", 1)]
    assert not os.path.exists(str(tmp / "workstation.db"))


def test_error_codes_survive_forwarding(fwd):
    run, rows, dbs, _ = fwd
    assert run(MEMBER_2, "register-vm", "--vm-uuid", ALPHA, "--pool", "A", "--priority", "low",
               "--vm-id", "3")[0] == 0
    code, out, err = run(MEMBER_3, "--format", "json", "register-vm", "--vm-uuid", BETA, "--pool", "A",
                         "--priority", "low", "--vm-id", "3")
    assert code == 1
    e = json.loads(err)["error"]
    assert e["code"] == "VM_ID_IN_USE"
    assert e["message"] == "VM ID 3 already in use by VM %s (alpha)" % ALPHA
    assert e["details"]["next_free_vm_id"] == 1
    # Table mode keeps the hint with the next free id.
    code, out, err = run(MEMBER_3, "register-vm", "--vm-uuid", BETA, "--pool", "A", "--priority", "low",
                         "--vm-id", "3")
    assert code == 1 and "hint: the next free vm_id is 1" in err, err
    assert rows(MASTER) == [(ALPHA, 3, "A", 0)]
    # Bad input is refused on the member already: exit 2, nothing forwarded.
    code, _, err = run(MEMBER_2, "set-pool", "--vm-uuid", ALPHA, "--pool", "Q")
    assert code == 2 and '"Q"' in err


def test_a_forwarded_call_on_a_non_master_is_refused_not_forwarded_again(fwd, pool3):
    run, rows, dbs, _ = fwd
    code, out, err = run(MEMBER_2, "call", "list", "forwarded-by=" + MEMBER_3)
    assert code == 1
    e = json.loads(err)["error"]
    assert e["code"] == "INTERNAL"
    assert "not the pool master" in e["message"] and MASTER in e["message"]
    assert pool3.call_log("host.call_plugin") == []


def test_master_without_the_plugin_is_a_clear_error(binary, tmp_path):
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    with Simulator(fixture="three_host_pool.json", plugin_dir=str(empty)) as sim:
        env = base_env()
        env.update({"VGPU_XAPI": sim.url, "VGPU_HOST_UUID": MEMBER_2,
                    "VGPU_DB": str(tmp_path / "m.db"), "VGPU_CONFIG": str(tmp_path / "absent.conf")})
        p = subprocess.run([binary, "list-pools"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.returncode == 1
        err = p.stderr.decode()
        assert "vgpu plugin is not installed" in err and MASTER in err, err
        assert not os.path.exists(str(tmp_path / "m.db"))


@pytest.mark.parametrize("drop", ["after", "before"])
def test_a_forwarded_change_whose_answer_is_lost_says_it_may_have_been_made(fwd, pool3, drop):
    """The connection to xapi breaks while a member's change is forwarded: before the master's
    plugin ran, or after it made the change. The member cannot tell which, so it says the master
    may have made it and how to look, never that it failed; what the scan then shows is whole."""
    run, rows, dbs, _ = fwd
    pool3.inject_fault("host.call_plugin", drop=drop)
    code, out, err = run(MEMBER_2, "--format", "json", "register-vm", "--vm-uuid", ALPHA,
                         "--pool", "B", "--priority", "high", "--vm-id", "7")
    assert code == 1, (code, out, err)
    e = json.loads(err)["error"]
    assert e["code"] == "XAPI_ERROR", e
    assert "may have made the change" in e["message"] and "vgpu-admin scan-vms" in e["message"], e
    assert MASTER in e["message"] and "register-vm" in e["message"], e
    code, out, err = run(MEMBER_2, "--format", "json", "scan-vms")
    assert code == 0, err
    scan = json.loads(out)
    registered = {r["vm_uuid"]: r for r in scan["registered"]}
    if drop == "after":
        assert rows(MASTER) == [(ALPHA, 7, "B", 2)]
        assert registered[ALPHA]["status"] == "configured", registered
        again = run(MEMBER_2, "--format", "json", "register-vm", "--vm-uuid", ALPHA, "--pool", "B",
                    "--priority", "high", "--vm-id", "7")
        assert again[0] == 1 and json.loads(again[2])["error"]["code"] == "ALREADY_REGISTERED", again
    else:
        assert ALPHA not in registered, registered
        assert not os.path.exists(dbs[MASTER]) or rows(MASTER) == []
        again = run(MEMBER_2, "register-vm", "--vm-uuid", ALPHA, "--pool", "B", "--priority", "high",
                    "--vm-id", "7")
        assert again[0] == 0, again
        assert rows(MASTER) == [(ALPHA, 7, "B", 2)]
    # A read whose answer is lost is only a failed read.
    pool3.inject_fault("host.call_plugin", drop="after")
    code, out, err = run(MEMBER_2, "--format", "json", "list-vms")
    assert code == 1 and "may have" not in err, err

"""Every command of `vgpu-admin` (SPEC §3), table and json, against the sample pool."""

import json
import shlex
import re
import subprocess

import pytest

from conftest import (
    CUDA_DEV, CUDA_DEV_DMA, DB_PRIMARY, DMA, LEGACY_STUB, LEGACY_STUB_DMA, ML_TRAIN_A, ML_TRAIN_A_DMA,
    ML_TRAIN_B, NOT_REAL_VMS, REAL_VMS, RENDER_01, RENDER_02, TWIN_HALTED, TWIN_RUNNING, WEB_01,
    Simulator, device_line, parse_error_doc, platforms, strip_timestamps,
)

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# the mediator's controls travel with every registration (SPEC section 10)
CONTROL_KEYS = {"weight", "max_jobs_per_sec", "max_queue_depth", "quarantined", "error_count"}
REGISTRATION_KEYS = {"vm_uuid", "vm_name", "vm_id", "pool", "priority", "created_at", "updated_at"} | CONTROL_KEYS
APPLIED_KEYS = REGISTRATION_KEYS | {"applied", "pending_restart", "restarted", "power_state", "device_model_args"}
PRIO_RANK = {"high": 0, "medium": 1, "low": 2}
PRIO_INT = {"low": 0, "medium": 1, "high": 2}
SUBCOMMANDS = ["scan-vms", "register-vm", "set-vm-id", "set-pool", "set-priority", "update-vm", "show-vm",
               "list-vms", "list-pools", "show-pool", "remove-vm", "status", "sync", "call", "functions", "completions",
               "man"]


def no_ansi(text):
    return "\x1b" not in text


def expected_order(regs):
    """SPEC: ordered by pool, priority (high first), vm_id."""
    return sorted(regs, key=lambda r: (r[1], PRIO_RANK[r[2]], r[3]))


# ------------------------------------------------------------------------------------------------
# scan-vms and the first registrations


def test_scan_of_the_fresh_pool(cli):
    doc = cli.run_json("scan-vms")
    assert doc["registered"] == [] and doc["stale"] == []
    got = {u["vm_uuid"]: (u["vm_name"], u["power_state"]) for u in doc["unregistered"]}
    assert got == REAL_VMS
    assert len(doc["unregistered"]) == 10
    dmas = {u["vm_uuid"]: u["device_model_args"] for u in doc["unregistered"]}
    assert dmas[CUDA_DEV] == CUDA_DEV_DMA and dmas[ML_TRAIN_A] == ML_TRAIN_A_DMA
    assert dmas[LEGACY_STUB] == LEGACY_STUB_DMA and dmas[RENDER_01] is None
    assert doc["summary"] == {"total_vms": 10, "registered": 0, "unregistered": 10, "stale": 0,
                              "configured": 0, "drift": 0, "not_applied": 0, "mirror_drift": 0}
    # what `adopt` would read: the device as written (SPEC §9)
    devices = {u["vm_uuid"]: u.get("device") for u in doc["unregistered"]}
    assert devices[RENDER_01] is None
    stub = shlex.split(LEGACY_STUB_DMA)[shlex.split(LEGACY_STUB_DMA).index("-device") + 1].split(",")
    props = dict(p.split("=", 1) for p in stub[1:] if "=" in p)
    assert devices[LEGACY_STUB] == {"device_type": stub[0], "pool": props.get("pool_id"),
                                    "priority": props.get("priority"), "vm_id": props.get("vm_id")}
    r = cli.ok("scan-vms")
    assert "=== Registered VMs (0) ===" in r.out
    assert "=== Unregistered VMs (10) ===" in r.out
    for u in REAL_VMS:
        assert u in r.out
    for u in NOT_REAL_VMS:
        assert u not in r.out
    for name in ("Ubuntu Jammy Jellyfish 22.04", "Other install media", "cuda-dev before driver upgrade",
                 "Control domain on host"):
        assert name not in r.out
    assert no_ansi(r.out) and r.err == ""


def test_seed_workflow(cli, sim):
    untouched = platforms(sim)
    # one with a chosen id, two automatic: the lowest free ids, gaps filled
    a = cli.register(RENDER_01, "A", "high", 2)
    assert set(a) == APPLIED_KEYS
    assert (a["vm_uuid"], a["vm_name"], a["vm_id"], a["pool"], a["priority"]) == (RENDER_01, "render-01", 2, "A", "high")
    assert RFC3339.match(a["created_at"]) and RFC3339.match(a["updated_at"])
    assert a["applied"] is True and a["pending_restart"] is True and a["restarted"] is False
    assert a["power_state"] == "Running"
    assert a["device_model_args"] == device_line("A", "high", 2)
    b = cli.register(RENDER_02, "B", "medium")
    assert b["vm_id"] == 1
    c = cli.register(ML_TRAIN_B, "B", "low")
    assert c["vm_id"] == 3
    assert c["pending_restart"] is False and c["power_state"] == "Halted"  # halted: nothing pending

    # the VMs carry the device line; every other platform key is untouched
    now = platforms(sim)
    for uuid, (pool, prio, vid) in {RENDER_01: ("A", "high", 2), RENDER_02: ("B", "medium", 1),
                                    ML_TRAIN_B: ("B", "low", 3)}.items():
        assert now[uuid][DMA] == device_line(pool, prio, vid)
        rest = dict(now[uuid])
        del rest[DMA]
        assert rest == untouched[uuid]
    for uuid in set(now) - {RENDER_01, RENDER_02, ML_TRAIN_B}:
        assert now[uuid] == untouched[uuid]

    # the registry file holds exactly these rows
    rows = [r[:5] for r in cli.dump()]
    assert rows == sorted([(2, RENDER_01, "render-01", "A", 2), (1, RENDER_02, "render-02", "B", 1),
                           (3, ML_TRAIN_B, "ml-train-b", "B", 0)], key=lambda r: r[1])

    # vm_id conflict: text, hint, details
    r = cli.run("register-vm", "--vm-uuid", TWIN_HALTED, "--pool", "A", "--priority", "low", "--vm-id", "2")
    assert r.code == 1
    assert r.err.splitlines() == ["error: VM ID 2 already in use by VM %s (render-01)" % RENDER_01,
                                  "hint: the next free vm_id is 4"]
    code, err = cli.json_error("register-vm", "--vm-uuid", TWIN_HALTED, "--pool", "A", "--priority", "low",
                               "--vm-id", "2", expect_code="VM_ID_IN_USE")
    assert err["details"]["next_free_vm_id"] == 4

    # set-vm-id
    s = cli.run_json("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "100")
    assert s["vm_id"] == 100 and s["device_model_args"] == device_line("A", "high", 100)
    assert cli.dma(RENDER_01) == device_line("A", "high", 100)
    # the freed id 2 is the next automatic one
    d = cli.register(TWIN_HALTED, "A", "low")
    assert d["vm_id"] == 2

    # scan: all configured, in the contract's order
    doc = cli.run_json("scan-vms")
    got = [(r["vm_uuid"], r["pool"], r["priority"], r["vm_id"], r["status"], r["drift"]) for r in doc["registered"]]
    want = [(RENDER_01, "A", "high", 100), (TWIN_HALTED, "A", "low", 2), (RENDER_02, "B", "medium", 1),
            (ML_TRAIN_B, "B", "low", 3)]
    assert got == [w + ("configured", []) for w in want]
    assert len(doc["unregistered"]) == 6
    assert doc["summary"] == {"total_vms": 10, "registered": 4, "unregistered": 6, "stale": 0,
                              "configured": 4, "drift": 0, "not_applied": 0, "mirror_drift": 0}
    r = cli.ok("scan-vms")
    assert "=== Registered VMs (4) ===" in r.out and "=== Unregistered VMs (6) ===" in r.out
    assert r.out.count("✓ configured") == 4
    assert no_ansi(r.out)


def test_register_table_output(cli):
    r = cli.ok("register-vm", "--vm-name", "render-02", "--pool", "b", "--priority", "medium", "--vm-id", "12")
    assert r.out.splitlines()[0] == "✓ Registered VM %s (render-02): pool B, priority medium, vm_id 12" % RENDER_02
    assert device_line("B", "medium", 12) in r.out
    assert "next start" in r.out  # running VM: pending until its next start
    assert no_ansi(r.out)


def test_register_with_a_name_to_store(cli, sim):
    out = cli.register(RENDER_01, "A", "low", None, "--vm-name", "renderer one")
    assert out["vm_name"] == "renderer one"
    assert cli.dump()[0][2] == "renderer one"
    assert sim.get_vm(RENDER_01)["name_label"] == "render-01"  # XAPI's name is not changed


def test_register_over_an_existing_vgpu_cuda_entry(cli):
    out = cli.run_json("register-vm", "--vm-name", "cuda-dev", "--pool", "B", "--priority", "low", "--vm-id", "5")
    assert out["vm_uuid"] == CUDA_DEV
    assert cli.dma(CUDA_DEV) == device_line("B", "low", 5)  # addr=5 kept once, values replaced


def test_sync_restart_needs_confirmation(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    sim.set_platform_key(RENDER_01, DMA, None)
    dump, plats = cli.dump(), platforms(sim)
    code, err = cli.json_error("sync", "--all", "--restart", expect_code="CONFIRMATION_REQUIRED")
    assert code == 1
    assert cli.dump() == dump and platforms(sim) == plats
    doc = cli.run_json("sync", "--all", "--restart", "--yes")
    assert doc["results"][0]["restarted"] is True and doc["results"][0]["action"] == "applied"
    assert cli.dma(RENDER_01) == device_line("A", "high", 1)


def test_register_by_unique_name_with_a_space(cli):
    out = cli.run_json("register-vm", "--vm-name", "web 01", "--pool", "A", "--priority", "low")
    assert out["vm_uuid"] == WEB_01 and out["vm_name"] == "web 01" and out["power_state"] == "Suspended"
    assert out["pending_restart"] is True


# ------------------------------------------------------------------------------------------------
# set-pool / set-priority / update-vm


def test_set_pool_set_priority_update_vm(cli, sim):
    cli.register(ML_TRAIN_A, "A", "high", 5)
    out = cli.run_json("set-pool", "--vm-name", "ml-train-a", "--pool", "B")
    assert (out["pool"], out["priority"], out["vm_id"]) == ("B", "high", 5)
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA + " " + device_line("B", "high", 5)
    out = cli.run_json("set-priority", "--vm-uuid", ML_TRAIN_A, "--priority", "1")
    assert (out["pool"], out["priority"], out["vm_id"]) == ("B", "medium", 5)
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA + " " + device_line("B", "medium", 5)
    out = cli.run_json("update-vm", "--vm-uuid", ML_TRAIN_A, "--priority", "low", "--vm-id", "9")
    assert (out["pool"], out["priority"], out["vm_id"]) == ("B", "low", 9)
    out = cli.run_json("update-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high", "--vm-id", "10")
    assert (out["pool"], out["priority"], out["vm_id"]) == ("A", "high", 10)
    assert out["applied"] is True and out["pending_restart"] is True
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA + " " + device_line("A", "high", 10)
    assert [r[:5] for r in cli.dump()] == [(10, ML_TRAIN_A, "ml-train-a", "A", 2)]
    # setting a VM's own vm_id again is not a conflict
    out = cli.run_json("set-vm-id", "--vm-uuid", ML_TRAIN_A, "--vm-id", "10")
    assert out["vm_id"] == 10
    # table
    r = cli.ok("set-pool", "--vm-uuid", ML_TRAIN_A, "--pool", "B")
    assert r.out.startswith("✓ Updated VM %s (ml-train-a): pool B, priority high, vm_id 10" % ML_TRAIN_A)
    # at least one field
    r = cli.run("update-vm", "--vm-uuid", ML_TRAIN_A)
    assert r.code == 2 and "at least one" in r.err
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA + " " + device_line("B", "high", 10)


def test_restart_of_running_and_halted_vms(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(ML_TRAIN_B, "A", "low", 2)
    sim.clear_call_log()
    out = cli.run_json("set-priority", "--vm-uuid", RENDER_01, "--priority", "medium", "--restart", "--yes")
    assert out["restarted"] is True and out["pending_restart"] is False and out["power_state"] == "Running"
    methods = [e["method"] for e in sim.call_log()]
    assert methods.count("VM.clean_shutdown") == 1 and methods.count("VM.start") == 1
    assert methods.index("VM.set_platform") < methods.index("VM.clean_shutdown") < methods.index("VM.start")
    assert sim.get_vm(RENDER_01)["power_state"] == "Running"
    # halted: not started
    sim.clear_call_log()
    out = cli.run_json("set-priority", "--vm-uuid", ML_TRAIN_B, "--priority", "high", "--restart")
    assert out["restarted"] is False and out["pending_restart"] is False and out["power_state"] == "Halted"
    assert sim.get_vm(ML_TRAIN_B)["power_state"] == "Halted"
    assert not {"VM.start", "VM.clean_shutdown"} & {e["method"] for e in sim.call_log()}
    assert cli.dma(ML_TRAIN_B) == device_line("A", "high", 2)
    # table: the restart is reported
    r = cli.ok("set-pool", "--vm-uuid", RENDER_01, "--pool", "B", "--restart", "--yes")
    assert "VM restarted" in r.out


# ------------------------------------------------------------------------------------------------
# show-vm


def test_show_vm_configured_drift_not_applied_stale(cli, sim):
    cli.register(RENDER_01, "A", "high", 4)
    doc = cli.run_json("show-vm", "--vm-name", "render-01")
    assert (doc["status"], doc["drift"], doc["power_state"]) == ("configured", [], "Running")
    assert doc["device_model_args"] == device_line("A", "high", 4)
    assert (doc["vm_uuid"], doc["vm_id"], doc["pool"], doc["priority"]) == (RENDER_01, 4, "A", "high")
    r = cli.ok("show-vm", "--vm-uuid", RENDER_01)
    assert "✓ configured" in r.out and RENDER_01 in r.out and no_ansi(r.out)

    # drift: changed by hand
    sim.set_platform_key(RENDER_01, DMA, "-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=40")
    doc = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert doc["status"] == "drift"
    assert sorted((d["field"], d["registry"], d["device"]) for d in doc["drift"]) == [
        ("pool", "A", "B"), ("vm_id", "4", "40")]
    r = cli.ok("show-vm", "--vm-uuid", RENDER_01)
    assert "⚠ drift" in r.out and "pool" in r.out

    # a property missing on the device: device is null
    sim.set_platform_key(RENDER_01, DMA, "-device vgpu-cuda,addr=5,pool_id=A,priority=high")
    doc = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert [(d["field"], d["registry"], d["device"]) for d in doc["drift"]] == [("vm_id", "4", None)]

    # not applied: no vgpu device
    sim.set_platform_key(RENDER_01, DMA, "-nographic")
    doc = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert (doc["status"], doc["drift"], doc["device_model_args"]) == ("not_applied", [], "-nographic")
    sim.set_platform_key(RENDER_01, DMA, None)
    doc = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert (doc["status"], doc["device_model_args"]) == ("not_applied", None)

    # stale: the VM is gone; still found by uuid and by its stored name
    sim.destroy_vm(RENDER_01)
    for sel in (("--vm-uuid", RENDER_01), ("--vm-name", "render-01")):
        doc = cli.run_json("show-vm", *sel)
        assert (doc["status"], doc["power_state"], doc["vm_id"]) == ("stale", None, 4)
    r = cli.ok("show-vm", "--vm-uuid", RENDER_01)
    assert "no longer exists" in r.out


def test_scan_reports_drift_not_applied_and_stale(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(RENDER_02, "A", "low", 2)
    cli.register(ML_TRAIN_B, "B", "low", 3)
    sim.set_platform_key(RENDER_01, DMA, device_line("A", "medium", 1))
    sim.set_platform_key(RENDER_02, DMA, None)
    sim.destroy_vm(ML_TRAIN_B)
    doc = cli.run_json("scan-vms")
    by = {r["vm_uuid"]: r for r in doc["registered"]}
    assert set(by) == {RENDER_01, RENDER_02}
    assert by[RENDER_01]["status"] == "drift"
    assert by[RENDER_01]["drift"] == [{"field": "priority", "registry": "high", "device": "medium"}]
    assert by[RENDER_02]["status"] == "not_applied"
    assert [s["vm_uuid"] for s in doc["stale"]] == [ML_TRAIN_B]
    assert doc["stale"][0]["vm_id"] == 3
    assert doc["summary"] == {"total_vms": 9, "registered": 2, "unregistered": 7, "stale": 1,
                              "configured": 0, "drift": 1, "not_applied": 1, "mirror_drift": 0}
    r = cli.ok("scan-vms")
    assert "=== Registered VMs (2) ===" in r.out and "=== Unregistered VMs (7) ===" in r.out
    assert "=== Stale registrations (1) ===" in r.out
    assert no_ansi(r.out)


# ------------------------------------------------------------------------------------------------
# list-vms, list-pools, show-pool


LISTED = [  # uuid, pool, priority, vm_id
    (RENDER_01, "B", "low", 7),
    (RENDER_02, "A", "low", 3),
    (ML_TRAIN_A, "A", "high", 9),
    (ML_TRAIN_B, "B", "high", 2),
    (CUDA_DEV, "A", "high", 4),
    (TWIN_HALTED, "A", "medium", 1),
    (LEGACY_STUB, "B", "medium", 30),
]


def test_list_vms_order_and_filters(cli):
    r = cli.ok("list-vms")
    assert r.out.strip() == "No registered VMs."
    assert cli.run_json("list-vms") == []
    for u, p, pr, i in LISTED:
        cli.register(u, p, pr, i)
    doc = cli.run_json("list-vms")
    assert all(set(d) == REGISTRATION_KEYS for d in doc)
    assert [(d["vm_uuid"], d["pool"], d["priority"], d["vm_id"]) for d in doc] == expected_order(LISTED)
    for pool in ("A", "b"):
        got = cli.run_json("list-vms", "--pool", pool)
        assert [d["vm_uuid"] for d in got] == [x[0] for x in expected_order(LISTED) if x[1] == pool.upper()]
    got = cli.run_json("list-vms", "--priority", "high")
    assert [d["vm_uuid"] for d in got] == [x[0] for x in expected_order(LISTED) if x[2] == "high"]
    got = cli.run_json("list-vms", "--pool", "B", "--priority", "1")
    assert [d["vm_uuid"] for d in got] == [LEGACY_STUB]
    r = cli.ok("list-vms")
    lines = [l for l in r.out.splitlines() if re.search(r"[0-9a-f]{8}-", l)]
    assert [l.split()[0] for l in lines] == [x[0] for x in expected_order(LISTED)]
    assert no_ansi(r.out)


def test_list_pools_and_show_pool(cli):
    for u, p, pr, i in LISTED:
        cli.register(u, p, pr, i)
    pools = cli.run_json("list-pools")
    assert [p["pool_id"] for p in pools] == ["A", "B"]
    for p in pools:
        mine = [x for x in LISTED if x[1] == p["pool_id"]]
        assert p["pool_name"] == "Pool " + p["pool_id"]
        assert p["enabled"] is True and p["description"] is None
        assert p["vm_count"] == len(mine)
        assert p["by_priority"] == {k: sum(1 for x in mine if x[2] == k) for k in ("low", "medium", "high")}
    for pool in ("A", "B"):
        sp = cli.run_json("show-pool", "--pool", pool.lower())
        assert sp["pool_id"] == pool and sp["vm_count"] == sum(1 for x in LISTED if x[1] == pool)
        assert [v["vm_uuid"] for v in sp["vms"]] == [x[0] for x in expected_order(LISTED) if x[1] == pool]
    r = cli.ok("list-pools")
    rows = [l.split() for l in r.out.splitlines() if l.strip().startswith(("A ", "B "))]
    # POOL NAME(2 words) ENABLED VMS HIGH MEDIUM LOW
    assert rows == [["A", "Pool", "A", "yes", "4", "2", "1", "1"], ["B", "Pool", "B", "yes", "3", "1", "1", "1"]]
    r = cli.ok("show-pool", "--pool", "B")
    for x in LISTED:
        assert (x[0] in r.out) == (x[1] == "B")


# ------------------------------------------------------------------------------------------------
# remove-vm


def test_remove_vm_live_and_stale(cli, sim):
    cli.register(ML_TRAIN_A, "A", "high", 1)
    cli.register(CUDA_DEV, "B", "low", 2)
    cli.register(ML_TRAIN_B, "A", "low", 3)
    before = platforms(sim)
    # foreign tokens are kept
    out = cli.run_json("remove-vm", "--vm-uuid", ML_TRAIN_A)
    assert out["removed"] is True and out["applied"] is True and out["vm_id"] == 1
    assert out["device_model_args"] == ML_TRAIN_A_DMA
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA
    # nothing else left: the key goes, every other platform key stays
    r = cli.ok("remove-vm", "--vm-name", "cuda-dev")
    assert r.out.startswith("✓ Removed VM %s (cuda-dev)" % CUDA_DEV)
    plat = cli.platform(CUDA_DEV)
    assert DMA not in plat
    expected = dict(before[CUDA_DEV])
    del expected[DMA]
    assert plat == expected
    assert [r[1] for r in cli.dump()] == [ML_TRAIN_B]
    # stale: registry only
    sim.destroy_vm(ML_TRAIN_B)
    sim.clear_call_log()
    out = cli.run_json("remove-vm", "--vm-uuid", ML_TRAIN_B)
    assert out["removed"] is True and out["applied"] is False and out["power_state"] is None
    assert cli.dump() == []
    assert not [e for e in sim.call_log() if "platform" in e["method"]]
    # removing again: not found anywhere
    code, err = cli.json_error("remove-vm", "--vm-uuid", ML_TRAIN_B, expect_code="VM_NOT_FOUND")


def test_remove_stale_vm_by_name_in_table_mode(cli, sim):
    cli.register(RENDER_02, "A", "high", 1)
    sim.destroy_vm(RENDER_02)
    r = cli.ok("remove-vm", "--vm-name", "render-02")
    assert "removed from the registry only" in r.out
    assert cli.dump() == []


# ------------------------------------------------------------------------------------------------
# status


def test_status(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(RENDER_02, "A", "medium", 2)
    cli.register(ML_TRAIN_B, "B", "low", 3)
    cli.register(CUDA_DEV, "B", "high", 4)
    sim.set_platform_key(RENDER_01, DMA, device_line("A", "high", 11))
    sim.set_platform_key(RENDER_02, DMA, None)
    sim.destroy_vm(ML_TRAIN_B)
    doc = cli.run_json("status")
    assert doc["summary"] == {"total_vms": 9, "registered": 3, "unregistered": 6, "stale": 1,
                              "configured": 1, "drift": 1, "not_applied": 1, "mirror_drift": 0}
    assert [v["vm_uuid"] for v in doc["drift"]] == [RENDER_01]
    assert [v["vm_uuid"] for v in doc["not_applied"]] == [RENDER_02]
    assert doc["stale"] == [{"vm_uuid": ML_TRAIN_B, "vm_name": "ml-train-b"}]
    assert doc["problems"] == []
    counts = {p["pool_id"]: (p["vm_count"], p["by_priority"]) for p in doc["pools"]}
    assert counts == {"A": (2, {"low": 0, "medium": 1, "high": 1}), "B": (2, {"low": 1, "medium": 0, "high": 1})}
    r = cli.ok("status")
    assert "=== Pools ===" in r.out
    for u in (RENDER_01, RENDER_02, ML_TRAIN_B):
        assert u in r.out
    assert "sync --all" in r.out
    assert no_ansi(r.out)


# ------------------------------------------------------------------------------------------------
# sync


def make_sync_state(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)    # -> drift
    cli.register(ML_TRAIN_A, "B", "low", 2)    # -> not applied + renamed
    cli.register(RENDER_02, "A", "medium", 3)  # -> configured, untouched
    cli.register(ML_TRAIN_B, "B", "high", 4)  # -> renamed only
    sim.set_platform_key(RENDER_01, DMA, "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=99")
    sim.set_platform_key(ML_TRAIN_A, DMA, ML_TRAIN_A_DMA)
    sim.set_vm(ML_TRAIN_A, name_label="trainer-a")
    sim.set_vm(ML_TRAIN_B, name_label="trainer-b")


def test_sync_dry_run_changes_nothing(cli, sim):
    make_sync_state(cli, sim)
    dump, plats = cli.dump(), platforms(sim)
    doc = cli.run_json("sync", "--all", "--dry-run")
    assert doc["dry_run"] is True and doc["failed"] == 0
    by = {r["vm_uuid"]: (r["status_before"], r["action"]) for r in doc["results"]}
    assert by == {RENDER_01: ("drift", "would_apply"), ML_TRAIN_A: ("not_applied", "would_apply"),
                  RENDER_02: ("configured", "unchanged"), ML_TRAIN_B: ("configured", "would_rename")}
    r = cli.ok("sync", "--all", "--dry-run")
    assert "would apply" in r.out
    r = cli.ok("sync", "--vm-uuid", RENDER_01, "--dry-run", "--restart", "--yes")
    assert cli.dump() == dump and platforms(sim) == plats
    assert sim.get_vm(RENDER_01)["power_state"] == "Running"


def test_sync_all_reapplies_and_renames(cli, sim):
    make_sync_state(cli, sim)
    r2_before = cli.platform(RENDER_02)
    doc = cli.run_json("sync", "--all")
    assert doc["dry_run"] is False and doc["failed"] == 0
    by = {r["vm_uuid"]: r for r in doc["results"]}
    assert by[RENDER_01]["action"] == "applied" and by[RENDER_01]["pending_restart"] is True
    assert by[ML_TRAIN_A]["action"] == "applied" and by[ML_TRAIN_A]["vm_name"] == "trainer-a"
    assert by[RENDER_02]["action"] == "unchanged"
    assert by[ML_TRAIN_B]["action"] == "renamed" and by[ML_TRAIN_B]["vm_name"] == "trainer-b"
    assert cli.dma(RENDER_01) == device_line("A", "high", 1)
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA + " " + device_line("B", "low", 2)
    assert cli.platform(RENDER_02) == r2_before
    assert cli.dma(ML_TRAIN_B) == device_line("B", "high", 4)
    names = {r[1]: r[2] for r in cli.dump()}
    assert names == {RENDER_01: "render-01", ML_TRAIN_A: "trainer-a", RENDER_02: "render-02", ML_TRAIN_B: "trainer-b"}
    assert all(r["status"] == "configured" for r in cli.run_json("scan-vms")["registered"])
    again = cli.run_json("sync", "--all")
    assert {r["action"] for r in again["results"]} == {"unchanged"}


def test_sync_one_vm_only(cli, sim):
    make_sync_state(cli, sim)
    doc = cli.run_json("sync", "--vm-uuid", RENDER_01)
    assert [(r["vm_uuid"], r["action"]) for r in doc["results"]] == [(RENDER_01, "applied")]
    assert cli.dma(RENDER_01) == device_line("A", "high", 1)
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA  # not touched
    doc = cli.run_json("sync", "--vm-name", "trainer-a")
    assert [(r["vm_uuid"], r["action"]) for r in doc["results"]] == [(ML_TRAIN_A, "applied")]
    r = cli.run("sync", "--all", "--vm-name", "trainer-a")
    assert r.code == 2


def test_sync_reports_stale_vms(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    sim.destroy_vm(RENDER_01)
    doc = cli.run_json("sync", "--all")
    assert [(r["vm_uuid"], r["action"]) for r in doc["results"]] == [(RENDER_01, "stale")]
    assert doc["failed"] == 0
    assert len(cli.dump()) == 1


# ------------------------------------------------------------------------------------------------
# call


def test_call_answers_as_the_json_format(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(ML_TRAIN_B, "B", "low", 2)
    pairs = [
        (("call", "scan"), ("scan-vms",)),
        (("call", "list"), ("list-vms",)),
        (("call", "list", "pool=B"), ("list-vms", "--pool", "B")),
        (("call", "list-pools"), ("list-pools",)),
        (("call", "list_pools"), ("list-pools",)),
        (("call", "show-pool", "pool=A"), ("show-pool", "--pool", "A")),
        (("call", "show", "vm-uuid=" + RENDER_01), ("show-vm", "--vm-uuid", RENDER_01)),
        (("call", "show", "vm_name=ml-train-b"), ("show-vm", "--vm-name", "ml-train-b")),
        (("call", "status"), ("status",)),
        (("call", "sync", "all=true", "dry-run=true"), ("sync", "--all", "--dry-run")),
    ]
    for call_argv, cmd_argv in pairs:
        r = cli.ok(*call_argv)
        assert r.out.endswith("\n") and r.out.count("\n") == 1, r.out  # one line
        assert r.out.isascii()
        assert json.loads(r.out) == cli.run_json(*cmd_argv), call_argv


def test_call_mutations_match_the_commands(cli, sim, tmp_path):
    # the same operation through call and through the command, each on its own fresh registry
    ops = [
        (("call", "register", "vm-uuid=" + RENDER_01, "pool=A", "priority=high"),
         ("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")),
        (("call", "set_vm_id", "vm_uuid=" + RENDER_01, "vm_id=9"),
         ("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "9")),
        (("call", "set-pool", "vm-name=render-01", "pool=b"), ("set-pool", "--vm-name", "render-01", "--pool", "b")),
        (("call", "set_priority", "vm-uuid=" + RENDER_01, "priority=0"),
         ("set-priority", "--vm-uuid", RENDER_01, "--priority", "0")),
        (("call", "update", "vm-uuid=" + RENDER_01, "pool=A", "vm-id=3"),
         ("update-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--vm-id", "3")),
        (("call", "remove", "vm-uuid=" + RENDER_01), ("remove-vm", "--vm-uuid", RENDER_01)),
    ]
    results = {}
    for which in ("call", "cmd"):
        sim.reset()
        cli.use_db(tmp_path / which / "vgpu_config.db")
        outs = []
        for call_argv, cmd_argv in ops:
            if which == "call":
                r = cli.ok(*call_argv)
                assert r.out.count("\n") == 1
                outs.append(json.loads(r.out))
            else:
                outs.append(cli.run_json(*cmd_argv))
        results[which] = (outs, strip_timestamps(cli.dump()), cli.platform(RENDER_01))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("created_at", "updated_at")}
    assert [strip(o) for o in results["call"][0]] == [strip(o) for o in results["cmd"][0]]
    assert results["call"][1:] == results["cmd"][1:]
    assert results["call"][0][1]["vm_id"] == 9 and results["call"][0][-1]["removed"] is True


def test_call_errors_are_json(cli):
    r = cli.run("call", "register", "vm-uuid=" + RENDER_01, "pool=A", "priority=high", "colour=red")
    assert r.code == 2 and r.out == ""
    err = parse_error_doc(r.err)
    assert err["code"] == "INVALID_ARGUMENT" and '"colour"' in err["message"]
    assert "pool" in err["message"]  # says which keys it takes
    r = cli.run("call", "show", "vm-uuid=" + RENDER_01)
    assert r.code == 1 and parse_error_doc(r.err)["code"] == "NOT_REGISTERED"
    assert cli.dump() is None  # reading created no registry


def test_call_output_is_ascii(cli):
    name = "caf\u00e9 \u2713 \U0001F600"
    cli.register(RENDER_01, "A", "high", 1, "--vm-name", name)
    r = cli.ok("call", "show", "vm-uuid=" + RENDER_01)
    assert r.out.isascii() and "\\u00e9" in r.out
    assert json.loads(r.out)["vm_name"] == name
    assert cli.run_json("show-vm", "--vm-uuid", RENDER_01)["vm_name"] == name


# ------------------------------------------------------------------------------------------------
# the legacy vgpu-stub VM


def test_register_replaces_a_legacy_stub_entry_in_place(cli, sim):
    before = cli.platform(LEGACY_STUB)
    out = cli.register(LEGACY_STUB, "A", "high", 4)
    assert out["device_model_args"] == "-device vgpu-cuda,pool_id=A,priority=high,vm_id=4"
    assert cli.dma(LEGACY_STUB) == "-device vgpu-cuda,pool_id=A,priority=high,vm_id=4"
    after = cli.platform(LEGACY_STUB)
    assert {k: v for k, v in after.items() if k != DMA} == {k: v for k, v in before.items() if k != DMA}
    assert cli.run_json("show-vm", "--vm-uuid", LEGACY_STUB)["status"] == "configured"


def test_legacy_stub_with_neighbours_and_extra_properties(cli, sim):
    sim.set_platform_key(LEGACY_STUB, DMA, "-m 1 -device vgpu-stub,pool_id=B,foo=bar,priority=1,vm_id=3 -nographic")
    cli.register(LEGACY_STUB, "A", "high", 4)
    assert cli.dma(LEGACY_STUB) == "-m 1 -device vgpu-cuda,pool_id=A,foo=bar,priority=high,vm_id=4 -nographic"
    cli.ok("remove-vm", "--vm-uuid", LEGACY_STUB)
    assert cli.dma(LEGACY_STUB) == "-m 1 -nographic"


def test_legacy_stub_drift_is_reported(cli, sim):
    cli.register(LEGACY_STUB, "B", "medium", 3)
    sim.set_platform_key(LEGACY_STUB, DMA, LEGACY_STUB_DMA)  # as the old tool left it
    doc = cli.run_json("scan-vms")
    [entry] = doc["registered"]
    assert entry["status"] == "drift"
    assert sorted((d["field"], d["registry"], d["device"]) for d in entry["drift"]) == [
        ("device_type", "vgpu-cuda", "vgpu-stub"), ("priority", "medium", "1")]
    r = cli.ok("scan-vms")
    assert "⚠ drift" in r.out and "priority" in r.out
    doc = cli.run_json("sync", "--all")
    assert doc["results"][0]["action"] == "applied"
    assert cli.dma(LEGACY_STUB) == "-device vgpu-cuda,pool_id=B,priority=medium,vm_id=3"


# ------------------------------------------------------------------------------------------------
# configuration and connection


def test_config_file_device_db_and_xapi(cli, sim, tmp_path):
    db = tmp_path / "from-config" / "reg.db"
    cfg = tmp_path / "vgpu.conf"
    cfg.write_text('db_path = "%s"\nxapi = "%s"\n[device]\ntype = "vgpu-cuda"\nextra = "addr=7,x-flag"\n'
                   "[restart]\nshutdown_timeout_s = 30\n" % (db, sim.url))
    env = {"VGPU_CONFIG": str(cfg), "VGPU_DB": None, "VGPU_XAPI": None}
    r = cli.run("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "low", "--format", "json", env=env)
    assert r.code == 0, r
    assert cli.dma(RENDER_01) == "-device vgpu-cuda,addr=7,x-flag,pool_id=A,priority=low,vm_id=1"
    assert db.exists() and not __import__("os").path.exists(cli.db)
    r = cli.run("--config", str(cfg), "show-vm", "--vm-uuid", RENDER_01, "--format", "json",
                env={"VGPU_CONFIG": None, "VGPU_DB": None, "VGPU_XAPI": None})
    assert r.code == 0 and json.loads(r.out)["status"] == "configured"


def test_existing_session_is_reused(cli, sim):
    session = sim.login()
    sim.clear_call_log()
    cli.ok("scan-vms", env={"VGPU_XAPI_SESSION": session})
    methods = [e["method"] for e in sim.call_log()]
    assert methods == ["VM.get_all_records_where"]
    assert sim.call_log()[0]["params"][0] == session


def test_scan_over_tcp_with_password(binary, tmp_path):
    from conftest import Cli
    with Simulator(transport="tcp") as tcp:
        c = Cli(binary, tcp, tmp_path)
        assert c.env["VGPU_XAPI"].startswith("http://")
        doc = c.run_json("scan-vms", env={"VGPU_XAPI_USER": "root", "VGPU_XAPI_PASSWORD": "password"})
        assert doc["summary"]["unregistered"] == 10
        r = c.run("scan-vms", "--format", "json", env={"VGPU_XAPI_USER": "root", "VGPU_XAPI_PASSWORD": "wrong"})
        assert r.code == 1 and parse_error_doc(r.err)["code"] == "XAPI_ERROR"
        assert "SESSION_AUTHENTICATION_FAILED" in r.err
        pw = tmp_path / "pw"
        pw.write_text("password\n")
        pw.chmod(0o600)
        r = c.run("--xapi-password-file", str(pw), "list-vms", "--format", "json")
        assert r.code == 0 and json.loads(r.out) == []
        r = c.run("scan-vms")
        assert r.code == 2 and "password" in r.err


# ------------------------------------------------------------------------------------------------
# help, completions, man, table hygiene


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_has_an_example(cli, sub):
    r = cli.ok(sub, "--help")
    assert re.search(r"^Example: vgpu-admin %s\b" % re.escape(sub), r.out, re.M) or \
        (sub == "call" and "Example: vgpu-admin call" in r.out), r.out
    assert no_ansi(r.out)


def test_top_level_help_and_version(cli):
    r = cli.ok("--help")
    for sub in SUBCOMMANDS:
        assert sub in r.out
    assert "Exit status" in r.out
    r = cli.ok("--version")
    assert r.out.startswith("vgpu-admin ")


def test_completions_and_man(cli):
    r = cli.ok("completions", "bash")
    assert len(r.out) > 500 and "register-vm" in r.out and "vgpu-admin" in r.out
    r = cli.ok("completions", "zsh")
    assert "register-vm" in r.out
    r = cli.ok("man")
    assert r.out.startswith(".") or r.out.startswith("'")
    assert ".TH" in r.out and "register" in r.out
    r = cli.run("completions", "tcsh")
    assert r.code == 2


def test_no_colour_when_not_a_terminal(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    sim.set_platform_key(RENDER_01, DMA, None)
    for argv in [("scan-vms",), ("status",), ("list-vms",), ("list-pools",), ("show-vm", "--vm-uuid", RENDER_01),
                 ("sync", "--all", "--dry-run"), ("show-pool", "--pool", "A")]:
        r = cli.ok(*argv)
        assert r.out and no_ansi(r.out) and no_ansi(r.err), argv
        r = cli.ok(*argv, env={"TERM": "xterm-256color", "CLICOLOR_FORCE": None})
        assert no_ansi(r.out), argv


def test_json_is_one_document_with_nothing_on_stderr(cli):
    cli.register(RENDER_01, "A", "high", 1)
    for argv in [("scan-vms",), ("status",), ("list-vms",), ("list-pools",), ("show-pool", "--pool", "A"),
                 ("show-vm", "--vm-uuid", RENDER_01), ("sync", "--all")]:
        r = cli.ok(*(argv + ("--format", "json")))
        json.loads(r.out)
        assert r.err == "", (argv, r.err)
    # --format before the command works too
    r = cli.ok("--format=json", "list-vms")
    assert json.loads(r.out)[0]["vm_uuid"] == RENDER_01


def test_escape_sequences_in_xapi_names_are_not_printed_raw(cli, sim):
    sim.set_vm(RENDER_01, name_label="evil\x1b]0;pwned\x07\x1b[31mred")
    r = cli.ok("scan-vms")
    assert no_ansi(r.out), r.out
    r = cli.run("show-vm", "--vm-uuid", RENDER_01)
    assert r.code == 1 and no_ansi(r.err), r.err


def test_usage_line_does_not_list_env_options_as_required(cli):
    r = cli.run("set-pool", "--pool", "B")
    assert r.code == 2
    usage = [l for l in r.err.splitlines() if l.startswith("Usage:")][0]
    assert "--db <PATH>" not in usage and "--xapi <URL>" not in usage, usage


def test_show_vm_table_escapes_device_model_args(cli, sim):
    """Strings from XAPI go through one escaping cell: an escape sequence in device-model-args
    (or a name) never reaches the terminal, while JSON keeps the value exactly."""
    cli.register(RENDER_01, "A", "high", 5)
    hostile = device_line("A", "high", 5) + " -name \x1b]0;pwned\x07\x1b[2J"
    sim.set_platform_key(RENDER_01, DMA, hostile)
    sim.set_vm(RENDER_01, name_label="render\x1b[31m-01")
    for args in (["show-vm", "--vm-uuid", RENDER_01], ["scan-vms"], ["sync", "--all", "--dry-run"],
                 ["list-vms"], ["status"]):
        out = cli.ok(*args).out
        assert no_ansi(out) and "\x07" not in out, (args, out)
    out = cli.ok("show-vm", "--vm-uuid", RENDER_01).out
    assert "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J" in out, out
    assert cli.run_json("show-vm", "--vm-uuid", RENDER_01)["device_model_args"] == hostile


def test_function_table_is_what_dispatch_accepts(cli):
    """`vgpu-admin functions --format json` is the table every front end is tested against: each
    function's command exists, and `call` accepts exactly the keys the table lists."""
    table = cli.run_json("functions")
    names = [f["name"] for f in table["functions"]]
    assert names == ["scan", "register", "set-vm-id", "set-pool", "set-priority", "update", "show", "list",
                     "list-pools", "show-pool", "remove", "status", "sync",  # SPEC section 4
                     "refresh", "adopt", "rebuild",  # SPEC section 9
                     "set-weight", "set-rate-limit", "quarantine", "clear-quarantine", "show-weights",
                     "show-rate-limits", "mediator"]  # SPEC section 10
    # only refresh and mediator act on the host they are called on
    assert [f["name"] for f in table["functions"] if f["local"]] == ["refresh", "mediator"]
    declared = {a["key"]: a for a in table["arguments"]}
    for f in table["functions"]:
        assert f["vm"] in ("none", "required", "optional")
        keys = f["required"] + f["optional"] + f["flags"]
        assert set(keys) <= set(declared), f
        assert all(declared[k]["flag"] for k in f["flags"]), f
        assert ("vm-uuid" in f["optional"]) == (f["vm"] != "none"), f
        assert cli.run(f["command"], "--help").code == 0, f["command"]
        code, err = cli.json_error("call", f["name"], "bogus-key=1", expect_code="INVALID_ARGUMENT")
        assert code == 2
        taken = err["message"].split(": it takes ", 1)[-1]
        if keys:
            assert sorted(taken.split(", ")) == sorted(keys), (f["name"], err["message"])
        else:
            assert err["message"].endswith("it takes no arguments"), err["message"]
        for key in f["required"]:
            partial = ["%s=x" % k for k in f["required"] if k != key]
            code, err = cli.json_error("call", f["name"], *partial, expect_code="INVALID_ARGUMENT")
            assert code == 2 and "needs %s" % key in err["message"] or "needs the VM" in err["message"], err
    codes = table["error_codes"]
    assert "INVALID_ARGUMENT" in codes and "VM_ID_IN_USE" in codes and len(codes) == len(set(codes))
    text = cli.ok("functions").out
    for f in table["functions"]:
        assert re.search(r"^\s*%s\s+%s\s" % (re.escape(f["name"]), re.escape(f["command"])), text, re.M), text

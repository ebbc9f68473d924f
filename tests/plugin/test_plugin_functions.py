"""Every function of the plugin through host.call_plugin (PyPI XenAPI client -> simulator -> the real
plugin file), on every variant. The answers are the core's JSON documents (SPEC section 3)."""

import sqlite3

import pytest

from plugin_support import (CUDA_DEV, DB_PRIMARY, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, RENDER_01, RENDER_02,
                            TWIN_HALTED, TWIN_RUNNING, WEB_01, function_names, function_names_or_placeholder)

REGISTRATION_KEYS = {"vm_uuid", "vm_name", "vm_id", "pool", "priority", "created_at", "updated_at"}
# The mediator's controls (SPEC section 10), with the defaults a new registration gets.
CONTROL_DEFAULTS = {"weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0, "quarantined": False,
                    "error_count": 0}
REGISTRATION_KEYS |= set(CONTROL_DEFAULTS)


def registered(pool, vm, p="A", priority="high", **extra):
    args = {"vm-uuid": vm, "pool": p, "priority": priority}
    args.update(extra)
    return pool.call("register", args)


def dma(pool, vm):
    return pool.sim.get_vm(vm)["platform"].get("device-model-args")


def test_register_assigns_the_lowest_free_id_and_writes_the_device(pool):
    out = registered(pool, RENDER_01, "a", "HIGH")
    assert REGISTRATION_KEYS <= set(out)
    assert dict((k, out[k]) for k in CONTROL_DEFAULTS) == CONTROL_DEFAULTS
    assert (out["vm_uuid"], out["vm_name"], out["vm_id"], out["pool"], out["priority"]) == (
        RENDER_01, "render-01", 1, "A", "high")
    assert (out["applied"], out["pending_restart"], out["restarted"]) == (True, True, False)
    assert dma(pool, RENDER_01) == "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"
    out = pool.call("register", {"vm-name": "ml-train-b", "pool": "B", "priority": "0", "vm-id": "42"})
    assert (out["vm_uuid"], out["vm_id"], out["priority"], out["pending_restart"]) == (ML_TRAIN_B, 42, "low", False)
    with sqlite3.connect(pool.db()) as c:
        rows = c.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id").fetchall()
    assert rows == [(RENDER_01, 1, "A", 2), (ML_TRAIN_B, 42, "B", 0)]


@pytest.mark.parametrize("fn,args,field,value", [
    ("set-vm-id", {"vm-id": "77"}, "vm_id", 77),
    ("set-pool", {"pool": "b"}, "pool", "B"),
    ("set-priority", {"priority": "medium"}, "priority", "medium"),
])
def test_single_field_changes(pool, fn, args, field, value):
    registered(pool, ML_TRAIN_B)
    a = {"vm-uuid": ML_TRAIN_B}
    a.update(args)
    out = pool.call(fn, a)
    assert out[field] == value
    assert out["applied"] is True and out["pending_restart"] is False  # halted VM
    assert pool.call("show", {"vm-uuid": ML_TRAIN_B})[field] == value
    expected = {"vm_id": "vm_id=77", "pool": "pool_id=B", "priority": "priority=medium"}[field]
    assert expected in dma(pool, ML_TRAIN_B)


def test_update_changes_several_fields(pool):
    registered(pool, RENDER_02, "A", "low")
    out = pool.call("update", {"vm-name": "render-02", "pool": "B", "priority": "2", "vm-id": "9"})
    assert (out["pool"], out["priority"], out["vm_id"], out["pending_restart"]) == ("B", "high", 9, True)
    assert dma(pool, RENDER_02) == "-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=9"


def test_show_has_live_state(pool):
    registered(pool, CUDA_DEV, "A", "high")
    out = pool.call("show", {"vm-uuid": CUDA_DEV.upper()})
    assert out["vm_uuid"] == CUDA_DEV and out["vm_id"] == 1
    assert out["power_state"] == "Running"
    assert out["status"] == "configured"
    assert out["device_model_args"] == "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"


def test_list_orders_and_filters(pool):
    registered(pool, RENDER_01, "B", "low")
    registered(pool, RENDER_02, "A", "low")
    registered(pool, ML_TRAIN_A, "A", "high")
    everything = pool.call("list")
    assert [(r["pool"], r["priority"], r["vm_uuid"]) for r in everything] == [
        ("A", "high", ML_TRAIN_A), ("A", "low", RENDER_02), ("B", "low", RENDER_01)]
    assert all(REGISTRATION_KEYS <= set(r) for r in everything)
    assert [r["vm_uuid"] for r in pool.call("list", {"pool": "a", "priority": "low"})] == [RENDER_02]
    assert pool.call("list", {"pool": "B", "priority": "high"}) == []


def test_list_pools_and_show_pool(pool):
    registered(pool, RENDER_01, "B", "low")
    registered(pool, RENDER_02, "B", "high")
    pools = pool.call("list-pools")
    assert [p["pool_id"] for p in pools] == ["A", "B"]
    b = pools[1]
    assert (b["pool_name"], b["enabled"], b["vm_count"], b["by_priority"]) == (
        "Pool B", True, 2, {"low": 1, "medium": 0, "high": 1})
    shown = pool.call("show-pool", {"pool": "b"})
    assert shown["pool_id"] == "B" and shown["vm_count"] == 2
    assert sorted(v["vm_uuid"] for v in shown["vms"]) == sorted([RENDER_01, RENDER_02])


def test_scan_classifies_every_vm(pool):
    registered(pool, RENDER_01)
    out = pool.call("scan")
    assert set(out) == {"registered", "unregistered", "stale", "summary"}
    assert [r["vm_uuid"] for r in out["registered"]] == [RENDER_01]
    assert out["registered"][0]["status"] == "configured"
    assert out["summary"]["total_vms"] == 10
    assert out["summary"]["registered"] == 1 and out["summary"]["unregistered"] == 9
    assert {u["vm_uuid"] for u in out["unregistered"]} >= {CUDA_DEV, TWIN_RUNNING, TWIN_HALTED, LEGACY_STUB}


def test_status_summarises(pool):
    registered(pool, RENDER_01)
    pool.sim.set_platform_key(RENDER_01, "device-model-args",
                              "-device vgpu-cuda,addr=5,pool_id=B,priority=high,vm_id=1")
    out = pool.call("status")
    assert out["summary"]["registered"] == 1 and out["summary"]["drift"] == 1
    assert out["summary"]["unregistered"] == 9 and out["summary"]["stale"] == 0
    assert [d["vm_uuid"] for d in out["drift"]] == [RENDER_01]
    assert [p["pool_id"] for p in out["pools"]] == ["A", "B"]
    assert len(out["unregistered"]) == 9 and out["stale"] == [] and out["problems"] == []


def test_sync_reapplies_drift(pool):
    registered(pool, ML_TRAIN_B, "A", "medium", **{"vm-id": "5"})
    pool.sim.set_platform_key(ML_TRAIN_B, "device-model-args",
                              "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=5")
    dry = pool.call("sync", {"all": "true", "dry-run": "true"})
    assert "pool_id=B" in dma(pool, ML_TRAIN_B)  # dry run: nothing written
    assert dry["dry_run"] is True and dry["failed"] == 0
    assert [(r["vm_uuid"], r["action"], r["status_before"]) for r in dry["results"]] == [
        (ML_TRAIN_B, "would_apply", "drift")]
    done = pool.call("sync", {"vm-uuid": ML_TRAIN_B})
    assert [(r["vm_uuid"], r["action"]) for r in done["results"]] == [(ML_TRAIN_B, "applied")]
    assert dma(pool, ML_TRAIN_B) == "-device vgpu-cuda,addr=5,pool_id=A,priority=medium,vm_id=5"


def test_remove_takes_the_device_away(pool):
    registered(pool, WEB_01, "B", "low")
    out = pool.call("remove", {"vm-uuid": WEB_01})
    assert out["vm_uuid"] == WEB_01 and out["applied"] is True
    assert not dma(pool, WEB_01)
    assert pool.call("list") == []


def test_restart_with_yes_restarts_a_running_vm(pool):
    out = pool.call("register", {"vm-uuid": RENDER_01, "pool": "A", "priority": "low", "restart": "true",
                                 "yes": "true"})
    assert out["restarted"] is True and out["pending_restart"] is False
    assert pool.sim.get_vm(RENDER_01)["power_state"] == "Running"
    assert [e["method"] for e in pool.sim.call_log("VM.clean_shutdown")] == ["VM.clean_shutdown"]


@pytest.mark.parametrize("fn", [f for f in function_names_or_placeholder() if "-" in f or f.startswith("<")])
def test_underscore_spellings(pool, fn):
    """Every dashed name of the core's function table, spelt with underscores (argument keys too)."""
    assert fn in function_names()
    registered(pool, ML_TRAIN_B, "A", "low", **{"vm-id": "3"})
    # (arguments, what the registration shows afterwards) of the changes; None: a read, whose
    # answer must not depend on the spelling.
    args, after = {
        "set-vm-id": ({"vm_uuid": ML_TRAIN_B, "vm_id": "4"}, {"vm_id": 4}),
        "set-pool": ({"vm_uuid": ML_TRAIN_B, "pool": "B"}, {"pool": "B"}),
        "set-priority": ({"vm_uuid": ML_TRAIN_B, "priority": "high"}, {"priority": "high"}),
        "set-weight": ({"vm_uuid": ML_TRAIN_B, "weight": "70"}, {"weight": 70}),
        "set-rate-limit": ({"vm_uuid": ML_TRAIN_B, "rate": "25", "queue_depth": "8"},
                           {"max_jobs_per_sec": 25, "max_queue_depth": 8}),
        "clear-quarantine": ({"vm_uuid": ML_TRAIN_B}, {"quarantined": False}),
        "list-pools": ({}, None),
        "show-pool": ({"pool": "A"}, None),
        "show-weights": ({"pool": "A"}, None),
        "show-rate-limits": ({"pool": "A"}, None),
    }[fn]
    if fn == "clear-quarantine":
        assert pool.call("quarantine", {"vm-uuid": ML_TRAIN_B})["quarantined"] is True
    dashed = dict((k.replace("_", "-"), v) for k, v in args.items())
    underscored = pool.call(fn.replace("-", "_"), args)
    if after is not None:
        shown = pool.call("show", {"vm-uuid": ML_TRAIN_B})
        assert dict((k, shown[k]) for k in after) == after
    else:
        assert underscored and pool.call(fn, dashed) == underscored


def test_every_function_is_dispatched(pool):
    """Every name of the core's function table (both spellings) reaches the core: an unknown
    argument is refused by the core's validation, not by xapi's UNKNOWN_XENAPI_PLUGIN_FUNCTION."""
    names = function_names()
    for fn in names + [f.replace("-", "_") for f in names if "-" in f]:
        code, message, details = pool.fail(fn, {"no-such-key": "1"})
        assert code == "VGPU_INVALID_ARGUMENT", (fn, code, message)
        assert details["value"] == "no-such-key", (fn, details)


def test_unknown_function(pool):
    import XenAPI

    with pytest.raises(XenAPI.Failure) as e:
        pool.call_raw("explode")
    assert e.value.details == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "explode"]


def test_paused_vm_restart_is_refused(pool):
    code, message, details = pool.fail("register", {"vm-uuid": DB_PRIMARY, "pool": "A", "priority": "low",
                                                    "restart": "true", "yes": "true"})
    assert code == "VGPU_VM_STATE"
    assert details["vm_uuid"] == DB_PRIMARY and details["power_state"].lower() == "paused"
    assert pool.call("list") == []


def test_sync_with_a_failing_vm_answers_its_report(pool):
    """vgpu-admin exits 1 when some VM of a sync failed, with the report on stdout: the plugin answers
    that report, as the native path does, rather than an error."""
    pool.call("register", {"vm-uuid": ML_TRAIN_B, "pool": "A", "priority": "low"})
    pool.sim.set_platform_key(ML_TRAIN_B, "device-model-args",
                              "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=1")
    pool.sim.inject_fault("VM.set_platform", code="INTERNAL_ERROR", params=["boom"])
    out = pool.call("sync", {"all": "true"})
    assert out["failed"] == 1
    [item] = out["results"]
    assert (item["vm_uuid"], item["action"]) == (ML_TRAIN_B, "failed")
    assert item["error"]["code"] == "XAPI_ERROR" and item["error"]["details"]["xapi_params"] == ["boom"]
    assert "pool_id=B" in dma(pool, ML_TRAIN_B)  # put back as it was

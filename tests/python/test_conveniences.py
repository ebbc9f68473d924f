"""The conveniences from the installed wheel against the XAPI simulator, under each interpreter:
what they send reaches the core, and what the core answers comes back parsed."""

import json
import os

from pkg_support import DESCRIBE, call, raised, value

TIMESTAMPS = ("created_at", "updated_at")


def without_timestamps(record):
    assert all(record[k].endswith("Z") for k in TIMESTAMPS), record
    return dict((k, v) for k, v in record.items() if k not in TIMESTAMPS)


def test_the_wheel_is_the_package_under_test(pkg):
    d = pkg.probe([DESCRIBE])[0]
    assert d["file"].startswith(pkg.path + os.sep), d["file"]
    assert d["native_file"].startswith(pkg.path + os.sep), d["native_file"]
    assert os.path.basename(d["native_file"]) == "_native.abi3.so"


def test_the_native_stub_declares_what_the_module_has(pkg):
    # The pure-Python modules carry their own annotations; the native one has _native.pyi.
    d = pkg.probe([DESCRIBE])[0]
    assert d["native_stub_names"] == d["native_names"] == ["__all__", "__version__", "call"]
    assert d["native_all"] == ["__version__", "call"]
    assert d["py_typed"]


def test_register_then_read_back(pkg, pool):
    render_01 = pool.uuid("render-01")
    ml_train_b = pool.uuid("ml-train-b")
    results = pkg.probe([
        call("register", vm_uuid=render_01, pool="A", priority="high"),
        call("register", vm_name="ml-train-b", pool="B", priority=0, vm_id=7),
        call("show", vm_uuid=render_01),
        call("show", vm_name="ml-train-b"),
        call("list_vms"),
        call("list_vms", pool="B"),
        call("list_vms", priority="high"),
        call("show_pool", pool="B"),
    ], pool.env)
    registered, by_name, shown, shown_by_name, everything, pool_b, high, detail = [value(r) for r in results]

    assert without_timestamps(registered) == {
        "vm_uuid": render_01, "vm_name": "render-01", "pool": "A", "priority": "high", "vm_id": 1,
        "power_state": "Running", "applied": True, "pending_restart": True, "restarted": False,
        "device_model_args": "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1",
        # the mediator's controls, at the mediator's defaults
        "weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0, "quarantined": False, "error_count": 0,
    }
    assert (by_name["vm_uuid"], by_name["pool"], by_name["priority"], by_name["vm_id"]) == (ml_train_b, "B", "low", 7)
    assert pool.dma("render-01") == "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"
    assert pool.dma("ml-train-b") == "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=7"

    assert (shown["vm_uuid"], shown["pool"], shown["priority"], shown["vm_id"]) == (render_01, "A", "high", 1)
    assert (shown["status"], shown["drift"]) == ("configured", [])
    assert (shown_by_name["vm_uuid"], shown_by_name["vm_id"]) == (ml_train_b, 7)

    assert isinstance(everything, list)
    assert [(r["vm_uuid"], r["pool"], r["priority"], r["vm_id"]) for r in everything] == [
        (render_01, "A", "high", 1), (ml_train_b, "B", "low", 7)]
    assert [r["vm_uuid"] for r in pool_b] == [ml_train_b]
    assert [r["vm_uuid"] for r in high] == [render_01]
    assert [v["vm_uuid"] for v in detail["vms"]] == [ml_train_b]


def test_changes_through_the_conveniences(pkg, pool):
    cuda_dev = pool.uuid("cuda-dev")
    results = pkg.probe([
        call("register", vm_uuid=cuda_dev, pool="A", priority="low"),
        call("set_vm_id", vm_uuid=cuda_dev, vm_id=42),
        call("set_pool", vm_uuid=cuda_dev, pool="B"),
        call("set_priority", vm_uuid=cuda_dev, priority="medium"),
        call("update", vm_uuid=cuda_dev, priority="high", vm_id="43"),
        call("show", vm_uuid=cuda_dev),
        call("sync", all=True, dry_run=True),
        call("remove", vm_uuid=cuda_dev),
        call("list_vms"),
    ], pool.env)
    shown = value(results[5])
    assert (shown["pool"], shown["priority"], shown["vm_id"]) == ("B", "high", 43)
    assert "pool_id=B,priority=high,vm_id=43" in shown["device_model_args"]
    assert isinstance(value(results[6]), dict)
    value(results[7])
    assert value(results[8]) == []
    assert "vm_id=" not in (pool.dma("cuda-dev") or "")


def test_read_only_functions_answer_their_documents(pkg, pool):
    results = [value(r) for r in pkg.probe([call("scan"), call("status"), call("list_pools")], pool.env)]
    scan, status, pools = results
    real_vms = [v for v in pool.sim.fixture_data["vms"]
                if not (v.get("is_control_domain") or v.get("is_a_template") or v.get("is_a_snapshot"))]
    assert scan["registered"] == [] and scan["stale"] == []
    assert sorted(v["vm_uuid"] for v in scan["unregistered"]) == sorted(v["uuid"] for v in real_vms)
    assert isinstance(status, dict) and status
    assert [(p["pool_id"], p["vm_count"]) for p in pools] == [("A", 0), ("B", 0)]


def test_call_is_the_plugin_api(pkg, pool):
    render_01 = pool.uuid("render-01")
    results = pkg.probe([
        call("call", "register", {"vm-uuid": render_01, "pool": "A", "priority": "low"}),
        call("call", "list", {}),
    ], pool.env)
    answer = value(results[0])
    assert isinstance(answer, str)
    assert json.loads(answer)["vm_uuid"] == render_01
    assert [r["vm_uuid"] for r in json.loads(value(results[1]))] == [render_01]


def test_session_and_config_reach_the_core(pkg, pool):
    bad_config = os.path.join(pool.workdir, "vgpu.conf")
    with open(bad_config, "w") as f:
        f.write("colour = 'red'\n")
    results = pkg.probe([
        call("status", session="OpaqueRef:no-such-session"),
        call("status", config={"$path": bad_config}),
        call("status", config=bad_config),
    ], pool.env)
    session = raised(results[0])
    assert (session["type"], session["code"]) == ("XapiError", "XAPI_ERROR")
    assert session["details"]["xapi_code"] == "SESSION_INVALID"
    for r in results[1:]:
        e = raised(r)
        assert (e["type"], e["code"]) == ("InvalidArgumentError", "INVALID_ARGUMENT"), e
        assert (e["details"]["argument"], e["details"]["value"]) == ("config file", bad_config), e
        assert "colour" in e["message"], e


def test_non_text_arguments_raise_type_error(pkg, pool):
    render_01 = pool.uuid("render-01")
    results = pkg.probe([
        call("call", "show", {"vm-uuid": 5}),
        call("call", "show", {"$pairs": [[5, render_01]]}),
        call("call", "show", [["vm-uuid", render_01]]),
        call("show", vm_uuid=[render_01]),
        call("register", vm_uuid=render_01, pool={"name": "A"}, priority="low"),
        call("list_vms"),
    ], pool.env)
    messages = []
    for r in results[:5]:
        e = raised(r)
        assert e["type"] == "TypeError" and not e["is_vgpu_error"], e
        messages.append(e["str"])
    assert "args values must be str" in messages[0] and "int" in messages[0]
    assert "args keys must be str" in messages[1]
    assert "dict" in messages[2] and "list" in messages[2]
    assert "vm_uuid" in messages[3] and "list" in messages[3]
    assert "pool" in messages[4] and "dict" in messages[4]
    # Nothing reached the registry.
    assert value(results[5]) == []

"""Core errors as Python exceptions, from the installed wheel under each interpreter: the class of
the error's code (defined in vgpu_registry/exceptions.py), with code, message and details."""

import os

from pkg_support import call, drop_code, raised, throw, value


def check_vgpu_error(e, class_name, code):
    """The common shape; returns the details."""
    assert e["type"] == class_name, e
    assert e["module"] == "vgpu_registry.exceptions", e
    assert e["mro"][:3] == [class_name, "VgpuError", "Exception"], e
    assert e["is_vgpu_error"] and e["code"] == code, e
    assert e["message"] and e["str"] == e["message"], e
    assert isinstance(e["details"], dict), e
    assert e["pickled"] == [class_name, code, e["message"], e["details"]], e
    return e["details"]


def test_vm_id_in_use_names_the_owner_and_the_next_free_id(pkg, pool):
    render_01, render_02, cuda_dev = pool.uuid("render-01"), pool.uuid("render-02"), pool.uuid("cuda-dev")
    results = pkg.probe([
        call("register", vm_uuid=render_01, pool="A", priority="high"),  # takes vm_id 1
        call("register", vm_uuid=render_02, pool="A", priority="low", vm_id=2),
        call("register", vm_uuid=cuda_dev, pool="B", priority="low", vm_id=1),
        call("set_vm_id", vm_uuid=render_02, vm_id=1),
    ], pool.env)
    assert value(results[0])["vm_id"] == 1
    for r in results[2:]:
        e = raised(r)
        details = check_vgpu_error(e, "VmIdInUseError", "VM_ID_IN_USE")
        assert details["vm_id"] == 1 and details["vm_uuid"] == render_01 and details["vm_name"] == "render-01"
        # 1 and 2 are taken: the lowest free id is 3.
        assert details["next_free_vm_id"] == 3, details
        assert render_01 in e["message"]


def test_bad_value_is_an_invalid_argument_error_and_a_vgpu_error(pkg, pool):
    render_01 = pool.uuid("render-01")
    results = pkg.probe([
        call("register", vm_uuid=render_01, pool="C", priority="low"),
        call("register", vm_uuid=render_01, pool="A"),
        call("call", "explode", {}),
        call("list_vms"),
    ], pool.env)
    bad_pool = check_vgpu_error(raised(results[0]), "InvalidArgumentError", "INVALID_ARGUMENT")
    assert bad_pool == {"argument": "pool", "value": "C", "reason": "expected A or B"}
    assert '"C"' in raised(results[0])["message"]
    assert "priority" in raised(results[1])["message"]
    check_vgpu_error(raised(results[1]), "InvalidArgumentError", "INVALID_ARGUMENT")
    unknown = check_vgpu_error(raised(results[2]), "InvalidArgumentError", "INVALID_ARGUMENT")
    assert (unknown["argument"], unknown["value"]) == ("function", "explode")
    assert value(results[3]) == []


def test_each_vm_error_has_its_class(pkg, pool):
    render_01, db_primary = pool.uuid("render-01"), pool.uuid("db-primary")
    unknown_vm = "00000000-0000-4000-8000-000000000001"
    results = pkg.probe([
        call("show", vm_uuid=render_01),
        call("register", vm_uuid=unknown_vm, pool="A", priority="low"),
        call("register", vm_name="twin", pool="A", priority="low"),
        call("register", vm_uuid=render_01, pool="A", priority="low"),
        call("register", vm_uuid=render_01, pool="B", priority="high"),
        call("set_pool", vm_uuid=render_01, pool="B", restart=True),
        call("register", vm_uuid=db_primary, pool="A", priority="low"),
        call("set_pool", vm_uuid=db_primary, pool="B", restart=True, yes=True),
    ], pool.env)
    not_registered = check_vgpu_error(raised(results[0]), "NotRegisteredError", "NOT_REGISTERED")
    assert not_registered["vm_uuid"] == render_01
    not_found = check_vgpu_error(raised(results[1]), "VmNotFoundError", "VM_NOT_FOUND")
    assert unknown_vm in not_found["selector"]
    ambiguous = check_vgpu_error(raised(results[2]), "AmbiguousVmNameError", "AMBIGUOUS_VM_NAME")
    twins = sorted(v["uuid"] for v in pool.sim.fixture_data["vms"] if v["name_label"] == "twin")
    assert sorted(c["vm_uuid"] for c in ambiguous["candidates"]) == twins
    value(results[3])
    already = check_vgpu_error(raised(results[4]), "AlreadyRegisteredError", "ALREADY_REGISTERED")
    assert (already["vm_uuid"], already["pool"], already["priority"]) == (render_01, "A", "low")
    confirm = check_vgpu_error(raised(results[5]), "ConfirmationRequiredError", "CONFIRMATION_REQUIRED")
    assert confirm["vm_uuid"] == render_01
    value(results[6])
    state = check_vgpu_error(raised(results[7]), "VmStateError", "VM_STATE")
    assert (state["vm_uuid"], state["power_state"]) == (db_primary, "paused")


def test_xapi_and_database_errors(pkg, pool):
    pool.sim.inject_fault("VM.get_all_records_where", code="HOST_OFFLINE", params=["OpaqueRef:h"], times=-1)
    not_a_database = os.path.join(pool.workdir, "not-a-database.db")
    with open(not_a_database, "w") as f:
        f.write("this is not SQLite\n" * 300)
    xapi = raised(pkg.probe([call("scan")], pool.env)[0])
    db = raised(pkg.probe([call("list_vms")], dict(pool.env, VGPU_DB=not_a_database))[0])
    details = check_vgpu_error(xapi, "XapiError", "XAPI_ERROR")
    assert (details["xapi_method"], details["xapi_code"], details["xapi_params"]) == (
        "VM.get_all_records_where", "HOST_OFFLINE", ["OpaqueRef:h"])
    assert check_vgpu_error(db, "DatabaseError", "DATABASE_ERROR") == {"path": not_a_database,
                                                                        "permission_denied": False}


def test_a_code_python_lacks_raises_vgpu_error_with_that_code(pkg, pool):
    render_01 = pool.uuid("render-01")
    results = pkg.probe([
        call("register", vm_uuid=render_01, pool="A", priority="high"),
        drop_code("ALREADY_REGISTERED"),
        call("register", vm_uuid=render_01, pool="A", priority="high"),
    ], pool.env)
    value(results[0])
    e = raised(results[2])
    assert e["type"] == "VgpuError" and e["mro"][:2] == ["VgpuError", "Exception"], e
    assert e["code"] == "ALREADY_REGISTERED" and e["details"]["vm_uuid"] == render_01, e
    assert e["str"] == e["message"] and render_01 in e["message"], e


def test_classes_can_be_raised_from_python(pkg):
    # Scripts and test doubles raise them too: the code comes from the class.
    in_use, plain, internal, coded = [raised(r) for r in pkg.probe([
        throw("VmIdInUseError", "in use", details={"vm_id": 4}),
        throw("VgpuError", "plain"),
        throw("InternalError"),
        throw("VgpuError", "coded", code="VM_STATE"),
    ])]
    assert check_vgpu_error(in_use, "VmIdInUseError", "VM_ID_IN_USE") == {"vm_id": 4}
    assert in_use["message"] == "in use"
    assert (plain["type"], plain["code"], plain["message"], plain["str"], plain["details"]) == (
        "VgpuError", None, "plain", "plain", {})
    assert (internal["type"], internal["code"], internal["message"], internal["details"]) == (
        "InternalError", "INTERNAL", "", {})
    assert (coded["type"], coded["code"]) == ("VgpuError", "VM_STATE")


def test_the_base_class_catches_every_code(pkg, pool):
    results = pkg.probe([
        call("register", vm_uuid=pool.uuid("render-01"), pool="C", priority="low"),
        call("show", vm_uuid=pool.uuid("render-01")),
    ], pool.env)
    for r in results:
        e = raised(r)
        assert e["is_vgpu_error"] and "VgpuError" in e["mro"] and "Exception" in e["mro"], e

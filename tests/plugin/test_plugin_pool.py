"""Pool-wide behaviour on the three-host pool (SPEC section 4, "Pool-wide", and 9): whichever host a
call reaches, it lands in the master's registry; members hold only a replica of it, written by the
master's refresh after each change, never a registry of their own; a
forwarded call that reaches a non-master is refused instead of looping; concurrent registrations
through different hosts never share a vm_id and none is lost."""

import os
import sqlite3
import stat
import threading

from plugin_support import ALPHA, BETA, DELTA, FWD_01, FWD_02, FWD_03, GAMMA


# The mediator's controls, which every replica carries too (SPEC section 10).
CONTROLS = ("SELECT vm_uuid, weight, max_jobs_per_sec, max_queue_depth, quarantined, error_count FROM vms "
            "ORDER BY vm_id")


def db_files(path):
    return [p for p in (path, path + "-wal", path + "-shm", path + "-journal") if os.path.exists(p)]


def member_dbs_untouched(pool3):
    """Members hold exactly the master's rows, as replicas, once something changed; nothing before."""
    rows = master_rows(pool3) if db_files(pool3.db()) else []
    master_controls = []
    if rows:
        with sqlite3.connect(pool3.db()) as c:
            master_controls = c.execute(CONTROLS).fetchall()
    changed = bool(pool3.sim.pool_other_config().get("vgpu-registry:generation"))
    for h in pool3.members:
        if not changed:
            assert db_files(pool3.db(h)) == [], "member %s created a registry of its own" % h
            continue
        with sqlite3.connect(pool3.db(h)) as c:
            got = c.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id").fetchall()
            got_controls = c.execute(CONTROLS).fetchall()
            role = dict(c.execute("SELECT key, value FROM registry_meta").fetchall())
        assert got == rows, (h, got, rows)
        assert got_controls == master_controls, (h, got_controls, master_controls)
        assert role["role"] == "replica", (h, role)
        assert role["generation"] == pool3.sim.pool_other_config()["vgpu-registry:generation"], (h, role)


def master_rows(pool3):
    with sqlite3.connect(pool3.db()) as c:
        return c.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id").fetchall()


def test_calls_on_every_host_land_in_the_masters_registry(pool3):
    assert pool3.master == FWD_01 and set(pool3.members) == {FWD_02, FWD_03}
    a = pool3.call("register", {"vm-uuid": ALPHA, "pool": "A", "priority": "high"}, host=FWD_02)
    b = pool3.call("register", {"vm-uuid": BETA, "pool": "B", "priority": "low"}, host=FWD_03)
    d = pool3.call("register", {"vm-uuid": DELTA, "pool": "A", "priority": "medium"}, host=FWD_01)
    assert (a["vm_id"], b["vm_id"], d["vm_id"]) == (1, 2, 3)
    assert master_rows(pool3) == [(ALPHA, 1, "A", 2), (BETA, 2, "B", 0), (DELTA, 3, "A", 1)]
    # reads and changes from members see and change the same registry
    seen = [pool3.call("list", host=h) for h in (FWD_01, FWD_02, FWD_03)]
    assert seen[0] == seen[1] == seen[2] and len(seen[0]) == 3
    pool3.call("set-vm-id", {"vm-uuid": BETA, "vm-id": "20"}, host=FWD_02)
    assert pool3.call("show", {"vm-name": "beta"}, host=FWD_03)["vm_id"] == 20
    pool3.call("set-weight", {"vm-uuid": BETA, "weight": "15"}, host=FWD_03)
    pool3.call("quarantine", {"vm-name": "delta"}, host=FWD_02)
    shown = pool3.call("show", {"vm-uuid": BETA}, host=FWD_01)
    assert (shown["weight"], shown["quarantined"]) == (15, False)
    assert [r["vm_uuid"] for r in pool3.call("list", {"quarantined": "true"}, host=FWD_03)] == [DELTA]
    scan = pool3.call("scan", host=FWD_03)
    assert scan["summary"]["registered"] == 3
    assert {r["vm_uuid"] for r in scan["unregistered"]} == {GAMMA}
    member_dbs_untouched(pool3)
    # the forwarding went through the master's plugin, marked as forwarded by the member
    forwarded = [e["params"] for e in pool3.sim.call_log("host.call_plugin")
                 if e["params"][4].get("forwarded-by")]
    assert {p[4]["forwarded-by"] for p in forwarded} == {FWD_02, FWD_03}
    master_ref = pool3.host_ref(FWD_01)
    assert all(p[1] == master_ref for p in forwarded)


def test_errors_from_the_master_keep_their_code(pool3):
    pool3.call("register", {"vm-uuid": ALPHA, "pool": "A", "priority": "high", "vm-id": "7"}, host=FWD_01)
    pool3.call("register", {"vm-uuid": BETA, "pool": "A", "priority": "high"}, host=FWD_02)
    code, message, details = pool3.fail("set-vm-id", {"vm-uuid": BETA, "vm-id": "7"}, host=FWD_03)
    assert code == "VGPU_VM_ID_IN_USE"
    assert message == "VM ID 7 already in use by VM %s (alpha)" % ALPHA
    assert details["vm_uuid"] == ALPHA and details["next_free_vm_id"] == 2
    code, _, details = pool3.fail("list", {"colour": "red"}, host=FWD_02)
    assert code == "VGPU_INVALID_ARGUMENT" and details["value"] == "colour"
    member_dbs_untouched(pool3)


def test_forwarded_call_reaching_a_member_is_refused_without_a_loop(pool3):
    pool3.sim.clear_call_log()
    code, message, details = pool3.fail("register", {"vm-uuid": ALPHA, "pool": "A", "priority": "high",
                                                     "forwarded-by": FWD_03}, host=FWD_02)
    assert code == "VGPU_INTERNAL", (code, message)
    assert FWD_02 in message and FWD_03 in message and "not the pool master" in message
    assert len(pool3.sim.call_log("host.call_plugin")) == 1
    assert db_files(pool3.db()) == [] or master_rows(pool3) == []
    member_dbs_untouched(pool3)


def _wrong_identity_wrapper(workdir, admin, host_uuid):
    """A vgpu-admin that believes it runs on ``host_uuid`` (the simulator sets VGPU_HOST_UUID after
    set_plugin_env, so a wrong identity is injected one level down, in the CLI's environment)."""
    path = os.path.join(workdir, "vgpu-admin-as-%s" % host_uuid[:8])
    with open(path, "w") as f:
        f.write('#!/bin/sh\nVGPU_HOST_UUID=%s exec "%s" "$@"\n' % (host_uuid, admin))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_master_that_thinks_it_is_a_member_does_not_loop(pool3):
    """The master with a wrong host uuid forwards to the master's plugin — itself — which then
    refuses the forwarded call: two plugin runs and a clear error, not an endless chain."""
    wrapper = _wrong_identity_wrapper(pool3.workdir, pool3.admin, FWD_02)
    pool3.set_env(FWD_01, VGPU_ADMIN=wrapper, VGPU_PLUGIN_BACKEND="cli")
    pool3.sim.clear_call_log()
    code, message, details = pool3.fail("list", host=FWD_01)
    assert code == "VGPU_INTERNAL", (code, message)
    assert "not the pool master" in message
    assert len(pool3.sim.call_log("host.call_plugin")) == 2
    member_dbs_untouched(pool3)


def test_concurrent_registrations_through_every_host(pool3):
    vms = [pool3.sim.add_vm(name_label="conc-%d" % i, power_state="Halted")["uuid"] for i in range(9)]
    hosts = [FWD_01, FWD_02, FWD_03]
    results, errors = {}, []
    barrier = threading.Barrier(len(vms))

    def worker(i, vm):
        session = pool3.sim.xenapi_session()
        try:
            barrier.wait(30)
            results[vm] = pool3.call("register", {"vm-uuid": vm, "pool": "AB"[i % 2], "priority": "low"},
                                     host=hosts[i % 3], xenapi=session)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append((vm, hosts[i % 3], repr(e)))
        finally:
            session.xenapi.session.logout()

    threads = [threading.Thread(target=worker, args=(i, vm)) for i, vm in enumerate(vms)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    ids = sorted(r["vm_id"] for r in results.values())
    assert ids == list(range(1, 10)), ids
    rows = master_rows(pool3)
    assert sorted(r[0] for r in rows) == sorted(vms)
    assert sorted(r[1] for r in rows) == list(range(1, 10))
    for vm, r in results.items():
        dma = pool3.sim.get_vm(vm)["platform"]["device-model-args"]
        assert dma.endswith("vm_id=%d" % r["vm_id"]), (vm, dma)
    member_dbs_untouched(pool3)

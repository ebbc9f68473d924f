"""The pool-wide registry across a change of master, hosts that are down or slow, and the replicas
the mediators read (SPEC section 9), on the three-host pool with the real plugin on every host.

The expected rows are worked out here from the calls the tests make, never read back from the
registry under test; the registry files, the mirror in XAPI and the hosts' recorded generations
must all agree with them."""

import json
import os
import re
import sqlite3
import threading
import time
from contextlib import closing

import pytest

from plugin_support import FWD_01, FWD_02, FWD_03

PRIORITY = {"low": 0, "medium": 1, "high": 2}
HOSTS = (FWD_01, FWD_02, FWD_03)
# What a caller may see while the master changes under it (a refusal that changed nothing).
RETRYABLE = (("VGPU_INTERNAL", "not the pool master"), ("VGPU_XAPI_ERROR", "no longer the pool master"))


# ------------------------------------------------------------------------------------------------
# Reading what each host holds and what the pool's mirror says


def db_files(path):
    return [p for p in (path, path + "-wal", path + "-shm", path + "-journal") if os.path.exists(p)]


def query(path, sql):
    """One read of a registry file, its connection closed at once (a connection left to the
    garbage collector keeps the file's -wal and -shm files in place)."""
    with closing(sqlite3.connect(path)) as c:
        return c.execute(sql).fetchall()


def file_rows(path):
    """(vm_uuid, vm_id, pool_id, priority) of a registry file, by vm_id."""
    return query(path, "SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id")


def file_meta(path):
    return dict(query(path, "SELECT key, value FROM registry_meta"))


def snapshot(path):
    """The bytes of a registry file and of its journal files, to see that nothing wrote to it."""
    out = {}
    for p in db_files(path):
        if p.endswith("-shm"):
            continue  # the shared-memory index, rewritten by any reader
        with open(p, "rb") as f:
            out[os.path.basename(p)] = f.read()
    return out


def registry_files(workdir):
    """The registry files of every host in ``workdir``, with their journals and backups."""
    return sorted(n for n in os.listdir(workdir) if n.startswith("registry-"))


def pool_generation(pool3):
    g = pool3.sim.pool_other_config().get("vgpu-registry:generation")
    return None if g is None else int(g)


def mirror_rows(pool3, vms):
    """(vm_uuid, vm_id, pool, priority) of every VM that carries a mirror row (the fixture's VMs
    and ``vms``, those the test added), with the custom field checked against the row."""
    out = []
    for vm in [v["uuid"] for v in pool3.sim.fixture_data["vms"]] + list(vms):
        oc = pool3.sim.vm_other_config(vm)
        if "vgpu-registry" not in oc:
            assert "XenCenter.CustomFields.vgpu" not in oc, (vm, oc)
            continue
        row = json.loads(oc["vgpu-registry"])
        assert oc["XenCenter.CustomFields.vgpu"] == "pool %s, %s, vm_id %d" % (
            row["pool"], row["priority"], row["vm_id"]), (vm, oc)
        out.append((vm, row["vm_id"], row["pool"], PRIORITY[row["priority"]]))
    return sorted(out, key=lambda r: r[1])


def dma(pool3, vm):
    return pool3.sim.get_vm(vm)["platform"].get("device-model-args")


def host_generation(pool3, host):
    g = pool3.sim.host_other_config(host).get("vgpu-registry:generation")
    return None if g is None else int(g)


def replicas_by_host(answer):
    reps = answer["replicas"]
    by_host = dict((r["host"], r) for r in reps)
    assert len(by_host) == len(reps), reps
    return by_host


def assert_primary(pool3, host, rows):
    """``host``'s file is the primary at the pool's generation and holds exactly ``rows``."""
    assert file_rows(pool3.db(host)) == rows
    meta = file_meta(pool3.db(host))
    assert meta == {"role": "primary", "generation": str(pool_generation(pool3))}, (host, meta)


def assert_replica(pool3, host, rows):
    """``host``'s file is a replica at the pool's generation holding exactly ``rows``, and the host
    records that generation for ``status``."""
    assert file_rows(pool3.db(host)) == rows, host
    meta = file_meta(pool3.db(host))
    assert meta == {"role": "replica", "generation": str(pool_generation(pool3))}, (host, meta)
    assert host_generation(pool3, host) == pool_generation(pool3), host


def add_halted_vms(pool3, prefix, n):
    return [pool3.sim.add_vm(name_label="%s-%02d" % (prefix, i), power_state="Halted")["uuid"] for i in range(n)]


def designate(pool3, host):
    """pool.designate_new_master, the real XAPI call."""
    pool3.sim.call("pool.designate_new_master", pool3.sim.session, pool3.host_ref(host))
    assert pool3.sim.master_uuid == host


def forwarded_calls(pool3, by):
    """(target host ref, fn) of every host.call_plugin marked as forwarded by ``by``."""
    return [(e["params"][1], e["params"][3]) for e in pool3.sim.call_log("host.call_plugin")
            if e["params"][4].get("forwarded-by") == by]


# ------------------------------------------------------------------------------------------------
# 1. pool.designate_new_master while registrations stream in through every host


def test_designate_new_master_mid_stream(pool3):
    import XenAPI

    old, new = FWD_01, FWD_02
    assert pool3.master == old
    vms = add_halted_vms(pool3, "fo", 12)
    plan = [(vm, HOSTS[i % 3], "AB"[i % 2], ("low", "medium", "high")[i % 3]) for i, vm in enumerate(vms)]
    # The first half runs freely (some finish before the switch, some are in flight during it); the
    # second half starts only after it, so every host, the old master included, is used after it.
    first, second = plan[:6], plan[6:]
    switched = threading.Event()
    lock = threading.Lock()
    acked = {}      # vm -> (answer, started after the switch)
    refused = []    # (vm, host, code, message): refusals during the switch, retried
    errors = []

    def register(session, vm, host, p, prio, after):
        for attempt in range(4):
            try:
                answer = pool3.call("register", {"vm-uuid": vm, "pool": p, "priority": prio},
                                    host=host, xenapi=session)
            except XenAPI.Failure as e:
                code, message = e.details[0], e.details[1] if len(e.details) > 1 else ""
                # A call forwarded to the old master just as it stopped being master is refused
                # (a forwarded call is never forwarded again), and so is one the old master began
                # as master when it was forwarded to it; nothing was changed, the caller may retry.
                if attempt < 3 and any(code == c and m in message for c, m in RETRYABLE):
                    with lock:
                        refused.append((vm, host, code, message))
                    continue
                with lock:
                    errors.append((vm, host, e.details))
                return
            with lock:
                acked[vm] = (answer, after)
            return

    def worker(items, after):
        session = pool3.sim.xenapi_session()
        try:
            if after:
                assert switched.wait(120)
            for vm, host, p, prio in items:
                register(session, vm, host, p, prio, after)
        except Exception as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(("worker", after, repr(e)))
        finally:
            session.xenapi.session.logout()

    threads = ([threading.Thread(target=worker, args=(first[k::3], False)) for k in range(3)]
               + [threading.Thread(target=worker, args=(second[k::3], True)) for k in range(3)])
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while len(acked) < 2 and not errors and time.time() < deadline:
        time.sleep(0.02)
    with lock:
        acked_before = set(acked)
    try:
        designate(pool3, new)
    finally:
        switched.set()
    generation_at_switch = pool_generation(pool3)
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], (errors, refused)
    assert len(acked_before) >= 2 and generation_at_switch >= len(acked_before)

    # Every registration was acknowledged once (a refused attempt changed nothing: its retry was
    # not ALREADY_REGISTERED), and is in the new master's registry with the id it was given.
    assert sorted(acked) == sorted(vms)
    ids = [a["vm_id"] for a, _ in acked.values()]
    assert sorted(ids) == list(range(1, 13)), ids
    expected = sorted(((vm, acked[vm][0]["vm_id"], p, PRIORITY[prio]) for vm, _, p, prio in plan),
                      key=lambda r: r[1])
    for vm, _, p, prio in plan:
        answer = acked[vm][0]
        assert (answer["vm_uuid"], answer["pool"], answer["priority"]) == (vm, p, prio)
        assert dma(pool3, vm).endswith("pool_id=%s,priority=%s,vm_id=%d" % (p, prio, answer["vm_id"])), vm
    assert_primary(pool3, new, expected)
    assert mirror_rows(pool3, vms) == expected

    # Who ran each change: its fan-out refreshes every host but itself. Nothing started after the
    # switch ran on the old master, and the calls through the old master went to the new one.
    for vm, (answer, after) in acked.items():
        ran_on = set(HOSTS) - set(replicas_by_host(answer))
        assert len(ran_on) == 1, answer["replicas"]
        if after:
            assert ran_on == {new}, (vm, answer["replicas"])
    after_through_old = [vm for vm, host, _, _ in second if host == old]
    assert after_through_old
    new_ref = pool3.host_ref(new)
    register_from_old = [ref for ref, fn in forwarded_calls(pool3, old) if fn == "register"]
    assert len(register_from_old) >= len(after_through_old)
    assert set(register_from_old) == {new_ref}

    # Every other host, the old master included, holds the same rows as a replica once refreshed.
    for h in (old, FWD_03):
        r = pool3.call("refresh", host=h)
        assert (r["host"], r["role"], r["generation"], r["vms"]) == (h, "replica", pool_generation(pool3), 12)
        assert_replica(pool3, h, expected)

    # The old master, now a member, forwards a change instead of writing its file as a primary.
    extra = pool3.sim.add_vm(name_label="fo-extra", power_state="Halted")["uuid"]
    pool3.sim.clear_call_log()
    answer = pool3.call("register", {"vm-uuid": extra, "pool": "A", "priority": "high"}, host=old)
    assert answer["vm_id"] == 13
    assert set(replicas_by_host(answer)) == {old, FWD_03}
    assert all(r["ok"] for r in answer["replicas"]), answer["replicas"]
    assert forwarded_calls(pool3, old) == [(new_ref, "register")]
    expected.append((extra, 13, "A", 2))
    assert_primary(pool3, new, expected)
    assert_replica(pool3, old, expected)
    assert_replica(pool3, FWD_03, expected)


# ------------------------------------------------------------------------------------------------
# 2. A master that disappears (HA failover)


def test_master_that_disappears(pool3):
    old, new = FWD_01, FWD_02
    vms = add_halted_vms(pool3, "ha", 5)
    a = pool3.call("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"}, host=FWD_03)
    b = pool3.call("register", {"vm-uuid": vms[1], "pool": "B", "priority": "low", "vm-id": "9"}, host=old)
    # The future master misses the last change before the failure: its replica is behind, so it
    # can only get that registration from the mirror.
    pool3.sim.set_host_live(new, False)
    c = pool3.call("register", {"vm-uuid": vms[2], "pool": "A", "priority": "medium"}, host=FWD_03)
    assert (a["vm_id"], b["vm_id"], c["vm_id"]) == (1, 9, 2)
    assert replicas_by_host(c)[new]["ok"] is False
    pool3.sim.set_host_live(new, True)
    before = [(vms[0], 1, "A", 2), (vms[2], 2, "A", 1), (vms[1], 9, "B", 0)]
    assert file_rows(pool3.db(new)) == [(vms[0], 1, "A", 2), (vms[1], 9, "B", 0)]
    generation = pool_generation(pool3)

    pool3.sim.fail_master(new)
    d = pool3.call("register", {"vm-uuid": vms[3], "pool": "B", "priority": "high"}, host=new)
    assert d["vm_id"] == 3, "the id of a registration the new master's replica had missed was reused"
    reps = replicas_by_host(d)
    assert set(reps) == {old, FWD_03}
    assert reps[old]["ok"] is False and "HOST_OFFLINE" in reps[old]["error"], reps[old]
    assert reps[FWD_03]["ok"] is True and reps[FWD_03]["generation"] == generation + 1, reps[FWD_03]
    assert pool_generation(pool3) == generation + 1
    now = before[:2] + [(vms[3], 3, "B", 2), before[2]]
    assert_primary(pool3, new, now)
    assert mirror_rows(pool3, vms) == now
    assert_replica(pool3, FWD_03, now)

    # It goes on, through any live host.
    e = pool3.call("register", {"vm-uuid": vms[4], "pool": "A", "priority": "low"}, host=FWD_03)
    assert e["vm_id"] == 4
    now.insert(3, (vms[4], 4, "A", 0))
    assert_primary(pool3, new, now)
    assert dma(pool3, vms[4]).endswith("vm_id=4")

    # The old master comes back as a member: its refresh makes its file a replica of the pool's.
    pool3.sim.set_host_live(old, True)
    assert file_meta(pool3.db(old))["role"] == "primary"
    r = pool3.call("refresh", host=old)
    assert (r["role"], r["generation"], r["changed"], r["vms"]) == ("replica", pool_generation(pool3), True, 5)
    assert_replica(pool3, old, now)
    listed = pool3.call("list", host=old)
    assert sorted((x["vm_uuid"], x["vm_id"]) for x in listed) == sorted((x[0], x[1]) for x in now)
    assert_primary(pool3, new, now)


def test_new_master_without_its_file_catches_up_on_its_first_read(pool3):
    """The new master lost its disk; its first command, a read forwarded from a member, already
    shows every registration (rebuilt from the mirror) and publishes nothing."""
    new = FWD_02
    vms = add_halted_vms(pool3, "read", 4)
    for i, vm in enumerate(vms[:3]):
        pool3.call("register", {"vm-uuid": vm, "pool": "AB"[i % 2], "priority": "high"}, host=HOSTS[i])
    rows = [(vms[0], 1, "A", 2), (vms[1], 2, "B", 2), (vms[2], 3, "A", 2)]
    generation = pool_generation(pool3)
    for p in db_files(pool3.db(new)):
        os.remove(p)
    pool3.sim.fail_master(new)

    listed = pool3.call("list", host=FWD_03)
    assert sorted((r["vm_uuid"], r["vm_id"], r["pool"], PRIORITY[r["priority"]]) for r in listed) == sorted(rows)
    assert pool_generation(pool3) == generation
    assert_primary(pool3, new, rows)
    assert pool3.call("show", {"vm-uuid": vms[2]}, host=new)["vm_id"] == 3
    d = pool3.call("register", {"vm-uuid": vms[3], "pool": "B", "priority": "low"}, host=FWD_03)
    assert d["vm_id"] == 4


# ------------------------------------------------------------------------------------------------
# 3. A member that is down during a change


def status_hosts(pool3, host=None):
    answer = pool3.call("status", host=host)
    hosts = dict((h["host"], h) for h in answer["hosts"])
    assert set(hosts) == set(HOSTS), answer["hosts"]
    assert answer["generation"] == pool_generation(pool3)
    return hosts


def test_member_down_during_a_change(pool3):
    vms = add_halted_vms(pool3, "down", 2)
    pool3.call("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"})
    hosts = status_hosts(pool3)
    assert hosts[FWD_01]["master"] is True and hosts[FWD_01]["behind"] is None
    assert [hosts[h]["behind"] for h in (FWD_02, FWD_03)] == [0, 0], hosts

    pool3.sim.set_host_live(FWD_03, False)
    answer = pool3.call("register", {"vm-uuid": vms[1], "pool": "B", "priority": "low"}, host=FWD_02)
    assert answer["vm_id"] == 2 and answer["applied"] is True
    reps = replicas_by_host(answer)
    assert set(reps) == {FWD_02, FWD_03}
    assert reps[FWD_03]["ok"] is False and "HOST_OFFLINE" in reps[FWD_03]["error"], reps[FWD_03]
    assert reps[FWD_02]["ok"] is True and reps[FWD_02]["generation"] == pool_generation(pool3)
    rows = [(vms[0], 1, "A", 2), (vms[1], 2, "B", 0)]
    assert_primary(pool3, FWD_01, rows)
    assert_replica(pool3, FWD_02, rows)
    assert file_rows(pool3.db(FWD_03)) == rows[:1]

    hosts = status_hosts(pool3, host=FWD_02)
    assert hosts[FWD_02]["behind"] == 0, hosts
    assert hosts[FWD_03]["behind"] >= 1 and hosts[FWD_03]["generation"] == pool_generation(pool3) - 1, hosts

    pool3.sim.set_host_live(FWD_03, True)
    r = pool3.call("refresh", host=FWD_03)
    assert (r["role"], r["changed"], r["vms"]) == ("replica", True, 2)
    assert_replica(pool3, FWD_03, rows)
    hosts = status_hosts(pool3)
    assert [hosts[h]["behind"] for h in (FWD_02, FWD_03)] == [0, 0], hosts


# ------------------------------------------------------------------------------------------------
# 4. A slow member does not hold a change up beyond [pool] refresh_timeout_s


def test_slow_member_is_bounded_by_the_refresh_timeout(pool3):
    config = os.path.join(pool3.workdir, "master.conf")
    with open(config, "w") as f:
        f.write("[pool]\nrefresh_timeout_s = 1\n")
    pool3.set_env(FWD_01, VGPU_CONFIG=config)
    vms = add_halted_vms(pool3, "slow", 2)
    pool3.call("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"})
    pool3.sim.set_plugin_delay(FWD_02, 5)
    try:
        started = time.time()
        answer = pool3.call("register", {"vm-uuid": vms[1], "pool": "A", "priority": "low"})
        took = time.time() - started
        assert took < 4, "the change waited %.1f s for a member that needs 5 s" % took
        assert answer["vm_id"] == 2
        reps = replicas_by_host(answer)
        # A timeout, and the configured one (not the default 10 s).
        assert reps[FWD_02]["ok"] is False and re.search(r"\b1 ?s\b", reps[FWD_02]["error"]), reps[FWD_02]
        assert re.search(r"time|did not answer", reps[FWD_02]["error"], re.I), reps[FWD_02]
        assert reps[FWD_03]["ok"] is True and reps[FWD_03]["generation"] == pool_generation(pool3), reps
        rows = [(vms[0], 1, "A", 2), (vms[1], 2, "A", 0)]
        assert_primary(pool3, FWD_01, rows)
        assert_replica(pool3, FWD_03, rows)
        # The slow host's refresh was only left behind, not cancelled: it lands once its delay is over.
        deadline = time.time() + 30
        while host_generation(pool3, FWD_02) != pool_generation(pool3) and time.time() < deadline:
            time.sleep(0.2)
        assert_replica(pool3, FWD_02, rows)
    finally:
        pool3.sim.set_plugin_delay(FWD_02, 0)


# ------------------------------------------------------------------------------------------------
# 5. The mediator's open connection sees every refresh; a mirror that cannot be read changes nothing


def test_open_connection_sees_every_refresh(pool3):
    member = FWD_03
    vms = add_halted_vms(pool3, "med", 3)
    # The mediator may have opened the file before vgpu-registry ever wrote it.
    conn = sqlite3.connect(pool3.db(member), isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()

        def seen():
            return conn.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms ORDER BY vm_id").fetchall()

        steps = [
            (("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"}),
             [(vms[0], 1, "A", 2)]),
            (("register", {"vm-uuid": vms[1], "pool": "B", "priority": "low"}),
             [(vms[0], 1, "A", 2), (vms[1], 2, "B", 0)]),
            (("set-priority", {"vm-uuid": vms[0], "priority": "medium"}),
             [(vms[0], 1, "A", 1), (vms[1], 2, "B", 0)]),
            (("set-vm-id", {"vm-uuid": vms[1], "vm-id": "7"}),
             [(vms[0], 1, "A", 1), (vms[1], 7, "B", 0)]),
            (("set-pool", {"vm-uuid": vms[0], "pool": "B"}),
             [(vms[0], 1, "B", 1), (vms[1], 7, "B", 0)]),
            (("register", {"vm-uuid": vms[2], "pool": "A", "priority": "high"}),
             [(vms[0], 1, "B", 1), (vms[2], 2, "A", 2), (vms[1], 7, "B", 0)]),
            (("remove", {"vm-uuid": vms[0]}),
             [(vms[2], 2, "A", 2), (vms[1], 7, "B", 0)]),
        ]
        for (fn, args), rows in steps:
            answer = pool3.call(fn, args, host=FWD_02)
            assert replicas_by_host(answer)[member]["ok"] is True, answer["replicas"]
            assert seen() == rows, (fn, args)
            assert file_rows(pool3.db(FWD_01)) == rows
            meta = dict(conn.execute("SELECT key, value FROM registry_meta").fetchall())
            assert meta == {"role": "replica", "generation": str(pool_generation(pool3))}, (fn, meta)
        # The same file, never swapped: the connection's file is the one at the path.
        assert os.stat(pool3.db(member)).st_ino == os.fstat(_open_descriptor(pool3.db(member))).st_ino
    finally:
        conn.close()


def _open_descriptor(path):
    """This process's descriptor of ``path`` (the reader's connection holds the only one),
    found through /proc, for comparing inodes."""
    target = os.path.realpath(path)
    fd_dir = "/proc/self/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)) in (target, target + " (deleted)"):
                return int(name)
        except OSError:
            continue
    raise AssertionError("no open descriptor of %s" % target)


@pytest.mark.parametrize("broken", ["VM.get_all_records_where", "pool.get_all_records", "VM.get_by_uuid"])
def test_refresh_that_cannot_read_the_mirror_leaves_the_replica_as_it_was(pool3, broken):
    """One generation behind, a replica reads the VMs of the last change (VM.get_by_uuid); further
    behind, the whole copy (VM.get_all_records_where); either way the pool record first."""
    member = FWD_02
    behind = 1 if broken == "VM.get_by_uuid" else 2
    vms = add_halted_vms(pool3, "mir", 1 + behind)
    pool3.call("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"})
    held = pool_generation(pool3)
    pool3.sim.set_host_live(member, False)
    for vm in vms[1:]:
        pool3.call("register", {"vm-uuid": vm, "pool": "B", "priority": "medium"})
    pool3.sim.set_host_live(member, True)
    before = snapshot(pool3.db(member))
    assert file_rows(pool3.db(member)) == [(vms[0], 1, "A", 2)]

    pool3.sim.inject_fault(broken, code="INTERNAL_ERROR", params=["injected"])
    code, message, details = pool3.fail("refresh", host=member)
    assert code == "VGPU_XAPI_ERROR", (code, message, details)
    assert [f for f in pool3.sim.call("sim.faults") if f["method"] == broken] == [], "the fault never fired"
    assert snapshot(pool3.db(member)) == before
    assert host_generation(pool3, member) == held

    r = pool3.call("refresh", host=member)
    assert (r["changed"], r["previous_generation"], r["generation"]) == (True, held, held + behind)
    assert_replica(pool3, member, [(vms[0], 1, "A", 2)] + [(vm, 2 + i, "B", 1) for i, vm in enumerate(vms[1:])])


# ------------------------------------------------------------------------------------------------
# 6. refresh before anything was published


def test_refresh_with_nothing_published_leaves_no_file(pool3):
    assert pool_generation(pool3) is None
    r = pool3.call("refresh", host=FWD_02)
    assert r["host"] == FWD_02 and r["generation"] is None and r["changed"] is False
    assert r["warnings"] and any("left as it is" in w for w in r["warnings"]), r
    assert db_files(pool3.db(FWD_02)) == [], "refresh created a registry file with nothing to put in it"
    assert host_generation(pool3, FWD_02) is None
    assert pool_generation(pool3) is None


def test_refresh_with_nothing_published_leaves_an_older_file_as_it_is(pool3):
    """A file an older tool wrote on this host (its schema, one row) is not the pool's registry;
    with no copy in XAPI to replace it, it stays exactly as it is."""
    path = pool3.db(FWD_03)
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE vms (vm_id INTEGER NOT NULL UNIQUE, vm_uuid TEXT UNIQUE NOT NULL, "
                       "vm_name TEXT, pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL);"
                       "INSERT INTO vms VALUES (4, 'c0ffee00-0000-4000-8000-000000000001', 'old', 'B', 1);")
    conn.close()
    before = snapshot(path)
    listing = registry_files(pool3.workdir)
    r = pool3.call("refresh", host=FWD_03)
    assert r["generation"] is None and r["changed"] is False and r["warnings"], r
    assert snapshot(path) == before, "refresh rewrote the file although nothing is published"
    assert registry_files(pool3.workdir) == listing, "a backup or journal appeared beside the file"
    assert pool_generation(pool3) is None and host_generation(pool3, FWD_03) is None


# ------------------------------------------------------------------------------------------------
# A change the old master had begun when the master changed


def test_change_in_flight_on_the_old_master_during_the_switch(pool3):
    """The old master checked that it was master, then is slow to write the mirror; meanwhile the
    master changes and the new master registers another VM. The old master's change must not
    commit as a primary after the switch: it must fail (nothing kept) or end up in the new master's
    registry, and the two VMs must never share a vm_id."""
    import XenAPI

    old, new = FWD_01, FWD_02
    vms = add_halted_vms(pool3, "race", 3)
    pool3.call("register", {"vm-uuid": vms[0], "pool": "A", "priority": "high"}, host=old)
    # The old master's next mirror write waits 4 s (the delay is taken before xapi applies it).
    pool3.sim.inject_fault("VM.add_to_other_config", latency_ms=4000)
    outcome = {}

    def slow():
        session = pool3.sim.xenapi_session()
        try:
            outcome["answer"] = pool3.call("register", {"vm-uuid": vms[1], "pool": "B", "priority": "low"},
                                           host=old, xenapi=session)
        except XenAPI.Failure as e:
            outcome["failure"] = e.details
        finally:
            session.xenapi.session.logout()

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.time() + 60
    while pool3.sim.call("sim.faults") and time.time() < deadline:
        time.sleep(0.05)
    assert not pool3.sim.call("sim.faults"), "the old master never reached its mirror write"
    designate(pool3, new)
    fast = pool3.call("register", {"vm-uuid": vms[2], "pool": "A", "priority": "medium"}, host=new)
    t.join(120)
    assert not t.is_alive()

    new_rows = file_rows(pool3.db(new))
    mirror = mirror_rows(pool3, vms)
    ids = [r[1] for r in mirror]
    assert len(ids) == len(set(ids)), "two VMs share a vm_id in the mirror: %s" % mirror
    if "answer" in outcome:
        # Acknowledged: it must be the pool's, not only the old master's.
        assert vms[1] in [r[0] for r in new_rows], (
            "registration acknowledged by the old master after the switch is not in the new master's "
            "registry: %s; new master holds %s" % (outcome["answer"], new_rows))
        assert outcome["answer"]["vm_id"] != fast["vm_id"]
    else:
        assert vms[1] not in [r[0] for r in mirror], (outcome, mirror)
        assert "vgpu-cuda" not in (dma(pool3, vms[1]) or "")
    assert mirror == new_rows
    assert file_meta(pool3.db(new)) == {"role": "primary", "generation": str(pool_generation(pool3))}

"""What the crash suites share (issue 12, part 3): a writer killed with SIGKILL in the middle of a
change, and the checks that follow every kill.

A change runs through several XAPI calls (device-model-args, the VM's mirror keys, the pool's keys)
and one SQLite COMMIT. A kill can land between any two of them. What must hold afterwards, whatever
the point:

- the registry file passes ``PRAGMA integrity_check``, read as the crash left it (a copy of the
  file with its -wal and -shm) and again after the next commands used it;
- a stale -wal / -shm (and SQLite's POSIX locks, which die with the process) block nothing: the
  next command simply runs;
- every acknowledged change is still there;
- the in-flight VM's other device-model-args tokens (not the product's) are there, before any
  repair: the key is written in one VM.set_platform, never removed then added;
- ``scan-vms`` flags exactly the VMs that are out of step (registry, device-model-args and mirror
  disagree) — at most the VM that was in flight — and ``sync --all`` brings them back, so that the
  change in flight is either wholly applied or wholly absent.

"Out of step" is worked out here from the registry file (sqlite3) and the simulator's records,
never from the product's own answer, which is then compared with it.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

VM_KEY = "vgpu-registry"
FIELD_KEY = "XenCenter.CustomFields.vgpu"
GENERATION_KEY = "vgpu-registry:generation"
DMA = "device-model-args"
WORD = {0: "low", 1: "medium", 2: "high"}
DEVICE_TYPES = ("vgpu-cuda", "vgpu-stub")


# ------------------------------------------------------------------------------------------------
# The registry file, read directly


def integrity(path):
    """``PRAGMA integrity_check`` of a registry file (opened read-write, so SQLite recovers its WAL
    as any next opener would)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def crash_copy_integrity(db, where):
    """Copies the registry as the kill left it (file, -wal, -shm) to ``where`` and checks the copy,
    so the real file is first opened by the next command, as on a host after a crash. Returns
    (integrity result, names of the side files that were there)."""
    os.makedirs(where)
    left = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            shutil.copyfile(db + suffix, os.path.join(where, "r.db" + suffix))
            if suffix:
                left.append(suffix)
    if not os.path.exists(os.path.join(where, "r.db")):
        return ["ok"], left
    return integrity(os.path.join(where, "r.db")), left


def registry_rows(db):
    """uuid -> row (dict of every column) of the registry file; {} when there is none."""
    if not os.path.exists(db):
        return {}
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return {r["vm_uuid"].lower(): dict(r) for r in conn.execute("SELECT * FROM vms")}
    finally:
        conn.close()


def registry_generation(db):
    """The generation the registry file records (schema 3's meta), or None."""
    if not os.path.exists(db):
        return None
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "registry_meta" not in tables:
            return None
        row = conn.execute("SELECT value FROM registry_meta WHERE key='generation'").fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


def values(row):
    """What a registration says about the device: (pool, priority word, vm_id)."""
    return (row["pool_id"], WORD[row["priority"]], row["vm_id"])


def mirror_of(row):
    """What the VM's mirror key must hold for a registry row (SPEC section 9)."""
    want = {}
    for col, value in row.items():
        if col == "vm_uuid":
            want[col] = value.lower()
        elif col == "pool_id":
            want["pool"] = value
        elif col == "priority":
            want["priority"] = WORD[value]
        else:
            want[col] = value
    return want


def field_of(row):
    return "pool %s, %s, vm_id %d" % (row["pool_id"], WORD[row["priority"]], row["vm_id"])


def device_line(pool, priority, vm_id):
    """The entry the default config writes (SPEC section 3)."""
    return "-device vgpu-cuda,addr=5,pool_id=%s,priority=%s,vm_id=%d" % (pool, priority, vm_id)


def split_dma(dma):
    """(the other tokens, the vgpu entries) of a device-model-args value. The values this suite
    writes have no quoting, so whitespace splits them."""
    tokens = (dma or "").split()
    others, devices = [], []
    i = 0
    while i < len(tokens):
        if tokens[i] == "-device" and i + 1 < len(tokens) and tokens[i + 1].split(",")[0] in DEVICE_TYPES:
            devices.append("-device " + tokens[i + 1])
            i += 2
        else:
            others.append(tokens[i])
            i += 1
    return " ".join(others), devices


# ------------------------------------------------------------------------------------------------
# Out of step, worked out from the file and the simulator


def out_of_step(db, sim, vm_uuids, base_tokens):
    """{uuid: why} of the VMs whose registry row, device-model-args and mirror keys disagree.
    ``base_tokens``: uuid -> the other tokens the VM's device-model-args carried before the stream
    (kept by every change)."""
    rows = registry_rows(db)
    out = {}
    for u in vm_uuids:
        vm = sim.get_vm(u)
        dma = vm["platform"].get(DMA)
        others, devices = split_dma(dma)
        oc = vm["other_config"]
        row = rows.get(u)
        why = []
        if others != base_tokens.get(u, ""):
            why.append("other tokens %r, not %r" % (others, base_tokens.get(u, "")))
        if row is None:
            if devices:
                why.append("unregistered with a device %r" % devices)
            if VM_KEY in oc or FIELD_KEY in oc:
                why.append("unregistered with mirror keys")
        else:
            want = device_line(*values(row))
            if devices != [want]:
                why.append("device %r, registry says %r" % (devices, want))
            try:
                mirrored = json.loads(oc[VM_KEY]) if VM_KEY in oc else None
            except ValueError:
                mirrored = "unreadable"
            if mirrored != mirror_of(row) or oc.get(FIELD_KEY) != field_of(row):
                why.append("mirror %r / %r" % (oc.get(VM_KEY), oc.get(FIELD_KEY)))
        if why:
            out[u] = why
    return out


def scan_flags(scan):
    """{uuid: what} of the VMs a `scan-vms --format json` document shows out of step: registered
    VMs not `configured` or with their mirror not `ok`; unregistered VMs carrying a vgpu device or a
    mirror key (the suites strip every device before the stream, so neither is the fixture's);
    stale registrations."""
    flags = {}
    for r in scan["registered"]:
        if r["status"] != "configured" or r.get("mirror", "ok") != "ok":
            flags[r["vm_uuid"]] = "registered: status %s, mirror %s" % (r["status"], r.get("mirror", "ok"))
    for u in scan["unregistered"]:
        if u.get("device") or u.get("mirror"):
            flags[u["vm_uuid"]] = "unregistered: device %s, mirror %s" % (u.get("device"), u.get("mirror"))
    for s in scan["stale"]:
        flags[s["vm_uuid"]] = "stale"
    return flags


def state_of(db, vm_uuids):
    """uuid -> (pool, priority word, vm_id) or None, from the registry file."""
    rows = registry_rows(db)
    return {u: (values(rows[u]) if u in rows else None) for u in vm_uuids}


# ------------------------------------------------------------------------------------------------
# Killing


def kill_group(proc):
    """SIGKILL the process group the writer leads (it was started in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout, step=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(step)
    return predicate()


def wait_idle(sim, timeout=30):
    """Until the simulator has no call in flight (an injected latency has run out and the call it
    delayed has been applied or failed)."""
    assert wait_for(lambda: sim.stats()["in_flight"] == 0, timeout, 0.02), "calls still in flight"


def popen(argv, env):
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


# ------------------------------------------------------------------------------------------------
# The rig: the pool prepared for a stream, snapshots to start again from, the checks after a kill


class CrashRig(object):
    """The simulator prepared for a stream of changes to the registry file ``db`` on its master.
    A front end (the CLI, the plugin) gives ``scan`` and ``sync_all``."""

    def __init__(self, sim, db, tmp, member, vms):
        self.sim = sim
        self.db = db
        self.tmp = tmp
        self.member = member
        self.vms = vms
        self.base = {}
        self.generation_seen = 0
        self.tokens_kept = 0
        self.kills = 0
        self.crash_dirs = 0
        self.side_files = 0
        self.reset()

    def reset(self):
        """The sample pool without vgpu devices, the member offline, no registry file."""
        self.sim.reset()
        self.sim.clear_faults()
        self.sim.set_host_live(self.member, False)
        self.after_reset()
        for u in self.vms:
            others, _ = split_dma(self.sim.get_vm(u)["platform"].get(DMA))
            self.sim.set_platform_key(u, DMA, others or None)
            self.base[u] = others
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                os.remove(self.db + suffix)

    def snapshot(self):
        """The simulator's VMs and pool keys and the registry files, to start again from."""
        files = {}
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                with open(self.db + suffix, "rb") as f:
                    files[suffix] = f.read()
        vms = {}
        for u in self.vms:
            vm = self.sim.get_vm(u)
            vms[u] = {"platform": dict(vm["platform"]), "other_config": dict(vm["other_config"])}
        return {"files": files, "vms": vms, "pool": dict(self.sim.pool_other_config()),
                "generation_seen": self.generation_seen, "base": dict(self.base)}

    def restore(self, snap):
        self.sim.reset()
        self.sim.clear_faults()
        self.sim.set_host_live(self.member, False)
        self.after_reset()
        for u, fields in snap["vms"].items():
            self.sim.set_vm(u, fields)
        pool = self.sim.pool_other_config()
        for k in set(pool) | set(snap["pool"]):
            if pool.get(k) != snap["pool"].get(k):
                self.sim.set_other_config_key("pool", None, k, snap["pool"].get(k))
        os.makedirs(os.path.dirname(self.db), exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                os.remove(self.db + suffix)
            if suffix in snap["files"]:
                with open(self.db + suffix, "wb") as f:
                    f.write(snap["files"][suffix])
        self.generation_seen = snap["generation_seen"]
        self.base = dict(snap["base"])
        self.sim.clear_call_log()

    def after_reset(self):
        """What the front end needs again after the simulator was reset."""

    def state(self):
        return state_of(self.db, self.vms)

    # ------------------------------------------------------------------ after a kill

    def after_kill(self, inflight, before, after, what):
        """Every check that follows a kill (see the module doc); returns the in-flight VM's state
        after the repair (``before`` or ``after``: the change is wholly absent or wholly there)."""
        self.kills += 1
        self.crash_dirs += 1
        gen_before = self.generation_seen
        result, left = crash_copy_integrity(self.db, os.path.join(self.tmp, "crash-%d" % self.crash_dirs))
        assert result == ["ok"], "%s: integrity of the file as the kill left it: %s" % (what, result)
        self.side_files += bool(left)
        if self.base[inflight]:
            # device-model-args are written in one VM.set_platform: wherever the kill fell, the
            # VM's other QEMU tokens are there, before any repair.
            others, _ = split_dma(self.sim.get_vm(inflight)["platform"].get(DMA))
            assert others == self.base[inflight], "%s: the kill took the VM's other tokens: %r, not %r" % (
                what, others, self.base[inflight])
            self.tokens_kept += 1
        # The next command runs over whatever the kill left (-wal, -shm; SQLite's locks died with it).
        scan = self.scan()
        truth = out_of_step(self.db, self.sim, self.vms, self.base)
        flags = scan_flags(scan)
        assert set(truth) <= {inflight}, "%s: VMs out of step that were not in flight: %s" % (what, truth)
        assert set(flags) == set(truth), "%s: scan-vms flags %s, out of step: %s" % (what, flags, truth)
        now = self.state()
        for u in self.vms:
            if u != inflight:
                assert now[u] == before[u], "%s: VM %s lost an acknowledged change: %s, not %s" % (
                    what, u, now[u], before[u])
        sync = self.sync_all()
        assert sync["failed"] == 0, "%s: %s" % (what, sync)
        truth = out_of_step(self.db, self.sim, self.vms, self.base)
        scan = self.scan()
        assert truth == {}, "%s: still out of step after sync: %s" % (what, truth)
        assert scan_flags(scan) == {}, "%s: scan-vms after sync: %s" % (what, scan_flags(scan))
        now = self.state()
        for u in self.vms:
            if u != inflight:
                assert now[u] == before[u], "%s: VM %s: %s, not %s" % (what, u, now[u], before[u])
        assert now[inflight] in (before[inflight], after[inflight]), (
            "%s: the change in flight is half there: %s, neither %s nor %s"
            % (what, now[inflight], before[inflight], after[inflight]))
        pool_gen = self.sim.pool_other_config().get(GENERATION_KEY)
        if pool_gen is None:
            # Nothing was ever published (the kill came before the first change's generation).
            assert gen_before == 0 and registry_generation(self.db) in (None, 0), (
                "%s: the pool has no generation, the registry %s, before %d"
                % (what, registry_generation(self.db), gen_before))
            pool_gen = 0
        else:
            assert registry_generation(self.db) == int(pool_gen), (
                "%s: registry at generation %s, the pool at %s" % (what, registry_generation(self.db), pool_gen))
        # Replicas never go back to an older generation, so the pool's must never go back either.
        assert int(pool_gen) >= gen_before, "%s: the pool's generation went back from %d to %s" % (
            what, gen_before, pool_gen)
        self.generation_seen = int(pool_gen)
        assert integrity(self.db) == ["ok"], what
        return now[inflight]

    def note_generation(self):
        """Remembers the pool's generation now (after an acknowledged change or a preparation)."""
        g = self.sim.pool_other_config().get(GENERATION_KEY)
        self.generation_seen = 0 if g is None else int(g)

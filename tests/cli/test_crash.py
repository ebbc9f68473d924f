"""A writer killed with SIGKILL in the middle of a change (issue 12, part 3), through `vgpu-admin`.

`vgpu-admin` runs as on the pool master (VGPU_HOST_UUID is the master; the member is offline, so
the refresh fan-out after each change fails fast and never fails the change), against the XAPI
simulator, with a registry file of its own. Every real VM's vgpu device is stripped before the
stream (other tokens kept), so a device on an unregistered VM can only come from the stream.

- deterministic kill points: for each XAPI call a change makes (learnt from the call log of a clean
  run from the same state), that call is delayed, the writer is killed once the call has reached the
  simulator, and the call is then either applied (xapi had it) or refused (it never took effect);
- the SQLite commit itself, and the creation of the registry file (still in a rollback journal):
  strace (needed; Debian: the strace package) holds the writer right after its k-th write to the
  -wal file or to the file, and the kill lands there;
- a seeded random stream: changes of every kind, each killed (or not) at a random time.

After every kill, see crash_support.py: integrity, nothing acknowledged lost, `scan-vms` flags
exactly what is out of step (at most the VM in flight), and `sync --all` repairs it. A register
killed after it wrote the device and before the pool's generation moved on is rolled back: its
claim names the VM, and sync (or the next change) takes the device and mirror keys off.

Reproduce the random stream with another seed or length: VGPU_CRASH_SEED=<n>
VGPU_CRASH_CHANGES=<n> (printed with -s).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    CUDA_DEV, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, REAL_VMS, RENDER_01, RENDER_02, WEB_01,
    base_env, fixture_uuid,
)
from crash_support import (
    DMA, GENERATION_KEY, CrashRig, crash_copy_integrity, kill_group, out_of_step, popen, scan_flags, split_dma,
    state_of, wait_for, wait_idle,
)

MASTER = fixture_uuid("sample_pool.json", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool.json", "xcp-lab-02", kind="hosts")
VMS = sorted(REAL_VMS)
# How long the call a kill aims at is held back; doubled (up to 4 times) when the writer went past
# it before the kill landed (a loaded machine).
LATENCY_MS = 200
WORD = ("low", "medium", "high")


class Rig(CrashRig):
    """vgpu-admin run as on the master."""

    def __init__(self, binary, sim, tmp_path):
        self.binary = binary
        db = str(tmp_path / "registry" / "vgpu_config.db")
        self.config = str(tmp_path / "vgpu.conf")
        with open(self.config, "w") as f:
            # A stuck lock or claim fails within seconds instead of a minute.
            f.write("lock_timeout_s = 10\n")
        self.env = base_env()
        self.env.update({"VGPU_XAPI": sim.url, "VGPU_DB": db, "VGPU_CONFIG": self.config,
                         "VGPU_HOST_UUID": MASTER})
        CrashRig.__init__(self, sim, db, str(tmp_path), MEMBER, VMS)

    def argv(self, args):
        return [self.binary] + [str(a) for a in args] + ["--format", "json"]

    def run(self, *args, timeout=120):
        p = subprocess.run(self.argv(args), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")

    def ok(self, *args):
        code, out, err = self.run(*args)
        assert code == 0, "vgpu-admin %s -> %d\nstdout: %s\nstderr: %s" % (args, code, out, err)
        return json.loads(out)

    def scan(self):
        return self.ok("scan-vms")

    def sync_all(self):
        return self.ok("sync", "--all")


@pytest.fixture
def rig(binary, sim, tmp_path):
    return Rig(binary, sim, tmp_path)


def free_id(state):
    used = {s[2] for s in state.values() if s}
    n = 1
    while n in used:
        n += 1
    return n


# ------------------------------------------------------------------------------------------------
# Deterministic kill points: every XAPI call of a change, applied or not, and the commit

# (name, preparation, the change, its VM, the VM's values after it (None: unregistered))
SCENARIOS = [
    ("register-first", [], ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"],
     RENDER_01, ("A", "high", 1)),
    ("register-second", [["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
     ["register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "medium", "--vm-id", "7"],
     ML_TRAIN_A, ("A", "medium", 7)),
    ("update", [["register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"],
                ["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
     ["update-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "B", "--priority", "low", "--vm-id", "9"],
     ML_TRAIN_A, ("B", "low", 9)),
    ("remove", [["register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"],
                ["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
     ["remove-vm", "--vm-uuid", ML_TRAIN_A], ML_TRAIN_A, None),
]
WRITES = ("add_to_", "remove_from_", "set_")


def prepare(rig, prep):
    """Runs the preparation from the stripped sample pool; returns its snapshot."""
    rig.reset()
    for args in prep:
        rig.ok(*args)
    rig.note_generation()
    return rig.snapshot()


def clean_calls(rig, snap, change):
    """The XAPI calls of ``change`` from the state ``snap`` (a clean run)."""
    rig.restore(snap)
    rig.ok(*change)
    calls = [e["method"] for e in rig.sim.call_log()]
    assert calls, "no XAPI call logged"
    return calls


def is_write(method):
    return method.split(".")[-1].startswith(WRITES)


def kill_points(calls):
    """Every call that writes, applied (and refused, for the adds and sets); of the reads before the first
    write (a kill anywhere there finds nothing changed) the first and the last; of the calls after
    the last write (the change is committed before them) the first and the last."""
    writes = [i for i, m in enumerate(calls) if is_write(m)]
    assert writes, calls
    reads = {0, writes[0] - 1, len(calls) - 1}
    if writes[-1] + 1 < len(calls):
        reads.add(writes[-1] + 1)
    points = [(i, True) for i in sorted(reads | set(writes)) if i >= 0]
    # A refused add leaves its key missing (its remove went through); a refused set is the write
    # of device-model-args that never took effect; a refused remove leaves things as the call
    # before it did, which is a point of its own already.
    points += [(i, False) for i in writes if calls[i].split(".")[-1].startswith(("add_to_", "set_"))]
    return points


def kill_at(rig, change, calls, index, applied, latency):
    """Runs ``change`` with call ``index`` held back ``latency`` ms and kills the writer once that
    call reached the simulator; the held call is then applied (``applied``) or refused. True when
    the writer had made no call past it (the kill landed where aimed)."""
    method = calls[index]
    nth = calls[:index].count(method) + 1
    kw = {} if applied else {"code": "INTERNAL_ERROR"}
    rig.sim.clear_call_log()
    rig.sim.inject_fault(method, nth=nth, latency_ms=latency, **kw)
    proc = popen(rig.argv(change), rig.env)
    arrived = wait_for(lambda: len(rig.sim.call_log()) > index or proc.poll() is not None, 60)
    kill_group(proc)
    proc.communicate()
    wait_idle(rig.sim)
    rig.sim.clear_faults()
    log = [e["method"] for e in rig.sim.call_log()]
    assert arrived and proc.returncode == -signal.SIGKILL, (
        "the writer ended before the kill (status %s); calls: %s" % (proc.returncode, log))
    assert log[:index + 1] == calls[:index + 1], "another sequence of calls: %s, clean run: %s" % (log, calls)
    return len(log) == index + 1


@pytest.mark.parametrize("name,prep,change,vm,after", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_kill_at_every_xapi_call(rig, name, prep, change, vm, after):
    snap = prepare(rig, prep)
    calls = clean_calls(rig, snap, change)
    points = kill_points(calls)
    outcomes = {"applied": 0, "absent": 0}
    kept_before = rig.tokens_kept
    for index, applied in points:
        what = "%s: kill at call %d %s (%s)" % (name, index, calls[index], "applied" if applied else "refused")
        latency = LATENCY_MS
        for attempt in range(4):
            rig.restore(snap)
            before = rig.state()
            landed = kill_at(rig, change, calls, index, applied, latency)
            if landed:
                break
            latency *= 2
        assert landed, "%s: the writer always went past the held call before the kill" % what
        want = dict(before)
        want[vm] = after
        got = rig.after_kill(vm, before, want, what)
        outcomes["applied" if got == after else "absent"] += 1
    kept = rig.tokens_kept - kept_before
    # after_kill checked the VM's other tokens after every kill
    assert kept == (len(points) if snap["base"][vm] else 0), (kept, len(points))
    sys.stdout.write("\n%s: %d kills at %d of its %d calls; change there after %d, absent after %d; "
                     "other device-model-args tokens kept after %d\n"
                     % (name, len(points), len({i for i, _ in points}), len(calls), outcomes["applied"],
                        outcomes["absent"], kept))
    # Past the pool's generation the change is there (a reader catches up from the mirror), before
    # it not (a register is rolled back by sync): both sides must have been reached.
    assert outcomes["applied"] and outcomes["absent"], outcomes


# ------------------------------------------------------------------------------------------------
# Inside the SQLite commit: every XAPI write is done, the pool's generation has moved on, and the
# writer dies while SQLite appends the transaction to the -wal file. strace holds the writer right
# after its k-th write to that file (and nothing else), and the kill lands there.


def strace_or_fail():
    exe = shutil.which("strace")
    if not exe:
        pytest.fail("strace is needed to stop the writer inside its SQLite commit (Debian: apt-get install "
                    "strace)", pytrace=False)
    return exe


def wal_writes(trace):
    with open(trace) as f:
        return [l for l in f if "pwrite64(" in l]


def test_kill_inside_the_sqlite_commit(rig):
    strace = strace_or_fail()
    change = ["set-pool", "--vm-uuid", ML_TRAIN_A, "--pool", "B"]
    snap = prepare(rig, [["register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"],
                         ["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]])
    trace = os.path.join(rig.tmp, "trace")

    def traced(extra):
        return ([strace, "-f", "-qq", "-o", trace, "-P", rig.db + "-wal", "-e", "trace=pwrite64"] + extra
                + rig.argv(change))

    rig.restore(snap)
    p = subprocess.run(traced([]), env=rig.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    total = len(wal_writes(trace))
    # The -wal header, then a 24-byte header and a page per frame: at least one frame.
    assert total >= 3, wal_writes(trace)
    committed = {}
    for k in sorted({1, 2, total - 1, total}):
        rig.restore(snap)
        before = rig.state()
        os.remove(trace)
        proc = popen(traced(["-e", "inject=pwrite64:delay_exit=30000000:when=%d" % k]), rig.env)
        held = wait_for(lambda: proc.poll() is not None or (
            os.path.exists(trace) and any("(DELAYED)" in l for l in wal_writes(trace))), 60)
        kill_group(proc)
        proc.communicate()
        assert held and proc.returncode == -signal.SIGKILL, "the writer ended before the kill: %s" % proc.returncode
        wait_idle(rig.sim)
        copy = os.path.join(rig.tmp, "commit-%d" % k)
        result, _ = crash_copy_integrity(rig.db, copy)
        assert result == ["ok"], result
        committed[k] = state_of(os.path.join(copy, "r.db"), VMS)[ML_TRAIN_A]
        want = dict(before)
        want[ML_TRAIN_A] = ("B", "high", 1)
        got = rig.after_kill(ML_TRAIN_A, before, want, "kill after -wal write %d of %d" % (k, total))
        # The pool's generation had moved on: a reader catches the registry up from the mirror.
        assert got == want[ML_TRAIN_A], got
    sys.stdout.write("\ncommit: %d kills inside the commit (%d -wal writes); registry file as the kill "
                     "left it: %s\n" % (len(committed), total, committed))
    # Before the last write the commit is not in the file; after it, it is: the kills were inside.
    assert committed[1] == ("A", "high", 1) and committed[total] == ("B", "high", 1), committed


def test_kill_while_the_registry_file_is_created(rig):
    """The first change creates the file, in a rollback journal until it turns to WAL: a kill
    there leaves a hot journal, which the next reader must not trip over."""
    strace = strace_or_fail()
    change = ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"]
    snap = prepare(rig, [])
    trace = os.path.join(rig.tmp, "trace")
    hot = 0
    for k in (1, 2, 3):
        rig.restore(snap)
        before = rig.state()
        argv = ([strace, "-f", "-qq", "-o", trace, "-P", rig.db, "-e", "trace=pwrite64",
                 "-e", "inject=pwrite64:delay_exit=30000000:when=%d" % k] + rig.argv(change))
        if os.path.exists(trace):
            os.remove(trace)
        proc = popen(argv, rig.env)
        held = wait_for(lambda: proc.poll() is not None or (
            os.path.exists(trace) and any("(DELAYED)" in l for l in wal_writes(trace))), 60)
        kill_group(proc)
        proc.communicate()
        assert held and proc.returncode == -signal.SIGKILL, "the writer ended before the kill: %s" % proc.returncode
        wait_idle(rig.sim)
        hot += os.path.exists(rig.db + "-journal")
        want = dict(before)
        want[RENDER_01] = ("A", "high", 1)
        got = rig.after_kill(RENDER_01, before, want, "kill at write %d of the new registry file" % k)
        assert got is None, "nothing reached XAPI before the file existed: %s" % (got,)
    sys.stdout.write("\ncreation: 3 kills while the file was created, %d left a hot journal\n" % hot)
    assert hot, "no kill left a hot journal"


# ------------------------------------------------------------------------------------------------
# A seeded random stream of changes, killed at random times

SEED = int(os.environ.get("VGPU_CRASH_SEED", "1206"))
CHANGES = int(os.environ.get("VGPU_CRASH_CHANGES", "30"))
STREAM_VMS = [RENDER_01, RENDER_02, ML_TRAIN_A, ML_TRAIN_B, CUDA_DEV, LEGACY_STUB, WEB_01]


def random_change(rng, state):
    """(argv, the VM, its values after the change) of one valid change of ``state``."""
    registered = [u for u in STREAM_VMS if state[u]]
    free = [u for u in STREAM_VMS if not state[u]]
    kinds = (["register"] if free else []) + (["update", "pool", "priority", "vm-id", "weight", "remove"]
                                                if registered else [])
    kind = rng.choice(kinds)
    if kind == "register":
        vm = rng.choice(free)
        pool, prio = rng.choice("AB"), rng.choice(WORD)
        args = ["register-vm", "--vm-uuid", vm, "--pool", pool, "--priority", prio]
        vm_id = free_id(state)
        if rng.random() < 0.4:
            vm_id = rng.choice([n for n in range(1, 30) if n not in {s[2] for s in state.values() if s}])
            args += ["--vm-id", vm_id]
        return args, vm, (pool, prio, vm_id)
    vm = rng.choice(registered)
    pool, prio, vm_id = state[vm]
    used = {s[2] for u, s in state.items() if s and u != vm}
    new_id = rng.choice([n for n in range(1, 30) if n not in used])
    if kind == "remove":
        return ["remove-vm", "--vm-uuid", vm], vm, None
    if kind == "weight":
        return ["set-weight", "--vm-uuid", vm, "--weight", rng.randint(1, 100)], vm, state[vm]
    if kind == "pool":
        p = rng.choice("AB")
        return ["set-pool", "--vm-uuid", vm, "--pool", p], vm, (p, prio, vm_id)
    if kind == "priority":
        q = rng.choice(WORD)
        return ["set-priority", "--vm-uuid", vm, "--priority", q], vm, (pool, q, vm_id)
    if kind == "vm-id":
        return ["set-vm-id", "--vm-uuid", vm, "--vm-id", new_id], vm, (pool, prio, new_id)
    p, q = rng.choice("AB"), rng.choice(WORD)
    return (["update-vm", "--vm-uuid", vm, "--pool", p, "--priority", q, "--vm-id", new_id], vm, (p, q, new_id))


def test_random_kills_in_a_stream_of_changes(rig):
    rng = random.Random(SEED)
    sys.stdout.write("\nVGPU_CRASH_SEED=%d VGPU_CRASH_CHANGES=%d\n" % (SEED, CHANGES))
    # A little latency on every call widens the stretch of XAPI writes a random kill falls into.
    rig.sim.inject_fault("*", times=-1, latency_ms=3)
    state = rig.state()
    took = []
    acked = killed = applied = 0
    for n in range(CHANGES):
        args, vm, after = random_change(rng, state)
        what = "change %d (seed %d) %s" % (n, SEED, " ".join(str(a) for a in args))
        want = dict(state)
        want[vm] = after
        # Most kills land inside the change: anywhere from the start to a little past its usual end.
        kill_after = rng.uniform(0, 1.2 * (sorted(took)[len(took) // 2] if took else 0.3)) \
            if rng.random() < 0.7 else None
        started = time.time()
        proc = popen(rig.argv(args), rig.env)
        if kill_after is not None:
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                kill_group(proc)
        out, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            killed += 1
            wait_idle(rig.sim)
            got = rig.after_kill(vm, state, want, what)
            applied += got == after
            state = rig.state()
            continue
        took.append(time.time() - started)
        doc = json.loads(out.decode()) if out.strip() else {}
        # A weight is stored even when a replica could not reload it (the member is offline here):
        # exit 1 with the result and in_effect false (SPEC section 10).
        stored_not_in_effect = proc.returncode == 1 and args[0] == "set-weight" and doc.get("in_effect") is False
        assert proc.returncode == 0 or stored_not_in_effect, "%s -> %d: %s" % (what, proc.returncode, err.decode())
        acked += 1
        # Acknowledged: there, and in step everywhere.
        assert doc["vm_uuid"] == vm, what
        state = rig.state()
        assert state == want, "%s: %s" % (what, {u: (state[u], want[u]) for u in VMS if state[u] != want[u]})
        assert out_of_step(rig.db, rig.sim, VMS, rig.base) == {}, what
        rig.note_generation()
    sys.stdout.write("random stream: %d changes, %d acknowledged, %d killed (%d there after the repair, %d "
                     "absent; %d left -wal/-shm behind; other tokens kept after %d)\n"
                     % (CHANGES, acked, killed, applied, killed - applied, rig.side_files,
                        rig.tokens_kept))
    assert killed and acked, (killed, acked)


# ------------------------------------------------------------------------------------------------
# The kill that took the VM's other tokens while device-model-args were removed, then added; they
# are now written in one VM.set_platform (decision 0012).


def kill_once(rig, prep, change, method, applied=True):
    snap = prepare(rig, prep)
    calls = clean_calls(rig, snap, change)
    index = calls.index(method)
    latency = LATENCY_MS
    for attempt in range(4):
        rig.restore(snap)
        if kill_at(rig, change, calls, index, applied, latency):
            return snap
        latency *= 2
    pytest.fail("the writer always went past %s before the kill" % method)


@pytest.mark.parametrize("applied", [True, False], ids=["write-landed", "write-refused"])
def test_kill_at_the_platform_write_keeps_other_tokens(rig, applied):
    """The writer is killed while its one write of device-model-args (VM.set_platform) is in
    xapi: whether the write landed or not, the VM's other QEMU tokens are there right after the
    kill, and `sync` puts the registered device back next to them."""
    snap = kill_once(rig, [["register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"]],
                     ["set-pool", "--vm-uuid", ML_TRAIN_A, "--pool", "B"], "VM.set_platform", applied)
    assert snap["base"][ML_TRAIN_A], "ml-train-a carries other tokens in the fixture"
    others, devices = split_dma(rig.sim.get_vm(ML_TRAIN_A)["platform"].get(DMA))
    assert others == snap["base"][ML_TRAIN_A]
    pool = "B" if applied else "A"
    assert devices == ["-device vgpu-cuda,addr=5,pool_id=%s,priority=high,vm_id=1" % pool]
    rig.ok("sync", "--all")
    others, devices = split_dma(rig.sim.get_vm(ML_TRAIN_A)["platform"].get(DMA))
    assert devices == ["-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"]
    assert others == snap["base"][ML_TRAIN_A]


# ------------------------------------------------------------------------------------------------
# A register killed between its device write and its commit: the claim names the VM


def claims(sim):
    return {k: v for k, v in sim.pool_other_config().items() if k.startswith("vgpu-registry:claim:")}


def test_sync_alone_repairs_a_killed_register(rig):
    """The device the killed register wrote is taken off by `sync --all` (the registry never had
    the VM), reported as a roll-back of that VM, and the claim it left is gone."""
    kill_once(rig, [["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
              ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"], "VM.set_platform")
    _, devices = split_dma(rig.sim.get_vm(RENDER_01)["platform"].get(DMA))
    assert devices == ["-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=2"], devices
    generation = rig.sim.pool_other_config()[GENERATION_KEY]
    left = claims(rig.sim)
    assert any(RENDER_01 in v for k, v in left.items() if int(k.rsplit(":", 1)[1]) > int(generation)), left
    assert RENDER_01 in scan_flags(rig.scan())
    # A dry run says what it would take off and changes nothing.
    dry = rig.ok("sync", "--all", "--dry-run")
    item = [r for r in dry["results"] if r["vm_uuid"] == RENDER_01]
    assert [(r["status_before"], r["action"]) for r in item] == [("unregistered", "would_apply")], dry
    assert split_dma(rig.sim.get_vm(RENDER_01)["platform"].get(DMA))[1] == devices
    sync = rig.ok("sync", "--all")
    item = [r for r in sync["results"] if r["vm_uuid"] == RENDER_01]
    assert [(r["status_before"], r["action"]) for r in item] == [("unregistered", "applied")], sync
    dma = [c for c in item[0]["changes"] if c["field"] == "device_model_args"]
    assert dma and "vm_id=2" in dma[0]["old"] and "vgpu-cuda" not in (dma[0]["new"] or ""), item
    assert out_of_step(rig.db, rig.sim, VMS, rig.base) == {}
    assert rig.state()[RENDER_01] is None
    generation = int(rig.sim.pool_other_config()[GENERATION_KEY])
    assert all(int(k.rsplit(":", 1)[1]) <= generation for k in claims(rig.sim)), claims(rig.sim)
    # Nothing is left for a second sync to do.
    again = rig.ok("sync", "--all")
    assert [r for r in again["results"] if r["action"] != "unchanged"] == [], again


def test_sync_of_that_vm_alone_repairs_a_killed_register(rig):
    """`sync --vm-uuid` of the VM that scan-vms flags repairs it too, rather than answering that
    the VM is not registered; a VM that is merely unregistered still gets NOT_REGISTERED."""
    kill_once(rig, [["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
              ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"], "VM.set_platform")
    assert RENDER_01 in scan_flags(rig.scan())
    code, _, err = rig.run("sync", "--vm-uuid", WEB_01)
    assert code != 0 and "NOT_REGISTERED" in err, (code, err)
    dry = rig.ok("sync", "--vm-uuid", RENDER_01, "--dry-run")
    assert [(r["vm_uuid"], r["status_before"], r["action"]) for r in dry["results"]] == [
        (RENDER_01, "unregistered", "would_apply")], dry
    assert "vm_id=2" in rig.sim.get_vm(RENDER_01)["platform"][DMA]
    sync = rig.ok("sync", "--vm-uuid", RENDER_01)
    assert [(r["vm_uuid"], r["action"]) for r in sync["results"]] == [(RENDER_01, "applied")], sync
    assert out_of_step(rig.db, rig.sim, VMS, rig.base) == {}
    assert rig.state()[RENDER_01] is None
    assert scan_flags(rig.scan()) == {}


def test_the_next_register_rolls_back_a_killed_one_and_reuses_no_device_id(rig):
    """Without a sync in between, the next change takes the killed register's claim over and its
    device off, so the free vm_id it picks (the one that device carried) is on one VM only."""
    kill_once(rig, [["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]],
              ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"], "VM.set_platform")
    assert "vm_id=2" in rig.sim.get_vm(RENDER_01)["platform"][DMA]
    doc = rig.ok("register-vm", "--vm-uuid", WEB_01, "--pool", "B", "--priority", "medium")
    assert doc["vm_id"] == 2, doc
    holders = [u for u in VMS if "vm_id=2" in (rig.sim.get_vm(u)["platform"].get(DMA) or "")]
    assert holders == [WEB_01], holders
    assert out_of_step(rig.db, rig.sim, VMS, rig.base) == {}
    assert scan_flags(rig.scan()) == {}


@pytest.mark.parametrize("applied", [True, False], ids=["write-landed", "write-refused"])
def test_a_killed_register_of_a_vm_with_a_device_keeps_that_device(rig, applied):
    """A register that rewrites a device the VM already had (an older tool's) does not name the
    VM in its claim: whether its write landed or not, the VM keeps a device after sync."""
    snap = prepare(rig, [["register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low"]])
    legacy = "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=9"
    rig.sim.set_platform_key(RENDER_01, DMA, " ".join(t for t in [rig.base[RENDER_01], legacy] if t))
    snap = rig.snapshot()
    change = ["register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"]
    calls = clean_calls(rig, snap, change)
    index = calls.index("VM.set_platform")
    latency = LATENCY_MS
    for attempt in range(4):
        rig.restore(snap)
        if kill_at(rig, change, calls, index, applied, latency):
            break
        latency *= 2
    else:
        pytest.fail("the writer always went past VM.set_platform before the kill")
    assert not any(RENDER_01 in v for v in claims(rig.sim).values()), claims(rig.sim)
    rig.ok("sync", "--all")
    _, devices = split_dma(rig.sim.get_vm(RENDER_01)["platform"].get(DMA))
    want = "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=2" if applied else legacy
    assert devices == [want], devices

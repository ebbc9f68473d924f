"""The plugin killed with SIGKILL in the middle of a change (issue 12, part 3), run the way xapi
runs it: ``host.call_plugin`` on the master of the simulated pool, the plugin file exec'd with
xapi's argument, environment and session of its own. Two variants: the native path under CPython
3.12 (the Rust core in-process) and the ``vgpu-admin call`` bridge under CPython 2.7 (XCP-ng 8.2),
where the process that talks to XAPI and SQLite is the plugin's vgpu-admin child.

How a plugin dies on a real host: xapi's ``call_plugin`` (ocaml/xapi/xapi_plugins.ml) waits for it
with no timeout of its own; forkexecd has started it in a session of its own (setsid), so when the
plugin is killed for good — a power loss, a toolstack restart killing what forkexecd started, an
administrator's ``kill -9 -- -<pgid>``, a caller's timeout that kills the session — its whole
process group goes, the bridge's vgpu-admin child with it. Killing only the plugin's own pid would
leave that child running to the end of the change, which is no crash of the writer at all. So the
kill here is SIGKILL to the process group, and the test checks that every process of the group,
the child included, is gone.

After each kill: the checks of tests/cli/crash_support.py, with `scan` and `sync all=true` called
through the plugin: integrity, every acknowledged change there, `scan` flags exactly the VM in
flight, `sync` repairs it. Kill points: the XAPI writes of a change (each held back until the kill
lands), then a seeded random stream (VGPU_CRASH_SEED, printed with -s).
"""

import json
import os
import random
import signal
import sys
import threading
import time

import pytest

from plugin_support import (
    CUDA_DEV, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, PLUGIN_FILE, RENDER_01, RENDER_02, SAMPLE_MEMBER, TESTS_DIR,
    TWIN_HALTED, TWIN_RUNNING, VARIANTS, WEB_01, DB_PRIMARY, Pool, get_simulator,
)

sys.path.insert(0, os.path.join(TESTS_DIR, "cli"))
from crash_support import CrashRig, out_of_step, wait_for, wait_idle  # noqa: E402

VMS = sorted([CUDA_DEV, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, RENDER_01, RENDER_02, TWIN_HALTED, TWIN_RUNNING,
              WEB_01, DB_PRIMARY])
CRASH_VARIANTS = [v for v in VARIANTS if v.name in ("py3.12-native", "py2.7-cli")]
SEED = int(os.environ.get("VGPU_CRASH_SEED", "1206"))
CHANGES = int(os.environ.get("VGPU_CRASH_PLUGIN_CHANGES", "12"))
LATENCY_MS = 400
WORD = ("low", "medium", "high")


# ------------------------------------------------------------------------------------------------
# Processes


def _stat(pid):
    """(state, ppid, pgid) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def plugin_process(sim):
    """The pid of the plugin the simulator is running (its child exec'ing plugin/vgpu), or None."""
    target = PLUGIN_FILE.encode()
    for pid in _pids():
        st = _stat(pid)
        if st and st[1] == sim.proc.pid and st[0] != "Z" and target in _cmdline(pid):
            return pid
    return None


def group(pgid):
    """{pid: program} of the live (not zombie) processes of a process group."""
    out = {}
    for pid in _pids():
        st = _stat(pid)
        if st and st[2] == pgid and st[0] != "Z":
            argv = _cmdline(pid)
            out[pid] = os.path.basename(argv[0].decode("utf-8", "replace")) if argv else "?"
    return out


class Call(object):
    """One host.call_plugin on the master, in a thread of its own, so that it can be killed."""

    def __init__(self, rig, fn, args):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(rig, fn, args))
        self.thread.daemon = True
        self.thread.start()

    def _run(self, rig, fn, args):
        try:
            self.result = rig.pool.call_raw(fn, args)
        except Exception as e:  # noqa: BLE001 (XenAPI.Failure, reported to the test)
            self.error = e

    def done(self):
        return not self.thread.is_alive()

    def wait(self, timeout=300):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "host.call_plugin did not return"


# ------------------------------------------------------------------------------------------------
# The rig


class PluginRig(CrashRig):
    def __init__(self, pool):
        self.pool = pool
        self.group_kills = {}
        CrashRig.__init__(self, pool.sim, pool.db(), pool.workdir, SAMPLE_MEMBER, VMS)

    def after_reset(self):
        # A reset forgets the plugin's interpreter and environment, and the sessions.
        self.sim.set_plugin_python(self.pool.variant.python)
        for h in self.pool.hosts:
            self.sim.set_plugin_env(h, self.pool.host_env(h))
        self.pool._xenapi = None
        self.pool._host_refs = {}

    def scan(self):
        return self.pool.call("scan")

    def sync_all(self):
        return self.pool.call("sync", {"all": "true"})

    def start(self, fn, args):
        """Starts a change; returns (the call, the plugin's pid once it runs, or None if the call
        ended before)."""
        self.pool.xenapi  # logged in (and the host looked up) before the change starts
        self.pool.host_ref(self.pool.master)
        call = Call(self, fn, args)
        pid = wait_for(lambda: plugin_process(self.sim) or (call.done() and -1), 120)
        return call, (pid if pid and pid > 0 else None)

    def kill(self, call, pid):
        """SIGKILL to the plugin's process group, as described in the module doc. Returns the
        programs that were in the group, or None when the plugin had answered first."""
        members = group(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        call.wait()
        assert wait_for(lambda: not group(pid), 30), "still alive after the kill: %s" % group(pid)
        if call.result is not None:
            return None
        for name in members.values():
            self.group_kills[name] = self.group_kills.get(name, 0) + 1
        desc = getattr(call.error, "details", None)
        assert desc and desc[:2] == ["XENAPI_PLUGIN_FAILURE", "signal: SIGKILL"], repr(call.error)
        wait_idle(self.sim)
        return members


@pytest.fixture(params=CRASH_VARIANTS, ids=lambda v: v.name)
def crash_variant(request, tmp_root):
    return request.param.resolve(tmp_root)


@pytest.fixture
def rig(simulators, crash_variant, admin, workdir):
    p = Pool(get_simulator(simulators, "sample_pool"), crash_variant, admin, workdir)
    yield PluginRig(p)
    p.close()


def check_group(rig, members, writing=True):
    """The plugin was in the group that was killed, and on the bridge, when the kill fell while a
    change was talking to XAPI (``writing``), its vgpu-admin child too."""
    names = sorted(members.values())
    assert any(n.startswith("python") for n in names), names
    if writing and rig.pool.variant.backend == "cli":
        assert "vgpu-admin" in names, "the bridge's vgpu-admin child was not in the plugin's group: %s" % names


# ------------------------------------------------------------------------------------------------
# The XAPI writes of a change


def call_key(entry):
    """(method, key written) of a logged call; a whole map written at once has no key."""
    params = entry["params"]
    if len(params) > 2:
        return entry["method"], params[2] if isinstance(params[2], str) else "(map)"
    return entry["method"], None


def test_plugin_killed_at_the_xapi_writes_of_a_change(rig):
    rig.reset()
    rig.pool.call("register", {"vm-uuid": ML_TRAIN_A, "pool": "A", "priority": "high"})
    rig.pool.call("register", {"vm-uuid": RENDER_02, "pool": "B", "priority": "low"})
    rig.note_generation()
    snap = rig.snapshot()
    args = {"vm-uuid": ML_TRAIN_A, "pool": "B", "priority": "low", "vm-id": "9"}
    rig.restore(snap)
    call, pid = rig.start("update", args)
    call.wait()
    assert call.error is None, call.error
    log = rig.sim.call_log()
    calls = [call_key(e) for e in log]
    # The writes that move the change forward: the device (one VM.set_platform), the VM's mirror
    # row, the pool's generation (removed, then added), and the call that follows the last of them.
    wanted = [("VM.set_platform", "(map)"),
              ("VM.add_to_other_config", "vgpu-registry"),
              ("pool.remove_from_other_config", "vgpu-registry:generation"),
              ("pool.add_to_other_config", "vgpu-registry:generation")]
    points = [calls.index(w) for w in wanted]
    points.append(points[-1] + 1)
    assert points[-1] < len(calls), calls
    outcomes = {"there": 0, "absent": 0}
    for index in points:
        method = calls[index][0]
        nth = [c[0] for c in calls[:index]].count(method) + 1
        what = "%s: kill at call %d %s" % (rig.pool.variant.name, index, calls[index])
        latency = LATENCY_MS
        for attempt in range(4):
            rig.restore(snap)
            before = rig.state()
            rig.sim.inject_fault(method, nth=nth, latency_ms=latency)
            call, pid = rig.start("update", args)
            assert pid, "the plugin ended before it could be killed: %r %r" % (call.result, call.error)
            wait_for(lambda: len(rig.sim.call_log()) > index or call.done(), 120)
            members = rig.kill(call, pid)
            assert members is not None, "%s: the plugin answered before the kill: %s" % (what, call.result)
            rig.sim.clear_faults()
            seen = [call_key(e) for e in rig.sim.call_log()]
            assert seen[:index + 1] == calls[:index + 1], (what, seen)
            if len(seen) == index + 1:
                break
            latency *= 2
        assert len(seen) == index + 1, "%s: the writer always went past the held call" % what
        check_group(rig, members)
        want = dict(before)
        want[ML_TRAIN_A] = ("B", "low", 9)
        got = rig.after_kill(ML_TRAIN_A, before, want, what)
        outcomes["there" if got == want[ML_TRAIN_A] else "absent"] += 1
    sys.stdout.write("\n%s: %d kills at the writes of an update: change there after %d, absent after %d; "
                     "processes killed: %s; other tokens kept after %d\n"
                     % (rig.pool.variant.name, len(points), outcomes["there"], outcomes["absent"],
                        rig.group_kills, rig.tokens_kept))
    # Before the generation is touched the change is absent after sync; from its remove on (the
    # last change record stands in for it) it is there.
    assert outcomes == {"there": 3, "absent": len(points) - 3}, outcomes


# ------------------------------------------------------------------------------------------------
# A seeded random stream


def random_change(rng, state):
    """(fn, args, the VM, its values after) of one valid change of ``state`` through the plugin."""
    registered = [u for u in VMS if state[u]]
    free = [u for u in (RENDER_01, RENDER_02, ML_TRAIN_A, ML_TRAIN_B, WEB_01) if not state[u]]
    used = {s[2] for s in state.values() if s}
    if free and (not registered or rng.random() < 0.5):
        vm, pool, prio = rng.choice(free), rng.choice("AB"), rng.choice(WORD)
        vm_id = rng.choice([n for n in range(1, 20) if n not in used])
        return "register", {"vm-uuid": vm, "pool": pool, "priority": prio, "vm-id": str(vm_id)}, vm, (pool, prio, vm_id)
    vm = rng.choice(registered)
    if rng.random() < 0.25:
        return "remove", {"vm-uuid": vm}, vm, None
    pool, prio = rng.choice("AB"), rng.choice(WORD)
    vm_id = rng.choice([n for n in range(1, 20) if n not in used - {state[vm][2]}])
    return "update", {"vm-uuid": vm, "pool": pool, "priority": prio, "vm-id": str(vm_id)}, vm, (pool, prio, vm_id)


def test_plugin_killed_at_random_times(rig):
    rng = random.Random(SEED)
    sys.stdout.write("\nVGPU_CRASH_SEED=%d VGPU_CRASH_PLUGIN_CHANGES=%d (%s)\n"
                     % (SEED, CHANGES, rig.pool.variant.name))
    rig.reset()
    rig.sim.inject_fault("*", times=-1, latency_ms=3)
    state = rig.state()
    took = []
    acked = killed = there = 0
    for n in range(CHANGES):
        fn, args, vm, after = random_change(rng, state)
        what = "%s change %d (seed %d) %s %s" % (rig.pool.variant.name, n, SEED, fn, args)
        want = dict(state)
        want[vm] = after
        delay = rng.uniform(0, 1.2 * (sorted(took)[len(took) // 2] if took else 0.5))
        kill = rng.random() < 0.75
        call, pid = rig.start(fn, args)
        started = time.time()
        members = rig.kill(call, pid) if kill and pid and not wait_for(call.done, delay, 0.01) else None
        if members is not None:
            # A random kill may fall before the bridge has started its child.
            check_group(rig, members, writing=False)
            killed += 1
            there += rig.after_kill(vm, state, want, what) == after
            state = rig.state()
            continue
        call.wait()
        took.append(time.time() - started)
        assert call.error is None, "%s: %r" % (what, call.error)
        acked += 1
        assert json.loads(call.result)["vm_uuid"] == vm, what
        state = rig.state()
        assert state == want, what
        assert out_of_step(rig.db, rig.sim, VMS, rig.base) == {}, what
        rig.note_generation()
    sys.stdout.write("%s random stream: %d changes, %d acknowledged, %d killed (%d there after the repair, "
                     "%d absent); processes killed: %s\n"
                     % (rig.pool.variant.name, CHANGES, acked, killed, there, killed - there,
                        rig.group_kills))
    assert killed, "no change was killed"

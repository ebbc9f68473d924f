"""XAPI faults beyond error replies (issue 12, part 2): every mutating command x every XAPI call
it makes x {error reply, connection dropped before xapi ran the call, connection dropped after
xapi ran it, an answer slower than the configured timeout}.

Each scenario is run once without faults to record its calls (the simulator's call log) and its
result. Then, from the same seeded state (`sim.restore_state` and a copy of the registry file),
each call in turn gets each fault, and afterwards:

- the command succeeded: the registry (the SQLite file), device-model-args (the VMs' platform
  maps) and the mirror (other_config keys, the pool's generation) agree, and the rows are the
  clean run's; or
- it failed: either all three agree and every VM's row is its old or its new one, with the
  device-model-args that go with that row (a message that says nothing changed must then find
  the old ones), or the message names what remains (the VM, or the whole pool with `sync
  --all`) and the command that repairs it; that command is run (an `xe` command through the
  simulator's `xe`), and then they agree and every row is the old or the new one, never
  something else and never lost; for `sync`, whose starting state is out of step on purpose,
  what it was to repair may remain, and a second run repairs it;
- after a failure, a further change goes through (nothing is left that blocks the next writer,
  such as a claim on the pool's next generation);
- the wall time is below a bound made of the configured timeouts times the calls the run made.

A slow answer comes 300 ms after the caller's timeout and is still carried out then, possibly
after the command's undo; every check waits until the simulator has no call left running.

Error replies are covered in more depth by test_atomicity.py (exact messages and states); here
they are one of the four kinds, under the same checks as the others.

Agreement is read as `scan-vms --format json` shows it (every registered VM `configured`, no
drift, its mirror `ok`, no stale rows, no mirror drift), plus the pool's generation against the
registry's own, and no claim on a generation beyond the pool's.

The whole matrix is over 1,000 cases and takes long on a small machine, so by default each
scenario runs a seeded sample of its cases (every fault kind included). The seed is printed;
FAULT_MATRIX_SEED=N repeats a run, FAULT_MATRIX_SAMPLE=1 runs every case:

    VGPU_ADMIN_BIN=target/debug/vgpu-admin FAULT_MATRIX_SAMPLE=1 .venv/bin/python -m pytest -q -s \
        tests/cli/test_fault_matrix.py

(-s prints the figures: cases, outcomes, the longest wait and its bound.)
"""

import concurrent.futures
import json
import os
import random
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import (
    CUDA_DEV, DMA, ML_TRAIN_A, ML_TRAIN_B, RENDER_01, TESTS_DIR, Simulator, base_env, device_line,
    parse_error_doc,
)

FAULT_KINDS = ("error", "drop-before", "drop-after", "slow")

# Small timeouts keep the suite short; the bound on each wait is computed from them.
TIMEOUTS = {
    "xapi_timeout_s": 1,
    "xapi_connect_timeout_s": 1,
    "lock_timeout_s": 2,
    "refresh_timeout_s": 2,
    "shutdown_timeout_s": 1,
    "mediator_timeout_s": 1,
}
# A slow answer comes this long after the caller's timeout (the call still lands then).
SLOW_EXTRA_MS = 300
# Process start-up, a loaded machine: added once to each bound.
SLACK_S = 10.0
WORKERS = 5

MIRROR_KEYS = ("vgpu-registry", "XenCenter.CustomFields.vgpu")
CLAIM_PREFIX = "vgpu-registry:claim:"
GENERATION_KEY = "vgpu-registry:generation"
XE = os.path.join(TESTS_DIR, "xapi_sim", "xe")


def config_text(workdir):
    t = TIMEOUTS
    return (
        "xapi_timeout_s = %d\nxapi_connect_timeout_s = %d\nlock_timeout_s = %d\n"
        "[pool]\nrefresh_timeout_s = %d\n[restart]\nshutdown_timeout_s = %d\n"
        "[mediator]\ntimeout_s = %d\nadmin_socket = %s\n" % (
            t["xapi_timeout_s"], t["xapi_connect_timeout_s"], t["lock_timeout_s"], t["refresh_timeout_s"],
            t["shutdown_timeout_s"], t["mediator_timeout_s"], json.dumps(os.path.join(workdir, "no-mediator.sock")))
    )


def bound_s(calls, restart):
    """The longest a run may take: each XAPI call at most a connect and a read timeout (a
    shutdown its own timeout), the registry lock wait, a replica refresh, a mediator, and slack."""
    t = TIMEOUTS
    per_call = t["xapi_connect_timeout_s"] + t["xapi_timeout_s"]
    total = calls * per_call + t["lock_timeout_s"] + t["refresh_timeout_s"] + t["mediator_timeout_s"]
    if restart:
        total += t["shutdown_timeout_s"]
    return total + SLACK_S


# ------------------------------------------------------------------------------------------------
# Scenarios: one (at least) per mutating function of the function table.


def _register(uuid, pool, priority, vm_id=None):
    argv = ["register-vm", "--vm-uuid", uuid, "--pool", pool, "--priority", priority]
    if vm_id is not None:
        argv += ["--vm-id", str(vm_id)]
    return argv


# ids chosen so that the devices the sample pool carries unregistered (cuda-dev vm_id 1,
# legacy-stub vm_id 3) can be adopted
REG_A = _register(ML_TRAIN_A, "A", "high", 2)
REG_R1 = _register(RENDER_01, "B", "low", 4)


def drift(uuid, line):
    return ("platform", uuid, line)


# name -> (function, setup steps, argv). A setup step is an argv list (run as vgpu-admin), or
# ("platform", uuid, value) / ("rm-db",) for changes made behind the registry's back.
SCENARIOS = {
    "register": ("register", [], REG_A),
    "set-vm-id": ("set-vm-id", [REG_A], ["set-vm-id", "--vm-uuid", ML_TRAIN_A, "--vm-id", "42"]),
    "set-pool": ("set-pool", [REG_A], ["set-pool", "--vm-name", "ml-train-a", "--pool", "B"]),
    "set-priority": ("set-priority", [REG_A], ["set-priority", "--vm-uuid", ML_TRAIN_A, "--priority", "low"]),
    "set-priority-restart": ("set-priority", [REG_R1],
                             ["set-priority", "--vm-uuid", RENDER_01, "--priority", "high", "--restart", "--yes"]),
    "update": ("update", [REG_A],
               ["update-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "B", "--priority", "medium", "--vm-id", "77"]),
    "remove": ("remove", [REG_A], ["remove-vm", "--vm-uuid", ML_TRAIN_A]),
    "sync-one": ("sync", [REG_A, drift(ML_TRAIN_A, "-device vgpu-cuda,addr=5,pool_id=B,priority=low,vm_id=5")],
                 ["sync", "--vm-uuid", ML_TRAIN_A]),
    "sync-all": ("sync", [REG_A, REG_R1, drift(ML_TRAIN_A, "-rtc base=localtime"),
                          drift(RENDER_01, device_line("A", "high", 6))],
                 ["sync", "--all"]),
    "refresh": ("refresh", [REG_A], ["refresh"]),
    "adopt": ("adopt", [], ["adopt", "--vm-uuid", CUDA_DEV]),
    "rebuild": ("rebuild", [REG_A, REG_R1, ("rm-db",)], ["rebuild"]),
    "set-weight": ("set-weight", [REG_A], ["set-weight", "--vm-uuid", ML_TRAIN_A, "--weight", "5"]),
    "set-rate-limit": ("set-rate-limit", [REG_A],
                       ["set-rate-limit", "--vm-uuid", ML_TRAIN_A, "--rate", "20", "--queue-depth", "4"]),
    "quarantine": ("quarantine", [REG_A], ["quarantine-vm", "--vm-uuid", ML_TRAIN_A]),
    "clear-quarantine": ("clear-quarantine", [REG_A, ["quarantine-vm", "--vm-uuid", ML_TRAIN_A]],
                         ["clear-quarantine", "--vm-uuid", ML_TRAIN_A]),
}

# Every scenario starts from a registry holding an unrelated halted VM.
BASE_SEED = _register(ML_TRAIN_B, "B", "medium", 9)
# A change made after each case: it must go through.
FOLLOW_UP = ["set-weight", "--vm-uuid", ML_TRAIN_B, "--weight", "7"]


# ------------------------------------------------------------------------------------------------
# Running


class Runner(object):
    """vgpu-admin against one simulator, with the short timeouts, as the pool master."""

    def __init__(self, binary, sim, workdir):
        self.binary = binary
        self.sim = sim
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "vgpu.conf")
        with open(self.config, "w") as f:
            f.write(config_text(workdir))
        self.env = base_env()
        self.env.update({"VGPU_XAPI": sim.url, "VGPU_CONFIG": self.config, "VGPU_HOST_UUID": sim.master_uuid})
        self.member = [h for h in sim.fixture_data["hosts"] if h["uuid"] != sim.master_uuid][0]["uuid"]
        self.cases = 0

    def member_db(self, path):
        """The member's replica (refreshed through its plugin) lives in ``path``."""
        self.sim.set_plugin_env(self.member, {
            "PYTHONPATH": os.path.join(TESTS_DIR, "plugin"),  # the XenAPIPlugin stand-in
            "VGPU_PLUGIN_BACKEND": "cli",
            "VGPU_ADMIN": self.binary,
            "VGPU_CONFIG": self.config,
            "VGPU_DB": path,
        })

    def run(self, db, argv, timeout=300):
        env = dict(self.env, VGPU_DB=db)
        t0 = time.time()
        p = subprocess.run([self.binary] + list(argv) + ["--format", "json"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8"), time.time() - t0

    def ok(self, db, argv):
        code, out, err, _ = self.run(db, argv)
        assert code == 0, "%s -> %d\n%s\n%s" % (argv, code, out, err)
        return json.loads(out) if out.strip() else None


def registry_rows(db):
    """vm_uuid -> the row without its timestamps (every column, whatever the schema)."""
    if not os.path.exists(db):
        return {}
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(vms)")]
        keep = [i for i, c in enumerate(cols) if c not in ("created_at", "updated_at")]
        out = {}
        for row in conn.execute("SELECT * FROM vms"):
            d = {cols[i]: row[i] for i in keep}
            out[d["vm_uuid"].lower()] = d
        return out
    finally:
        conn.close()


def registry_generation(db):
    if not os.path.exists(db):
        return None
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        row = conn.execute("SELECT value FROM registry_meta WHERE key = 'generation'").fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


def platform_dmas(sim):
    return {u: sim.get_vm(u)["platform"].get(DMA) for u in sim.all_real_vms}


def disagreements(runner, db, before_dmas):
    """What does not agree between the registry, device-model-args and the mirror ([] if all)."""
    sim = runner.sim
    problems = []
    code, out, err, _ = runner.run(db, ["scan-vms"])
    if code != 0:
        return ["scan-vms failed: %s" % err.strip()]
    scan = json.loads(out)
    for r in scan["registered"]:
        if r["status"] != "configured" or r["drift"] or r["mirror"] != "ok":
            problems.append("VM %s: status %s, drift %s, mirror %s" % (
                r["vm_uuid"], r["status"], r["drift"], r["mirror"]))
    if scan["stale"]:
        problems.append("stale rows: %s" % scan["stale"])
    if scan["summary"].get("mirror_drift"):
        problems.append("mirror drift: %s" % scan["summary"]["mirror_drift"])
    registered = {r["vm_uuid"] for r in scan["registered"]}
    for u, dma in platform_dmas(sim).items():
        if u not in registered and dma != before_dmas.get(u) and "vgpu" in (dma or ""):
            problems.append("unregistered VM %s carries a new device: %r" % (u, dma))
        oc = sim.get_vm(u)["other_config"]
        if u not in registered and any(k in oc for k in MIRROR_KEYS):
            problems.append("unregistered VM %s has a mirror" % u)
    pool_oc = sim.pool_other_config()
    pool_gen = int(pool_oc[GENERATION_KEY]) if GENERATION_KEY in pool_oc else None
    local_gen = registry_generation(db)
    if pool_gen != local_gen:
        problems.append("pool generation %s, registry generation %s" % (pool_gen, local_gen))
    for k in pool_oc:
        if k.startswith(CLAIM_PREFIX) and pool_gen is not None and int(k[len(CLAIM_PREFIX):]) > pool_gen:
            problems.append("claim %s left beyond generation %s" % (k, pool_gen))
    return problems


def rows_problem(now, before, after, dmas=None, before_dmas=None, after_dmas=None):
    """None when every VM's row is its old one or its new one, and (given the platform maps)
    its device-model-args are the ones that went with that row: nothing of a VM's own
    arguments is lost, nothing half-written."""
    for u in set(now) | set(before) | set(after):
        if now.get(u) not in (before.get(u), after.get(u)):
            return "VM %s: row %s is neither the old %s nor the new %s" % (u, now.get(u), before.get(u), after.get(u))
    if dmas is None:
        return None
    for u, dma in dmas.items():
        allowed = set()
        if now.get(u) == before.get(u):
            allowed.add(before_dmas.get(u))
        if now.get(u) == after.get(u):
            allowed.add(after_dmas.get(u))
        if dma not in allowed:
            return "VM %s: device-model-args %r, expected one of %r" % (u, dma, sorted(allowed, key=str))
    return None


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UNCHANGED_RE = re.compile(r"nothing was changed|are unchanged|unchanged;|put back")


def report_claims(doc):
    """(vm_uuid, text) of every item of a report that carries a reason or an error."""
    out = []
    if isinstance(doc, dict):
        if "vm_uuid" in doc:
            for key in ("reason", "error"):
                v = doc.get(key)
                if isinstance(v, dict):
                    v = v.get("message")
                if isinstance(v, str):
                    out.append((doc["vm_uuid"].lower(), v))
        for v in doc.values():
            out.extend(report_claims(v))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(report_claims(v))
    return out


REPAIR_RE = re.compile(r"`((?:vgpu-admin|xe) [^`]+)`|(xe vm-param-(?:set|remove) [^\n`]+)$", re.M)


def repair_commands(message):
    """The commands an error message asks the user to run, as argv lists."""
    out = []
    for m in REPAIR_RE.finditer(message):
        text = (m.group(1) or m.group(2)).strip()
        out.append(shlex.split(text))
    return out


# The whole matrix is some 1,100 cases; `make test` runs a seeded sample of each scenario's cases
# (every fault kind at least once), FAULT_MATRIX_SAMPLE=1 all of them.
SAMPLE = float(os.environ.get("FAULT_MATRIX_SAMPLE", "0.15"))
SEED = int(os.environ.get("FAULT_MATRIX_SEED") or random.SystemRandom().randrange(1 << 30))


def sample(cases, scenario):
    if SAMPLE >= 1:
        return cases
    rng = random.Random("%d/%s" % (SEED, scenario))
    picked = set(rng.sample(range(len(cases)), max(1, int(round(len(cases) * SAMPLE)))))
    for kind in FAULT_KINDS:
        if not any(cases[i][2] == kind for i in picked):
            picked.add(rng.choice([i for i, c in enumerate(cases) if c[2] == kind]))
    return [cases[i] for i in sorted(picked)]


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def sims():
    started = []
    try:
        for _ in range(WORKERS):
            started.append(Simulator(transport="unix", plugin_python=sys.executable).start())
        for s in started:
            s.all_real_vms = [v["uuid"] for v in s.fixture_data["vms"]
                              if not (v.get("is_a_template") or v.get("is_a_snapshot") or v.get("is_control_domain"))]
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def figures():
    data = {"cases": 0, "outcomes": {}, "longest": (0.0, 0.0, "")}
    yield data
    lines = ["", "fault matrix: %d cases (FAULT_MATRIX_SAMPLE=%s FAULT_MATRIX_SEED=%d)" % (data["cases"], SAMPLE, SEED)]
    for k in sorted(data["outcomes"]):
        lines.append("  %-40s %d" % (k, data["outcomes"][k]))
    w, b, where = data["longest"]
    lines.append("  longest wait %.2f s (its bound %.1f s): %s" % (w, b, where))
    sys.stdout.write("\n".join(lines) + "\n")


def test_every_mutating_function_has_a_scenario(binary):
    p = subprocess.run([binary, "functions", "--format", "json"], stdout=subprocess.PIPE, env=base_env())
    table = json.loads(p.stdout.decode())
    mutating = {f["name"] for f in table["functions"] if f["mutating"]}
    assert len(mutating) >= 10, mutating  # the table is read, not empty
    covered = {fn for fn, _, _ in SCENARIOS.values()}
    missing = sorted(mutating - covered)
    assert not missing, "mutating functions without a fault scenario: %s" % missing
    assert not covered - mutating, "scenarios for functions that do not change anything: %s" % (covered - mutating)


# ------------------------------------------------------------------------------------------------
# The matrix


def seed(runner, tag, steps):
    """Seeds a registry and the simulator; returns the registry file's path (state saved as tag)."""
    sim = runner.sim
    sim.reset()
    db = os.path.join(runner.workdir, tag, "seed.db")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    runner.member_db(os.path.join(runner.workdir, tag, "member-seed.db"))
    runner.ok(db, BASE_SEED)
    for step in steps:
        if step[0] == "platform":
            sim.set_platform_key(step[1], DMA, step[2])
        elif step[0] == "rm-db":
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
        else:
            runner.ok(db, step)
    sim.save_state(tag)
    return db


def fresh(runner, tag, seed_db, name):
    """The seeded state again: the simulator restored, a copy of the registry file."""
    runner.sim.restore_state(tag)
    db = os.path.join(runner.workdir, tag, name + ".db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
        if os.path.exists(seed_db + suffix):
            shutil.copyfile(seed_db + suffix, db + suffix)
    runner.member_db(os.path.join(runner.workdir, tag, name + "-member.db"))
    return db


def inject(sim, method, nth, kind):
    if kind == "error":
        sim.inject_fault(method, nth=nth, code="INTERNAL_ERROR", params=["injected"])
    elif kind == "drop-before":
        sim.inject_fault(method, nth=nth, drop="before")
    elif kind == "drop-after":
        sim.inject_fault(method, nth=nth, drop="after")
    else:
        sim.inject_fault(method, nth=nth, latency_ms=call_timeout_s(method) * 1000 + SLOW_EXTRA_MS)


def call_timeout_s(method):
    """How long the product waits for this call's answer."""
    if method == "VM.clean_shutdown":
        return TIMEOUTS["shutdown_timeout_s"]
    if method == "host.call_plugin":  # the replicas' refresh after a change
        return TIMEOUTS["refresh_timeout_s"]
    return TIMEOUTS["xapi_timeout_s"]


def run_case(runner, tag, seed_db, argv, method, nth, kind, before, after, before_dmas, after_dmas, restart,
             before_problems):
    """One fault: returns (outcome, wait, bound, failure text or None)."""
    sim = runner.sim
    name = "%s-%d-%s" % (method, nth, kind)
    db = fresh(runner, tag, seed_db, name)
    inject(sim, method, nth, kind)
    code, out, err, wait = runner.run(db, argv)
    calls = len(sim.call_log())
    assert sim.wait_idle(60), "a call is still running a minute later"
    where = "%s: %s #%d %s -> exit %d\nstdout: %s\nstderr: %s" % (" ".join(argv), method, nth, kind, code, out, err)
    bound = bound_s(calls, restart)
    if wait > bound:
        return "too slow", wait, bound, "%s\nwaited %.1f s, bound %.1f s" % (where, wait, bound)
    problems = disagreements(runner, db, before_dmas)
    rows = registry_rows(db)
    if code == 0:
        if problems:
            return "bad", wait, bound, "%s\nsucceeded but: %s" % (where, problems)
        if rows != after or platform_dmas(sim) != after_dmas:
            return "bad", wait, bound, "%s\nsucceeded with rows %s and device-model-args %s, expected %s and %s" % (
                where, rows, platform_dmas(sim), after, after_dmas)
        outcome = "succeeded"
    else:
        try:
            message = parse_error_doc(err)["message"] if err.strip() else ""
        except (ValueError, AssertionError):
            message = err
        if not message and out.strip():
            message = out  # a per-VM report (sync --all, adopt, rebuild)
        bad_rows = rows_problem(rows, before, after, platform_dmas(sim), before_dmas, after_dmas)
        if bad_rows:
            problems.append(bad_rows)
        if not problems:
            # "nothing changed" must be true of what it speaks about: the whole command for an
            # error, the one VM for an item of a report (sync --all, adopt, rebuild)
            if err.strip():
                claims = [(None, message)]
            else:
                claims = report_claims(json.loads(out))
            for vm, text in claims:
                if not UNCHANGED_RE.search(text) or "saved" in text:
                    continue
                if vm is None and rows != before:
                    return "bad", wait, bound, "%s\nsays nothing changed, but rows changed: %s" % (where, rows)
                if vm is not None and rows.get(vm) != before.get(vm):
                    return "bad", wait, bound, "%s\nsays VM %s is unchanged, but its row changed" % (where, vm)
            outcome = "failed, nothing left to repair"
        else:
            outcome = "failed, nothing changed (run again)"
            if not set(problems) <= set(before_problems):
                # something beyond what was out of step before: the message must say how back
                commands = repair_commands(message + " " + out)
                if not commands:
                    return "bad", wait, bound, "%s\nleft %s and names no repair" % (where, problems)
                whole_pool = ["vgpu-admin", "sync", "--all"] in commands
                unnamed = [u for u in UUID_RE.findall(" ".join(problems)) if u not in message + out]
                if unnamed and not whole_pool:
                    return "bad", wait, bound, "%s\nleft %s; the message does not name VM %s" % (
                        where, problems, unnamed)
                for c in commands:
                    if c[0] == "vgpu-admin":
                        rc, rout, rerr, _ = runner.run(db, c[1:])
                    else:
                        env = dict(base_env(), XE_SIM_URL=sim.url)
                        p = subprocess.run([XE] + c[1:], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                        rc, rerr = p.returncode, p.stderr.decode()
                    if rc != 0:
                        return "bad", wait, bound, "%s\nleft %s; the repair %s failed: %s" % (where, problems, c, rerr)
                still = disagreements(runner, db, before_dmas)
                bad_rows = rows_problem(registry_rows(db), before, after, platform_dmas(sim), before_dmas, after_dmas)
                if bad_rows:
                    still.append(bad_rows)
                if not set(still) <= set(before_problems):
                    return "bad", wait, bound, "%s\nleft %s; after %s still %s" % (where, problems, commands, still)
                outcome = "failed, repaired by the named command"
                problems = still
            if problems:
                # only what the command itself repairs (sync) is left: it does on a second run
                rc, rout, rerr, _ = runner.run(db, argv)
                still = disagreements(runner, db, before_dmas)
                if rc != 0 or still or registry_rows(db) != after or platform_dmas(sim) != after_dmas:
                    return "bad", wait, bound, "%s\nleft %s; run again: exit %d %s, left %s" % (
                        where, problems, rc, rerr, still)
    if code != 0:
        fc, fout, ferr, _ = runner.run(db, FOLLOW_UP)
        if fc != 0:
            return "bad", wait, bound, "%s\nthe next change fails: %s" % (where, ferr)
    return outcome, wait, bound, None


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_call_x_each_fault(scenario, sims, binary, tmp_path, figures):
    function, steps, argv = SCENARIOS[scenario]
    restart = "--restart" in argv
    runners = [Runner(binary, s, str(tmp_path / ("w%d" % i))) for i, s in enumerate(sims)]
    seeds = [seed(r, "s", steps) for r in runners]
    # the clean run, on the first simulator
    r0 = runners[0]
    db = fresh(r0, "s", seeds[0], "clean")
    before = registry_rows(db)
    before_dmas = platform_dmas(r0.sim)
    # what is out of step before the command (sync repairs it), seen on a copy
    before_problems = disagreements(r0, fresh(r0, "s", seeds[0], "probe"), before_dmas)
    db = fresh(r0, "s", seeds[0], "clean")
    code, out, err, _ = r0.run(db, argv)
    assert code == 0, "clean run: %s %s" % (out, err)
    log = r0.sim.call_log()
    after = registry_rows(db)
    after_dmas = platform_dmas(r0.sim)
    assert (after, after_dmas) != (before, before_dmas) or function == "refresh", "the clean run changed nothing"
    assert not disagreements(r0, db, before_dmas), disagreements(r0, db, before_dmas)
    seen = {}
    calls = []
    for e in log:
        seen[e["method"]] = seen.get(e["method"], 0) + 1
        calls.append((e["method"], seen[e["method"]]))
    assert any(m.startswith("session.login") for m, _ in calls)
    cases = [(m, n, k) for (m, n) in calls for k in FAULT_KINDS]
    cases = sample(cases, scenario)
    # slow cases spread over the workers, so that their waits overlap
    cases.sort(key=lambda c: c[2] != "slow")
    lock = threading.Lock()
    failures = []
    queue = list(cases)

    def worker(runner, seed_db):
        while True:
            with lock:
                if not queue:
                    return
                m, n, k = queue.pop(0)
            outcome, wait, bound, failure = run_case(
                runner, "s", seed_db, argv, m, n, k, before, after, before_dmas, after_dmas, restart,
                before_problems)
            with lock:
                figures["cases"] += 1
                key = "%s: %s" % (k, outcome)
                figures["outcomes"][key] = figures["outcomes"].get(key, 0) + 1
                if wait > figures["longest"][0]:
                    figures["longest"] = (wait, bound, "%s, %s #%d %s" % (scenario, m, n, k))
                if failure:
                    failures.append(failure)
                    if os.environ.get("FAULT_MATRIX_LOG"):
                        with open(os.environ["FAULT_MATRIX_LOG"], "a") as f:
                            f.write("=== %s\n%s\n\n" % (scenario, failure))

    with concurrent.futures.ThreadPoolExecutor(len(runners)) as pool:
        list(pool.map(lambda a: worker(*a), zip(runners, seeds)))
    assert not failures, "%d of %d cases broke (FAULT_MATRIX_SEED=%d):\n\n%s" % (len(failures), len(cases), SEED, "\n\n".join(failures[:int(os.environ.get("FAULT_MATRIX_SHOW", "8"))]))

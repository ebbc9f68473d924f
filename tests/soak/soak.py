#!/usr/bin/env python3
"""A bounded soak of the pool-wide registry: mixed writers and readers, through the CLI and through
the plugin, on every host of a generated pool at once, while the XAPI simulator delays its answers.

    python tests/soak/soak.py --seconds 180 [--hosts 4] [--seed N] [--json summary.json]

What runs (each worker a thread; every loop ends at the deadline or at its count cap):

* writers, each the only writer of its own VMs, through `vgpu-admin` (run as on a random host of
  the pool: the master's runs on its registry, a member's forwards to the master's plugin) or
  through `host.call_plugin` on a random host (a member forwards to the master): register, set-vm-id,
  set-pool, set-priority, update, set-weight, set-rate-limit, quarantine, clear-quarantine, remove;
  every acknowledged change is recorded as that VM's expected state;
* a contention driver, whose rounds start two or three callers (CLI and plugin, different hosts)
  at once on the same VM or the same vm_id: exactly one must win, every other must get the
  documented conflict (ALREADY_REGISTERED, VM_ID_IN_USE, NOT_REGISTERED);
* readers through both front ends: list, show, scan, status, show-weights, list-pools; a list
  must never hold a vm_id or a VM twice;
* a latency injector: every few seconds a new wave of `sim.inject_fault(latency_ms=…, times=-1)`
  on random XAPI methods the product calls (sometimes on every method, sometimes none);
* a sampler of the master's registry: rows and bytes (file, WAL and shared memory).

At the end, with the injector stopped: every acknowledged registration is present with its last
acknowledged values and nothing else is registered; no vm_id is held twice (registry, mirror,
device-model-args); `scan-vms` shows no drift, nothing not applied and nothing stale; the mirror and
every VM's device-model-args carry the registry's values; every host's replica holds the master's
rows at the pool's generation; `PRAGMA integrity_check` is ok; nothing anywhere (answers, errors,
plugin logs, the simulator's log) says `database is locked`; every failure has a documented code
(`vgpu-admin functions` error codes, `VGPU_`-prefixed from the plugin) and, except for a show of
a VM that a writer just removed, only the contention driver may see one, and only a conflict.

The figures (operations by kind, throughput, p50/p99/max latency of CLI and plugin reads and
writes, failures by code, the registry's peak rows and bytes, peak RSS) are printed and, with
--json, written as one JSON document. The exit status is 0 when every check held, 1 otherwise.
Randomness is seeded (the seed is printed); only loopback is used.
"""

import argparse
import json
import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(HERE)
REPO_DIR = os.path.dirname(TESTS_DIR)
for _p in (TESTS_DIR, os.path.join(TESTS_DIR, "plugin")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from xapi_sim.client import JsonRpcClient, XapiFault  # noqa: E402
from xapi_sim.harness import Simulator, generated_fixture  # noqa: E402
from plugin_support import PLUGIN_DIR, Pool, Variant, admin_binary, run_admin_on  # noqa: E402

LOCKED = "database is locked"
# The conflicts a caller racing another caller may get; every one is also a documented code.
CONFLICTS = ("ALREADY_REGISTERED", "VM_ID_IN_USE", "NOT_REGISTERED")
PRIORITIES = ("low", "medium", "high")
# Methods the product calls, delayed from the first wave on (later waves add whatever the call
# log shows it calls).
LATENCY_METHODS = [
    "session.login_with_password", "VM.get_all_records_where", "VM.get_record", "VM.get_by_uuid",
    "VM.get_platform", "VM.set_platform", "VM.add_to_other_config",
    "VM.remove_from_other_config", "pool.get_all_records", "pool.get_all", "pool.get_record",
    "pool.add_to_other_config", "pool.remove_from_other_config", "host.get_all_records",
    "host.get_record", "host.call_plugin", "host.add_to_other_config", "host.remove_from_other_config",
]
# Explicit vm_ids: each writer's own range, far above the auto-assigned ones (the lowest free id),
# and the contention driver's, above all of them.
WRITER_ID_BASE = 100000
WRITER_ID_SPAN = 100000
CONTENDED_ID_BASE = 3000000


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


class Result(object):
    """One call's outcome: ``ok`` with ``doc`` (the JSON answer), or ``code`` (the error code
    without the VGPU_ prefix, or a marker like TIMEOUT / UNPARSED / XAPI:<code>)."""

    def __init__(self, ok, doc=None, code=None, message="", text="", partly=False):
        self.ok, self.doc, self.code, self.message, self.text, self.partly = ok, doc, code, message, text, partly


class Soak(object):
    def __init__(self, opts):
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.lock = threading.Lock()
        self.ops = []  # (via, rw, fn, role, seconds, ok, code, worker)
        self.violations = []
        self.locked_hits = []
        self.lock_waits = 0
        self.partly = {}
        self.replicas_not_ok = 0
        self.model = {}  # vm uuid -> None | expected registration
        self.uncertain = set()
        self.contention = {"rounds": 0, "races": 0, "by_kind": {}}
        self.waves = []
        self.peak = {"rows": 0, "db_bytes": 0, "wal_bytes": 0, "shm_bytes": 0, "total_bytes": 0}
        self.stop = threading.Event()
        self.documented = None

    # ------------------------------------------------------------------ bookkeeping

    def violation(self, what, **details):
        with self.lock:
            if len(self.violations) < 500:
                self.violations.append(dict(what=what, **details))

    def record(self, via, rw, fn, role, seconds, res, worker):
        with self.lock:
            self.ops.append((via, rw, fn, role, seconds, res.ok, res.code, worker))
            if LOCKED in res.text:
                self.locked_hits.append({"via": via, "fn": fn, "text": res.text[-400:]})
            if "waiting for the registry" in res.text:
                self.lock_waits += 1
            if res.partly:
                self.partly[fn] = self.partly.get(fn, 0) + 1
            doc = res.doc if isinstance(res.doc, dict) else {}
            self.replicas_not_ok += sum(1 for r in doc.get("replicas") or [] if not r.get("ok"))
        if not res.ok and res.code not in self.documented:
            self.violation("undocumented failure", via=via, fn=fn, code=res.code, text=res.text[-600:])

    # ------------------------------------------------------------------ the two front ends

    def cli(self, host, args, worker, rw):
        fn = args[0]
        t0 = time.monotonic()
        try:
            rc, out, err = run_admin_on(self.pool, host, ["--format", "json"] + args, timeout=self.opts.call_timeout)
        except subprocess.TimeoutExpired as e:
            res = Result(False, code="TIMEOUT", text="timeout after %s s: %r" % (e.timeout, e.stderr))
            self.record("cli", rw, fn, self.role(host), time.monotonic() - t0, res, worker)
            return res
        seconds = time.monotonic() - t0
        text = out + err
        doc = None
        try:
            doc = json.loads(out) if out.strip() else None
        except ValueError:
            doc = None
        if rc == 0 and doc is not None:
            res = Result(True, doc=doc, text=text)
        elif rc == 1 and isinstance(doc, dict) and doc.get("vm_uuid"):
            # Stored, but reported as not in effect everywhere (SPEC section 10).
            res = Result(True, doc=doc, text=text, partly=True)
        else:
            code, message = "UNPARSED", ""
            for line in err.splitlines():
                try:
                    e = json.loads(line)["error"]
                    code, message = e["code"], e["message"]
                except (ValueError, KeyError, TypeError):
                    continue
            res = Result(False, code=code, message=message, text="exit %d: %s" % (rc, text))
        self.record("cli", rw, fn, self.role(host), seconds, res, worker)
        return res

    def plugin(self, conn, host, fn, args, worker, rw):
        client, session = conn
        t0 = time.monotonic()
        try:
            raw = client.call("host.call_plugin", session, self.host_refs[host], "vgpu", fn, dict(args))
            doc = json.loads(raw)
            res = Result(True, doc=doc, text=raw, partly=isinstance(doc, dict) and doc.get("in_effect") is False)
        except XapiFault as f:
            text = "%s %s" % (f.code, json.dumps(f.params))
            if f.code.startswith("VGPU_") and len(f.params) == 2:
                res = Result(False, code=f.code[len("VGPU_"):], message=f.params[0], text=text)
            else:
                res = Result(False, code="XAPI:" + str(f.code), text=text)
        except (OSError, ValueError) as e:
            res = Result(False, code="TIMEOUT" if isinstance(e, socket.timeout) else "TRANSPORT", text=repr(e))
            client.close()
        self.record("plugin", rw, fn, self.role(host), time.monotonic() - t0, res, worker)
        return res

    def connect(self):
        client = JsonRpcClient(self.sim.url, timeout=self.opts.call_timeout)
        return client, client.call("session.login_with_password", "root", "", "1.0", "vgpu-soak")

    def role(self, host):
        return "master" if host == self.pool.master else "member"

    # ------------------------------------------------------------------ one change, either way

    def change(self, front, conn, host, op, vm, params, worker, by_name=False):
        """Runs the write ``op`` (plugin function name) on ``vm`` with ``params``; the Result."""
        if front == "cli":
            command = {"register": "register-vm", "update": "update-vm", "remove": "remove-vm",
                       "quarantine": "quarantine-vm"}.get(op, op)
            args = [command] + (["--vm-name", self.names[vm]] if by_name else ["--vm-uuid", vm])
            for k, v in params.items():
                args += ["--" + k, str(v)]
            return self.cli(host, args, worker, "write")
        args = {"vm-name": self.names[vm]} if by_name else {"vm-uuid": vm}
        args.update({k: str(v) for k, v in params.items()})
        return self.plugin(conn, host, op, args, worker, "write")

    @staticmethod
    def apply(op, before, params, doc):
        """The registration a successful ``op`` leaves, from the request (and, for an auto-assigned
        id, the answer)."""
        if op == "remove":
            return None
        if op == "register":
            after = {"vm_id": int(params.get("vm-id") or doc.get("vm_id") or 0), "pool": params["pool"],
                     "priority": params["priority"], "weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0,
                     "quarantined": False}
            return after
        after = dict(before)
        if "vm-id" in params:
            after["vm_id"] = int(params["vm-id"])
        if "pool" in params:
            after["pool"] = params["pool"]
        if "priority" in params:
            after["priority"] = params["priority"]
        if op == "set-weight":
            after["weight"] = int(params["weight"])
        if op == "set-rate-limit":
            after["max_jobs_per_sec"] = int(params["rate"])
            if "queue-depth" in params:
                after["max_queue_depth"] = int(params["queue-depth"])
        if op == "quarantine":
            after["quarantined"] = True
        if op == "clear-quarantine":
            after["quarantined"] = False
        return after

    def check_answer(self, vm, expected, doc, where):
        """A write's answer is the resulting registration."""
        got = {k: doc.get(k) for k in ("vm_id", "pool", "priority", "weight", "max_jobs_per_sec",
                                       "max_queue_depth", "quarantined")}
        if doc.get("vm_uuid") != vm or got != expected:
            self.violation("answer differs from the change", where=where, vm=vm, expected=expected, answer=doc)

    # ------------------------------------------------------------------ workers

    def writer(self, idx, front, vms, deadline):
        rng = random.Random("%s:writer:%d" % (self.opts.seed, idx))
        conn = self.connect() if front == "plugin" else None
        next_id = WRITER_ID_BASE + idx * WRITER_ID_SPAN
        n = 0
        while time.time() < deadline and n < self.opts.max_ops and not self.stop.is_set():
            n += 1
            vm = rng.choice(vms)
            if vm in self.uncertain:
                continue
            before = self.model[vm]
            if before is None:
                op = "register"
                params = {"pool": rng.choice("AB"), "priority": rng.choice(PRIORITIES)}
                if rng.random() < 0.4:
                    next_id += 1
                    params["vm-id"] = next_id
            else:
                op = rng.choice(["set-vm-id", "set-pool", "set-priority", "update", "set-weight", "set-weight",
                                 "set-rate-limit", "quarantine", "clear-quarantine", "remove"])
                params = {}
                if op == "set-vm-id":
                    next_id += 1
                    params["vm-id"] = next_id
                elif op == "set-pool":
                    params["pool"] = rng.choice("AB")
                elif op == "set-priority":
                    params["priority"] = rng.choice(PRIORITIES)
                elif op == "update":
                    params = {"pool": rng.choice("AB"), "priority": rng.choice(PRIORITIES)}
                    if rng.random() < 0.3:
                        next_id += 1
                        params["vm-id"] = next_id
                elif op == "set-weight":
                    params["weight"] = rng.randint(1, 100)
                elif op == "set-rate-limit":
                    params["rate"] = rng.randint(0, 500)
                    if rng.random() < 0.5:
                        params["queue-depth"] = rng.randint(0, 64)
            host = rng.choice(self.hosts)
            res = self.change(front, conn, host, op, vm, params, "writer-%d" % idx, by_name=rng.random() < 0.2)
            if res.ok:
                after = self.apply(op, before, params, res.doc)
                with self.lock:
                    self.model[vm] = after
                    self.acknowledged += 1
                if after is not None:
                    self.check_answer(vm, after, res.doc, "%s %s on %s" % (front, op, self.role(host)))
            else:
                # A writer alone on its VMs has nothing to conflict with: any failure is a finding,
                # and after one whose outcome is unknown the VM's state is no longer predictable.
                self.violation("a writer's change failed", front=front, op=op, vm=vm, params=params,
                               host_role=self.role(host), code=res.code, text=res.text[-600:])
                if res.code not in CONFLICTS:
                    with self.lock:
                        self.uncertain.add(vm)
        if conn:
            conn[0].close()

    def reader(self, idx, front, deadline):
        rng = random.Random("%s:reader:%d" % (self.opts.seed, idx))
        conn = self.connect() if front == "plugin" else None
        n = 0
        all_vms = list(self.model)
        while time.time() < deadline and n < self.opts.max_ops and not self.stop.is_set():
            n += 1
            host = rng.choice(self.hosts)
            kind = rng.choice(["list", "list", "show", "show", "scan", "status", "show-weights", "list-pools"])
            vm = rng.choice(all_vms)
            if front == "cli":
                args = {"list": ["list-vms"], "show": ["show-vm", "--vm-uuid", vm], "scan": ["scan-vms"],
                        "status": ["status"], "show-weights": ["show-weights"],
                        "list-pools": ["list-pools"]}[kind]
                res = self.cli(host, args, "reader-%d" % idx, "read")
            else:
                res = self.plugin(conn, host, kind, {"vm-uuid": vm} if kind == "show" else {},
                                  "reader-%d" % idx, "read")
            if not res.ok:
                # A show may race a writer's remove; nothing else may fail.
                if not (kind == "show" and res.code == "NOT_REGISTERED"):
                    self.violation("a read failed", front=front, fn=kind, code=res.code, text=res.text[-600:])
                continue
            rows = None
            if kind in ("list", "show-weights"):
                rows = res.doc
            elif kind == "scan":
                rows = res.doc.get("registered", [])
            if rows is not None:
                ids = [r["vm_id"] for r in rows]
                uuids = [r["vm_uuid"] for r in rows]
                if len(set(ids)) != len(ids) or len(set(uuids)) != len(uuids):
                    self.violation("a read showed a vm_id or a VM twice", front=front, fn=kind, rows=rows)
        if conn:
            conn[0].close()

    def contender(self, vms, deadline):
        """Rounds of races; each race starts its callers together and wants exactly one winner."""
        rng = random.Random("%s:contention" % self.opts.seed)
        conns = [self.connect() for _ in range(3)]
        rounds = 0
        next_id = CONTENDED_ID_BASE
        while time.time() < deadline and rounds < self.opts.max_ops and not self.stop.is_set():
            rounds += 1
            picked = [v for v in rng.sample(vms, 4) if v not in self.uncertain]
            if len(picked) < 4:
                continue
            a, b, c, d = picked
            for vm in picked:
                if self.model[vm] is not None:
                    self.race(rng, conns, "remove", vm, [{}, {}], ("NOT_REGISTERED",))
            self.race(rng, conns, "register", a,
                      [{"pool": "A", "priority": "high"}, {"pool": "B", "priority": "low"},
                       {"pool": "A", "priority": "medium"}], ("ALREADY_REGISTERED",))
            self.race(rng, conns, "register", b,
                      [{"pool": "B", "priority": "medium"}, {"pool": "A", "priority": "low"}], ("ALREADY_REGISTERED",))
            next_id += 1
            if self.model[a] is not None and self.model[b] is not None:
                self.race(rng, conns, "set-vm-id", None, [{"vm-id": next_id}, {"vm-id": next_id}],
                          ("VM_ID_IN_USE",), targets=[a, b])
            next_id += 1
            self.race(rng, conns, "register", None,
                      [{"pool": "A", "priority": "low", "vm-id": next_id}, {"pool": "B", "priority": "high",
                                                                           "vm-id": next_id}],
                      ("VM_ID_IN_USE",), targets=[c, d])
            with self.lock:
                self.contention["rounds"] += 1
        for client, _ in conns:
            client.close()

    def race(self, rng, conns, op, vm, params_list, losing_codes, targets=None):
        """``len(params_list)`` callers at once: on ``vm``, or each on its own of ``targets`` (the
        same vm_id for different VMs). Exactly one must succeed; the others get ``losing_codes``."""
        targets = targets or [vm] * len(params_list)
        fronts = ["cli", "plugin"] + [rng.choice(["cli", "plugin"]) for _ in params_list[2:]]
        rng.shuffle(fronts)
        hosts = [rng.choice(self.hosts) for _ in params_list]
        results = [None] * len(params_list)
        barrier = threading.Barrier(len(params_list))

        def go(i):
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                pass
            results[i] = self.change(fronts[i], conns[i % len(conns)], hosts[i], op, targets[i], params_list[i],
                                     "contention")

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(params_list))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.opts.call_timeout + 60)
        kind = "%s %s" % (op, "same VM" if targets[0] == targets[-1] else "same vm_id")
        with self.lock:
            self.contention["races"] += 1
            self.contention["by_kind"][kind] = self.contention["by_kind"].get(kind, 0) + 1
        winners = [i for i, r in enumerate(results) if r is not None and r.ok]
        losers = [i for i, r in enumerate(results) if r is None or not r.ok]
        bad_losers = [i for i in losers if results[i] is None or results[i].code not in losing_codes]
        if len(winners) != 1 or bad_losers:
            self.violation("a race did not end with exactly one winner and documented conflicts", op=op,
                           targets=targets, params=params_list, fronts=fronts,
                           outcomes=[None if r is None else (r.ok, r.code, r.text[-300:]) for r in results])
            with self.lock:
                for i in bad_losers + (winners if len(winners) != 1 else []):
                    self.uncertain.add(targets[i])
            return
        w = winners[0]
        vm = targets[w]
        after = self.apply(op, self.model[vm], params_list[w], results[w].doc)
        with self.lock:
            self.model[vm] = after
            self.acknowledged += 1
        if after is not None:
            self.check_answer(vm, after, results[w].doc, "race %s winner" % op)

    def injector(self, deadline):
        rng = random.Random("%s:latency" % self.opts.seed)
        client = JsonRpcClient(self.sim.url, timeout=30)
        methods = list(LATENCY_METHODS)
        while time.time() < deadline and not self.stop.is_set():
            client.call("sim.clear_faults")
            seen = client.call("sim.stats").get("calls_by_method") or {}
            methods = sorted(set(methods) | {m for m in seen if not m.startswith("sim.")})
            r = rng.random()
            if r < 0.15:
                wave = {}
            elif r < 0.35:
                wave = {"*": rng.randint(5, self.opts.max_latency_ms // 4)}
            else:
                wave = {m: rng.randint(5, self.opts.max_latency_ms) for m in rng.sample(methods, min(6, len(methods)))}
            for m, ms in sorted(wave.items()):
                client.call("sim.inject_fault", {"method": m, "times": -1, "code": None, "latency_ms": ms})
            self.waves.append(wave)
            self.stop.wait(min(self.opts.wave_seconds, max(0.0, deadline - time.time())))
        client.call("sim.clear_faults")
        client.close()

    def sampler(self):
        db = self.pool.db()
        while not self.stop.wait(0.5):
            self.sample(db)

    def sample(self, db):
        sizes = {}
        for suffix, key in (("", "db_bytes"), ("-wal", "wal_bytes"), ("-shm", "shm_bytes")):
            try:
                sizes[key] = os.path.getsize(db + suffix)
            except OSError:
                sizes[key] = 0
        rows = 0
        if sizes["db_bytes"]:
            try:
                c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
                try:
                    rows = c.execute("SELECT count(*) FROM vms").fetchone()[0]
                finally:
                    c.close()
            except sqlite3.Error:
                rows = 0
        with self.lock:
            self.peak["rows"] = max(self.peak["rows"], rows)
            for k, v in sizes.items():
                self.peak[k] = max(self.peak[k], v)
            self.peak["total_bytes"] = max(self.peak["total_bytes"], sum(sizes.values()))

    # ------------------------------------------------------------------ the run

    def run(self):
        opts = self.opts
        self.admin = admin_binary()
        proc = subprocess.run([self.admin, "functions", "--format", "json"], stdout=subprocess.PIPE, timeout=60,
                              check=True)
        self.documented = set(json.loads(proc.stdout.decode("utf-8"))["error_codes"])
        missing = [c for c in CONFLICTS if c not in self.documented]
        if missing:
            raise SystemExit("conflict codes not documented by `vgpu-admin functions`: %s" % missing)
        self.work = tempfile.mkdtemp(prefix="vgpu-soak-")
        fixture = generated_fixture(os.path.join(self.work, "pool.json"), hosts=opts.hosts, vms=opts.vms,
                                    seed=opts.seed)
        variant = Variant("py3-cli", "modern", "cli")
        try:
            variant.resolve(self.work)
        except BaseException as e:  # noqa: BLE001 - pytest's Failed/Skipped outside pytest
            raise SystemExit("no interpreter for the plugin: %s" % e)
        self.sim = Simulator(fixture=fixture, workdir=os.path.join(self.work, "sim"), plugin_dir=PLUGIN_DIR).start()
        try:
            self.pool = Pool(self.sim, variant, self.admin, self.work)
            self.hosts = self.pool.hosts
            session = self.sim.login()
            self.host_refs = {h: self.sim.call("host.get_by_uuid", session, h) for h in self.hosts}
            vms = [v for v in self.sim.fixture_data["vms"]
                   if not v.get("is_control_domain") and not v.get("is_a_template")]
            self.names = {v["uuid"]: v["name_label"] for v in vms}
            writers = opts.cli_writers + opts.plugin_writers
            need = writers * opts.vms_per_writer + opts.contended_vms
            if need > len(vms):
                raise SystemExit("the pool has %d VMs, the soak needs %d" % (len(vms), need))
            order = [v["uuid"] for v in vms]
            self.rng.shuffle(order)
            parts = [order[i * opts.vms_per_writer:(i + 1) * opts.vms_per_writer] for i in range(writers)]
            contended = order[writers * opts.vms_per_writer:need]
            self.model = {u: None for u in order[:need]}
            self.acknowledged = 0
            self.print("soak: seed %d, %d s, %d hosts (master %s), %d VMs (%d per writer, %d contended), "
                       "writers %d CLI + %d plugin, readers %d CLI + %d plugin, plugin %s %s, %s"
                       % (opts.seed, opts.seconds, len(self.hosts), self.pool.master[:8], len(vms),
                          opts.vms_per_writer, len(contended), opts.cli_writers, opts.plugin_writers,
                          opts.cli_readers, opts.plugin_readers, variant.python, variant.version, self.admin))
            started = time.time()
            deadline = started + opts.seconds
            threads = [threading.Thread(target=self.injector, args=(deadline,), name="latency"),
                       threading.Thread(target=self.sampler, name="sampler")]
            for i in range(writers):
                front = "cli" if i < opts.cli_writers else "plugin"
                threads.append(threading.Thread(target=self.writer, args=(i, front, parts[i], deadline),
                                                name="writer-%d" % i))
            for i in range(opts.cli_readers + opts.plugin_readers):
                front = "cli" if i < opts.cli_readers else "plugin"
                threads.append(threading.Thread(target=self.reader, args=(i, front, deadline), name="reader-%d" % i))
            if opts.contended_vms >= 4:
                threads.append(threading.Thread(target=self.contender, args=(contended, deadline), name="contention"))
            for t in threads:
                t.daemon = True
                t.start()
            hard = deadline + 2 * opts.call_timeout + 120
            for t in threads:
                if t.name == "sampler":
                    continue
                t.join(max(0.0, hard - time.time()))
                if t.is_alive():
                    self.violation("worker did not finish within its bound", worker=t.name)
            elapsed = time.time() - started
            self.stop.set()
            self.sample(self.pool.db())
            self.sim.clear_faults()
            cli_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if opts.defect == "lose-row":
                self.lose_a_row()
            self.verify()
            stats = self.sim.stats()
        finally:
            self.sim.stop()
        logs_locked = self.scan_logs()
        all_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = self.summary(elapsed, cli_rss_kib, all_rss_kib, stats, logs_locked, variant)
        if not opts.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            summary["workdir"] = self.work
        return summary

    def print(self, text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def lose_a_row(self):
        """For the suite's own check that a lost registration is caught: one acknowledged row goes."""
        registered = [vm for vm, exp in self.model.items() if exp is not None and vm not in self.uncertain]
        c = sqlite3.connect(self.pool.db(), timeout=30)
        with c:
            c.execute("DELETE FROM vms WHERE vm_uuid = ?", (sorted(registered)[0],))
        c.close()

    # ------------------------------------------------------------------ the end state

    def verify(self):
        db = self.pool.db()
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
        try:
            integrity = c.execute("PRAGMA integrity_check").fetchall()
            rows = c.execute("SELECT vm_uuid, vm_id, pool_id, priority, weight, max_jobs_per_sec, max_queue_depth, "
                             "quarantined FROM vms").fetchall()
            master_generation = dict(c.execute("SELECT key, value FROM registry_meta").fetchall()).get("generation")
        finally:
            c.close()
        if integrity != [("ok",)]:
            self.violation("integrity_check of the master's registry", result=integrity)
        registry = {}
        for u, vm_id, pool_id, prio, weight, rate, depth, q in rows:
            registry[u] = {"vm_id": vm_id, "pool": pool_id, "priority": PRIORITIES[prio], "weight": weight,
                           "max_jobs_per_sec": rate, "max_queue_depth": depth, "quarantined": bool(q)}
        self.final = {"registered": len(registry), "lost": [], "unexpected": [], "wrong_values": [],
                      "duplicate_vm_ids": [], "uncertain": sorted(self.uncertain)}
        ids = [r["vm_id"] for r in registry.values()]
        self.final["duplicate_vm_ids"] = sorted({i for i in ids if ids.count(i) > 1})
        for vm, expected in sorted(self.model.items()):
            if vm in self.uncertain:
                continue
            got = registry.get(vm)
            if expected is None and got is not None:
                self.final["unexpected"].append({"vm": vm, "registry": got})
            elif expected is not None and got is None:
                self.final["lost"].append({"vm": vm, "expected": expected})
            elif expected != got:
                self.final["wrong_values"].append({"vm": vm, "expected": expected, "registry": got})
        for vm in sorted(set(registry) - set(self.model)):
            self.final["unexpected"].append({"vm": vm, "registry": registry[vm]})
        for key in ("lost", "unexpected", "wrong_values", "duplicate_vm_ids"):
            if self.final[key]:
                self.violation("registry: %s" % key.replace("_", " "), items=self.final[key][:20])

        # The mirror and device-model-args of every VM against the registry.
        session = self.sim.login()
        records = self.sim.call("VM.get_all_records", session)
        mirror_bad, dma_bad, mirror_ids, dma_ids = [], [], [], []
        for rec in records.values():
            u = rec["uuid"]
            reg = registry.get(u)
            raw = rec["other_config"].get("vgpu-registry")
            mirror = json.loads(raw) if raw else None
            if mirror is not None:
                mirror_ids.append(mirror.get("vm_id"))
            if (reg is None) != (mirror is None) or (reg is not None and any(
                    mirror.get(k) != reg[k] for k in reg)):
                mirror_bad.append({"vm": u, "registry": reg, "mirror": mirror})
            dma = rec["platform"].get("device-model-args", "")
            m = re.search(r"vgpu-cuda,addr=5,pool_id=([AB]),priority=(\w+),vm_id=(\d+)", dma)
            if m:
                dma_ids.append(int(m.group(3)))
            if (reg is None) != (m is None) or (reg is not None and (m.group(1), m.group(2), int(m.group(3))) != (
                    reg["pool"], reg["priority"], reg["vm_id"])):
                dma_bad.append({"vm": u, "registry": reg, "device_model_args": dma})
        for what, bad in (("mirror differs from the registry", mirror_bad),
                          ("device-model-args differ from the registry", dma_bad)):
            if bad:
                self.violation(what, items=bad[:20])
        for what, ids in (("mirror", mirror_ids), ("device-model-args", dma_ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                self.violation("a vm_id held twice in the %s" % what, vm_ids=dup)
        self.final["mirror_mismatches"] = len(mirror_bad)
        self.final["dma_mismatches"] = len(dma_bad)

        # What scan-vms (run on the master) says.
        res = self.cli(self.pool.master, ["scan-vms"], "verify", "read")
        if not res.ok:
            self.violation("scan-vms failed at the end", code=res.code, text=res.text[-600:])
        else:
            s = res.doc["summary"]
            self.final["scan"] = s
            not_configured = [r["vm_uuid"] for r in res.doc["registered"] if r["status"] != "configured"]
            if s["drift"] or s["not_applied"] or s["stale"] or s["registered"] != len(registry) or not_configured:
                self.violation("scan-vms: not every registration is configured", summary=s,
                               not_configured=not_configured[:20])

        # Every other host's replica: the master's rows at the pool's generation.
        pool_generation = self.sim.pool_other_config().get("vgpu-registry:generation")
        self.final["generation"] = pool_generation
        if master_generation != pool_generation:
            self.violation("the master's registry is not at the pool's generation", master=master_generation,
                           pool=pool_generation)
        behind = [h for h in self.pool.members if not self.replica_in_step(h, rows, pool_generation)]
        self.final["replicas_behind"] = behind
        self.final["replicas_caught_up_by_refresh"] = []
        if behind and self.replicas_not_ok:
            # A change answered that some refresh failed (under load, past refresh_timeout_s), which
            # the host's own periodic refresh repairs: `vgpu-admin refresh` there must.
            for h in behind:
                self.cli(h, ["refresh"], "verify", "write")
                if self.replica_in_step(h, rows, pool_generation):
                    self.final["replicas_caught_up_by_refresh"].append(h)
            behind = [h for h in behind if h not in self.final["replicas_caught_up_by_refresh"]]
            self.final["replicas_behind"] = behind
        if behind:
            self.violation("a host's replica is not the master's registry", hosts=behind,
                           refreshes_not_ok_in_answers=self.replicas_not_ok)

    def replica_in_step(self, host, rows, generation):
        """The host's replica holds exactly the master's ``rows`` at the pool's ``generation``."""
        try:
            c = sqlite3.connect("file:%s?mode=ro" % self.pool.db(host), uri=True, timeout=30)
            try:
                replica = c.execute("SELECT vm_uuid, vm_id, pool_id, priority, weight, max_jobs_per_sec, "
                                    "max_queue_depth, quarantined FROM vms").fetchall()
                gen = dict(c.execute("SELECT key, value FROM registry_meta").fetchall()).get("generation")
            finally:
                c.close()
        except sqlite3.Error:
            return False
        return sorted(replica) == sorted(rows) and gen == generation

    def scan_logs(self):
        """`database is locked` in a plugin log or the simulator's log and stderr."""
        hits = []
        paths = [self.pool.log_file(h) for h in self.hosts]
        paths += [os.path.join(self.work, "sim", n) for n in ("xapi-sim.log", "xapi-sim.stderr")]
        for p in paths:
            try:
                with open(p, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            if LOCKED in text:
                hits.append({"file": os.path.basename(p), "count": text.count(LOCKED)})
        if hits:
            self.violation("`%s` in a log" % LOCKED, files=hits)
        return hits

    # ------------------------------------------------------------------ figures

    def summary(self, elapsed, cli_rss_kib, all_rss_kib, stats, logs_locked, variant):
        kinds = {}
        failures = {}
        by_worker = {}
        for via, rw, fn, role, seconds, ok, code, worker in self.ops:
            if worker == "verify":
                continue
            for key in ("%s %s" % (via, rw), "%s %s on the %s" % (via, rw, role), "%s %s %s" % (via, rw, fn)):
                k = kinds.setdefault(key, {"ops": 0, "failed": 0, "lat": []})
                k["ops"] += 1
                k["failed"] += 0 if ok else 1
                k["lat"].append(seconds)
            if not ok:
                failures[code] = failures.get(code, 0) + 1
                who = worker.split("-")[0]
                by_worker.setdefault(who, {})
                by_worker[who][code] = by_worker[who].get(code, 0) + 1
        by_kind = {}
        for key, k in sorted(kinds.items()):
            by_kind[key] = {"ops": k["ops"], "failed": k["failed"], "per_s": round(k["ops"] / elapsed, 2),
                            "p50_ms": round(1000 * percentile(k["lat"], 50)),
                            "p99_ms": round(1000 * percentile(k["lat"], 99)),
                            "max_ms": round(1000 * max(k["lat"]))}
        total = sum(1 for o in self.ops if o[7] != "verify")
        conflicts = sum(n for c, n in failures.items() if c in CONFLICTS)
        return {
            "ok": not self.violations,
            "seed": self.opts.seed,
            "seconds": self.opts.seconds,
            "elapsed_s": round(elapsed, 1),
            "hosts": len(self.hosts),
            "vms_in_pool": len(self.names),
            "vms_soaked": len(self.model),
            "plugin": "%s %s, %s backend" % (os.path.basename(variant.python), variant.version, variant.backend),
            "admin": self.admin,
            "ops_total": total,
            "ops_per_s": round(total / elapsed, 2),
            "acknowledged_writes": self.acknowledged,
            "by_kind": by_kind,
            "failures_by_code": failures,
            "failures_by_worker": by_worker,
            "conflicts": conflicts,
            "documented_codes": sorted(self.documented),
            "conflict_codes": list(CONFLICTS),
            "contention": self.contention,
            "database_is_locked": len(self.locked_hits) + sum(h["count"] for h in logs_locked),
            "lock_waits_reported": self.lock_waits,
            "partly_failed_writes": self.partly,
            "replicas_not_refreshed_in_answers": self.replicas_not_ok,
            "latency_waves": len(self.waves),
            "latency_max_ms": self.opts.max_latency_ms,
            "peak_registry": dict(self.peak),
            "peak_rss_kib": {"vgpu_admin_cli": cli_rss_kib, "any_process": all_rss_kib},
            "simulator": {"calls_total": stats.get("calls_total"), "plugin_calls": stats.get("plugin_calls"),
                          "max_in_flight": stats.get("max_in_flight")},
            "final": self.final,
            "violations": self.violations,
        }


def render(s):
    out = []
    out.append("soak: %s s of load in %s s, %d hosts, %d VMs soaked; %s"
               % (s["seconds"], s["elapsed_s"], s["hosts"], s["vms_soaked"], s["plugin"]))
    out.append("operations: %d (%.2f/s), acknowledged writes %d, conflicts %d"
               % (s["ops_total"], s["ops_per_s"], s["acknowledged_writes"], s["conflicts"]))
    out.append("%-34s %6s %6s %7s %8s %8s %8s" % ("kind", "ops", "failed", "ops/s", "p50 ms", "p99 ms", "max ms"))
    def order(key):
        words = key.split()
        return words[:2], 0 if len(words) == 2 else 1 if " on the " in key else 2, key

    for key in sorted(s["by_kind"], key=order):
        k = s["by_kind"][key]
        indent = "  " if len(key.split()) > 2 else ""
        out.append("%-34s %6d %6d %7.2f %8d %8d %8d" % (indent + key, k["ops"], k["failed"], k["per_s"], k["p50_ms"],
                                                        k["p99_ms"], k["max_ms"]))
    out.append("failures by code: %s; by worker: %s" % (json.dumps(s["failures_by_code"], sort_keys=True),
                                                      json.dumps(s["failures_by_worker"], sort_keys=True)))
    out.append("contention: %d rounds, %d races %s" % (s["contention"]["rounds"], s["contention"]["races"],
                                                        json.dumps(s["contention"]["by_kind"], sort_keys=True)))
    out.append("latency: %d waves, up to %d ms per call; lock waits reported %d; `database is locked`: %d"
               % (s["latency_waves"], s["latency_max_ms"], s["lock_waits_reported"], s["database_is_locked"]))
    out.append("writes stored but reported partly failed: %s; replica refreshes not ok in answers: %d"
               % (json.dumps(s["partly_failed_writes"], sort_keys=True), s["replicas_not_refreshed_in_answers"]))
    p = s["peak_registry"]
    out.append("peak registry: %d rows, %d bytes (file %d, WAL %d, shm %d)"
               % (p["rows"], p["total_bytes"], p["db_bytes"], p["wal_bytes"], p["shm_bytes"]))
    out.append("peak RSS: vgpu-admin (CLI) %d KiB; any process (simulator, plugins) %d KiB"
               % (s["peak_rss_kib"]["vgpu_admin_cli"], s["peak_rss_kib"]["any_process"]))
    out.append("simulator: %s calls, %s plugin runs, %s in flight at most"
               % (s["simulator"]["calls_total"], s["simulator"]["plugin_calls"], s["simulator"]["max_in_flight"]))
    f = s["final"]
    out.append("end state: %d registered, lost %d, unexpected %d, wrong values %d, duplicate vm_ids %d, "
               "mirror mismatches %s, device-model-args mismatches %s, replicas behind %d (caught up by a refresh %d), "
               "scan %s"
               % (f["registered"], len(f["lost"]), len(f["unexpected"]), len(f["wrong_values"]),
                  len(f["duplicate_vm_ids"]), f.get("mirror_mismatches"), f.get("dma_mismatches"),
                  len(f.get("replicas_behind", [])), len(f.get("replicas_caught_up_by_refresh", [])),
                  json.dumps(f.get("scan"), sort_keys=True)))
    for v in s["violations"][:30]:
        out.append("VIOLATION: %s" % json.dumps(v, sort_keys=True)[:1500])
    out.append("SOAK %s (seed %d)" % ("PASSED" if s["ok"] else "FAILED: %d violation(s)" % len(s["violations"]),
                                       s["seed"]))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=180, help="how long the load runs (default 180)")
    ap.add_argument("--hosts", type=int, default=4, help="hosts in the generated pool (default 4)")
    ap.add_argument("--vms", type=int, default=120, help="VMs in the generated pool (default 120)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--cli-writers", type=int, default=2)
    ap.add_argument("--plugin-writers", type=int, default=2)
    ap.add_argument("--cli-readers", type=int, default=1)
    ap.add_argument("--plugin-readers", type=int, default=1)
    ap.add_argument("--vms-per-writer", type=int, default=10)
    ap.add_argument("--contended-vms", type=int, default=8, help="VMs of the contention rounds (0: none)")
    ap.add_argument("--max-latency-ms", type=int, default=150, help="injected latency per call, at most")
    ap.add_argument("--wave-seconds", type=float, default=5, help="how long each latency wave lasts")
    ap.add_argument("--max-ops", type=int, default=100000, help="cap on each worker's operations")
    ap.add_argument("--call-timeout", type=float, default=180, help="bound on any one call, in seconds")
    ap.add_argument("--json", help="write the summary there as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (registries, logs)")
    ap.add_argument("--defect", choices=["lose-row"], help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.seed is None:
        opts.seed = int(time.time()) % 1000000
    # Any socket the run opens (the PyPI client's included) gives up instead of hanging forever.
    socket.setdefaulttimeout(opts.call_timeout + 30)
    summary = Soak(opts).run()
    print(render(summary))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

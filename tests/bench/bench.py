"""vgpu-admin benchmarks: scan, register and list on large pools, against the XAPI simulator.

Prints the figures and writes them to docs/benchmarks.md. Wall times are medians over several
runs of the real (release) binary; memory is the peak resident set of the vgpu-admin process.
The simulator's own share of a scan (building the records in Python) is measured separately, so
the product's cost can be told apart from the test pool's.
"""

import argparse
import datetime
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from xapi_sim.harness import Simulator  # noqa: E402

sys.path.insert(0, HERE)
import plugin_cost  # noqa: E402 (the plugin's cost per call, and scan-vms against a per-VM scan)


def measure(binary, args, env, runs):
    times = []
    rss = []
    for _ in range(runs):
        code = (
            "import resource,subprocess,sys,time;"
            "t=time.perf_counter();"
            "p=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
            "e=time.perf_counter()-t;"
            "sys.exit(p.stderr.decode()) if p.returncode else None;"
            "print(e, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.check_output([sys.executable, "-c", code, binary] + args, env=env)
        t, kib = out.decode().split()
        times.append(float(t))
        rss.append(int(kib) / 1024.0)
    return statistics.median(times), max(rss)


def measure_cpu(binary, args, env, runs):
    """(median wall time, median CPU time, highest peak RSS in MiB) of `binary args`, each run in
    a fresh Python whose only child is the binary, so its getrusage(RUSAGE_CHILDREN) is the
    binary's alone."""
    walls, cpus, rss = [], [], []
    code = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();"
        "p=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
        "e=time.perf_counter()-t;"
        "sys.exit(p.stderr.decode()) if p.returncode else None;"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(e, u.ru_utime+u.ru_stime, u.ru_maxrss)"
    )
    for _ in range(runs):
        out = subprocess.check_output([sys.executable, "-c", code, binary] + args, env=env)
        t, cpu, kib = out.decode().split()
        walls.append(float(t))
        cpus.append(float(cpu))
        rss.append(int(kib) / 1024.0)
    return statistics.median(walls), statistics.median(cpus), max(rss)


# The targets of a scan: flat memory on a large pool, and no slower on usual ones. "Before"
# is the same bench run with the release binary of the commit before the scan was streamed (see
# docs/benchmarks.md); a figure more than SCAN_NOISE above it counts as slower.
SCAN_RSS_TARGET_MIB = {50000: 60.0}
SCAN_BEFORE = {1000: (0.0801, 0.0219), 10000: (0.4661, 0.2016)}  # VMs -> (wall s, CPU s), `scan-vms --format json`
SCAN_NOISE = 1.10
SCAN_FILTER = ('(field "is_a_template"="false") and (field "is_control_domain"="false") '
               'and (field "is_a_snapshot"="false")')


SCAN_NOTES = """
## Scanning a large pool in flat memory

`scan-vms` (and `status`, which is built on it) makes one `VM.get_all_records_where` call. Its
answer carries xapi's whole record of every VM, about 2.7 kB each here: 138 MB for 50,000 VMs, of
which the scan reads eight fields. The answer is now read from the connection as it arrives and
never held whole: a scan follows strings and brackets to find where each VM's record ends, and that
record alone is deserialised (serde_json, the fields the scan does not use skipped unread into any
tree) and handed to the scan, which reduces it to its line of the report at once. (serde_json's own
streaming reader with a visitor per record was tried too: on the 50,000-VM answer read from a file
it took 0.66 s of CPU, against 0.59 s for the former whole-answer parse and 0.48 s for this framing,
which also keeps each record's bytes to name a VM whose text is not Unicode.) The registry is
read first (it is small); its rows are kept as the text of their XAPI copy rather than as JSON maps,
which for 25,000 rows took 55 MB on their own. The JSON document is serialised straight to stdout
through a 64 kB buffer instead of into one string first, byte for byte the same document as before
(a unit test compares the two). What is still held is the report itself: its lines are sorted
(registered VMs by pool, priority and vm_id, the others by name), so none can be written before the
last record has come. The table (`scan-vms` without `--format json`) is still laid out whole, as its
column widths depend on every row; `vgpu-admin call` and the plugin answer with one string, as the
plugin protocol returns one, and a scan forwarded to the master's plugin is read back whole.

Before, the answer was read into memory whole, its records deserialised into a map, turned into a
sorted list, then into the report, whose document was built as a string: on the same bench
(release build of the commit before, same generated pools, load average 5 to 8 on 2 cores):

| `scan-vms --format json` | median wall time | median CPU time | peak RSS |
|---|---|---|---|
| 1,000 VMs, before | 80.1 ms | 21.9 ms | 14.5 MiB |
| 10,000 VMs, before | 466.1 ms | 201.6 ms | 71.6 MiB |
| 50,000 VMs, before | 3885.6 ms | 1067.7 ms | 322.8 MiB |

(The figures the issue quotes, 146 MB for 50,000 VMs, were taken with VM records of a few fields;
these pools have records of xapi's size.) What a 50,000-VM scan holds at its peak now, by
heaptrack: 33 MB of heap, of which 13.6 MB are the registry rows' texts, 13 MB the registrations
(a list, then a map by uuid) and the rest the report's lines; the process's peak RSS adds the
program itself and the allocator's slack.
"""


def scan_fixture(path, n_vms, registered):
    """A generated pool (`xapi_sim.generate`: xapi-sized records, the usual platform keys) of
    `n_vms` VMs on 16 hosts, the first `registered` of them carrying the vgpu device their
    registration will give them, but VM 0, which `register-vm` sets up. The VMs' uuids, in order."""
    from xapi_sim.generate import generated_fixture_data

    data = generated_fixture_data(hosts=16, vms=n_vms, seed=13)
    vms = [v for v in data["vms"] if not v["is_control_domain"] and not v["is_a_template"]]
    for i, v in enumerate(vms[1:registered], start=1):
        v["platform"]["device-model-args"] = (
            "-device vgpu-cuda,addr=5,pool_id=%s,priority=high,vm_id=%d" % ("AB"[i % 2], i + 1))
    with open(path, "w") as f:
        json.dump(data, f)
    return [v["uuid"] for v in vms]


def answer_time(sim, session):
    """Wall time of the simulator answering the scan's one call, the answer read as bytes and not
    parsed: the simulator's share of a scan's wall time."""
    from xapi_sim.client import UnixHTTPConnection

    body = json.dumps({"jsonrpc": "2.0", "method": "VM.get_all_records_where",
                       "params": [session, SCAN_FILTER], "id": 1})
    conn = UnixHTTPConnection(sim.socket_path)
    t0 = time.perf_counter()
    conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
    data = conn.getresponse().read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed, len(data)


def bench_scans(binary, sizes, runs):
    """The scan table: each command on a generated pool of each size, half of its VMs registered.
    Returns (rows, answer sizes by pool size)."""
    rows, answers = [], {}
    for n in sizes:
        work = tempfile.mkdtemp(prefix="vgpu-bench-")
        fixture = os.path.join(work, "pool.json")
        uuids = scan_fixture(fixture, n, n // 2)
        with Simulator(fixture=fixture, workdir=work, log=False) as sim:
            db_path = os.path.join(work, "bench.db")
            env = dict(os.environ, VGPU_XAPI=sim.url, VGPU_DB=db_path,
                       VGPU_CONFIG=os.path.join(work, "none.conf"))
            seed_registry(uuids, n // 2, db_path, binary, env)
            total = n + 2  # and two templates, which the scan leaves out
            session = sim.login()
            answer_time(sim, session)  # the simulator builds its answer once, then keeps it
            shares = [answer_time(sim, session) for _ in range(runs)]
            share = statistics.median(t for t, _ in shares)
            answers[n] = shares[0][1]
            for name, args, uses_scan in [
                ("scan-vms --format json", ["scan-vms", "--format", "json"], True),
                ("scan-vms (table)", ["scan-vms"], True),
                ("list-vms --format json", ["list-vms", "--format", "json"], False),
                ("status --format json", ["status", "--format", "json"], True),
            ]:
                t, cpu, rss = measure_cpu(binary, args, env, runs)
                rows.append((name, total, n // 2, t, cpu, rss, share if uses_scan else None))
            # Registration with an automatic id next to n/2 taken ids (one after another).
            got = [measure_cpu(binary, ["register-vm", "--vm-uuid", uuids[n // 2 + k], "--pool", "A",
                                        "--priority", "low"], env, 1) for k in range(runs)]
            rows.append(("register-vm (auto id)", total, n // 2, statistics.median(g[0] for g in got),
                         statistics.median(g[1] for g in got), max(g[2] for g in got), None))
    return rows, answers


def scan_checks(rows):
    """One line per scan target that this run could check; MISSED where not met."""
    out = []
    for name, total, _, t, cpu, rss, _ in rows:
        n = total - 2
        if name != "scan-vms --format json":
            continue
        if n in SCAN_RSS_TARGET_MIB:
            target = SCAN_RSS_TARGET_MIB[n]
            out.append("%s peak RSS at %d VMs: %.1f MiB, target under %.0f MiB%s"
                       % (name, n, rss, target, "" if rss < target else "  MISSED"))
        wall0, cpu0 = SCAN_BEFORE.get(n, (None, None))
        if wall0 is not None:
            for what, now, before in [("wall", t, wall0), ("CPU", cpu, cpu0)]:
                out.append("%s %s time at %d VMs: %.0f ms, before %.0f ms (no slower: at most %.0f ms)%s"
                           % (name, what, n, now * 1000, before * 1000, before * SCAN_NOISE * 1000,
                              "" if now <= before * SCAN_NOISE else "  MISSED"))
    return out


def seed_registry(uuids, registered, db_path, binary, env):
    """Registers the first `registered` VMs: the first with `register-vm`, which creates the
    registry (reads create nothing), the rest straight into SQLite, quicker than one command each."""
    subprocess.check_call([binary, "register-vm", "--vm-uuid", uuids[0], "--pool", "A", "--priority", "high",
                           "--vm-id", "1"], env=env, stdout=subprocess.DEVNULL)
    db = sqlite3.connect(db_path)
    db.executemany(
        "INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (?, ?, ?, ?, 2)",
        [(i + 1, uuids[i], "vm-%05d" % (i + 1), "AB"[i % 2]) for i in range(1, registered)],
    )
    db.commit()
    db.close()


def bench_pool_refresh(binary, hosts, n_vms, registered, runs):
    """A change on the master plus the refresh of every other host's replica (SPEC §9), on a
    generated pool: median wall time of `register-vm` run as the master, and how many replicas
    answered. The plugins run the way xapi runs them, with the CLI backend (this binary)."""
    from xapi_sim.generate import generated_fixture

    work = tempfile.mkdtemp(prefix="vgpu-bench-pool-")
    fixture = generated_fixture(os.path.join(work, "pool.json"), hosts=hosts, vms=n_vms, seed=7)
    with Simulator(fixture=fixture, workdir=work, plugin_python=sys.executable) as sim:
        hosts_data = sim.fixture_data["hosts"]
        master = hosts_data[0]["uuid"]
        dbs = {}
        for h in hosts_data:
            dbs[h["uuid"]] = os.path.join(work, "registry-%s.db" % h["uuid"][:8])
            sim.set_plugin_env(h["uuid"], {
                "PYTHONPATH": os.path.join(REPO, "tests", "plugin"),  # the XenAPIPlugin stand-in
                "VGPU_PLUGIN_BACKEND": "cli",
                "VGPU_ADMIN": binary,
                "VGPU_CONFIG": os.path.join(work, "none.conf"),
                "VGPU_DB": dbs[h["uuid"]],
            })
        env = dict(os.environ, VGPU_XAPI=sim.url, VGPU_DB=dbs[master], VGPU_HOST_UUID=master,
                   VGPU_CONFIG=os.path.join(work, "none.conf"))
        vms = [v["uuid"] for v in sim.fixture_data["vms"]
               if not v.get("is_control_domain") and not v.get("is_a_template")]
        # `refresh` on the master creates its registry (a read would create nothing).
        subprocess.check_call([binary, "refresh"], env=env, stdout=subprocess.DEVNULL)
        db = sqlite3.connect(dbs[master])
        db.executemany(
            "INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (?, ?, ?, ?, 1)",
            [(i + 1, vms[i], "vm-%05d" % i, "AB"[i % 2]) for i in range(registered)],
        )
        db.commit()
        db.close()
        # The first change publishes every registration to the mirror (once, on upgrade).
        t0 = time.perf_counter()
        subprocess.check_call([binary, "register-vm", "--vm-uuid", vms[registered], "--pool", "A",
                               "--priority", "low"], env=env, stdout=subprocess.DEVNULL)
        first = time.perf_counter() - t0
        times, oks = [], []
        for k in range(runs):
            t0 = time.perf_counter()
            out = subprocess.check_output([binary, "--format", "json", "register-vm", "--vm-uuid",
                                           vms[registered + 1 + k], "--pool", "B", "--priority", "high"],
                                          env=env)
            times.append(time.perf_counter() - t0)
            doc = json.loads(out)
            oks.append(sum(1 for r in doc["replicas"] if r["ok"]))
        rows = {}
        for h, path in dbs.items():
            if h != master:
                c = sqlite3.connect(path)
                rows[h] = c.execute("SELECT count(*) FROM vms").fetchone()[0]
                c.close()
        assert set(rows.values()) == {registered + 1 + runs}, rows
        return {"hosts": hosts, "vms": n_vms, "registered": registered, "first": first,
                "median": statistics.median(times), "max": max(times),
                "replicas_ok": min(oks), "replicas": hosts - 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "vgpu-admin"))
    ap.add_argument("--sizes", default="1000,5000,10000,50000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--pool-hosts", type=int, default=16)
    ap.add_argument("--pool-vms", type=int, default=2000)
    ap.add_argument("--plugin-runs", type=int, default=11)
    ap.add_argument("--forwarded-runs", type=int, default=5)
    ap.add_argument("--reference-sizes", default="1000")
    opts = ap.parse_args()
    started = time.time()
    load = os.getloadavg()[0]

    plugin_doc = plugin_sections(opts)

    pool = bench_pool_refresh(opts.binary, opts.pool_hosts, opts.pool_vms, opts.pool_vms // 2, opts.runs)
    pool_table = (
        "| hosts | VMs | registered | change + refresh of every replica (median) | slowest | "
        "replicas refreshed | first change (publishes the whole mirror) |\n"
        "|---|---|---|---|---|---|---|\n"
        "| %d | %d | %d | %.0f ms | %.0f ms | %d of %d | %.0f ms |\n"
        % (pool["hosts"], pool["vms"], pool["registered"], pool["median"] * 1000, pool["max"] * 1000,
           pool["replicas_ok"], pool["replicas"], pool["first"] * 1000)
    )
    print(pool_table)

    rows, answers = bench_scans(opts.binary, [int(n) for n in opts.sizes.split(",")], opts.runs)
    header = "| command | VMs in pool | registered | median wall time | median CPU time | peak RSS | " \
             "simulator's share |\n" \
             "|---|---|---|---|---|---|---|\n"
    lines = []
    for name, total, reg, t, cpu, rss, share in rows:
        lines.append("| `%s` | %d | %d | %.1f ms | %.1f ms | %.1f MiB | %s |" % (
            name, total, reg, t * 1000, cpu * 1000, rss, "%.1f ms" % (share * 1000) if share else "-"))
    table = header + "\n".join(lines) + "\n"
    print(table)
    checks = scan_checks(rows)
    print("\n".join(checks) + "\n")

    doc = (
        "# Benchmarks\n\n"
        "Made by `make bench` (`tests/bench/bench.py`) on %s: the release `vgpu-admin` against the "
        "bundled XAPI simulator over its unix socket, on %s, %d CPU cores, Python %s, load average "
        "%.1f when it started. Median of %d runs; CPU time is user + system of the vgpu-admin "
        "process (getrusage), peak RSS its high-water mark. The pools are generated "
        "(`xapi_sim.generate`, 16 hosts, xapi-sized VM records of about %d bytes each in the answer), "
        "half of their VMs registered and carrying their vgpu device. \"Simulator's share\" is the "
        "time the simulator alone takes to answer the scan's one `VM.get_all_records_where` call "
        "(read as bytes, not parsed): it is part of the wall time and is not the product's cost; "
        "the CPU time is the product's alone.\n\n%s\n%s\n"
        % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), platform.machine(),
           os.cpu_count() or 0, platform.python_version(), load, opts.runs,
           max(answers.items())[1] // max(answers.items())[0], table,
           "".join("- %s\n" % c for c in checks))
        + SCAN_NOTES
        + "\n## A change and the refresh of every replica (SPEC §9)\n\n"
        "`register-vm` run on the pool master of a generated pool (`xapi_sim.generate`), each "
        "other host's replica refreshed by its `vgpu` plugin, run the way xapi runs it (CLI backend, "
        "this release binary), all at once. The wall time covers the change (registry, "
        "device-model-args, mirror) and waiting for every replica; target: under 2 s. A replica one "
        "generation behind (every replica, after a change) reads only the changed VM from XAPI "
        "(`vgpu-registry:last-change`), so this mostly measures 15 plugin runs at once, on %d "
        "cores.\n\n%s"
        % (os.cpu_count() or 0, pool_table)
        + plugin_doc
    )
    doc += kept_notes(opts.out)
    with open(opts.out, "w") as f:
        f.write(doc)
    print("written to %s" % os.path.relpath(opts.out, REPO))


NOTES_MARKER = "<!-- Written by hand, kept by make bench: -->"


def kept_notes(path):
    """The hand-written notes at the end of the previous file (from NOTES_MARKER on), to keep."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    at = old.find(NOTES_MARKER)
    return "\n" + old[at:] if at >= 0 else ""


def plugin_sections(opts):
    """The sections of plugin_cost.py: one plugin call against its floor, per interpreter and
    backend; scan-vms against a per-VM scan."""
    load = plugin_cost.load_note()
    print(load)
    print(plugin_cost.PLUGIN_HEADER, end="")
    rows, missing = plugin_cost.bench_plugin_calls(opts.binary, opts.plugin_runs, opts.forwarded_runs)
    verdicts = plugin_cost.verdicts(rows)
    print("\n".join(verdicts))
    plugin_table = plugin_cost.PLUGIN_HEADER + "\n".join(plugin_cost.format_row(r) for r in rows) + "\n"
    split_rows = [r for r in rows if r.get("split")]
    split_table = (plugin_cost.SPLIT_HEADER + "\n".join(plugin_cost.format_split(r) for r in split_rows) + "\n"
                   if split_rows else "Not measured: strace is not installed.\n")
    print(split_table)
    print(plugin_cost.REFERENCE_HEADER, end="")
    ref_rows = plugin_cost.bench_reference_scan(opts.binary, [int(x) for x in opts.reference_sizes.split(",")])
    ref_table = plugin_cost.REFERENCE_HEADER + "\n".join(plugin_cost.format_reference_row(r) for r in ref_rows) + "\n"
    return (
        "\n## One plugin call, run as xapi runs it\n\n"
        "`tests/bench/plugin_cost.py`, %s, %s, %d CPU cores shared with other work (%s). `plugin/vgpu` "
        "run directly as xapi runs it (the methodCall as its one argument, xapi's PATH, stdin /dev/null, "
        "cwd /, a session of its own), next to the floor: the same interpreter running a plugin that "
        "only imports its XenAPIPlugin (the plugin suite's stand-ins: XCP-ng 8.2's with PyPI XenAPI "
        "and six for 2.7, xapi >= 24's for 3.x) and dispatches to a function returning \"\". The "
        "native backend is the wheel from dist/ installed in a directory of its own (the RPM's "
        "python_path); the CLI bridge runs this release `vgpu-admin call`. Medians of %d interleaved "
        "runs (floor, call, floor, call ...) on the master of a one-host pool, %d for a call made on "
        "a member of a two-host pool and forwarded by the core to the master's plugin (host.call_plugin "
        "on the simulator). CPU is user + system time of the plugin process and its waited children "
        "(`vgpu-admin` on the CLI path), from `os.wait4`; the last column is the CPU the simulator "
        "spent on the call's waited children (the master's plugin, for a forwarded call) and on "
        "itself, from /proc (clock ticks, averaged), which is the test pool's cost, not the "
        "product's. `register` registers a new VM each run. The last column counts the instructions of "
        "one run of the floor and what the call adds to it, under `valgrind --tool=callgrind "
        "--trace-children=yes` (PYTHONHASHSEED=0): unlike times, they do not depend on the load. "
        "Wall times on a loaded machine vary by tens of ms from run to run; CPU times much less."
        "\n\n%s\n%s\n%s\n"
        % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), platform.platform(),
           os.cpu_count() or 0, load, opts.plugin_runs, opts.forwarded_runs, plugin_table,
           "\n".join(verdicts), "".join("- Not measured: %s\n" % m for m in missing))
        + "\n### Where a `register`'s wall time goes\n\n"
        "Three more `register`s on the master per interpreter and backend, run under `strace -f "
        "--seccomp-bpf -T -e trace=recvfrom,fsync,fdatasync` (only those syscalls stop): the XAPI "
        "calls the simulator logged for one, and the medians of the time the plugin and its children "
        "spent blocked reading XAPI's answers (the core's `recvfrom`; nothing else reads a socket) "
        "and in SQLite's `fsync`s. The waits are the XAPI side of a change (the simulator's work and "
        "the round trips), which on a dom0 is xapi's; the last column takes them off the untraced "
        "wall time above the floor (the table above), which leaves the product's own wall time, its "
        "`fsync`s included.\n\n%s"
        % split_table
        + "\n## scan-vms against a per-VM scan\n\n"
        "The same simulated pool (generated, 4 hosts), in the same run: `vgpu-admin scan-vms --format "
        "json` (one listing call), and a scan made the way a tool built on `xe vm-list` and `xe "
        "vm-param-get` makes it: one listing, then per VM `VM.get_by_uuid`, `VM.get_name_label` and "
        "`VM.get_platform` (three XAPI calls per VM), through the PyPI XenAPI client. CPU is the "
        "scanning process's own (`os.wait4` for vgpu-admin, `getrusage` in the reference's process); "
        "\"simulator CPU\" is what the simulator spent answering, from /proc (clock ticks). The ratios "
        "are the reference's over scan-vms'.\n\n%s"
        % ref_table
    )


if __name__ == "__main__":
    main()

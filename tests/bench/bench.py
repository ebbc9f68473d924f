"""vgpu-admin benchmarks: scan, register and list on large pools, against the XAPI simulator.

Prints the figures and writes them to docs/benchmarks.md. Wall times are medians over several
runs of the real (release) binary; memory is the peak resident set of the vgpu-admin process.
The simulator's own share of a scan (building the records in Python) is measured separately, so
the product's cost can be told apart from the test pool's.
"""

import argparse
import datetime
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

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


def seed_pool(sim, n_vms, registered, db_path, binary, env):
    uuids = []
    for i in range(n_vms):
        u = str(uuid.UUID(int=(0xBE7C << 112) + i))
        platform_map = {"viridian": "true"}
        if i < registered:
            platform_map["device-model-args"] = (
                "-device vgpu-cuda,addr=5,pool_id=%s,priority=high,vm_id=%d" % ("AB"[i % 2], i + 1)
            )
        sim.add_vm(uuid=u, name_label="bench-%05d" % i, power_state="Running" if i % 3 else "Halted",
                   platform=platform_map)
        uuids.append(u)
    # The first registration creates the registry (reads create nothing); the rest go straight
    # into SQLite, which is quicker than one command each.
    subprocess.check_call([binary, "register-vm", "--vm-uuid", uuids[0], "--pool", "A", "--priority", "high",
                           "--vm-id", "1"], env=env, stdout=subprocess.DEVNULL)
    db = sqlite3.connect(db_path)
    db.executemany(
        "INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (?, ?, ?, ?, 2)",
        [(i + 1, uuids[i], "bench-%05d" % i, "AB"[i % 2]) for i in range(1, registered)],
    )
    db.commit()
    db.close()
    return uuids


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
            doc = __import__("json").loads(out)
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
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--pool-hosts", type=int, default=16)
    ap.add_argument("--pool-vms", type=int, default=2000)
    ap.add_argument("--plugin-runs", type=int, default=11)
    ap.add_argument("--forwarded-runs", type=int, default=5)
    ap.add_argument("--reference-sizes", default="1000")
    opts = ap.parse_args()

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

    rows = []
    for n in [int(s) for s in opts.sizes.split(",")]:
        work = tempfile.mkdtemp(prefix="vgpu-bench-")
        with Simulator(workdir=work) as sim:
            db_path = os.path.join(work, "bench.db")
            env = dict(os.environ, VGPU_XAPI=sim.url, VGPU_DB=db_path,
                       VGPU_CONFIG=os.path.join(work, "none.conf"))
            uuids = seed_pool(sim, n, n // 2, db_path, opts.binary, env)
            total = n + 10

            t0 = time.perf_counter()
            for _ in range(opts.runs):
                sim.call("VM.get_all_records_where", sim.login(),
                         '(field "is_a_template"="false") and (field "is_control_domain"="false") '
                         'and (field "is_a_snapshot"="false")')
            sim_share = (time.perf_counter() - t0) / opts.runs

            t, rss = measure(opts.binary, ["scan-vms", "--format", "json"], env, opts.runs)
            rows.append(("scan-vms --format json", total, n // 2, t, rss, sim_share))
            t, rss = measure(opts.binary, ["scan-vms"], env, opts.runs)
            rows.append(("scan-vms (table)", total, n // 2, t, rss, sim_share))
            t, rss = measure(opts.binary, ["list-vms", "--format", "json"], env, opts.runs)
            rows.append(("list-vms --format json", total, n // 2, t, rss, None))
            t, rss = measure(opts.binary, ["status", "--format", "json"], env, opts.runs)
            rows.append(("status --format json", total, n // 2, t, rss, sim_share))
            # Registration with an automatic id next to n/2 taken ids (one after another).
            times = []
            rss_max = 0.0
            for k in range(opts.runs):
                t, rss = measure(opts.binary, ["register-vm", "--vm-uuid", uuids[n // 2 + k],
                                               "--pool", "A", "--priority", "low"], env, 1)
                times.append(t)
                rss_max = max(rss_max, rss)
            rows.append(("register-vm (auto id)", total, n // 2, statistics.median(times), rss_max, None))

    header = "| command | VMs in pool | registered | median wall time | peak RSS | simulator's share |\n" \
             "|---|---|---|---|---|---|\n"
    lines = []
    for name, total, reg, t, rss, share in rows:
        lines.append("| `%s` | %d | %d | %.1f ms | %.1f MiB | %s |" % (
            name, total, reg, t * 1000, rss, "%.1f ms" % (share * 1000) if share else "-"))
    table = header + "\n".join(lines) + "\n"
    print(table)

    doc = (
        "# Benchmarks\n\n"
        "Made by `make bench` (`tests/bench/bench.py`): the release `vgpu-admin` against the bundled "
        "XAPI simulator over its unix socket, on %s, %d CPU cores, Python %s. Median of %d runs; "
        "peak RSS of the vgpu-admin process. \"Simulator's share\" is the time the simulator alone "
        "takes to answer the scan's one `VM.get_all_records_where` call to a Python client: it is "
        "part of the wall time and is not the product's cost.\n\n%s"
        % (platform.machine(), os.cpu_count() or 0, platform.python_version(), opts.runs, table)
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

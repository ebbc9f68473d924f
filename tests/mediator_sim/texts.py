"""The answer texts, laid out as the mediator lays them out.

The mediator has no GPU work here, so its counters are made up, but predictably: for a VM with
vm_id N, jobs = 10·N, errors = N mod 3, rejected = N mod 2, latency p50/p95/p99 = 100+N / 200+N /
300+N µs, average execution time = 50+N µs. The totals are the sums over the VMs it loaded;
context switches = 3 per loaded VM; GPU resets = 0.
"""

NVML_MISSING = "NVML: not available (GPU monitoring disabled)"
NO_CONNECTIONS = "No active connections."


def vm_stats(vm_id):
    return {
        "jobs": 10 * vm_id,
        "errors": vm_id % 3,
        "rejected": vm_id % 2,
        "p50": 100 + vm_id,
        "p95": 200 + vm_id,
        "p99": 300 + vm_id,
        "avg_exec": 50 + vm_id,
    }


def totals(vm_ids):
    stats = [vm_stats(v) for v in vm_ids]
    return {
        "jobs": sum(s["jobs"] for s in stats),
        "errors": sum(s["errors"] for s in stats),
        "rejected": sum(s["rejected"] for s in stats),
        "context_switches": 3 * len(stats),
        "gpu_resets": 0,
    }


def summary(vm_ids, uptime_s):
    t = totals(vm_ids)
    lines = [
        "=== vGPU Mediator Metrics ===",
        "Uptime: %d s" % uptime_s,
        "Total jobs: %d" % t["jobs"],
        "Total errors: %d" % t["errors"],
        "Total rejected: %d" % t["rejected"],
        "Context switches: %d" % t["context_switches"],
        "GPU resets: %d" % t["gpu_resets"],
    ]
    for vm_id in vm_ids:
        s = vm_stats(vm_id)
        lines += [
            "",
            "--- VM %d ---" % vm_id,
            "  Jobs: %d  Errors: %d  Rejected: %d" % (s["jobs"], s["errors"], s["rejected"]),
            "  Latency (us): p50=%d  p95=%d  p99=%d" % (s["p50"], s["p95"], s["p99"]),
            "  Avg exec time: %d us" % s["avg_exec"],
        ]
    return "\n".join(lines) + "\n"


# (name, type, help, key in totals())
GLOBAL_METRICS = [
    ("vgpu_jobs_total", "counter", "Total GPU jobs processed", "jobs"),
    ("vgpu_errors_total", "counter", "Total GPU job errors", "errors"),
    ("vgpu_rejected_total", "counter", "Total GPU jobs rejected", "rejected"),
    ("vgpu_context_switches_total", "counter", "Total GPU context switches", "context_switches"),
    ("vgpu_gpu_resets_total", "counter", "Total GPU resets", "gpu_resets"),
]
# (name, type, help, key in vm_stats())
VM_METRICS = [
    ("vgpu_vm_jobs_total", "counter", "GPU jobs processed per VM", "jobs"),
    ("vgpu_vm_latency_p95_us", "gauge", "95th percentile job latency per VM in microseconds", "p95"),
    ("vgpu_vm_latency_p99_us", "gauge", "99th percentile job latency per VM in microseconds", "p99"),
]


def prometheus(vm_ids):
    t = totals(vm_ids)
    lines = []
    for name, kind, help_text, key in GLOBAL_METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind),
                  "%s %d" % (name, t[key])]
    for name, kind, help_text, key in VM_METRICS:
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind)]
        lines += ['%s{vm_id="%d"} %d' % (name, vm_id, vm_stats(vm_id)[key]) for vm_id in vm_ids]
    return "\n".join(lines) + "\n"


def health(vm_ids):
    return "\n".join([
        NVML_MISSING,
        "",
        "=== Watchdog ===",
        "GPU Resets: %d" % totals(vm_ids)["gpu_resets"],
        "Scheduler Queue: 0",
        "Context Switches: %d" % totals(vm_ids)["context_switches"],
    ]) + "\n"


def connections(admin_socket):
    return "\n".join([
        "=== Active VM Connections ===",
        "Total tracked: 0",
        "Active: 0",
        NO_CONNECTIONS,
        "",
        "=== Server Sockets ===",
        "Admin: %s" % admin_socket,
    ]) + "\n"


def reloaded(count):
    return "Config reloaded: %d VM(s) updated\n" % count


def unknown_command(command):
    return "ERROR: Unknown admin command 0x%02x" % command

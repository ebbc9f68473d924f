"""Tables for people fit the terminal: each command runs with its stdout on a pseudo-terminal 80
and 120 columns wide, over a pool with long names, drift, a VM without its device and a stale
registration. No line is wider than the terminal or ends in a space; every uuid is there whole
(people copy them); drift details and errors are there, on lines of their own. Off a terminal,
`COLUMNS` sets the width, and without it nothing is cut."""

import errno
import fcntl
import json
import os
import select
import struct
import subprocess
import termios
import time
import unicodedata

import pytest

from conftest import (
    CUDA_DEV, DMA, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, REAL_VMS, RENDER_01, RENDER_02, TWIN_RUNNING,
    WEB_01, Result, device_line,
)

# Names longer than an 80-column table leaves them, short enough for 120.
LONG = "render node of the visual effects team, second floor, rack 4"
LONG_STALE = "an old training VM that somebody deleted without removing it"
LONG_UNREGISTERED = "a freshly imported appliance whose name-label is long"
WIDE = "渲染节点 第一台 图形工作站"  # two columns a character
UNBROKEN = "w" * 150  # no space to break at
# A device-model-args line longer than any terminal here (show-vm wraps it).
LONG_DMA = device_line("A", "high", 1) + " " + " ".join(
    "-global PIIX4_PM.disable_s%d=1" % i for i in range(3, 7)) + " -rtc base=localtime,clock=host"


def display_width(line):
    """Columns a terminal gives `line`: two for wide East Asian characters, none for combining
    marks, one for everything else (✓, ⚠ and … included)."""
    width = 0
    for ch in line:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def in_terminal(cli, columns, *args, **kw):
    """vgpu-admin with stdout on a pseudo-terminal `columns` wide (stderr a pipe, stdin empty),
    output read until it exits. `env` entries override (None removes); COLUMNS and LINES are
    removed unless given."""
    env = dict(cli.env)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    for k, v in (kw.pop("env", None) or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    assert not kw, kw
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # lines as written: no "\r\n" for "\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        p = subprocess.Popen([cli.binary] + [str(a) for a in args], env=env,
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    finally:
        os.close(slave)
    chunks = []
    deadline = time.time() + 120
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.time()))
            if not ready:
                p.kill()
                raise AssertionError("vgpu-admin %s: no end of output in 120 s" % (args,))
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:  # every writer has closed the terminal
                    break
                raise
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    err = p.stderr.read()
    p.stderr.close()
    p.wait(timeout=60)
    return Result(p.returncode, b"".join(chunks).decode("utf-8"), err.decode("utf-8"))


def check_fits(out, columns, uuids=(), lines=(), what=""):
    """Every line at most `columns` wide and without trailing spaces; each uuid whole; each of
    `lines` on a line of its own (leading spaces aside)."""
    assert out.endswith("\n") and "\r" not in out and "\t" not in out, (what, out)
    for line in out.split("\n"):
        assert display_width(line) <= columns, "%s: %d columns > %d:\n%s\n\n%s" % (
            what, display_width(line), columns, line, out)
        assert not line.endswith(" "), "%s: trailing space:\n%r\n\n%s" % (what, line, out)
    for u in uuids:
        assert u in out, "%s: uuid %s not whole:\n%s" % (what, u, out)
    stripped = [l.strip() for l in out.split("\n")]
    for l in lines:
        assert l in stripped, "%s: no line %r:\n%s" % (what, l, out)


@pytest.fixture
def crowded(cli, sim):
    """The sample pool with long names, drift, a missing device and a stale registration."""
    sim.set_vm(RENDER_01, name_label=LONG)
    sim.set_vm(ML_TRAIN_B, name_label=LONG_STALE)
    sim.set_vm(ML_TRAIN_A, name_label=LONG_UNREGISTERED)
    sim.set_vm(TWIN_RUNNING, name_label=WIDE)
    sim.set_vm(WEB_01, name_label=UNBROKEN)
    cli.register(RENDER_01, "A", "high", 1)      # configured, long name
    cli.register(RENDER_02, "A", "medium", 2)    # drift in three fields
    cli.register(CUDA_DEV, "A", "low", 3)        # configured, long device-model-args
    cli.register(LEGACY_STUB, "B", "high", 4)    # not applied
    cli.register(ML_TRAIN_B, "B", "low", 5)      # stale
    cli.register(TWIN_RUNNING, "B", "medium", 6)  # wide characters
    sim.set_platform_key(RENDER_02, DMA, device_line("B", "low", 20))
    sim.set_platform_key(CUDA_DEV, DMA, LONG_DMA.replace("priority=high,vm_id=1", "priority=low,vm_id=3"))
    sim.set_platform_key(LEGACY_STUB, DMA, None)
    sim.destroy_vm(ML_TRAIN_B)
    return cli


REGISTERED = [RENDER_01, RENDER_02, CUDA_DEV, LEGACY_STUB, TWIN_RUNNING]
DRIFT_LINES = ["pool: registry A / device B", "priority: registry medium / device low",
               "vm_id: registry 2 / device 20"]


@pytest.mark.parametrize("columns", [80, 120])
def test_every_read_command_fits_the_terminal(crowded, columns):
    cli = crowded

    def check(*args, **kw):
        r = in_terminal(cli, columns, *args)
        assert r.code == 0 and r.err == "", (args, r)
        check_fits(r.out, columns, what=" ".join(args), **kw)
        return r.out

    out = check("scan-vms", uuids=REGISTERED + [ML_TRAIN_B, ML_TRAIN_A, WEB_01], lines=DRIFT_LINES)
    assert "=== Registered VMs (5) ===" in out and "=== Stale registrations (1) ===" in out
    assert "⚠ drift" in out and "⚠ not_applied" in out and out.count("✓ configured") == 3
    check("list-vms", uuids=REGISTERED + [ML_TRAIN_B])
    check("list-pools")
    check("show-pool", "--pool", "A", uuids=[RENDER_01, RENDER_02, CUDA_DEV])
    check("show-pool", "--pool", "B", uuids=[LEGACY_STUB, ML_TRAIN_B, TWIN_RUNNING])
    out = check("status", uuids=[RENDER_02, LEGACY_STUB, ML_TRAIN_B, ML_TRAIN_A, WEB_01])
    assert "=== Pools ===" in out
    out = check("show-vm", "--vm-uuid", RENDER_02, uuids=[RENDER_02])
    for d in DRIFT_LINES:
        assert any(l.startswith("Drift:") and l.endswith(d) for l in out.splitlines()), (d, out)
    check("show-vm", "--vm-uuid", RENDER_01, uuids=[RENDER_01], lines=["Name:" + " " * 15 + LONG])
    out = check("show-vm", "--vm-uuid", CUDA_DEV, uuids=[CUDA_DEV])
    # device-model-args wraps: all of it is there, in order.
    tail = out.split("device-model-args:", 1)[1].split("Status:", 1)[0]
    wanted = LONG_DMA.replace("priority=high,vm_id=1", "priority=low,vm_id=3")
    assert "".join(tail.split()) == "".join(wanted.split()), out
    check("show-vm", "--vm-uuid", ML_TRAIN_B, uuids=[ML_TRAIN_B])
    check("show-vm", "--vm-name", WIDE, uuids=[TWIN_RUNNING])
    out = check("sync", "--all", "--dry-run", uuids=REGISTERED + [ML_TRAIN_B])
    assert "would apply" in out and "Dry run: nothing was changed." in out
    out = check("functions")
    assert "ARGUMENTS" in out and "register-vm" in out


@pytest.mark.parametrize("columns", [80, 120])
def test_sync_fits_the_terminal_with_its_errors_under_their_vm(crowded, sim, columns):
    sim.inject_fault("VM.set_platform", code="INTERNAL_ERROR",
                     params=["the host refused the change: " + "very " * 12 + "long reason"])
    r = in_terminal(crowded, columns, "sync", "--all")
    assert r.code == 1, r
    check_fits(r.out, columns, uuids=REGISTERED + [ML_TRAIN_B], what="sync --all")
    assert "⚠ failed" in r.out and "⚠ 1 VM(s) failed" in r.out
    lines = r.out.splitlines()
    failed = [i for i, l in enumerate(lines) if "⚠ failed" in l][0]
    # Under the failed VM's row (after its uuid, when that has a line of its own): the error.
    error = [l for l in lines[failed + 1:failed + 4] if l.startswith("    ⚠ ")]
    assert error and "host refused" in r.out and "long reason" in r.out, r.out


@pytest.mark.parametrize("columns", [80, 120])
def test_one_line_results_fit_the_terminal(cli, sim, columns):
    sim.set_vm(RENDER_01, name_label=LONG)
    sim.set_platform_key(RENDER_01, DMA, LONG_DMA.replace("vm_id=1", "vm_id=9") + " -name x")
    steps = [
        ("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high", "--vm-id", "7"),
        ("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"),
        ("set-priority", "--vm-uuid", RENDER_01, "--priority", "low"),
        ("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "8"),
        ("update-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "medium", "--vm-id", "9"),
        ("remove-vm", "--vm-uuid", RENDER_01),
    ]
    for args in steps:
        r = in_terminal(cli, columns, *args)
        assert r.code == 0, (args, r)
        check_fits(r.out, columns, uuids=[RENDER_01], what=" ".join(args))
        assert r.out.startswith("✓ "), r.out
        assert "takes effect at its next start" in " ".join(r.out.split()), r.out  # running VM
    assert cli.run_json("list-vms") == []


def test_a_name_cut_at_80_columns_is_whole_at_120(crowded):
    narrow = in_terminal(crowded, 80, "list-vms")
    wide = in_terminal(crowded, 120, "list-vms")
    check_fits(narrow.out, 80, uuids=REGISTERED)
    check_fits(wide.out, 120, uuids=REGISTERED)
    assert LONG not in narrow.out and LONG[:20] in narrow.out and "…" in narrow.out, narrow.out
    assert LONG in wide.out, wide.out
    for cmd in (("scan-vms",), ("sync", "--all", "--dry-run")):
        assert LONG in in_terminal(crowded, 120, *cmd).out, cmd


def test_rows_fitting_whole_keep_the_uuid_in_the_row(cli, sim):
    """Short names: one line per VM, uuid first, at 80 columns as off a terminal."""
    cli.register(CUDA_DEV, "A", "high", 1)
    r = in_terminal(cli, 80, "scan-vms")
    check_fits(r.out, 80)
    rows = [l for l in r.out.splitlines() if "not registered" in l]
    assert sorted(l.split()[0] for l in rows) == sorted(set(REAL_VMS) - {CUDA_DEV}), r.out
    assert any(l.startswith(WEB_01 + "  web 01  ") for l in rows), r.out


def test_the_terminal_width_wins_over_columns(crowded):
    r = in_terminal(crowded, 80, "scan-vms", env={"COLUMNS": "200"})
    check_fits(r.out, 80, uuids=REGISTERED, lines=DRIFT_LINES)
    assert LONG not in r.out


def test_off_a_terminal_columns_sets_the_width_else_nothing_is_cut(crowded):
    cli = crowded
    r = cli.ok("scan-vms", env={"COLUMNS": "80"})
    check_fits(r.out, 80, uuids=REGISTERED + [ML_TRAIN_B], lines=DRIFT_LINES)
    assert LONG not in r.out
    for args in (("scan-vms",), ("list-vms",), ("sync", "--all", "--dry-run")):
        r = cli.ok(*args, env={"COLUMNS": None})
        # One line per VM, its uuid and whole name on it; no trailing spaces.
        assert any(RENDER_01 in l and LONG in l for l in r.out.splitlines()), (args, r.out)
        assert not any(l.endswith(" ") for l in r.out.splitlines()), (args, r.out)
        assert "…" not in r.out, (args, r.out)
    r = cli.ok("show-vm", "--vm-uuid", CUDA_DEV, env={"COLUMNS": None})
    assert LONG_DMA.replace("priority=high,vm_id=1", "priority=low,vm_id=3") in r.out


def test_json_is_the_same_on_a_terminal(crowded):
    for args in (("scan-vms",), ("show-vm", "--vm-uuid", CUDA_DEV), ("functions",)):
        piped = crowded.ok(*(args + ("--format", "json")), env={"COLUMNS": None}).out
        r = in_terminal(crowded, 80, *(args + ("--format", "json")))
        assert r.code == 0 and r.out == piped, (args, r)
        json.loads(r.out)

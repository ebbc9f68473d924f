"""The soak (soak.py) run short, plus the races it found, reproduced one at a time.

The short run's verdict is soak.py's own end-state check (exit status and JSON summary); what is
asserted here is the invariants, never a time. The race tests hold a caller between its look-up of the
registration and its write while a remove commits (both through delayed XAPI answers): that
caller must get the documented conflict, not a second success or an internal error.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(HERE)
REPO_DIR = os.path.dirname(TESTS_DIR)
SOAK = os.path.join(HERE, "soak.py")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapi_sim.harness import Simulator  # noqa: E402


def admin():
    path = os.path.abspath(os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin"))
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: build it with `cargo build -p vgpu-admin` (or set VGPU_ADMIN_BIN)" % path)
    return path


def run_soak(tmp_path, *args, timeout=900):
    out = str(tmp_path / "summary.json")
    env = dict(os.environ, VGPU_ADMIN_BIN=admin())
    proc = subprocess.run([sys.executable, SOAK, "--json", out] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, timeout=timeout)
    text = proc.stdout.decode("utf-8", "replace")
    assert os.path.exists(out), text[-4000:]
    with open(out) as f:
        return proc.returncode, json.load(f), text


def test_short_soak_loses_nothing_and_fails_only_with_conflicts(tmp_path):
    code, s, text = run_soak(tmp_path, "--seconds", "25", "--seed", "12")
    print(text)
    assert code == 0 and s["ok"] and s["violations"] == [], text[-4000:]
    # Every front end both read and wrote, and the races ran.
    for kind in ("cli read", "cli write", "plugin read", "plugin write"):
        assert s["by_kind"][kind]["ops"] > 0, kind
    assert s["acknowledged_writes"] > 0
    assert s["contention"]["races"] > 0
    assert s["latency_waves"] > 0
    # Only conflict codes, all of them documented.
    assert set(s["conflict_codes"]) <= set(s["documented_codes"])
    assert set(s["failures_by_code"]) <= set(s["conflict_codes"]), s["failures_by_code"]
    assert s["database_is_locked"] == 0
    f = s["final"]
    assert f["lost"] == [] and f["unexpected"] == [] and f["wrong_values"] == [] and f["duplicate_vm_ids"] == []
    assert f["uncertain"] == [] and f["replicas_behind"] == []
    assert f["mirror_mismatches"] == 0 and f["dma_mismatches"] == 0
    assert f["scan"]["drift"] == 0 and f["scan"]["not_applied"] == 0 and f["scan"]["stale"] == 0
    assert f["scan"]["registered"] == f["registered"] <= s["peak_registry"]["rows"]


def test_the_soak_reports_a_lost_registration(tmp_path):
    """The end-state check can fail: one acknowledged row deleted behind the registry's back."""
    code, s, text = run_soak(tmp_path, "--seconds", "6", "--seed", "3", "--contended-vms", "0",
                             "--cli-readers", "0", "--plugin-readers", "0", "--defect", "lose-row")
    assert code == 1 and not s["ok"], text[-4000:]
    assert len(s["final"]["lost"]) == 1, s["final"]
    assert any(v["what"] == "registry: lost" for v in s["violations"])


# ------------------------------------------------------------------------------------------------
# The races, one at a time


@pytest.fixture
def sim(tmp_path):
    with Simulator(workdir=str(tmp_path / "sim")) as s:
        yield s


def cli(sim, db, *args):
    env = {"PATH": os.environ.get("PATH", ""), "VGPU_XAPI": sim.url, "VGPU_DB": db,
           "VGPU_CONFIG": db + ".absent.conf"}
    proc = subprocess.run([admin(), "--format", "json"] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def error_code(stderr):
    for line in stderr.splitlines():
        try:
            return json.loads(line)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            continue
    return None


def wait_for_call(sim, method, deadline_s=60):
    deadline = time.time() + deadline_s
    while not sim.call_log(method) and time.time() < deadline:
        time.sleep(0.02)
    assert sim.call_log(method), "no %s reached the simulator" % method


def race(sim, db, looker, remover):
    """``looker`` is held in its VM lookup (VM.get_record delayed) until ``remover`` holds the
    write lock (its VM.set_platform delayed): ``looker`` then reads the registration
    before the remove commits and writes after it. Both outcomes, (``looker``, ``remover``)."""
    sim.inject_fault("VM.get_record", nth=1, times=1, latency_ms=3000)
    sim.inject_fault("VM.set_platform", nth=1, times=1, latency_ms=3000)
    sim.clear_call_log()
    out = {}
    t = threading.Thread(target=lambda: out.__setitem__("looker", cli(sim, db, *looker)))
    t.start()
    wait_for_call(sim, "VM.get_record")
    out["remover"] = cli(sim, db, *remover)
    t.join(120)
    return out["looker"], out["remover"]


def test_two_removes_of_one_vm_one_wins_the_other_is_not_registered(sim, tmp_path):
    db = str(tmp_path / "registry.db")
    vm = sim.vm_uuid("render-01")
    assert cli(sim, db, "register-vm", "--vm-uuid", vm, "--pool", "A", "--priority", "high")[0] == 0
    second, first = race(sim, db, ["remove-vm", "--vm-uuid", vm], ["remove-vm", "--vm-uuid", vm])
    assert first[0] == 0 and json.loads(first[1])["removed"] is True, first
    assert second[0] == 1 and error_code(second[2]) == "NOT_REGISTERED", second
    assert cli(sim, db, "list-vms")[1].strip() == "[]"


def test_a_control_change_racing_a_remove_is_not_registered(sim, tmp_path):
    db = str(tmp_path / "registry.db")
    vm = sim.vm_uuid("render-01")
    assert cli(sim, db, "register-vm", "--vm-uuid", vm, "--pool", "A", "--priority", "high")[0] == 0
    second, first = race(sim, db, ["set-weight", "--vm-uuid", vm, "--weight", "7"], ["remove-vm", "--vm-uuid", vm])
    assert first[0] == 0, first
    assert second[0] == 1 and error_code(second[2]) == "NOT_REGISTERED", second
    assert "vanished" not in second[2]
    assert cli(sim, db, "list-vms")[1].strip() == "[]"

"""The mediator stand-in's own tests: framing, every command, bad requests, modes, and what a reload
reads from the database.

Run: python -m pytest tests/mediator_sim -q
"""

import json
import os
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

from mediator_sim import Dropped, Mediator, ask, exchange
from mediator_sim import protocol as p

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAGIC_BYTES = b"\x55\x50\x47\x56"

# The vms table of the mediator's later design, without constraints so that odd values fit.
VMS_WITH_CONTROLS = """
CREATE TABLE vms (
    vm_id INTEGER NOT NULL UNIQUE, vm_uuid TEXT UNIQUE NOT NULL, vm_name TEXT,
    pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL,
    created_at TIMESTAMP, updated_at TIMESTAMP,
    weight INTEGER NOT NULL DEFAULT 50, max_jobs_per_sec INTEGER NOT NULL DEFAULT 0,
    max_queue_depth INTEGER NOT NULL DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0)
"""
# The first design: no control columns at all.
VMS_FIRST_DESIGN = """
CREATE TABLE vms (
    vm_id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT UNIQUE NOT NULL, vm_name TEXT,
    pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL,
    created_at TIMESTAMP, updated_at TIMESTAMP)
"""


def make_db(path, rows=(), schema=VMS_WITH_CONTROLS):
    """rows: dicts with vm_id, pool_id, priority and any control columns."""
    conn = sqlite3.connect(str(path))
    conn.executescript(schema)
    for i, row in enumerate(rows):
        row = dict(row)
        row.setdefault("vm_uuid", "uuid-%d-%d" % (i, row["vm_id"]))
        cols = sorted(row)
        conn.execute("INSERT INTO vms (%s) VALUES (%s)" % (", ".join(cols), ", ".join("?" * len(cols))),
                     [row[c] for c in cols])
    conn.commit()
    conn.close()
    return str(path)


def vm(vm_id, pool="A", priority=1, **controls):
    row = {"vm_id": vm_id, "pool_id": pool, "priority": priority}
    row.update(controls)
    return row


@pytest.fixture
def paths(tmp_path):
    class Paths(object):
        socket = str(tmp_path / "admin.sock")
        db = str(tmp_path / "vgpu_config.db")
        record = str(tmp_path / "record.jsonl")
    return Paths


def raw_header(data):
    assert len(data) >= 12, data
    return struct.unpack("<III", data[:12])


# ---------------------------------------------------------------------------------- framing

def test_an_answer_is_a_little_endian_header_and_exactly_its_text(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db):
        data = exchange(paths.socket, MAGIC_BYTES + b"\x11\0\0\0" + b"\0" * 8)
    assert data[:4] == MAGIC_BYTES
    magic, status, data_len = raw_header(data)
    assert (magic, status) == (0x56475055, 0)
    assert data_len == len(data) - 12
    assert data[12:].decode("utf-8").startswith("NVML: not available")
    assert not data.endswith(b"\0")


def test_one_request_per_connection(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db) as m:
        two = p.encode_request(p.SHOW_HEALTH) + p.encode_request(p.RELOAD_CONFIG)
        data = exchange(paths.socket, two)
        status, text = p.decode_answer(data)
        assert status == 0 and "=== Watchdog ===" in text
        assert [r.command for r in m.requests] == [p.SHOW_HEALTH]
        assert m.reloads() == []


def test_requests_are_served_one_at_a_time(paths):
    make_db(paths.db, [vm(1)])
    delay = 0.4
    with Mediator(paths.socket, paths.db, mode="slow", delay=delay):
        finished = []

        def one():
            ask(paths.socket, p.SHOW_HEALTH, timeout=10)
            finished.append(time.monotonic())

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(finished) == 2
    assert max(finished) - started >= 2 * delay


# ---------------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("raw", [b"", MAGIC_BYTES, MAGIC_BYTES + b"\x11\0\0\0" + b"\0" * 7],
                         ids=["empty", "magic-only", "15-bytes"])
def test_a_short_request_is_closed_without_an_answer(paths, raw):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db) as m:
        assert exchange(paths.socket, raw) == b""
        assert [r.outcome for r in m.requests] == ["dropped-short"]
        assert m.requests[0].command is None
        assert m.requests[0].raw == raw
        # Still serving.
        assert ask(paths.socket, p.SHOW_HEALTH)[0] == 0


def test_a_short_request_is_dropped_while_the_client_waits(paths):
    # The mediator reads once: it does not wait for the rest of a request.
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db) as m:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(3)
        conn.connect(paths.socket)
        conn.sendall(MAGIC_BYTES + b"\x11\0")
        started = time.monotonic()
        assert conn.recv(100) == b""
        assert time.monotonic() - started < 2
        conn.close()
        assert [r.outcome for r in m.requests] == ["dropped-short"]


@pytest.mark.parametrize("magic", [0, 0x55504756, 0x56475056])
def test_a_wrong_magic_is_closed_without_an_answer(paths, magic):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db) as m:
        assert exchange(paths.socket, p.encode_request(p.RELOAD_CONFIG, magic=magic)) == b""
        assert [(r.command, r.outcome) for r in m.requests] == [(p.RELOAD_CONFIG, "dropped-magic")]
        # Not reloaded: the start's rate limits only.
        assert m.reloads() == []
        assert m.loaded == {1: {"max_jobs_per_sec": 0, "max_queue_depth": 0}}


@pytest.mark.parametrize("code, shown", [(0x13, "0x13"), (0x14, "0x14"), (0x00, "0x00"), (0x16, "0x16"),
                                         (0x0F, "0x0f"), (0x1234, "0x1234"), (0xFFFFFFFF, "0xffffffff")])
def test_unknown_commands_get_status_1(paths, code, shown):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db) as m:
        assert ask(paths.socket, code) == (1, "ERROR: Unknown admin command " + shown)
        assert [(r.command, r.outcome, r.status) for r in m.requests] == [(code, "answered", 1)]


# ---------------------------------------------------------------------------------- commands

THREE_VMS = [vm(2, "B", 0), vm(7, "A", 2), vm(4, "A", 1)]  # loaded as 7, 4, 2


def test_summary_metrics(paths):
    make_db(paths.db, THREE_VMS)
    with Mediator(paths.socket, paths.db):
        status, text = ask(paths.socket, p.SHOW_METRICS, 0)
    assert status == 0
    lines = text.split("\n")
    assert lines[0] == "=== vGPU Mediator Metrics ==="
    assert lines[1].startswith("Uptime: ") and lines[1].endswith(" s")
    assert lines[2:7] == ["Total jobs: 130", "Total errors: 4", "Total rejected: 1", "Context switches: 9",
                          "GPU resets: 0"]
    assert text.endswith("\n")
    assert "--- VM 7 ---\n  Jobs: 70  Errors: 1  Rejected: 1\n  Latency (us): p50=107  p95=207  p99=307\n" \
           "  Avg exec time: 57 us\n" in text
    assert "--- VM 4 ---\n  Jobs: 40  Errors: 1  Rejected: 0\n" in text
    assert "--- VM 2 ---\n  Jobs: 20  Errors: 2  Rejected: 0\n" in text
    assert text.index("--- VM 7 ---") < text.index("--- VM 4 ---") < text.index("--- VM 2 ---")


def test_summary_metrics_with_no_vms(paths):
    make_db(paths.db, [])
    with Mediator(paths.socket, paths.db):
        status, text = ask(paths.socket, p.SHOW_METRICS, 0)
    assert status == 0
    assert "Total jobs: 0\n" in text and "--- VM" not in text


def test_prometheus_metrics(paths):
    make_db(paths.db, THREE_VMS)
    with Mediator(paths.socket, paths.db):
        status, text = ask(paths.socket, p.SHOW_METRICS, 1)
    assert status == 0
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples == [
        "vgpu_jobs_total 130",
        "vgpu_errors_total 4",
        "vgpu_rejected_total 1",
        "vgpu_context_switches_total 9",
        "vgpu_gpu_resets_total 0",
        'vgpu_vm_jobs_total{vm_id="7"} 70',
        'vgpu_vm_jobs_total{vm_id="4"} 40',
        'vgpu_vm_jobs_total{vm_id="2"} 20',
        'vgpu_vm_latency_p95_us{vm_id="7"} 207',
        'vgpu_vm_latency_p95_us{vm_id="4"} 204',
        'vgpu_vm_latency_p95_us{vm_id="2"} 202',
        'vgpu_vm_latency_p99_us{vm_id="7"} 307',
        'vgpu_vm_latency_p99_us{vm_id="4"} 304',
        'vgpu_vm_latency_p99_us{vm_id="2"} 302',
    ]
    for name in ["vgpu_jobs_total", "vgpu_errors_total", "vgpu_rejected_total", "vgpu_context_switches_total",
                 "vgpu_gpu_resets_total", "vgpu_vm_jobs_total", "vgpu_vm_latency_p95_us",
                 "vgpu_vm_latency_p99_us"]:
        assert text.count("# HELP %s " % name) == 1, name
        kind = "gauge" if "latency" in name else "counter"
        assert "# TYPE %s %s\n" % (name, kind) in text


def test_metrics_param1_other_than_1_is_the_summary(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db):
        assert ask(paths.socket, p.SHOW_METRICS, 2)[1].startswith("=== vGPU Mediator Metrics ===\n")


def test_health(paths):
    make_db(paths.db, THREE_VMS)
    with Mediator(paths.socket, paths.db):
        status, text = ask(paths.socket, p.SHOW_HEALTH)
    assert status == 0
    assert text == ("NVML: not available (GPU monitoring disabled)\n\n=== Watchdog ===\n"
                    "GPU Resets: 0\nScheduler Queue: 0\nContext Switches: 9\n")


def test_connections(paths):
    make_db(paths.db, THREE_VMS)
    with Mediator(paths.socket, paths.db):
        status, text = ask(paths.socket, p.SHOW_CONNECTIONS)
    assert status == 0
    assert text.startswith("=== Active VM Connections ===\nTotal tracked: 0\nActive: 0\n"
                           "No active connections.\n\n=== Server Sockets ===\n")
    assert paths.socket in text


# ---------------------------------------------------------------------------------- reload

def test_start_loads_rate_limits_only_and_reload_adds_quarantine(paths):
    make_db(paths.db, [vm(5, max_jobs_per_sec=10, max_queue_depth=3, quarantined=1, error_count=4, weight=80)])
    with Mediator(paths.socket, paths.db, record=paths.record) as m:
        assert m.loaded == {5: {"max_jobs_per_sec": 10, "max_queue_depth": 3}}
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 1 VM(s) updated\n")
        assert m.loaded == {5: {"weight": 80, "max_jobs_per_sec": 10, "max_queue_depth": 3,
                                "quarantined": True, "error_count": 4}}
    events = [json.loads(line) for line in open(paths.record)]
    assert [(e["event"], e.get("outcome")) for e in events] == [
        ("start", None), ("reload", None), ("request", "answered")]
    assert events[0]["ok"] is True
    assert events[0]["vms"] == {"5": {"max_jobs_per_sec": 10, "max_queue_depth": 3}}
    assert events[1]["vms"] == {"5": {"weight": 80, "max_jobs_per_sec": 10, "max_queue_depth": 3,
                                      "quarantined": True, "error_count": 4}}
    assert events[1]["order"] == [5]
    assert events[2]["command"] == 0x12 and events[2]["status"] == 0


def test_reload_reads_by_vm_id_not_by_row(paths):
    # Rows inserted in an order unrelated to vm_id, so rowid and vm_id differ.
    make_db(paths.db, [vm(30, quarantined=1), vm(10, max_jobs_per_sec=5), vm(20, max_queue_depth=9)])
    with Mediator(paths.socket, paths.db) as m:
        ask(paths.socket, p.RELOAD_CONFIG)
        loaded = m.loaded
    assert list(loaded) == [10, 20, 30]
    assert loaded[30]["quarantined"] is True and loaded[30]["max_jobs_per_sec"] == 0
    assert loaded[10]["max_jobs_per_sec"] == 5 and loaded[10]["quarantined"] is False
    assert loaded[20]["max_queue_depth"] == 9


def test_reload_keeps_64_rows_by_pool_priority_then_vm_id(paths):
    rows = []
    for vm_id in range(1, 81):
        pool = "B" if vm_id % 2 else "A"
        rows.append(vm(vm_id, pool, vm_id % 3, max_jobs_per_sec=vm_id, quarantined=int(vm_id % 5 == 0)))
    make_db(paths.db, reversed(rows))
    expected_order = [r["vm_id"] for r in sorted(rows, key=lambda r: (r["pool_id"], -r["priority"], r["vm_id"]))]
    with Mediator(paths.socket, paths.db) as m:
        assert list(m.loaded) == expected_order[:64]
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 64 VM(s) updated\n")
        loaded = m.loaded
        assert m.reloads()[0]["order"] == expected_order[:64]
    assert list(loaded) == expected_order[:64]
    left_out = expected_order[64:]
    assert len(left_out) == 16
    assert all(vm_id not in loaded for vm_id in left_out)
    # Pool A (even ids) comes first, high priority first within it.
    assert expected_order[:3] == [2, 8, 14]
    assert loaded[80] == {"weight": 50, "max_jobs_per_sec": 80, "max_queue_depth": 0, "quarantined": True,
                          "error_count": 0}


def test_a_reload_replaces_what_was_loaded(paths):
    make_db(paths.db, [vm(1, quarantined=1), vm(2, quarantined=1)])
    with Mediator(paths.socket, paths.db) as m:
        ask(paths.socket, p.RELOAD_CONFIG)
        assert [v["quarantined"] for v in m.loaded.values()] == [True, True]
        conn = sqlite3.connect(paths.db)
        conn.execute("UPDATE vms SET quarantined = 0, error_count = 0 WHERE vm_id = 1")
        conn.execute("DELETE FROM vms WHERE vm_id = 2")
        conn.commit()
        conn.close()
        # Nothing changes until the next reload.
        assert m.loaded[1]["quarantined"] is True
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 1 VM(s) updated\n")
        assert m.loaded == {1: {"weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0, "quarantined": False,
                                "error_count": 0}}


def test_a_database_without_control_columns_fails_the_reload(paths):
    make_db(paths.db, [vm(1)], schema=VMS_FIRST_DESIGN)
    with Mediator(paths.socket, paths.db, record=paths.record) as m:
        assert m.loaded == {}
        assert ask(paths.socket, p.RELOAD_CONFIG) == (1, "ERROR: Failed to read VM configs from DB\n")
        assert m.loaded == {}
    events = [json.loads(line) for line in open(paths.record)]
    assert [(e["event"], e.get("ok")) for e in events] == [("start", False), ("reload", False), ("request", None)]
    assert events[1]["error"] == "ERROR: Failed to read VM configs from DB\n"
    assert "no such column" in events[1]["detail"]


def test_a_missing_column_fails_the_reload_and_keeps_the_old_config(paths):
    # Rate limits exist (the start loads them), quarantine does not.
    make_db(paths.db, [vm(1, max_jobs_per_sec=4)], schema=VMS_FIRST_DESIGN
            .replace("updated_at TIMESTAMP)", "updated_at TIMESTAMP, max_jobs_per_sec INTEGER DEFAULT 0, "
                     "max_queue_depth INTEGER DEFAULT 0, weight REAL DEFAULT 1.0)"))
    with Mediator(paths.socket, paths.db) as m:
        assert m.loaded == {1: {"max_jobs_per_sec": 4, "max_queue_depth": 0}}
        assert ask(paths.socket, p.RELOAD_CONFIG)[0] == 1
        assert m.loaded == {1: {"max_jobs_per_sec": 4, "max_queue_depth": 0}}


def test_no_database_is_not_connected_until_it_appears(paths):
    with Mediator(paths.socket, paths.db, record=paths.record) as m:
        assert not os.path.exists(paths.db)
        assert ask(paths.socket, p.RELOAD_CONFIG) == (1, "ERROR: Database not connected\n")
        assert not os.path.exists(paths.db)
        assert m.weight(1) is None
        make_db(paths.db, [vm(3, max_queue_depth=2)])
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 1 VM(s) updated\n")
        assert m.loaded[3]["max_queue_depth"] == 2
    events = [json.loads(line) for line in open(paths.record)]
    assert events[0]["error"] == "ERROR: Database not connected\n"


def test_create_db_makes_the_mediators_tables(paths):
    with Mediator(paths.socket, paths.db, create_db=True) as m:
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 0 VM(s) updated\n")
        assert m.loaded == {}
    conn = sqlite3.connect(paths.db)
    columns = {row[1]: (row[2], row[4]) for row in conn.execute("PRAGMA table_info(vms)")}
    pools = [row[0] for row in conn.execute("SELECT pool_id FROM pools ORDER BY pool_id")]
    conn.close()
    assert columns["weight"] == ("INTEGER", "50")
    assert columns["quarantined"] == ("INTEGER", "0")
    assert pools == ["A", "B"]


def test_the_connection_stays_open_so_a_renamed_in_file_is_not_seen(paths, tmp_path):
    make_db(paths.db, [vm(1, max_jobs_per_sec=1)])
    with Mediator(paths.socket, paths.db) as m:
        # Updated in place: seen.
        conn = sqlite3.connect(paths.db)
        conn.execute("UPDATE vms SET max_jobs_per_sec = 2")
        conn.commit()
        conn.close()
        ask(paths.socket, p.RELOAD_CONFIG)
        assert m.loaded[1]["max_jobs_per_sec"] == 2
        # Swapped in by rename: the mediator still reads the file it opened.
        other = make_db(tmp_path / "new.db", [vm(1, max_jobs_per_sec=3)])
        os.rename(other, paths.db)
        ask(paths.socket, p.RELOAD_CONFIG)
        assert m.loaded[1]["max_jobs_per_sec"] == 2


def test_values_are_read_as_c_ints(paths):
    schema = VMS_WITH_CONTROLS.replace("NOT NULL DEFAULT", "DEFAULT")
    make_db(paths.db, [vm(1, weight=2.9, max_jobs_per_sec="12abc", max_queue_depth=None, quarantined=2,
                          error_count=2 ** 32 + 5),
                       vm(2, weight=0), vm(3, weight=-4), vm(4, weight="heavy")], schema=schema)
    with Mediator(paths.socket, paths.db) as m:
        ask(paths.socket, p.RELOAD_CONFIG)
        loaded = m.loaded
        assert [m.weight(v) for v in (1, 2, 3, 4, 99)] == [2, 50, 50, 50, None]
    assert loaded[1] == {"weight": 2, "max_jobs_per_sec": 12, "max_queue_depth": 0, "quarantined": True,
                         "error_count": 5}
    assert loaded[3]["weight"] == -4


def test_weight_is_read_now_without_a_reload(paths):
    make_db(paths.db, [vm(1, weight=10)])
    with Mediator(paths.socket, paths.db) as m:
        assert m.weight(1) == 10
        conn = sqlite3.connect(paths.db)
        conn.execute("UPDATE vms SET weight = 90 WHERE vm_id = 1")
        conn.commit()
        conn.close()
        assert m.weight(1) == 90
        assert m.reloads() == []


# ---------------------------------------------------------------------------------- modes

def test_slow_mode_waits_before_answering(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db, mode="slow", delay=0.5) as m:
        started = time.monotonic()
        assert ask(paths.socket, p.SHOW_HEALTH)[0] == 0
        assert time.monotonic() - started >= 0.5
        m.set_mode("slow", delay=0)
        started = time.monotonic()
        assert ask(paths.socket, p.SHOW_HEALTH)[0] == 0
        assert time.monotonic() - started < 0.4


def test_dead_mode_accepts_and_never_answers(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db, mode="dead") as m:
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            ask(paths.socket, p.RELOAD_CONFIG, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 3
        assert [(r.command, r.outcome) for r in m.requests] == [(p.RELOAD_CONFIG, "unanswered")]
        assert m.reloads() == []
        m.set_mode("normal")
        assert ask(paths.socket, p.RELOAD_CONFIG) == (0, "Config reloaded: 1 VM(s) updated\n")


def test_a_dead_mediator_keeps_later_clients_queued(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db, mode="dead", backlog=1) as m:
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.connect(paths.socket)
        held.sendall(p.encode_request(p.SHOW_HEALTH))
        deadline = time.monotonic() + 5
        while not m.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.outcome for r in m.requests] == ["unanswered"]
        # Connecting still succeeds while the queue has room, but nothing is read or answered.
        queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        queued.settimeout(0.5)
        queued.connect(paths.socket)
        queued.sendall(p.encode_request(p.SHOW_HEALTH))
        with pytest.raises(socket.timeout):
            queued.recv(100)
        assert len(m.requests) == 1
        m.set_mode("normal")
        queued.settimeout(5)
        status, text = p.decode_answer(queued.recv(4096))
        assert status == 0
        assert held.recv(100) == b""  # the held connection is closed unanswered
        held.close()
        queued.close()


def test_drop_mode_closes_every_connection(paths):
    make_db(paths.db, [vm(1)])
    with Mediator(paths.socket, paths.db, mode="drop") as m:
        for command in (p.SHOW_HEALTH, p.RELOAD_CONFIG):
            with pytest.raises(Dropped):
                ask(paths.socket, command)
        assert [(r.command, r.outcome) for r in m.requests] == [
            (p.SHOW_HEALTH, "dropped-mode"), (p.RELOAD_CONFIG, "dropped-mode")]
        assert m.reloads() == []


def test_modes_are_checked(paths):
    with pytest.raises(ValueError):
        Mediator(paths.socket, paths.db, mode="asleep")
    m = Mediator(paths.socket, paths.db)
    with pytest.raises(ValueError):
        m.set_mode("asleep")
    assert m.mode == "normal"


def test_stop_releases_a_slow_answer_and_removes_the_socket(paths):
    make_db(paths.db, [vm(1)])
    m = Mediator(paths.socket, paths.db, mode="slow", delay=30).start()
    outcome = []

    def client():
        try:
            outcome.append(ask(paths.socket, p.SHOW_HEALTH, timeout=20))
        except Dropped:
            outcome.append("dropped")

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 5
    while not os.path.exists(paths.socket) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    started = time.monotonic()
    m.stop()
    t.join(10)
    assert time.monotonic() - started < 5
    assert outcome == ["dropped"]
    assert not os.path.exists(paths.socket)


# ---------------------------------------------------------------------------------- the socket file

def test_the_socket_is_mode_0666_and_a_stale_one_is_replaced(paths):
    make_db(paths.db, [vm(1)])
    with open(paths.socket, "w") as f:
        f.write("stale")
    with Mediator(paths.socket, paths.db):
        mode = os.stat(paths.socket).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o666
        assert ask(paths.socket, p.SHOW_HEALTH)[0] == 0
    assert not os.path.exists(paths.socket)


# ---------------------------------------------------------------------------------- command line

def run_cli(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=TESTS_DIR)
    return subprocess.run([sys.executable, "-m", "mediator_sim"] + list(args), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=30, **kwargs)


class Served(object):
    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=TESTS_DIR)
        self.proc = subprocess.Popen([sys.executable, "-m", "mediator_sim", "serve"] + list(args), env=env,
                                     stdout=subprocess.PIPE, universal_newlines=True)
        self.line = self.proc.stdout.readline()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_the_command_line_serves_until_sigterm(paths):
    make_db(paths.db, [vm(1, quarantined=1)])
    with Served("--socket", paths.socket, "--db", paths.db, "--record", paths.record) as served:
        assert served.line == "LISTENING %s\n" % paths.socket
        result = run_cli("ask", "--socket", paths.socket, "reload")
        assert (result.returncode, result.stdout) == (0, "Config reloaded: 1 VM(s) updated\n")
        result = run_cli("ask", "--socket", paths.socket, "0x14")
        assert (result.returncode, result.stdout) == (1, "ERROR: Unknown admin command 0x14")
        result = run_cli("ask", "--socket", paths.socket, "prometheus")
        assert result.returncode == 0 and 'vgpu_vm_jobs_total{vm_id="1"} 10\n' in result.stdout
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(10) == 0
    assert not os.path.exists(paths.socket)
    events = [json.loads(line) for line in open(paths.record)]
    reloads = [e for e in events if e["event"] == "reload"]
    assert reloads[0]["vms"]["1"]["quarantined"] is True


@pytest.mark.parametrize("mode", ["drop", "dead"])
def test_the_command_line_modes(paths, mode):
    make_db(paths.db, [vm(1)])
    with Served("--socket", paths.socket, "--db", paths.db, "--mode", mode) as served:
        assert served.line.startswith("LISTENING ")
        result = run_cli("ask", "--socket", paths.socket, "--timeout", "0.5", "health")
        assert result.returncode == 3
        assert result.stdout == ""
        assert ("without answering" if mode == "drop" else "timed out") in result.stderr


def test_the_command_line_slow_mode(paths):
    make_db(paths.db, [vm(1)])
    with Served("--socket", paths.socket, "--db", paths.db, "--mode", "slow", "--delay", "0.6"):
        started = time.monotonic()
        result = run_cli("ask", "--socket", paths.socket, "connections")
        assert result.returncode == 0 and result.stdout.startswith("=== Active VM Connections ===\n")
        assert time.monotonic() - started >= 0.6


def test_the_command_line_refuses_bad_arguments(paths):
    assert run_cli("serve", "--socket", paths.socket, "--db", paths.db, "--mode", "asleep").returncode == 2
    assert run_cli("ask", "--socket", paths.socket, "frobnicate").returncode == 2
    result = run_cli("ask", "--socket", paths.socket, "health")
    assert result.returncode == 3 and "cannot ask" in result.stderr

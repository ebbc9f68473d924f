"""One-round-trip scans, concurrent writers, and migrations of the older tools' databases (SPEC §2)."""

import glob
import json
import os
import sqlite3
import subprocess

import pytest

from conftest import (
    CUDA_DEV, DMA, ML_TRAIN_A, ML_TRAIN_B, REAL_VMS, RENDER_01, RENDER_02, device_line, dump_db, parse_error_doc,
)

SCAN_FILTER = ('(field "is_a_template"="false") and (field "is_control_domain"="false") and '
               '(field "is_a_snapshot"="false")')


def xapi_methods(sim):
    return [e["method"] for e in sim.call_log() if not e["method"].startswith("session.")]


# ------------------------------------------------------------------------------------------------
# scan: one listing call, no per-VM calls


def test_scan_makes_one_listing_call(cli, sim):
    cli.register(RENDER_01, "A", "high", 1)
    for argv in [("scan-vms",), ("scan-vms", "--format", "json"), ("status",), ("call", "scan")]:
        sim.clear_call_log()
        cli.ok(*argv)
        vm_calls = [m for m in xapi_methods(sim) if m.startswith("VM.")]
        assert vm_calls == ["VM.get_all_records_where"], argv
        # status also reads the pool's generation and every host's replica, one call each
        others = sorted(m for m in xapi_methods(sim) if not m.startswith("VM."))
        assert others == (["host.get_all_records", "pool.get_all_records"] if argv == ("status",) else []), argv
        assert sim.call_log("VM.get_all_records_where")[0]["params"][1] == SCAN_FILTER


def test_scan_of_a_500_vm_pool_is_still_one_call(cli, sim):
    added = []
    for i in range(490):
        state = ("Running", "Halted", "Paused", "Suspended")[i % 4]
        added.append(sim.add_vm(name_label="bulk-%03d" % i, power_state=state,
                                platform={"device-model-args": "-nographic"} if i % 7 == 0 else {})["uuid"])
    # a few registered, one with its device changed by hand
    cli.register(added[0], "A", "high", 1)
    cli.register(added[1], "B", "low", 2)
    cli.register(RENDER_01, "A", "medium", 3)
    sim.set_platform_key(added[1], DMA, device_line("B", "low", 20))
    sim.clear_call_log()
    doc = cli.run_json("scan-vms")
    assert xapi_methods(sim) == ["VM.get_all_records_where"]
    assert doc["summary"] == {"total_vms": 500, "registered": 3, "unregistered": 497, "stale": 0,
                              "configured": 2, "drift": 1, "not_applied": 0, "mirror_drift": 0}
    unreg = {u["vm_uuid"] for u in doc["unregistered"]}
    assert unreg == (set(added) | set(REAL_VMS)) - {added[0], added[1], RENDER_01}
    by = {r["vm_uuid"]: r for r in doc["registered"]}
    assert by[added[1]]["drift"] == [{"field": "vm_id", "registry": "2", "device": "20"}]
    sim.clear_call_log()
    r = cli.ok("scan-vms")
    assert "=== Unregistered VMs (497) ===" in r.out
    assert xapi_methods(sim) == ["VM.get_all_records_where"]


# ------------------------------------------------------------------------------------------------
# concurrent writers


def spawn(cli, argv):
    return subprocess.Popen([cli.binary] + list(argv) + ["--format", "json"], env=cli.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_registrations_get_distinct_ids(cli, sim):
    cli.register(RENDER_01, "A", "high", 2)  # id 2 taken: the others get 1, 3, 4, ...
    vms = [sim.add_vm(name_label="conc-%02d" % i, power_state="Halted")["uuid"] for i in range(12)]
    # slow XAPI down so the processes overlap while holding / waiting for the write lock
    sim.inject_fault("VM.get_platform", times=-1, code=None, latency_ms=40)
    procs = [spawn(cli, ["register-vm", "--vm-uuid", u, "--pool", "AB"[i % 2], "--priority", "low"])
             for i, u in enumerate(vms)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert b"locked" not in err
    ids = sorted(json.loads(out)["vm_id"] for out, _ in outs)
    assert ids == [1] + list(range(3, 14))
    rows = {r[1]: r for r in cli.dump()}
    assert set(rows) == set(vms) | {RENDER_01}
    for i, u in enumerate(vms):
        vm_id = rows[u][0]
        assert cli.dma(u) == device_line("AB"[i % 2], "low", vm_id)


def test_concurrent_claims_of_one_vm_id(cli, sim):
    vms = [sim.add_vm(name_label="claim-%d" % i, power_state="Halted")["uuid"] for i in range(8)]
    sim.inject_fault("VM.get_platform", times=-1, code=None, latency_ms=30)
    procs = [spawn(cli, ["register-vm", "--vm-uuid", u, "--pool", "A", "--priority", "high", "--vm-id", "77"])
             for u in vms]
    outs = [p.communicate(timeout=120) for p in procs]
    winners = [u for u, p in zip(vms, procs) if p.returncode == 0]
    assert len(winners) == 1, [o[1] for o in outs]
    for u, p, (out, err) in zip(vms, procs, outs):
        if u in winners:
            continue
        assert p.returncode == 1
        e = parse_error_doc(err.decode())
        assert e["code"] == "VM_ID_IN_USE", e
        assert e["details"]["vm_uuid"] == winners[0] and e["details"]["next_free_vm_id"] == 1
        assert DMA not in cli.platform(u)
    assert [(r[0], r[1]) for r in cli.dump()] == [(77, winners[0])]
    assert cli.dma(winners[0]) == device_line("A", "high", 77)


# ------------------------------------------------------------------------------------------------
# migrations of the older tools' databases

GARBAGE = "not-a-uuid"
# vm_id, vm_uuid, vm_name, pool, priority, created_at, updated_at
OLD_ROWS = [
    (1, CUDA_DEV, "cuda-dev", "A", 2, "2025-01-02 03:04:05", "2025-01-03 04:05:06"),
    (2, RENDER_02, None, "B", 0, None, None),
    (100, GARBAGE, "garbage", "A", 1, "2024-12-31 23:59:59", "2024-12-31 23:59:59"),
    (0, RENDER_01, "zero", "A", 0, "2025-02-01 00:00:00", "2025-02-01 00:00:00"),
    (-5, ML_TRAIN_B, "negative", "B", 1, "2025-02-02 00:00:00", "2025-02-02 00:00:00"),
]

FIRST_POOLS = """
CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')), pool_name TEXT NOT NULL);
INSERT INTO pools VALUES ('A','Pool A'), ('B','Pool B');
"""
FIRST_VMS = """
CREATE TABLE vms (
    vm_id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"""
LATER_POOLS = """
CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')), pool_name TEXT NOT NULL,
    description TEXT, enabled INTEGER DEFAULT 1 CHECK(enabled IN (0,1)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
INSERT INTO pools (pool_id, pool_name, description, enabled) VALUES
    ('A', 'Pool A', 'fast GPUs', 1), ('B', 'Pool B', NULL, 1);
"""
LATER_VMS = """
CREATE TABLE vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')) REFERENCES pools(pool_id),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_vm_pool ON vms(pool_id);
"""
SQL_FILE_VMS = """
CREATE TABLE vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL DEFAULT 'A' CHECK(pool_id IN ('A','B')),
    priority INTEGER NOT NULL DEFAULT 1 CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    weight REAL NOT NULL DEFAULT 1.0,
    max_jobs_per_sec INTEGER NOT NULL DEFAULT 0,
    max_queue_depth INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0 CHECK(quarantined IN (0,1)),
    error_count INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (pool_id) REFERENCES pools(pool_id)
);
CREATE INDEX idx_vm_uuid ON vms(vm_uuid);
CREATE INDEX idx_vm_pool ON vms(pool_id);
CREATE INDEX idx_vm_priority ON vms(priority);
"""
MEDIATOR_ALTER = """
ALTER TABLE vms ADD COLUMN weight INTEGER NOT NULL DEFAULT 50;
ALTER TABLE vms ADD COLUMN max_jobs_per_sec INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN max_queue_depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN error_count INTEGER NOT NULL DEFAULT 0;
"""
MEDIATOR = ("weight", "max_jobs_per_sec", "max_queue_depth", "quarantined", "error_count")

DESIGNS = {
    # name: (schema SQL, mediator values per uuid or None)
    "first-autoincrement": (FIRST_POOLS + FIRST_VMS, None),
    "first-autoincrement-with-mediator-alter": (FIRST_POOLS + FIRST_VMS + MEDIATOR_ALTER,
                                                {CUDA_DEV: (70, 5, 9, 1, 3), RENDER_01: (10, 1, 2, 0, 8)}),
    "later": (LATER_POOLS + LATER_VMS, None),
    "later-with-mediator-alter": (LATER_POOLS + LATER_VMS + MEDIATOR_ALTER,
                                  {CUDA_DEV: (70, 5, 9, 1, 3), ML_TRAIN_B: (99, 0, 4, 0, 1)}),
    "later-sql-file": (LATER_POOLS + SQL_FILE_VMS,
                       {CUDA_DEV: (2.5, 5, 9, 1, 7), RENDER_02: (0.25, 2, 3, 0, 0)}),
}


def build_old_db(path, design):
    schema, mediator = DESIGNS[design]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    for i, row in enumerate(OLD_ROWS):
        if design.startswith("first") and i < 2:
            # as the first tool did: the id comes from AUTOINCREMENT
            conn.execute("INSERT INTO vms (vm_uuid, vm_name, pool_id, priority, created_at, updated_at) "
                         "VALUES (?,?,?,?,?,?)", row[1:])
        else:
            conn.execute("INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority, created_at, updated_at) "
                         "VALUES (?,?,?,?,?,?,?)", row)
    for uuid, values in (mediator or {}).items():
        conn.execute("UPDATE vms SET %s WHERE vm_uuid = ?" % ", ".join("%s = ?" % c for c in MEDIATOR),
                     values + (uuid,))
    conn.commit()
    if design.startswith("first"):
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vms'").fetchone() == (100,)
    assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    conn.close()


def rfc3339(s):
    return None if s is None else s.replace(" ", "T") + "Z"


# What a row without values of its own holds in the mediator's columns after migration: the
# column defaults of the design (the SQL file's REAL weight 1.0), else the mediator's (SPEC §10).
MEDIATOR_DEFAULTS = (50, 0, 0, 0, 0)
SQL_FILE_DEFAULTS = (1.0, 0, 0, 0, 0)


def controls_of(design, uuid):
    schema, mediator = DESIGNS[design]
    values = (mediator or {}).get(uuid) or (SQL_FILE_DEFAULTS if design == "later-sql-file" else MEDIATOR_DEFAULTS)
    out = dict(zip(MEDIATOR, values))
    out["quarantined"] = bool(out["quarantined"])
    return out


def expected_list(rows, design):
    words = {0: "low", 1: "medium", 2: "high"}
    regs = [dict({"vm_id": r[0], "vm_uuid": r[1], "vm_name": r[2], "pool": r[3], "priority": words[r[4]],
                  "created_at": rfc3339(r[5]), "updated_at": rfc3339(r[6])}, **controls_of(design, r[1]))
            for r in rows]
    return sorted(regs, key=lambda d: (d["pool"], -{"low": 0, "medium": 1, "high": 2}[d["priority"]], d["vm_id"]))


def select(path, columns):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute("SELECT %s FROM vms ORDER BY vm_uuid" % ", ".join(columns)).fetchall()
    finally:
        conn.close()


def columns_of(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(vms)")]
    finally:
        conn.close()


def user_version(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_migration_keeps_every_row_and_column(cli, design):
    build_old_db(cli.db, design)
    cols = columns_of(cli.db)
    before = select(cli.db, cols)
    assert len(before) == len(OLD_ROWS)

    r = cli.run("list-vms", "--format", "json")
    assert r.code == 0, r
    assert json.loads(r.out) == expected_list(OLD_ROWS, design)
    backups = glob.glob(glob.escape(cli.db) + ".pre-v4-*.bak")
    assert len(backups) == 1, os.listdir(os.path.dirname(cli.db))
    assert "migrated" in r.err and backups[0] in r.err

    # every column value survived, under the same names; the schema is the current one
    assert set(cols) <= set(columns_of(cli.db))
    assert select(cli.db, cols) == before
    assert user_version(cli.db) == 4
    conn = sqlite3.connect(cli.db)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'vms'").fetchone()[0]
    conn.close()
    assert "AUTOINCREMENT" not in sql.upper()
    # the backup is the untouched original
    assert select(backups[0], cols) == before and user_version(backups[0]) == 0

    # the lowest free id is 3 (1 and 2 taken, 0 and -5 do not count, AUTOINCREMENT's 100 neither)
    out = cli.register(ML_TRAIN_A, "B", "high")
    assert out["vm_id"] == 3
    # an operation on a row with mediator values leaves them alone
    cli.run_json("set-priority", "--vm-uuid", CUDA_DEV, "--priority", "low")
    after = {row[cols.index("vm_uuid")]: row for row in select(cli.db, cols)}
    for row in before:
        uuid = row[cols.index("vm_uuid")]
        got = after[uuid]
        for c in cols:
            if c in ("priority", "updated_at") and uuid == CUDA_DEV:
                continue
            assert got[cols.index(c)] == row[cols.index(c)], (uuid, c)
    assert after[CUDA_DEV][cols.index("priority")] == 0
    # opening again does not migrate again
    r = cli.run("list-pools", "--format", "json")
    assert r.code == 0 and "migrated" not in r.err
    assert len(glob.glob(glob.escape(cli.db) + ".pre-v4-*.bak")) == 1
    if design.startswith("later"):
        pools = {p["pool_id"]: p for p in json.loads(r.out)}
        assert pools["A"]["description"] == "fast GPUs"


def test_sql_file_design_keeps_real_weight_and_check(cli):
    build_old_db(cli.db, "later-sql-file")
    cli.ok("list-vms")
    assert user_version(cli.db) == 4
    rows = {r[0]: r[1:] for r in select(cli.db, ["vm_uuid", "weight", "typeof(weight)"])}
    assert rows[CUDA_DEV] == (2.5, "real") and rows[RENDER_02] == (0.25, "real")
    assert rows[RENDER_01] == (1.0, "real")  # the column default
    conn = sqlite3.connect(cli.db)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE vms SET quarantined = 5 WHERE vm_uuid = ?", (CUDA_DEV,))
    conn.close()


def test_old_rows_with_problems_are_reported_and_repairable(cli, sim):
    build_old_db(cli.db, "first-autoincrement")
    doc = cli.run_json("status")
    problems = {p["vm_uuid"]: p["problems"] for p in doc["problems"]}
    assert set(problems) == {GARBAGE, RENDER_01, ML_TRAIN_B}
    assert any("vm_id 0" in m and "set-vm-id" in m for m in problems[RENDER_01])
    assert any("vm_id -5" in m for m in problems[ML_TRAIN_B])
    assert any(GARBAGE in m and "remove-vm" in m for m in problems[GARBAGE])
    scan = cli.run_json("scan-vms")
    assert [s["vm_uuid"] for s in scan["stale"]] == [GARBAGE]
    r = cli.ok("status")
    assert "Problems:" in r.out and GARBAGE in r.out

    # repair: new ids for the bad ones, remove the garbage row by its stored uuid
    out = cli.run_json("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "7")
    assert out["vm_id"] == 7 and cli.dma(RENDER_01) == device_line("A", "low", 7)
    out = cli.run_json("set-vm-id", "--vm-name", "ml-train-b", "--vm-id", "8")
    assert out["vm_id"] == 8
    out = cli.run_json("remove-vm", "--vm-uuid", GARBAGE)
    assert out["removed"] is True and out["vm_uuid"] == GARBAGE
    assert cli.run_json("status")["problems"] == []
    assert sorted((r[0], r[1]) for r in cli.dump()) == [(1, CUDA_DEV), (2, RENDER_02), (7, RENDER_01),
                                                      (8, ML_TRAIN_B)]
    # a garbage uuid that is not in the registry is still refused as invalid
    r = cli.run("remove-vm", "--vm-uuid", GARBAGE)
    assert r.code == 2 and '"%s"' % GARBAGE in r.err


def test_rows_with_bad_ids_cannot_be_synced_until_fixed(cli, sim):
    build_old_db(cli.db, "later")
    doc = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert doc["vm_id"] == 0 and doc["problems"]
    # updating another field keeps the unusable stored id: refused, nothing changes
    before = cli.dump()
    r = cli.run("set-pool", "--vm-uuid", RENDER_01, "--pool", "B")
    assert r.code == 2 and "--vm-id" in r.err and '"0"' in r.err, r
    assert cli.dump() == before and cli.dma(RENDER_01) is None


def test_concurrent_first_opens_of_an_old_database(cli):
    build_old_db(cli.db, "first-autoincrement-with-mediator-alter")
    cols = columns_of(cli.db)
    before = select(cli.db, cols)
    procs = [spawn(cli, ["list-vms"]) for _ in range(10)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert json.loads(out) == expected_list(OLD_ROWS, "first-autoincrement-with-mediator-alter")
    assert len(glob.glob(glob.escape(cli.db) + ".pre-v4-*.bak")) == 1
    assert select(cli.db, cols) == before and user_version(cli.db) == 4


def test_concurrent_registrations_on_a_new_registry(cli, sim):
    vms = [sim.add_vm(name_label="new-%02d" % i, power_state="Halted")["uuid"] for i in range(12)]
    assert not os.path.exists(cli.db)
    procs = [spawn(cli, ["register-vm", "--vm-uuid", u, "--pool", "B", "--priority", "high"]) for u in vms]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(json.loads(o)["vm_id"] for o, _ in outs) == list(range(1, 13))
    assert sorted(r[1] for r in cli.dump()) == sorted(vms)


def test_upper_case_uuid_row_from_an_old_tool_can_be_repaired(cli, sim):
    os.makedirs(os.path.dirname(cli.db))
    conn = sqlite3.connect(cli.db)
    conn.executescript(LATER_POOLS + LATER_VMS)
    conn.execute("INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (4, ?, 'render-01', 'A', 2)",
                 (RENDER_01.upper(),))
    conn.commit()
    conn.close()
    doc = cli.run_json("status")
    assert any("remove-vm" in m for p in doc["problems"] for m in p["problems"])
    r = cli.run("remove-vm", "--vm-uuid", RENDER_01.upper())
    assert r.code == 0, r
    assert cli.dump() == []

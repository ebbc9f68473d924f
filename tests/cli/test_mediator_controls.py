"""The mediator's controls through `vgpu-admin` (SPEC §10, MEDIATOR.md), in local registry mode:
this host is unknown, so the registry file is used directly and changes are stored and mirrored
in XAPI, but no host is asked to refresh or reload; `mediator …` asks the socket of config
`[mediator] admin_socket` on this host.

1. bad values are refused before anything is resolved or changed;
2. set-weight, set-rate-limit, quarantine-vm and clear-quarantine change the row and its mirror;
   show-vm, list-vms and their JSON carry the controls; list-vms --quarantined;
3. migration of every older design adds the missing columns with the mediator's defaults and keeps
   existing values and column types;
4. show-weights and show-rate-limits;
5. `mediator metrics|health|connections|reload` and the older names against the stand-in in
   tests/mediator_sim, a missing socket, every way a mediator can fail to answer, the timeout;
6. status warnings about values the mediator misreads.

Expected values come from the registry file read with sqlite3, from the simulator's records, from
the stand-in (its own client, its record of requests and of what it loaded), and from the
contract, never from the command under test.
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import struct
import tempfile
import threading
import time
import uuid as uuidlib

import pytest

from conftest import (
    CUDA_DEV, DMA, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, REAL_VMS, RENDER_01, RENDER_02, parse_error_doc,
    platforms, rust_debug,
)
import test_scan_and_concurrency as old
from mediator_sim import Mediator
from mediator_sim import db as med_db
from mediator_sim import protocol as p

VM_KEY = "vgpu-registry"
GENERATION_KEY = "vgpu-registry:generation"
CONTROLS = ("weight", "max_jobs_per_sec", "max_queue_depth", "quarantined", "error_count")
# The mediator's declarations of its columns (MEDIATOR.md): (type, not null, default)
MEDIATOR_DECL = {"weight": ("INTEGER", 1, "50"), "max_jobs_per_sec": ("INTEGER", 1, "0"),
                 "max_queue_depth": ("INTEGER", 1, "0"), "quarantined": ("INTEGER", 1, "0"),
                 "error_count": ("INTEGER", 1, "0")}
DEFAULTS = {"weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0, "quarantined": 0, "error_count": 0}
WORD = {0: "low", 1: "medium", 2: "high"}
PRIORITY = {"low": 0, "medium": 1, "high": 2}
NO_VM = "00000000-0000-4000-8000-000000000000"


# ------------------------------------------------------------------------------------------------
# Helpers


def rows(cli):
    """uuid -> every column of the registry row (sqlite3, read only)."""
    conn = sqlite3.connect("file:%s?mode=ro" % cli.db, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r["vm_uuid"]: dict(r) for r in conn.execute("SELECT * FROM vms")}
    finally:
        conn.close()


def sql(path, statement, *params):
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def controls(row):
    """A row's controls as the JSON of a registration shows them: quarantined a boolean, a NULL as
    the mediator reads it (0)."""
    out = {c: 0 if row[c] is None else row[c] for c in CONTROLS}
    out["quarantined"] = bool(out["quarantined"])
    return out


def mirror(sim, uuid):
    return json.loads(sim.vm_other_config(uuid)[VM_KEY])


def generation(sim):
    g = sim.pool_other_config().get(GENERATION_KEY)
    return None if g is None else int(g)


def mediator_order(regs):
    """The order a mediator loads rows in: pool, priority high first, vm_id (MEDIATOR.md)."""
    return sorted(regs, key=lambda r: (r["pool_id"], -r["priority"], r["vm_id"]))


def table(out):
    """The rows of a table of `vgpu-admin` as dicts by header, cut at the header's columns."""
    lines = [l for l in out.splitlines() if l.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:(?<=  )|^)\S+(?: \S+)*", header)]
    names = [header[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
    found = []
    for l in lines[1:]:
        cells = [l[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
        found.append(dict(zip(names, cells)))
    return names, found


def seed(cli):
    """Three registrations: render-01 (A high 5), render-02 (A medium 3), cuda-dev (B low 1)."""
    cli.register(RENDER_01, "A", "high", 5)
    cli.register(RENDER_02, "A", "medium", 3)
    cli.register(CUDA_DEV, "B", "low", 1)


def world(cli, sim):
    """Everything a refused command could have changed."""
    return (cli.dump(), platforms(sim),
            {u: dict(sim.vm_other_config(u)) for u in REAL_VMS}, dict(sim.pool_other_config()))


def xapi_calls(sim):
    return [e["method"] for e in sim.call_log()]


@pytest.fixture
def med_dir():
    # short: a unix socket's path holds at most 107 bytes, and pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="vgpu-med-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_config(cli, path, socket_path, timeout_s=1):
    with open(path, "w") as f:
        f.write("[mediator]\nadmin_socket = %s\n" % json.dumps(socket_path))
        if timeout_s is not None:
            f.write("timeout_s = %d\n" % timeout_s)
    cli.config = path
    cli.env["VGPU_CONFIG"] = path


@pytest.fixture
def mcli(cli, med_dir):
    """`cli` with a config whose mediator socket is `mcli.socket` (nothing there yet), timeout 1 s."""
    cli.socket = os.path.join(med_dir, "admin.sock")
    write_config(cli, os.path.join(med_dir, "vgpu.conf"), cli.socket)
    return cli


# ------------------------------------------------------------------------------------------------
# 1. Bad values are refused before anything is resolved or changed

BAD_VALUES = [
    ("set-weight", [], "--weight", v) for v in ("0", "101", "-5", "7.5", "abc", "", "1e2", "+5", "4294967346")
] + [
    ("set-rate-limit", [], "--rate", v) for v in ("-1", "abc", "1.5", "4294967296")
] + [
    ("set-rate-limit", ["--rate", "5"], "--queue-depth", v) for v in ("-1", "x")
]
SELECTORS = [("--vm-uuid", RENDER_01), ("--vm-name", "render-01"), ("--vm-name", "no such vm"),
             ("--vm-uuid", NO_VM)]


@pytest.mark.parametrize("command,extra,option,value", BAD_VALUES,
                         ids=["%s %s=%s" % (c, o, v) for c, _, o, v in BAD_VALUES])
def test_a_bad_value_is_refused_before_anything_is_resolved(cli, sim, command, extra, option, value):
    cli.register(RENDER_01, "A", "high", 5)
    before = world(cli, sim)
    for flag, vm in SELECTORS:
        forms = [[option + "=" + value]]
        if value and not value.startswith("-"):
            forms.append([option, value])
        for form in forms:
            for fmt in ([], ["--format", "json"]):
                sim.clear_call_log()
                r = cli.run(command, flag, vm, *(extra + form + fmt))
                # usage (2), whichever VM is named: an unknown one is not even looked up
                assert r.code == 2, (command, flag, vm, form, r)
                if fmt:
                    err = parse_error_doc(r.err)
                    assert err["code"] == "INVALID_ARGUMENT", err
                    assert err["details"]["value"] == value, err
                    assert rust_debug(value) in err["message"], err
                else:
                    assert r.err.startswith("error: "), r.err
                    assert rust_debug(value) in r.err and option in r.err, r.err
                assert xapi_calls(sim) == [], (form, xapi_calls(sim))
    assert world(cli, sim) == before


@pytest.mark.parametrize("fn,args,key,value", [
    ("set-weight", [], "weight", "0"), ("set-weight", [], "weight", "101"), ("set-weight", [], "weight", "7.5"),
    ("set-rate-limit", [], "rate", "-1"), ("set-rate-limit", [], "rate", "abc"),
    ("set-rate-limit", ["rate=5"], "queue-depth", "-1"),
])
def test_the_plugin_api_refuses_the_same_values(cli, sim, fn, args, key, value):
    """`call` is the plugin's path: the same refusal, with the argument named as the API names it."""
    cli.register(RENDER_01, "A", "high", 5)
    before = world(cli, sim)
    for vm in ("vm-name=render-01", "vm-name=no such vm"):
        sim.clear_call_log()
        code, err = cli.json_error("call", fn, vm, *(args + ["%s=%s" % (key, value)]),
                                   expect_code="INVALID_ARGUMENT")
        assert code == 2 and err["details"]["argument"] == key and err["details"]["value"] == value, err
        assert xapi_calls(sim) == []
    assert world(cli, sim) == before


def test_a_bad_value_creates_no_registry(cli, sim):
    for argv in (["set-weight", "--vm-name", "render-01", "--weight", "0"],
                 ["set-rate-limit", "--vm-name", "render-01", "--rate=-1"]):
        assert cli.run(*argv).code == 2
    assert not os.path.exists(cli.db)


def test_the_limits_of_each_value_are_accepted(cli, sim):
    seed(cli)
    for weight in ("1", "100", "050"):
        out = cli.run_json("set-weight", "--vm-uuid", RENDER_01, "--weight", weight)
        assert out["weight"] == int(weight) and rows(cli)[RENDER_01]["weight"] == int(weight)
    out = cli.run_json("set-rate-limit", "--vm-uuid", RENDER_01, "--rate", "4294967295", "--queue-depth", "0")
    assert rows(cli)[RENDER_01]["max_jobs_per_sec"] == 4294967295 and out["max_jobs_per_sec"] == 4294967295


# ------------------------------------------------------------------------------------------------
# 2. The commands change the row and its mirror


def test_each_control_change_is_stored_and_mirrored_and_nothing_else_moves(cli, sim):
    seed(cli)
    start_platforms = platforms(sim)
    time.sleep(1.1)  # updated_at has one-second steps
    steps = [
        (["set-weight", "--vm-name", "render-01", "--weight", "80"], RENDER_01, {"weight": 80}),
        (["set-rate-limit", "--vm-uuid", RENDER_01, "--rate", "200", "--queue-depth", "16"], RENDER_01,
         {"max_jobs_per_sec": 200, "max_queue_depth": 16}),
        # the queue depth is kept when not given
        (["set-rate-limit", "--vm-uuid", RENDER_01, "--rate", "25"], RENDER_01, {"max_jobs_per_sec": 25}),
        (["set-rate-limit", "--vm-name", "render-02", "--rate", "0", "--queue-depth", "4"], RENDER_02,
         {"max_queue_depth": 4}),
        (["quarantine-vm", "--vm-uuid", CUDA_DEV.upper()], CUDA_DEV, {"quarantined": 1}),
        (["set-weight", "--vm-uuid", CUDA_DEV, "--weight", "1"], CUDA_DEV, {"weight": 1}),
    ]
    want = rows(cli)
    for argv, changed, values in steps:
        gen = generation(sim)
        out = cli.run_json(*argv)
        for k, v in values.items():
            want[changed][k] = v
        got = rows(cli)
        for u in want:
            if u == changed:
                assert {c: got[u][c] for c in CONTROLS} == {c: want[u][c] for c in CONTROLS}, (argv, got[u])
                assert got[u]["updated_at"] > got[u]["created_at"], (argv, got[u])
                rest = [c for c in got[u] if c not in CONTROLS + ("updated_at",)]
                assert {c: got[u][c] for c in rest} == {c: want[u][c] for c in rest}, argv
            else:
                assert got[u] == want[u], (argv, u)
        want = got
        # the result is the registration with its controls
        assert out["vm_uuid"] == changed and controls(got[changed]) == {c: out[c] for c in CONTROLS}, out
        assert out["vm_id"] == got[changed]["vm_id"] and out["pool"] == got[changed]["pool_id"]
        # the mirror carries the row, controls included
        m = mirror(sim, changed)
        for c in CONTROLS:
            assert m[c] == got[changed][c], (argv, c, m)
        assert generation(sim) == gen + 1, argv
        # controls are registry data only: no VM's device-model-args changes
        assert platforms(sim) == start_platforms, argv
    # quarantining again changes nothing and is no error
    out = cli.run_json("quarantine-vm", "--vm-name", "cuda-dev")
    assert out["quarantined"] is True and rows(cli)[CUDA_DEV]["quarantined"] == 1
    # the mediator's error count, raised outside the registry, is zeroed with the quarantine
    sql(cli.db, "UPDATE vms SET error_count = 7 WHERE vm_uuid = ?", CUDA_DEV)
    out = cli.run_json("clear-quarantine", "--vm-name", "cuda-dev")
    row = rows(cli)[CUDA_DEV]
    assert (row["quarantined"], row["error_count"], row["weight"]) == (0, 0, 1)
    assert (out["quarantined"], out["error_count"]) == (False, 0)
    m = mirror(sim, CUDA_DEV)
    assert (m["quarantined"], m["error_count"]) == (0, 0), m
    assert platforms(sim) == start_platforms


def test_table_results_say_what_was_set(cli, sim):
    seed(cli)
    r = cli.ok("set-weight", "--vm-name", "render-01", "--weight", "80")
    assert RENDER_01 in r.out and "weight 80" in r.out, r.out
    r = cli.ok("set-rate-limit", "--vm-name", "render-01", "--rate", "200", "--queue-depth", "16")
    assert "200" in r.out and "queue depth 16" in r.out, r.out
    r = cli.ok("quarantine-vm", "--vm-name", "cuda-dev")
    assert CUDA_DEV in r.out and "quarantine" in r.out, r.out
    r = cli.ok("clear-quarantine", "--vm-name", "cuda-dev")
    assert CUDA_DEV in r.out and "error count" in r.out, r.out


def test_a_control_of_an_unregistered_or_unknown_vm_changes_nothing(cli, sim):
    seed(cli)
    before = world(cli, sim)
    for argv in (["set-weight", "--weight", "10"], ["set-rate-limit", "--rate", "3"], ["quarantine-vm"],
                 ["clear-quarantine"]):
        code, err = cli.json_error(argv[0], "--vm-name", "ml-train-a", *argv[1:], expect_code="NOT_REGISTERED")
        assert code == 1 and ML_TRAIN_A in err["message"], err
        code, err = cli.json_error(argv[0], "--vm-uuid", NO_VM, *argv[1:])
        assert code == 1 and err["code"] in ("VM_NOT_FOUND", "NOT_REGISTERED"), err
    assert world(cli, sim) == before


def test_show_vm_and_list_vms_carry_the_controls(cli, sim):
    seed(cli)
    cli.run_json("set-weight", "--vm-name", "render-01", "--weight", "80")
    cli.run_json("set-rate-limit", "--vm-name", "render-02", "--rate", "12", "--queue-depth", "3")
    cli.run_json("quarantine-vm", "--vm-name", "cuda-dev")
    got = rows(cli)
    listed = cli.run_json("list-vms")
    assert [d["vm_uuid"] for d in listed] == [r["vm_uuid"] for r in mediator_order(got.values())]
    for d in listed:
        assert {c: d[c] for c in CONTROLS} == controls(got[d["vm_uuid"]]), d
        assert isinstance(d["weight"], int) and isinstance(d["quarantined"], bool)
    for u in got:
        d = cli.run_json("show-vm", "--vm-uuid", u)
        assert {c: d[c] for c in CONTROLS} == controls(got[u]), d


def test_list_vms_quarantined_filters(cli, sim):
    seed(cli)
    assert cli.run_json("list-vms", "--quarantined") == []
    cli.run_json("quarantine-vm", "--vm-name", "cuda-dev")
    # a quarantine set by another tool counts as well
    sql(cli.db, "UPDATE vms SET quarantined = 1 WHERE vm_uuid = ?", RENDER_02)
    listed = cli.run_json("list-vms", "--quarantined")
    assert [d["vm_uuid"] for d in listed] == [RENDER_02, CUDA_DEV]
    assert all(d["quarantined"] is True for d in listed)
    out = cli.ok("list-vms", "--quarantined").out
    assert CUDA_DEV in out and RENDER_02 in out and RENDER_01 not in out, out
    assert [d["vm_uuid"] for d in cli.run_json("list-vms", "--quarantined", "--pool", "B")] == [CUDA_DEV]
    assert cli.run_json("list-vms", "--quarantined", "--priority", "high") == []
    cli.run_json("clear-quarantine", "--vm-name", "cuda-dev")
    assert [d["vm_uuid"] for d in cli.run_json("list-vms", "--quarantined")] == [RENDER_02]
    # the plugin API's list takes the flag too
    doc = json.loads(cli.ok("call", "list", "quarantined=true").out)
    assert [d["vm_uuid"] for d in doc] == [RENDER_02]


def test_show_vm_table_shows_the_controls(cli, sim):
    seed(cli)
    cli.run_json("set-weight", "--vm-name", "render-01", "--weight", "80")
    cli.run_json("set-rate-limit", "--vm-name", "render-01", "--rate", "200", "--queue-depth", "16")
    cli.run_json("quarantine-vm", "--vm-name", "render-01")
    out = cli.ok("show-vm", "--vm-name", "render-01").out
    lines = out.lower().splitlines()
    assert any(l.startswith("weight") and "80" in l for l in lines), out
    assert any("200" in l for l in lines) and any("16" in l for l in lines), out
    assert any(l.startswith("quarantine") for l in lines), out


def test_rebuild_restores_the_controls_from_the_mirror(cli, sim):
    """The mirror is a registry of record: a lost file comes back with every control, as whole
    numbers a mediator reads."""
    sim.set_platform_key(LEGACY_STUB, DMA, None)  # its device claims vm_id 3: rebuild would adopt it
    seed(cli)
    cli.run_json("set-weight", "--vm-name", "render-01", "--weight", "80")
    cli.run_json("set-rate-limit", "--vm-name", "render-02", "--rate", "12", "--queue-depth", "3")
    cli.run_json("quarantine-vm", "--vm-name", "cuda-dev")
    before = rows(cli)
    os.unlink(cli.db)
    cli.ok("rebuild", "--yes")
    after = rows(cli)
    for u in before:
        assert {c: after[u][c] for c in CONTROLS} == {c: before[u][c] for c in CONTROLS}, u
    types = sql(cli.db, "SELECT DISTINCT typeof(weight), typeof(max_jobs_per_sec), typeof(max_queue_depth), "
                        "typeof(quarantined), typeof(error_count) FROM vms")
    assert types == [("integer",) * 5], types


# ------------------------------------------------------------------------------------------------
# 3. Migration: missing columns get the mediator's defaults; existing ones keep values and types

V3_SCHEMA = """
CREATE TABLE pools (
    pool_id CHAR(1) PRIMARY KEY CHECK(pool_id IN ('A','B')),
    pool_name TEXT NOT NULL,
    description TEXT,
    enabled INTEGER DEFAULT 1 CHECK(enabled IN (0,1)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO pools (pool_id, pool_name) VALUES ('A', 'Pool A'), ('B', 'Pool B');
CREATE TABLE vms (
    vm_id INTEGER NOT NULL UNIQUE,
    vm_uuid TEXT UNIQUE NOT NULL,
    vm_name TEXT,
    pool_id CHAR(1) NOT NULL CHECK(pool_id IN ('A','B')) REFERENCES pools(pool_id),
    priority INTEGER NOT NULL CHECK(priority IN (0,1,2)),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    name_chosen INTEGER NOT NULL DEFAULT 0 CHECK(name_chosen IN (0,1))
);
CREATE TABLE registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX idx_vm_pool ON vms(pool_id);
CREATE INDEX idx_vm_priority ON vms(priority);
PRAGMA user_version = 3;
"""
# Columns added by hand, as some sites did: nullable, and only two of them.
PARTIAL_ALTER = """
ALTER TABLE vms ADD COLUMN weight INTEGER DEFAULT 50;
ALTER TABLE vms ADD COLUMN quarantined INTEGER DEFAULT 0;
"""

# name -> (how to build it, {uuid: {column: value}} set before the migration)
DESIGNS = {name: ("old", {u: dict(zip(old.MEDIATOR, v)) for u, v in (values or {}).items()})
           for name, (_, values) in old.DESIGNS.items()}
DESIGNS.update({
    # the previous release of this registry (schema 3: no controls)
    "registry-v3": ("v3", {}),
    # the mediator made the file at its start, then someone tuned it with the older tool
    "made-by-the-mediator": ("mediator", {CUDA_DEV: {"weight": 30, "max_jobs_per_sec": 4, "quarantined": 1,
                                                     "error_count": 2}}),
    "two-columns-by-hand": ("partial", {CUDA_DEV: {"weight": 20, "quarantined": 1},
                                        RENDER_02: {"weight": None}}),
})


def build(path, design):
    how, values = DESIGNS[design]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if how == "old":
        old.build_old_db(path, design)
        return
    conn = sqlite3.connect(path)
    if how == "v3":
        conn.executescript(V3_SCHEMA)
    elif how == "mediator":
        conn.executescript(med_db.MEDIATOR_SCHEMA)
    else:
        conn.executescript(old.LATER_POOLS + old.LATER_VMS + PARTIAL_ALTER)
    for r in old.OLD_ROWS:
        conn.execute("INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority, created_at, updated_at) "
                     "VALUES (?,?,?,?,?,?,?)", r)
    for u, vals in values.items():
        conn.execute("UPDATE vms SET %s WHERE vm_uuid = ?" % ", ".join("%s = ?" % c for c in vals),
                     tuple(vals.values()) + (u,))
    conn.commit()
    conn.close()


def table_info(path):
    """column -> (declared type, not null, default) of vms."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return {r[1]: (r[2], r[3], r[4]) for r in conn.execute("PRAGMA table_info(vms)")}
    finally:
        conn.close()


def all_rows(path):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r["vm_uuid"]: dict(r) for r in conn.execute("SELECT * FROM vms")}
    finally:
        conn.close()


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_migration_adds_the_controls_with_the_mediators_defaults_and_keeps_what_is_there(cli, design, med_dir):
    build(cli.db, design)
    info_before = table_info(cli.db)
    rows_before = all_rows(cli.db)
    had = [c for c in CONTROLS if c in info_before]

    r = cli.run("list-vms", "--format", "json")
    assert r.code == 0, r
    assert "pre-v4-" in r.err and "schema 4" in r.err, r.err
    assert old.user_version(cli.db) == 4

    info = table_info(cli.db)
    for c in CONTROLS:
        if c in had:
            assert info[c] == info_before[c], (c, info[c])  # type, NOT NULL and default kept
        else:
            assert info[c] == MEDIATOR_DECL[c], (c, info[c])
    got = all_rows(cli.db)
    assert set(got) == set(rows_before)
    for u, before in rows_before.items():
        for col, v in before.items():
            if col == "vm_id" and design.startswith("first"):
                continue  # AUTOINCREMENT's ids are kept too, but through the table's rebuild
            assert got[u][col] == v and type(got[u][col]) is type(v), (u, col, got[u][col], v)
        for c in CONTROLS:
            if c not in had:
                assert got[u][c] == DEFAULTS[c], (u, c)
    # the JSON shows exactly the stored values
    listed = {d["vm_uuid"]: d for d in json.loads(r.out)}
    for u, row in got.items():
        shown = {c: listed[u][c] for c in CONTROLS}
        assert shown == controls(row), (u, shown, row)
    if design == "later-sql-file":
        # its CHECK on quarantined is still there
        with pytest.raises(sqlite3.IntegrityError):
            sql(cli.db, "UPDATE vms SET quarantined = 5 WHERE vm_uuid = ?", CUDA_DEV)

    # the controls work on the migrated file, and a mediator reading it by vm_id loads them
    cli.run_json("set-weight", "--vm-uuid", CUDA_DEV, "--weight", "80")
    cli.run_json("set-rate-limit", "--vm-uuid", CUDA_DEV, "--rate", "9")
    cli.run_json("quarantine-vm", "--vm-uuid", RENDER_02)
    final = all_rows(cli.db)
    assert (final[CUDA_DEV]["weight"], final[CUDA_DEV]["max_jobs_per_sec"]) == (80, 9)
    assert final[RENDER_02]["quarantined"] == 1
    sock = os.path.join(med_dir, "m.sock")
    with Mediator(sock, cli.db) as m:
        assert p.ask(sock, p.RELOAD_CONFIG)[0] == p.STATUS_OK
        loaded = m.loaded
        assert loaded[1]["weight"] == 80 and loaded[1]["max_jobs_per_sec"] == 9, loaded
        assert loaded[2]["quarantined"] is True, loaded
        assert m.weight(1) == 80


def test_the_sql_files_real_weight_takes_whole_weights(cli, sim):
    """A weight set in a REAL column is the whole number given (80, not a fraction of it)."""
    old.build_old_db(cli.db, "later-sql-file")
    out = cli.run_json("set-weight", "--vm-uuid", CUDA_DEV, "--weight", "80")
    assert out["weight"] == 80
    (w, t), = sql(cli.db, "SELECT weight, typeof(weight) FROM vms WHERE vm_uuid = ?", CUDA_DEV)
    assert w == 80 and t == "real"  # the column's type is kept: SQLite stores 80.0
    assert table_info(cli.db)["weight"] == ("REAL", 1, "1.0")


# ------------------------------------------------------------------------------------------------
# 4. show-weights and show-rate-limits


def crowd(cli):
    """Four registrations with controls set through the commands; the rows as sqlite reads them."""
    seed(cli)
    cli.register(ML_TRAIN_B, "B", "high", 7)
    cli.run_json("set-weight", "--vm-uuid", RENDER_01, "--weight", "80")
    cli.run_json("set-weight", "--vm-uuid", ML_TRAIN_B, "--weight", "5")
    cli.run_json("set-rate-limit", "--vm-uuid", RENDER_02, "--rate", "12", "--queue-depth", "3")
    cli.run_json("set-rate-limit", "--vm-uuid", CUDA_DEV, "--rate", "0", "--queue-depth", "40")
    cli.run_json("quarantine-vm", "--vm-uuid", ML_TRAIN_B)
    sql(cli.db, "UPDATE vms SET error_count = 6 WHERE vm_uuid = ?", ML_TRAIN_B)
    return rows(cli)


def unlimited(n):
    return "unlimited" if n == 0 else str(n)


@pytest.mark.parametrize("command", ["show-weights", "show-rate-limits"])
def test_show_weights_and_rate_limits_json_is_the_registrations_with_their_controls(cli, sim, command):
    got = crowd(cli)
    doc = cli.run_json(command)
    order = [r["vm_uuid"] for r in mediator_order(got.values())]
    assert [d["vm_uuid"] for d in doc] == order
    for d in doc:
        row = got[d["vm_uuid"]]
        assert {c: d[c] for c in CONTROLS} == controls(row), d
        assert (d["vm_id"], d["pool"], d["priority"], d["vm_name"]) == \
            (row["vm_id"], row["pool_id"], WORD[row["priority"]], row["vm_name"])
    doc_b = cli.run_json(command, "--pool", "B")
    assert [d["vm_uuid"] for d in doc_b] == [u for u in order if got[u]["pool_id"] == "B"]
    # the plugin API's function of the same name
    assert json.loads(cli.ok("call", command, "pool=B").out) == doc_b


def test_show_weights_table(cli, sim):
    got = crowd(cli)
    names, found = table(cli.ok("show-weights").out)
    assert "WEIGHT" in names and "UUID" in names, names
    assert [f["UUID"] for f in found] == [r["vm_uuid"] for r in mediator_order(got.values())]
    for f in found:
        row = got[f["UUID"]]
        assert f["WEIGHT"] == str(row["weight"]), f
        assert f["VM ID"] == str(row["vm_id"]) and f["POOL"] == row["pool_id"], f
    names, found = table(cli.ok("show-weights", "--pool", "A").out)
    assert [f["UUID"] for f in found] == [RENDER_01, RENDER_02]


def test_show_rate_limits_table(cli, sim):
    got = crowd(cli)
    names, found = table(cli.ok("show-rate-limits").out)
    assert names[:2] == ["UUID", "NAME"] and "QUARANTINED" in names and "ERRORS" in names, names
    jobs, queue = [n for n in names if n.startswith("JOBS")][0], [n for n in names if n.startswith("QUEUE")][0]
    assert [f["UUID"] for f in found] == [r["vm_uuid"] for r in mediator_order(got.values())]
    for f in found:
        row = got[f["UUID"]]
        assert f[jobs] == unlimited(row["max_jobs_per_sec"]), f
        assert f[queue] == unlimited(row["max_queue_depth"]), f
        assert f["QUARANTINED"].endswith("yes" if row["quarantined"] else "no"), f
        assert f["ERRORS"] == str(row["error_count"]), f
    names, found = table(cli.ok("show-rate-limits", "--pool", "B").out)
    assert [f["UUID"] for f in found] == [ML_TRAIN_B, CUDA_DEV]


def test_show_weights_and_rate_limits_of_an_empty_registry(cli, sim):
    for command in ("show-weights", "show-rate-limits"):
        assert cli.run_json(command) == []
        out = cli.ok(command).out
        assert out.strip() and not re.search(r"[0-9a-f]{8}-", out), out


def test_the_real_weights_of_the_sql_file_are_shown_as_stored(cli, sim):
    old.build_old_db(cli.db, "later-sql-file")
    doc = {d["vm_uuid"]: d for d in cli.run_json("show-weights")}
    assert doc[CUDA_DEV]["weight"] == 2.5 and doc[RENDER_02]["weight"] == 0.25 and doc[RENDER_01]["weight"] == 1
    names, found = table(cli.ok("show-weights").out)
    shown = {f["UUID"]: f["WEIGHT"] for f in found}
    assert shown[CUDA_DEV] == "2.5" and shown[RENDER_02] == "0.25", shown


@pytest.mark.parametrize("columns", [80, 120])
def test_the_new_tables_fit_the_terminal(cli, sim, columns):
    import test_tables
    sim.set_vm(RENDER_01, name_label=test_tables.LONG)
    crowd(cli)
    for args in (["show-weights"], ["show-rate-limits"], ["list-vms", "--quarantined"],
                 ["set-weight", "--vm-uuid", RENDER_01, "--weight", "70"],
                 ["set-rate-limit", "--vm-uuid", RENDER_01, "--rate", "4294967295", "--queue-depth", "4294967295"],
                 ["quarantine-vm", "--vm-uuid", RENDER_01], ["clear-quarantine", "--vm-uuid", RENDER_01]):
        r = test_tables.in_terminal(cli, columns, *args)
        assert r.code == 0 and r.err == "", (args, r)
        uuids = [RENDER_01] if args[0] != "list-vms" else [ML_TRAIN_B]
        test_tables.check_fits(r.out, columns, uuids=uuids, what=" ".join(args))


# ------------------------------------------------------------------------------------------------
# 5. mediator … against the stand-in

ACTIONS = {  # action -> (older name, command code, param1)
    "metrics": ("show-metrics", p.SHOW_METRICS, 0),
    "health": ("show-health", p.SHOW_HEALTH, 0),
    "connections": ("show-connections", p.SHOW_CONNECTIONS, 0),
    "reload": ("reload-config", p.RELOAD_CONFIG, 0),
}
ANSWER_KEYS = {"host", "name", "ok", "status", "text", "error"}


def parse_prometheus(text):
    """[{name, labels, value}] of the samples of a Prometheus text (comments skipped)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$', line)
        assert m, line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append({"name": m.group(1), "labels": labels, "value": float(m.group(3))})
    return out


def since(m, n, count=1):
    """The stand-in's requests after the first `n`, once `count` of them are there: it notes a
    request after answering it, so the client may have finished a moment before. A moment more
    shows any request too many."""
    deadline = time.monotonic() + 5
    while len(m.requests) < n + count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return m.requests[n:]


def without_uptime(text):
    return re.sub(r"^Uptime:.*$", "Uptime:", text, flags=re.M)


@pytest.fixture
def running(mcli, sim, med_dir):
    """Registered VMs and a stand-in mediator on mcli's socket that has loaded them."""
    seed(mcli)
    mcli.run_json("set-rate-limit", "--vm-name", "render-02", "--rate", "12")
    record = os.path.join(med_dir, "record.jsonl")
    with Mediator(mcli.socket, mcli.db, record=record) as m:
        assert p.ask(mcli.socket, p.RELOAD_CONFIG)[0] == p.STATUS_OK
        yield m


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_mediator_asks_the_stand_in_and_shows_its_answer(mcli, running, action):
    _, command, param1 = ACTIONS[action]
    n = len(running.requests)
    doc = mcli.run_json("mediator", action)
    # exactly one request, as the protocol frames it
    reqs = since(running, n)
    assert [r.raw for r in reqs] == [p.encode_request(command, param1, 0)], reqs
    assert reqs[0].outcome == "answered"
    assert isinstance(doc, list) and len(doc) == 1, doc
    a = doc[0]
    assert ANSWER_KEYS <= set(a), a
    assert (a["ok"], a["status"], a["error"]) == (True, 0, None), a
    if action == "metrics":
        assert without_uptime(a["text"]) == without_uptime(reqs[0].text)
    else:
        assert a["text"] == reqs[0].text, a
    if action == "reload":
        assert a["text"] == "Config reloaded: 3 VM(s) updated\n"
    # the table shows the same text
    out = mcli.ok("mediator", action).out
    for line in without_uptime(reqs[0].text).splitlines():
        if line.strip() and not line.startswith("Uptime:"):
            assert line in out.splitlines(), (line, out)


def test_mediator_reload_makes_the_stand_in_load_the_registry(mcli, running):
    mcli.run_json("quarantine-vm", "--vm-name", "cuda-dev")
    mcli.run_json("set-rate-limit", "--vm-name", "render-01", "--rate", "40", "--queue-depth", "8")
    reloads = len(running.reloads())
    doc = mcli.run_json("mediator", "reload")
    assert doc[0]["ok"] is True
    assert len(running.reloads()) == reloads + 1
    loaded = running.loaded
    got = rows(mcli)
    assert list(loaded) == [r["vm_id"] for r in mediator_order(got.values())]
    assert loaded[1]["quarantined"] is True
    assert (loaded[5]["max_jobs_per_sec"], loaded[5]["max_queue_depth"]) == (40, 8)
    assert loaded[3]["max_jobs_per_sec"] == 12
    # the record file says the same
    with open(running.record_path) as f:
        events = [json.loads(l) for l in f]
    last = [e for e in events if e["event"] == "reload"][-1]
    assert last["ok"] is True and last["vms"]["1"]["quarantined"] is True


def test_mediator_metrics_prometheus_has_the_samples(mcli, running):
    n = len(running.requests)
    doc = mcli.run_json("mediator", "metrics", "--prometheus")
    req, = since(running, n)
    assert req.raw == p.encode_request(p.SHOW_METRICS, 1, 0)
    a = doc[0]
    assert a["ok"] is True and a["text"] == req.text
    want = parse_prometheus(req.text)
    assert a["samples"] == want, a["samples"]
    # one per loaded VM, labelled by vm_id (the stand-in's jobs are 10 x vm_id)
    jobs = {s["labels"]["vm_id"]: s["value"] for s in a["samples"] if s["name"] == "vgpu_vm_jobs_total"}
    assert jobs == {"5": 50.0, "3": 30.0, "1": 10.0}, jobs
    total = [s for s in a["samples"] if s["name"] == "vgpu_jobs_total"]
    assert total == [{"name": "vgpu_jobs_total", "labels": {}, "value": 90.0}]
    # without --prometheus: the summary, and no samples
    doc = mcli.run_json("mediator", "metrics")
    assert "samples" not in doc[0] and doc[0]["text"].startswith("=== vGPU Mediator Metrics ===")
    # the table shows the Prometheus text
    out = mcli.ok("mediator", "metrics", "--prometheus").out
    assert 'vgpu_vm_jobs_total{vm_id="5"} 50' in out.splitlines(), out


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_the_older_names_give_the_same_answers(mcli, running, action):
    older, command, param1 = ACTIONS[action]
    for fmt in ([], ["--format", "json"]):
        n = len(running.requests)
        new = mcli.ok("mediator", action, *fmt)
        since(running, n)
        n = len(running.requests)
        was = mcli.ok(older, *fmt)
        assert [r.raw for r in since(running, n)] == [p.encode_request(command, param1, 0)]
        assert without_uptime(was.out) == without_uptime(new.out), (older, was.out, new.out)
        assert was.err == new.err
    if action == "metrics":
        n = len(running.requests)
        was = mcli.run_json(older, "--prometheus")
        req, = since(running, n)
        assert req.raw == p.encode_request(p.SHOW_METRICS, 1, 0)
        assert was[0]["samples"] == parse_prometheus(req.text)


def test_a_missing_socket_says_there_is_no_mediator(mcli, sim):
    assert not os.path.exists(mcli.socket)
    for action in sorted(ACTIONS):
        r = mcli.run("mediator", action)
        # a host without the socket has no mediator: skipped, not an error
        assert r.code == 0, r
        assert "no mediator" in r.out + r.err, r
        doc = mcli.run_json("mediator", action)
        assert len(doc) == 1 and doc[0]["ok"] is False and doc[0]["status"] is None, doc
        assert "no mediator" in doc[0]["error"] and mcli.socket in doc[0]["error"], doc
    assert not os.path.exists(mcli.socket)


def test_the_default_socket_is_the_mediators(cli, sim, med_dir):
    """Without [mediator] admin_socket the socket is /var/vgpu/admin.sock (where no mediator runs here)."""
    if os.path.exists("/var/vgpu/admin.sock"):
        pytest.fail("a mediator socket exists on this machine: /var/vgpu/admin.sock")
    doc = cli.run_json("mediator", "health")
    assert "/var/vgpu/admin.sock" in doc[0]["error"], doc


def test_a_mediator_answering_an_error_status_is_a_failure(mcli, sim, med_dir):
    """The stand-in without its database answers a reload with status 1 (as the mediator does)."""
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db")) as m:
        r = mcli.run("mediator", "reload")
        assert r.code == 1, r
        assert "ERROR: Database not connected" in r.out + r.err, r
        code_doc = mcli.run("mediator", "reload", "--format", "json")
        assert code_doc.code == 1
        a = json.loads(code_doc.out)[0]
        assert (a["ok"], a["status"]) == (False, 1), a
        assert a["text"] == med_db.NOT_CONNECTED and "Database not connected" in a["error"], a
        assert [r.outcome for r in since(m, 0, 2)] == ["answered", "answered"]


def timed(cli, *args):
    t = time.monotonic()
    r = cli.run(*args)
    return r, time.monotonic() - t


@pytest.mark.parametrize("mode", ["dead", "slow"])
def test_a_mediator_that_never_answers_costs_at_most_the_timeout(mcli, sim, med_dir, mode):
    """Dead: accepts, reads, never answers. Slow: answers after 5 s. timeout_s is 1."""
    seed(mcli)
    for action in ("health", "reload", "metrics"):
        with Mediator(mcli.socket, mcli.db, mode=mode, delay=5) as m:
            r, took = timed(mcli, "mediator", action, "--format", "json")
            assert r.code == 1, r
            assert 0.9 <= took < 1.9, (action, took)
            a = json.loads(r.out)[0]
            assert a["ok"] is False and a["status"] is None and a["text"] is None, a
            assert "1 s" in a["error"] and mcli.socket in a["error"], a
            assert len(m.requests) <= 1
    # the table: the same exit status, and what happened
    with Mediator(mcli.socket, mcli.db, mode=mode, delay=5):
        r, took = timed(mcli, "mediator", "connections")
        assert r.code == 1 and took < 1.9, (r, took)
        assert "did not answer" in r.out + r.err, r


def test_the_timeout_comes_from_the_config(mcli, sim, med_dir):
    write_config(mcli, mcli.config, mcli.socket, timeout_s=None)  # the default: 2 s
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db"), mode="dead"):
        r, took = timed(mcli, "mediator", "health")
        assert r.code == 1 and 1.9 <= took < 2.9, (r, took)
    write_config(mcli, mcli.config, mcli.socket, timeout_s=3)
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db"), mode="dead"):
        r, took = timed(mcli, "mediator", "health")
        assert r.code == 1 and 2.9 <= took < 3.9, (r, took)
    # no timeout at all is not a setting
    write_config(mcli, mcli.config, mcli.socket, timeout_s=0)
    r = mcli.run("mediator", "health")
    assert r.code == 2 and "timeout_s" in r.err and mcli.config in r.err, r


def test_a_slow_answer_within_the_timeout_is_read(mcli, sim, med_dir):
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db"), mode="slow", delay=0.5) as m:
        r, took = timed(mcli, "mediator", "health", "--format", "json")
        assert r.code == 0 and 0.5 <= took < 1.5, (r, took)
        assert json.loads(r.out)[0]["text"] == since(m, 0)[0].text


def test_a_dropped_request_is_a_failure(mcli, sim, med_dir):
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db"), mode="drop") as m:
        r, took = timed(mcli, "mediator", "health", "--format", "json")
        assert r.code == 1 and took < 1.5, (r, took)
        a = json.loads(r.out)[0]
        assert a["ok"] is False and a["status"] is None and "without answering" in a["error"], a
        assert [q.outcome for q in since(m, 0)] == ["dropped-mode"]


def test_a_stale_socket_file_is_a_failure_not_an_absent_mediator(mcli, sim):
    """A mediator that crashed leaves its socket file: nobody listens, connecting is refused."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(mcli.socket)
    s.close()
    r, took = timed(mcli, "mediator", "health", "--format", "json")
    assert r.code == 1 and took < 1.5, (r, took)
    a = json.loads(r.out)[0]
    assert a["ok"] is False and "no mediator" not in a["error"] and mcli.socket in a["error"], a


def test_a_full_listen_queue_costs_at_most_the_timeout(mcli, sim, med_dir):
    """A stuck mediator's queue fills; connecting then blocks, and the timeout still holds."""
    with Mediator(mcli.socket, os.path.join(med_dir, "absent.db"), mode="dead", backlog=1):
        held = []
        try:
            for _ in range(4):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                held.append(c)
                try:
                    c.connect(mcli.socket)
                    c.send(p.encode_request(p.SHOW_HEALTH))
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.2)
            r, took = timed(mcli, "mediator", "health")
            assert r.code == 1 and 0.9 <= took < 1.9, (r, took)
        finally:
            for c in held:
                c.close()


class RawMediator(object):
    """A socket that answers each connection (each on a thread of its own) with fixed bytes, byte
    by byte `gap` seconds apart when `gap` is set, then holds it open when `hold` is set; it waits
    `accept_after` seconds before its first accept. Records the request bytes it received."""

    def __init__(self, path, answer, gap=0.0, accept_after=0.0, hold=False):
        self.path, self.answer, self.gap, self.accept_after, self.hold = path, answer, gap, accept_after, hold
        self.received = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve)
        self.thread.daemon = True

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.listener.close()
        self.thread.join(10)

    def serve(self):
        time.sleep(self.accept_after)
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self.handle, args=(conn,))
            t.daemon = True
            t.start()

    def handle(self, conn):
        with conn:
            conn.settimeout(2)
            try:
                self.received.append(conn.recv(64))
            except OSError:
                self.received.append(None)
            pieces = [self.answer] if not self.gap else [self.answer[i:i + 1] for i in range(len(self.answer))]
            try:
                for piece in pieces:
                    if self.stop.is_set():
                        break
                    conn.sendall(piece)
                    if self.gap:
                        time.sleep(self.gap)
                while self.hold and not self.stop.is_set():
                    time.sleep(0.05)
            except OSError:
                pass


def header(status, length, magic=p.MAGIC):
    return struct.pack("<III", magic, status, length)


BAD_ANSWERS = {
    "wrong magic": header(0, 2, magic=0x12345678) + b"ok",
    "short header": header(0, 2)[:7],
    "text shorter than announced": header(0, 100) + b"only this",
    "nothing but a huge length": header(0, 0xFFFFFFFF),
}


@pytest.mark.parametrize("what", sorted(BAD_ANSWERS))
def test_an_answer_outside_the_protocol_is_a_failure(mcli, sim, what):
    with RawMediator(mcli.socket, BAD_ANSWERS[what]) as raw:
        r, took = timed(mcli, "mediator", "health", "--format", "json")
        assert r.code == 1 and took < 1.5, (what, r, took)
        a = json.loads(r.out)[0]
        assert a["ok"] is False and a["error"], (what, a)
        assert raw.received == [p.encode_request(p.SHOW_HEALTH)], raw.received


def test_an_answer_with_another_error_status_is_a_failure_with_its_text(mcli, sim):
    with RawMediator(mcli.socket, header(7, 6) + b"broken"):
        r = mcli.run("mediator", "health", "--format", "json")
        a = json.loads(r.out)[0]
        assert r.code == 1 and (a["ok"], a["status"], a["text"]) == (False, 7, "broken"), (r, a)


def test_an_empty_ok_answer_is_an_answer(mcli, sim):
    with RawMediator(mcli.socket, header(0, 0)):
        doc = mcli.run_json("mediator", "connections")
        assert (doc[0]["ok"], doc[0]["status"], doc[0]["text"]) == (True, 0, ""), doc


def test_an_answer_trickling_in_costs_at_most_the_timeout(mcli, sim):
    """A byte every 0.3 s: each read is quick, the whole exchange is not; the deadline is the whole's."""
    with RawMediator(mcli.socket, header(0, 20) + b"x" * 20, gap=0.3):
        r, took = timed(mcli, "mediator", "health", "--format", "json")
        assert r.code == 1 and 0.9 <= took < 1.9, (r, took)


def test_a_late_accept_then_no_answer_costs_at_most_the_timeout(mcli, sim):
    """Connecting waits 0.9 s (the queue is full until the first accept), then the answer never
    comes: 1 s in all, not 1 s for each step (1.9 s)."""
    with RawMediator(mcli.socket, b"", accept_after=0.9, hold=True) as raw:
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            first.connect(mcli.socket)  # fills the queue of length 0
            first.sendall(p.encode_request(p.SHOW_METRICS))
            r, took = timed(mcli, "mediator", "health")
        finally:
            first.close()
        assert r.code == 1 and 0.9 <= took < 1.7, (r, took)
        assert p.encode_request(p.SHOW_HEALTH) in raw.received, raw.received


def test_mediator_usage_errors(mcli, sim):
    for argv in (["mediator"], ["mediator", "restart"], ["mediator", "health", "--host", "x", "--all-hosts"],
                 ["call", "mediator", "action=restart"], ["call", "mediator"]):
        r = mcli.run(*argv)
        assert r.code == 2 and r.err.startswith(("error: ", "{")), (argv, r)
    assert not os.path.exists(mcli.socket)


# ------------------------------------------------------------------------------------------------
# 6. status warns about values the mediator misreads


def warnings(cli):
    doc = cli.run_json("status")
    return doc.get("warnings", [])  # left out when there is none


def about(warns, uuid):
    return [w for w in warns if uuid in w]


def test_status_warns_about_weights_outside_1_to_100_or_not_whole(cli, sim):
    seed(cli)
    cli.run_json("set-weight", "--vm-name", "cuda-dev", "--weight", "1")  # 1 in an INTEGER column is fine
    assert not [w for w in warnings(cli) if "weight" in w]
    sql(cli.db, "UPDATE vms SET weight = 0.5 WHERE vm_uuid = ?", RENDER_01)
    sql(cli.db, "UPDATE vms SET weight = 150 WHERE vm_uuid = ?", RENDER_02)
    warns = warnings(cli)
    w1, w2 = about(warns, RENDER_01), about(warns, RENDER_02)
    assert len(w1) == 1 and "weight 0.5" in w1[0] and "set-weight" in w1[0], warns
    assert len(w2) == 1 and "weight 150" in w2[0], warns
    assert not about(warns, CUDA_DEV), warns
    for weight in (0, -3, 101, 49.9):
        sql(cli.db, "UPDATE vms SET weight = ? WHERE vm_uuid = ?", weight, RENDER_02)
        w2 = about(warnings(cli), RENDER_02)
        assert len(w2) == 1 and ("weight %s" % weight) in w2[0], (weight, w2)
    out = cli.ok("status").out
    assert RENDER_01 in out and "0.5" in out, out
    # fixed through the command, the warning goes
    cli.run_json("set-weight", "--vm-uuid", RENDER_01, "--weight", "50")
    cli.run_json("set-weight", "--vm-uuid", RENDER_02, "--weight", "100")
    assert not [w for w in warnings(cli) if "weight" in w]


def test_status_warns_about_a_null_weight(cli, sim):
    """A column added by hand without NOT NULL: a NULL weight is read as 0 (then 50) by the mediator."""
    build(cli.db, "two-columns-by-hand")
    mine = about(warnings(cli), RENDER_02)
    assert len(mine) == 1 and "weight" in mine[0] and "set-weight" in mine[0], mine
    assert not [w for w in about(warnings(cli), CUDA_DEV) if "weight" in w]


def test_status_warns_about_the_sql_files_real_weight_of_1(cli, sim):
    old.build_old_db(cli.db, "later-sql-file")
    warns = warnings(cli)
    got = {u: r for u, r in rows(cli).items()}
    for u, row in got.items():
        mine = about(warns, u)
        if row["weight"] == 1.0:
            assert len(mine) == 1 and "REAL" in mine[0] and "1/50" in mine[0], (u, mine)
        elif row["weight"] == 2.5:
            assert len(mine) == 1 and "weight 2.5" in mine[0], (u, mine)
        elif row["weight"] == 0.25:
            assert len(mine) == 1 and "weight 0.25" in mine[0], (u, mine)
    assert len(about(warns, RENDER_01)) == 1
    cli.run_json("set-weight", "--vm-uuid", RENDER_01, "--weight", "50")
    assert not [w for w in about(warnings(cli), RENDER_01) if "weight" in w]
    out = cli.ok("status").out
    assert ML_TRAIN_B in out and "REAL" in out, out


def many(cli, count):
    """ml-train-a registered (A high 100), `count` registrations written straight into the registry
    (vm_ids 2…, pool A, mixed priorities) and one in pool B with vm_id 1: that one comes last in
    the mediator's order."""
    cli.register(ML_TRAIN_A, "A", "high", 100)
    conn = sqlite3.connect(cli.db)
    with conn:
        for i in range(count):
            conn.execute("INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (?, ?, ?, 'A', ?)",
                         (i + 2, str(uuidlib.UUID(int=i + 1, version=4)), "vm-%02d" % i, i % 3))
        conn.execute("INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (1, ?, 'last', 'B', 2)",
                     (str(uuidlib.UUID(int=999, version=4)),))
    conn.close()
    return mediator_order(rows(cli).values())


def test_status_warns_about_controls_past_the_64th_registration(cli, sim, med_dir):
    order = many(cli, 63)
    assert len(order) == 65
    last, sixty_fourth = order[64], order[63]
    assert last["vm_id"] == 1
    assert not [w for w in warnings(cli) if "first 64" in w]
    sql(cli.db, "UPDATE vms SET max_jobs_per_sec = 10 WHERE vm_uuid = ?", last["vm_uuid"])
    sql(cli.db, "UPDATE vms SET quarantined = 1 WHERE vm_uuid = ?", sixty_fourth["vm_uuid"])
    warns = warnings(cli)
    mine = about(warns, last["vm_uuid"])
    assert len(mine) == 1 and "65" in mine[0] and "rate limit" in mine[0], warns
    assert not about(warns, sixty_fourth["vm_uuid"]), warns
    # what a mediator does with that file: the 65th is not loaded, the 64th's quarantine is
    sock = os.path.join(med_dir, "m.sock")
    with Mediator(sock, cli.db) as m:
        assert p.ask(sock, p.RELOAD_CONFIG) == (0, "Config reloaded: 64 VM(s) updated\n")
        assert 1 not in m.loaded and m.loaded[sixty_fourth["vm_id"]]["quarantined"] is True
    # a quarantine past the 64th is named as such
    sql(cli.db, "UPDATE vms SET max_jobs_per_sec = 0, quarantined = 1 WHERE vm_uuid = ?", last["vm_uuid"])
    mine = about(warnings(cli), last["vm_uuid"])
    assert len(mine) == 1 and "quarantine" in mine[0], mine
    # a weight past the 64th is read on every request: no warning
    sql(cli.db, "UPDATE vms SET quarantined = 0, weight = 90 WHERE vm_uuid = ?", last["vm_uuid"])
    assert not about(warnings(cli), last["vm_uuid"])


def test_status_warning_past_the_64th_in_the_table(cli, sim):
    order = many(cli, 63)
    sql(cli.db, "UPDATE vms SET max_queue_depth = 3 WHERE vm_uuid = ?", order[64]["vm_uuid"])
    out = " ".join(cli.ok("status").out.split())  # a long warning may be wrapped
    assert re.search(re.escape(order[64]["vm_uuid"]) + r"[^⚠]*registration 65 [^⚠]*rate limit", out), out

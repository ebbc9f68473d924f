"""Hostile input (issue 12, part 4): values from XAPI that are not valid Unicode or are huge, and
registry files that are corrupt, truncated, not a database, from a newer schema, or locked by
another process for longer than `lock_timeout_s`.

Each is either handled, or refused with an error that names what is wrong (the VM and field, or
the file) under the documented code and exit status (SPEC §3); a refusal writes nothing: the
registry's directory (every file's bytes and mtime) and XAPI's VM, pool and host records are the
same afterwards, and no migration or backup happens. No command may panic.

Expected values come from the sample pool, the simulator's records and the registry file read
with sqlite3, never from the command under test. Random bytes are seeded (the seed is printed).
"""

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import (
    CUDA_DEV, DMA, NOT_REAL_VMS, REAL_VMS, RENDER_01, RENDER_02, device_line,
    fixture_uuid, parse_error_doc,
)

MASTER = fixture_uuid("sample_pool.json", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool.json", "xcp-lab-02", kind="hosts")
SEED = int(os.environ.get("VGPU_HOSTILE_SEED", "1207"))
LOCK_TIMEOUT_S = 2
# A refusal after the lock timeout must come well before this (a loaded CI machine included).
LOCK_BOUND_S = LOCK_TIMEOUT_S + 30

# ------------------------------------------------------------------------------------------------
# What must not change


def dir_state(path):
    """name -> (sha256, size, mtime_ns, mode) of every file in the registry's directory."""
    out = {}
    if not os.path.isdir(path):
        return out
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        st = os.stat(p)
        with open(p, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        out[name] = (digest, st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def xapi_state(sim):
    """Every VM's name, platform and other_config, and the pool's and hosts' other_config."""
    vms = {}
    for u in list(REAL_VMS) + NOT_REAL_VMS:
        rec = sim.get_vm(u)
        vms[u] = (rec["name_label"], dict(rec["platform"]), dict(rec["other_config"]))
    hosts = {h: dict(sim.host_other_config(h)) for h in (MASTER, MEMBER)}
    return vms, dict(sim.pool_other_config()), hosts


def no_panic(r):
    assert r.code in (0, 1, 2), "exit %d (a panic exits 101)\n%s" % (r.code, r.err)
    assert "panicked" not in r.err and "RUST_BACKTRACE" not in r.err, r.err


def run_checked(cli, *argv, **kw):
    r = cli.run(*argv, **kw)
    no_panic(r)
    return r


def json_refusal(cli, argv, code, **kw):
    """Runs argv with --format json; it must fail with `code`: (exit status, error object)."""
    r = run_checked(cli, *(tuple(argv) + ("--format", "json")), **kw)
    assert r.code != 0, "expected %s from %s, got success:\n%s" % (code, argv, r.out[:2000])
    err = parse_error_doc(r.err)
    assert err["code"] == code, (argv, r.err)
    assert r.code == (2 if code == "INVALID_ARGUMENT" else 1), (argv, r.code)
    return r, err


# ------------------------------------------------------------------------------------------------
# 1. Values from XAPI that are not valid Unicode
#
# JSON-RPC carries JSON text, where a string can hold an escaped UTF-16 surrogate with no partner
# ("\udc80"): no Unicode character, so no Rust string. The simulator stores and answers such
# strings exactly as Python's json module does (the escape, unpaired).

LONE = "\udc80"

# (id, how to plant it on the VM, the words the error must use for the field)
BAD_TEXT = [
    ("name_label", lambda sim, u: sim.set_vm(u, name_label="render" + LONE + "-01"), ["name_label"]),
    ("other_config_value",
     lambda sim, u: sim.set_other_config_key("VM", u, "xo:note", "caf" + LONE), ["other_config", "xo:note"]),
    ("other_config_key",
     lambda sim, u: sim.set_other_config_key("VM", u, "xo:" + LONE, "x"), ["other_config"]),
    ("device_model_args",
     lambda sim, u: sim.set_platform_key(u, DMA, "-name " + LONE + " " + device_line("A", "high", 1)),
     ["platform", DMA]),
]

# every command that reads the VM from XAPI
XAPI_COMMANDS = [
    ("scan-vms",),
    ("status",),
    ("show-vm", "--vm-uuid", RENDER_01),
    ("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"),
    ("sync", "--all"),
    ("sync", "--vm-uuid", RENDER_01),
    ("remove-vm", "--vm-uuid", RENDER_01),
    ("adopt", "--all"),
]


@pytest.mark.parametrize("field,plant,words", BAD_TEXT, ids=[b[0] for b in BAD_TEXT])
def test_a_value_that_is_not_unicode_is_refused_naming_the_vm_and_field(cli, sim, field, plant, words):
    cli.register(RENDER_01, "A", "high", 1)
    plant(sim, RENDER_01)
    db_dir = os.path.dirname(cli.db)
    before_files, before_xapi = dir_state(db_dir), xapi_state(sim)
    for argv in XAPI_COMMANDS:
        r, err = json_refusal(cli, argv, "XAPI_ERROR")
        assert RENDER_01 in err["message"], (argv, err)
        for w in words:
            assert w in err["message"], (argv, w, err)
        assert "not valid Unicode" in err["message"], (argv, err)
        # the message is one readable line, not a dump of the answer
        assert len(err["message"]) < 600, (argv, len(err["message"]))
        assert dir_state(db_dir) == before_files, argv
        assert xapi_state(sim) == before_xapi, argv
    # in table form: one error line naming the VM
    r = run_checked(cli, "scan-vms")
    assert r.code == 1 and r.err.startswith("error: ") and RENDER_01 in r.err.splitlines()[0], r.err
    # registering another VM reads only that VM: unaffected
    r = run_checked(cli, "register-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--priority", "low")
    assert r.code == 0, r
    assert cli.dma(RENDER_02) == device_line("B", "low", 2)
    # the registry alone still answers
    rows = {r["vm_uuid"]: r for r in cli.run_json("list-vms")}
    assert sorted(rows) == sorted([RENDER_01, RENDER_02])


def test_a_value_that_is_not_unicode_on_another_vm_is_named_too(cli, sim):
    """The VM with the bad value is named even when the command was about the whole pool."""
    cli.register(RENDER_01, "A", "high", 1)
    sim.set_vm(CUDA_DEV, name_label="gpu" + LONE)
    for argv in [("scan-vms",), ("status",), ("sync", "--all")]:
        r, err = json_refusal(cli, argv, "XAPI_ERROR")
        assert CUDA_DEV in err["message"] and "name_label" in err["message"], (argv, err)
        assert RENDER_01 not in err["message"], err


# ------------------------------------------------------------------------------------------------
# 2. Huge values from XAPI

HUGE_TOKEN = "-append " + "x" * (16 * 1024 * 1024)


def test_a_16_mb_device_model_args_is_handled_and_kept(cli, sim):
    """Every other token is kept, whatever its size (SPEC §3)."""
    sim.set_platform_key(RENDER_01, DMA, HUGE_TOKEN)
    cli.register(RENDER_01, "A", "high", 1)
    doc = cli.run_json("scan-vms")
    reg = {v["vm_uuid"]: v for v in doc["registered"]}
    assert reg[RENDER_01]["status"] == "configured"
    assert reg[RENDER_01]["device_model_args"] == HUGE_TOKEN + " " + device_line("A", "high", 1)
    cli.run_json("set-pool", "--vm-uuid", RENDER_01, "--pool", "B")
    assert cli.dma(RENDER_01) == HUGE_TOKEN + " " + device_line("B", "high", 1)


def test_a_1_mb_name_is_refused_for_the_registry_and_kept_in_xapi(cli, sim):
    huge = "n" * (1024 * 1024)
    cli.register(CUDA_DEV, "B", "low", 1)
    sim.set_vm(RENDER_02, name_label=huge)
    before_files, before_xapi = dir_state(os.path.dirname(cli.db)), xapi_state(sim)
    r, err = json_refusal(cli, ("register-vm", "--vm-uuid", RENDER_02, "--pool", "A", "--priority", "low"),
                          "INVALID_ARGUMENT")
    assert "255" in err["message"] and len(err["message"]) < 2000, err["message"][:300]
    assert dir_state(os.path.dirname(cli.db)) == before_files and xapi_state(sim) == before_xapi
    # with a name chosen it registers; the pool view lists the VM with its whole name
    cli.run_json("register-vm", "--vm-uuid", RENDER_02, "--vm-name", "short", "--pool", "A", "--priority", "low")
    doc = cli.run_json("scan-vms")
    assert {v["vm_uuid"]: v for v in doc["registered"]}[RENDER_02]["vm_name"] == "short"
    # a registered VM renamed to 1 MB in XAPI: sync keeps a name the registry can store
    cli.register(RENDER_01, "A", "high", 7)
    sim.set_vm(RENDER_01, name_label=huge)
    r = run_checked(cli, "sync", "--all", "--format", "json")
    assert r.code == 0, r
    names = {row[1]: row[2] for row in cli.dump()}
    assert names == {CUDA_DEV: "cuda-dev", RENDER_01: "render-01", RENDER_02: "short"}
    assert sim.get_vm(RENDER_01)["name_label"] == huge


def test_a_vm_with_100k_other_config_keys_is_handled_and_keeps_them(cli, sim):
    many = {"k%06d" % i: "v%d" % i for i in range(100000)}
    sim.set_vm(RENDER_01, other_config=dict(many))
    cli.register(RENDER_01, "A", "high", 1)
    cli.run_json("set-pool", "--vm-uuid", RENDER_01, "--pool", "B")
    oc = sim.vm_other_config(RENDER_01)
    assert {k: v for k, v in oc.items() if k in many} == many
    assert json.loads(oc["vgpu-registry"])["pool"] == "B"
    doc = cli.run_json("scan-vms")
    assert {v["vm_uuid"]: v for v in doc["registered"]}[RENDER_01]["status"] == "configured"
    cli.run_json("remove-vm", "--vm-uuid", RENDER_01)
    oc = sim.vm_other_config(RENDER_01)
    assert oc == many


# ------------------------------------------------------------------------------------------------
# 3. Registry files that are damaged, foreign or from a newer schema


def make_registry(cli):
    """A registry of two VMs, written by the tool and closed (no -wal/-shm left)."""
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(CUDA_DEV, "B", "low", 2)
    for side in ("-wal", "-shm"):
        assert not os.path.exists(cli.db + side)
    with open(cli.db, "rb") as f:
        return f.read()


def vms_root_page(path):
    # read-write, so that closing removes the -wal and -shm files the read created
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'vms'").fetchone()[0]
        return page_size, root
    finally:
        conn.close()


def _garbage(n, salt):
    rnd = random.Random("%d-%s" % (SEED, salt))
    return bytes(rnd.getrandbits(8) for _ in range(n))


def damage(kind, data, page_size, vms_root):
    if kind == "garbage-header":
        return _garbage(100, kind) + data[100:]
    if kind == "garbage-middle-pages":
        return data[:page_size] + _garbage(len(data) - 2 * page_size, kind) + data[-page_size:]
    if kind == "garbage-vms-page":
        start = (vms_root - 1) * page_size
        return data[:start] + _garbage(page_size, kind) + data[start + page_size:]
    if kind == "truncated-half":
        return data[:len(data) // 2]
    if kind == "truncated-100-bytes":
        return data[:100]
    if kind == "text-file":
        return b"# vgpu registry\nA render-01 high 1\nB cuda-dev low 2\n" * 20
    raise ValueError(kind)


DAMAGE = ["garbage-header", "garbage-middle-pages", "garbage-vms-page", "truncated-half", "truncated-100-bytes",
          "text-file"]

# every command kind: reads, writes, sync, adopt, rebuild --dry-run
DB_COMMANDS = [
    ("list-vms",),
    ("list-pools",),
    ("show-vm", "--vm-uuid", RENDER_01),
    ("status",),
    ("scan-vms",),
    ("register-vm", "--vm-uuid", RENDER_02, "--pool", "A", "--priority", "low"),
    ("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"),
    ("set-weight", "--vm-uuid", RENDER_01, "--weight", "7"),
    ("remove-vm", "--vm-uuid", CUDA_DEV),
    ("sync", "--all"),
    ("adopt", "--all", "--dry-run"),
    ("call", "list"),
]


def assert_refused_untouched(cli, sim, argv, words, env=None):
    """argv fails with DATABASE_ERROR naming the registry and one of `words`; nothing changes."""
    db_dir = os.path.dirname(cli.db)
    before_files, before_xapi = dir_state(db_dir), xapi_state(sim)
    r, err = json_refusal(cli, argv, "DATABASE_ERROR", env=env)
    assert cli.db in err["message"], (argv, err)
    assert any(w in err["message"] for w in words), (argv, words, err)
    assert err["details"].get("path") == cli.db, (argv, err)
    assert "panicked" not in err["message"]
    assert dir_state(db_dir) == before_files, (argv, sorted(dir_state(db_dir)), sorted(before_files))
    assert xapi_state(sim) == before_xapi, argv
    return err


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_registry_is_refused_by_every_command_and_left_untouched(cli, sim, kind):
    data = make_registry(cli)
    page_size, vms_root = vms_root_page(cli.db)
    print("seed", SEED, "pages", len(data) // page_size, "vms root page", vms_root)
    with open(cli.db, "wb") as f:
        f.write(damage(kind, data, page_size, vms_root))
    words = ["not a database", "malformed", "damaged", "corrupt"]
    for argv in DB_COMMANDS:
        assert_refused_untouched(cli, sim, argv, words)
    # the plain error line names the file
    r = run_checked(cli, "list-vms")
    assert r.code == 1 and r.err.startswith("error: database %s: " % cli.db), r.err


@pytest.mark.parametrize("kind", ["garbage-header", "truncated-half", "text-file"])
def test_a_damaged_replica_is_refused_by_refresh_and_left_untouched(cli, sim, kind):
    """On a pool member, `refresh` rewrites the replica in place: a file it cannot read as a
    registry is reported, not overwritten (it may be the mediator's or an older tool's)."""
    make_registry(cli)  # publishes the mirror the member refreshes from
    replica_dir = os.path.join(str(cli.tmp), "member")
    os.makedirs(replica_dir)
    replica = os.path.join(replica_dir, "vgpu_config.db")
    shutil.copyfile(cli.db, replica)
    page_size, vms_root = vms_root_page(replica)
    with open(cli.db, "rb") as f:
        data = f.read()
    with open(replica, "wb") as f:
        f.write(damage(kind, data, page_size, vms_root))
    cli.use_db(replica)
    assert_refused_untouched(cli, sim, ("refresh",), ["not a database", "malformed", "damaged", "corrupt"],
                             env={"VGPU_HOST_UUID": MEMBER})


def test_a_zero_byte_registry_reads_as_empty_and_a_write_starts_it(cli, sim):
    """SQLite reads an empty file as an empty database, and a registry file is empty between
    its creation and its first commit (two first writers may meet there), so an empty file is
    no registry yet, as a missing one: a read shows nothing and leaves the file as it is, a
    write creates the registry in it."""
    os.makedirs(os.path.dirname(cli.db))
    open(cli.db, "wb").close()
    os.chmod(cli.db, 0o600)
    db_dir = os.path.dirname(cli.db)
    before = dir_state(db_dir)
    assert cli.run_json("list-vms") == []
    assert run_checked(cli, "status").code == 0
    shown = run_checked(cli, "show-vm", "--vm-uuid", RENDER_01, "--format", "json")
    assert shown.code == 1 and parse_error_doc(shown.err)["code"] == "NOT_REGISTERED"
    assert dir_state(db_dir) == before, "a read wrote the empty registry file"
    cli.register(RENDER_01, "A", "high", 1)
    assert [r[1] for r in cli.dump()] == [RENDER_01]


def test_a_registry_from_a_newer_schema_is_refused_everywhere_and_left_untouched(cli, sim):
    make_registry(cli)
    conn = sqlite3.connect(cli.db)
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    assert current >= 1
    conn.execute("PRAGMA user_version = %d" % (current + 1))
    conn.commit()
    conn.close()
    for argv in DB_COMMANDS + [("rebuild", "--dry-run"), ("rebuild",)]:
        err = assert_refused_untouched(cli, sim, argv, ["newer"])
        assert str(current + 1) in err["message"], (argv, err)
    # a member's replica from a newer schema is not rewritten by an older refresh either
    assert_refused_untouched(cli, sim, ("refresh",), ["newer"], env={"VGPU_HOST_UUID": MEMBER})


# ------------------------------------------------------------------------------------------------
# 4. A registry locked by another process for longer than lock_timeout_s


@pytest.fixture
def short_lock(cli, tmp_path):
    config = tmp_path / "vgpu.conf"
    config.write_text("lock_timeout_s = %d\n" % LOCK_TIMEOUT_S)
    cli.env["VGPU_CONFIG"] = str(config)
    return config


HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
if sys.argv[2] == "exclusive-mode":
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE vms SET vm_name = 'uncommitted'")
sys.stdout.write("holding\n")
sys.stdout.flush()
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""


class Holder(object):
    """Another process holding the registry's lock, with an uncommitted change that nobody may
    see. (A process of its own: POSIX locks are per process, and this one reads the file.)"""

    def __init__(self, path, exclusive_mode=False):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, path,
                                      "exclusive-mode" if exclusive_mode else "normal"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        assert line == b"holding\n", line

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            assert self.proc.wait(timeout=60) == 0


def assert_locked_refusal(cli, sim, argv, env=None, files=None):
    db_dir = os.path.dirname(cli.db)
    before_files = files() if files else dir_state(db_dir)
    before_xapi = xapi_state(sim)
    started = time.monotonic()
    r, err = json_refusal(cli, argv, "DATABASE_ERROR", env=env)
    took = time.monotonic() - started
    assert "database is locked" not in r.err, (argv, r.err)
    assert err["message"].startswith("database %s: still locked by another process after %d s"
                                     % (cli.db, LOCK_TIMEOUT_S)), (argv, err)
    assert err["details"] == {"path": cli.db, "locked": True, "waited_s": LOCK_TIMEOUT_S}, (argv, err)
    assert took < LOCK_BOUND_S, (argv, took)
    assert (files() if files else dir_state(db_dir)) == before_files, argv
    assert xapi_state(sim) == before_xapi, argv


WRITES = [
    ("register-vm", "--vm-uuid", RENDER_02, "--pool", "A", "--priority", "low"),
    ("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"),
    ("remove-vm", "--vm-uuid", CUDA_DEV),
    ("sync", "--all"),
]
READS = [("list-vms",), ("show-vm", "--vm-uuid", RENDER_01), ("status",), ("scan-vms",), ("call", "list")]


def drift_render_01(sim):
    """RENDER_01's device lost in XAPI, so `sync --all` has something to write."""
    sim.set_platform_key(RENDER_01, DMA, "-rtc base=localtime")


def test_a_write_lock_held_past_the_timeout_refuses_writes_and_reads_see_committed_rows(cli, sim, short_lock):
    make_registry(cli)
    drift_render_01(sim)
    committed = cli.dump()
    holder = Holder(cli.db)
    try:
        # the holder's -wal and -shm belong to it: the registry file itself must not change
        for argv in WRITES:
            assert_locked_refusal(cli, sim, argv, files=lambda: dir_state_of(cli.db))
        # WAL readers do not wait for a writer: they see what was committed, not the holder's change
        rows = cli.run_json("list-vms")
        assert sorted(r["vm_name"] for r in rows) == ["cuda-dev", "render-01"]
        for argv in READS:
            r = run_checked(cli, *argv)
            assert r.code == 0, (argv, r)
            assert "uncommitted" not in r.out
    finally:
        holder.release()
    assert cli.dump() == committed


def dir_state_of(db):
    """The registry file alone (another process's open -wal/-shm are its own)."""
    st = os.stat(db)
    with open(db, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns


def test_an_exclusive_lock_past_the_timeout_refuses_every_command(cli, sim, short_lock):
    """A holder in exclusive locking mode keeps readers out too: every command reports the lock
    (never SQLite's raw "database is locked") after lock_timeout_s, and changes nothing."""
    make_registry(cli)
    drift_render_01(sim)
    committed = cli.dump()
    holder = Holder(cli.db, exclusive_mode=True)
    try:
        for argv in READS + WRITES + [("adopt", "--all", "--dry-run")]:
            assert_locked_refusal(cli, sim, argv, files=lambda: dir_state_of(cli.db))
    finally:
        holder.release()
    assert cli.dump() == committed


OLD_TOOL_SCHEMA = """
CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY, pool_name TEXT NOT NULL, description TEXT,
                    enabled INTEGER DEFAULT 1, created_at TIMESTAMP, updated_at TIMESTAMP);
INSERT INTO pools (pool_id, pool_name) VALUES ('A', 'Pool A'), ('B', 'Pool B');
CREATE TABLE vms (vm_id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT UNIQUE NOT NULL, vm_name TEXT,
                  pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL,
                  created_at TIMESTAMP, updated_at TIMESTAMP);
INSERT INTO vms (vm_id, vm_uuid, vm_name, pool_id, priority) VALUES (1, '%s', 'render-01', 'A', 2),
                                                                    (2, '%s', 'cuda-dev', 'B', 0);
""" % (RENDER_01, CUDA_DEV)


def test_an_older_tools_registry_locked_past_the_timeout_is_neither_migrated_nor_backed_up(cli, sim, short_lock):
    """The older tools' file uses a rollback journal: its writer's lock keeps every reader out.
    No command may migrate it, back it up, or answer with SQLite's raw "database is locked"."""
    os.makedirs(os.path.dirname(cli.db))
    conn = sqlite3.connect(cli.db)
    conn.executescript(OLD_TOOL_SCHEMA)
    conn.close()
    os.chmod(cli.db, 0o600)
    with open(cli.db, "rb") as f:
        original = f.read()
    holder = Holder(cli.db)
    try:
        for argv in [("list-vms",), ("status",), ("show-vm", "--vm-uuid", RENDER_01),
                     ("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"), ("sync", "--all")]:
            # the holder's journal is its own: the registry file and the absence of backups count
            assert_locked_refusal(cli, sim, argv, files=lambda: (dir_state_of(cli.db), backups(cli.db)))
    finally:
        holder.release()
    with open(cli.db, "rb") as f:
        assert f.read() == original
    assert backups(cli.db) == []


def backups(db):
    d = os.path.dirname(db)
    return sorted(n for n in os.listdir(d) if n.endswith(".bak") or ".bak." in n)


def test_a_replica_locked_past_the_timeout_is_reported_by_refresh(cli, sim, short_lock):
    make_registry(cli)
    replica_dir = os.path.join(str(cli.tmp), "member")
    os.makedirs(replica_dir)
    primary = cli.db
    cli.use_db(os.path.join(replica_dir, "vgpu_config.db"))
    r = run_checked(cli, "refresh", "--format", "json", env={"VGPU_HOST_UUID": MEMBER})
    assert r.code == 0, r
    replica_rows = cli.dump()
    # a change on the master: the member's replica is now behind
    cli.use_db(primary)
    cli.register(RENDER_02, "A", "low", 3)
    cli.use_db(os.path.join(replica_dir, "vgpu_config.db"))
    host_before = dict(sim.host_other_config(MEMBER))
    holder = Holder(cli.db, exclusive_mode=True)
    try:
        assert_locked_refusal(cli, sim, ("refresh",), env={"VGPU_HOST_UUID": MEMBER},
                              files=lambda: dir_state_of(cli.db))
    finally:
        holder.release()
    assert cli.dump() == replica_rows
    assert sim.host_other_config(MEMBER) == host_before


def test_a_write_waiting_for_a_lock_released_in_time_goes_through(cli, sim, short_lock, tmp_path):
    """The refusal is about a lock held past the timeout: one released within it is waited for."""
    make_registry(cli)
    config = tmp_path / "patient.conf"
    config.write_text("lock_timeout_s = 60\n")
    holder = Holder(cli.db, exclusive_mode=True)
    timer = threading.Timer(1.5, holder.release)
    timer.start()
    try:
        r = run_checked(cli, "set-pool", "--vm-uuid", RENDER_01, "--pool", "B", "--config", str(config))
    finally:
        timer.join()
    assert r.code == 0, r
    assert {row[1]: row[3] for row in cli.dump()}[RENDER_01] == "B"

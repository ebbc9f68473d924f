"""Files (issue 12, part 1): the registry, its -wal and -shm files, every backup (pre-migration,
pre-rebuild, pre-failover) and a member's replica written by `refresh` are created 0600, and
every directory the tool creates 0700, whatever the umask (000 and 022 here); an existing
registry that other users may read is reported by `status`.

The modes are read with os.stat from the files the command left (or, for -wal and -shm, while
the command that created them still runs); the expected modes come from the contract.
"""

import json
import os
import sqlite3
import stat
import subprocess
import time

import pytest

from conftest import CUDA_DEV, RENDER_01, RENDER_02, fixture_uuid

MASTER = fixture_uuid("sample_pool.json", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool.json", "xcp-lab-02", kind="hosts")
GENERATION_KEY = "vgpu-registry:generation"
UMASKS = [0o000, 0o022]


def mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def with_umask(mask):
    def set_it():
        os.umask(mask)
    return set_it


def run_under(cli, mask, *argv, **kw):
    r = cli.run(*argv, preexec_fn=with_umask(mask), **kw)
    assert r.code == 0, "vgpu-admin %s -> %d\n%s\n%s" % (argv, r.code, r.out, r.err)
    return r


def assert_private_tree(top, db_dir):
    """Every directory from `top` down to `db_dir` (all created by the tool) is 0700."""
    d = str(db_dir)
    while True:
        assert mode(d) == 0o700, (d, oct(mode(d)))
        if d == str(top):
            break
        d = os.path.dirname(d)


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_a_new_registry_and_its_directories_are_private(cli, sim, tmp_path, mask):
    top = tmp_path / "etc"
    db = top / "vgpu" / "sub" / "vgpu_config.db"
    cli.use_db(db)
    run_under(cli, mask, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")
    assert mode(db) == 0o600, oct(mode(db))
    assert_private_tree(top, db.parent)
    # later writes keep it so
    run_under(cli, mask, "set-pool", "--vm-uuid", RENDER_01, "--pool", "B")
    assert mode(db) == 0o600
    assert sorted(os.listdir(str(db.parent))) == ["vgpu_config.db"]


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_the_wal_and_shm_files_the_tool_creates_are_private(cli, sim, tmp_path, mask):
    """Seen while the writer that created them runs: XAPI is slowed down so that the write
    transaction is open for a while."""
    db = tmp_path / "reg" / "vgpu_config.db"
    cli.use_db(db)
    run_under(cli, mask, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")
    assert not os.path.exists(str(db) + "-wal"), "a clean close leaves no -wal"
    sim.inject_fault("*", times=-1, latency_ms=400)
    p = subprocess.Popen([cli.binary, "register-vm", "--vm-uuid", CUDA_DEV, "--pool", "B", "--priority", "low"],
                         env=cli.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=with_umask(mask))
    seen = {}
    try:
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline and len(seen) < 2:
            for side in ("-wal", "-shm"):
                try:
                    seen[side] = mode(str(db) + side)
                except FileNotFoundError:
                    pass
            time.sleep(0.01)
        out, err = p.communicate(timeout=120)
    finally:
        sim.clear_faults()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert seen == {"-wal": 0o600, "-shm": 0o600}, seen


def old_tools_registry(path):
    os.makedirs(os.path.dirname(str(path)))
    conn = sqlite3.connect(str(path))
    conn.executescript("CREATE TABLE vms (vm_id INTEGER NOT NULL UNIQUE, vm_uuid TEXT UNIQUE NOT NULL, "
                       "vm_name TEXT, pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL);"
                       "INSERT INTO vms VALUES (4, '%s', 'render-01', 'A', 2);" % RENDER_01)
    conn.close()
    os.chmod(str(path), 0o600)


def backups(db, tag):
    d = os.path.dirname(str(db))
    return [os.path.join(d, n) for n in os.listdir(d) if ".%s" % tag in n and ".bak" in n]


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_the_pre_migration_backup_is_private(cli, sim, tmp_path, mask):
    db = tmp_path / "old" / "vgpu_config.db"
    old_tools_registry(db)
    cli.use_db(db)
    run_under(cli, mask, "set-pool", "--vm-uuid", RENDER_01, "--pool", "B")
    found = backups(db, "pre-v")
    assert len(found) == 1, os.listdir(str(db.parent))
    assert mode(found[0]) == 0o600 and mode(db) == 0o600


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_the_pre_rebuild_backup_is_private(cli, sim, tmp_path, mask):
    db = tmp_path / "reg" / "vgpu_config.db"
    cli.use_db(db)
    # vm_id 10: no VM of the sample pool carries it, so the adoption after the rebuild skips none
    run_under(cli, mask, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high",
              "--vm-id", "10")
    run_under(cli, mask, "rebuild", "--format", "json")
    found = backups(db, "pre-rebuild")
    assert len(found) == 1, os.listdir(str(db.parent))
    assert mode(found[0]) == 0o600 and mode(db) == 0o600


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_the_pre_failover_backup_is_private(cli, sim, tmp_path, mask):
    """A primary behind the pool's generation (another master published meanwhile) is copied
    aside before it is rebuilt from the mirror, by the master's first command."""
    db = tmp_path / "reg" / "vgpu_config.db"
    cli.use_db(db)
    run_under(cli, mask, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")
    generation = int(sim.pool_other_config()[GENERATION_KEY])
    sim.set_other_config_key("pool", None, GENERATION_KEY, str(generation + 1))
    run_under(cli, mask, "list-vms", env={"VGPU_HOST_UUID": MASTER})
    found = backups(db, "pre-failover")
    assert len(found) == 1, os.listdir(str(db.parent))
    assert mode(found[0]) == 0o600 and mode(db) == 0o600


@pytest.mark.parametrize("mask", UMASKS, ids=["umask000", "umask022"])
def test_a_members_replica_written_by_refresh_is_private(cli, sim, tmp_path, mask):
    cli.register(RENDER_01, "A", "high", 1)  # publishes the mirror
    top = tmp_path / "member-etc"
    replica = top / "vgpu" / "vgpu_config.db"
    cli.use_db(replica)
    r = run_under(cli, mask, "refresh", "--format", "json", env={"VGPU_HOST_UUID": MEMBER})
    assert json.loads(r.out)["vms"] == 1, r.out
    assert mode(replica) == 0o600, oct(mode(replica))
    assert_private_tree(top, replica.parent)
    assert [row[1] for row in cli.dump()] == [RENDER_01]
    # a later refresh in place keeps it so
    cli.use_db(tmp_path / "registry" / "vgpu_config.db")
    cli.register(RENDER_02, "B", "low", 2)
    cli.use_db(replica)
    run_under(cli, mask, "refresh", env={"VGPU_HOST_UUID": MEMBER})
    assert mode(replica) == 0o600
    assert sorted(row[1] for row in cli.dump()) == sorted([RENDER_01, RENDER_02])


def test_an_existing_directory_and_registry_keep_the_modes_they_have(cli, sim, tmp_path):
    """The tool makes what it creates private; it does not chmod what the administrator made
    (the directory may be shared with the mediator's other files). A loose registry is reported
    instead (below)."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(str(d), 0o755)
    cli.use_db(d / "vgpu_config.db")
    run_under(cli, 0o022, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")
    assert mode(d) == 0o755 and mode(d / "vgpu_config.db") == 0o600


EXPOSED = [0o644, 0o640, 0o604, 0o666, 0o660]


@pytest.mark.parametrize("loose", EXPOSED, ids=["%04o" % m for m in EXPOSED])
def test_status_reports_a_registry_other_users_may_read_or_write(cli, sim, loose):
    cli.register(RENDER_01, "A", "high", 3)
    assert "warnings" not in cli.run_json("status"), "a private registry warns of nothing"
    os.chmod(cli.db, loose)
    doc = cli.run_json("status")
    warned = [w for w in doc.get("warnings", []) if cli.db in w]
    assert warned == ["the registry %s is open to other users (mode %04o); make it private: chmod 600 %s"
                      % (cli.db, loose, cli.db)], doc.get("warnings")
    out = cli.ok("status").out
    assert "⚠ the registry %s is open to other users (mode %04o)" % (cli.db, loose) in out, out
    # reporting is all status does: the mode is left to the administrator
    assert mode(cli.db) == loose
    os.chmod(cli.db, 0o600)
    assert "warnings" not in cli.run_json("status")


def test_status_through_the_plugin_api_reports_it_too(cli, sim):
    cli.register(RENDER_01, "A", "high", 3)
    os.chmod(cli.db, 0o644)
    r = cli.ok("call", "status")
    doc = json.loads(r.out)
    assert any("open to other users (mode 0644)" in w for w in doc.get("warnings", [])), doc

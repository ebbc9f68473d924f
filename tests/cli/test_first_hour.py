"""What a new administrator meets in the first hour: reading without write access, a registry
locked by another process."""

import os
import re
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import CUDA_DEV, RENDER_01, parse_error_doc

NOBODY = 65534


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def shared_dir():
    """A directory anyone may read (pytest's own tmp directory is root's alone)."""
    d = tempfile.mkdtemp(prefix="vgpu-read-")
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", d], check=True)


@pytest.fixture
def open_socket(sim):
    """The simulator's socket reachable by any user, as dom0's xapi socket is by root only; the
    test is about the registry's permissions, not XAPI's."""
    d = os.path.dirname(sim.socket_path)
    mode = stat.S_IMODE(os.stat(d).st_mode)
    os.chmod(d, 0o755)
    os.chmod(sim.socket_path, 0o777)
    yield sim
    os.chmod(d, mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_reading_commands_work_for_a_user_who_may_only_read(cli, open_socket, shared_dir):
    db = os.path.join(shared_dir, "vgpu_config.db")
    cli.use_db(db)
    cli.env["VGPU_CONFIG"] = os.path.join(shared_dir, "absent.conf")
    cli.register(RENDER_01, "A", "high", 3)
    os.chmod(db, 0o644)
    for leftover in (db + "-wal", db + "-shm"):
        assert not os.path.exists(leftover), "a clean close leaves no WAL files"
    before = sorted(os.listdir(shared_dir))
    for args in (["list-vms"], ["show-vm", "--vm-uuid", RENDER_01], ["scan-vms"], ["status"],
                 ["list-pools"], ["show-pool", "--pool", "A"]):
        r = cli.run(*args, preexec_fn=as_nobody)
        assert r.code == 0, (args, r)
        assert "readonly" not in r.err, (args, r.err)
    assert "render-01" in cli.run("list-vms", preexec_fn=as_nobody).out
    assert sorted(os.listdir(shared_dir)) == before, "reading created or removed files"
    # Writing is refused, and says so.
    r = cli.run("register-vm", "--vm-uuid", CUDA_DEV, "--pool", "A", "--priority", "low",
                preexec_fn=as_nobody)
    assert r.code == 1 and "readonly" in r.err, r


def test_a_failed_read_leaves_no_registry_behind(cli, tmp_path):
    db = tmp_path / "etc" / "vgpu" / "vgpu_config.db"
    cli.use_db(db)
    for args in (["scan-vms"], ["status"], ["show-vm", "--vm-uuid", RENDER_01]):
        r = cli.run(*args, env={"VGPU_XAPI": "unix:" + str(tmp_path / "no-such-socket")})
        assert r.code == 1, r
    assert cli.run("list-vms").code == 0
    assert not (tmp_path / "etc").exists(), "a read created the registry's directory"


def test_a_write_says_within_a_second_that_it_waits_for_the_lock(cli, sim):
    cli.register(RENDER_01, "A", "high", 3)
    holder = sqlite3.connect(cli.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(4.0, lambda: holder.execute("COMMIT"))
    p = subprocess.Popen([cli.binary, "register-vm", "--vm-uuid", CUDA_DEV, "--pool", "B", "--priority", "low"],
                         env=cli.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        release.start()
        started = time.monotonic()
        line = p.stderr.readline().decode()
        said_after = time.monotonic() - started
        assert "waiting for the registry" in line and cli.db in line, line
        assert said_after < 3.0, said_after
        out, err = p.communicate(timeout=60)
    finally:
        release.cancel()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, (out, err)
    assert [r for r in cli.dump() if CUDA_DEV in r], "the waiting write went through"
    holder.close()


def test_the_lock_timeout_says_who_holds_it_and_changes_nothing(cli, sim, tmp_path):
    cli.register(RENDER_01, "A", "high", 3)
    config = tmp_path / "vgpu.conf"
    config.write_text("lock_timeout_s = 2\n")
    holder = sqlite3.connect(cli.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        before = cli.dump()
        started = time.monotonic()
        r = cli.run("set-pool", "--vm-uuid", RENDER_01, "--pool", "B", "--config", str(config))
        took = time.monotonic() - started
        code, err = cli.json_error("set-pool", "--vm-uuid", RENDER_01, "--pool", "B", "--config", str(config),
                                   expect_code="DATABASE_ERROR")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.code == 1 and 2.0 <= took < 20, (r, took)
    lines = r.err.splitlines()
    assert lines[0].startswith("waiting for the registry"), r.err
    assert lines[1].startswith("error: database %s: still locked by another process after 2 s" % cli.db), r.err
    assert lines[2].startswith("hint: ") and "vgpu plugin" in lines[2] and "fuser -v %s" % cli.db in lines[2], r.err
    assert err["details"] == {"path": cli.db, "locked": True, "waited_s": 2}
    assert cli.dump() == before
    assert "pool_id=A" in sim.get_vm(RENDER_01)["platform"]["device-model-args"]


# Words of the plugin API that a command-line user never typed.
API_WORDS = re.compile(r"=true|=false|plugin and API|(?<![-\w])(vm-uuid|vm-name|vm-id|dry-run)(?![-\w])")


def error_paths(table):
    """(argv, expected exit status) for every command of the function table: missing and
    conflicting options, bad values, a VM that does not exist, a VM that is not registered."""
    values = {"pool": ["C", "ab"], "priority": ["urgent", "3"], "vm-id": ["-1", "0", "x", "4294967296"],
              "vm-uuid": ["not-a-uuid"], "vm-name": ["tab\there"],
              "weight": ["0", "101", "-5", "7.5", "abc"], "rate": ["-1", "abc"], "queue-depth": ["-1", "x"]}
    good = {"pool": "A", "priority": "low", "vm-id": "77", "weight": "30", "rate": "10"}
    for f in table["functions"]:
        cmd = [f["command"]]
        if f["name"] == "mediator":
            # the action is a word (`mediator health`); a bad one and none are usage errors
            yield ["mediator"], 2
            yield ["mediator", "restart"], 2
            yield ["mediator", "health", "--host", "no-such-host"], 2
            yield ["mediator", "health", "--host", "no-such-host", "--all-hosts"], 2
            continue
        base = list(cmd)
        if f["vm"] == "required":
            base += ["--vm-uuid", RENDER_01]
        for key in f["required"]:
            base += ["--" + key, good[key]]
        fields = [k for k in f["optional"] if k in good]
        if f["vm"] == "required" and not f["required"] and fields:
            base += ["--" + fields[0], good[fields[0]]]  # update-vm: at least one field
        yield base, None  # render-01 is not registered (update-vm also lacks a field)
        yield cmd, None
        for key in f["required"] + f["optional"]:
            for bad in values.get(key, []):
                argv = [a for a in base]
                if "--" + key in argv:
                    argv[argv.index("--" + key) + 1] = bad
                else:
                    argv += ["--" + key, bad]
                yield argv, 2
        if f["vm"] != "none":
            yield cmd + ["--vm-uuid", "00000000-0000-4000-8000-000000000000"] + base[3:], 1
            yield cmd + ["--vm-name", "no such vm"] + base[3:], 1
        if f["name"] == "sync":
            yield ["sync", "--all", "--vm-uuid", RENDER_01], 2


def test_no_error_of_any_command_speaks_the_plugin_api(cli, sim):
    table = cli.run_json("functions")
    checked = 0
    for argv, status in error_paths(table):
        for fmt in ([], ["--format", "json"]):
            r = cli.run(*(argv + fmt))
            if r.code == 0:
                continue
            if status is not None:
                assert r.code == status, (argv, r)
            text = r.err
            if fmt:
                text = parse_error_doc(r.err)["message"]
            assert text.strip(), (argv, r)
            assert not API_WORDS.search(text), (argv, text)
            checked += 1
    assert checked > 100, checked
    # the messages that used to speak the API's words, now in options
    r = cli.run("sync")
    assert r.code == 2 and "--all, --vm-uuid or --vm-name" in r.err, r
    r = cli.run("update-vm", "--vm-uuid", RENDER_01)
    assert r.code == 2 and "--pool, --priority or --vm-id" in r.err, r
    for argv in (["--vm-id=-1"], ["--vm-id", "-1"]):
        r = cli.run("set-vm-id", "--vm-uuid", RENDER_01, *argv)
        assert r.code == 2 and "out of range" in r.err and '"-1"' in r.err, r
    # `call` is the plugin API: it keeps the API's words
    code, err = cli.json_error("call", "sync", expect_code="INVALID_ARGUMENT")
    assert "all=true" in err["message"], err


def test_a_registry_only_command_needs_no_xapi_password(cli, tmp_path):
    env = {"VGPU_XAPI": "https://192.0.2.1:443", "VGPU_XAPI_PASSWORD": None}
    for args in (["list-vms"], ["list-pools"], ["show-pool", "--pool", "A"]):
        r = cli.run(*args, env=env)
        assert r.code == 0, (args, r)
    r = cli.run("scan-vms", env=env)
    assert r.code == 2 and "needs a password" in r.err, r
    assert "hint: give it with --xapi-password-file" in r.err, r


def test_an_unreadable_config_is_exit_1_and_says_what_to_do(cli, tmp_path):
    d = tmp_path / "conf-dir"
    d.mkdir()
    r = cli.run("list-vms", "--config", str(d))
    assert r.code == 1 and "cannot read the configuration file" in r.err, r
    code, err = cli.json_error("list-vms", "--config", str(d), expect_code="CONFIG_ERROR")
    assert code == 1 and err["details"]["path"] == str(d)
    # a missing one is the defaults, not an error
    assert cli.run("list-vms", "--config", str(tmp_path / "absent.conf")).code == 0


def test_off_dom0_the_default_socket_points_to_https(cli):
    if os.path.exists("/var/lib/xcp/xapi"):
        pytest.skip("this machine is a dom0")
    r = cli.run("scan-vms", env={"VGPU_XAPI": None})
    assert r.code == 1, r
    assert "hint: this is not a dom0" in r.err and "--xapi https://" in r.err and "--remote" in r.err, r


def test_a_unique_uuid_prefix_selects_a_vm(cli, sim):
    cli.register(RENDER_01, "A", "high", 3)
    for prefix in (RENDER_01[:8], RENDER_01[:13], RENDER_01[:-1]):
        assert cli.run_json("show-vm", "--vm-uuid", prefix)["vm_uuid"] == RENDER_01
    doc = cli.run_json("set-priority", "--vm-uuid", RENDER_01[:8], "--priority", "low")
    assert doc["vm_uuid"] == RENDER_01 and doc["priority"] == "low"
    # two VMs share a prefix: both are named, nothing changes
    sim.add_vm(uuid=RENDER_01[:9] + "0000-4000-8000-000000000000", name_label="lookalike")
    before = cli.dump()
    code, err = cli.json_error("set-pool", "--vm-uuid", RENDER_01[:8], "--pool", "B",
                               expect_code="AMBIGUOUS_VM_NAME")
    assert code == 1 and RENDER_01 in err["message"] and len(err["details"]["candidates"]) == 2
    assert cli.dump() == before
    # too short to be a prefix: invalid
    code, err = cli.json_error("show-vm", "--vm-uuid", RENDER_01[:7], expect_code="INVALID_ARGUMENT")
    assert code == 2


def test_names_users_chose_are_names_they_can_use_and_sync_keeps(cli, sim):
    """register-vm --vm-uuid U --vm-name "VM-2" stores VM-2; --vm-name VM-2 finds the VM; sync
    keeps the chosen name while it refreshes a stored name-label; --dry-run says old -> new."""
    cli.ok("register-vm", "--vm-uuid", RENDER_01, "--vm-name", "VM-2", "--pool", "A", "--priority", "high")
    cli.register(CUDA_DEV, "B", "low", 9)
    assert cli.run_json("show-vm", "--vm-name", "VM-2")["vm_uuid"] == RENDER_01
    sim.set_vm(RENDER_01, name_label="render-01-renamed")
    sim.set_vm(CUDA_DEV, name_label="cuda-dev-renamed")
    dry = cli.run_json("sync", "--all", "--dry-run")
    items = {i["vm_uuid"]: i for i in dry["results"]}
    assert items[RENDER_01]["changes"] == [] and items[RENDER_01]["action"] == "unchanged"
    assert items[CUDA_DEV]["changes"] == [{"field": "vm_name", "old": "cuda-dev", "new": "cuda-dev-renamed"}]
    table = cli.ok("sync", "--all", "--dry-run").out
    assert 'vm-name: cuda-dev → cuda-dev-renamed' in table, table
    cli.ok("sync", "--all")
    names = {row[1]: row[2] for row in cli.dump()}
    assert names[RENDER_01] == "VM-2" and names[CUDA_DEV] == "cuda-dev-renamed", names
    # the name-label finds it too; a name shared by a label and a stored name is ambiguous
    assert cli.run_json("show-vm", "--vm-name", "render-01-renamed")["vm_uuid"] == RENDER_01
    sim.set_vm(CUDA_DEV, name_label="VM-2")
    code, err = cli.json_error("show-vm", "--vm-name", "VM-2", expect_code="AMBIGUOUS_VM_NAME")
    assert {c["vm_uuid"] for c in err["details"]["candidates"]} == {RENDER_01, CUDA_DEV}


def test_a_name_label_the_registry_cannot_store_is_refused_like_a_typed_one(cli, sim):
    sim.set_vm(RENDER_01, name_label="tab\there")
    r = cli.run("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high")
    assert r.code == 2 and "cannot store it" in r.err, r
    r = cli.run("register-vm", "--vm-uuid", RENDER_01, "--vm-name", "tab\there", "--pool", "A", "--priority", "high")
    assert r.code == 2 and "control character" in r.err, r
    assert not cli.dump()
    cli.ok("register-vm", "--vm-uuid", RENDER_01, "--vm-name", "tab-here", "--pool", "A", "--priority", "high")


def test_a_paused_vm_is_not_told_to_use_restart(cli, sim):
    from conftest import DB_PRIMARY
    out = cli.ok("register-vm", "--vm-uuid", DB_PRIMARY, "--pool", "A", "--priority", "high").out
    assert "the VM is paused" in out and "--restart" not in out, out
    out = cli.ok("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high").out
    assert "(or use --restart)" in out, out


def test_status_says_how_to_clear_stale_rows(cli, sim):
    cli.register(RENDER_01, "A", "high", 3)
    sim.destroy_vm(RENDER_01)
    out = cli.ok("status").out
    assert "vgpu-admin remove-vm --vm-uuid" in out, out
    out = cli.ok("scan-vms").out
    assert "vgpu-admin remove-vm --vm-uuid" in out, out


def test_registry_files_are_private_whatever_the_umask(cli, tmp_path):
    """The registry, its WAL and SHM files and its backups are 0600, its directory 0700, even
    under umask 000 (the mediator runs as root and still reads them)."""
    def loose():
        os.umask(0)
    db = tmp_path / "etc" / "vgpu" / "vgpu_config.db"
    cli.use_db(db)
    r = cli.run("register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high", preexec_fn=loose)
    assert r.code == 0, r
    mode = lambda p: stat.S_IMODE(os.stat(str(p)).st_mode)  # noqa: E731
    assert mode(db) == 0o600 and mode(db.parent) == 0o700, (oct(mode(db)), oct(mode(db.parent)))
    holder = sqlite3.connect(str(db))  # keeps -wal and -shm in place
    try:
        holder.execute("SELECT count(*) FROM vms").fetchone()
        for side in ("-wal", "-shm"):
            assert mode(str(db) + side) == 0o600, side
    finally:
        holder.close()
    # a backup written by a migration is private too
    old = tmp_path / "old" / "vgpu_config.db"
    old.parent.mkdir()
    conn = sqlite3.connect(str(old))
    conn.executescript("CREATE TABLE vms (vm_id INTEGER NOT NULL UNIQUE, vm_uuid TEXT UNIQUE NOT NULL, "
                       "vm_name TEXT, pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL);")
    conn.close()
    cli.use_db(old)
    r = cli.run("set-pool", "--vm-uuid", RENDER_01, "--pool", "B", preexec_fn=loose)
    backups = [p for p in os.listdir(str(old.parent)) if ".pre-v" in p]
    assert len(backups) == 1, (os.listdir(str(old.parent)), r)
    assert mode(old.parent / backups[0]) == 0o600


def test_status_reports_a_registry_other_users_may_read(cli, sim):
    cli.register(RENDER_01, "A", "high", 3)
    assert "warnings" not in cli.run_json("status"), "a private registry warns of nothing"
    os.chmod(cli.db, 0o644)  # as the older tools left it
    doc = cli.run_json("status")
    assert doc["warnings"] == ["the registry %s is open to other users (mode 0644); make it private: "
                               "chmod 600 %s" % (cli.db, cli.db)]
    assert "⚠ the registry %s is open to other users" % cli.db in cli.ok("status").out

"""Shell completion as a shell runs it: the bash script from `vgpu-admin completions bash` is
sourced in bash and the function it registers for `vgpu-admin` is called the way readline calls
it (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT); the test reads COMPREPLY. What must be
offered is read from `vgpu-admin COMMAND --help` and `vgpu-admin functions`, never from the
script. The zsh and fish scripts are at least parsed by zsh and fish (`make test` installs them).
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import time

import pytest

from conftest import CUDA_DEV, REAL_VMS, RENDER_01, WEB_01

# Sources the script, checks it registered a function for vgpu-admin, calls it as readline does.
# Arguments: script, COMP_CWORD, then the words; COMP_LINE is the words joined by spaces, the
# cursor at its end. COMPREPLY comes back one entry per line.
DRIVER = r'''
source "$1" || exit 90
spec=$(complete -p vgpu-admin) || exit 91
fn=$(sed -E 's/.*-F ([^ ]+).*/\1/' <<<"$spec")
COMP_CWORD=$2
shift 2
COMP_WORDS=("$@")
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$fn" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
'''


class Bash(object):
    """Completes `vgpu-admin …` lines with the generated bash script, as found on the PATH."""

    def __init__(self, cli, tmp_path):
        self.cli = cli
        bindir = tmp_path / "bin"
        bindir.mkdir()
        os.symlink(cli.binary, str(bindir / "vgpu-admin"))
        self.env = dict(cli.env)
        self.env["PATH"] = "%s:%s" % (bindir, os.environ.get("PATH", "/usr/bin:/bin"))
        self.script = str(tmp_path / "vgpu-admin.bash")
        with open(self.script, "w") as f:
            f.write(cli.ok("completions", "bash").out)
        self.cwd = str(tmp_path)
        self.last_err = None

    def words(self, *words, **kw):
        """COMPREPLY for the command line `vgpu-admin WORDS…`, completing the last word."""
        argv = ["vgpu-admin"] + list(words)
        env = dict(self.env)
        env.update(kw.get("env") or {})
        p = subprocess.run(["bash", "-c", DRIVER, "driver", self.script, str(len(argv) - 1)] + argv,
                           env=env, cwd=kw.get("cwd", self.cwd), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.last_err = p.stderr.decode()
        assert p.returncode == 0, (words, p.returncode, self.last_err)
        out = p.stdout.decode()
        return [l for l in out.split("\n") if l != ""]

    def line(self, text, **kw):
        """COMPREPLY for `vgpu-admin TEXT` split at blanks (a trailing blank: an empty word)."""
        words = text.split(" ")
        return self.words(*words, **kw)


@pytest.fixture
def bash(cli, tmp_path):
    return Bash(cli, tmp_path)


# ------------------------------------------------------------------------------------------------
# What help says there is


def help_commands(cli):
    """The commands `vgpu-admin --help` lists."""
    out = cli.ok("--help", env={"COLUMNS": "200"}).out
    section = out.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    return [l.split()[0] for l in section.splitlines() if re.match(r"^  \S", l)]


def help_options(cli, *command):
    """Every option `vgpu-admin COMMAND --help` lists under an options heading: {"--long", "-s"}."""
    out = cli.ok(*(command + ("--help",)), env={"COLUMNS": "200"}).out
    found = set()
    heading = None
    for l in out.splitlines():
        if re.match(r"^\S.*:$", l):
            heading = l
            continue
        m = re.match(r"^  (?:(-\w), |    )(--[a-z][a-z-]*)", l)
        if m and heading and heading.endswith("Options:"):
            found.add(m.group(2))
            if m.group(1):
                found.add(m.group(1))
    assert "--help" in found, out
    return found


def commands_taking(cli, option):
    return [c for c in help_commands(cli) if c != "help" and option in help_options(cli, c)]


# ------------------------------------------------------------------------------------------------
# Commands and options


def test_the_script_registers_a_function_for_vgpu_admin_without_file_fallback(cli, bash):
    p = subprocess.run(["bash", "-c", 'source "$1" && complete -p vgpu-admin', "x", bash.script],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr
    spec = p.stdout.decode()
    assert re.search(r"-F \S+", spec), spec
    # a word without candidates offers nothing rather than the files of the directory
    assert "-o default" not in spec and "-o bashdefault" not in spec, spec


def test_command_names_complete(cli, bash):
    commands = help_commands(cli)
    assert "register-vm" in commands and "man" in commands
    offered = bash.words("")
    assert set(w for w in offered if not w.startswith("-")) == set(commands), offered
    assert set(w for w in offered if w.startswith("--")) == help_options(cli) - {"-h", "-V", "-y"}
    assert bash.words("reg") == ["register-vm"]
    assert sorted(bash.words("list-")) == ["list-pools", "list-vms"]
    assert bash.last_err == ""


def test_every_option_of_every_command_completes(cli, bash):
    commands = [c for c in help_commands(cli) if c != "help"]
    assert len(commands) >= 17
    for command in commands:
        expected = set(o for o in help_options(cli, command) if o.startswith("--"))
        assert "--format" in expected and "--help" in expected, command
        offered = bash.words(command, "--")
        assert set(offered) == expected, (command, sorted(set(offered) ^ expected))
        # options also complete after other options and their values
        assert set(bash.words(command, "--format", "json", "--")) == expected, command


def help_positionals(cli, command):
    """The positional arguments `vgpu-admin COMMAND --help` lists: {"action": [possible values]}."""
    out = cli.ok(command, "--help", env={"COLUMNS": "200"}).out
    if "\nArguments:\n" not in out:
        return {}
    section = out.split("\nArguments:\n", 1)[1].split("\nOptions:", 1)[0]
    found = {}
    for m in re.finditer(r"^  <([A-Z_]+)>(.*?)(?=^  <|\Z)", section, re.M | re.S):
        values = re.search(r"\[possible values: ([^\]]*)\]", m.group(2))
        found[m.group(1).lower().replace("_", "-")] = values.group(1).split(", ") if values else []
    return found


def test_every_argument_of_the_function_table_completes_on_its_command(cli, bash):
    table = json.loads(cli.ok("functions", "--format", "json").out)
    assert table["functions"]
    positional_seen = 0
    for f in table["functions"]:
        keys = f["required"] + f["optional"] + f["flags"]
        assert keys or f["command"] in ("scan-vms", "list-pools", "status", "refresh"), f
        offered = set(bash.words(f["command"], "--"))
        positionals = help_positionals(cli, f["command"])
        for key in keys:
            if key in positionals:
                # a positional word on the command line (`mediator health`): its values complete
                values = positionals[key]
                assert values, (f["command"], key)
                assert set(values) <= set(bash.words(f["command"], "")), (f["command"], key)
                positional_seen += 1
                continue
            assert "--" + key in offered, (f["command"], key, sorted(offered))
    # `mediator ACTION` is the one positional argument of the table (SPEC section 10)
    assert positional_seen == 1


def test_the_mediator_action_completes_from_a_prefix(bash):
    assert bash.words("mediator", "re") == ["reload"]
    assert set(bash.words("mediator", "")) >= {"connections", "health", "metrics", "reload"}


def test_options_complete_from_a_prefix(bash):
    assert bash.words("register-vm", "--pr") == ["--priority"]
    assert sorted(bash.words("set-vm-id", "--vm-")) == ["--vm-id", "--vm-name", "--vm-uuid"]
    assert sorted(bash.words("sync", "--d")) == ["--db", "--dry-run"]


# ------------------------------------------------------------------------------------------------
# Values


VALUES = {"--pool": ["A", "B"], "--priority": ["low", "medium", "high"], "--format": ["table", "json"]}


@pytest.mark.parametrize("option", sorted(VALUES))
def test_values_complete_on_every_command_that_takes_the_option(cli, bash, tmp_path, option):
    # files that a file-name completion would offer
    for name in ("A-file", "low-file", "table-file", "0"):
        (tmp_path / name).write_text("")
    commands = commands_taking(cli, option)
    assert commands, option
    if option == "--pool":
        assert {"register-vm", "set-pool", "update-vm", "list-vms", "show-pool"} <= set(commands)
    for command in commands:
        offered = bash.words(command, option, "")
        assert sorted(offered) == sorted(VALUES[option]), (command, offered)
        # before another option too, and from a prefix
        assert sorted(bash.words(command, "--yes", option, "")) == sorted(VALUES[option]), command
        first = VALUES[option][0]
        assert bash.words(command, option, first[:1]) == [first], command
        # nothing is not a file name
        assert bash.words(command, option, "x") == [], command
    assert bash.last_err == ""


def test_priority_aliases_are_accepted_but_not_offered(cli, bash):
    offered = bash.words("list-vms", "--priority", "")
    assert not {"0", "1", "2"} & set(offered)
    r = cli.run("list-vms", "--priority", "2", "--format", "json")
    assert r.code == 0, r.err


def test_values_are_not_checked_by_the_command_line_parser(cli):
    """The core says what is valid, with its own message and error code, as for the plugin."""
    code, err = cli.json_error("list-vms", "--pool", "C", expect_code="INVALID_ARGUMENT")
    assert code == 2
    assert "usage" not in err["details"], err
    assert "A or B" in err["message"], err


def test_function_names_complete_for_call(cli, bash):
    table = json.loads(cli.ok("functions", "--format", "json").out)
    names = sorted(f["name"] for f in table["functions"])
    offered = [w for w in bash.words("call", "") if not w.startswith("-")]
    assert sorted(offered) == names


def test_man_pages_complete(cli, bash):
    commands = [c for c in help_commands(cli) if c != "help"]
    offered = [w for w in bash.words("man", "") if not w.startswith("-")]
    assert sorted(offered) == sorted(commands + ["vgpu.conf"])


@pytest.mark.parametrize("option", ["--config", "--db", "--xapi-password-file", "--xapi-ca-file"])
def test_path_options_complete_files(cli, bash, tmp_path, option):
    assert option in help_options(cli, "list-vms")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf one.toml").write_text("")
    (tmp_path / "conf.pem").write_text("")
    offered = bash.words("list-vms", option, "conf")
    assert sorted(offered) == ["conf one.toml", "conf.d", "conf.pem"], offered
    # a global option before the command completes files too
    assert sorted(bash.words(option, "conf")) == ["conf one.toml", "conf.d", "conf.pem"]


def test_the_vm_id_completes_nothing(bash, tmp_path):
    (tmp_path / "1-file").write_text("")
    assert bash.words("set-vm-id", "--vm-id", "1") in ([], ["1"])


# ------------------------------------------------------------------------------------------------
# VM uuids and names


def registered(cli):
    cli.register(RENDER_01, "A", "high", 1)
    cli.register(CUDA_DEV, "B", "low", 2)
    return {RENDER_01: "render-01", CUDA_DEV: "cuda-dev"}


def test_vm_uuids_and_names_of_the_registry_complete(cli, bash):
    regs = registered(cli)
    selecting = [c for c in commands_taking(cli, "--vm-uuid") if c != "register-vm"]
    assert {"show-vm", "set-pool", "remove-vm", "sync", "update-vm"} <= set(selecting)
    for command in selecting:
        assert sorted(bash.words(command, "--vm-uuid", "")) == sorted(regs), command
        assert sorted(bash.words(command, "--vm-name", "")) == sorted(regs.values()), command
    assert bash.words("show-vm", "--vm-uuid", RENDER_01[:8]) == [RENDER_01]
    assert bash.words("show-vm", "--vm-name", "cu") == ["cuda-dev"]
    assert bash.words("show-vm", "--vm-name", "nothing") == []
    assert bash.last_err == ""


def test_register_vm_completes_the_pools_unregistered_vms(cli, bash):
    regs = registered(cli)
    unregistered = {u: n for u, (n, _) in REAL_VMS.items() if u not in regs}
    assert sorted(bash.words("register-vm", "--vm-uuid", "")) == sorted(unregistered)
    names = bash.words("register-vm", "--vm-name", "")
    # a name with a blank comes quoted for the command line; the two VMs named twin are one word
    assert sorted(names) == sorted(set(n.replace(" ", "\\ ") for n in unregistered.values())), names
    assert "web\\ 01" in names and unregistered[WEB_01] == "web 01"
    assert bash.words("register-vm", "--pool", "A", "--vm-name", "we") == ["web\\ 01"]
    assert bash.words("register-vm", "--vm-name", "web\\ 0") == ["web\\ 01"]


def test_the_registry_named_on_the_line_is_the_one_read(cli, bash, tmp_path):
    other = str(tmp_path / "other" / "vgpu_config.db")
    default_db = cli.db
    cli.use_db(other)
    cli.register(RENDER_01, "A", "high", 1)
    # Two registries of one pool would follow the pool's copy in XAPI (SPEC §9): start the
    # second from a pool that has none, so each file keeps its own row.
    cli.sim.reset()
    cli.use_db(default_db)
    cli.register(CUDA_DEV, "A", "high", 1)
    assert bash.words("show-vm", "--vm-uuid", "") == [CUDA_DEV]
    assert bash.words("--db", other, "show-vm", "--vm-uuid", "") == [RENDER_01]
    assert bash.words("show-vm", "--db", other, "--vm-uuid", "") == [RENDER_01]
    config = tmp_path / "other.conf"
    config.write_text('db_path = "%s"\n' % other)
    no_db_env = {"VGPU_DB": ""}
    assert bash.words("--config", str(config), "show-vm", "--vm-uuid", "", env=no_db_env) == [RENDER_01]


def test_a_failing_lookup_is_silent_and_writes_nothing(cli, bash, tmp_path):
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_text("this is not sqlite")
    cases = [
        {"VGPU_DB": str(not_a_db)},
        {"VGPU_DB": str(tmp_path)},
        {"VGPU_CONFIG": str(not_a_db)},
        {"VGPU_XAPI": "unix:" + str(tmp_path / "no-socket")},
        {"VGPU_XAPI": "not a url"},
    ]
    for env in cases:
        for command in ("show-vm", "register-vm"):
            assert bash.words(command, "--vm-uuid", "", env=env) == [], (env, command)
            assert bash.last_err == "", (env, command, bash.last_err)
    assert not_a_db.read_text() == "this is not sqlite"


def test_a_missing_registry_is_not_created(cli, bash):
    assert bash.words("show-vm", "--vm-uuid", "") == []
    assert bash.words("register-vm", "--vm-uuid", "")
    assert not os.path.exists(cli.db)
    assert not os.path.exists(os.path.dirname(cli.db))


def test_a_registry_of_the_older_tools_is_not_migrated_by_a_tab(cli, bash):
    os.makedirs(os.path.dirname(cli.db))
    conn = sqlite3.connect(cli.db)
    conn.executescript("""
        CREATE TABLE pools (pool_id CHAR(1) PRIMARY KEY, pool_name TEXT NOT NULL);
        INSERT INTO pools VALUES ('A','Pool A'), ('B','Pool B');
        CREATE TABLE vms (vm_id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT UNIQUE NOT NULL,
            vm_name TEXT, pool_id CHAR(1) NOT NULL, priority INTEGER NOT NULL,
            created_at TIMESTAMP, updated_at TIMESTAMP);
    """)
    conn.execute("INSERT INTO vms (vm_uuid, vm_name, pool_id, priority) VALUES (?, 'r', 'A', 2)",
                 (RENDER_01,))
    conn.commit()
    conn.close()
    with open(cli.db, "rb") as f:
        before = f.read()
    listing = sorted(os.listdir(os.path.dirname(cli.db)))
    assert bash.words("show-vm", "--vm-uuid", "") == []
    with open(cli.db, "rb") as f:
        assert f.read() == before
    assert sorted(os.listdir(os.path.dirname(cli.db))) == listing
    # the command itself still migrates it and finds the VM
    assert cli.ok("show-vm", "--vm-uuid", RENDER_01).code == 0


def test_a_slow_xapi_does_not_hold_the_shell(cli, bash, sim):
    sim.inject_fault("VM.get_all_records_where", times=-1, code=None, latency_ms=8000)
    start = time.monotonic()
    assert bash.words("register-vm", "--vm-uuid", "") == []
    took = time.monotonic() - start
    assert took < 4, took
    assert bash.last_err == ""


# ------------------------------------------------------------------------------------------------
# zsh and fish


def shell(name):
    path = shutil.which(name)
    assert path, "%s is not installed: `make test` installs it (apt-get install %s)" % (name, name)
    return path


def test_the_zsh_script_parses(cli, tmp_path):
    script = tmp_path / "_vgpu-admin"
    text = cli.ok("completions", "zsh").out
    script.write_text(text)
    p = subprocess.run([shell("zsh"), "-n", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr
    assert "#compdef vgpu-admin" in text
    # the values are offered, the VM options complete no file names
    assert re.search(r"--pool=\[[^]]*\]:POOL:\(A B\)", text), text
    assert re.search(r"--priority=\[[^]]*\]:PRIORITY:\(low medium high\)", text)
    assert re.search(r"--config=\[.*\]:PATH:_files' ", text)
    assert re.search(r"--vm-uuid=\[[^]]*\]:UUID:'", text)


def test_the_fish_script_parses(cli, tmp_path):
    script = tmp_path / "vgpu-admin.fish"
    text = cli.ok("completions", "fish").out
    script.write_text(text)
    p = subprocess.run([shell("fish"), "--no-execute", str(script)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert p.returncode == 0, p.stderr
    assert re.search(r'using_subcommand register-vm" -l pool .* -r -f -a "A\\t', text), text
    assert re.search(r'using_subcommand register-vm" -l vm-uuid .* -r -f$', text, re.M), text

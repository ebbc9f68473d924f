"""Security of vgpu-admin and of everything it reaches (docs/security.md):

* no shell anywhere: the shipped sources never start one (a source check that can fail, with its
  own test), and the CLI with everything it makes run — the plugin on every host it reaches, the
  plugin's vgpu-admin, the refresh fan-out, a restart, the mediator — works with a PATH that holds
  no shell, while strace sees every exec of the CLI's and the simulator's process trees;
* the XAPI password (from a file or the environment only: there is no option for it) and the
  session refs never appear in stdout, stderr, error details or any command line, whatever fails:
  a wrong password, a refused connection, an error reply to any call, an answer slower than the
  timeout, a session that died.

strace is required (Debian: apt-get install strace): without it the process tests fail."""

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ML_TRAIN_B, RENDER_01, REPO_DIR, TESTS_DIR, Simulator, base_env, fixture_uuid

PLUGIN_TESTS = os.path.join(TESTS_DIR, "plugin")
if PLUGIN_TESTS not in sys.path:
    sys.path.insert(0, PLUGIN_TESTS)

from test_plugin_security import (SHELLS, ExecTrace, ProcessSampler, no_shell_dir, run_traced,  # noqa: E402
                                  shell_execs)

MASTER = fixture_uuid("sample_pool.json", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool.json", "xcp-lab-02", kind="hosts")
PASSWORD = "vgpu-Secret-Pa55word-91d7e2"
WRONG_PASSWORD = "vgpu-Wrong-Pa55word-3b8f06"

# ------------------------------------------------------------------------------------------------
# The source check: nothing shipped starts a shell or hands a string to one


def shipped_files():
    """The shipped code, by language."""
    def under(pattern):
        return sorted(glob.glob(os.path.join(REPO_DIR, pattern), recursive=True))

    return {
        "python": [os.path.join(REPO_DIR, "plugin", "vgpu")] + under("plugin/*.py")
        + under("rust/python/python/**/*.py"),
        "rust": under("rust/*/src/**/*.rs"),
        "js": under("xo-integration/src/**/*.js") + under("xo-integration/index.js"),
        "unit": under("packaging/*.service"),
    }


_PY_ALWAYS_SHELL = {"os.system", "os.popen", "os.popen2", "os.popen3", "os.popen4", "commands.getoutput",
                    "commands.getstatusoutput", "subprocess.getoutput", "subprocess.getstatusoutput",
                    "popen2.popen2", "popen2.popen3", "popen2.popen4", "pty.spawn"}
_PY_SPAWN = {"Popen", "call", "run", "check_call", "check_output"}


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_text(node):
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, bytes))
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return _is_text(node.left) or _is_text(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_text(node.func.value)
    return False


def _names_shell(node):
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and os.path.basename(node.value) in SHELLS)


def python_shell_uses(source, name="<source>"):
    """(line, what) for every shell use in Python ``source``: shell=True, os.system / os.popen and
    their kind, a subprocess call given a string instead of an argument list, an exec/spawn of a
    shell by name."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        last = func.rsplit(".", 1)[-1]
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and not kw.value.value):
                found.append((node.lineno, "%s(shell=...)" % func))
        if func in _PY_ALWAYS_SHELL:
            found.append((node.lineno, func))
        if last in _PY_SPAWN and node.args and (_is_text(node.args[0]) or _names_shell(node.args[0])):
            found.append((node.lineno, "%s with a string command" % func))
        if (last in _PY_SPAWN and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))
                and node.args[0].elts and _names_shell(node.args[0].elts[0])):
            found.append((node.lineno, "%s of a shell" % func))
        if re.match(r"^os\.(exec|spawn|posix_spawn)", func) and any(_names_shell(a) for a in node.args[:2]):
            found.append((node.lineno, "%s of a shell" % func))
    return found


_RUST_SHELL = [
    (re.compile(r'Command::new\(\s*"(?:[^"]*/)?(?:%s)"' % "|".join(sorted(SHELLS))), "Command::new of a shell"),
    (re.compile(r'\.args?\(\s*(?:&?\[\s*)?"-c"'), 'an "-c" argument'),
    (re.compile(r"\blibc::(?:system|popen)\b"), "libc::system / popen"),
    (re.compile(r'"/(?:usr/)?bin/(?:%s)"' % "|".join(sorted(SHELLS))), "a shell's path"),
]
_JS_SHELL = [
    (re.compile(r"""require\(\s*['"](?:node:)?child_process['"]\s*\)|from\s+['"](?:node:)?child_process['"]"""),
     "child_process"),
    (re.compile(r"\bshell\s*:\s*true\b"), "shell: true"),
    (re.compile(r"\bexecSync\s*\(|\bexec\s*\(\s*[`'\"]"), "exec of a command string"),
]


def text_shell_uses(source, patterns):
    found = []
    for i, line in enumerate(source.splitlines(), 1):
        code = line.split("//", 1)[0] if not line.lstrip().startswith("#") else line
        for pattern, what in patterns:
            if pattern.search(code):
                found.append((i, what))
    return found


def unit_shell_uses(source):
    found = []
    for i, line in enumerate(source.splitlines(), 1):
        m = re.match(r"^\s*Exec\w*\s*=\s*[-@:+!]*(\S+)", line)
        if m and os.path.basename(m.group(1)) in SHELLS:
            found.append((i, "a unit running a shell"))
    return found


def shell_uses(kind, source, name="<source>"):
    if kind == "python":
        return python_shell_uses(source, name)
    if kind == "rust":
        return text_shell_uses(source, _RUST_SHELL)
    if kind == "js":
        return text_shell_uses(source, _JS_SHELL)
    return unit_shell_uses(source)


def test_shipped_code_never_starts_a_shell():
    files = shipped_files()
    assert all(files.values()), files  # each kind found: a moved tree must not empty the check
    found = []
    for kind, paths in files.items():
        for path in paths:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            found += ["%s:%d: %s" % (os.path.relpath(path, REPO_DIR), line, what)
                      for line, what in shell_uses(kind, source, path)]
    assert found == []


@pytest.mark.parametrize("kind, source", [
    ("python", "import subprocess\nsubprocess.call('ls -l', shell=True)\n"),
    ("python", "import subprocess\nsubprocess.Popen(cmd, shell=1)\n"),
    ("python", "import os\nos.system('xe vm-list')\n"),
    ("python", "import os\nos.popen('xe vm-list').read()\n"),
    ("python", "import subprocess\nsubprocess.check_output('vgpu-admin call %s' % fn)\n"),
    ("python", "import subprocess\nsubprocess.run(['/bin/sh', '-c', x])\n"),
    ("python", "import os\nos.execv('/bin/bash', ['bash', '-c', x])\n"),
    ("python", "import commands\ncommands.getoutput('id')\n"),
    ("rust", 'let out = Command::new("sh").arg("-c").arg(line).output();\n'),
    ("rust", 'std::process::Command::new("/bin/bash").args(["-c", &cmd]);\n'),
    ("rust", 'unsafe { libc::system(c.as_ptr()) };\n'),
    ("js", "const { execSync } = require('child_process')\n"),
    ("js", "spawn('xe', args, { shell: true })\n"),
    ("unit", "[Service]\nExecStart=/bin/sh -c 'vgpu-admin refresh'\n"),
])
def test_the_source_check_finds_shells(kind, source):
    """The check above is not vacuous: each of these is caught."""
    assert shell_uses(kind, source) != []


@pytest.mark.parametrize("kind, source", [
    ("python", "import subprocess\nsubprocess.Popen([admin, 'call', '--', fn], stdin=devnull, close_fds=True)\n"),
    ("python", "import subprocess\nsubprocess.run(argv, shell=False)\n"),
    ("rust", 'let c = clap::Command::new(BIN);\n'),
    ("unit", "[Service]\nExecStart=/usr/bin/vgpu-admin refresh\n"),
])
def test_the_source_check_lets_argument_lists_through(kind, source):
    assert shell_uses(kind, source) == []


# ------------------------------------------------------------------------------------------------
# No shell at run time


@pytest.fixture(scope="module")
def unix_pool():
    with Simulator(fixture="sample_pool.json", transport="unix", plugin_python=sys.executable) as sim:
        yield sim


def _plugin_env(binary, tmp_path, host, path):
    return {
        "PATH": path,
        "PYTHONPATH": PLUGIN_TESTS,  # the XenAPIPlugin stand-in
        "VGPU_PLUGIN_BACKEND": "cli",
        "VGPU_ADMIN": binary,
        "VGPU_CONFIG": str(tmp_path / ("vgpu-%s.conf" % host[:8])),
        "VGPU_DB": str(tmp_path / ("registry-%s.db" % host[:8])),
        "VGPU_PLUGIN_LOG": str(tmp_path / ("plugin-%s.log" % host[:8])),
    }


def test_cli_and_all_it_reaches_run_without_a_shell(unix_pool, binary, tmp_path):
    """Register (mirror, refresh fan-out to the member, mediator reload), a change with a restart,
    a scan and a refresh forwarded from the member, the mediators of every host: all with a PATH
    of symlinks to vgpu-admin and the plugin's interpreter only, and no exec of a shell anywhere
    in the CLI's or the simulator's process trees."""
    from mediator_sim import Mediator

    sim = unix_pool
    sim.reset()
    path = no_shell_dir(tmp_path / "bin", python3=sys.executable, **{"vgpu-admin": binary})
    socket_dir = tempfile.mkdtemp(prefix="vgpu-sec-")  # a socket path holds at most 107 bytes
    envs = {}
    for host in (MASTER, MEMBER):
        envs[host] = _plugin_env(binary, tmp_path, host, path)
        with open(envs[host]["VGPU_CONFIG"], "w") as f:
            f.write('[mediator]\nadmin_socket = "%s/%s.sock"\ntimeout_s = 5\n' % (socket_dir, host[:8]))
        sim.set_plugin_env(host, envs[host])
    mediator = Mediator("%s/%s.sock" % (socket_dir, MASTER[:8]), envs[MASTER]["VGPU_DB"], create_db=True).start()

    def cli(host, *args):
        env = {"PATH": path, "VGPU_XAPI": sim.url, "VGPU_HOST_UUID": host, "VGPU_DB": envs[host]["VGPU_DB"],
               "VGPU_CONFIG": envs[host]["VGPU_CONFIG"]}
        proc, execs = run_traced([binary, "--format", "json"] + list(args), tmp_path, env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 timeout=300)
        return proc, execs

    try:
        with ExecTrace(sim.proc.pid, tmp_path) as trace:
            runs = [
                cli(MASTER, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"),
                cli(MASTER, "set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "5", "--restart", "--yes"),
                cli(MEMBER, "register-vm", "--vm-uuid", ML_TRAIN_B, "--pool", "B", "--priority", "low"),
                cli(MEMBER, "scan-vms"),
                cli(MEMBER, "refresh"),
                cli(MEMBER, "mediator", "health", "--all-hosts"),
            ]
    finally:
        mediator.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    docs = []
    for proc, _ in runs:
        assert proc.returncode in (0, 1), proc.stderr
        docs.append(json.loads(proc.stdout))
    registered, changed, forwarded, scan, refreshed, health = docs
    assert all(proc.returncode == 0 for proc, _ in runs[:5]), [p.stderr for p, _ in runs]
    assert [r["ok"] for r in registered["replicas"]] == [True]
    assert [r["ok"] for r in registered["reloads"]] == [True]
    assert (changed["vm_id"], changed["restarted"]) == (5, True)
    assert (forwarded["vm_id"], forwarded["pool"]) == (1, "B")
    assert scan["summary"]["registered"] == 2
    assert (refreshed["host"], refreshed["generation"]) == (MEMBER, 3), refreshed
    assert {h["host"]: h["ok"] for h in health} == {MASTER: True, MEMBER: False}, health
    execs = trace.execs() + [e for _, ex in runs for e in ex]
    assert shell_execs(execs) == [], shell_execs(execs)
    # Not vacuous: the plugin ran on both hosts, each time with its vgpu-admin.
    plugins = [e for e in execs if len(e.argv) >= 2 and os.path.basename(e.argv[1]) == "vgpu"]
    admins = [e for e in execs if os.path.realpath(e.path) == os.path.realpath(binary) and "call" in e.argv]
    assert len(plugins) >= 5 and len(admins) >= 5, execs


# ------------------------------------------------------------------------------------------------
# The password and the session refs


@pytest.fixture(scope="module")
def tcp_pool(tmp_path_factory):
    """The sample pool over TCP, where a login needs PASSWORD."""
    with open(os.path.join(TESTS_DIR, "xapi_sim", "fixtures", "sample_pool.json")) as f:
        fixture = json.load(f)
    fixture["users"] = {"root": PASSWORD}
    path = tmp_path_factory.mktemp("tcp-pool") / "pool.json"
    path.write_text(json.dumps(fixture))
    with Simulator(fixture=str(path), transport="tcp", plugin_python=sys.executable) as sim:
        yield sim


SOURCES = ["option", "config", "environment"]


class Runner(object):
    """vgpu-admin against the TCP pool with the password given one way (``source``)."""

    def __init__(self, binary, sim, tmp_path, source, password=PASSWORD, config=""):
        self.binary, self.sim, self.tmp = binary, sim, tmp_path
        self.env = base_env()
        self.env.update({"VGPU_XAPI": sim.url, "VGPU_DB": str(tmp_path / "registry.db")})
        self.pre = []
        secret_file = tmp_path / "xapi-password"
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        if source == "option":
            self.pre = ["--xapi-password-file", str(secret_file)]
        elif source == "config":
            config += '\nxapi_password_file = "%s"\n' % secret_file
        else:
            self.env["VGPU_XAPI_PASSWORD"] = password
        conf = tmp_path / "vgpu.conf"
        conf.write_text(config)
        self.env["VGPU_CONFIG"] = str(conf)

    def argv(self, args, fmt="json"):
        return [self.binary] + self.pre + ["--format", fmt] + list(args)

    def run(self, *args, fmt="json", env=None):
        full = dict(self.env, **(env or {}))
        p = subprocess.run(self.argv(args, fmt), env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=300)
        return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def session_refs(sim):
    """Every session ref used in the calls logged so far (their first parameter)."""
    refs = set()
    for c in sim.call_log():
        if c["method"] != "session.login_with_password" and c["params"]:
            p = c["params"][0]
            if isinstance(p, str) and p.startswith("OpaqueRef:"):
                refs.add(p)
    return refs


def assert_no_secret(sim, *texts, extra=()):
    text = "\n".join(texts)
    for secret in (PASSWORD, WRONG_PASSWORD) + tuple(extra) + tuple(session_refs(sim)):
        assert secret not in text, "%r shown in:\n%s" % (secret, text)


@pytest.fixture
def tcp(tcp_pool):
    tcp_pool.reset()
    tcp_pool.clear_call_log()
    yield tcp_pool
    tcp_pool.clear_faults()


def test_there_is_no_password_option(binary, tmp_path):
    """A password on a command line is visible to every user of the host: no option takes one, and
    one given is refused (exit 2) by its name, without echoing the value."""
    for args in (["--password", PASSWORD, "list-vms"], ["--password=" + PASSWORD, "list-vms"],
                 ["list-vms", "--password", PASSWORD], ["--xapi-password", PASSWORD, "list-vms"],
                 ["--format", "json", "--password", PASSWORD, "list-vms"]):
        p = subprocess.run([binary] + args, env=base_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        out, err = p.stdout.decode(), p.stderr.decode()
        assert p.returncode == 2, (args, out, err)
        flag = args[[a.startswith("--") and a != "--format" for a in args].index(True)].split("=")[0]
        assert flag in err, (args, err)
        assert PASSWORD not in out + err, (args, out, err)
    # The help names only the file and the environment variable.
    helptext = subprocess.run([binary, "--help"], env=base_env(), stdout=subprocess.PIPE, timeout=60).stdout.decode()
    assert "--xapi-password-file" in helptext and "VGPU_XAPI_PASSWORD" in helptext
    assert not re.search(r"--(?:xapi-)?password(?![-\w])", helptext), helptext


@pytest.mark.parametrize("source", ["option", "config"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_password_file_others_can_read_is_refused(tcp, binary, tmp_path, source, mode):
    """As ssh refuses a private key others can read: exit 2 naming the file and its mode, the fix
    given, the password not shown, and no login attempted with it."""
    r = Runner(binary, tcp, tmp_path, source)
    secret_file = tmp_path / "xapi-password"
    secret_file.chmod(mode)
    code, out, err = r.run("scan-vms")
    assert code == 2, (code, out, err)
    doc = json.loads(err)["error"]
    assert doc["code"] == "INVALID_ARGUMENT", doc
    assert str(secret_file) in doc["message"] and "%04o" % mode in doc["message"], doc
    assert "chmod 600" in doc["message"], doc
    assert tcp.call_log() == [], tcp.call_log()
    assert_no_secret(tcp, out, err)
    secret_file.chmod(0o600)
    code, out, err = r.run("scan-vms")
    assert code == 0, err


@pytest.mark.parametrize("source", SOURCES)
def test_the_password_works_and_stays_off_command_lines(tcp, binary, tmp_path, source):
    """A slow call in flight: the CLI's command line (and any child's) never holds the password or
    the session; the answer and the messages neither."""
    r = Runner(binary, tcp, tmp_path, source)
    tcp.inject_fault("VM.get_all_records_where", latency_ms=1500, code=None)
    p = subprocess.Popen(r.argv(["scan-vms"]), env=r.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    with ProcessSampler(p.pid) as sampler:
        out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads(out.decode())["summary"]["total_vms"] == 10
    refs = session_refs(tcp)
    assert refs and sampler.samples
    for pid, argv, env in sampler.samples:
        for secret in [PASSWORD] + sorted(refs):
            assert not any(secret.encode() in a for a in argv), argv
        if pid != p.pid:  # a child: nothing it could show either
            assert not any(PASSWORD.encode() in v for v in env.values()), env.keys()
    assert_no_secret(tcp, out.decode(), err.decode())


@pytest.mark.parametrize("source", SOURCES)
def test_wrong_password(tcp, binary, tmp_path, source):
    r = Runner(binary, tcp, tmp_path, source, password=WRONG_PASSWORD)
    for fmt in ("json", "table"):
        code, out, err = r.run("scan-vms", fmt=fmt)
        assert code == 1, err
        assert "SESSION_AUTHENTICATION_FAILED" in err
        assert_no_secret(tcp, out, err)


@pytest.mark.parametrize("source", SOURCES)
def test_connection_refused(tcp, binary, tmp_path, source):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = Runner(binary, tcp, tmp_path, source)
    for fmt in ("json", "table"):
        code, out, err = r.run("scan-vms", fmt=fmt, env={"VGPU_XAPI": "http://127.0.0.1:%d" % port})
        assert code == 1 and "cannot reach XAPI" in err, err
        assert_no_secret(tcp, out, err)


def _register_methods(tcp, binary, tmp_path):
    """The XAPI methods a register makes (login first), from a run on a fresh pool."""
    (tmp_path / "probe").mkdir()
    r = Runner(binary, tcp, tmp_path / "probe", "environment")
    code, out, err = r.run("register-vm", "--vm-uuid", ML_TRAIN_B, "--pool", "B", "--priority", "low")
    assert code == 0, err
    methods = []
    for c in tcp.call_log():
        if c["method"] not in methods:
            methods.append(c["method"])
    tcp.reset()
    tcp.clear_call_log()
    return methods


@pytest.mark.parametrize("source", SOURCES)
def test_error_replies_to_every_call(tcp, binary, tmp_path, source):
    """An error reply to each call a register makes, the login included: whatever the outcome,
    neither the password nor a session ref is shown."""
    methods = _register_methods(tcp, binary, tmp_path)
    assert "session.login_with_password" in methods and "VM.set_platform" in methods, methods
    failed = 0
    for i, method in enumerate(methods):
        tcp.reset()
        tcp.clear_call_log()
        (tmp_path / str(i)).mkdir()
        r = Runner(binary, tcp, tmp_path / str(i), source)
        tcp.inject_fault(method, code="INTERNAL_ERROR", params=["injected"])
        code, out, err = r.run("register-vm", "--vm-uuid", ML_TRAIN_B, "--pool", "B", "--priority", "low")
        failed += code != 0
        assert_no_secret(tcp, out, err)
    assert failed >= len(methods) // 2, failed


def test_a_dead_session_is_not_echoed(tcp, binary, tmp_path):
    """VGPU_XAPI_SESSION names a session that was logged out: xapi answers SESSION_INVALID with
    the ref, which the error shows as <session>."""
    dead = tcp.call("session.login_with_password", "root", PASSWORD, "1.0", "test")
    tcp.call("session.logout", dead)
    r = Runner(binary, tcp, tmp_path, "environment")
    for fmt in ("json", "table"):
        code, out, err = r.run("scan-vms", fmt=fmt, env={"VGPU_XAPI_SESSION": dead})
        assert code == 1 and "SESSION_INVALID" in err, err
        assert_no_secret(tcp, out, err, extra=[dead])
        if fmt == "json":
            details = json.loads(err.strip().splitlines()[-1])["error"]["details"]
            assert details["xapi_params"] == ["<session>"], details


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("method", ["session.login_with_password", "VM.get_all_records_where"])
def test_answers_slower_than_the_timeout(tcp, binary, tmp_path, source, method):
    """xapi_timeout_s = 1 and an answer 4 s late: the command fails within the bound, showing no
    secret."""
    r = Runner(binary, tcp, tmp_path, source, config="xapi_timeout_s = 1\n")
    tcp.inject_fault(method, latency_ms=4000, code=None)
    started = time.time()
    code, out, err = r.run("scan-vms")
    assert time.time() - started < 60
    assert code == 1 and "within 1 s" in err, err
    assert_no_secret(tcp, out, err)


def test_a_password_put_in_the_config_file_is_not_echoed(tcp, binary, tmp_path):
    """An administrator who writes the password itself into vgpu.conf gets the key refused
    (exit 2, naming it), and the value is not repeated."""
    r = Runner(binary, tcp, tmp_path, "environment", config='xapi_password = "%s"\n' % PASSWORD)
    for fmt in ("json", "table"):
        code, out, err = r.run("scan-vms", fmt=fmt)
        assert code == 2 and "xapi_password" in err, err
        assert_no_secret(tcp, out, err)

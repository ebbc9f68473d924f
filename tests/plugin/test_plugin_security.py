"""Security of the plugin (docs/security.md): no shell between xapi and the core, the session xapi
hands the plugin never in an answer, a log line or a child's command line, and unknown functions
and arguments refused before anything is read or written.

The process checks trace every execve of the simulator's process tree (the plugins it runs, their
children, and the plugins those reach through host.call_plugin) with strace, so a shell run by
absolute path is caught as well as one found on PATH. strace is required: without it these tests
fail, they never pass by skipping.

The helpers at the top (ExecTrace, shell_of, ProcessSampler) are also used by
tests/cli/test_security.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from plugin_support import (HELPER_FILE, ML_TRAIN_B, PLUGIN_FILE, RENDER_01, check_failure, parse_response,
                            write_host_config)

# ------------------------------------------------------------------------------------------------
# Shells, execve traces, process samples

SHELLS = frozenset(["sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "busybox", "fish", "csh",
                    "tcsh", "yash", "posh", "rbash"])
# Recognisable secrets: any appearance of one of these in an output is a leak.
SECRET = "vgpu-Secret-Pa55word-4c1e9b"


def shell_of(path):
    """The shell that exec'ing ``path`` runs (its name, its link target, or the interpreter of its
    #! line), else None."""
    names = [os.path.basename(path), os.path.basename(os.path.realpath(path))]
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except (IOError, OSError):
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode("utf-8", "replace").split()
        if words:
            names += [os.path.basename(words[0]), os.path.basename(os.path.realpath(words[0]))]
            if os.path.basename(words[0]) == "env" and len(words) > 1:
                names.append(os.path.basename(words[-1]))
    for name in names:
        if name in SHELLS:
            return name
    return None


def need_strace():
    exe = shutil.which("strace")
    if not exe:
        pytest.fail("strace is needed to trace every program these tests run (Debian: apt-get install strace)",
                    pytrace=False)
    return exe


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_EXEC_LINE = re.compile(r"^(\d+)\s+(execve|execveat)\((.*)$")


class Exec(object):
    def __init__(self, pid, path, argv, ok):
        self.pid, self.path, self.argv, self.ok = pid, path, argv, ok

    def __repr__(self):
        return "Exec(pid=%s, %r, %r%s)" % (self.pid, self.path, [a[:80] for a in self.argv[:4]],
                                            "" if self.ok else ", failed")


def _unescape(s):
    return re.sub(r"\\(.)", r"\1", s)


def parse_trace(text):
    """The execve/execveat calls of an ``strace -f -o`` file: [Exec]."""
    execs = []
    for line in text.splitlines():
        m = _EXEC_LINE.match(line)
        if not m:
            continue
        pid, _, rest = m.groups()
        # execve("path", ["argv0", ...], ...) and execveat(dirfd, "path", [...]): the first quoted
        # string is the path either way.
        quoted = [_unescape(q) for q in _QUOTED.findall(rest)]
        if not quoted:
            continue
        ok = bool(re.search(r"\) = 0\s*$", line)) if "<unfinished" not in line else None
        execs.append(Exec(int(pid), quoted[0], quoted[1:], ok))
    return execs


class ExecTrace(object):
    """Every exec of process ``pid`` and its future descendants, while the ``with`` block runs."""

    def __init__(self, pid, workdir):
        self.pid = pid
        self.out = os.path.join(str(workdir), "exec-trace-%d.txt" % pid)
        self.proc = None
        self.text = ""

    def __enter__(self):
        strace = need_strace()
        self.proc = subprocess.Popen([strace, "-f", "-qq", "-s", "65536", "-e", "trace=execve,execveat",
                                      "-o", self.out, "-p", str(self.pid)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("strace could not attach to %d: %s" % (
                    self.pid, self.proc.stderr.read().decode("utf-8", "replace")))
            if _tracer_of(self.pid):
                return self
            time.sleep(0.05)
        raise AssertionError("strace did not attach to %d within 30 s" % self.pid)

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with open(self.out) as f:
            self.text = f.read()
        return False

    def execs(self):
        return parse_trace(self.text)


def run_traced(argv, workdir, **kw):
    """``argv`` run under strace -f: (CompletedProcess, [Exec])."""
    strace = need_strace()
    out = os.path.join(str(workdir), "exec-trace-run-%d.txt" % len(os.listdir(str(workdir))))
    proc = subprocess.run([strace, "-f", "-qq", "-s", "65536", "-e", "trace=execve,execveat", "-o", out] + list(argv),
                          **kw)
    with open(out) as f:
        return proc, parse_trace(f.read())


def _tracer_of(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (IOError, OSError):
        pass
    return 0


def shell_execs(execs):
    """The execs that ran (or tried to run) a shell."""
    return [e for e in execs if shell_of(e.path) or (e.argv and os.path.basename(e.argv[0]) in SHELLS)]


def no_shell_dir(path, **programs):
    """A PATH directory holding only symlinks ``name -> program``, no shell."""
    os.makedirs(str(path), exist_ok=True)
    for name, target in programs.items():
        os.symlink(target, os.path.join(str(path), name))
    assert not any(shell_of(os.path.join(str(path), n)) for n in os.listdir(str(path)))
    return str(path)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError):
        return None


def descendants(root):
    """The pids under ``root`` (not itself), from /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read("/proc/%s/stat" % name)
        if not stat:
            continue
        try:
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class ProcessSampler(object):
    """Samples the command line and environment of ``root`` and its descendants until stopped:
    ``samples`` is [(pid, argv [bytes], environ {bytes: bytes})]."""

    def __init__(self, root, include_root=True, interval=0.02):
        self.root, self.include_root, self.interval = root, include_root, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.daemon = True

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        return False

    def _run(self):
        while not self._stop.is_set():
            pids = ([self.root] if self.include_root else []) + descendants(self.root)
            for pid in pids:
                cmdline = _read("/proc/%d/cmdline" % pid)
                environ = _read("/proc/%d/environ" % pid)
                if not cmdline:
                    continue
                env = dict(kv.partition(b"=")[::2] for kv in (environ or b"").split(b"\0") if kv)
                self.samples.append((pid, cmdline.split(b"\0")[:-1], env))
            self._stop.wait(self.interval)

    def with_text(self, text):
        """Samples whose command line holds ``text``."""
        needle = text.encode("utf-8")
        return [s for s in self.samples if any(needle in a for a in s[1])]


# ------------------------------------------------------------------------------------------------
# No shell between xapi and the core


def _plugin_runs(execs):
    return [e for e in execs if len(e.argv) >= 2 and os.path.basename(e.argv[1]) == "vgpu"]


def _admin_runs(execs, admin):
    return [e for e in execs if os.path.realpath(e.path) == os.path.realpath(admin) and "call" in e.argv]


def test_plugin_and_its_fan_out_run_no_shell(pool, tmp_path):
    """A call forwarded from a member to the master, the master's refresh of the member and a
    read, with every host's plugin given a PATH without a shell: they work, and no process of the
    whole chain (plugins, vgpu-admin, the plugins reached through host.call_plugin) runs a shell."""
    path = no_shell_dir(tmp_path / "bin", python3=pool.variant.python, python=pool.variant.python,
                        **{"vgpu-admin": pool.admin})
    for h in pool.hosts:
        pool.set_env(h, PATH=path)
    member = pool.members[0]
    with ExecTrace(pool.sim.proc.pid, tmp_path) as trace:
        reg = pool.call("register", {"vm-uuid": RENDER_01, "pool": "A", "priority": "high"}, host=member)
        listed = pool.call("list", host=pool.master)
        changed = pool.call("set-vm-id", {"vm-uuid": RENDER_01, "vm-id": "7", "restart": "true", "yes": "true"},
                            host=pool.master)
    assert (reg["vm_id"], reg["pool"], [r["ok"] for r in reg["replicas"]]) == (1, "A", [True])
    assert [(v["vm_uuid"], v["vm_id"]) for v in listed] == [(RENDER_01, 1)]
    assert (changed["vm_id"], changed["restarted"]) == (7, True)
    execs = trace.execs()
    assert shell_execs(execs) == [], shell_execs(execs)
    # Not vacuous: the trace saw the member's plugin, the master's (forwarded register, list,
    # set-vm-id) and the member's refreshes, and on the cli path each one's vgpu-admin.
    runs = _plugin_runs(execs)
    assert len(runs) >= 6, execs
    if pool.variant.backend == "cli":
        assert len(_admin_runs(execs, pool.admin)) >= 6, execs


def _trampoline_path(tmp_path, dom0):
    name = "python3" if dom0.version.startswith("3.") else "python2"
    return no_shell_dir(tmp_path / "bin", **{name: dom0.python})


def _direct_env(tmp_path, path, dom0, admin):
    return {
        "PATH": path,
        "PYTHONPATH": dom0.standin,
        "VGPU_ADMIN": admin,
        "VGPU_PLUGIN_BACKEND": "cli",
        "VGPU_CONFIG": str(tmp_path / "absent.conf"),
        "VGPU_DB": str(tmp_path / "registry.db"),
        "VGPU_XAPI": "unix:" + str(tmp_path / "no-xapi.sock"),
        "VGPU_PLUGIN_LOG": str(tmp_path / "plugin.log"),
    }


def _pools_of(stdout):
    return [p["pool_id"] for p in json.loads(parse_response(stdout)["Value"])]


def test_first_line_rewritten_to_the_interpreter_runs_no_shell_at_all(tmp_path, dom0, admin):
    """docs/decisions/0011-no-shell.md: a build for one XCP-ng release may replace the #!/bin/sh
    line by that release's interpreter; the file then runs with no shell anywhere."""
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    with open(PLUGIN_FILE) as f:
        lines = f.read().split("\n")
    assert lines[0] == "#!/bin/sh", lines[0]
    lines[0] = "#!" + dom0.python
    (plugin_dir / "vgpu").write_text("\n".join(lines))
    (plugin_dir / "vgpu").chmod(0o755)
    shutil.copy(HELPER_FILE, str(plugin_dir / "vgpu_plugin.py"))
    env = _direct_env(tmp_path, no_shell_dir(tmp_path / "bin"), dom0, admin)
    proc, execs = run_traced([str(plugin_dir / "vgpu"), _method_call("list-pools", {})], tmp_path, env=env,
                             cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _pools_of(proc.stdout) == ["A", "B"]
    assert shell_execs(execs) == [], execs
    assert _admin_runs(execs, admin), execs


def test_trampoline_is_one_exec_of_the_interpreter(tmp_path, dom0, admin):
    """The file as shipped: the kernel runs its first line's /bin/sh, which does nothing but exec
    the interpreter with the plugin's own arguments, unchanged (docs/decisions/0011-no-shell.md).
    That is the one shell of the chain; nothing under the interpreter runs another."""
    env = _direct_env(tmp_path, _trampoline_path(tmp_path, dom0), dom0, admin)
    call = _method_call("list-pools", {"x": "$(touch %s) `id` ; | & * \" '" % (tmp_path / "pwned")})
    proc, execs = run_traced([PLUGIN_FILE, call], tmp_path, env=env, cwd="/", stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The argument reached the core unchanged (and was refused as an unknown key by it).
    code, message, details = check_failure(parse_response(proc.stdout)["ErrorDescription"])
    assert code == "VGPU_INVALID_ARGUMENT" and details["value"] == "x", (message, details)
    assert not os.path.exists(str(tmp_path / "pwned"))
    ok = [e for e in execs if e.ok is not False]
    assert ok[0].path == PLUGIN_FILE and shell_of(ok[0].path) == "sh", ok
    # The shell's process execs the interpreter, with exactly [name, plugin, the argument] ...
    same = [e for e in ok[1:] if e.pid == ok[0].pid]
    assert same, ok
    assert os.path.realpath(same[0].path) == os.path.realpath(dom0.python), same
    assert same[0].argv[1:] == [PLUGIN_FILE, call], same[0].argv
    # ... and starts nothing else: every other exec is the core's, in a child of the interpreter.
    others = [e for e in ok if e.pid != ok[0].pid]
    assert others and all(os.path.realpath(e.path) == os.path.realpath(admin) for e in others), others
    assert shell_execs(ok[1:]) == [], ok


def _method_call(fn, args):
    from xapi_sim.plugins import method_call

    return method_call(fn, "OpaqueRef:direct-run", args)


# ------------------------------------------------------------------------------------------------
# The plugin's session: never in an answer, a log line or a child's command line


def _plugin_sessions(pool, test_session):
    """The session refs the plugins used (the first parameter of their XAPI calls)."""
    refs = set()
    for c in pool.sim.call_log():
        if c["method"].startswith("session.") or not c["params"]:
            continue
        ref = c["params"][0]
        if isinstance(ref, str) and ref.startswith("OpaqueRef:") and ref != test_session:
            refs.add(ref)
    return refs


def _log(pool, host=None):
    path = pool.log_file(host)
    return open(path).read() if os.path.exists(path) else ""


def _wait_for_call(pool, method, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        calls = pool.sim.call_log(method)
        if calls:
            return calls[0]
        time.sleep(0.05)
    raise AssertionError("no %s call within %d s" % (method, timeout))


def _test_session(pool):
    return pool.xenapi._session


def test_session_invalidated_in_flight_is_not_echoed(pool, tmp_path):
    """The plugin's session dies while its call is in flight: xapi answers SESSION_INVALID with the
    ref as parameter. The failure, the log and every command line stay free of the ref; on the cli
    path the child vgpu-admin gets it in its environment only."""
    pool.call("list")  # the registry exists: the scan below makes one XAPI call, the slow one
    pool.sim.clear_call_log()
    pool.sim.inject_fault("VM.get_all_records_where", latency_ms=2500, code=None)
    result = {}

    def scan():
        try:
            result["answer"] = pool.call_raw("scan", xenapi=pool.sim.xenapi_session())
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    with ProcessSampler(pool.sim.proc.pid, include_root=False) as sampler:
        t = threading.Thread(target=scan)
        t.start()
        ref = _wait_for_call(pool, "VM.get_all_records_where")["params"][0]
        time.sleep(0.5)  # sampled while the call waits
        pool.sim.call("session.logout", ref)
        t.join(120)
    assert "error" in result, result
    code, message, details = check_failure(result["error"].details)
    assert code == "VGPU_XAPI_ERROR" and details["xapi_code"] == "SESSION_INVALID", (message, details)
    assert ref not in message and ref not in json.dumps(details), (message, details)
    assert ref not in _log(pool)
    # Command lines: the ref is only where xapi itself puts it, in the plugin's one argument.
    holding = sampler.with_text(ref)
    assert holding, "the sampler never saw the plugin running"
    for pid, argv, env in holding:
        assert len(argv) >= 3 and argv[-2].endswith(b"/vgpu") and argv[-1].startswith(b"<methodCall>"), argv
    if pool.variant.backend == "cli":
        children = [s for s in sampler.samples if any(a.endswith(b"vgpu-admin") for a in s[1][:1])]
        assert children, "the sampler never saw vgpu-admin running"
        for pid, argv, env in children:
            assert not any(ref.encode() in a for a in argv), argv
            assert [k for k, v in env.items() if ref.encode() in v] == [b"VGPU_XAPI_SESSION"], env.keys()


@pytest.mark.parametrize("method", ["VM.get_by_uuid", "VM.set_platform", "pool.add_to_other_config"])
def test_xapi_error_replies_do_not_echo_the_session(pool, method):
    """Error replies of the calls a register makes: its session appears in none of the failure,
    the plugin's log, or the details."""
    pool.sim.inject_fault(method, code="INTERNAL_ERROR", params=["injected"])
    code, message, details = pool.fail("register", {"vm-uuid": ML_TRAIN_B, "pool": "B", "priority": "low"})
    assert code == "VGPU_XAPI_ERROR", (message, details)
    refs = _plugin_sessions(pool, _test_session(pool))
    assert refs, pool.sim.call_log()
    text = message + json.dumps(details) + _log(pool)
    assert [r for r in refs if r in text] == []


def test_timeout_does_not_echo_the_session(pool):
    """An answer slower than the configured timeout (1 s): the wait is bounded, and neither the
    failure nor the log shows the session."""
    write_host_config(pool, pool.master, "xapi_timeout_s = 1\n")
    pool.sim.inject_fault("VM.get_all_records_where", latency_ms=4000, code=None)
    started = time.time()
    code, message, details = pool.fail("scan")
    assert time.time() - started < 60
    assert code == "VGPU_XAPI_ERROR" and "within 1 s" in message, (message, details)
    refs = _plugin_sessions(pool, _test_session(pool))
    text = message + json.dumps(details) + _log(pool)
    assert [r for r in refs if r in text] == []


# ------------------------------------------------------------------------------------------------
# Unknown functions and arguments: refused before anything else happens

REFUSALS = [
    ("unknown function", "no-such-function", {}, "UNKNOWN_XENAPI_PLUGIN_FUNCTION"),
    ("unknown key, read", "list", {"colour": "red"}, "VGPU_INVALID_ARGUMENT"),
    ("unknown key, mutating", "register",
     {"vm-uuid": RENDER_01, "pool": "A", "priority": "high", "colour": "red"}, "VGPU_INVALID_ARGUMENT"),
    ("secrets as keys, mutating", "set-vm-id",
     {"vm-uuid": RENDER_01, "vm-id": "9", "password": SECRET, "session": SECRET}, "VGPU_INVALID_ARGUMENT"),
]


def _files(pool):
    """Every file of the test's directory but the logs: name -> (size, mtime, bytes)."""
    out = {}
    for name in os.listdir(pool.workdir):
        path = os.path.join(pool.workdir, name)
        if name.startswith("plugin-") or not os.path.isfile(path):
            continue
        st = os.stat(path)
        out[name] = (st.st_size, st.st_mtime_ns, _read(path))
    return out


def _refused(pool, fn, args, host, expect):
    import XenAPI

    pool.host_ref(host)  # the test's own lookups, before the call log is cleared
    pool.sim.clear_call_log()
    before = _files(pool)
    try:
        answer = pool.call_raw(fn, args, host=host)
    except XenAPI.Failure as e:
        description = e.details
    else:
        raise AssertionError("%s %r succeeded: %s" % (fn, args, answer))
    assert description[0] == expect, description
    # The only XAPI call is the test's own host.call_plugin: the plugin made none (no session
    # use, no forwarding to the master), and no file was created or touched.
    assert [c["method"] for c in pool.sim.call_log()] == ["host.call_plugin"], pool.sim.call_log()
    assert _files(pool) == before
    text = json.dumps(description) + _log(pool, host)
    assert SECRET not in text, text


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refused_before_anything_happens(pool, case):
    _, fn, args, expect = case
    for host in (pool.master, pool.members[0]):
        _refused(pool, fn, args, host, expect)
    assert not os.path.exists(pool.db(pool.master)) and not os.path.exists(pool.db(pool.members[0]))
    # Again with registries on both hosts: neither is opened for writing, nor changed.
    pool.call("register", {"vm-uuid": RENDER_01, "pool": "B", "priority": "low"})
    assert os.path.exists(pool.db(pool.master)) and os.path.exists(pool.db(pool.members[0]))
    for host in (pool.master, pool.members[0]):
        _refused(pool, fn, args, host, expect)

"""What the plugin writes and hands on (SPEC section 4): stdout carries only the XML-RPC answer, in
ASCII, whatever the core prints; arguments reach the core untouched (no shell); errors keep the
Failure shape; logs go to the log, never stdout.

Most tests here run plugin/vgpu directly, as xapi execs it (one argv word, environment of PATH plus
the plugin's variables, no LANG), to see its raw stdout. The native path is driven with the test
doubles in fakes/ where the real extension cannot be made to misbehave."""

import json
import os
import stat
import subprocess

import pytest

from plugin_support import (FAKES_DIR, PLUGIN_FILE, PLUGIN_TESTS_DIR, RENDER_01, REPO_DIR, check_failure,
                            find_modern_python, find_python, loud_skip, parse_response, run_plugin_direct)

UNICODE_VM = "6b1f1e0c-0c8a-4f57-9d0e-7d3c2a1b0e99"
UNICODE_NAME = u"Caf\u00e9-\u00dcbung \u2713 \u65e5\u672c \U0001F600"


def _python(which):
    exe, version = find_modern_python() if which == "modern" else find_python(which)
    if not exe:
        loud_skip("CPython %s for the direct plugin runs" % which, version)
    return exe


@pytest.fixture(params=["2.7", "3.6", "modern"], ids=lambda p: "py" + p)
def python(request):
    return _python(request.param)


@pytest.fixture(params=["3.6", "modern"], ids=lambda p: "py" + p)
def python3(request):
    """An interpreter that runs the native path."""
    return _python(request.param)


def direct_env(workdir, **extra):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": PLUGIN_TESTS_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "VGPU_CONFIG": os.path.join(workdir, "vgpu.conf"),
        "VGPU_DB": os.path.join(workdir, "registry.db"),
        "VGPU_XAPI": "unix:" + os.path.join(workdir, "no-xapi.sock"),
        "VGPU_PLUGIN_LOG": os.path.join(workdir, "plugin.log"),
    }
    env.update(dict((k, v) for k, v in extra.items() if v is not None))
    return env


def read_log(workdir):
    path = os.path.join(workdir, "plugin.log")
    return open(path).read() if os.path.exists(path) else ""


def answer(stdout):
    """Success value (str) or Failure description (list) of a raw plugin stdout."""
    response = parse_response(stdout)
    if response["Status"] == "Success":
        return response["Value"]
    return response["ErrorDescription"]


def executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


# ------------------------------------------------------------------------------------------------
# native path (test double)

ODD_ARGS = {
    "vm-uuid": RENDER_01,
    "forwarded-by": "88b4df3d-b12e-4b82-8b5c-e4d2eb98580c",
    "odd key": "$(touch pwned); echo 'quoted' \"double\" `x` | cat > y",
    "vm_name": u"n\u00e4me \u2713",
    "empty": "",
}


def test_native_junk_on_stdout_goes_to_stderr(python3, workdir):
    env = direct_env(workdir, VGPU_PLUGIN_BACKEND="native", VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"))
    rc, out, err = run_plugin_direct(python3, "set_vm_id", ODD_ARGS, env, session="OpaqueRef:abc-123")
    assert rc == 0, err
    value = answer(out)  # parse_response: ASCII, one document, nothing before or after
    assert value.isascii()
    got = json.loads(value)
    assert got == {"fake": True, "fn": "set-vm-id", "args": ODD_ARGS, "session": "OpaqueRef:abc-123",
                   "config": env["VGPU_CONFIG"], "type_args": "dict", "note": u"\u00e9t\u00e9"}
    text = err.decode("utf-8", "replace")
    for junk in ("junk from print()", "junk from sys.stdout.write", "junk from os.write(1)",
                 "junk from C printf without a newline"):
        assert junk in text, text
    assert b"junk from" not in out
    assert "set-vm-id" in read_log(workdir) and "native" in read_log(workdir)


def test_native_errors_become_failures(python3, workdir):
    env = direct_env(workdir, VGPU_PLUGIN_BACKEND="native", VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"))
    rc, out, err = run_plugin_direct(python3, "register", {"raise": "vgpu"}, env)
    assert rc == 0
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_VM_ID_IN_USE"
    assert message == "VM ID 5 already in use by VM x (caf\\u00e9 \\u2713)"
    assert details == {"vm_id": 5, "vm_name": u"caf\u00e9 \u2713", "next_free_vm_id": 6}

    rc, out, err = run_plugin_direct(python3, "list", {"raise": "no-details"}, env)
    assert check_failure(answer(out)) == ("VGPU_DATABASE_ERROR", "database is gone", {})

    rc, out, err = run_plugin_direct(python3, "scan", {"raise": "runtime"}, env)
    assert rc == 0
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL"
    assert "RuntimeError" in message and "the extension crashed" in message
    assert b"Traceback" not in out
    assert "Traceback" in read_log(workdir)  # the traceback is logged, not answered


def test_broken_extension_falls_back_to_the_cli_unless_native_is_forced(python3, workdir, admin):
    broken = os.path.join(FAKES_DIR, "broken")
    env = direct_env(workdir, VGPU_PYTHONPATH=broken, VGPU_ADMIN=admin)
    rc, out, err = run_plugin_direct(python3, "list-pools", {}, env)
    pools = json.loads(answer(out))
    assert [p["pool_id"] for p in pools] == ["A", "B"]
    log = read_log(workdir)
    assert "undefined symbol" in log and "(cli, python3." in log

    env["VGPU_PLUGIN_BACKEND"] = "native"
    rc, out, err = run_plugin_direct(python3, "list-pools", {}, env)
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and "undefined symbol" in message
    assert details == {"python_path": broken}


def test_python2_never_loads_an_extension(workdir, admin):
    python = _python("2.7")
    env = direct_env(workdir, VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"), VGPU_ADMIN=admin)
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    assert [p["pool_id"] for p in json.loads(answer(out))] == ["A", "B"]  # the real core, not the echo
    env["VGPU_PLUGIN_BACKEND"] = "native"
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and "Python 2.7" in message


# ------------------------------------------------------------------------------------------------
# CLI path


def test_cli_gets_arguments_verbatim_without_a_shell(python, workdir):
    """A stand-in vgpu-admin that answers with what it received: argv word for word, xapi's session
    and the config path in its environment."""
    modern = _python("modern")
    echo = executable(os.path.join(workdir, "echo-admin"), """#!%s
import json, os, sys
sys.stdout.write(json.dumps({"argv": sys.argv[1:], "session": os.environ.get("VGPU_XAPI_SESSION"),
                             "config": os.environ.get("VGPU_CONFIG"), "lang": os.environ.get("LANG")}) + "\\n")
""" % modern)
    env = direct_env(workdir, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=echo)
    rc, out, err = run_plugin_direct(python, "set_vm_id", ODD_ARGS, env, session="OpaqueRef:s-1")
    assert rc == 0, err
    value = answer(out)
    assert value.isascii()
    got = json.loads(value)
    expected_args = ["%s=%s" % (k, v) for k, v in sorted(ODD_ARGS.items())]
    assert got == {"argv": ["call", "--", "set-vm-id"] + expected_args, "session": "OpaqueRef:s-1",
                   "config": env["VGPU_CONFIG"], "lang": None}
    assert not os.path.exists(os.path.join("/", "pwned"))


def test_cli_stderr_chatter_is_logged_and_stdout_junk_is_refused(python, workdir, admin):
    chatty = executable(os.path.join(workdir, "chatty-admin"),
                        '#!/bin/sh\necho "note: something the core wanted to say" >&2\nexec "%s" "$@"\n' % admin)
    env = direct_env(workdir, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=chatty)
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    assert rc == 0
    assert [p["pool_id"] for p in json.loads(answer(out))] == ["A", "B"]
    assert "note: something the core wanted to say" in read_log(workdir)

    noisy = executable(os.path.join(workdir, "noisy-admin"),
                       '#!/bin/sh\necho "junk on stdout"\nexec "%s" "$@"\n' % admin)
    env["VGPU_ADMIN"] = noisy
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    assert rc == 0
    code, message, details = check_failure(answer(out))  # still exactly one XML-RPC answer
    assert code == "VGPU_INTERNAL" and "without a JSON answer" in message
    assert "junk on stdout" in details["stdout"] and details["exit_status"] == 0


def test_cli_crash_without_a_report_is_internal(python, workdir):
    crash = executable(os.path.join(workdir, "crash-admin"),
                       "#!/bin/sh\necho \"thread 'main' panicked at src/main.rs:1:1\" >&2\nexit 101\n")
    env = direct_env(workdir, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=crash)
    rc, out, err = run_plugin_direct(python, "scan", {}, env)
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and details["exit_status"] == 101 and "panicked" in details["stderr"]


# ------------------------------------------------------------------------------------------------
# Non-ASCII names, end to end, on every variant


def test_non_ascii_vm_name_gives_ascii_output(pool):
    pool.sim.add_vm(uuid=UNICODE_VM, name_label=UNICODE_NAME, power_state="Halted")
    raw = pool.call_raw("register", {"vm-uuid": UNICODE_VM, "pool": "A", "priority": "low"})
    assert raw.isascii() and "\\u00e9" in raw
    assert json.loads(raw)["vm_name"] == UNICODE_NAME
    code, message, details = pool.fail("register", {"vm-uuid": UNICODE_VM, "pool": "A", "priority": "low"})
    assert code == "VGPU_ALREADY_REGISTERED"
    assert "Caf\\u00e9" in message and details["vm_name"] == UNICODE_NAME
    # selecting by the non-ASCII name works, through xapi's UTF-8 argv
    assert pool.call("show", {"vm-name": UNICODE_NAME})["vm_uuid"] == UNICODE_VM

    # the raw bytes on the plugin's stdout, with the environment xapi gives (no LANG)
    env = {"PATH": os.environ.get("PATH", ""), "VGPU_HOST_UUID": pool.master, "VGPU_XAPI": pool.sim.url}
    env.update(dict((k, v) for k, v in pool.host_env(pool.master).items()))
    session = pool.sim.login()
    for fn, args in (("show", {"vm-name": UNICODE_NAME}), ("list", {}),
                     ("register", {"vm-uuid": UNICODE_VM, "pool": "B", "priority": "low"})):
        rc, out, err = run_plugin_direct(pool.variant.python, fn, args, env, session=session)
        assert rc == 0, err
        out.decode("ascii")
        assert UNICODE_NAME.encode("utf-8") not in out
        result = answer(out)
        assert (fn == "register") == isinstance(result, list), result


def test_calls_are_logged(pool):
    pool.call("list-pools")
    pool.fail("show", {"vm-uuid": RENDER_01})
    log = open(pool.log_file()).read()
    python = "python" + ".".join(pool.variant.version.split(".")[:2])
    assert "list-pools : ok (%s, %s" % (pool.variant.backend, python) in log
    assert "show vm-uuid=%s: VGPU_NOT_REGISTERED" % RENDER_01 in log


# ------------------------------------------------------------------------------------------------
# The file itself


def test_plugin_file_is_executable_ascii_and_starts_with_the_trampoline():
    mode = stat.S_IMODE(os.stat(PLUGIN_FILE).st_mode)
    assert mode == 0o755, oct(mode)
    data = open(PLUGIN_FILE, "rb").read()
    data.decode("ascii")
    assert data.startswith(b"#!/bin/sh\n")


def test_no_path_of_this_machine_in_the_committed_files():
    forbidden = [REPO_DIR, os.path.expanduser("~"), os.environ.get("PYENV_ROOT")]
    forbidden = [p.rstrip("/") for p in forbidden if p and len(p.rstrip("/")) > 1]
    files = [PLUGIN_FILE, os.path.join(os.path.dirname(PLUGIN_FILE), "README.md")]
    for d, _, names in os.walk(PLUGIN_TESTS_DIR):
        files += [os.path.join(d, n) for n in names if n.endswith((".py", ".sh", ".md"))]
    for name in files:
        if os.path.exists(name):
            text = open(name, "rb").read().decode("utf-8")
            for p in forbidden:
                assert p + "/" not in text and p + '"' not in text, (name, p)


def test_plugin_source_compiles_everywhere(python):
    code = "import sys; compile(open(sys.argv[1]).read(), 'vgpu', 'exec')"
    assert subprocess.call([python, "-c", code, PLUGIN_FILE]) == 0

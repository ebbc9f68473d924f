"""What the plugin writes and hands on (SPEC section 4): stdout carries only the XML-RPC answer, in
ASCII, whatever the core prints; arguments reach the core untouched (no shell); errors keep the
Failure shape; logs go to the log, never stdout.

Most tests here run plugin/vgpu directly, as xapi execs it (one argv word, an environment of xapi's
PATH plus the plugin's variables, no LANG), to see its raw stdout. The native path is driven with
the test doubles in fakes/ where the real extension cannot be made to misbehave."""

import json
import os
import shutil
import subprocess

import pytest

from plugin_support import (FAKES_DIR, HELPER_FILE, PLUGIN_DIR, PLUGIN_FILE, PLUGIN_TESTS_DIR, RENDER_01, REPO_DIR,
                            SAMPLE_MEMBER, XAPI_PLUGIN_PATH, Dom0Python, check_failure, parse_response,
                            run_plugin_direct)

UNICODE_VM = "6b1f1e0c-0c8a-4f57-9d0e-7d3c2a1b0e99"
UNICODE_NAME = u"Caf\u00e9-\u00dcbung \u2713 \u65e5\u672c \U0001F600"


def direct_env(workdir, dom0, **extra):
    env = {
        "PATH": XAPI_PLUGIN_PATH,
        "PYTHONPATH": dom0.standin,
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
    "forwarded-by": SAMPLE_MEMBER,
    "odd key": "$(touch pwned); echo 'quoted' \"double\" `x` | cat > y",
    "vm_name": u"n\u00e4me \u2713",
    "empty": "",
}


def test_native_junk_on_stdout_goes_to_stderr(dom0_py3, workdir):
    env = direct_env(workdir, dom0_py3, VGPU_PLUGIN_BACKEND="native", VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"))
    rc, out, err = run_plugin_direct(dom0_py3.python, "set_vm_id", ODD_ARGS, env, session="OpaqueRef:abc-123")
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


def test_native_errors_become_failures(dom0_py3, workdir):
    python3 = dom0_py3.python
    env = direct_env(workdir, dom0_py3, VGPU_PLUGIN_BACKEND="native", VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"))
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


def test_broken_extension_falls_back_to_the_cli_unless_native_is_forced(dom0_py3, workdir, admin):
    python3 = dom0_py3.python
    broken = os.path.join(FAKES_DIR, "broken")
    env = direct_env(workdir, dom0_py3, VGPU_PYTHONPATH=broken, VGPU_ADMIN=admin)
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


def test_python2_never_loads_an_extension(workdir, admin, tmp_root):
    py2 = Dom0Python("2.7").resolve(tmp_root)
    python = py2.python
    env = direct_env(workdir, py2, VGPU_PYTHONPATH=os.path.join(FAKES_DIR, "echo"), VGPU_ADMIN=admin)
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    assert [p["pool_id"] for p in json.loads(answer(out))] == ["A", "B"]  # the real core, not the echo
    env["VGPU_PLUGIN_BACKEND"] = "native"
    rc, out, err = run_plugin_direct(python, "list-pools", {}, env)
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and "Python 2.7" in message


# ------------------------------------------------------------------------------------------------
# CLI path


def echo_admin(workdir, tmp_root):
    """A stand-in vgpu-admin that answers with what it received: argv word for word, xapi's session,
    the config path and LANG from its environment."""
    modern = Dom0Python("modern").resolve(tmp_root).python
    return executable(os.path.join(workdir, "echo-admin"), """#!%s
import json, os, sys
sys.stdout.write(json.dumps({"argv": sys.argv[1:], "session": os.environ.get("VGPU_XAPI_SESSION"),
                             "config": os.environ.get("VGPU_CONFIG"), "lang": os.environ.get("LANG")}) + "\\n")
""" % modern)


def test_cli_gets_arguments_verbatim_without_a_shell(dom0, workdir, tmp_root):
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=echo_admin(workdir, tmp_root))
    rc, out, err = run_plugin_direct(dom0.python, "set_vm_id", ODD_ARGS, env, session="OpaqueRef:s-1")
    assert rc == 0, err
    value = answer(out)
    assert value.isascii()
    got = json.loads(value)
    expected_args = ["%s=%s" % (k, v) for k, v in sorted(ODD_ARGS.items())]
    assert got == {"argv": ["call", "--", "set-vm-id"] + expected_args, "session": "OpaqueRef:s-1",
                   "config": env["VGPU_CONFIG"], "lang": None}
    assert not os.path.exists(os.path.join("/", "pwned"))


def test_cli_stderr_chatter_is_logged_and_stdout_junk_is_refused(dom0, workdir, admin):
    chatty = executable(os.path.join(workdir, "chatty-admin"),
                        '#!/bin/sh\necho "note: something the core wanted to say" >&2\nexec "%s" "$@"\n' % admin)
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=chatty)
    rc, out, err = run_plugin_direct(dom0.python, "list-pools", {}, env)
    assert rc == 0
    assert [p["pool_id"] for p in json.loads(answer(out))] == ["A", "B"]
    assert "note: something the core wanted to say" in read_log(workdir)

    noisy = executable(os.path.join(workdir, "noisy-admin"),
                       '#!/bin/sh\necho "junk on stdout"\nexec "%s" "$@"\n' % admin)
    env["VGPU_ADMIN"] = noisy
    rc, out, err = run_plugin_direct(dom0.python, "list-pools", {}, env)
    assert rc == 0
    code, message, details = check_failure(answer(out))  # still exactly one XML-RPC answer
    assert code == "VGPU_INTERNAL" and "without a JSON answer" in message
    assert "junk on stdout" in details["stdout"] and details["exit_status"] == 0


def test_cli_crash_without_a_report_is_internal(dom0, workdir):
    crash = executable(os.path.join(workdir, "crash-admin"),
                       "#!/bin/sh\necho \"thread 'main' panicked at src/main.rs:1:1\" >&2\nexit 101\n")
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=crash)
    rc, out, err = run_plugin_direct(dom0.python, "scan", {}, env)
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and details["exit_status"] == 101 and "panicked" in details["stderr"]


def canned_admin(workdir, stdout, status):
    """A stand-in vgpu-admin that writes ``stdout`` (bytes, as given) and exits with ``status``."""
    path = os.path.join(workdir, "canned-answer")
    with open(path, "wb") as f:
        f.write(stdout)
    return executable(os.path.join(workdir, "canned-admin"), '#!/bin/sh\ncat "%s"\nexit %d\n' % (path, status))


# What vgpu-admin call writes on success is one line of JSON: the plugin takes that line without
# parsing it when the exit status is 0; everything else is parsed, and refused when not JSON.
ANSWERS_TAKEN = [
    (b'{"vm_id":1,"vm_name":"caf\\u00e9 }{ ][ \\" x","drift":[]}\n', 0),
    (b'[{"pool_id":"A","vms":0},{"pool_id":"B","vms":2}]\n', 0),
    (b'{"a":1}', 0),  # no newline
    (b'  {"a": 1}\r\n', 0),  # blanks around the document
    (b'"just a string"\n', 0),
    (b'{"registered":[],"failed":[{"vm_uuid":"x"}]}\n', 1),  # a sync some of whose VMs failed
]
ANSWERS_REFUSED = [
    (b"not json\n", 0),
    (b"\n", 0),
    (b"", 0),
    (b'{"vm_id": 1, "pool": "A"\n', 0),  # cut short
    (b'{"vm_id": 1]\n', 0),  # mismatched brackets
    (b'{"a": 1}\n{"b": 2}\n', 0),  # two documents
    (b'junk\n[1, 2]\n', 0),
    (b'[1, 2]\njunk\n', 0),
    (b'{"vm_id": 1, "pool": "A"\n', 1),
    (b"[not json]", 3),
]


@pytest.mark.parametrize("stdout,status", ANSWERS_TAKEN)
def test_cli_json_answer_is_handed_on_verbatim(dom0, workdir, stdout, status):
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=canned_admin(workdir, stdout, status))
    rc, out, err = run_plugin_direct(dom0.python, "list-pools", {}, env)
    assert rc == 0, err
    value = answer(out)
    assert value == stdout.decode("ascii").strip()
    json.loads(value)


@pytest.mark.parametrize("stdout,status", ANSWERS_REFUSED)
def test_cli_answer_that_is_not_one_json_document_is_internal(dom0, workdir, stdout, status):
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=canned_admin(workdir, stdout, status))
    rc, out, err = run_plugin_direct(dom0.python, "list-pools", {}, env)
    assert rc == 0, err
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and "without a JSON answer" in message, message
    assert details["exit_status"] == status and details["stdout"] == stdout.decode("ascii"), details


def test_missing_cli_is_named_as_text(dom0, workdir):
    """Python 3.6 appends repr(executable) to the error of a failed exec, and the plugin hands
    subprocess bytes: the message must name the path, not b'...'."""
    missing = os.path.join(workdir, "no-such-vgpu-admin")
    env = direct_env(workdir, dom0, VGPU_PLUGIN_BACKEND="cli", VGPU_ADMIN=missing)
    rc, out, err = run_plugin_direct(dom0.python, "list", {}, env)
    assert rc == 0, err
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL"
    assert message == "internal error: cannot run vgpu-admin %s: No such file or directory (set admin_path in %s)" % (
        missing, env["VGPU_CONFIG"])
    assert details == {"admin_path": missing, "reason": "No such file or directory"}


# ------------------------------------------------------------------------------------------------
# Non-ASCII names, end to end, on every variant


def test_non_ascii_vm_name_gives_ascii_output(pool):
    from xapi_sim.plugins import plugin_environment

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
    simulator_vars = {"VGPU_HOST_UUID": pool.master, "VGPU_XAPI": pool.sim.url}
    simulator_vars.update(pool.host_env(pool.master))
    env = plugin_environment(simulator_vars)
    session = pool.sim.login()
    for fn, args in (("show", {"vm-name": UNICODE_NAME}), ("list", {}),
                     ("register", {"vm-uuid": UNICODE_VM, "pool": "B", "priority": "low"})):
        rc, out, err = run_plugin_direct(pool.variant.python, fn, args, env, session=session)
        assert rc == 0, err
        out.decode("ascii")
        assert UNICODE_NAME.encode("utf-8") not in out
        result = answer(out)
        assert (fn == "register") == isinstance(result, list), result


@pytest.mark.parametrize("name", [u"caf\u00e9", u"\u65e5\u672c-\U0001F600"])
def test_unknown_non_ascii_function_is_unknown(pool, name):
    """XenAPIPlugin answers an unknown name with its own print, which Python 3.6 cannot do on the
    ASCII stdout xapi gives it when the name is not ASCII: the plugin's stdout takes it."""
    import XenAPI

    with pytest.raises(XenAPI.Failure) as e:
        pool.call_raw(name)
    assert e.value.details == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", name]


def test_unknown_non_ascii_function_answer_is_ascii(dom0, workdir):
    rc, out, err = run_plugin_direct(dom0.python, u"caf\u00e9", {}, direct_env(workdir, dom0))
    assert rc == 0, err
    assert answer(out) == ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", u"caf\u00e9"]  # parse_response: ASCII only
    assert b"caf&#233;" in out


def test_calls_are_logged(pool):
    pool.call("list-pools")
    pool.fail("show", {"vm-uuid": RENDER_01})
    log = open(pool.log_file()).read()
    python = "python" + ".".join(pool.variant.version.split(".")[:2])
    assert "list-pools : ok (%s, %s" % (pool.variant.backend, python) in log
    assert "show vm-uuid=%s: VGPU_NOT_REGISTERED" % RENDER_01 in log


# ------------------------------------------------------------------------------------------------
# The files themselves


def test_git_records_the_plugin_executable_and_its_helper_not():
    """The mode git records is the one a checkout, a tarball and the RPM get (xapi runs only
    executable files; the helper is imported, never run)."""
    try:
        out = subprocess.check_output(["git", "-C", REPO_DIR, "ls-files", "-s", "--", "plugin/vgpu",
                                       "plugin/vgpu_plugin.py"])
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail("cannot read the modes git records (git ls-files): %s" % e)
    modes = dict((line.split("\t")[1], line.split()[0]) for line in out.decode().splitlines())
    assert modes == {"plugin/vgpu": "100755", "plugin/vgpu_plugin.py": "100644"}, modes


def test_plugin_files_are_ascii_and_the_plugin_starts_with_the_trampoline():
    for path in (PLUGIN_FILE, HELPER_FILE):
        open(path, "rb").read().decode("ascii")
    assert open(PLUGIN_FILE, "rb").read().startswith(b"#!/bin/sh\n")


def test_the_plugin_is_glue():
    """The plugin file keeps to its functions and dispatch; the machinery lives in the helper."""
    lines = open(PLUGIN_FILE).read().splitlines()
    assert len(lines) < 300, len(lines)
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert not any(line.startswith(("import subprocess", "import json", "class ")) for line in code), code


def test_no_path_of_this_machine_in_the_committed_files():
    forbidden = [REPO_DIR, os.path.expanduser("~"), os.environ.get("PYENV_ROOT")]
    forbidden = [p.rstrip("/") for p in forbidden if p and len(p.rstrip("/")) > 1]
    files = [PLUGIN_FILE, HELPER_FILE, os.path.join(PLUGIN_DIR, "README.md")]
    for d, _, names in os.walk(PLUGIN_TESTS_DIR):
        files += [os.path.join(d, n) for n in names if n.endswith((".py", ".sh", ".md", ".txt"))]
    for name in files:
        if os.path.exists(name):
            text = open(name, "rb").read().decode("utf-8")
            for p in forbidden:
                assert p + "/" not in text and p + '"' not in text, (name, p)


def test_plugin_source_compiles_everywhere(dom0):
    code = "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"
    assert subprocess.call([dom0.python, "-c", code, PLUGIN_FILE, HELPER_FILE]) == 0


def test_the_plugin_without_its_helper_still_answers(dom0, workdir):
    """An install that left vgpu_plugin.py out: one proper Failure that says so."""
    alone = os.path.join(workdir, "plugins")
    os.mkdir(alone)
    shutil.copy2(PLUGIN_FILE, os.path.join(alone, "vgpu"))
    env = direct_env(workdir, dom0)
    rc, out, err = run_plugin_direct(dom0.python, "list", {}, env, argv0=os.path.join(alone, "vgpu"))
    assert rc == 0, err
    code, message, details = check_failure(answer(out))
    assert code == "VGPU_INTERNAL" and "vgpu_plugin.py" in message and details == {}

"""The XenAPIPlugin stand-ins (tests/plugin/XenAPIPlugin.py for xapi >= 24, xcp-ng-8.2/ for 8.2)
behave as dom0's modules do, on the interpreter of each release, run as xapi runs a plugin (xapi's
PATH, no LANG): a throwaway plugin exercises each kind of answer and each way of misusing the
module."""

import os
import subprocess

import pytest

from plugin_support import (STANDIN_82_DIR, XAPI_PLUGIN_PATH, Dom0Python, method_call, parse_response,
                            py27_site)

TOY_PLUGIN = '''
import XenAPIPlugin

def ok(session, args):
    return "session=%s args=%s" % (session._session, ",".join("%s:%s" % kv for kv in sorted(args.items())))

def fails(session, args):
    raise XenAPIPlugin.Failure("TOY_ERROR", ["one", "two"])

def tuple_params(session, args):
    raise XenAPIPlugin.Failure("TOY_ERROR", ("one", "two"))

def crashes(session, args):
    raise ValueError("bad value")

def exits(session, args):
    raise SystemExit(3)

def not_a_string(session, args):
    return {"a": "b"}

def uses_session(session, args):
    return str(session.xenapi)

def truth(session, args):
    return "yes" if session else "no"

def equality(session, args):
    return "same" if session == "x" else "different"

if __name__ == "__main__":
    XenAPIPlugin.dispatch({"ok": ok, "fails": fails, "tuple_params": tuple_params, "crashes": crashes,
                           "exits": exits, "not_a_string": not_a_string, "uses_session": uses_session,
                           "truth": truth, "equality": equality})
'''


@pytest.fixture(params=["2.7", "3.6", "modern"], ids=lambda p: "py" + p)
def dom0(request, tmp_root):
    return Dom0Python(request.param).resolve(tmp_root)


def run_toy(dom0, tmp_path, fn, args, pythonpath=None):
    toy = tmp_path / "toy"
    toy.write_text(TOY_PLUGIN)
    env = {"PATH": XAPI_PLUGIN_PATH, "PYTHONPATH": pythonpath or dom0.standin}
    proc = subprocess.run([dom0.python, str(toy), method_call(fn, "OpaqueRef:toy", args)], env=env, cwd="/",
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("fn,args,expected", [
    ("ok", {"b": "2", "a": "1"}, {"Status": "Success", "Value": "session=OpaqueRef:toy args=a:1,b:2"}),
    ("fails", {}, {"Status": "Failure", "ErrorDescription": ["TOY_ERROR", "one", "two"]}),
    ("crashes", {}, {"Status": "Failure",
                     "ErrorDescription": ["XENAPI_PLUGIN_FAILURE", "crashes", "ValueError", "bad value"]}),
    ("not_a_string", {}, {"Status": "Success", "Value": {"a": "b"}}),  # xapi refuses it (test_plugin_runner)
    ("nope", {}, {"Status": "Failure", "ErrorDescription": ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "nope"]}),
])
def test_answers(dom0, tmp_path, fn, args, expected):
    rc, out, err = run_toy(dom0, tmp_path, fn, args)
    assert rc == 0, err
    assert parse_response(out) == expected


def test_failure_params_must_be_a_list(dom0, tmp_path):
    rc, out, err = run_toy(dom0, tmp_path, "tuple_params", {})
    assert rc == 0, err
    description = parse_response(out)["ErrorDescription"]
    assert description[:3] == ["XENAPI_PLUGIN_FAILURE", "tuple_params", "TypeError"]
    assert "tuple" in description[3]


def test_system_exit_propagates(dom0, tmp_path):
    rc, out, err = run_toy(dom0, tmp_path, "exits", {})
    assert rc == 3 and out == b""


def test_using_the_session_fails_loudly(dom0, tmp_path):
    """Any attribute but _session is an XML-RPC call to xapi with the real module."""
    rc, out, err = run_toy(dom0, tmp_path, "uses_session", {})
    assert rc != 0 and out == b""
    assert "SessionUsed" in err and "session.xenapi" in err


@pytest.mark.parametrize("fn", ["truth", "equality"])
def test_bool_and_equality_are_calls_on_python2_only(dom0, tmp_path, fn):
    """On Python 2 XenAPI's session is an old-style class: bool() and == reach __getattr__."""
    rc, out, err = run_toy(dom0, tmp_path, fn, {})
    if dom0.version.startswith("2."):
        assert rc != 0 and out == b"" and "SessionUsed" in err, (rc, out, err)
    else:
        assert rc == 0, err
        assert parse_response(out)["Value"] == {"truth": "yes", "equality": "different"}[fn]


def test_unknown_non_ascii_name_is_printed_by_the_module(dom0, tmp_path):
    """The module's own print: Python 3.6 without a locale has an ASCII stdout and fails on a
    non-ASCII name, as dom0's module does; 3.12 (UTF-8 mode) and 2.7 (bytes) print UTF-8."""
    name = u"caf\u00e9"
    rc, out, err = run_toy(dom0, tmp_path, name, {})
    if dom0.version.startswith("3.6."):
        assert rc == 1 and out == b"" and "UnicodeEncodeError" in err, (rc, out, err)
    else:
        assert rc == 0, err
        assert name.encode("utf-8") in out
        assert parse_response(out.decode("utf-8").encode("ascii", "xmlcharrefreplace"))["ErrorDescription"] == [
            "UNKNOWN_XENAPI_PLUGIN_FUNCTION", name]


IMPORT_ONLY = "import XenAPIPlugin\n"


def test_the_82_module_is_python2_only_and_needs_xenapi_and_six(tmp_path, tmp_root):
    py2 = Dom0Python("2.7").resolve(tmp_root)
    site, why = py27_site(py2.python, tmp_root)
    assert site, why
    env = {"PATH": XAPI_PLUGIN_PATH}

    def imports(python, *path):
        env["PYTHONPATH"] = os.pathsep.join(path)
        proc = subprocess.run([python, "-c", IMPORT_ONLY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60)
        return proc.returncode, proc.stderr.decode("utf-8", "replace")

    assert imports(py2.python, STANDIN_82_DIR, site) == (0, "")
    rc, err = imports(py2.python, STANDIN_82_DIR)
    assert rc == 1 and "No module named XenAPI" in err, err
    only_xenapi = tmp_path / "only-xenapi"
    only_xenapi.mkdir()
    (only_xenapi / "XenAPI").symlink_to(os.path.join(site, "XenAPI"))
    rc, err = imports(py2.python, STANDIN_82_DIR, str(only_xenapi))
    assert rc == 1 and "No module named six" in err, err
    for which in ("3.6", "modern"):
        py3 = Dom0Python(which).resolve(tmp_root)
        rc, err = imports(py3.python, STANDIN_82_DIR, site)
        assert rc == 1 and "ImportError" in err and "Python 2 only" in err, err

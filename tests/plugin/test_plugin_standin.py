"""The XenAPIPlugin stand-in (tests/plugin/XenAPIPlugin.py) follows the plugin protocol on every
interpreter the plugin runs on: a throwaway plugin exercises each kind of answer."""

import os
import subprocess

import pytest

from plugin_support import PLUGIN_TESTS_DIR, find_modern_python, find_python, loud_skip, method_call, parse_response

TOY_PLUGIN = '''
import XenAPIPlugin

def ok(session, args):
    return "session=%s args=%s" % (session._session, ",".join("%s:%s" % kv for kv in sorted(args.items())))

def fails(session, args):
    raise XenAPIPlugin.Failure("TOY_ERROR", ["one", "two"])

def crashes(session, args):
    raise ValueError("bad value")

def exits(session, args):
    raise SystemExit(3)

if __name__ == "__main__":
    XenAPIPlugin.dispatch({"ok": ok, "fails": fails, "crashes": crashes, "exits": exits})
'''


@pytest.fixture(params=["2.7", "3.6", "modern"], ids=lambda p: "py" + p)
def python(request):
    exe, version = find_modern_python() if request.param == "modern" else find_python(request.param)
    if not exe:
        loud_skip("CPython %s for the XenAPIPlugin stand-in" % request.param, version)
    return exe


def run_toy(python, tmp_path, fn, args):
    toy = tmp_path / "toy"
    toy.write_text(TOY_PLUGIN)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": PLUGIN_TESTS_DIR, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([python, str(toy), method_call(fn, "OpaqueRef:toy", args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("fn,args,expected", [
    ("ok", {"b": "2", "a": "1"}, {"Status": "Success", "Value": "session=OpaqueRef:toy args=a:1,b:2"}),
    ("fails", {}, {"Status": "Failure", "ErrorDescription": ["TOY_ERROR", "one", "two"]}),
    ("crashes", {}, {"Status": "Failure",
                     "ErrorDescription": ["XENAPI_PLUGIN_FAILURE", "crashes", "ValueError", "bad value"]}),
    ("nope", {}, {"Status": "Failure", "ErrorDescription": ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "nope"]}),
])
def test_answers(python, tmp_path, fn, args, expected):
    rc, out = run_toy(python, tmp_path, fn, args)
    assert rc == 0
    assert parse_response(out) == expected


def test_system_exit_propagates(python, tmp_path):
    rc, out = run_toy(python, tmp_path, "exits", {})
    assert rc == 3 and out == b""

"""The plugin's first lines (a /bin/sh trampoline, see plugin/README.md "Interpreters") choose the
interpreter on each XCP-ng: python3 where there is one (8.3, 9), else python2 / python (8.2); an
interpreter that cannot import XenAPIPlugin hands over to the other major version; with none
usable, the answer is still a proper VGPU_INTERNAL Failure, never a traceback.

The plugin is exec'd through its own first line here, as xapi execs it (no LANG), with PATH holding
only the interpreters a test puts there, each seeing the XenAPIPlugin its XCP-ng release has: on
8.3 and 9 python3 has xapi's module; on 8.2 only python2 has one (the 8.2 stand-in, with XenAPI
and six), and a python3, if present, has none."""

import json
import os

import pytest

from plugin_support import Dom0Python, check_failure, parse_response, run_plugin_direct

CAFE = u"Caf\u00e9 9"


@pytest.fixture
def py2(tmp_root):
    return Dom0Python("2.7").resolve(tmp_root)


@pytest.fixture(params=["3.6", "modern"], ids=lambda p: "py" + p)
def py3(request, tmp_root):
    return Dom0Python(request.param).resolve(tmp_root)


def bin_dir(tmp_path, **entries):
    """A PATH directory: name -> (dom0 interpreter, True if it can import its XenAPIPlugin)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, (dom0, with_xenapiplugin) in entries.items():
        p = d / name
        if with_xenapiplugin:
            p.write_text('#!/bin/sh\nPYTHONPATH="%s" exec "%s" "$@"\n' % (dom0.standin, dom0.python))
        else:
            p.write_text('#!/bin/sh\nunset PYTHONPATH\nexec "%s" "$@"\n' % dom0.python)
        p.chmod(0o755)
    return str(d)


def env_for(tmp_path, path_dir, admin):
    return {
        "PATH": path_dir,
        "VGPU_ADMIN": admin,
        "VGPU_CONFIG": str(tmp_path / "vgpu.conf"),
        "VGPU_DB": str(tmp_path / "registry.db"),
        "VGPU_XAPI": "unix:" + str(tmp_path / "no-xapi.sock"),
        "VGPU_PLUGIN_LOG": str(tmp_path / "plugin.log"),
    }


def run(tmp_path, path_dir, admin, fn="list-pools", args=None):
    rc, out, err = run_plugin_direct(None, fn, args or {}, env_for(tmp_path, path_dir, admin))
    log = (tmp_path / "plugin.log").read_text() if (tmp_path / "plugin.log").exists() else ""
    return rc, out, err, log


def echo_admin(tmp_path, modern):
    """A vgpu-admin that answers with the argv it was given."""
    p = tmp_path / "echo-admin"
    p.write_text('#!%s\nimport json, sys\nsys.stdout.write(json.dumps({"argv": sys.argv[1:]}) + "\\n")\n' % modern)
    p.chmod(0o755)
    return str(p)


def test_python3_is_preferred(tmp_path, admin, py2, py3):
    """XCP-ng 8.3 / 9."""
    path = bin_dir(tmp_path, python3=(py3, True), python2=(py2, True), python=(py2, True))
    rc, out, err, log = run(tmp_path, path, admin)
    assert rc == 0, err
    assert [p["pool_id"] for p in json.loads(parse_response(out)["Value"])] == ["A", "B"]
    assert "(cli, %s" % py3.major_minor in log or "(native, %s" % py3.major_minor in log, log


def test_python2_alone(tmp_path, admin, py2):
    """XCP-ng 8.2 without a python3."""
    rc, out, err, log = run(tmp_path, bin_dir(tmp_path, python=(py2, True)), admin)
    assert rc == 0, err
    assert parse_response(out)["Status"] == "Success"
    assert "(cli, python2.7" in log, log


def test_python3_without_xenapiplugin_hands_over_to_python2(tmp_path, admin, py2, py3, tmp_root):
    """XCP-ng 8.2 with a python3, which cannot import XenAPIPlugin: python2 runs the call, with a
    non-ASCII argument (Python 3.6 cannot exec an argv it holds as non-ASCII text)."""
    modern = Dom0Python("modern").resolve(tmp_root).python
    path = bin_dir(tmp_path, python3=(py3, False), python2=(py2, True))
    rc, out, err, log = run(tmp_path, path, echo_admin(tmp_path, modern), "show", {"vm-name": CAFE})
    assert rc == 0, err
    response = parse_response(out)
    assert response["Status"] == "Success", response
    assert json.loads(response["Value"]) == {"argv": ["call", "--", "show", u"vm-name=" + CAFE]}
    assert "XenAPIPlugin not importable by" in log and "(cli, python2.7" in log, log


def test_no_usable_interpreter_still_answers(tmp_path, admin, py3):
    rc, out, err, log = run(tmp_path, bin_dir(tmp_path, python3=(py3, False)), admin, "show", {"vm-name": CAFE})
    assert rc == 0, err
    code, message, details = check_failure(parse_response(out)["ErrorDescription"])
    assert code == "VGPU_INTERNAL" and "XenAPIPlugin" in message
    assert details == {"python": py3.python}


def test_no_python_at_all(tmp_path, admin):
    rc, out, err, log = run(tmp_path, bin_dir(tmp_path), admin)
    assert rc == 127 and out == b""
    assert b"no python" in err

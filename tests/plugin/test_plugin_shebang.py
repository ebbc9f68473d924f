"""The plugin's first lines (a /bin/sh trampoline, see plugin/README.md "Shebang") choose the
interpreter on each XCP-ng: python3 where there is one (8.3, 9), else python2 / python (8.2); an
interpreter that cannot import XenAPIPlugin hands over to the other major version; with none
usable, the answer is still a proper VGPU_INTERNAL Failure, never a traceback.

The plugin is exec'd through its own first line here, with PATH holding only the interpreters a
test puts there."""

import json

from plugin_support import (PLUGIN_TESTS_DIR, check_failure, find_modern_python, find_python, loud_skip,
                            parse_response, run_plugin_direct)


def interpreters():
    py2, why2 = find_python("2.7")
    py3, why3 = find_modern_python()
    if not py2:
        loud_skip("shebang tests (CPython 2.7)", why2)
    if not py3:
        loud_skip("shebang tests (CPython 3)", why3)
    return py2, py3


def bin_dir(tmp_path, **links):
    """A PATH directory: name -> interpreter path (symlink), or ("isolated", path) for a python that
    ignores PYTHONPATH (so it cannot import XenAPIPlugin)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, target in links.items():
        p = d / name
        if isinstance(target, tuple):
            p.write_text('#!/bin/sh\nexec "%s" -I "$@"\n' % target[1])
            p.chmod(0o755)
        else:
            p.symlink_to(target)
    return str(d)


def env_for(tmp_path, path_dir, admin):
    return {
        "PATH": path_dir,
        "PYTHONPATH": PLUGIN_TESTS_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "VGPU_ADMIN": admin,
        "VGPU_CONFIG": str(tmp_path / "vgpu.conf"),
        "VGPU_DB": str(tmp_path / "registry.db"),
        "VGPU_XAPI": "unix:" + str(tmp_path / "no-xapi.sock"),
        "VGPU_PLUGIN_LOG": str(tmp_path / "plugin.log"),
    }


def list_pools(tmp_path, path_dir, admin):
    rc, out, err = run_plugin_direct(None, "list-pools", {}, env_for(tmp_path, path_dir, admin))
    log = (tmp_path / "plugin.log").read_text() if (tmp_path / "plugin.log").exists() else ""
    return rc, out, err, log


def test_python3_is_preferred(tmp_path, admin):
    py2, py3 = interpreters()
    rc, out, err, log = list_pools(tmp_path, bin_dir(tmp_path, python3=py3, python2=py2, python=py2), admin)
    assert rc == 0, err
    assert [p["pool_id"] for p in json.loads(parse_response(out)["Value"])] == ["A", "B"]
    assert "(cli, python3." in log or "(native, python3." in log, log


def test_python2_alone(tmp_path, admin):
    py2, _ = interpreters()
    rc, out, err, log = list_pools(tmp_path, bin_dir(tmp_path, python=py2), admin)
    assert rc == 0, err
    assert parse_response(out)["Status"] == "Success"
    assert "(cli, python2.7" in log, log


def test_python3_without_xenapiplugin_hands_over_to_python2(tmp_path, admin):
    py2, py3 = interpreters()
    rc, out, err, log = list_pools(tmp_path, bin_dir(tmp_path, python3=("isolated", py3), python2=py2), admin)
    assert rc == 0, err
    assert parse_response(out)["Status"] == "Success"
    assert "XenAPIPlugin not importable" in log and "(cli, python2.7" in log, log


def test_no_usable_interpreter_still_answers(tmp_path, admin):
    _, py3 = interpreters()
    rc, out, err, log = list_pools(tmp_path, bin_dir(tmp_path, python3=("isolated", py3)), admin)
    assert rc == 0, err
    code, message, details = check_failure(parse_response(out)["ErrorDescription"])
    assert code == "VGPU_INTERNAL" and "XenAPIPlugin" in message


def test_no_python_at_all(tmp_path, admin):
    rc, out, err, log = list_pools(tmp_path, bin_dir(tmp_path), admin)
    assert rc == 127 and out == b""
    assert b"no python" in err

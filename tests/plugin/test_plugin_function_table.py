"""The plugin's static function list (``FUNCTIONS`` in plugin/vgpu) against the core's function
table, as ``vgpu-admin functions --format json`` prints it: any drift either way fails, and so does
drift of what plugin/README.md lists (function names, argument keys, error codes)."""

import importlib.machinery
import importlib.util
import os
import re
import sys

from plugin_support import PLUGIN_DIR, PLUGIN_FILE, function_table

README = os.path.join(PLUGIN_DIR, "README.md")
# Between hosts only: the core adds it when forwarding to the master (plugin/README.md, "Pool-wide").
HOST_TO_HOST_KEYS = {"forwarded-by"}


def load_plugin():
    """plugin/vgpu as a module (its __main__ part does not run), importing its helper from beside it."""
    sys.path.insert(0, PLUGIN_DIR)
    try:
        loader = importlib.machinery.SourceFileLoader("vgpu_plugin_file", PLUGIN_FILE)
        spec = importlib.util.spec_from_loader("vgpu_plugin_file", loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    finally:
        sys.path.remove(PLUGIN_DIR)
    assert module.vgpu_plugin is not None, "plugin/vgpu could not import vgpu_plugin.py"
    return module


def with_aliases(names):
    return set(names) | set(n.replace("-", "_") for n in names if "-" in n)


def test_plugin_functions_are_the_core_table():
    table = [f["name"] for f in function_table()["functions"]]
    plugin = load_plugin().FUNCTIONS
    expected = with_aliases(table)
    only_table, only_plugin = sorted(expected - set(plugin)), sorted(set(plugin) - expected)
    assert not only_table and not only_plugin, (
        "in the core's table but not the plugin: %s; in the plugin but not the table: %s" % (only_table, only_plugin))
    for name in table:
        assert plugin[name.replace("-", "_")] is plugin[name], name


def test_each_function_hands_its_own_name_to_the_core(monkeypatch):
    """Each entry of FUNCTIONS (both spellings) passes the dashed name on, and its args untouched."""
    module = load_plugin()
    seen = []
    monkeypatch.setattr(module.vgpu_plugin, "run", lambda fn, session, args: seen.append((fn, session, args)) or fn)
    for name, function in sorted(module.FUNCTIONS.items()):
        args = {"k": name}
        assert function("session-proxy", args) == name.replace("_", "-"), name
        assert seen[-1] == (name.replace("_", "-"), "session-proxy", args)
    assert len(seen) == len(module.FUNCTIONS) >= 13


def readme_bullet(title):
    text = open(README).read()
    match = re.search(r"^- \*\*%s\*\* (.*?)(?=^- \*\*|^$)" % re.escape(title), text, re.S | re.M)
    assert match, title
    return match.group(1)


def test_readme_lists_the_table_functions_and_arguments():
    table = function_table()["functions"]
    names = re.findall(r"`([a-z_-]+)`", readme_bullet("Function names"))
    assert [n for n in names if "_" not in n] == [f["name"] for f in table]
    arguments = readme_bullet("Arguments").split(":", 1)[1].split(". ", 1)[0]
    keys = set(k for f in table for k in f["required"] + f["optional"] + f["flags"]) - HOST_TO_HOST_KEYS
    assert sorted(re.findall(r"`([a-z-]+)`", arguments)) == sorted(keys)


def test_readme_lists_the_table_error_codes():
    codes = re.findall(r"^\| `VGPU_([A-Z_]+)` \|", open(README).read(), re.M)
    assert sorted(codes) == sorted(function_table()["error_codes"])


def test_without_its_helper_every_function_answers_one_proper_failure(tmp_path):
    """plugin/vgpu alone (vgpu_plugin.py missing beside it): every name of the table, in both
    spellings, still answers, with VGPU_INTERNAL naming the missing file, not xapi's
    UNKNOWN_XENAPI_PLUGIN_FUNCTION."""
    import shutil
    import XenAPIPlugin

    lonely = str(tmp_path / "vgpu")
    shutil.copy(PLUGIN_FILE, lonely)
    hidden = [p for p in sys.path if os.path.exists(os.path.join(p or ".", "vgpu_plugin.py"))]
    saved = list(sys.path)
    cached = sys.modules.pop("vgpu_plugin", None)
    try:
        sys.path[:] = [p for p in sys.path if p not in hidden]
        loader = importlib.machinery.SourceFileLoader("vgpu_lonely", lonely)
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader("vgpu_lonely", loader))
        loader.exec_module(module)
    finally:
        sys.path[:] = saved
        if cached is not None:
            sys.modules["vgpu_plugin"] = cached
    assert module.vgpu_plugin is None
    table = [f["name"] for f in function_table()["functions"]]
    assert set(module.FUNCTIONS) == with_aliases(table)
    for name, function in sorted(module.FUNCTIONS.items()):
        try:
            function("session", {})
        except XenAPIPlugin.Failure as e:
            assert e.params[0] == "VGPU_INTERNAL", (name, e.params)
            assert "cannot import vgpu_plugin.py" in e.params[1] and "ModuleNotFoundError" in e.params[1], e.params
        else:
            raise AssertionError("%s answered without its helper" % name)

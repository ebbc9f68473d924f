"""How the plugin finds its extension and its CLI (SPEC section 4, "Where it finds things"): the
config file's top-level ``python_path`` / ``admin_path`` (read by the plugin's own strict little
reader, the same on Python 2.7, 3.6 and 3.12), the environment variables that take precedence, and
the config path handed on to the core, which parses the whole file."""

import json
import os
import subprocess

import pytest

from plugin_support import ML_TRAIN_B, PLUGIN_FILE, find_modern_python, find_python, loud_skip

# (name, file content or None for a missing file, expected {key: value} or "error")
CASES = [
    ("missing", None, {}),
    ("empty", "", {}),
    ("plain", 'python_path = "/opt/vgpu/python"\nadmin_path = "/opt/vgpu/bin/vgpu-admin"\n',
     {"python_path": "/opt/vgpu/python", "admin_path": "/opt/vgpu/bin/vgpu-admin"}),
    ("comments and other keys",
     '# vgpu-registry\n\ndb_path = "/etc/vgpu/vgpu_config.db"  # the mediator reads it\n'
     'xapi_timeout_s = 30\nmode = "local"\nadmin_path = "/a b/vgpu-admin"   # spaces are fine\n'
     '[device]\ntype = "vgpu-cuda"\n',
     {"admin_path": "/a b/vgpu-admin"}),
    ("keys in tables are not top-level", '[device]\nadmin_path = "/nope"\n[restart]\npython_path = "/nope"\n', {}),
    ("decoys in a multi-line string",
     'xapi_user = """\nadmin_path = "/decoy"\n[device]\n"""\nadmin_path = "/real"\n', {"admin_path": "/real"}),
    ("decoys in a multi-line literal string",
     "xapi_user = '''\npython_path = \"/decoy\"\n'''\npython_path = '/real'\n", {"python_path": "/real"}),
    ("multi-line array and inline table",
     'extra = [\n  [1, 2],\n  "admin_path = x",\n]\nt = { a = 1, b = "]" }\nadmin_path = "/real"\n',
     {"admin_path": "/real"}),
    ("quoted keys", '"admin_path" = "/q1"\n\'python_path\' = "/q2"\n"a=b" = 1\n',
     {"admin_path": "/q1", "python_path": "/q2"}),
    ("literal string keeps backslashes", "admin_path = 'C:\\tools\\vgpu'\n", {"admin_path": "C:\\tools\\vgpu"}),
    ("escapes", 'admin_path = "/opt/caf\\u00e9/\\"x\\"\\\\y"\n', {"admin_path": u"/opt/caf\u00e9/\"x\"\\y"}),
    ("BOM and CRLF", u'\ufeffadmin_path = "/crlf"\r\npython_path = "/p"\r\n',
     {"admin_path": "/crlf", "python_path": "/p"}),
    ("not a string", "admin_path = 5\n", "error"),
    ("an array", 'python_path = ["/a"]\n', "error"),
    ("twice", 'admin_path = "/a"\nadmin_path = "/b"\n', "error"),
    ("trailing text", 'admin_path = "/a" "/b"\n', "error"),
    ("unterminated", 'admin_path = "/a\n', "error"),
    ("multi-line value", 'admin_path = """/a"""\n', "error"),
    ("bad escape", 'admin_path = "\\q"\n', "error"),
    ("empty value", 'admin_path = ""\n', "error"),
    ("unterminated multi-line elsewhere", 'xapi_user = """\nadmin_path = "/a"\n', "error"),
    ("no equals sign", "admin_path\n", "error"),
]

READER = r"""
import json, sys
path = sys.argv[1]
if sys.version_info[0] == 2:
    import imp
    plugin = imp.load_source("vgpu_plugin", path)
else:
    import importlib.machinery, importlib.util
    loader = importlib.machinery.SourceFileLoader("vgpu_plugin", path)
    spec = importlib.util.spec_from_loader("vgpu_plugin", loader)
    plugin = importlib.util.module_from_spec(spec)
    loader.exec_module(plugin)
out = []
for f in sys.argv[2:]:
    try:
        out.append(plugin.read_plugin_config(f))
    except plugin.ConfigError as e:
        out.append({"error": str(e)})
sys.stdout.write(json.dumps(out))
"""


@pytest.fixture(params=["2.7", "3.6", "modern"], ids=lambda p: "py" + p)
def python(request):
    exe, version = find_modern_python() if request.param == "modern" else find_python(request.param)
    if not exe:
        loud_skip("CPython %s for the config reader" % request.param, version)
    return exe


def test_config_reader(python, tmp_path):
    files = []
    for i, (name, content, _) in enumerate(CASES):
        path = tmp_path / ("case-%02d.toml" % i)
        if content is not None:
            path.write_bytes(content.encode("utf-8"))
        files.append(str(path))
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.check_output([python, "-c", READER, PLUGIN_FILE] + files, env=env)
    results = json.loads(out.decode("ascii"))
    for (name, _, expected), got in zip(CASES, results):
        if expected == "error":
            assert set(got) == {"error"} and got["error"], (name, got)
        else:
            assert got == expected, (name, got)


def test_config_file_finds_the_cli_and_is_handed_to_the_core(pool, workdir):
    """admin_path from the config file (no VGPU_ADMIN), and the core reads the same file: its
    [device] extra shows up in the device line."""
    marker = os.path.join(workdir, "wrapper-ran")
    wrapper = os.path.join(workdir, "admin-from-config")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\n: > "%s"\nexec "%s" "$@"\n' % (marker, pool.admin))
    os.chmod(wrapper, 0o755)
    with open(pool.config, "w") as f:
        f.write('# written by the test\nadmin_path = "%s"\n\n[device]\nextra = "addr=6"\n' % wrapper)
    pool.set_env(pool.master, VGPU_ADMIN=None, VGPU_PLUGIN_BACKEND="cli")
    out = pool.call("register", {"vm-uuid": ML_TRAIN_B, "pool": "A", "priority": "low"})
    assert out["device_model_args"] == "-device vgpu-cuda,addr=6,pool_id=A,priority=low,vm_id=1"
    assert os.path.exists(marker)


def test_config_file_finds_the_extension(native_pool):
    pool = native_pool
    with open(pool.config, "w") as f:
        f.write('python_path = "%s"\nadmin_path = "/nonexistent/vgpu-admin"\n[device]\nextra = "addr=7"\n'
                % pool.variant.pythonpath)
    pool.set_env(pool.master, VGPU_PYTHONPATH=None, VGPU_ADMIN=None, VGPU_PLUGIN_BACKEND=None)
    out = pool.call("register", {"vm-uuid": ML_TRAIN_B, "pool": "B", "priority": "high"})
    assert out["device_model_args"] == "-device vgpu-cuda,addr=7,pool_id=B,priority=high,vm_id=1"
    assert "register pool=B priority=high vm-uuid=%s: ok (native" % ML_TRAIN_B in open(pool.log_file()).read()


def test_environment_beats_the_config_file(pool, workdir):
    with open(pool.config, "w") as f:
        f.write('python_path = "/nonexistent/python"\nadmin_path = "/nonexistent/vgpu-admin"\n')
    # the fixture's VGPU_ADMIN / VGPU_PYTHONPATH point at the real ones: the call works
    assert [p["pool_id"] for p in pool.call("list-pools")] == ["A", "B"]
    pool.set_env(pool.master, VGPU_ADMIN=None, VGPU_PLUGIN_BACKEND="cli")
    code, message, details = pool.fail("list-pools")
    assert code == "VGPU_INTERNAL" and details["admin_path"] == "/nonexistent/vgpu-admin"


def test_bad_config_value_is_an_invalid_argument(pool):
    with open(pool.config, "w") as f:
        f.write("admin_path = 42\n")
    code, message, details = pool.fail("list-pools")
    assert code == "VGPU_INVALID_ARGUMENT"
    assert details["argument"] == "config file" and details["value"] == pool.config
    assert "admin_path" in details["reason"]


def test_config_errors_the_core_finds_are_relayed(pool):
    with open(pool.config, "w") as f:
        f.write('colour = "red"\n')  # the plugin ignores unknown keys; the core refuses them
    code, message, details = pool.fail("list-pools")
    assert code == "VGPU_INVALID_ARGUMENT"
    assert pool.config in message and "colour" in message

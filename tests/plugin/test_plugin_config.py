"""How the plugin finds its extension and its CLI (SPEC section 4, "Where it finds things"): the
config file's top-level ``python_path`` / ``admin_path`` (read by the plugin's lenient little
reader, the same on Python 2.7, 3.6 and 3.12), the environment variables that take precedence, and
the config path handed on to the core, which parses and checks the whole file."""

import json
import os
import subprocess

from plugin_support import ML_TRAIN_B, PLUGIN_DIR, SAMPLE_MASTER

# (name, file content (bytes or text) or None for a missing file, what the plugin reads, whether
# the core accepts the file). The reader refuses nothing: on a file the core accepts it must read
# exactly what the core would; on any other file it reads what it can and the core reports the rest.
CASES = [
    ("missing", None, {}, True),
    ("empty", "", {}, True),
    ("plain", 'python_path = "/opt/vgpu/python"\nadmin_path = "/opt/vgpu/bin/vgpu-admin"\n',
     {"python_path": "/opt/vgpu/python", "admin_path": "/opt/vgpu/bin/vgpu-admin"}, True),
    ("comments and other keys",
     '# vgpu-registry\n\ndb_path = "/etc/vgpu/vgpu_config.db"  # the mediator reads it\n'
     'xapi_timeout_s = 30\nmode = "local"\nadmin_path = "/a b/vgpu-admin"   # spaces are fine\n'
     '[device]\ntype = "vgpu-cuda"\n',
     {"admin_path": "/a b/vgpu-admin"}, True),
    ("comment with quotes after the value", 'admin_path = "/a" # "not/this" = 1\n', {"admin_path": "/a"}, True),
    ("tabs around", '\tadmin_path\t=\t"/tab"\t\n', {"admin_path": "/tab"}, True),
    ("a commented-out key", '# admin_path = "/old"\n', {}, True),
    ("decoys in a multi-line string",
     'xapi_user = """\nadmin_path = "/decoy"\n[device]\n"""\nadmin_path = "/real"\n', {"admin_path": "/real"}, True),
    ("decoys in a multi-line literal string",
     "xapi_user = '''\npython_path = \"/decoy\"\n'''\npython_path = '/real'\n", {"python_path": "/real"}, True),
    ("quoted keys", '"admin_path" = "/q1"\n\'python_path\' = "/q2"\n', {"admin_path": "/q1", "python_path": "/q2"},
     True),
    ("literal string keeps backslashes", "admin_path = 'C:\\tools\\vgpu'\n", {"admin_path": "C:\\tools\\vgpu"}, True),
    ("escapes", 'admin_path = "/opt/caf\\u00e9/\\"x\\"\\\\y\\U0001F600"\n',
     {"admin_path": u"/opt/caf\u00e9/\"x\"\\y\U0001F600"}, True),
    ("one-line triple-quoted strings", "admin_path = \"\"\"/t1\"\"\"\npython_path = '''/t2'''\n",
     {"admin_path": "/t1", "python_path": "/t2"}, True),
    ("BOM and CRLF", u'\ufeffadmin_path = "/crlf"\r\npython_path = "/p"\r\n',
     {"admin_path": "/crlf", "python_path": "/p"}, True),
    ("empty value: the default", 'admin_path = ""\n', {}, True),
    ("keys only in tables",
     '[device]\ntype = "vgpu-cuda"\n# admin_path = "/nope"\n[restart]\nshutdown_timeout_s = 30\n', {}, True),
    # files the core refuses: the plugin still reads what it can, and refuses nothing itself
    ("keys in a table are not top-level", '[device]\nadmin_path = "/nope"\n', {}, False),
    ("not a string", "admin_path = 5\n", {}, False),
    ("an array", 'python_path = ["/a"]\n', {}, False),
    ("twice: the first", 'admin_path = "/a"\nadmin_path = "/b"\n', {"admin_path": "/a"}, False),
    ("trailing text", 'admin_path = "/a" "/b"\n', {}, False),
    ("unterminated", 'admin_path = "/a\n', {}, False),
    ("bad escape", 'admin_path = "\\q"\n', {}, False),
    ("unterminated multi-line elsewhere", 'xapi_user = """\nadmin_path = "/a"\n', {}, False),
    ("no equals sign", "admin_path\n", {}, False),
    ("not UTF-8", b'admin_path = "/caf\xe9"\n', {}, False),
    ("one good key, one bad", 'python_path = "/p"\nadmin_path = 42\n', {"python_path": "/p"}, False),
    ("an unknown key", 'colour = "red"\nadmin_path = "/a"\n', {"admin_path": "/a"}, False),
]

READER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import vgpu_plugin
sys.stdout.write(json.dumps([vgpu_plugin.read_plugin_config(f) for f in sys.argv[2:]]))
"""


def case_files(tmp_path):
    files = []
    for i, (name, content, _, _) in enumerate(CASES):
        path = tmp_path / ("case-%02d.toml" % i)
        if content is not None:
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        files.append(str(path))
    return files


def test_config_reader(dom0, tmp_path):
    env = {"PATH": os.environ["PATH"]}
    out = subprocess.check_output([dom0.python, "-c", READER, PLUGIN_DIR] + case_files(tmp_path), env=env)
    results = json.loads(out.decode("ascii"))
    assert len(results) == len(CASES)
    for (name, _, expected, _), got in zip(CASES, results):
        assert got == expected, (name, got)


def test_the_cases_are_what_the_core_says(admin, tmp_path):
    """Which case files the core accepts is asked of the core itself: its config error names the
    file; with no XAPI to reach, an accepted file fails later, on XAPI."""
    for (name, _, _, accepted), path in zip(CASES, case_files(tmp_path)):
        env = {"PATH": os.environ["PATH"], "VGPU_DB": str(tmp_path / "registry.db"), "VGPU_HOST_UUID": SAMPLE_MASTER,
               "VGPU_XAPI": "unix:" + str(tmp_path / "no-xapi.sock")}
        proc = subprocess.run([admin, "--config", path, "call", "list-pools"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        assert proc.returncode != 0, (name, proc.stdout)
        report = json.loads(proc.stderr.decode("utf-8").strip().splitlines()[-1])["error"]
        refused = report["code"] == "INVALID_ARGUMENT" and path in report["message"]
        assert refused != accepted, (name, report)


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


def test_bad_config_value_is_reported_by_the_core(pool):
    """The plugin does not judge the file: a key it cannot read keeps its default, and the core,
    which reads the same file, reports the error."""
    with open(pool.config, "w") as f:
        f.write("admin_path = 42\n")
    code, message, details = pool.fail("list-pools")
    assert code == "VGPU_INVALID_ARGUMENT"
    assert details["argument"] == "config file" and details["value"] == pool.config
    assert "42" in details["reason"]
    log = open(pool.log_file()).read()
    assert "list-pools : VGPU_INVALID_ARGUMENT" in log
    assert "(%s, python" % pool.variant.backend in log  # the core was reached


def test_config_errors_the_core_finds_are_relayed(pool):
    with open(pool.config, "w") as f:
        f.write('colour = "red"\n')  # the plugin ignores unknown keys; the core refuses them
    code, message, details = pool.fail("list-pools")
    assert code == "VGPU_INVALID_ARGUMENT"
    assert pool.config in message and "colour" in message

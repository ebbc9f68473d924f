"""The package installed into a scratch root (`rpm --root ROOT -ivh --nodeps`) works from there
(SPEC section 7): rpm verifies what it installed; the installed vgpu-admin drives the XAPI
simulator's sample pool; the installed plugin, run by the simulator as xapi runs it, answers
under CPython 3.6 (XCP-ng 8.3) with the installed extension and under 2.7 (8.2) through the
installed vgpu-admin, forwarding from a member to the master."""

import json
import os
import shutil
import sqlite3
import stat
import subprocess

import pytest

from plugin_support import STANDIN_DIR, find_modern_python, find_python, xenapiplugin_path
from rpm_support import (BIN, CONF, CONF_DIR, NAME, PLUGIN, PLUGIN_DIR, PYTHON_DIR, REGISTRY, VERSION,
                         Simulator, admin_env, fixture_uuid, run_admin, unavailable)
from xapi_sim.client import XapiFault

RENDER_01 = fixture_uuid("sample_pool", "render-01")
CUDA_DEV = fixture_uuid("sample_pool", "cuda-dev")
MASTER = fixture_uuid("sample_pool", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool", "xcp-lab-02", kind="hosts")
DMA = "device-model-args"


@pytest.fixture(scope="module")
def sim(installed_root):
    """The sample pool, whose hosts run the plugin installed in the root."""
    with Simulator(fixture="sample_pool", plugin_dir=installed_root.at(PLUGIN_DIR)) as s:
        yield s


@pytest.fixture
def pool(sim):
    sim.reset()
    sim.clear_call_log()
    return sim


def test_rpm_verifies_every_installed_file(installed_root):
    assert installed_root.installed() == "%s-%s-1" % (NAME, VERSION)
    status, out, err = installed_root.rpm("-V", "--nodeps", NAME, check=False)
    assert (status, out) == (0, ""), err
    assert installed_root.mode(CONF_DIR) == 0o700
    assert installed_root.mode(CONF) == 0o600
    assert installed_root.mode(PLUGIN) == 0o755
    assert not os.path.exists(installed_root.at(REGISTRY))


def test_the_installed_vgpu_admin_manages_the_pool(installed_root, pool):
    admin = installed_root.at(BIN)
    env = admin_env(pool, VGPU_CONFIG=installed_root.at(CONF), VGPU_DB=installed_root.at(REGISTRY))
    status, out, err = run_admin(admin, ["--version"], env)
    assert (status, out.strip()) == (0, "vgpu-admin %s" % VERSION), err
    status, out, err = run_admin(admin, ["--format", "json", "register-vm", "--vm-uuid", RENDER_01, "--pool", "A",
                                         "--priority", "high", "--vm-id", "7"], env)
    assert status == 0, err
    doc = json.loads(out)
    assert (doc["vm_uuid"], doc["vm_id"], doc["pool"], doc["priority"]) == (RENDER_01, 7, "A", "high")
    # The shipped vgpu.conf (every line commented) leaves the device settings at their defaults.
    assert pool.get_vm(RENDER_01)["platform"][DMA] == "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=7"
    with sqlite3.connect(installed_root.at(REGISTRY)) as c:
        rows = c.execute("SELECT vm_uuid, vm_id, pool_id, priority FROM vms").fetchall()
    assert rows == [(RENDER_01, 7, "A", 2)]
    status, out, err = run_admin(admin, ["list-vms"], env)
    assert status == 0 and RENDER_01 in out and " 7 " in out, (out, err)
    assert installed_root.mode(CONF_DIR) == 0o700


def test_a_registry_created_after_install_is_0600(installed_root, pool, tmp_path):
    admin = installed_root.at(BIN)
    registry = installed_root.at(CONF_DIR + "/new-registry.db")
    env = admin_env(pool, VGPU_CONFIG=installed_root.at(CONF), VGPU_DB=registry)
    proc = subprocess.run([admin, "register-vm", "--vm-uuid", CUDA_DEV, "--pool", "B", "--priority", "low"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o022))
    try:
        if proc.returncode != 0:
            pytest.fail("register-vm failed: %s" % proc.stderr.decode("utf-8", "replace"))
        assert stat.S_IMODE(os.stat(registry).st_mode) == 0o600
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(registry + suffix):
                os.unlink(registry + suffix)


# ------------------------------------------------------------------------------------------------
# The installed plugin


def interpreter(minor):
    exe, version = find_modern_python() if minor == "modern" else find_python(minor)
    if not exe:
        unavailable("CPython %s for the installed plugin" % minor, version)
    return exe, version


def plugin_call(sim, host, fn, args=None):
    ref = sim.call("host.get_by_uuid", sim.session, host)
    return json.loads(sim.call("host.call_plugin", sim.session, ref, "vgpu", fn, dict(args or {})))


def plugin_failure(sim, host, fn, args=None):
    ref = sim.call("host.get_by_uuid", sim.session, host)
    with pytest.raises(XapiFault) as e:
        sim.call("host.call_plugin", sim.session, ref, "vgpu", fn, dict(args or {}))
    return e.value.code, list(e.value.params)


def set_hosts(sim, python, workdir, **env):
    """Every host runs the plugin with ``python`` and ``env``, and its own registry and log."""
    sim.set_plugin_python(python)
    for host in (MASTER, MEMBER):
        host_env = {"VGPU_DB": os.path.join(workdir, "registry-%s.db" % host[:8]),
                    "VGPU_PLUGIN_LOG": os.path.join(workdir, "plugin-%s.log" % host[:8])}
        host_env.update(env)
        sim.set_plugin_env(host, host_env)


def read(path):
    with open(path) as f:
        return f.read()


def exercise_the_pool(sim, workdir):
    """Register through the master, read through the member; the master's installed plugin has the
    member's installed plugin refresh its replica. (registration, log of the master)"""
    doc = plugin_call(sim, MASTER, "register", {"vm-uuid": RENDER_01, "pool": "B", "priority": "medium"})
    assert (doc["vm_uuid"], doc["vm_id"], doc["pool"], doc["priority"]) == (RENDER_01, 1, "B", "medium")
    assert sim.get_vm(RENDER_01)["platform"][DMA] == "-device vgpu-cuda,addr=5,pool_id=B,priority=medium,vm_id=1"
    listed = plugin_call(sim, MEMBER, "list")
    assert [(r["vm_uuid"], r["vm_id"]) for r in listed] == [(RENDER_01, 1)]
    code, params = plugin_failure(sim, MEMBER, "list", {"colour": "red"})
    assert code == "VGPU_INVALID_ARGUMENT" and json.loads(params[1])["value"] == "colour", params
    assert os.path.exists(os.path.join(workdir, "registry-%s.db" % MASTER[:8]))
    assert [(r["name"], r["ok"]) for r in doc["replicas"]] == [("xcp-lab-02", True)], doc["replicas"]
    replica = sqlite3.connect(os.path.join(workdir, "registry-%s.db" % MEMBER[:8]))
    try:
        assert replica.execute("SELECT vm_uuid, vm_id FROM vms").fetchall() == [(RENDER_01, 1)]
        assert dict(replica.execute("SELECT key, value FROM registry_meta"))["role"] == "replica"
    finally:
        replica.close()
    return doc, read(os.path.join(workdir, "plugin-%s.log" % MASTER[:8]))


def config_with_python_path(installed_root, workdir, python_path):
    """The installed vgpu.conf with its python_path line uncommented and pointed at ``python_path``,
    as an administrator would edit it."""
    lines = read(installed_root.at(CONF)).splitlines(True)
    edited = [('python_path = "%s"\n' % python_path) if line.startswith("#python_path =") else line
              for line in lines]
    assert edited != lines, "no #python_path line in the installed vgpu.conf"
    path = os.path.join(workdir, "vgpu.conf")
    with open(path, "w") as f:
        f.writelines(edited)
    return path


@pytest.mark.parametrize("minor", ["3.6", "modern"], ids=["py3.6", "py3.12"])
def test_the_installed_plugin_runs_the_installed_extension(installed_root, pool, tmp_path, minor):
    python, version = interpreter(minor)
    workdir = str(tmp_path)
    extension = installed_root.at(PYTHON_DIR)
    probe = subprocess.run([python, "-c", "import vgpu_registry, sys; sys.stdout.write(vgpu_registry.__file__)"],
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": extension},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.decode().startswith(extension + "/vgpu_registry/"), probe.stdout
    # The extension found through the config file's python_path, the native path forced (no fallback).
    set_hosts(pool, python, workdir, PYTHONPATH=STANDIN_DIR, VGPU_PLUGIN_BACKEND="native",
              VGPU_CONFIG=config_with_python_path(installed_root, workdir, extension))
    _, log = exercise_the_pool(pool, workdir)
    major_minor = "python" + ".".join(version.split(".")[:2])
    assert "register" in log and "ok (native, %s," % major_minor in log, log
    # Without the installed extension the forced native path fails: it was what answered.
    empty = os.path.join(workdir, "no-extension")
    os.mkdir(empty)
    set_hosts(pool, python, workdir, PYTHONPATH=STANDIN_DIR, VGPU_PLUGIN_BACKEND="native",
              VGPU_CONFIG=config_with_python_path(installed_root, workdir, empty))
    code, params = plugin_failure(pool, MASTER, "list")
    assert code == "VGPU_INTERNAL" and "vgpu_registry" in params[0], params


def test_the_installed_plugin_under_python_2_7_uses_the_installed_vgpu_admin(installed_root, pool, tmp_path):
    python, version = interpreter("2.7")
    standin, why = xenapiplugin_path(python, version, str(tmp_path))
    if not standin:
        unavailable("XenAPIPlugin of XCP-ng 8.2 under CPython %s" % version, why)
    workdir = str(tmp_path)
    set_hosts(pool, python, workdir, PYTHONPATH=standin, VGPU_PLUGIN_BACKEND="cli",
              VGPU_ADMIN=installed_root.at(BIN), VGPU_CONFIG=installed_root.at(CONF))
    _, log = exercise_the_pool(pool, workdir)
    assert "register" in log and "ok (cli, python2.7," in log, log
    # With no vgpu-admin where it points, the same call fails: the installed one was what answered.
    moved = installed_root.at(BIN) + ".moved"
    shutil.move(installed_root.at(BIN), moved)
    try:
        code, params = plugin_failure(pool, MASTER, "list")
    finally:
        shutil.move(moved, installed_root.at(BIN))
    assert code == "VGPU_INTERNAL" and installed_root.at(BIN) in params[0], params

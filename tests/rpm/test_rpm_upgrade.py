"""Data safety (SPEC section 7): an upgrade keeps the registry and an edited vgpu.conf; an erase
keeps the registry and says so; the first install over a host set up by hand keeps its registry
and its vgpu.conf. Each test has its own scratch root; release 2 is built from the same artefacts."""

import json
import os
import subprocess

from plugin_support import find_python
from rpm_support import (BIN, CONF, CONF_DIR, NAME, PLUGIN, PLUGIN_DIR, PLUGIN_HELPER, PYTHON_DIR, REGISTRY,
                         SHIPPED_CONF, VERSION, Simulator, admin_env, fixture_uuid, payload, run_admin,
                         unavailable)

RENDER_01 = fixture_uuid("sample_pool", "render-01")
ML_TRAIN_A = fixture_uuid("sample_pool", "ml-train-a")
KEPT_MESSAGE = "vgpu-registry: the registry %s is kept" % REGISTRY


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def make_registry(root, admin=None):
    """Two registrations in the root's registry, by the installed vgpu-admin (or ``admin``)."""
    with Simulator(fixture="sample_pool") as sim:
        env = admin_env(sim, VGPU_CONFIG=root.at(CONF), VGPU_DB=root.at(REGISTRY))
        for vm, pool, vm_id in ((RENDER_01, "A", "3"), (ML_TRAIN_A, "B", "9")):
            status, out, err = run_admin(admin or root.at(BIN), ["register-vm", "--vm-uuid", vm, "--pool", pool,
                                                                 "--priority", "high", "--vm-id", vm_id], env)
            assert status == 0, err
    assert os.path.isfile(root.at(REGISTRY))


def registered(root):
    """The registrations the installed vgpu-admin reads from the root's registry (no XAPI needed)."""
    env = {"PATH": "/usr/bin:/bin", "VGPU_CONFIG": root.at(CONF), "VGPU_DB": root.at(REGISTRY)}
    status, out, err = run_admin(root.at(BIN), ["--format", "json", "list-vms"], env)
    assert status == 0, err
    return sorted((r["vm_uuid"], r["vm_id"], r["pool"]) for r in json.loads(out))


def edit_config(root):
    """An administrator's edit of the installed vgpu.conf; the edited text."""
    text = read(root.at(CONF))
    assert "#lock_timeout_s = 60\n" in text
    edited = text.replace("#lock_timeout_s = 60\n", "lock_timeout_s = 30\n") + "# edited on this host\n"
    write(root.at(CONF), edited)
    return edited


def compile_helper(root):
    """The bytecode Python leaves beside the plugin's helper when xapi runs the plugin."""
    made = []
    for minor in ("2.7", "3.6"):
        python, why = find_python(minor)
        if not python:
            unavailable("CPython %s, to compile the plugin helper as dom0 does" % minor, why)
        subprocess.run([python, "-m", "py_compile", root.at(PLUGIN_HELPER)], check=True)
    for dirpath, _, filenames in os.walk(root.at(PLUGIN_DIR)):
        made += [os.path.join(dirpath, f) for f in filenames if f.endswith(".pyc")]
    assert len(made) == 2, made
    return made


def test_upgrade_keeps_the_registry_and_the_edited_config(root, package, package_2):
    root.install(package)
    make_registry(root)
    edited = edit_config(root)
    rows = registered(root)
    assert rows == sorted([(RENDER_01, 3, "A"), (ML_TRAIN_A, 9, "B")])
    before = root.snapshot(CONF_DIR)
    assert set(before) >= {"vgpu.conf", "vgpu_config.db"}

    status, out, err = root.upgrade(package_2)
    assert root.installed() == "%s-%s-2" % (NAME, VERSION)
    assert root.snapshot(CONF_DIR) == before, "the upgrade changed /etc/vgpu"
    assert read(root.at(CONF)) == edited
    assert not os.path.exists(root.at(CONF + ".rpmnew"))  # the shipped file did not change
    assert root.mode(CONF_DIR) == 0o700
    # Everything else is release 2's, and verifies; vgpu.conf is reported as a modified config file.
    status, out, err = root.rpm("-V", "--nodeps", NAME, check=False)
    assert [line.split()[-2:] for line in out.splitlines()] == [["c", CONF]], out
    assert registered(root) == rows


def test_upgrade_to_a_changed_vgpu_conf_keeps_the_edited_one(root, package, package_3, changed_conf):
    """When the shipped vgpu.conf changes, an edited one stays in force and the new one is put
    beside it as vgpu.conf.rpmnew."""
    root.install(package)
    make_registry(root)
    edited = edit_config(root)
    registry_before = {k: v for k, v in root.snapshot(CONF_DIR).items() if k.startswith("vgpu_config.db")}

    root.upgrade(package_3)
    assert root.installed() == "%s-%s-3" % (NAME, VERSION)
    assert read(root.at(CONF)) == edited
    assert read(root.at(CONF + ".rpmnew")) == read(changed_conf)
    assert {k: v for k, v in root.snapshot(CONF_DIR).items() if k.startswith("vgpu_config.db")} == registry_before
    assert registered(root) == sorted([(RENDER_01, 3, "A"), (ML_TRAIN_A, 9, "B")])


def test_erase_keeps_the_registry_and_says_so(root, package):
    root.install(package)
    make_registry(root)
    edited = edit_config(root)
    registry_before = {k: v for k, v in root.snapshot(CONF_DIR).items() if k.startswith("vgpu_config.db")}
    pyc = compile_helper(root)

    status, out, err = root.erase()
    assert KEPT_MESSAGE in out, (out, err)
    assert "rm -r %s" % CONF_DIR in out
    assert root.installed() is None
    after = root.snapshot(CONF_DIR)
    assert {k: v for k, v in after.items() if k.startswith("vgpu_config.db")} == registry_before
    assert root.mode(CONF_DIR) == 0o700
    # rpm keeps the edited config as .rpmsave; the package's files and the helper's bytecode are gone.
    assert read(root.at(CONF + ".rpmsave")) == edited
    for path in (BIN, PLUGIN, PLUGIN_HELPER, PYTHON_DIR, CONF):
        assert not os.path.exists(root.at(path)), path
    assert [p for p in pyc if os.path.exists(p)] == []


def test_erase_without_a_registry_leaves_nothing(root, package):
    root.install(package)
    status, out, err = root.erase()
    assert "registry" not in out, out
    assert not os.path.exists(root.at(CONF_DIR))
    assert not os.path.exists(root.at("/usr/lib64/vgpu-registry"))


def test_first_install_over_a_host_set_up_by_hand(root, package, tmp_path):
    """The earlier manual install: /etc/vgpu 0755 with a registry and a vgpu.conf of the
    administrator's, a vgpu-admin copied to /usr/bin."""
    os.makedirs(root.at(CONF_DIR))
    os.chmod(root.at(CONF_DIR), 0o755)
    handmade = "# written by hand\nxapi_timeout_s = 30\n"
    write(root.at(CONF), handmade)
    admin = str(tmp_path / "vgpu-admin")
    with open(admin, "wb") as f:
        f.write(payload(package)[BIN])
    os.chmod(admin, 0o755)
    os.makedirs(os.path.dirname(root.at(BIN)))
    write(root.at(BIN), "#!/bin/sh\necho an older vgpu-admin\n")
    os.chmod(root.at(BIN), 0o755)
    make_registry(root, admin=admin)
    registry_before = {k: v for k, v in root.snapshot(CONF_DIR).items() if k.startswith("vgpu_config.db")}

    root.install(package)
    # The administrator's file stays in place; the shipped one is put beside it.
    assert read(root.at(CONF)) == handmade
    with open(SHIPPED_CONF) as f:
        assert read(root.at(CONF + ".rpmnew")) == f.read()
    assert {k: v for k, v in root.snapshot(CONF_DIR).items() if k.startswith("vgpu_config.db")} == registry_before
    assert root.mode(CONF_DIR) == 0o700  # rpm sets the mode of the directory it now owns
    assert registered(root) == sorted([(RENDER_01, 3, "A"), (ML_TRAIN_A, 9, "B")])
    # Every file is the package's (the old vgpu-admin replaced) but the administrator's vgpu.conf.
    status, out, err = root.rpm("-V", "--nodeps", NAME, check=False)
    assert [line.split()[-2:] for line in out.splitlines()] == [["c", CONF]], out

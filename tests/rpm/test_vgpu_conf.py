"""packaging/vgpu.conf, the file the package installs as /etc/vgpu/vgpu.conf, lists every setting the
core knows, each once, commented out, with the core's default: the keys are read from the core
itself (its refusal of an unknown key names every key it takes), the defaults from vgpu.conf(5) as
vgpu-admin prints it, and the device defaults are checked against what vgpu-admin writes with no
config file at all. The file as shipped, and with every setting uncommented, loads.

Runs without rpmbuild: vgpu-admin is ``$VGPU_ADMIN_BIN``, else ``target/debug/vgpu-admin``."""

import os
import re
import subprocess

import pytest

from rpm_support import REPO_DIR, SHIPPED_CONF, Simulator, admin_env, fixture_uuid

PROBE = "zz_not_a_key"


@pytest.fixture(scope="module")
def admin():
    path = os.path.abspath(os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin"))
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: build it with `make build` (or set VGPU_ADMIN_BIN)" % path, pytrace=False)
    return path


def load(admin, text, tmp_path, name="vgpu.conf"):
    """(exit status, stderr) of vgpu-admin reading ``text`` as its config (a read that needs no XAPI)."""
    path = tmp_path / name
    path.write_text(text)
    proc = subprocess.run([admin, "--config", str(path), "--db", str(tmp_path / "absent.db"), "list-pools"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def refused_keys(admin, text, tmp_path):
    """The keys the core names when it refuses the unknown key in ``text``."""
    status, err = load(admin, text, tmp_path)
    assert status == 2 and "unknown field `%s`" % PROBE in err, err
    expected = err.split("unknown field `%s`" % PROBE, 1)[1]
    keys = re.findall(r"`([^`]+)`", expected)
    assert keys, err
    return keys


def core_keys(admin, tmp_path):
    """{(table or None, key)} of every setting the core takes: the top-level keys it names, and for
    each of them that is a table, the keys it names inside."""
    out = set()
    for key in refused_keys(admin, "%s = 1\n" % PROBE, tmp_path):
        status, err = load(admin, "[%s]\n%s = 1\n" % (key, PROBE), tmp_path)
        if "unknown field `%s`" % PROBE in err:
            out |= {(key, k) for k in refused_keys(admin, "[%s]\n%s = 1\n" % (key, PROBE), tmp_path)}
        else:
            out.add((None, key))
    return out


def shipped_settings():
    """[(table, key, value text)] of the commented-out settings of packaging/vgpu.conf, in order.
    Settings are written `#key = value` (no space after `#`), prose `# text`; tables are live."""
    table, out = None, []
    with open(SHIPPED_CONF) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^\[([a-z_]+)\]\s*$", line)
            if m:
                table = m.group(1)
                continue
            m = re.match(r"^#([a-z_]+)\s*=\s*(.+?)\s*$", line)
            if m:
                out.append((table, m.group(1), m.group(2)))
                continue
            assert line == "" or line.startswith("# ") or line == "#", "neither prose nor a setting: %r" % line
    return out


def uncommented():
    """packaging/vgpu.conf with every setting in force."""
    with open(SHIPPED_CONF) as f:
        return re.sub(r"(?m)^#([a-z_]+\s*=)", r"\1", f.read())


def man_defaults(admin):
    """{(table, key): (value text, is a default)} from vgpu.conf(5) as vgpu-admin prints it."""
    page = subprocess.run([admin, "man", "vgpu.conf"], stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
    page = page.replace("\\-", "-").replace("\\*(Aq", "'")
    table, out = None, {}
    for line in page.splitlines():
        m = re.match(r'^\.SH "?\[([a-z_]+)\]"?$', line)
        if m:
            table = m.group(1)
        elif line.startswith(".SH "):
            table = None
        m = re.match(r"^\\fB([a-z_]+)\\fR \((default|no default; e\.g\.) (.+)\)$", line)
        if m:
            out[(table, m.group(1))] = (m.group(3), m.group(2) == "default")
    assert len(out) > 10, page[:2000]
    return out


def test_every_setting_of_the_core_is_in_the_file_once(admin, tmp_path):
    settings = [(t, k) for t, k, _ in shipped_settings()]
    assert len(settings) == len(set(settings)), "a setting appears twice"
    known = core_keys(admin, tmp_path)
    assert {(None, "db_path"), ("device", "type"), ("restart", "shutdown_timeout_s")} <= known
    assert sorted(settings, key=str) == sorted(known, key=str)


def test_every_value_in_the_file_is_the_documented_default(admin):
    documented = man_defaults(admin)
    shipped = {(t, k): v for t, k, v in shipped_settings()}
    assert sorted(shipped, key=str) == sorted(documented, key=str)
    for key, value in shipped.items():
        assert value == documented[key][0], "%s: the file says %s, vgpu.conf(5) %s" % (key, value, documented[key][0])


def test_the_file_loads_as_shipped_and_with_every_setting_in_force(admin, tmp_path):
    with open(SHIPPED_CONF) as f:
        assert load(admin, f.read(), tmp_path) == (0, "")
    assert load(admin, uncommented(), tmp_path) == (0, "")
    # The same load refuses a key it does not know (here in the last table), so the loads above
    # could fail.
    status, err = load(admin, uncommented() + "%s = 1\n" % PROBE, tmp_path)
    assert status == 2 and PROBE in err, err


def test_the_device_settings_are_what_the_core_writes_by_default(admin, tmp_path):
    """register-vm with no config file and with the file's settings in force write the same device."""
    vm = fixture_uuid("sample_pool", "render-01")
    written = []
    with Simulator(fixture="sample_pool") as sim:
        for name, text in (("none", None), ("shipped", uncommented())):
            sim.reset()
            config = tmp_path / ("%s.conf" % name)
            if text is not None:
                config.write_text(text)
            env = admin_env(sim, VGPU_CONFIG=str(config), VGPU_DB=str(tmp_path / ("%s.db" % name)))
            proc = subprocess.run([admin, "register-vm", "--vm-uuid", vm, "--pool", "A", "--priority", "low"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
            assert proc.returncode == 0, proc.stderr
            written.append(sim.get_vm(vm)["platform"]["device-model-args"])
    shipped = {(t, k): v.strip('"') for t, k, v in shipped_settings()}
    assert written[0] == written[1] == "-device %s,%s,pool_id=A,priority=low,vm_id=1" % (
        shipped[("device", "type")], shipped[("device", "extra")])

"""Shared helpers of the RPM suite (SPEC section 7); the fixtures are in conftest.py.

The package under test is ``$VGPU_TEST_RPM``, else ``dist/vgpu-registry-<version>-1.x86_64.rpm`` (what
``make rpm`` builds; the version is the workspace's, read from Cargo.toml here). A second release
is built by ``packaging/build-rpm.sh`` with ``RPM_RELEASE=2`` into a temporary directory, from the
same artefacts in dist/.

Installs go into scratch roots (``rpm --root ROOT --dbpath /var/lib/rpm``, so the rpm database is
where dom0 keeps it, inside the root). rpm runs scriptlets chrooted into the root, so each root
gets a /bin/sh, an rm and a mkdir (with the libraries they load). The scriptlets also run
systemctl, which a root has only when a test puts one there: this host's own (it works offline in
a chroot, as on a dom0 image being built) or a stand-in that logs its arguments. That needs root
privileges, as on dom0.

Where rpmbuild is missing, the tests that need it are skipped, loudly (named again at the end of
the run); under ``CI=true`` they fail instead. A missing package with rpmbuild present fails: run
``make rpm``.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading

import pytest

RPM_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(RPM_TESTS_DIR)
REPO_DIR = os.path.dirname(TESTS_DIR)
PLUGIN_TESTS_DIR = os.path.join(TESTS_DIR, "plugin")
BUILD_SCRIPT = os.path.join(REPO_DIR, "packaging", "build-rpm.sh")
SHIPPED_CONF = os.path.join(REPO_DIR, "packaging", "vgpu.conf")
for _d in (TESTS_DIR, PLUGIN_TESTS_DIR):
    if _d not in sys.path:
        sys.path.insert(0, _d)

from xapi_sim.harness import FIXTURES_DIR, Simulator  # noqa: E402,F401 (Simulator: re-exported)

IN_CI = os.environ.get("CI") == "true"
NAME = "vgpu-registry"
ARCH = "x86_64"

# Where the package puts things (SPEC section 7, and the defaults of the core and the plugin).
BIN = "/usr/bin/vgpu-admin"
PLUGIN_DIR = "/etc/xapi.d/plugins"
PLUGIN = PLUGIN_DIR + "/vgpu"
PLUGIN_HELPER = PLUGIN_DIR + "/vgpu_plugin.py"
PYTHON_DIR = "/usr/lib64/vgpu-registry/python"
CONF_DIR = "/etc/vgpu"
CONF = CONF_DIR + "/vgpu.conf"
REGISTRY = CONF_DIR + "/vgpu_config.db"
DOC_DIR = "/usr/share/doc/vgpu-registry"
BASH_COMPLETION = "/usr/share/bash-completion/completions/vgpu-admin"
MAN_DIR = "/usr/share/man"
UNIT_DIR = "/usr/lib/systemd/system"
REFRESH_SERVICE_NAME = "vgpu-registry-refresh.service"
REFRESH_TIMER_NAME = "vgpu-registry-refresh.timer"
REFRESH_SERVICE = UNIT_DIR + "/" + REFRESH_SERVICE_NAME
REFRESH_TIMER = UNIT_DIR + "/" + REFRESH_TIMER_NAME
SPEC = os.path.join(REPO_DIR, "packaging", "vgpu-registry.spec")


def workspace_version():
    """``version`` of ``[workspace.package]`` in the top Cargo.toml."""
    section = None
    with open(os.path.join(REPO_DIR, "Cargo.toml")) as f:
        for line in f:
            m = re.match(r"^\[([^\]]+)\]", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r'^version\s*=\s*"([^"]+)"', line)
            if m and section == "workspace.package":
                return m.group(1)
    raise AssertionError("no version in [workspace.package] of Cargo.toml")


VERSION = workspace_version()


def package_file_name(release):
    return "%s-%s-%s.%s.rpm" % (NAME, VERSION, release, ARCH)


# ------------------------------------------------------------------------------------------------
# What cannot run here: skipped loudly, or failed under CI=true; listed at the end of the run

MISSING = {}
_MISSING_LOCK = threading.Lock()


def unavailable(what, why):
    with _MISSING_LOCK:
        MISSING[what] = why
    if IN_CI:
        pytest.fail("%s is unavailable: %s (CI=true: never skipped)" % (what, why), pytrace=False)
    pytest.skip("SKIPPED: %s (%s)" % (what, why))


def need_rpmbuild():
    if not shutil.which("rpmbuild") or not shutil.which("rpm"):
        unavailable("rpmbuild", "not installed here: `make rpm` installs Debian's rpm package")


def need_root():
    if os.geteuid() != 0:
        pytest.fail("installing into a scratch root needs root privileges (rpm sets owners and chroots "
                    "for scriptlets), as on dom0", pytrace=False)


def release_1_package():
    """The package ``make rpm`` built (release 1), or a failure naming the fix."""
    need_rpmbuild()
    path = os.environ.get("VGPU_TEST_RPM") or os.path.join(REPO_DIR, "dist", package_file_name(1))
    if not os.path.isfile(path):
        pytest.fail("%s is missing: build it with `make rpm`" % path, pytrace=False)
    return os.path.abspath(path)


def build_release(release, out_dir, conf=None):
    """Release ``release`` of the package, built by packaging/build-rpm.sh into ``out_dir``
    (shipping the vgpu.conf at ``conf`` instead of packaging/vgpu.conf)."""
    need_rpmbuild()
    env = dict(os.environ, RPM_RELEASE=str(release))
    if conf:
        env["VGPU_CONF"] = conf
    proc = subprocess.run([BUILD_SCRIPT, out_dir], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=600)
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, "build-rpm.sh (RPM_RELEASE=%s) failed:\n%s" % (release, out)
    path = os.path.join(out_dir, package_file_name(release))
    assert out.strip().splitlines()[-1] == path, out
    return path


# ------------------------------------------------------------------------------------------------
# Querying a package file


def run(cmd, env=None, timeout=300, check=True, cwd=None):
    """(exit status, stdout text, stderr text) of ``cmd``; with ``check`` a non-zero exit fails."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=timeout, cwd=cwd)
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    if check:
        assert proc.returncode == 0, "%s exited with %d:\n%s\n%s" % (" ".join(cmd), proc.returncode, out, err)
    return proc.returncode, out, err


def query(package, fmt):
    """``rpm -qp --qf fmt package``: the text."""
    return run(["rpm", "-qp", "--qf", fmt, package])[1]


def query_tags(package, *tags):
    """{tag: value} of single-valued header tags."""
    sep = "\x1f"
    text = query(package, sep.join("%%{%s}" % t for t in tags))
    return dict(zip(tags, text.split(sep)))


class PackageFile(object):
    """One entry of a package's file list."""

    def __init__(self, path, mode, user, group, flags, digest, link):
        self.path, self.mode, self.user, self.group = path, mode, user, group
        self.flags, self.digest, self.link = flags, digest, link

    @property
    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    @property
    def perms(self):
        return stat.S_IMODE(self.mode)

    def __repr__(self):
        return "<%s %o %s:%s %r>" % (self.path, self.mode, self.user, self.group, self.flags)


def file_list(package):
    """{path: PackageFile} of every entry (files, directories, ghosts) of the package."""
    fmt = "[%{FILENAMES}\\t%{FILEMODES}\\t%{FILEUSERNAME}\\t%{FILEGROUPNAME}\\t%{FILEFLAGS:fflags}" \
          "\\t%{FILEDIGESTS}\\t%{FILELINKTOS}\\n]"
    out = {}
    for line in query(package, fmt).splitlines():
        path, mode, user, group, flags, digest, link = line.split("\t")
        out[path] = PackageFile(path, int(mode) & 0o177777, user, group, flags, digest, link)
    return out


def requires(package):
    return run(["rpm", "-qp", "--requires", package])[1].splitlines()


def scripts(package):
    return run(["rpm", "-qp", "--scripts", package])[1]


def payload(package):
    """{path: bytes} of the regular files in the package's payload (rpm2cpio, "newc" cpio)."""
    data = subprocess.run(["rpm2cpio", package], stdout=subprocess.PIPE, check=True, timeout=300).stdout
    files, pos = {}, 0
    while True:
        header = data[pos:pos + 110]
        assert header[:6] == b"070701", "not a newc cpio archive at offset %d" % pos
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode("utf-8")
        pos = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return files
        content = data[pos:pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if stat.S_ISREG(mode):
            files["/" + name.lstrip("./")] = content


def newest_glibc(elf_path):
    """The newest GLIBC_x.y version ``objdump -T`` lists for the ELF file, as a tuple (or None)."""
    out = run(["objdump", "-T", elf_path])[1]
    versions = [tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9]+(?:\.[0-9]+)+)", out)]
    return max(versions) if versions else None


def is_elf(content):
    return content[:4] == b"\x7fELF"


def gunzip(content):
    return gzip.decompress(content)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Scratch roots


# What the scriptlets run, copied into each root with the libraries it loads (ldd), so rpm can
# run them chrooted there (systemctl only where a test asks for it).
SCRIPTLET_PROGRAMS = {"/bin/sh": "sh", "/bin/rm": "rm", "/bin/mkdir": "mkdir"}


def _libraries(program):
    out = run(["ldd", program])[1]
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Root(object):
    """A scratch root with its own rpm database, as a fresh dom0 disk (for rpm's purposes)."""

    def __init__(self, path):
        self.path = path

    def create(self):
        need_root()
        os.makedirs(self.path, exist_ok=True)
        for target, name in SCRIPTLET_PROGRAMS.items():
            self.add_program(name, target)
        self.rpm("--initdb")
        return self

    def add_program(self, name, target):
        """This host's program ``name`` at ``target`` in the root, with the libraries it loads."""
        program = shutil.which(name)
        assert program, "no %s on PATH to put into the scratch root" % name
        self._copy(os.path.realpath(program), target)
        for lib in _libraries(program):
            self._copy(os.path.realpath(lib), lib)

    def _copy(self, source, target):
        dest = self.at(target)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(source, dest)

    def at(self, path):
        """The host path of ``path`` inside the root."""
        return os.path.join(self.path, path.lstrip("/"))

    def rpm(self, *args, check=True):
        """``rpm --root ROOT --dbpath /var/lib/rpm ARGS``: (status, stdout, stderr)."""
        return run(["rpm", "--root", self.path, "--dbpath", "/var/lib/rpm"] + list(args), check=check)

    def install(self, package, *flags):
        return self.rpm("-ivh", "--nodeps", *(flags + (package,)))

    def upgrade(self, package):
        return self.rpm("-Uvh", "--nodeps", package)

    def erase(self):
        return self.rpm("-e", NAME)

    def installed(self):
        """The installed NAME-VERSION-RELEASE, or None."""
        status, out, _ = self.rpm("-q", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}", NAME, check=False)
        return out if status == 0 else None

    def snapshot(self, path):
        """{name: (mode, sha256 or None for a directory)} of everything under ``path`` in the root."""
        top = self.at(path)
        out = {}
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                rel = os.path.relpath(full, top)
                out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            None if stat.S_ISDIR(st.st_mode) else sha256(full))
        return out

    def mode(self, path):
        return stat.S_IMODE(os.stat(self.at(path)).st_mode)

    def write(self, path, text, mode=0o644):
        dest = self.at(path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w") as f:
            f.write(text)
        os.chmod(dest, mode)


# ------------------------------------------------------------------------------------------------
# systemd unit files


class UnitSyntaxError(AssertionError):
    pass


def parse_unit(text, name="unit"):
    """{section: [(key, value), ...]} of a unit file, read as systemd reads one: comments are lines
    starting with '#' or ';', a line ending in a backslash continues on the next, a key may repeat
    (each assignment kept, in order), whitespace around '=' and at both ends is dropped. Anything
    systemd would not read as a section header or an assignment is an error here."""
    sections, current, pending = {}, None, ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        m = re.match(r"^\[([^\[\]]+)\]$", line)
        if m:
            current = m.group(1)
            if current in sections:
                raise UnitSyntaxError("%s:%d: section [%s] given twice" % (name, number, current))
            sections[current] = []
            continue
        if current is None:
            raise UnitSyntaxError("%s:%d: assignment outside a section: %r" % (name, number, raw))
        if "=" not in line:
            raise UnitSyntaxError("%s:%d: not an assignment: %r" % (name, number, raw))
        key, value = line.split("=", 1)
        key = key.strip()
        if not re.match(r"^[A-Za-z][A-Za-z0-9]*$", key):
            raise UnitSyntaxError("%s:%d: not a key: %r" % (name, number, key))
        sections[current].append((key, value.strip()))
    if pending:
        raise UnitSyntaxError("%s: the last line continues into nothing" % name)
    return sections


def unit_values(unit, section, key):
    """Every value assigned to ``key`` in ``section``, in order (space-separated lists split)."""
    return [v for k, value in unit.get(section, []) for v in value.split() if k == key]


def unit_value(unit, section, key):
    """The one value of ``key`` in ``section``; a missing or repeated key fails."""
    found = [value for k, value in unit.get(section, []) if k == key]
    assert len(found) == 1, "[%s] %s= assigned %d times: %r" % (section, key, len(found), found)
    return found[0]


# ------------------------------------------------------------------------------------------------
# Running the installed vgpu-admin


def fixture_uuid(fixture, name_label, kind="vms"):
    with open(os.path.join(FIXTURES_DIR, fixture + ".json")) as f:
        found = [o["uuid"] for o in json.load(f)[kind] if o.get("name_label") == name_label]
    assert len(found) == 1, "%s: %d %s named %r" % (fixture, len(found), kind, name_label)
    return found[0]


def sample_master():
    with open(os.path.join(FIXTURES_DIR, "sample_pool.json")) as f:
        return json.load(f)["pool"]["master"]


def admin_env(sim, **extra):
    """The environment of a vgpu-admin run on the sample pool's master, talking to ``sim``."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "VGPU_XAPI": sim.url, "VGPU_HOST_UUID": sample_master()}
    env.update(extra)
    return env


def run_admin(binary, args, env):
    return run([binary] + list(args), env=env, check=False)

"""Helpers of the vgpu_registry package suite (tests/python); the fixtures are in conftest.py.

The suite runs from the repository's test venv but exercises the wheel under the interpreters
dom0 has: the newest ``dist/vgpu_registry-*.whl`` (or ``$VGPU_TEST_WHEEL``) is installed into a
fresh venv of CPython 3.6 (XCP-ng 8.3) and of CPython 3.12 (XCP-ng 9), and ``probe.py`` runs
there. An interpreter is ``$VGPU_TEST_PYTHON_3_6`` / ``$VGPU_TEST_PYTHON_3_12`` (a path), else
the newest pyenv version of that minor (``$PYENV_ROOT`` or ``pyenv root``), else ``python3.6`` /
``python3.12`` on PATH. A missing interpreter or wheel fails the tests that need it.

The core's tables come from ``vgpu-admin functions --format json`` (``$VGPU_ADMIN_BIN``, else
``<repo>/target/debug/vgpu-admin``).
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(SUITE_DIR)
REPO_DIR = os.path.dirname(TESTS_DIR)
PROBE = os.path.join(SUITE_DIR, "probe.py")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# The interpreters the package must work under: dom0 of XCP-ng 8.3 and of XCP-ng 9.
MINORS = ("3.6", "3.12")


def admin_binary():
    path = os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin")
    return os.path.abspath(path)


def read_table(admin):
    """The core's function table and error codes, as ``vgpu-admin functions`` prints them."""
    if not os.access(admin, os.X_OK):
        pytest.fail("%s is missing: build it with `cargo build -p vgpu-admin` (or set VGPU_ADMIN_BIN)" % admin)
    proc = subprocess.run([admin, "functions", "--format", "json"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if proc.returncode != 0:
        pytest.fail("`vgpu-admin functions --format json` failed (status %d): %s"
                    % (proc.returncode, proc.stderr.decode("utf-8", "replace").strip()))
    table = json.loads(proc.stdout.decode("utf-8"))
    assert {"functions", "error_codes"} <= set(table), table
    assert table["functions"] and table["error_codes"], table
    for f in table["functions"]:
        assert isinstance(f["name"], str) and f["vm"] in ("required", "optional", "none"), f
        for part in ("required", "optional", "flags"):
            assert all(isinstance(k, str) for k in f[part]), f
    return table


def argument_keys(function):
    """Every argument key a function of the table takes."""
    return function["required"] + function["optional"] + function["flags"]


# ------------------------------------------------------------------------------------------------
# Interpreters


def _pyenv_root():
    if os.environ.get("PYENV_ROOT"):
        return os.environ["PYENV_ROOT"]
    exe = shutil.which("pyenv")
    if not exe:
        return None
    try:
        return subprocess.check_output([exe, "root"], stderr=subprocess.DEVNULL, timeout=20).decode().strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(exe):
    try:
        out = subprocess.check_output(
            [exe, "-I", "-c", "import sys; print('%d.%d.%d' % tuple(sys.version_info[:3]))"],
            stderr=subprocess.DEVNULL, timeout=30)
        return out.decode().strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _numeric(version):
    return tuple(int(x) for x in version.split("."))


def find_python(minor):
    """(path, version) of a CPython ``minor``; fails the test when there is none."""
    variable = "VGPU_TEST_PYTHON_" + minor.replace(".", "_")
    override = os.environ.get(variable)
    if override:
        version = _version_of(override)
        if not (version and version.startswith(minor + ".")):
            pytest.fail("%s=%s is not a working CPython %s (%s)" % (variable, override, minor, version))
        return os.path.abspath(override), version
    candidates = []
    root = _pyenv_root()
    if root:
        found = []
        for exe in glob.glob(os.path.join(root, "versions", minor + ".*", "bin", "python")):
            version = os.path.basename(os.path.dirname(os.path.dirname(exe)))
            if re.match(r"^\d+\.\d+\.\d+$", version):
                found.append((_numeric(version), exe))
        candidates += [exe for _, exe in sorted(found, reverse=True)]
    if shutil.which("python" + minor):
        candidates.append(shutil.which("python" + minor))
    for exe in candidates:
        version = _version_of(exe)
        if version and version.startswith(minor + "."):
            return os.path.abspath(exe), version
    pytest.fail("no CPython %s: install it with pyenv, put python%s on PATH or set VGPU_TEST_PYTHON_%s"
                % (minor, minor, minor.replace(".", "_")))


# ------------------------------------------------------------------------------------------------
# The wheel in a venv of each interpreter


def find_wheel():
    if os.environ.get("VGPU_TEST_WHEEL"):
        wheel = os.path.abspath(os.environ["VGPU_TEST_WHEEL"])
        if not os.path.isfile(wheel):
            pytest.fail("VGPU_TEST_WHEEL=%s does not exist" % wheel)
        return wheel
    wheels = glob.glob(os.path.join(REPO_DIR, "dist", "vgpu_registry-*.whl"))
    if not wheels:
        pytest.fail("no dist/vgpu_registry-*.whl: build it with `make wheel`")
    return max(wheels, key=os.path.getmtime)


class Venv(object):
    """A venv of one interpreter holding the wheel, and nothing else."""

    def __init__(self, minor, base, version, path):
        self.minor = minor
        self.base = base
        self.version = version
        self.path = path
        self.python = os.path.join(path, "bin", "python")

    def __repr__(self):
        return "py" + self.minor

    @classmethod
    def create(cls, minor, root):
        base, version = find_python(minor)
        wheel = find_wheel()
        path = os.path.join(root, "py" + minor)
        _run([base, "-m", "venv", "--without-pip", path], "creating a CPython %s venv" % version)
        venv = cls(minor, base, version, path)
        query = "import platform, sysconfig; print(sysconfig.get_paths()['purelib']); print(platform.machine())"
        site, machine = _run([venv.python, "-I", "-c", query], "asking the venv for its site-packages").split()
        # The venv's own pip may be too old to read the wheel's manylinux2014 tag (CPython
        # 3.6 bundles pip 18.1), so the test venv's pip installs it, for this interpreter's
        # version and for the platform the wheel claims; a wheel that does not fit is refused.
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-index", "--no-deps", "--only-binary=:all:", "--target", site,
              "--python-version", minor, "--implementation", "cp", "--abi", "abi3",
              "--platform", "manylinux2014_" + machine, wheel],
             "installing %s for CPython %s" % (os.path.basename(wheel), version))
        return venv

    def probe(self, steps, env=None):
        """Runs probe.py in the venv with ``steps``; its list of results."""
        proc = subprocess.run([self.python, "-I", PROBE], input=json.dumps({"steps": steps}).encode(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                              env=dict(env or {}, PATH=os.environ.get("PATH", "")), timeout=300)
        if proc.returncode != 0:
            raise AssertionError("probe.py under CPython %s failed (status %d): %s"
                                 % (self.version, proc.returncode, proc.stderr.decode("utf-8", "replace")))
        return json.loads(proc.stdout.decode("ascii"))


def _run(cmd, what):
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail("%s failed (status %d): %s%s" % (what, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                                                     proc.stderr.decode("utf-8", "replace")[-2000:]))
    return proc.stdout.decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------------
# Steps for probe.py


def call(name, *args, **kwargs):
    return {"op": "call", "name": name, "args": list(args), "kwargs": kwargs}


def throw(name, *args, **kwargs):
    return {"op": "raise", "name": name, "args": list(args), "kwargs": kwargs}


def record(name, **kwargs):
    return {"op": "record", "name": name, "kwargs": kwargs}


def signature(name):
    return {"op": "signature", "name": name}


def drop_code(code):
    return {"op": "drop_code", "code": code}


DESCRIBE = {"op": "describe"}


def value(result):
    """The value of a step that must have succeeded."""
    assert "raised" not in result, result["raised"]
    return result["value"]


def raised(result):
    """The exception of a step that must have failed."""
    assert "raised" in result, "no exception; returned %r" % (result.get("value"),)
    return result["raised"]


def class_name(code):
    """The exception class name of an error code: CamelCase, ending in ``Error``
    (``VM_ID_IN_USE`` -> ``VmIdInUseError``, ``XAPI_ERROR`` -> ``XapiError``)."""
    name = "".join(part.capitalize() for part in code.split("_"))
    return name if name.endswith("Error") else name + "Error"

"""Shared helpers of the xapi plugin suite (SPEC section 4); the fixtures are in conftest.py.

The suite runs the real ``plugin/vgpu`` file through the XAPI
simulator exactly as xapi runs it, under each dom0 interpreter and through each backend.

Variants (interpreter x backend), as on XCP-ng:

    py2.7-cli      CPython 2.7 (8.2): the ``vgpu-admin call`` bridge only
    py3.6-native   CPython 3.6 (8.3): the ``vgpu_registry`` extension from the wheel in dist/
    py3.12-cli     CPython 3.12 (9), or 3.11: both paths
    py3.12-native

Interpreters are found through ``VGPU_TEST_PYTHON_2_7`` / ``_3_6`` / ``_3_12`` / ``_3_11`` (a path),
else pyenv (``$PYENV_ROOT`` or ``pyenv root``), else ``pythonX.Y`` on PATH, each checked by running
it. The wheel is ``$VGPU_TEST_WHEEL``, else the newest ``dist/vgpu_registry-*.whl``; it is installed
with the interpreter's own pip into a temporary ``--target`` directory, handed to the plugin as
``VGPU_PYTHONPATH``.

A variant that cannot run (interpreter or wheel missing) is skipped with a loud
``SKIPPED: <what> (<why>)`` line in the terminal summary; with ``VGPU_REQUIRE_ALL_INTERPRETERS=1``
its tests fail instead.

The CLI binary is ``$VGPU_ADMIN_BIN``, else ``<repo>/target/debug/vgpu-admin``.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

PLUGIN_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(PLUGIN_TESTS_DIR)
REPO_DIR = os.path.dirname(TESTS_DIR)
PLUGIN_DIR = os.path.join(REPO_DIR, "plugin")
PLUGIN_FILE = os.path.join(PLUGIN_DIR, "vgpu")
FAKES_DIR = os.path.join(PLUGIN_TESTS_DIR, "fakes")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapi_sim.harness import Simulator, XE_PATH  # noqa: E402 (XE_PATH: re-exported for the README test)

REQUIRE_ALL = os.environ.get("VGPU_REQUIRE_ALL_INTERPRETERS") == "1"

# ------------------------------------------------------------------------------------------------
# The sample pool and the three-host pool (tests/xapi_sim/README.md)

CUDA_DEV = "48df46e9-31b9-4aea-b4b8-678e9a3c70d6"
RENDER_01 = "828a3951-c823-442c-b4b2-6d14384ca337"
RENDER_02 = "09f19984-dda0-48d1-b97f-474e883c4335"
ML_TRAIN_A = "9341b4f4-8bfd-4c2d-a174-22a445b5d132"
ML_TRAIN_B = "8a0615b6-dbf7-4523-9feb-0e1c24f9ff76"
DB_PRIMARY = "b8bd8072-5967-43c6-8636-a8d0c3325d2b"
WEB_01 = "a38feb25-0d32-4d06-8e83-aadf5e2f351f"
LEGACY_STUB = "d20c2d48-adef-44b8-bf90-8894bb45416a"
TWIN_RUNNING = "7bae553d-9349-431d-8161-04ac2eb6c43b"
TWIN_HALTED = "8e4bd816-8a19-4b4a-800e-8cc3364c3ae0"
SAMPLE_MASTER = "b6dea120-450c-42c4-b642-f840206c9bb1"
SAMPLE_MEMBER = "88b4df3d-b12e-4b82-8b5c-e4d2eb98580c"

FWD_01 = "4cbb0fd9-7e3f-4384-bd0b-ca74bdb48a54"  # master
FWD_02 = "b3c82625-0f27-4b4a-a026-fb95f97973bd"
FWD_03 = "07fc9bdd-1de0-4eff-ba78-b1de7e0d24c9"
ALPHA = "72588aa2-9ae4-47b3-9d33-59c80ea44bb1"
BETA = "87ba1d28-d2ba-4cf4-85bc-b748f7f32f70"
GAMMA = "debbb452-84eb-4cfc-ac21-899f4f16b3ac"
DELTA = "e6de737b-ab7c-46ec-ac71-97b3777929ef"

FUNCTIONS = ["scan", "register", "set-vm-id", "set-pool", "set-priority", "update", "show", "list",
             "list-pools", "show-pool", "remove", "status", "sync"]
TIMESTAMP_KEYS = ("created_at", "updated_at")


def admin_binary():
    path = os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin")
    return os.path.abspath(path)


def strip_volatile(value):
    """The JSON value with timestamps removed (they differ from run to run)."""
    if isinstance(value, dict):
        return dict((k, strip_volatile(v)) for k, v in value.items() if k not in TIMESTAMP_KEYS)
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# Skips that must be seen

_LOUD_SKIPS = {}
_LOUD_LOCK = threading.Lock()


def loud_skip(what, why):
    """Skip (or, with VGPU_REQUIRE_ALL_INTERPRETERS=1, fail) and report it in the summary."""
    with _LOUD_LOCK:
        _LOUD_SKIPS[what] = why
    if REQUIRE_ALL:
        pytest.fail("%s is required (VGPU_REQUIRE_ALL_INTERPRETERS=1) but unavailable: %s" % (what, why))
    pytest.skip("SKIPPED: %s (%s)" % (what, why))


# ------------------------------------------------------------------------------------------------
# Interpreters


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
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
            [exe, "-c", "import sys; print('%d.%d.%d' % tuple(sys.version_info[:3]))"],
            stderr=subprocess.DEVNULL, timeout=30, env={"PATH": os.environ.get("PATH", "")})
        return out.decode().strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version_key(v):
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", v))


_INTERPRETERS = {}


def find_python(minor):
    """(path, full version) of a CPython ``minor`` ("2.7", "3.6" …) or (None, why)."""
    if minor in _INTERPRETERS:
        return _INTERPRETERS[minor]
    candidates = []
    override = os.environ.get("VGPU_TEST_PYTHON_" + minor.replace(".", "_"))
    if override:
        candidates.append(override)
    root = _pyenv_root()
    if root:
        found = glob.glob(os.path.join(root, "versions", minor + ".*", "bin", "python"))
        versions = [(os.path.basename(os.path.dirname(os.path.dirname(p))), p) for p in found]
        versions = [(v, p) for v, p in versions if re.match(r"^\d+\.\d+\.\d+$", v)]
        candidates += [p for v, p in sorted(versions, key=lambda vp: _version_key(vp[0]), reverse=True)]
    on_path = shutil.which("python" + minor)
    if on_path:
        candidates.append(on_path)
    result = (None, "no CPython %s found (pyenv versions, PATH python%s, $VGPU_TEST_PYTHON_%s)"
              % (minor, minor, minor.replace(".", "_")))
    for exe in candidates:
        version = _version_of(exe)
        if version and version.startswith(minor + "."):
            result = (os.path.abspath(exe), version)
            break
    _INTERPRETERS[minor] = result
    return result


def find_modern_python():
    """CPython 3.12, else 3.11 (the "dom0 of XCP-ng 9" interpreter)."""
    for minor in ("3.12", "3.11"):
        exe, version = find_python(minor)
        if exe:
            return exe, version
    return None, "neither CPython 3.12 nor 3.11 found"


# ------------------------------------------------------------------------------------------------
# The wheel


def find_wheel():
    """``$VGPU_TEST_WHEEL``, else the newest ``dist/vgpu_registry-*.whl``."""
    if os.environ.get("VGPU_TEST_WHEEL"):
        return os.path.abspath(os.environ["VGPU_TEST_WHEEL"])
    wheels = glob.glob(os.path.join(REPO_DIR, "dist", "vgpu_registry-*.whl"))
    if not wheels:
        return None
    return max(wheels, key=os.path.getmtime)


_WHEEL_DIRS = {}
_WHEEL_LOCK = threading.Lock()


def wheel_target(python, tmp_root):
    """A directory holding the wheel installed by ``python``'s pip, or (None, why)."""
    wheel = find_wheel()
    if not wheel:
        return None, "no dist/vgpu_registry-*.whl: build it with `make wheel`"
    with _WHEEL_LOCK:
        key = (python, wheel, os.path.getmtime(wheel))
        if key in _WHEEL_DIRS:
            return _WHEEL_DIRS[key]
        target = tempfile.mkdtemp(prefix="wheel-", dir=tmp_root)
        cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--target", target, wheel]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        if proc.returncode != 0:
            result = (None, "pip could not install %s: %s" % (os.path.basename(wheel),
                                                              proc.stdout.decode("utf-8", "replace")[-500:]))
        else:
            probe = "import vgpu_registry, sys; sys.stdout.write(vgpu_registry.__file__)"
            check = subprocess.run([python, "-c", probe],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                   env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": target})
            if check.returncode != 0:
                result = (None, "%s installed but does not import: %s" % (
                    os.path.basename(wheel), check.stdout.decode("utf-8", "replace")[-500:]))
            else:
                result = (target, None)
        _WHEEL_DIRS[key] = result
        return result


# ------------------------------------------------------------------------------------------------
# Variants


class Variant(object):
    def __init__(self, name, minor, backend):
        self.name = name
        self.minor = minor
        self.backend = backend
        self.python = None
        self.version = None
        self.pythonpath = None

    def __repr__(self):
        return self.name

    def resolve(self, tmp_root):
        """Fill in python / pythonpath, or loud-skip."""
        if self.minor == "modern":
            exe, version = find_modern_python()
        else:
            exe, version = find_python(self.minor)
        if not exe:
            loud_skip("%s (CPython %s, %s path)" % (self.name, self.minor, self.backend), version)
        self.python, self.version = exe, version
        if self.backend == "native":
            target, why = wheel_target(exe, tmp_root)
            if not target:
                loud_skip("%s (native path under CPython %s)" % (self.name, version), why)
            self.pythonpath = target
        return self


VARIANTS = [
    Variant("py2.7-cli", "2.7", "cli"),
    Variant("py3.6-native", "3.6", "native"),
    Variant("py3.12-cli", "modern", "cli"),
    Variant("py3.12-native", "modern", "native"),
]


def all_variants(tmp_root):
    """Every variant that can run here (the others are loud-skipped, or failed when required)."""
    out, missing = [], []
    for v in VARIANTS:
        try:
            out.append(v.resolve(tmp_root))
        except pytest.skip.Exception as e:
            missing.append(str(e))
    return out, missing


# ------------------------------------------------------------------------------------------------
# Simulators (one per fixture for the whole session, reset before every test)

def get_simulator(simulators, fixture):
    sim = simulators.get(fixture)
    if sim is None or sim.returncode is not None:
        sim = Simulator(fixture=fixture, plugin_dir=PLUGIN_DIR).start()
        simulators[fixture] = sim
    return sim


class Pool(object):
    """One simulated pool whose hosts run plugin/vgpu as ``variant``; each host has its own
    registry file, as each dom0 has its own disk."""

    def __init__(self, sim, variant, admin, workdir):
        self.sim = sim
        self.variant = variant
        self.admin = admin
        self.workdir = workdir
        self.hosts = [h["uuid"] for h in sim.fixture_data["hosts"]]
        self.master = sim.fixture_data["pool"]["master"]
        self.members = [h for h in self.hosts if h != self.master]
        self.config = os.path.join(workdir, "vgpu.conf")  # absent: the defaults
        self._xenapi = None
        self._host_refs = {}
        sim.reset()
        sim.set_plugin_python(variant.python)
        for h in self.hosts:
            sim.set_plugin_env(h, self.host_env(h))

    def db(self, host=None):
        return os.path.join(self.workdir, "registry-%s.db" % (host or self.master)[:8])

    def log_file(self, host=None):
        return os.path.join(self.workdir, "plugin-%s.log" % (host or self.master)[:8])

    def host_env(self, host):
        """What the simulator adds to this host's plugin environment (besides PATH, VGPU_HOST_UUID
        and VGPU_XAPI, which it always sets)."""
        return {
            "PYTHONPATH": PLUGIN_TESTS_DIR,  # the XenAPIPlugin stand-in
            "PYTHONDONTWRITEBYTECODE": "1",  # keep the work tree clean
            "VGPU_DB": self.db(host),
            "VGPU_CONFIG": self.config,
            "VGPU_ADMIN": self.admin,
            "VGPU_PLUGIN_BACKEND": self.variant.backend,
            "VGPU_PYTHONPATH": self.variant.pythonpath or os.path.join(self.workdir, "no-extension-here"),
            "VGPU_PLUGIN_LOG": self.log_file(host),
        }

    def set_env(self, host, **env):
        self.sim.set_plugin_env(host, env)

    @property
    def xenapi(self):
        if self._xenapi is None:
            self._xenapi = self.sim.xenapi_session()
        return self._xenapi

    def host_ref(self, host):
        if host not in self._host_refs:
            self._host_refs[host] = self.xenapi.xenapi.host.get_by_uuid(host)
        return self._host_refs[host]

    def call_raw(self, fn, args=None, host=None, xenapi=None):
        """host.call_plugin through the PyPI XenAPI client: the answer string."""
        session = xenapi or self.xenapi
        ref = session.xenapi.host.get_by_uuid(host or self.master) if xenapi else self.host_ref(host or self.master)
        return session.xenapi.host.call_plugin(ref, "vgpu", fn, dict(args or {}))

    def call(self, fn, args=None, host=None, xenapi=None):
        raw = self.call_raw(fn, args, host, xenapi)
        assert isinstance(raw, str) and raw.isascii(), raw
        return json.loads(raw)

    def fail(self, fn, args=None, host=None, xenapi=None):
        """The Failure of a call that must fail: (code, message, details) after checking its shape."""
        import XenAPI

        try:
            answer = self.call_raw(fn, args, host, xenapi)
        except XenAPI.Failure as e:
            return check_failure(e.details)
        raise AssertionError("%s %r succeeded: %s" % (fn, args, answer))

    def close(self):
        if self._xenapi is not None:
            try:
                self._xenapi.xenapi.session.logout()
            except Exception:  # noqa: BLE001
                pass
            self._xenapi = None


def check_failure(description):
    """``["VGPU_<CODE>", message, details_json]`` with details an object; returns the parts."""
    assert isinstance(description, list) and len(description) == 3, description
    code, message, details = description
    assert re.match(r"^VGPU_[A-Z_]+$", code), description
    assert message and message.isascii(), description
    assert details.isascii(), description
    parsed = json.loads(details)
    assert isinstance(parsed, dict), description
    return code, message, parsed


# ------------------------------------------------------------------------------------------------
# Running the plugin file directly, as xapi would, to see its raw stdout


def method_call(fn, session, args):
    import xmlrpc.client

    return xmlrpc.client.dumps((session, dict(args)), methodname=fn)


def run_plugin_direct(python, fn, args, env, session="OpaqueRef:direct-run", argv0=None, timeout=120):
    """Exec plugin/vgpu (with ``python``, or through its own first line when None) with exactly the
    environment given (plus nothing): (exit status, stdout bytes, stderr bytes)."""
    cmd = ([python] if python else []) + [argv0 or PLUGIN_FILE, method_call(fn, session, args)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd="/", timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def parse_response(stdout):
    """The one XML-RPC methodResponse the plugin must print: its struct."""
    import xmlrpc.client

    text = stdout.decode("ascii")  # raises on any non-ASCII byte
    params, method = xmlrpc.client.loads(text)
    assert method is None and len(params) == 1, text
    assert text.startswith("<?xml"), text
    assert text.rstrip().endswith("</methodResponse>"), text
    return params[0]

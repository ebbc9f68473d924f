"""Shared helpers of the xapi plugin suite (SPEC section 4); the fixtures are in conftest.py.

The suite runs the real ``plugin/vgpu`` file (with ``plugin/vgpu_plugin.py`` beside it) through the
XAPI simulator exactly as xapi runs it, under each dom0 interpreter and through each backend.

Variants (interpreter x backend), as on XCP-ng:

    py2.7-cli      CPython 2.7 (8.2): the ``vgpu-admin call`` bridge only; XenAPIPlugin is the
                   8.2 stand-in (``xcp-ng-8.2/``: Python 2 only, imports XenAPI and six)
    py3.6-native   CPython 3.6 (8.3): the ``vgpu_registry`` extension from the wheel in dist/
    py3.12-cli     CPython 3.12 (9), or 3.11: both paths
    py3.12-native

Interpreters are found through ``VGPU_TEST_PYTHON_2_7`` / ``_3_6`` / ``_3_12`` / ``_3_11`` (a path),
else pyenv (``$PYENV_ROOT`` or ``pyenv root``), else ``pythonX.Y`` on PATH, each checked by running
it. The wheel is ``$VGPU_TEST_WHEEL``, else the newest ``dist/vgpu_registry-*.whl``; it is installed
with the interpreter's own pip into a temporary ``--target`` directory, handed to the plugin as
``VGPU_PYTHONPATH``. XenAPI and six for the 8.2 stand-in (``requirements-py27.txt``) are installed
the same way with CPython 2.7's pip, from PyPI.

Anything a variant needs that is missing (an interpreter, the wheel, XenAPI and six for 2.7) FAILS
the tests that need it, listed again at the end of the run. ``VGPU_ALLOW_MISSING_INTERPRETERS=1``
turns those failures into skips, for a developer without every interpreter; CI never sets it.

The CLI binary is ``$VGPU_ADMIN_BIN``, else ``<repo>/target/debug/vgpu-admin``. The function table
the plugin is checked against is that binary's ``functions --format json``.
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
HELPER_FILE = os.path.join(PLUGIN_DIR, "vgpu_plugin.py")
FAKES_DIR = os.path.join(PLUGIN_TESTS_DIR, "fakes")
# XenAPIPlugin stand-ins: xapi >= 24 (XCP-ng 8.3, 9), and XCP-ng 8.2's (Python 2 only).
STANDIN_DIR = PLUGIN_TESTS_DIR
STANDIN_82_DIR = os.path.join(PLUGIN_TESTS_DIR, "xcp-ng-8.2")
PY27_REQUIREMENTS = os.path.join(PLUGIN_TESTS_DIR, "requirements-py27.txt")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapi_sim.harness import FIXTURES_DIR, Simulator, XE_PATH  # noqa: E402 (XE_PATH: re-exported for the README test)
from xapi_sim.plugins import XAPI_PLUGIN_PATH, method_call  # noqa: E402

ALLOW_MISSING = os.environ.get("VGPU_ALLOW_MISSING_INTERPRETERS") == "1"

# ------------------------------------------------------------------------------------------------
# The sample pool and the three-host pool (tests/xapi_sim/fixtures), by name-label


def _fixture(name):
    with open(os.path.join(FIXTURES_DIR, name + ".json")) as f:
        return json.load(f)


def fixture_vm(fixture, name_label, **fields):
    """The uuid of the one VM of ``fixture`` named ``name_label`` (and with these ``fields``)."""
    found = [v["uuid"] for v in _fixture(fixture)["vms"]
             if v.get("name_label") == name_label and all(v.get(k) == x for k, x in fields.items())]
    if len(found) != 1:
        raise KeyError("%d VMs of %s named %r with %r" % (len(found), fixture, name_label, fields))
    return found[0]


def fixture_host(fixture, name_label):
    found = [h["uuid"] for h in _fixture(fixture)["hosts"] if h.get("name_label") == name_label]
    if len(found) != 1:
        raise KeyError("%d hosts of %s named %r" % (len(found), fixture, name_label))
    return found[0]


CUDA_DEV = fixture_vm("sample_pool", "cuda-dev")
RENDER_01 = fixture_vm("sample_pool", "render-01")
RENDER_02 = fixture_vm("sample_pool", "render-02")
ML_TRAIN_A = fixture_vm("sample_pool", "ml-train-a")
ML_TRAIN_B = fixture_vm("sample_pool", "ml-train-b")
DB_PRIMARY = fixture_vm("sample_pool", "db-primary")
WEB_01 = fixture_vm("sample_pool", "web 01")
LEGACY_STUB = fixture_vm("sample_pool", "legacy-stub")
TWIN_RUNNING = fixture_vm("sample_pool", "twin", power_state="Running")
TWIN_HALTED = fixture_vm("sample_pool", "twin", power_state="Halted")
SAMPLE_MASTER = fixture_host("sample_pool", "xcp-lab-01")
SAMPLE_MEMBER = fixture_host("sample_pool", "xcp-lab-02")

FWD_01 = fixture_host("three_host_pool", "fwd-01")  # master
FWD_02 = fixture_host("three_host_pool", "fwd-02")
FWD_03 = fixture_host("three_host_pool", "fwd-03")
ALPHA = fixture_vm("three_host_pool", "alpha")
BETA = fixture_vm("three_host_pool", "beta")
GAMMA = fixture_vm("three_host_pool", "gamma")
DELTA = fixture_vm("three_host_pool", "delta")

TIMESTAMP_KEYS = ("created_at", "updated_at")


def admin_binary():
    path = os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin")
    return os.path.abspath(path)


# ------------------------------------------------------------------------------------------------
# Missing prerequisites fail (or, for a developer who opts out, skip), and are listed at the end

MISSING = {}
_MISSING_LOCK = threading.Lock()


def unavailable(what, why):
    """``what`` cannot be tested here: fail, or skip under VGPU_ALLOW_MISSING_INTERPRETERS=1;
    either way it is listed in the terminal summary."""
    with _MISSING_LOCK:
        MISSING[what] = why
    if ALLOW_MISSING:
        pytest.skip("SKIPPED: %s (%s)" % (what, why))
    pytest.fail("%s is unavailable: %s (VGPU_ALLOW_MISSING_INTERPRETERS=1 skips instead, for development only)"
                % (what, why), pytrace=False)


# ------------------------------------------------------------------------------------------------
# The core's function table: `vgpu-admin functions --format json`

_TABLE = {}


def function_table():
    """The core's function table, its shape checked; fails the calling test when unavailable."""
    if "doc" not in _TABLE:
        _TABLE["doc"], _TABLE["error"] = _read_function_table()
    if _TABLE["error"]:
        pytest.fail(_TABLE["error"], pytrace=False)
    return _TABLE["doc"]


def function_names():
    """The dashed function names of the core's table, in its order."""
    return [f["name"] for f in function_table()["functions"]]


def function_names_or_placeholder():
    """For parametrizing at collection time: the names, or one placeholder whose test then fails
    with the reason (a missing table must fail, not collect zero tests)."""
    if "doc" not in _TABLE:
        _TABLE["doc"], _TABLE["error"] = _read_function_table()
    if _TABLE["error"]:
        return ["<no function table>"]
    return [f["name"] for f in _TABLE["doc"]["functions"]]


def _read_function_table():
    admin = admin_binary()
    cmd = [admin, "functions", "--format", "json"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60, env={"PATH": os.environ.get("PATH", "")})
    except OSError as e:
        return None, "cannot run %s: %s" % (" ".join(cmd), e)
    if proc.returncode != 0:
        return None, "%s exited with status %d: %s" % (" ".join(cmd), proc.returncode,
                                                        proc.stderr.decode("utf-8", "replace")[-1000:])
    try:
        doc = json.loads(proc.stdout.decode("utf-8"))
        problems = _table_problems(doc)
    except ValueError as e:
        return None, "%s did not print JSON: %s" % (" ".join(cmd), e)
    if problems:
        return None, "%s printed a table of an unexpected shape: %s" % (" ".join(cmd), "; ".join(problems))
    return doc, None


def _table_problems(doc):
    keys = {"name", "command", "mutating", "result", "vm", "required", "optional", "flags"}
    problems = []
    if not isinstance(doc, dict) or not isinstance(doc.get("functions"), list) or not doc["functions"]:
        return ["no non-empty list under \"functions\""]
    if not isinstance(doc.get("error_codes"), list) or not doc["error_codes"]:
        problems.append("no non-empty list under \"error_codes\"")
    for f in doc["functions"]:
        if not isinstance(f, dict) or not keys <= set(f):
            problems.append("entry %r: keys lack some of %s" % (f, sorted(keys)))
            continue
        if not re.match(r"^[a-z]+(-[a-z]+)*$", f["name"]):
            problems.append("entry %r: name is not lower-case words joined by dashes" % f["name"])
        if f["vm"] not in ("required", "optional", "none") or not isinstance(f["mutating"], bool):
            problems.append("entry %r: vm or mutating of an unexpected value" % f["name"])
        for k in ("required", "optional", "flags"):
            if not isinstance(f[k], list) or not all(isinstance(a, str) and "_" not in a for a in f[k]):
                problems.append("entry %r: %s is not a list of dashed keys" % (f["name"], k))
    names = [f.get("name") for f in doc["functions"] if isinstance(f, dict)]
    if len(set(names)) != len(names):
        problems.append("duplicate names: %s" % names)
    return problems


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
# XenAPIPlugin for each interpreter, as on the XCP-ng release it stands for

_PY27_SITES = {}


def py27_site(python, tmp_root):
    """A directory with XenAPI and six (requirements-py27.txt) installed by ``python``'s pip (2.7),
    or (None, why)."""
    with _WHEEL_LOCK:
        if python in _PY27_SITES:
            return _PY27_SITES[python]
        target = tempfile.mkdtemp(prefix="py27-site-", dir=tmp_root)
        cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location",
               "--target", target, "-r", PY27_REQUIREMENTS]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                              env={"PATH": os.environ.get("PATH", ""), "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            result = (None, "CPython 2.7's pip could not install %s: %s" % (
                os.path.basename(PY27_REQUIREMENTS), proc.stdout.decode("utf-8", "replace")[-500:]))
        else:
            result = (target, None)
        _PY27_SITES[python] = result
        return result


def xenapiplugin_path(python, version, tmp_root):
    """The PYTHONPATH that gives ``python`` its release's XenAPIPlugin stand-in: XCP-ng 8.2's (with
    XenAPI and six) for 2.7, xapi >= 24's for Python 3; or (None, why)."""
    if not version.startswith("2."):
        return STANDIN_DIR, None
    site, why = py27_site(python, tmp_root)
    if not site:
        return None, why
    return STANDIN_82_DIR + os.pathsep + site, None


class Dom0Python(object):
    """An interpreter of a dom0 ("2.7", "3.6", or "modern" for 3.12 / 3.11) with the PYTHONPATH that
    gives it its release's XenAPIPlugin (``standin``), for running the plugin file directly."""

    def __init__(self, which):
        self.which = which
        self.python = self.version = self.standin = None

    def resolve(self, tmp_root):
        exe, version = find_modern_python() if self.which == "modern" else find_python(self.which)
        if not exe:
            unavailable("CPython %s" % self.which, version)
        standin, why = xenapiplugin_path(exe, version, tmp_root)
        if not standin:
            unavailable("XenAPIPlugin of XCP-ng 8.2 under CPython %s" % version, why)
        self.python, self.version, self.standin = exe, version, standin
        return self

    @property
    def major_minor(self):
        return "python" + ".".join(self.version.split(".")[:2])


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
        self.standin = None

    def __repr__(self):
        return self.name

    def resolve(self, tmp_root):
        """Fill in python / pythonpath / standin, or fail (see ``unavailable``)."""
        if self.minor == "modern":
            exe, version = find_modern_python()
        else:
            exe, version = find_python(self.minor)
        if not exe:
            unavailable("%s (CPython %s, %s path)" % (self.name, self.minor, self.backend), version)
        self.python, self.version = exe, version
        self.standin, why = xenapiplugin_path(exe, version, tmp_root)
        if not self.standin:
            unavailable("%s (XenAPIPlugin of XCP-ng 8.2 under CPython %s)" % (self.name, version), why)
        if self.backend == "native":
            target, why = wheel_target(exe, tmp_root)
            if not target:
                unavailable("%s (native path under CPython %s)" % (self.name, version), why)
            self.pythonpath = target
        return self


VARIANTS = [
    Variant("py2.7-cli", "2.7", "cli"),
    Variant("py3.6-native", "3.6", "native"),
    Variant("py3.12-cli", "modern", "cli"),
    Variant("py3.12-native", "modern", "native"),
]


def all_variants(tmp_root):
    """Every variant that can run here; a missing one fails the caller (or, when developers opt
    out, is left out and named in ``missing``)."""
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
        """This suite's variables for a host's plugin (the simulator adds them to xapi's PATH, with
        VGPU_HOST_UUID and VGPU_XAPI): dom0's XenAPIPlugin, the registry, the config file, the CLI,
        the backend, the extension and the log of that host."""
        return {
            "PYTHONPATH": self.variant.standin,
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


def run_plugin_direct(python, fn, args, env, session="OpaqueRef:direct-run", argv0=None, timeout=120):
    """Exec plugin/vgpu (with ``python``, or through its own first line when None) as xapi does:
    xapi's methodCall as the one argument, exactly the environment given, stdin /dev/null, cwd /,
    a session of its own. (exit status, stdout bytes, stderr bytes)."""
    cmd = ([python] if python else []) + [argv0 or PLUGIN_FILE, method_call(fn, session, args)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd="/", timeout=timeout, start_new_session=True)
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


# ------------------------------------------------------------------------------------------------
# The GPU mediator (SPEC section 10): a stand-in (tests/mediator_sim) on any host of a Pool, found
# by that host's plugin through its own config file, as each dom0 has its own /etc/vgpu/vgpu.conf


def write_host_config(pool, host, text):
    """Gives ``host``'s plugin (and whatever runs there) a config file of its own holding ``text``;
    returns its path."""
    path = os.path.join(pool.workdir, "vgpu-%s.conf" % host[:8])
    with open(path, "w") as f:
        f.write(text)
    pool.set_env(host, VGPU_CONFIG=path)
    return path


class Mediators(object):
    """The mediators of a Pool: ``configure`` points a host's ``[mediator] admin_socket`` at a
    socket of its own (with ``timeout_s``), ``start`` runs a stand-in there reading that host's
    registry file (or ``db``). A configured host without a started stand-in has no socket file:
    no mediator. ``close`` stops them all."""

    def __init__(self, pool):
        from mediator_sim import Mediator

        self._mediator_class = Mediator
        self.pool = pool
        # A socket path holds at most 107 bytes: a short directory of its own, not the test's.
        self.dir = tempfile.mkdtemp(prefix="vgpu-med-")
        self.running = {}

    def socket(self, host):
        return os.path.join(self.dir, "%s.sock" % host[:8])

    def configure(self, host, timeout_s=2, extra=""):
        """``host``'s config: its admin socket and timeout, then ``extra`` (more TOML sections)."""
        return write_host_config(self.pool, host, '[mediator]\nadmin_socket = "%s"\ntimeout_s = %d\n%s'
                                 % (self.socket(host), timeout_s, extra))

    def start(self, host, mode="normal", db=None, **kw):
        """A stand-in on ``host``'s socket, reading ``db`` (default: that host's registry file)."""
        self.stop(host)
        m = self._mediator_class(self.socket(host), db or self.pool.db(host), mode=mode, **kw).start()
        self.running[host] = m
        return m

    def __getitem__(self, host):
        return self.running[host]

    def stop(self, host):
        m = self.running.pop(host, None)
        if m is not None:
            m.stop()

    def close(self):
        for host in list(self.running):
            self.stop(host)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_admin_on(pool, host, args, config=None, timeout=120):
    """``vgpu-admin args`` as an administrator runs it on ``host`` of ``pool``: that host's uuid,
    registry file and config file (``config``, default the Pool's), the simulator as its XAPI.
    (exit status, stdout, stderr) as text."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VGPU_HOST_UUID": host,
        "VGPU_XAPI": pool.sim.url,
        "VGPU_DB": pool.db(host),
        "VGPU_CONFIG": config or pool.config,
    }
    proc = subprocess.run([pool.admin] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")

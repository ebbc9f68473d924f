"""Start and drive the XAPI simulator from tests.

    from xapi_sim.harness import Simulator, XapiFault

    with Simulator(transport="unix") as sim:          # sample_pool.json, plugin dir <repo>/plugin
        s = sim.login()
        vm = sim.call("VM.get_by_uuid", s, sim.vm_uuid("render-01"))
        sim.inject_fault("VM.clean_shutdown", code="VM_BAD_POWER_STATE", params=[vm, "running", "halted"])
        env = dict(os.environ, **sim.env())           # VGPU_XAPI / XE_SIM_URL for child processes
"""

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from xapi_sim.client import JsonRpcClient, XapiFault, XapiHttpError  # noqa: F401 (re-exported)
from xapi_sim.generate import generated_fixture, generated_fixture_data  # noqa: F401 (re-exported)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(PACKAGE_DIR)
REPO_DIR = os.path.dirname(TESTS_DIR)
FIXTURES_DIR = os.path.join(PACKAGE_DIR, "fixtures")
SAMPLE_FIXTURE = os.path.join(FIXTURES_DIR, "sample_pool.json")
THREE_HOST_FIXTURE = os.path.join(FIXTURES_DIR, "three_host_pool.json")
XE_PATH = os.path.join(PACKAGE_DIR, "xe")
_UNSET = object()


def fixture_path(name):
    """``"sample_pool"`` / ``"three_host_pool.json"`` / a path -> an absolute fixture path."""
    if os.path.sep in name or os.path.exists(name):
        return os.path.abspath(name)
    if not name.endswith(".json"):
        name += ".json"
    return os.path.join(FIXTURES_DIR, name)


def _short_socket_dir():
    # AF_UNIX paths are limited to ~107 bytes, and the PyPI XenAPI client's UDS transport turns
    # "_" in its fake host name into "/", so the socket path must not contain "_": use a short
    # directory of our own under the temp dir.
    base = tempfile.gettempdir()
    if "_" in base or len(base) > 60:
        base = "/tmp"
    path = os.path.join(base, "xsim-" + secrets.token_hex(6))
    os.mkdir(path, 0o700)
    return path


class Simulator(object):
    """One simulator process. ``fixture``: a path or a fixture name (default: the sample pool)."""

    def __init__(self, fixture=None, transport="unix", workdir=None, plugin_dir=None, plugin_python=None,
                 python=None, start_timeout=30.0, log=True):
        if transport not in ("unix", "tcp"):
            raise ValueError("transport must be 'unix' or 'tcp'")
        self.fixture = fixture_path(fixture) if fixture else SAMPLE_FIXTURE
        with open(self.fixture) as f:
            self.fixture_data = json.load(f)
        self.transport = transport
        self.plugin_dir = plugin_dir
        self.plugin_python = plugin_python
        self.python = python or sys.executable
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir
        self.log_path = None
        self._want_log = log
        self.proc = None
        self.url = None
        self.socket_path = None
        self._socket_dir = None
        self._client = None
        self._session = None
        self._stderr_file = None

    # ------------------------------------------------------------------ lifecycle

    def start(self):
        if self.proc is not None:
            raise RuntimeError("simulator already started")
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="xsim-work-")
        os.makedirs(self.workdir, exist_ok=True)
        cmd = [self.python, "-m", "xapi_sim", "serve", "--fixture", self.fixture]
        if self.transport == "unix":
            self._socket_dir = _short_socket_dir()
            self.socket_path = os.path.join(self._socket_dir, "xapi.sock")
            cmd += ["--unix", self.socket_path]
        else:
            cmd += ["--port", "0"]
        if self.plugin_dir:
            cmd += ["--plugin-dir", os.path.abspath(self.plugin_dir)]
        if self.plugin_python:
            cmd += ["--plugin-python", self.plugin_python]
        if self._want_log:
            self.log_path = os.path.join(self.workdir, "xapi-sim.log")
            cmd += ["--log", self.log_path]
        env = dict(os.environ)
        env["PYTHONPATH"] = TESTS_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr_path = os.path.join(self.workdir, "xapi-sim.stderr")
        self._stderr_file = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr_file, env=env, cwd=REPO_DIR)
        lines = queue.Queue()

        def reader(stream):
            for raw in iter(stream.readline, b""):
                lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
            lines.put(None)

        t = threading.Thread(target=reader, args=(self.proc.stdout,), name="xapi-sim-stdout")
        t.daemon = True
        t.start()
        deadline = time.time() + self.start_timeout
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                self._abort("no LISTENING line within %.0f s" % self.start_timeout)
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    self._abort("exited with status %s" % self.proc.returncode)
                continue
            if line is None:
                self.proc.wait(5)
                self._abort("exited with status %s" % self.proc.returncode)
            if line.startswith("LISTENING "):
                self.url = line[len("LISTENING "):].strip()
                break
        self._client = JsonRpcClient(self.url)
        return self

    def _stderr(self):
        try:
            with open(self._stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _abort(self, why):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        err = self._stderr()
        self._cleanup()
        raise RuntimeError("XAPI simulator failed to start (%s); stderr:\n%s" % (why, err))

    def stop(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
        self._cleanup()

    def _cleanup(self):
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._own_workdir and self.workdir and os.environ.get("XAPI_SIM_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # ------------------------------------------------------------------ calls

    def client(self, version="2.0"):
        """A fresh JsonRpcClient on this simulator (own connection; e.g. one per thread)."""
        return JsonRpcClient(self.url, version=version)

    def call(self, method, *params):
        """One JSON-RPC v2 call; raises XapiFault(code, params) on an XAPI error."""
        if self._client is None:
            raise RuntimeError("simulator not started")
        return self._client.call(method, *params)

    def login(self, user="root", password=None):
        """Log in (any password works on the unix socket) and remember the session in ``.session``."""
        if password is None:
            password = (self.fixture_data.get("users") or {"root": "password"}).get(user, "")
        self._session = self.call("session.login_with_password", user, password, "1.0", "xapi-sim-harness")
        return self._session

    @property
    def session(self):
        return self._session or self.login()

    def env(self):
        """Variables that point child processes (vgpu-admin, xe, the plugin) at this simulator."""
        env = {"VGPU_XAPI": self.url, "XE_SIM_URL": self.url}
        if self.transport == "tcp":
            users = self.fixture_data.get("users") or {"root": "password"}
            user = "root" if "root" in users else sorted(users)[0]
            env.update({"XE_SIM_USER": user, "XE_SIM_PASSWORD": users[user]})
        return env

    def xenapi_session(self, user="root", password=None):
        """A logged-in PyPI ``XenAPI.Session`` on this simulator (needs the XenAPI package)."""
        import XenAPI  # noqa: imported lazily: the simulator itself does not need it

        if password is None:
            password = (self.fixture_data.get("users") or {"root": "password"}).get(user, "")
        if self.transport == "unix":
            s = XenAPI.Session("http://" + self.socket_path.replace("/", "_"), transport=XenAPI.UDSTransport())
        else:
            s = XenAPI.Session(self.url)
        s.xenapi.login_with_password(user, password, "1.0", "xapi-sim-harness")
        return s

    # fixture lookups (no server round trip)

    def vm_uuid(self, name_label):
        """The uuid of the one fixture VM named ``name_label`` (error if none or several)."""
        found = [v["uuid"] for v in self.fixture_data.get("vms", []) if v.get("name_label") == name_label]
        if len(found) != 1:
            raise KeyError("%d fixture VMs named %r" % (len(found), name_label))
        return found[0]

    def host_uuid(self, name_label):
        for h in self.fixture_data["hosts"]:
            if h.get("name_label") == name_label:
                return h["uuid"]
        raise KeyError(name_label)

    @property
    def master_uuid(self):
        return self.call("sim.stats")["master"]

    # ------------------------------------------------------------------ control wrappers

    def inject_fault(self, method, nth=1, times=1, code=_UNSET, params=(), latency_ms=None, drop=None):
        """Fail (and/or delay) the ``nth`` call of ``method`` from now, ``times`` times in a row.

        Without ``code`` the failure is INTERNAL_ERROR, unless ``latency_ms`` or ``drop`` is given:
        then the calls are only delayed (as with ``code=None``) or dropped. ``drop="before"``
        closes the connection without answering and without running the call; ``drop="after"``
        runs it, then closes without answering. ``times=-1``: every call from the nth on.
        ``method="*"`` matches every (non-sim) method. Returns the fault id.
        """
        spec = {"method": method, "nth": nth, "times": times, "params": list(params)}
        if code is not _UNSET:
            spec["code"] = code
        if latency_ms is not None:
            spec["latency_ms"] = latency_ms
        if drop is not None:
            spec["drop"] = drop
        return self.call("sim.inject_fault", spec)

    def clear_faults(self):
        return self.call("sim.clear_faults")

    def call_log(self, method=None):
        """Every non-sim call so far: [{"seq", "method", "params", "protocol"}], optionally one method."""
        log = self.call("sim.call_log")
        return [e for e in log if method is None or e["method"] == method]

    def clear_call_log(self):
        return self.call("sim.clear_call_log")

    def get_vm(self, vm_uuid):
        return self.call("sim.get_vm", vm_uuid)

    def set_vm(self, vm_uuid, fields=None, **kw):
        """Change fixture-level fields of a VM (power_state, platform, resident_on = host uuid, …)."""
        merged = dict(fields or {})
        merged.update(kw)
        return self.call("sim.set_vm", vm_uuid, merged)

    def set_platform_key(self, vm_uuid, key, value):
        """Set (or with value None remove) one key of a VM's platform map."""
        platform = dict(self.get_vm(vm_uuid)["platform"])
        if value is None:
            platform.pop(key, None)
        else:
            platform[key] = value
        return self.set_vm(vm_uuid, platform=platform)

    def add_vm(self, record=None, **kw):
        """Add a VM (fixture fields; uuid optional). Returns {"uuid", "ref"}."""
        merged = dict(record or {})
        merged.update(kw)
        return self.call("sim.add_vm", merged)

    def destroy_vm(self, vm_uuid):
        return self.call("sim.destroy_vm", vm_uuid)

    def reset(self):
        return self.call("sim.reset")

    def set_plugin_env(self, host_uuid, env=None, **kw):
        merged = dict(env or {})
        merged.update(kw)
        return self.call("sim.set_plugin_env", host_uuid, merged)

    def set_plugin_env_all(self, env=None, **kw):
        for h in self.fixture_data["hosts"]:
            self.set_plugin_env(h["uuid"], env, **kw)

    def set_plugin_python(self, exe):
        return self.call("sim.set_plugin_python", exe)

    def set_plugin_dir(self, host_uuid, path):
        """Where that host finds its plugins (``None``: the simulator's plugin directory again)."""
        return self.call("sim.set_plugin_dir", host_uuid, path)

    def set_master(self, host_uuid):
        return self.call("sim.set_master", host_uuid)

    def set_host_live(self, host_uuid, live=True):
        """A host that is not live fails host.call_plugin with HOST_OFFLINE and shows enabled false."""
        return self.call("sim.set_host_live", host_uuid, bool(live))

    def fail_master(self, new_master_uuid):
        """The master goes down and ``new_master_uuid`` becomes the master, in one step."""
        return self.call("sim.fail_master", new_master_uuid)

    def set_plugin_delay(self, host_uuid, seconds):
        """host.call_plugin on that host waits ``seconds`` before running the plugin (0: none)."""
        return self.call("sim.set_plugin_delay", host_uuid, seconds)

    def get_host(self, host_uuid):
        return self.call("sim.get_host", host_uuid)

    def get_pool(self):
        return self.call("sim.get_pool")

    def vm_other_config(self, vm_uuid):
        return self.get_vm(vm_uuid)["other_config"]

    def host_other_config(self, host_uuid):
        return self.get_host(host_uuid)["other_config"]

    def pool_other_config(self):
        return self.get_pool()["other_config"]

    def set_other_config_key(self, cls, obj_uuid, key, value):
        """Set one other_config key of a "VM", "host" or the "pool" (``obj_uuid`` None), or
        remove it with ``value`` None, without an XAPI call (no call log entry, no fault).
        Returns the resulting map."""
        return self.call("sim.set_other_config_key", cls, obj_uuid, key, value)

    def stats(self):
        return self.call("sim.stats")

    def save_state(self, name):
        """Keeps a copy of the pool, hosts and VMs (records, maps, power states) under ``name``."""
        return self.call("sim.save_state", name)

    def restore_state(self, name):
        """Puts back what ``save_state(name)`` kept, and clears faults and the call log."""
        return self.call("sim.restore_state", name)

    def wait_idle(self, timeout=30.0):
        """Waits until no XAPI call is running (a delayed call a client gave up on has landed).
        True when idle, False after ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            if self.stats()["in_flight"] == 0:
                return True
            if time.time() >= deadline:
                return False
            time.sleep(0.05)

"""Fixtures of the black-box suite of `vgpu-admin` (SPEC §2, §3), run against the XAPI simulator.

The binary is `$VGPU_ADMIN_BIN`, else `<repo>/target/debug/vgpu-admin` (build it with
`cargo build -p vgpu-admin`). One simulator (sample pool, unix socket) serves the whole session;
it is reset before every test. Every test gets its own registry file and a nonexistent config.
"""

import collections
import json
import os
import sqlite3
import subprocess
import sys

import pytest

CLI_DIR = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(CLI_DIR)
REPO_DIR = os.path.dirname(TESTS_DIR)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from xapi_sim.harness import Simulator, XapiFault  # noqa: E402,F401
from xapi_sim.records import make_ref  # noqa: E402,F401

# ------------------------------------------------------------------------------------------------
# The sample pool (tests/xapi_sim/fixtures/sample_pool.json), as the README documents it. The
# uuids are read from the fixture by name-label (and power state, for the two VMs named "twin").


def fixture_uuid(fixture, name_label, kind="vms", power_state=None):
    """The uuid of the one object of ``kind`` named ``name_label`` in ``fixture``."""
    with open(os.path.join(TESTS_DIR, "xapi_sim", "fixtures", fixture)) as f:
        objects = json.load(f)[kind]
    found = [o["uuid"] for o in objects if o["name_label"] == name_label
             and (power_state is None or o.get("power_state") == power_state)]
    assert len(found) == 1, "%s: %d %s named %r" % (fixture, len(found), kind, name_label)
    return found[0]


def _sample(name_label, power_state=None):
    return fixture_uuid("sample_pool.json", name_label, power_state=power_state)


CUDA_DEV = _sample("cuda-dev")
RENDER_01 = _sample("render-01")
RENDER_02 = _sample("render-02")
ML_TRAIN_A = _sample("ml-train-a")
ML_TRAIN_B = _sample("ml-train-b")
DB_PRIMARY = _sample("db-primary")
WEB_01 = _sample("web 01")
LEGACY_STUB = _sample("legacy-stub")
TWIN_RUNNING = _sample("twin", "Running")
TWIN_HALTED = _sample("twin", "Halted")
DOM0_01 = _sample("Control domain on host: xcp-lab-01")
DOM0_02 = _sample("Control domain on host: xcp-lab-02")
TEMPLATE_UBUNTU = _sample("Ubuntu Jammy Jellyfish 22.04")
TEMPLATE_OTHER = _sample("Other install media")
SNAPSHOT = _sample("cuda-dev before driver upgrade")

# The 10 real VMs: uuid -> (name-label, power state)
REAL_VMS = {
    CUDA_DEV: ("cuda-dev", "Running"),
    RENDER_01: ("render-01", "Running"),
    RENDER_02: ("render-02", "Running"),
    ML_TRAIN_A: ("ml-train-a", "Running"),
    ML_TRAIN_B: ("ml-train-b", "Halted"),
    DB_PRIMARY: ("db-primary", "Paused"),
    WEB_01: ("web 01", "Suspended"),
    LEGACY_STUB: ("legacy-stub", "Halted"),
    TWIN_RUNNING: ("twin", "Running"),
    TWIN_HALTED: ("twin", "Halted"),
}
NOT_REAL_VMS = [DOM0_01, DOM0_02, TEMPLATE_UBUNTU, TEMPLATE_OTHER, SNAPSHOT]

CUDA_DEV_DMA = "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"
ML_TRAIN_A_DMA = "-global PIIX4_PM.disable_s3=1 -rtc base=localtime"
LEGACY_STUB_DMA = "-device vgpu-stub,pool_id=B,priority=1,vm_id=3"
DMA = "device-model-args"


def device_line(pool, priority, vm_id, extra="addr=5", device_type="vgpu-cuda"):
    """The vgpu device entry the contract says is written (SPEC §3, default config)."""
    props = ([extra] if extra else []) + ["pool_id=%s" % pool, "priority=%s" % priority, "vm_id=%d" % vm_id]
    return "-device " + ",".join([device_type] + props)


# ------------------------------------------------------------------------------------------------
# The binary and the simulator


def _binary_path():
    path = os.environ.get("VGPU_ADMIN_BIN") or os.path.join(REPO_DIR, "target", "debug", "vgpu-admin")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def binary():
    path = _binary_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.exit(
            "vgpu-admin binary not found at %s: build it with `cargo build -p vgpu-admin` in the "
            "repository root, or point VGPU_ADMIN_BIN at it" % path,
            returncode=4,
        )
    return path


@pytest.fixture(scope="session")
def sim_server():
    with Simulator(transport="unix") as sim:
        yield sim


@pytest.fixture
def sim(sim_server):
    """The session's simulator, reset to the sample pool with no faults and an empty call log."""
    sim_server.reset()
    sim_server.clear_faults()
    sim_server.clear_call_log()
    yield sim_server
    sim_server.clear_faults()


def base_env():
    """The caller's environment without anything that would point vgpu-admin elsewhere."""
    env = {}
    for k, v in os.environ.items():
        if k.startswith(("VGPU_", "XE_SIM_")) or k in ("NO_COLOR", "INSTALLATION_UUID"):
            continue
        env[k] = v
    return env


Result = collections.namedtuple("Result", "code out err")


class Cli(object):
    """Runs vgpu-admin with a per-test registry and config against the simulator."""

    def __init__(self, binary, sim, tmp_path):
        self.binary = binary
        self.sim = sim
        self.tmp = tmp_path
        self.db = str(tmp_path / "registry" / "vgpu_config.db")
        self.config = str(tmp_path / "absent-vgpu.conf")
        self.env = base_env()
        self.env.update({"VGPU_XAPI": sim.url, "VGPU_DB": self.db, "VGPU_CONFIG": self.config})

    def use_db(self, path):
        """Point this runner at another registry file."""
        self.db = str(path)
        self.env["VGPU_DB"] = self.db

    def run(self, *args, env=None, input=None, timeout=120, preexec_fn=None):
        full_env = dict(self.env)
        if env:
            for k, v in env.items():
                if v is None:
                    full_env.pop(k, None)
                else:
                    full_env[k] = v
        p = subprocess.run(
            [self.binary] + [str(a) for a in args],
            env=full_env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            preexec_fn=preexec_fn,
        )
        return Result(p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8"))

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.code == 0, "vgpu-admin %s -> %d\nstdout: %s\nstderr: %s" % (args, r.code, r.out, r.err)
        return r

    def run_json(self, *args, **kw):
        """`--format json`, exit 0 expected: the parsed stdout document."""
        r = self.ok(*(args + ("--format", "json")), **kw)
        return json.loads(r.out)

    def json_error(self, *args, expect_code=None, **kw):
        """`--format json`, failure expected: (exit status, the `error` object from stderr)."""
        r = self.run(*(args + ("--format", "json")), **kw)
        assert r.code != 0, "expected a failure: %s\nstdout: %s" % (args, r.out)
        err = parse_error_doc(r.err)
        if expect_code is not None:
            assert err["code"] == expect_code, r.err
        return r.code, err

    # the registry, read directly

    def dump(self):
        return dump_db(self.db)

    def register(self, uuid, pool, priority, vm_id=None, *extra):
        args = ["register-vm", "--vm-uuid", uuid, "--pool", pool, "--priority", priority]
        if vm_id is not None:
            args += ["--vm-id", str(vm_id)]
        return self.run_json(*(tuple(args) + extra))

    def platform(self, uuid):
        return dict(self.sim.get_vm(uuid)["platform"])

    def dma(self, uuid):
        return self.platform(uuid).get(DMA)


def parse_error_doc(stderr):
    """The one JSON error document on stderr: {"error": {"code", "message", "details"}}."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert lines, "no error document on stderr"
    doc = json.loads(lines[-1])
    assert set(doc) == {"error"}, doc
    assert set(doc["error"]) == {"code", "message", "details"}, doc
    return doc["error"]


def dump_db(path, table="vms", order="vm_uuid"):
    """Every row of a table (all columns), or None when the file does not exist."""
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute("SELECT * FROM %s ORDER BY %s" % (table, order)).fetchall()
    finally:
        conn.close()


def strip_timestamps(dump):
    """A vms dump (current schema) without created_at / updated_at, for comparing separate runs."""
    return None if dump is None else [tuple(r[:5]) + tuple(r[7:]) for r in dump]


def column_names(path, table="vms"):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(%s)" % table)]
    finally:
        conn.close()


@pytest.fixture
def cli(binary, sim, tmp_path):
    return Cli(binary, sim, tmp_path)


def platforms(sim, extra_uuids=()):
    """uuid -> platform map of every fixture VM (through sim.get_vm: not in the call log)."""
    out = {}
    for u in list(REAL_VMS) + NOT_REAL_VMS + list(extra_uuids):
        out[u] = dict(sim.get_vm(u)["platform"])
    return out


def rust_debug(s):
    """How the product quotes a bad value in its messages (Rust's `{:?}` of a str)."""
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\0":
            out.append("\\0")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\u{%x}" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)

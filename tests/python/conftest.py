"""pytest fixtures of the vgpu_registry package suite; the helpers are in pkg_support.py
(imported by the test modules, so the name never clashes with another suite's conftest)."""

import os

import pytest

from pkg_support import MINORS, Venv, admin_binary, read_table
from xapi_sim.harness import Simulator


@pytest.fixture(scope="session")
def table():
    """The core's tables: ``{"functions": [...], "error_codes": [...]}``."""
    return read_table(admin_binary())


@pytest.fixture(scope="session")
def venv_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("venvs"))


_VENVS = {}


@pytest.fixture(params=MINORS, ids=lambda minor: "py" + minor)
def pkg(request, venv_root):
    """A venv of one interpreter under test with the wheel installed (one per session)."""
    minor = request.param
    if minor not in _VENVS:
        _VENVS[minor] = Venv.create(minor, venv_root)
    return _VENVS[minor]


@pytest.fixture(scope="session")
def sim_server():
    with Simulator(transport="unix") as sim:
        yield sim


class Pool(object):
    """The sample pool, reset, with a fresh registry; ``env`` points the core at both."""

    def __init__(self, sim, workdir):
        self.sim = sim
        self.workdir = workdir
        self.db = os.path.join(workdir, "registry.db")
        self.env = {
            "VGPU_XAPI": sim.url,
            "VGPU_DB": self.db,
            "VGPU_CONFIG": os.path.join(workdir, "absent.conf"),  # absent: the defaults
        }

    def uuid(self, name_label):
        """The uuid of the one fixture VM named ``name_label``."""
        return self.sim.vm_uuid(name_label)

    def dma(self, name_label):
        """The device-model-args XAPI holds for a fixture VM."""
        return self.sim.get_vm(self.uuid(name_label))["platform"].get("device-model-args")


@pytest.fixture
def pool(sim_server, tmp_path):
    sim_server.reset()
    sim_server.clear_faults()
    yield Pool(sim_server, str(tmp_path))
    sim_server.clear_faults()

"""pytest fixtures of the xapi plugin suite; the helpers and the variant matrix are in
plugin_support.py (imported by the test modules, so the name never clashes with another suite's
conftest)."""

import os

import pytest

from plugin_support import ALLOW_MISSING, MISSING, VARIANTS, Dom0Python, Pool, admin_binary, get_simulator


def pytest_terminal_summary(terminalreporter):
    if not MISSING:
        return
    title = "plugin variants NOT tested" + (
        " (skipped: VGPU_ALLOW_MISSING_INTERPRETERS=1)" if ALLOW_MISSING else ": their tests FAILED")
    terminalreporter.section(title, sep="!", red=True, bold=True)
    for what, why in sorted(MISSING.items()):
        terminalreporter.write_line("MISSING: %s (%s)" % (what, why), red=True, bold=True)


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("plugin-suite"))


@pytest.fixture(scope="session")
def admin():
    path = admin_binary()
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: build it with `cargo build -p vgpu-admin` (or set VGPU_ADMIN_BIN)" % path)
    return path


@pytest.fixture(params=VARIANTS, ids=lambda v: v.name)
def variant(request, tmp_root):
    return request.param.resolve(tmp_root)


@pytest.fixture(scope="session")
def simulators():
    sims = {}
    yield sims
    for sim in sims.values():
        sim.stop()


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def pool(simulators, variant, admin, workdir):
    """The sample pool (2 hosts) with the plugin running as ``variant``."""
    p = Pool(get_simulator(simulators, "sample_pool"), variant, admin, workdir)
    yield p
    p.close()


@pytest.fixture(params=[v for v in VARIANTS if v.backend == "native"], ids=lambda v: v.name)
def native_variant(request, tmp_root):
    return request.param.resolve(tmp_root)


@pytest.fixture
def native_pool(simulators, native_variant, admin, workdir):
    """The sample pool with the plugin on a native variant only."""
    p = Pool(get_simulator(simulators, "sample_pool"), native_variant, admin, workdir)
    yield p
    p.close()


@pytest.fixture
def pool3(simulators, variant, admin, workdir):
    """The three-host pool with the plugin running as ``variant``."""
    p = Pool(get_simulator(simulators, "three_host_pool"), variant, admin, workdir)
    yield p
    p.close()


@pytest.fixture(params=["2.7", "3.6", "modern"], ids=lambda p: "py" + p)
def dom0(request, tmp_root):
    """Each dom0 interpreter, for running the plugin file directly."""
    return Dom0Python(request.param).resolve(tmp_root)


@pytest.fixture(params=["3.6", "modern"], ids=lambda p: "py" + p)
def dom0_py3(request, tmp_root):
    """The dom0 interpreters that run the native path."""
    return Dom0Python(request.param).resolve(tmp_root)

"""pytest fixtures of the RPM suite; the helpers are in rpm_support.py (imported by the test modules,
so the name never clashes with another suite's conftest)."""

import os

import pytest

from rpm_support import IN_CI, MISSING, SHIPPED_CONF, Root, build_release, release_1_package


def pytest_terminal_summary(terminalreporter):
    if not MISSING:
        return
    title = "RPM tests NOT run" + (": their tests FAILED (CI=true)" if IN_CI else " (skipped)")
    terminalreporter.section(title, sep="!", red=True, bold=True)
    for what, why in sorted(MISSING.items()):
        terminalreporter.write_line("MISSING: %s (%s)" % (what, why), red=True, bold=True)


@pytest.fixture(scope="session")
def package():
    """Release 1, as `make rpm` built it."""
    return release_1_package()


@pytest.fixture(scope="session")
def package_2(package, tmp_path_factory):
    """Release 2 of the same version, from the same artefacts."""
    return build_release(2, str(tmp_path_factory.mktemp("release-2")))


@pytest.fixture(scope="session")
def changed_conf(tmp_path_factory):
    """A vgpu.conf that differs from packaging/vgpu.conf, as a later release might ship."""
    with open(SHIPPED_CONF) as f:
        text = f.read()
    path = tmp_path_factory.mktemp("release-3-conf") / "vgpu.conf"
    path.write_text(text + "\n# a comment added in release 3\n")
    return str(path)


@pytest.fixture(scope="session")
def package_3(package, changed_conf, tmp_path_factory):
    """Release 3, whose shipped vgpu.conf changed."""
    return build_release(3, str(tmp_path_factory.mktemp("release-3")), conf=changed_conf)


@pytest.fixture
def root(tmp_path):
    """An empty scratch root with its own rpm database."""
    return Root(os.path.join(str(tmp_path), "root")).create()


@pytest.fixture(scope="module")
def installed_root(package, tmp_path_factory):
    """A scratch root with release 1 installed, shared by a module's tests."""
    r = Root(os.path.join(str(tmp_path_factory.mktemp("installed")), "root")).create()
    r.install(package)
    return r

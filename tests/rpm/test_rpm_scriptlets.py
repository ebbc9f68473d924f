"""The package's scriptlets run (SPEC section 9: the refresh units are enabled by the package), in
scratch roots: with no systemctl at all and no systemd running (a chroot), every install, upgrade
and erase succeeds; this host's systemctl, working offline as in a dom0 image being built, enables
the units on install and on an upgrade from a release without them, keeps an administrator's
`disable` across an upgrade and disables them on erase; with systemd running (a stand-in systemctl
that logs its arguments), the timer is started on install, restarted on upgrade and stopped on
erase; and a systemctl that fails every time fails nothing. Nothing here runs `vgpu-admin refresh`."""

import os

from rpm_support import (NAME, REFRESH_SERVICE, REFRESH_SERVICE_NAME, REFRESH_TIMER, REFRESH_TIMER_NAME, VERSION,
                         run)

RPM_STATE = "/var/lib/rpm-state/vgpu-registry"
WANTS = {REFRESH_SERVICE_NAME: ("/etc/systemd/system/multi-user.target.wants", REFRESH_SERVICE),
         REFRESH_TIMER_NAME: ("/etc/systemd/system/timers.target.wants", REFRESH_TIMER)}
CALLS = "/var/log/systemctl-calls"
# A systemctl that records its arguments, one call a line, and exits with the given status.
STAND_IN = '#!/bin/sh\necho "$*" >> %s\nexit %%d\n' % CALLS
SERVICE, TIMER = REFRESH_SERVICE_NAME, REFRESH_TIMER_NAME


def step(root, *args):
    """``rpm ARGS`` in the root; fails unless rpm succeeded with every scriptlet succeeding."""
    status, out, err = root.rpm(*args, check=False)
    assert status == 0 and "scriptlet failed" not in out + err, "rpm %s:\n%s\n%s" % (" ".join(args), out, err)
    return out + err


def install(root, package, *flags):
    return step(root, "-ivh", "--nodeps", *(flags + (package,)))


def upgrade(root, package):
    return step(root, "-Uvh", "--nodeps", package)


def erase(root):
    return step(root, "-e", NAME)


def enabled(root):
    """{unit: where its enablement link points} for the units linked into their targets' .wants."""
    out = {}
    for unit, (wants, _) in WANTS.items():
        link = root.at(wants + "/" + unit)
        if os.path.lexists(link):
            out[unit] = os.readlink(link)
    return out


def all_enabled():
    return {unit: target for unit, (_, target) in WANTS.items()}


def with_systemctl(root):
    """This host's systemctl in the root: in a chroot it enables and disables offline (links)."""
    root.add_program("systemctl", "/usr/bin/systemctl")
    return root


def with_running_systemd(root, status=0):
    """A root whose systemd is running (the directory systemd creates at boot) and whose systemctl is
    the logging stand-in, exiting with ``status``."""
    os.makedirs(root.at("/run/systemd/system"))
    os.makedirs(root.at(os.path.dirname(CALLS)), exist_ok=True)
    root.write("/usr/bin/systemctl", STAND_IN % status, mode=0o755)
    return root


def calls(root):
    """The stand-in's calls since the last look."""
    path = root.at(CALLS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    os.unlink(path)
    return lines


def test_without_systemctl_or_a_running_systemd_every_step_succeeds(root, package, package_2):
    assert not os.path.exists(root.at("/usr/bin/systemctl")) and not os.path.exists(root.at("/run/systemd"))
    install(root, package)
    assert root.installed() == "%s-%s-1" % (NAME, VERSION)
    for path in (REFRESH_SERVICE, REFRESH_TIMER):
        assert root.mode(path) == 0o644, path
    assert not os.path.exists(root.at(RPM_STATE)), "the mark of %pre outlived the install"
    assert enabled(root) == {}
    upgrade(root, package_2)
    assert root.installed() == "%s-%s-2" % (NAME, VERSION)
    assert not os.path.exists(root.at(RPM_STATE))
    erase(root)
    assert root.installed() is None
    for path in (REFRESH_SERVICE, REFRESH_TIMER):
        assert not os.path.exists(root.at(path)), path


def test_install_enables_the_units_and_erase_disables_them(root, package):
    with_systemctl(root)
    assert enabled(root) == {}
    install(root, package)
    assert enabled(root) == all_enabled()
    assert not os.path.exists(root.at(RPM_STATE))
    erase(root)
    assert enabled(root) == {}
    assert root.installed() is None


def test_an_upgrade_keeps_the_administrators_choice(root, package, package_2):
    with_systemctl(root)
    install(root, package)
    # The administrator turns the periodic refresh off (this host's systemctl, on the root).
    run(["systemctl", "--root", root.path, "disable", TIMER])
    assert enabled(root) == {SERVICE: REFRESH_SERVICE}
    upgrade(root, package_2)
    assert root.installed() == "%s-%s-2" % (NAME, VERSION)
    assert enabled(root) == {SERVICE: REFRESH_SERVICE}, "the upgrade enabled the timer again"
    erase(root)
    assert enabled(root) == {}


def test_an_upgrade_from_a_release_without_the_units_enables_them(root, package, package_2):
    """Such a host: release 1's files but the units, and none of its scriptlets run (those of a release
    without units have nothing to do with them)."""
    with_systemctl(root)
    install(root, package, "--noscripts", "--excludepath", os.path.dirname(REFRESH_SERVICE))
    assert not os.path.exists(root.at(REFRESH_TIMER)) and enabled(root) == {}
    upgrade(root, package_2)
    assert root.mode(REFRESH_TIMER) == 0o644
    assert enabled(root) == all_enabled()
    assert not os.path.exists(root.at(RPM_STATE))


def test_with_systemd_running_the_timer_starts_restarts_and_stops(root, package, package_2):
    with_running_systemd(root)
    install(root, package)
    assert calls(root) == ["enable %s %s" % (SERVICE, TIMER), "start %s" % TIMER]
    upgrade(root, package_2)
    # Release 2's %post leaves the enabled units alone; release 1's %postun reloads and restarts.
    assert calls(root) == ["daemon-reload", "try-restart %s" % TIMER]
    erase(root)
    assert calls(root) == ["stop %s %s" % (TIMER, SERVICE), "--no-reload disable %s %s" % (TIMER, SERVICE),
                           "daemon-reload"]
    assert root.installed() is None


def test_a_failing_systemctl_fails_no_install_upgrade_or_erase(root, package, package_2):
    with_running_systemd(root, status=1)
    install(root, package)
    assert len(calls(root)) == 2 and root.installed() == "%s-%s-1" % (NAME, VERSION)
    assert not os.path.exists(root.at(RPM_STATE))
    upgrade(root, package_2)
    assert len(calls(root)) == 2 and root.installed() == "%s-%s-2" % (NAME, VERSION)
    erase(root)
    assert len(calls(root)) == 3 and root.installed() is None

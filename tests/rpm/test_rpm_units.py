"""The systemd units the package installs (SPEC section 9: every host refreshes its replica of the
registry at boot and periodically, unattended), read from the package as it ships them:
vgpu-registry-refresh.service runs the packaged vgpu-admin's `refresh` once xapi is up, and at
boot; vgpu-registry-refresh.timer runs it 2 minutes after boot and every 5 minutes; both use only
what systemd 219 (XCP-ng 8.x, CentOS 7 based) reads, and this host's systemd-analyze, where there is
one, finds nothing to say about them. Nothing here runs `vgpu-admin refresh`."""

import os
import re
import shlex
import shutil

import pytest

from rpm_support import (BIN, CONF_DIR, IN_CI, MAN_DIR, MISSING, REFRESH_SERVICE, REFRESH_SERVICE_NAME,
                         REFRESH_TIMER, REFRESH_TIMER_NAME, REPO_DIR, SPEC, UNIT_DIR, UnitSyntaxError,
                         file_list, parse_unit, payload, run, unit_value, unit_values)

# The options systemd 219 reads in the sections these units use: upstream v219's
# src/core/load-fragment-gperf.gperf.m4 (the [Service] list includes the execution, kill and
# cgroup options every service takes), less what later releases added. CentOS 7's systemd-219
# (XCP-ng 8.x ships a rebuild of it) backports some later options, RandomizedDelaySec= among them;
# those are left out here, so the units read the same on upstream 219. An option missing from this
# list would only be warned about and ignored by systemd: on XCP-ng 8.x that would silently drop it.
SYSTEMD_219_OPTIONS = {
    "Unit": {
        "Description", "Documentation", "SourcePath", "Requires", "RequiresOverridable", "Requisite",
        "RequisiteOverridable", "Wants", "BindsTo", "BindTo", "Conflicts", "Before", "After", "OnFailure",
        "PropagatesReloadTo", "PropagateReloadTo", "ReloadPropagatedFrom", "PropagateReloadFrom", "PartOf",
        "JoinsNamespaceOf", "RequiresMountsFor", "StopWhenUnneeded", "RefuseManualStart", "RefuseManualStop",
        "AllowIsolate", "DefaultDependencies", "OnFailureJobMode", "OnFailureIsolate", "IgnoreOnIsolate",
        "IgnoreOnSnapshot", "JobTimeoutSec", "JobTimeoutAction", "JobTimeoutRebootArgument",
        "ConditionPathExists", "ConditionPathExistsGlob", "ConditionPathIsDirectory",
        "ConditionPathIsSymbolicLink", "ConditionPathIsMountPoint", "ConditionPathIsReadWrite",
        "ConditionDirectoryNotEmpty", "ConditionFileNotEmpty", "ConditionFileIsExecutable",
        "ConditionNeedsUpdate", "ConditionFirstBoot", "ConditionKernelCommandLine", "ConditionArchitecture",
        "ConditionVirtualization", "ConditionSecurity", "ConditionCapability", "ConditionHost",
        "ConditionACPower", "ConditionNull", "AssertPathExists", "AssertPathIsDirectory",
        "AssertFileIsExecutable", "AssertNull",
    },
    "Service": {
        # The service's own.
        "PIDFile", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost",
        "RestartSec", "TimeoutSec", "TimeoutStartSec", "TimeoutStopSec", "WatchdogSec", "StartLimitInterval",
        "StartLimitBurst", "StartLimitAction", "RebootArgument", "FailureAction", "Type", "Restart",
        "PermissionsStartOnly", "RootDirectoryStartOnly", "RemainAfterExit", "GuessMainPID",
        "RestartPreventExitStatus", "RestartForceExitStatus", "SuccessExitStatus", "NonBlocking", "BusName",
        "FileDescriptorStoreMax", "NotifyAccess", "Sockets",
        # Execution.
        "WorkingDirectory", "RootDirectory", "User", "Group", "SupplementaryGroups", "Nice", "OOMScoreAdjust",
        "IOSchedulingClass", "IOSchedulingPriority", "CPUSchedulingPolicy", "CPUSchedulingPriority",
        "CPUSchedulingResetOnFork", "CPUAffinity", "UMask", "Environment", "EnvironmentFile", "StandardInput",
        "StandardOutput", "StandardError", "TTYPath", "TTYReset", "TTYVHangup", "TTYVTDisallocate",
        "SyslogIdentifier", "SyslogFacility", "SyslogLevel", "SyslogLevelPrefix", "Capabilities", "SecureBits",
        "CapabilityBoundingSet", "TimerSlackNSec", "NoNewPrivileges", "SystemCallFilter",
        "SystemCallArchitectures", "SystemCallErrorNumber", "RestrictAddressFamilies", "LimitCPU", "LimitFSIZE",
        "LimitDATA", "LimitSTACK", "LimitCORE", "LimitRSS", "LimitNOFILE", "LimitAS", "LimitNPROC",
        "LimitMEMLOCK", "LimitLOCKS", "LimitSIGPENDING", "LimitMSGQUEUE", "LimitNICE", "LimitRTPRIO",
        "LimitRTTIME", "ReadWriteDirectories", "ReadOnlyDirectories", "InaccessibleDirectories", "PrivateTmp",
        "PrivateNetwork", "PrivateDevices", "ProtectSystem", "ProtectHome", "MountFlags", "Personality",
        "RuntimeDirectoryMode", "RuntimeDirectory", "PAMName", "IgnoreSIGPIPE", "UtmpIdentifier",
        "SELinuxContext", "AppArmorProfile", "SmackProcessLabel",
        # Kill.
        "SendSIGKILL", "SendSIGHUP", "KillMode", "KillSignal",
        # Cgroup.
        "Slice", "CPUAccounting", "CPUShares", "StartupCPUShares", "CPUQuota", "MemoryAccounting", "MemoryLimit",
        "DeviceAllow", "DevicePolicy", "BlockIOAccounting", "BlockIOWeight", "StartupBlockIOWeight",
        "BlockIODeviceWeight", "BlockIOReadBandwidth", "BlockIOWriteBandwidth", "Delegate",
    },
    "Timer": {
        "OnCalendar", "OnActiveSec", "OnBootSec", "OnStartupSec", "OnUnitActiveSec", "OnUnitInactiveSec",
        "Persistent", "WakeSystem", "AccuracySec", "Unit",
    },
    "Install": {"Alias", "WantedBy", "RequiredBy", "Also", "DefaultInstance"},
}
# What each kind of unit may contain.
SECTIONS = {"service": {"Unit", "Service", "Install"}, "timer": {"Unit", "Timer", "Install"}}
# Hardening options that would keep the refresh from writing /etc/vgpu or reaching xapi (its unix
# socket under /var/lib/xcp, or an http(s) endpoint), with the values that would.
BREAKING = {"ProtectSystem": {"full", "strict"}, "PrivateNetwork": {"yes", "true", "on", "1"},
            "ReadOnlyDirectories": None, "InaccessibleDirectories": None, "RootDirectory": None,
            "RestrictAddressFamilies": None, "User": None, "DynamicUser": None}
# systemd.time(7) time spans of the units of systemd 219: a number and a unit, repeated.
TIME_SPAN = re.compile(r"^(\s*\d+\s*(usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|"
                       r"days|day|d|weeks|week|w|months|month|M|years|year|y)?)+\s*$")


@pytest.fixture(scope="module")
def contents(package):
    return payload(package)


@pytest.fixture(scope="module")
def service(contents):
    return parse_unit(contents[REFRESH_SERVICE].decode("utf-8"), REFRESH_SERVICE_NAME)


@pytest.fixture(scope="module")
def timer(contents):
    return parse_unit(contents[REFRESH_TIMER].decode("utf-8"), REFRESH_TIMER_NAME)


def spec_text():
    with open(SPEC) as f:
        return f.read()


def spec_globals(text):
    return dict(re.findall(r"^%global\s+(\w+)\s+(\S+)\s*$", text, re.M))


def expand(value, macros):
    for _ in range(10):
        value = re.sub(r"%\{(\w+)\}", lambda m: macros.get(m.group(1), m.group(0)), value)
    return value


def spec_install_destination(source_file):
    """Where the spec's %install puts the Source file named ``source_file``."""
    text = spec_text()
    numbers = [n for n, f in re.findall(r"^Source(\d+):\s*(\S+)\s*$", text, re.M) if f == source_file]
    assert len(numbers) == 1, "the spec names %s as a Source %d times" % (source_file, len(numbers))
    installs = re.findall(r"^install\b.*%%\{SOURCE%s\}\s+%%\{buildroot\}(\S+)\s*$" % numbers[0], text, re.M)
    assert len(installs) == 1, "the spec installs Source%s %d times" % (numbers[0], len(installs))
    return expand(installs[0], spec_globals(text))


# ------------------------------------------------------------------------------------------------
# The parser reads what systemd reads (a test of the test's own reader, so its answers are worth
# something)


def test_the_unit_reader_reads_systemd_syntax_and_refuses_the_rest():
    unit = parse_unit("# a comment\n; another\n[Unit]\nAfter=a.target \\\n  b.service\nAfter=c.target\n"
                      "\n[Service]\nExecStart = /usr/bin/x  y\n")
    assert unit == {"Unit": [("After", "a.target  b.service"), ("After", "c.target")],
                    "Service": [("ExecStart", "/usr/bin/x  y")]}
    assert unit_values(unit, "Unit", "After") == ["a.target", "b.service", "c.target"]
    assert unit_value(unit, "Service", "ExecStart") == "/usr/bin/x  y"
    for bad in ("Type=oneshot\n", "[Service]\nType oneshot\n", "[Service]\n[Service]\n", "[Service]\nA=b \\\n"):
        with pytest.raises(UnitSyntaxError):
            parse_unit(bad)


# ------------------------------------------------------------------------------------------------
# What the package holds


def test_the_units_are_in_the_package_0644_where_systemd_looks(package, contents):
    files = file_list(package)
    for path in (REFRESH_SERVICE, REFRESH_TIMER):
        f = files[path]
        assert (f.perms, f.user, f.group, f.is_dir) == (0o644, "root", "root", False), f
        assert "c" not in f.flags, "%s is the package's, not a config file (an override goes in /etc)" % path
    assert UNIT_DIR == "/usr/lib/systemd/system"
    assert sorted(p for p in files if p.startswith("/usr/lib/systemd/")) == sorted([REFRESH_SERVICE, REFRESH_TIMER])
    for name in (REFRESH_SERVICE_NAME, REFRESH_TIMER_NAME):
        with open(os.path.join(REPO_DIR, "packaging", name), "rb") as f:
            assert contents[UNIT_DIR + "/" + name] == f.read(), name


def test_the_units_read_cleanly_and_hold_only_their_sections(service, timer):
    assert set(service) == SECTIONS["service"]
    assert set(timer) == SECTIONS["timer"]
    for unit in (service, timer):
        for section, assignments in unit.items():
            keys = [k for k, _ in assignments]
            repeatable = {"After", "Wants", "Documentation", "WantedBy", "ExecStartPre"}
            assert [k for k in set(keys) if keys.count(k) > 1 and k not in repeatable] == [], assignments


# ------------------------------------------------------------------------------------------------
# The service


def test_the_service_runs_the_packaged_vgpu_admin_refresh_without_a_shell(service, package):
    exec_start = unit_value(service, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv == [BIN, "refresh", "--reload"], exec_start
    # The binary is where the spec installs vgpu-admin, and the package holds it there, executable.
    assert spec_install_destination("vgpu-admin") == argv[0] == "/usr/bin/vgpu-admin"
    f = file_list(package)[argv[0]]
    assert f.perms == 0o755 and not f.is_dir, f
    # No shell, no prefix (-, @, +, !) that would hide a failure or change how it runs.
    assert not re.search(r"[;&|`$<>]", exec_start), exec_start
    assert exec_start[0] == "/", exec_start
    assert unit_value(service, "Service", "Type") == "oneshot"
    # A oneshot the timer starts again must end each time: no RemainAfterExit=yes.
    assert unit_values(service, "Service", "RemainAfterExit") in ([], ["no"], ["false"])


def test_the_service_starts_once_xapi_is_up_and_at_boot(service):
    after = unit_values(service, "Unit", "After")
    wants = unit_values(service, "Unit", "Wants")
    assert "xapi-init-complete.target" in after and "xapi-init-complete.target" in wants
    assert "xapi.service" in after
    # Wants=, not Requires=/BindsTo=: if xapi's start fails, the timer still gets its chance.
    for strong in ("Requires", "Requisite", "BindsTo", "BindTo"):
        assert unit_values(service, "Unit", strong) == [], strong
    assert unit_values(service, "Install", "WantedBy") == ["multi-user.target"]
    # Default dependencies kept: ordered after basic.target, stopped before shutdown.
    assert unit_values(service, "Unit", "DefaultDependencies") in ([], ["yes"], ["true"])
    timeout = unit_value(service, "Service", "TimeoutStartSec")
    assert TIME_SPAN.match(timeout) and timeout not in ("0", "infinity"), timeout


def test_the_service_hardening_leaves_etc_vgpu_writable_and_xapi_reachable(service):
    options = dict(service["Service"])
    for key, values in BREAKING.items():
        if key in options:
            assert values is not None and options[key] not in values, "%s=%s" % (key, options[key])
    # What the service does use: each of these leaves /etc and /var/lib/xcp as they are.
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome"):
        assert options.get(key) == "yes", key
    assert options.get("ProtectSystem") in (None, "yes"), "ProtectSystem=full or strict: %s read-only" % CONF_DIR


def test_the_documentation_the_units_name_is_in_the_package(service, timer, package):
    files = file_list(package)
    for unit in (service, timer):
        docs = unit_values(unit, "Unit", "Documentation")
        assert docs, "no Documentation="
        for doc in docs:
            m = re.match(r"^man:([\w.-]+)\((\d)\)$", doc)
            assert m, doc
            assert "%s/man%s/%s.%s.gz" % (MAN_DIR, m.group(2), m.group(1), m.group(2)) in files, doc


# ------------------------------------------------------------------------------------------------
# The timer


def test_the_timer_runs_the_service_after_boot_and_every_5_minutes(timer):
    assert unit_value(timer, "Timer", "Unit") == REFRESH_SERVICE_NAME
    assert unit_value(timer, "Timer", "OnBootSec") == "2min"
    assert unit_value(timer, "Timer", "OnUnitActiveSec") == "5min"
    # Monotonic only: nothing to catch up on after downtime (the boot run does that).
    assert unit_values(timer, "Timer", "OnCalendar") == [] and unit_values(timer, "Timer", "Persistent") == []
    assert unit_values(timer, "Install", "WantedBy") == ["timers.target"]


# ------------------------------------------------------------------------------------------------
# systemd 219 reads them


def analyze_verify(directory, names):
    """(exit status, everything systemd-analyze verify said) for the units in ``directory``."""
    status, out, err = run(["systemd-analyze", "verify", "--man=no"] + [os.path.join(directory, n) for n in names],
                           check=False, cwd=directory)
    return status, (out + err).strip()


def test_every_option_is_one_systemd_219_knows_and_systemd_analyze_agrees(service, timer, contents, tmp_path):
    kinds = ((service, "service"), (timer, "timer"))
    for unit, kind in kinds:
        for section in unit:
            assert section in SECTIONS[kind], section
            unknown = sorted({k for k, _ in unit[section]} - SYSTEMD_219_OPTIONS[section])
            assert unknown == [], "[%s] of the %s: systemd 219 does not know %s" % (section, kind, unknown)
    for unit, section, key in ((service, "Service", "TimeoutStartSec"), (timer, "Timer", "OnBootSec"),
                               (timer, "Timer", "OnUnitActiveSec")):
        assert TIME_SPAN.match(unit_value(unit, section, key)), (key, unit_value(unit, section, key))

    # This host's systemd checks the units as they ship, the packaged vgpu-admin standing at the path
    # ExecStart names (systemd-analyze wants it there and executable). It is newer than 219, so it
    # checks syntax and values, the list above the version. Without it, what is above stands alone,
    # and the run's summary says so.
    if not shutil.which("systemd-analyze"):
        if IN_CI:
            pytest.fail("systemd-analyze is missing (CI=true: its check is never left out)", pytrace=False)
        MISSING["systemd-analyze verify of the units"] = "systemd-analyze is not installed here"
        return
    admin = tmp_path / "bin" / "vgpu-admin"
    admin.parent.mkdir()
    admin.write_bytes(contents[BIN])
    admin.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    names = [REFRESH_SERVICE_NAME, REFRESH_TIMER_NAME]
    for name in names:
        text = contents[UNIT_DIR + "/" + name].decode("utf-8")
        assert name.endswith(".timer") or text.count("ExecStart=%s " % BIN) == 1
        (units / name).write_text(text.replace("ExecStart=%s " % BIN, "ExecStart=%s " % admin))
    status, said = analyze_verify(str(units), names)
    assert (status, said) == (0, ""), said
    # The same check finds a fault in units like these: an unknown option, a bad time span.
    service_text = (units / REFRESH_SERVICE_NAME).read_text()
    (units / REFRESH_SERVICE_NAME).write_text(service_text.replace("[Service]\n", "[Service]\nNoSuchOption=1\n"))
    status, said = analyze_verify(str(units), names)
    assert "NoSuchOption" in said, said
    (units / REFRESH_SERVICE_NAME).write_text(service_text)
    timer_text = (units / REFRESH_TIMER_NAME).read_text()
    (units / REFRESH_TIMER_NAME).write_text(timer_text.replace("OnBootSec=2min", "OnBootSec=2mn"))
    status, said = analyze_verify(str(units), names)
    assert "2mn" in said, said

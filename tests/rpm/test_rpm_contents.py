"""The built package, queried without installing it (SPEC section 7): name, version and release;
a payload rpm 4.11 reads; the file list with modes, owners and flags; the registry not in it; its
dependencies and scriptlets; every ELF file needing nothing newer than glibc 2.17; the artefacts
byte for byte; manual pages and completion; the systemd units (read in test_rpm_units.py)."""

import glob
import os
import re
import subprocess
import zipfile

import pytest

from rpm_support import (ARCH, BASH_COMPLETION, BIN, CONF, CONF_DIR, DOC_DIR, MAN_DIR, NAME, PLUGIN,
                         PLUGIN_DIR, PLUGIN_HELPER, PYTHON_DIR, REFRESH_SERVICE, REFRESH_SERVICE_NAME,
                         REFRESH_TIMER, REFRESH_TIMER_NAME, REGISTRY, REPO_DIR, SHIPPED_CONF, UNIT_DIR, VERSION,
                         file_list, gunzip, is_elf, newest_glibc, package_file_name, payload, query,
                         query_tags, requires, run, scripts)

# What rpm 4.11 (XCP-ng 8.x) provides of rpmlib() features (its lib/rpmds.c): a package needing any
# other (RichDependencies, FileTriggers, PayloadIsZstd, LargeFiles, CaretInVersions ...) does not
# install there.
RPMLIB_4_11 = {
    "BuiltinLuaScripts": "4.2.2-1",
    "CompressedFileNames": "3.0.4-1",
    "ConcurrentAccess": "4.1-1",
    "ExplicitPackageProvide": "4.0-1",
    "FileCaps": "4.6.1-1",
    "FileDigests": "4.6.0-1",
    "HeaderLoadSortsTags": "4.0.1-1",
    "PartialHardlinkSets": "4.0.4-1",
    "PayloadFilesHavePrefix": "4.0-1",
    "PayloadIsBzip2": "3.0.5-1",
    "PayloadIsLzma": "4.4.2-1",
    "PayloadIsXz": "5.2-1",
    "ScriptletExpansion": "4.9.0-1",
    "ScriptletInterpreterArgs": "4.0.3-1",
    "TildeInVersions": "4.10.0-1",
    "VersionedDependencies": "3.0.3-1",
}
# The libraries glibc 2.17 has, which an x86_64 binary may name (soname -> rpm's dependency name).
GLIBC_LIBRARIES = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                   "ld-linux-x86-64.so.2")


@pytest.fixture(scope="module")
def files(package):
    return file_list(package)


@pytest.fixture(scope="module")
def contents(package):
    return payload(package)


@pytest.fixture(scope="module")
def packaged_admin(contents, tmp_path_factory):
    """The package's vgpu-admin, written out to run it."""
    path = str(tmp_path_factory.mktemp("packaged") / "vgpu-admin")
    with open(path, "wb") as f:
        f.write(contents[BIN])
    os.chmod(path, 0o755)
    return path


def commands(admin):
    """The commands `vgpu-admin --help` lists (without `help`)."""
    out = run([admin, "--help"])[1]
    block = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    names = [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", block, re.M)]
    assert len(names) > 10, out
    return [n for n in names if n != "help"]


def the_wheel():
    wheels = glob.glob(os.path.join(REPO_DIR, "dist", "vgpu_registry-%s-*.whl" % VERSION))
    assert len(wheels) == 1, "expected one wheel of version %s in dist/: %s" % (VERSION, wheels)
    return wheels[0]


def test_name_version_and_release_are_exact(package):
    assert os.path.basename(package) == package_file_name(1) == "%s-%s-1.%s.rpm" % (NAME, VERSION, ARCH)
    tags = query_tags(package, "NAME", "VERSION", "RELEASE", "ARCH", "OS", "LICENSE", "EPOCH")
    assert tags == {"NAME": NAME, "VERSION": VERSION, "RELEASE": "1", "ARCH": ARCH, "OS": "linux",
                    "LICENSE": "MIT", "EPOCH": "(none)"}


def test_payload_is_gzip_for_rpm_4_11(package):
    tags = query_tags(package, "PAYLOADCOMPRESSOR", "PAYLOADFLAGS", "PAYLOADFORMAT")
    assert tags == {"PAYLOADCOMPRESSOR": "gzip", "PAYLOADFLAGS": "9", "PAYLOADFORMAT": "cpio"}


def test_digests_rpm_4_11_checks_are_present_and_good(package):
    """rpm 4.11 checks a package by its SHA1 header digest and its MD5 digest (the SHA256 ones are
    newer): both must be there."""
    out = run(["rpm", "-Kv", package])[1]
    for line in ("Header SHA1 digest: OK", "MD5 digest: OK"):
        assert line in out, out


def test_the_file_list_is_exactly_what_dom0_needs(files, packaged_admin):
    wheel_files = [n for n in zipfile.ZipFile(the_wheel()).namelist() if n.startswith("vgpu_registry/")]
    assert "vgpu_registry/__init__.py" in wheel_files
    man1 = ["vgpu-admin"] + ["vgpu-admin-" + c for c in commands(packaged_admin)]
    expected = {
        BIN, PLUGIN, PLUGIN_HELPER,
        "/usr/lib64/vgpu-registry", PYTHON_DIR, PYTHON_DIR + "/vgpu_registry",
        CONF_DIR, CONF,
        BASH_COMPLETION,
        DOC_DIR, DOC_DIR + "/README.md", DOC_DIR + "/LICENSE",
        MAN_DIR + "/man5/vgpu.conf.5.gz",
        REFRESH_SERVICE, REFRESH_TIMER,
    }
    expected |= {PYTHON_DIR + "/" + n for n in wheel_files}
    expected |= {"%s/man1/%s.1.gz" % (MAN_DIR, p) for p in man1}
    assert sorted(files) == sorted(expected)


def test_modes_and_owners(files):
    for path, f in files.items():
        assert (f.user, f.group) == ("root", "root"), f
    directories = {p for p, f in files.items() if f.is_dir}
    assert directories == {CONF_DIR, "/usr/lib64/vgpu-registry", PYTHON_DIR, PYTHON_DIR + "/vgpu_registry", DOC_DIR}
    special = {CONF_DIR: 0o700, CONF: 0o600, BIN: 0o755, PLUGIN: 0o755, PLUGIN_HELPER: 0o644,
               PYTHON_DIR + "/vgpu_registry/_native.abi3.so": 0o755}
    for path, f in files.items():
        want = special.get(path, 0o755 if f.is_dir else 0o644)
        assert f.perms == want, "%s: mode %04o, expected %04o" % (path, f.perms, want)


def test_the_package_owns_no_directory_other_packages_own(files):
    """Erasing it must not take /etc/xapi.d/plugins (xapi's) or any system directory with it."""
    for shared in (PLUGIN_DIR, "/etc/xapi.d", "/usr/bin", "/usr/lib64", "/usr/share/man/man1",
                   "/usr/share/bash-completion/completions", "/etc", UNIT_DIR, "/usr/lib/systemd", "/usr/lib"):
        assert shared not in files


def test_vgpu_conf_is_the_one_noreplace_config_file(files):
    flags = {p: f.flags for p, f in files.items() if f.flags}
    assert set(flags[CONF]) == {"c", "n"}
    assert [p for p, fl in flags.items() if "c" in fl] == [CONF]
    assert "l" in flags[DOC_DIR + "/LICENSE"]
    assert "d" in flags[DOC_DIR + "/README.md"]
    # No ghosts: a %ghost registry would be removed by `rpm -e`.
    assert [p for p, fl in flags.items() if "g" in fl] == []


def test_the_registry_is_not_in_the_package(files, contents):
    assert REGISTRY not in files and REGISTRY not in contents
    assert sorted(p for p in files if p.startswith(CONF_DIR)) == [CONF_DIR, CONF]


def test_requires_only_what_glibc_2_17_and_rpm_4_11_have(package):
    reqs = requires(package)
    assert reqs, "no Requires at all: the dependency generator did not run on the ELF files"
    seen_glibc = []
    for req in reqs:
        # No rich or boolean dependencies: "(a if b)", "(a or b)" ...
        assert not req.startswith("("), req
        m = re.match(r"^rpmlib\((\w+)\) <= (\S+)$", req)
        if m:
            assert m.group(1) in RPMLIB_4_11, "%s: rpm 4.11 has no rpmlib(%s)" % (req, m.group(1))
            continue
        if req == "/bin/sh":  # the plugin's trampoline and the scriptlets
            continue
        if req == "systemd":  # Requires(post), (preun), (postun): the scriptlets' systemctl, any version
            continue
        if req == "config(%s) = %s-1" % (NAME, VERSION):  # rpm's own, for vgpu.conf
            continue
        m = re.match(r"^(\S+)\(\)\(64bit\)$", req) or re.match(r"^(\S+)\(GLIBC_([0-9.]+)\)\(64bit\)$", req)
        assert m and m.group(1) in GLIBC_LIBRARIES, "unexpected requirement: %s" % req
        if m.lastindex == 2:
            version = tuple(int(x) for x in m.group(2).split("."))
            assert version <= (2, 17), "%s needs a glibc newer than 2.17" % req
            seen_glibc.append(version)
    assert seen_glibc, reqs


SCRIPTLETS = ("PREIN", "POSTIN", "PREUN", "POSTUN")
UNITS = (REFRESH_SERVICE_NAME, REFRESH_TIMER_NAME)
RPM_STATE = "/var/lib/rpm-state/vgpu-registry"
RUNNING = "[ -d /run/systemd/system ]"
ERASE = '[ "$1" = 0 ]'


def scriptlet_lines(text):
    """[(line, [enclosing if-conditions])] of a scriptlet's commands (comments and blanks dropped,
    continued lines joined); an if without its fi, or the reverse, fails."""
    out, conditions = [], []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("if ") and line.endswith("; then"):
            conditions.append(line[3:-6])
        elif line == "fi":
            assert conditions, "fi without if:\n" + text
            conditions.pop()
        else:
            out.append((line, list(conditions)))
    assert conditions == [], "if without fi:\n" + text
    return out


@pytest.fixture(scope="module")
def scriptlets(package):
    return {t: query(package, "%%{%s}" % t) for t in SCRIPTLETS}


def test_no_triggers_and_only_the_four_scriptlets(package, scriptlets, tmp_path):
    assert run(["rpm", "-qp", "--triggers", package])[1].strip() == ""
    assert run(["rpm", "-qp", "--filetriggers", package])[1].strip() == ""
    tags = ("PRETRANS", "PREIN", "POSTIN", "PREUN", "POSTUN", "POSTTRANS", "VERIFYSCRIPT")
    present = {t: v for t, v in query_tags(package, *tags).items() if v != "(none)"}
    assert sorted(present) == sorted(SCRIPTLETS)
    for tag in SCRIPTLETS:
        assert query(package, "%%{%sPROG}" % tag) == "/bin/sh"
        path = tmp_path / tag
        path.write_text(scriptlets[tag])
        status, out, err = run(["sh", "-n", str(path)], check=False)
        assert status == 0, (tag, err)
    # What `rpm --scripts` shows is those four.
    assert scripts(package).count("scriptlet") == 4


def test_no_scriptlet_can_change_the_registry_or_fail_the_transaction(scriptlets):
    """Every command but echo ends in `|| :`; the files removed are the plugin helper's bytecode and
    the scriptlets' own mark; the registry is looked at only to say it is kept; systemctl is given
    the package's units only."""
    for tag, text in scriptlets.items():
        for line, conditions in scriptlet_lines(text):
            if line.startswith("echo "):
                assert ERASE in conditions, (tag, line)
                continue
            assert line.endswith(" || :"), "%s: %r can fail the transaction" % (tag, line)
            words = line[:-len(" || :")].split()
            if words[0] == "rm":
                if words[1] == "-rf":
                    assert words[2:] == [RPM_STATE], line
                else:
                    assert words[1] == "-f" and ERASE in conditions, line
                    assert words[2:] and all(t.startswith(PLUGIN_DIR + "/") and t.endswith((".pyc", ".pyo"))
                                             for t in words[2:]), line
            elif words[0] == "mkdir":
                assert line == "mkdir -p %s && : > %s/enable-units || :" % (RPM_STATE, RPM_STATE), line
            elif words[0] == "systemctl":
                verb = [w for w in words[1:] if not w.startswith("--")]
                assert verb[0] in ("enable", "disable", "start", "stop", "try-restart", "daemon-reload"), line
                assert set(verb[1:]) <= set(UNITS), line
                if verb[0] not in ("enable", "disable"):
                    # Only a running systemd starts or stops anything.
                    assert RUNNING in conditions, (tag, line)
            else:
                raise AssertionError("%s: unexpected command %r" % (tag, line))
            assert CONF_DIR not in line, line
        for condition in re.findall(r"^\s*if (.*); then$", text, re.M):
            assert CONF_DIR not in condition or condition == "[ -e %s ]" % REGISTRY, condition
    assert "kept" in scriptlets["POSTUN"] and REGISTRY in scriptlets["POSTUN"]


def test_the_scriptlets_enable_start_stop_and_disable_the_units(scriptlets):
    """What each scriptlet does with the units (test_rpm_scriptlets.py runs them)."""
    def systemctl(tag):
        return [(line[:-len(" || :")], conditions) for line, conditions in scriptlet_lines(scriptlets[tag])
                if line.startswith("systemctl ")]

    units = " ".join(UNITS)
    timer = REFRESH_TIMER_NAME
    # %pre marks a release installed where none of the units was yet (first install, or an upgrade
    # from a release without them), for %post to enable them.
    pre = scriptlet_lines(scriptlets["PREIN"])
    assert [c for _, c in pre] == [['[ "$1" = 1 ] || [ ! -e %s ]' % REFRESH_TIMER]], pre
    post = systemctl("POSTIN")
    mark = '[ "$1" = 1 ] || [ -e %s/enable-units ]' % RPM_STATE
    assert post == [("systemctl enable %s" % units, [mark]), ("systemctl start %s" % timer, [mark, RUNNING])]
    assert ("rm -rf %s || :" % RPM_STATE, []) in scriptlet_lines(scriptlets["POSTIN"])
    preun = systemctl("PREUN")
    reversed_units = " ".join(reversed(UNITS))
    assert preun == [("systemctl stop %s" % reversed_units, [ERASE, RUNNING]),
                     ("systemctl --no-reload disable %s" % reversed_units, [ERASE])]
    postun = systemctl("POSTUN")
    assert postun == [("systemctl daemon-reload", [RUNNING]),
                      ("systemctl try-restart %s" % timer, [RUNNING, '[ "$1" -ge 1 ]'])]


def test_every_elf_file_needs_glibc_2_17_at_most(contents, tmp_path):
    elves = sorted(p for p, data in contents.items() if is_elf(data))
    assert elves == [BIN, PYTHON_DIR + "/vgpu_registry/_native.abi3.so"]
    for path in elves:
        out = str(tmp_path / os.path.basename(path))
        with open(out, "wb") as f:
            f.write(contents[path])
        newest = newest_glibc(out)
        assert newest is not None, "%s: objdump -T lists no GLIBC_ symbol" % path
        assert newest <= (2, 17), "%s needs GLIBC_%s" % (path, ".".join(map(str, newest)))


def test_the_payload_is_the_gated_artefacts_byte_for_byte(contents):
    with open(os.path.join(REPO_DIR, "dist", "vgpu-admin"), "rb") as f:
        assert contents[BIN] == f.read(), "not dist/vgpu-admin of `make dom0-bin`"
    wheel = zipfile.ZipFile(the_wheel())
    for name in wheel.namelist():
        if name.startswith("vgpu_registry/"):
            assert contents[PYTHON_DIR + "/" + name] == wheel.read(name), name
    for packaged, source in ((PLUGIN, "plugin/vgpu"), (PLUGIN_HELPER, "plugin/vgpu_plugin.py"),
                             (CONF, "packaging/vgpu.conf"), (DOC_DIR + "/README.md", "plugin/README.md"),
                             (DOC_DIR + "/LICENSE", "LICENSE")):
        with open(os.path.join(REPO_DIR, source), "rb") as f:
            assert contents[packaged] == f.read(), source
    with open(SHIPPED_CONF, "rb") as f:
        assert contents[CONF] == f.read()


def test_manual_pages_and_bash_completion(contents, packaged_admin):
    pages = {p: gunzip(data).decode("utf-8") for p, data in contents.items() if p.startswith(MAN_DIR)}
    for path, text in pages.items():
        name, section = re.match(r".*/man(\d)/(.+)\.\1\.gz$", path).group(2, 1)
        m = re.search(r'^\.TH "?([^ "]+)"? (\d)', text, re.M)
        assert m and (m.group(1).lower(), m.group(2)) == (name.lower(), section), (path, text[:300])
    assert "vgpu_config.db" in pages[MAN_DIR + "/man5/vgpu.conf.5.gz"]
    completion = contents[BASH_COMPLETION].decode("utf-8")
    assert re.search(r"^\s*complete .*vgpu-admin\s*$", completion, re.M), completion[-500:]
    syntax = subprocess.run(["bash", "-n"], input=contents[BASH_COMPLETION], stderr=subprocess.PIPE)
    assert syntax.returncode == 0, syntax.stderr


def test_the_install_guide_names_this_version():
    with open(os.path.join(REPO_DIR, "docs", "install.md")) as f:
        named = set(re.findall(r"vgpu-registry-(\d[^-\s]*)-(\d+)\.x86_64\.rpm", f.read()))
    assert named and {v for v, _ in named} == {VERSION}, named

"""Help and manuals: every command's help fits an 80-column terminal (COLUMNS=80 and a real pty
of 80 columns) with its own options before the global ones and its examples whole; `vgpu-admin
man` writes a page per command with every option, linked from the main page, plus vgpu.conf(5);
the older spellings of options keep working.
"""

import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import struct
import subprocess
import termios

import pytest

from conftest import CUDA_DEV, RENDER_01

WIDTH = 80


def help_text(cli, args, columns=WIDTH):
    return cli.ok(*(list(args) + ["--help"]), env={"COLUMNS": str(columns)}).out


def commands(cli):
    out = help_text(cli, [], 200)
    section = out.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    found = [l.split()[0] for l in section.splitlines() if re.match(r"^  \S", l)]
    assert "register-vm" in found and "man" in found
    return [c for c in found if c != "help"]


def sections(text):
    """Options heading -> the options under it ({"Options:": [...], "Global Options:": [...]})."""
    out, heading = {}, None
    for l in text.splitlines():
        if re.match(r"^\S.*:$", l):
            heading = l
            out.setdefault(heading, [])
        elif heading:
            m = re.match(r"^  (?:-\w, |    )(--[a-z][a-z-]*)", l)
            if m and heading.endswith("Options:"):
                out[heading].append(m.group(1))
    return out


def top_level_globals(cli):
    """The options of `vgpu-admin` itself other than --help/--version: every command takes them."""
    found = sections(help_text(cli, [], 200))
    flat = [o for opts in found.values() for o in opts]
    return set(flat) - {"--help", "--version"}


def examples(text):
    """Each example of a help text as one command line: `Example: …` lines and the indented
    lines of an `Examples:` block, with their ` \\` continuations. Also returns the line that
    follows each example, which must not be the rest of a wrapped command."""
    lines = text.splitlines()
    found = []
    i, in_block = 0, False
    while i < len(lines):
        l = lines[i]
        start = None
        if l.startswith("Example: "):
            start = l[len("Example: "):]
        elif l == "Examples:":
            in_block = True
        elif in_block and l.startswith("  vgpu-admin "):
            start = l.strip()
        elif in_block and not l.startswith("    "):
            in_block = False
        if start is not None:
            parts = [start]
            while parts[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i].strip())
            following = lines[i + 1] if i + 1 < len(lines) else ""
            found.append((" ".join(p.rstrip("\\").strip() for p in parts), following))
        i += 1
    return found


def check_fits(text, what):
    for l in text.splitlines():
        assert len(l) <= WIDTH, "%s: a line of %d columns:\n%s" % (what, len(l), l)


def man_examples(cli, command):
    """The examples of a command's manual page, as one command line each. The page is made from
    the examples as written, never wrapped: the reference for what help must show."""
    page = man_text(cli.ok("man", *([command] if command else [])).out)
    section = page.split(".SH EXAMPLES\n", 1)[1].split("\n.SH ", 1)[0]
    blocks = re.findall(r"^\.nf\n(.*?)\n\.fi$", section, re.M | re.S)
    return [" ".join(l.rstrip("\\").strip() for l in b.replace("\\&", "").replace("\\e", "\\").splitlines())
            for b in blocks]


def check_examples(cli, text, command, what):
    found = examples(text)
    assert found, "%s: no example" % what
    assert [e for e, _ in found] == man_examples(cli, command), what
    options_of = {}
    for example, following in found:
        words = shlex.split(example)
        assert words[0] == "vgpu-admin", (what, example)
        sub = words[1]
        if command:
            assert sub == command, (what, example)
        if sub not in options_of:
            options_of[sub] = {o for opts in sections(help_text(cli, [sub], 200)).values() for o in opts}
        for w in words[2:]:
            if w in (">", "|"):
                break
            if w.startswith("--"):
                assert w.split("=")[0] in options_of[sub], (what, example, w)
        # a wrapped command would go on on the next line
        assert following == "" or following.startswith("Example: ") or \
            following.startswith("  vgpu-admin ") or not following.startswith(" "), (what, example, following)
        assert not re.match(r"^\s*(--|[a-z-]+=)", following), (what, example, following)


# ------------------------------------------------------------------------------------------------
# Help at 80 columns


def helps_to_check(cli):
    return [[]] + [[c] for c in commands(cli)]


def test_every_help_fits_80_columns_with_whole_examples(cli):
    for args in helps_to_check(cli):
        for flag in ("--help", "-h"):
            text = cli.ok(*(args + [flag]), env={"COLUMNS": str(WIDTH)}).out
            what = "vgpu-admin %s %s" % (" ".join(args), flag)
            check_fits(text, what)
            check_examples(cli, text, args[0] if args else None, what)
            # the same examples as on a wide terminal: none was cut
            wide = cli.ok(*(args + [flag]), env={"COLUMNS": "300"}).out
            assert examples(text) == examples(wide), what


def test_the_long_usage_lines_are_broken_between_words(cli):
    text = help_text(cli, ["register-vm"])
    usage = text.split("Usage: ", 1)[1].split("\n\n", 1)[0]
    joined = " ".join(l.strip() for l in usage.splitlines())
    assert joined == ("vgpu-admin register-vm [OPTIONS] --pool <POOL> --priority <PRIORITY> "
                      "<--vm-uuid <UUID>|--vm-name <NAME>>"), usage
    assert len(usage.splitlines()) == 2
    # a refusal shows the same usage
    r = cli.run("register-vm", "--pool", "A")
    assert r.code == 2 and "Usage: vgpu-admin register-vm [OPTIONS]" in r.err, r.err
    check_fits(r.err, "register-vm error")


def run_in_pty(argv, env, columns=WIDTH, rows=40):
    """stdout and stderr of argv on a terminal of `columns` columns."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    p = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            p.kill()
            raise AssertionError("no output from %s" % argv)
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait(timeout=30) == 0, out
    return out.decode("utf-8").replace("\r\n", "\n")


def test_every_help_fits_a_terminal_of_80_columns(cli):
    env = dict(cli.env)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["NO_COLOR"] = "1"
    for args in helps_to_check(cli):
        text = run_in_pty([cli.binary] + args + ["--help"], env)
        what = "pty: vgpu-admin %s --help" % " ".join(args)
        check_fits(text, what)
        check_examples(cli, text, args[0] if args else None, what)
    # and a wider terminal is used (up to 100 columns)
    wide = run_in_pty([cli.binary, "register-vm", "--help"], env, columns=120)
    assert max(len(l) for l in wide.splitlines()) > WIDTH


def test_own_options_come_first_and_global_ones_under_their_heading(cli):
    globals_ = top_level_globals(cli)
    assert {"--config", "--db", "--xapi", "--format", "--yes", "--remote"} <= globals_
    table = {f["command"]: f for f in json.loads(cli.ok("functions", "--format", "json").out)["functions"]}
    for command in commands(cli):
        for flag in ("--help", "-h"):
            text = cli.ok(command, flag, env={"COLUMNS": str(WIDTH)}).out
            found = sections(text)
            headings = [h for h in found if h.endswith("Options:")]
            assert headings == ["Options:", "Global Options:"], (command, headings)
            assert text.index("\nOptions:") < text.index("\nGlobal Options:"), command
            assert set(found["Global Options:"]) == globals_, (command, found["Global Options:"])
            own = set(found["Options:"]) - {"--help"}
            assert not own & globals_, command
            if command in table:
                f = table[command]
                keys = {"--" + k for k in f["required"] + f["optional"] + f["flags"]} - {"--yes"}
                if command == "mediator":
                    # the action is a word on the command line (`mediator health`), not an option
                    assert "\nArguments:\n  <ACTION>" in text, text
                    keys.discard("--action")
                assert own == keys, (command, own, keys)


# ------------------------------------------------------------------------------------------------
# Manual pages


def man_text(roff):
    """The words of a roff page, as a reader sees them (escapes of hyphens and fonts undone)."""
    return re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\(aq", "'")


def test_man_writes_one_page_per_command_with_every_option(cli, tmp_path):
    out_dir = tmp_path / "man"
    r = cli.ok("man", "--out-dir", str(out_dir))
    listed = sorted(r.out.split())
    expected = sorted([str(out_dir / "man1" / "vgpu-admin.1")] +
                      [str(out_dir / "man1" / ("vgpu-admin-%s.1" % c)) for c in commands(cli)] +
                      [str(out_dir / "man5" / "vgpu.conf.5")])
    assert listed == expected
    for path in expected:
        assert os.path.isfile(path), path
    main = man_text((out_dir / "man1" / "vgpu-admin.1").read_text())
    see_also = main.split('.SH "SEE ALSO"', 1)[1]
    for c in commands(cli):
        page = man_text((out_dir / "man1" / ("vgpu-admin-%s.1" % c)).read_text())
        assert page.startswith(".ie") or page.startswith(".TH"), c
        assert re.search(r"^\.TH VGPU-ADMIN-%s 1 " % c.upper(), page, re.M), c
        for option in {o for opts in sections(help_text(cli, [c], 200)).values() for o in opts}:
            assert re.search(r"(^|[\s\[|])%s\b" % re.escape(option), page, re.M), (c, option)
        assert ".SH EXAMPLES" in page and "vgpu-admin %s" % c in page, c
        assert "vgpu-admin(1)" in page.split('.SH "SEE ALSO"', 1)[1], c
        # the main page links every command's page
        assert "vgpu-admin-%s(1)" % c in see_also, c
    assert "vgpu.conf(5)" in see_also
    files = main.split(".SH FILES", 1)[1].split(".SH", 1)[0]
    assert "/etc/vgpu/vgpu.conf" in files and "vgpu.conf(5)" in files


def test_man_pages_are_valid_roff(cli, tmp_path):
    groff = shutil.which("groff")
    assert groff, "groff is needed to check the manual pages"
    out_dir = tmp_path / "man"
    paths = cli.ok("man", "--out-dir", str(out_dir)).out.split()
    for path in paths:
        p = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.returncode == 0 and p.stderr == b"", (path, p.stderr)
    # a page reads at 80 columns with the examples intact
    p = subprocess.run([groff, "-man", "-Tascii", "-rLL=80n", str(out_dir / "man1" / "vgpu-admin-register-vm.1")],
                       stdout=subprocess.PIPE, check=True)
    text = re.sub(r".\x08", "", p.stdout.decode())
    assert "vgpu-admin register-vm --vm-name render-01 --pool B --priority medium" in text


def test_man_prints_one_page(cli):
    main = cli.ok("man").out
    assert re.search(r"^\.TH VGPU-ADMIN 1 ", main, re.M)
    page = cli.ok("man", "register-vm").out
    assert re.search(r"^\.TH VGPU-ADMIN-REGISTER-VM 1 ", page, re.M)
    conf = cli.ok("man", "vgpu.conf").out
    assert re.search(r"^\.TH VGPU\.CONF 5 ", conf, re.M)
    r = cli.run("man", "no-such-command")
    assert r.code == 2 and "no-such-command" in r.err
    r = cli.run("man", "register-vm", "--out-dir", "x")
    assert r.code == 2


def test_the_config_page_example_is_a_config_the_core_accepts(cli, tmp_path):
    conf = man_text(cli.ok("man", "vgpu.conf").out)
    block = conf.split(".SH EXAMPLE", 1)[1].split(".nf\n", 1)[1].split("\n.fi", 1)[0]
    lines = [l.replace("\\&", "") for l in block.splitlines()]
    # the keys without a default are shown commented out: every key is in the file
    keys = [l.lstrip("# ").split(" = ")[0] for l in lines if " = " in l]
    assert {"db_path", "xapi", "lock_timeout_s", "type", "extra", "shutdown_timeout_s", "xapi_ca_file",
            "xapi_password_file", "mode"} <= set(keys), keys
    for key in keys:
        assert re.search(r"^\.TP\n%s \(" % re.escape(key), conf, re.M), key
    path = tmp_path / "vgpu.conf"
    text = "\n".join(lines).replace("/etc/vgpu/vgpu_config.db", cli.db) + "\n"
    path.write_text(text)
    r = cli.run("--config", str(path), "list-vms", env={"VGPU_DB": None})
    assert r.code == 0, (r.err, text)
    uncommented = "\n".join(l[2:] if re.match(r"^# \w+ = ", l) else l for l in text.splitlines()) + "\n"
    path.write_text(uncommented)
    r = cli.run("--config", str(path), "list-vms", env={"VGPU_DB": None})
    assert r.code == 0, (r.err, uncommented)
    # the core does check the file: a misspelt key is refused
    path.write_text(text.replace("lock_timeout_s", "lock_timeout"))
    r = cli.run("--config", str(path), "list-vms", env={"VGPU_DB": None})
    assert r.code != 0 and "lock_timeout" in r.err


# ------------------------------------------------------------------------------------------------
# Older spellings


def same_registration(cli, uuid):
    return cli.run_json("show-vm", "--vm-uuid", uuid)


def test_pool_id_is_pool(cli):
    cli.register(RENDER_01, "A", "high", 1)
    expected = cli.run_json("show-pool", "--pool", "A")
    assert cli.run_json("show-pool", "--pool-id=A") == expected
    assert cli.run_json("show-pool", "--pool-id", "A") == expected
    assert cli.run_json("list-vms", "--pool-id", "A") == cli.run_json("list-vms", "--pool", "A")
    cli.run_json("set-pool", "--vm-uuid", RENDER_01, "--pool-id", "B")
    assert same_registration(cli, RENDER_01)["pool"] == "B"
    cli.run_json("update-vm", "--vm-uuid", RENDER_01, "--pool-id=A")
    assert same_registration(cli, RENDER_01)["pool"] == "A"
    cli.run_json("register-vm", "--vm-uuid", CUDA_DEV, "--pool-id", "B", "--priority", "low")
    assert same_registration(cli, CUDA_DEV)["pool"] == "B"
    # one of the two, not both
    r = cli.run("show-pool", "--pool", "A", "--pool-id", "B")
    assert r.code == 2


def test_uuid_and_name_are_vm_uuid_and_vm_name(cli):
    cli.register(RENDER_01, "A", "high", 1)
    expected = cli.run_json("show-vm", "--vm-uuid", RENDER_01)
    assert cli.run_json("show-vm", "--uuid", RENDER_01) == expected
    assert cli.run_json("show-vm", "--uuid=%s" % RENDER_01) == expected
    assert cli.run_json("show-vm", "--name", "render-01") == expected
    cli.run_json("set-priority", "--name", "render-01", "--priority", "low")
    assert same_registration(cli, RENDER_01)["priority"] == "low"
    cli.run_json("register-vm", "--uuid", CUDA_DEV, "--name", "my-cuda", "--pool", "B", "--priority", "low")
    reg = same_registration(cli, CUDA_DEV)
    assert reg["vm_name"] == "my-cuda" and reg["pool"] == "B"
    doc = cli.run_json("sync", "--uuid", RENDER_01, "--dry-run")
    assert doc == cli.run_json("sync", "--vm-uuid", RENDER_01, "--dry-run")
    # still exactly one VM selector
    r = cli.run("show-vm", "--uuid", RENDER_01, "--vm-name", "render-01")
    assert r.code == 2


def test_id_is_not_a_spelling_of_anything(cli):
    """A VM's "id" could be its uuid or its vm_id: --id is refused rather than guessed."""
    cli.register(RENDER_01, "A", "high", 1)
    r = cli.run("set-vm-id", "--vm-uuid", RENDER_01, "--id", "5")
    assert r.code == 2 and "--id" in r.err
    assert same_registration(cli, RENDER_01)["vm_id"] == 1


def test_older_spellings_stay_out_of_help_and_completion(cli):
    text = help_text(cli, ["show-pool"], 200)
    assert "--pool-id" not in text and "--uuid" not in help_text(cli, ["show-vm"], 200)
    script = cli.ok("completions", "bash").out
    assert "--pool-id" not in script and "--uuid " not in script

"""plugin/README.md is executable documentation: every ``xe`` line in its ``sh`` blocks runs verbatim
(placeholders ``<host>``, ``<master-uuid>``, ``<member-uuid>`` filled in from the fixture) against the
simulator's ``xe`` stand-in, in order, on a fresh sample pool; the answer shown after a command must
match the real one (timestamps aside; an "abridged" sample may leave list items out), and the
``Error code`` / ``Error parameters`` shown must be exactly what xe prints."""

import json
import os
import re
import shlex
import subprocess
import sys

from plugin_support import PLUGIN_DIR, SAMPLE_MASTER, SAMPLE_MEMBER, TIMESTAMP_KEYS, XE_PATH, function_names

README = os.path.join(PLUGIN_DIR, "README.md")
PLACEHOLDERS = {"<host>": SAMPLE_MASTER, "<master-uuid>": SAMPLE_MASTER, "<member-uuid>": SAMPLE_MEMBER}


def readme_steps():
    """[(line number, xe command line, expected)] where expected is ("json", value),
    ("error", text) or None."""
    steps, lang, block, start = [], None, [], 0
    for number, line in enumerate(open(README).read().splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, block, start = fence.group(1), [], number
            continue
        if fence:
            text = "\n".join(block)
            if lang == "sh":
                for offset, cmd in enumerate(block):
                    if cmd.strip().startswith("xe "):
                        steps.append([start + 1 + offset, cmd.strip(), None])
            elif lang == "json" and steps and steps[-1][2] is None:
                steps[-1][2] = ("json", json.loads(text))
            elif lang == "text" and text.startswith("Error code:") and steps and steps[-1][2] is None:
                steps[-1][2] = ("error", text)
            lang = None
            continue
        if lang is not None:
            block.append(line)
    return steps


def all_host_call_plugin_lines():
    return [line.strip() for line in open(README).read().splitlines()
            if re.match(r"^\s*(\$\s+)?xe host-call-plugin ", line)]


def contained(sample, actual, where="$"):
    """The README's sample is the real answer, except that lists may be abridged."""
    if isinstance(sample, dict):
        assert isinstance(actual, dict) and set(sample) == set(actual), (where, sorted(sample), actual)
        for k in sample:
            if k not in TIMESTAMP_KEYS:
                contained(sample[k], actual[k], where + "." + k)
    elif isinstance(sample, list):
        assert isinstance(actual, list) and len(sample) <= len(actual), (where, sample, actual)
        rest = list(actual)
        for i, item in enumerate(sample):
            for j, candidate in enumerate(rest):
                try:
                    contained(item, candidate, "%s[%d]" % (where, i))
                except AssertionError:
                    continue
                del rest[j]
                break
            else:
                raise AssertionError("%s[%d] = %r is not in the real answer %r" % (where, i, item, actual))
    else:
        assert sample == actual, (where, sample, actual)


def test_readme_covers_every_function():
    steps = readme_steps()
    called = set(re.search(r"\bfn=(\S+)", cmd).group(1) for _, cmd, _ in steps if "host-call-plugin" in cmd)
    assert called >= set(function_names()), set(function_names()) - called
    # every host-call-plugin line of the file is one the test runs (none hides in prose)
    assert sorted(all_host_call_plugin_lines()) == sorted(cmd for _, cmd, _ in steps if "host-call-plugin" in cmd)
    assert all(expected is not None for _, cmd, expected in steps if "host-call-plugin" in cmd)


def test_readme_examples_run_verbatim(pool):
    env = dict(os.environ)
    env.update(pool.sim.env())
    failures = []
    for number, cmd, expected in readme_steps():
        line = cmd
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        assert "<" not in line, (number, line)
        proc = subprocess.run([sys.executable, XE_PATH] + shlex.split(line)[1:], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
        try:
            if expected and expected[0] == "error":
                assert proc.returncode == 1, (proc.returncode, out, err)
                assert err.rstrip("\n") == expected[1], err
            else:
                assert proc.returncode == 0, err
                if expected:
                    assert out.isascii()
                    contained(expected[1], json.loads(out))
        except AssertionError as e:
            failures.append("README.md line %d: %s\n    %s" % (number, cmd, e))
    assert not failures, "\n".join(failures)

#!/bin/sh
# The xapi plugin suite (tests/plugin): plugin/vgpu (with plugin/vgpu_plugin.py beside it) run by the
# XAPI simulator as xapi runs it, on CPython 2.7 (cli path, XCP-ng 8.2's XenAPIPlugin), 3.6 (native
# path) and 3.12 or 3.11 (both paths).
#
# Needs:  target/debug/vgpu-admin (cargo build -p vgpu-admin), or VGPU_ADMIN_BIN=<path>; its
#         `functions --format json` is the function table the plugin is checked against;
#         $PYTHON (default python3): CPython >= 3.9 with pytest and XenAPI (tests/requirements.txt);
#         the dom0 interpreters (pyenv 2.7.x, 3.6.x, 3.12.x, or VGPU_TEST_PYTHON_2_7 / _3_6 / _3_12);
#         the wheel (make wheel -> dist/vgpu_registry-*.whl, or VGPU_TEST_WHEEL=<path>) for the native path;
#         PyPI, for CPython 2.7's pip to install XenAPI and six (tests/plugin/requirements-py27.txt).
# A missing interpreter, wheel or 2.7 package FAILS the tests that need it; they are listed again at
# the end of the run. VGPU_ALLOW_MISSING_INTERPRETERS=1 skips them instead: for a developer without
# every interpreter only, never in CI (make test does not set it).
# Extra arguments go to pytest (e.g. -k pool, -x).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider -rfEs tests/plugin "$@"

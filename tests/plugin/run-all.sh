#!/bin/sh
# The xapi plugin suite (tests/plugin): plugin/vgpu run by the XAPI simulator as xapi runs it, on
# CPython 2.7 (cli path), 3.6 (native path) and 3.12 or 3.11 (both paths).
#
# Needs:  target/debug/vgpu-admin (cargo build -p vgpu-admin), or VGPU_ADMIN_BIN=<path>;
#         $PYTHON (default python3): CPython >= 3.9 with pytest and XenAPI (tests/requirements.txt);
#         the dom0 interpreters (pyenv 2.7.x, 3.6.x, 3.12.x, or VGPU_TEST_PYTHON_2_7 / _3_6 / _3_12);
#         the wheel (make wheel -> dist/vgpu_registry-*.whl, or VGPU_TEST_WHEEL=<path>) for the native path.
# A missing interpreter or wheel is reported as a loud "SKIPPED: ..." line at the end;
# VGPU_REQUIRE_ALL_INTERPRETERS=1 makes it a failure instead (what CI should set).
# Extra arguments go to pytest (e.g. -k pool, -x).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider -rfEs tests/plugin "$@"

#!/usr/bin/env python3
"""Refuses a vgpu_registry wheel that dom0 could not load.

Usage: check_wheel.py WHEEL [MAX_GLIBC]

Checks the wheel is one cp36-abi3 manylinux wheel and that no shared object in it needs a
GLIBC_ symbol version newer than MAX_GLIBC (default 2.17, the glibc of XCP-ng 8.x dom0), as
``objdump -T`` reports them. Standard library only; needs binutils' objdump.
"""

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def version(text):
    return tuple(int(part) for part in text.split("."))


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    wheel = Path(argv[1])
    limit = argv[2] if len(argv) == 3 else "2.17"
    if "-cp36-abi3-manylinux" not in wheel.name:
        sys.exit("{}: not a cp36-abi3 manylinux wheel".format(wheel.name))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(str(wheel)) as whl:
        objects = [n for n in whl.namelist() if n.endswith(".so")]
        if not objects:
            sys.exit("{}: no shared object in the wheel".format(wheel.name))
        for name in objects:
            path = whl.extract(name, tmp)
            symbols = subprocess.run(
                ["objdump", "-T", path], check=True, stdout=subprocess.PIPE
            ).stdout.decode()
            needed = sorted(set(re.findall(r"GLIBC_([0-9]+(?:\.[0-9]+)+)", symbols)), key=version)
            if not needed:
                sys.exit("{}: objdump -T shows no GLIBC_ version".format(name))
            newest = needed[-1]
            if version(newest) > version(limit):
                too_new = [v for v in needed if version(v) > version(limit)]
                sys.exit(
                    "{}: needs GLIBC_{} (> {}): {}".format(
                        name, newest, limit, ", ".join("GLIBC_" + v for v in too_new)
                    )
                )
            print("{}: {}: newest GLIBC_{} <= {}: ok".format(wheel.name, name, newest, limit))


if __name__ == "__main__":
    main(sys.argv)

"""Test double of the vgpu_registry extension (see ../README.md). Python 3 only."""

import ctypes
import json
import os
import sys


class VgpuError(Exception):
    code = None
    message = ""
    details = {}


class VmIdInUseError(VgpuError):
    pass


def _junk():
    print("junk from print()")
    sys.stdout.write("junk from sys.stdout.write\n")
    os.write(1, b"junk from os.write(1)\n")
    libc = ctypes.CDLL(None)
    libc.printf(b"junk from C printf without a newline")


def call(fn, args, *, session=None, config=None):
    _junk()
    what = args.get("raise")
    if what == "vgpu":
        e = VmIdInUseError(u"VM ID 5 already in use by VM x (caf\u00e9 \u2713)")
        e.code = "VM_ID_IN_USE"
        e.message = u"VM ID 5 already in use by VM x (caf\u00e9 \u2713)"
        e.details = {"vm_id": 5, "vm_name": u"caf\u00e9 \u2713", "next_free_vm_id": 6}
        raise e
    if what == "no-details":
        e = VgpuError("database is gone")
        e.code = "DATABASE_ERROR"
        e.message = "database is gone"
        e.details = None
        raise e
    if what == "runtime":
        raise RuntimeError("the extension crashed")
    return json.dumps({"fake": True, "fn": fn, "args": args, "session": session, "config": config,
                       "type_args": type(args).__name__, "note": u"\u00e9t\u00e9"}, ensure_ascii=False)

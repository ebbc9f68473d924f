"""Runs steps against the installed ``vgpu_registry`` and prints what happened, as JSON.

Run by tests/python under each interpreter under test (CPython >= 3.6, so nothing newer than
3.6 syntax here), in a venv holding the wheel and with ``-I`` so that only the venv's copy of
the package can be imported. Standard input: ``{"steps": [step, ...]}``; standard output: one
JSON list with one result per step, so the assertions stay in the tests.

Steps (``name`` is an attribute of the ``vgpu_registry`` package):

    {"op": "call", "name": N, "args": [...], "kwargs": {...}}
        calls it: {"value": what it returned} or {"raised": the exception, see _raised}.
        An argument {"$path": "p"} is passed as pathlib.Path("p"), {"$pairs": [[k, v], ...]}
        as a dict whose keys need not be str.
    {"op": "raise", "name": N, "args": [...], "kwargs": {...}}
        raises N(*args, **kwargs) (an exception class): {"raised": ...}.
    {"op": "record", "name": N, "kwargs": {...}}
        calls the convenience N with the native ``call`` replaced by a recorder:
        {"value": ..., "calls": [[fn, args, session, config], ...]} (or "raised").
    {"op": "signature", "name": N}  the parameters of N (name, kind, default, has_default),
                                     null when there is no such function.
    {"op": "drop_code", "code": C}   removes C from exceptions.BY_CODE (for later steps).
    {"op": "describe"}               the package: where it lives, __all__, each public name's
                                     kind, CONVENIENCE_NAMES, the exception classes, BY_CODE.
"""

import ast
import inspect
import json
import os
import pathlib
import pickle
import sys

import vgpu_registry
from vgpu_registry import exceptions


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"$path"}:
            return pathlib.Path(value["$path"])
        if set(value) == {"$pairs"}:
            return dict((_decode(k), _decode(v)) for k, v in value["$pairs"])
        return dict((k, _decode(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _raised(e):
    info = {
        "type": type(e).__name__,
        "module": type(e).__module__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "str": str(e),
        "is_vgpu_error": isinstance(e, vgpu_registry.VgpuError),
    }
    if isinstance(e, vgpu_registry.VgpuError):
        info.update(code=e.code, message=e.message, details=e.details)
        again = pickle.loads(pickle.dumps(e))
        info["pickled"] = [type(again).__name__, again.code, again.message, again.details]
    return info


def _invoke(func, args, kwargs):
    try:
        return {"value": func(*args, **kwargs)}
    except Exception as e:  # noqa: BLE001 (every exception is reported to the test)
        return {"raised": _raised(e)}


def _record(name, kwargs):
    func = getattr(vgpu_registry, name)
    module = sys.modules[func.__module__]
    calls = []
    real = module.call

    def recorder(fn, args, session=None, config=None):
        calls.append([fn, args, session, config])
        return "{}"

    module.call = recorder
    try:
        out = _invoke(func, [], kwargs)
    finally:
        module.call = real
    out["calls"] = calls
    return out


def _default(p):
    if p.default is inspect.Parameter.empty:
        return None
    if isinstance(p.default, (str, int, bool, type(None))):
        return p.default
    return repr(p.default)


def _signature(name):
    if not callable(getattr(vgpu_registry, name, None)):
        return None
    params = inspect.signature(getattr(vgpu_registry, name)).parameters.values()
    return [{"name": p.name, "kind": p.kind.name, "default": _default(p),
             "has_default": p.default is not inspect.Parameter.empty} for p in params]


def _kind(obj):
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj):
        return "function"
    if inspect.isbuiltin(obj):
        return "builtin"
    return type(obj).__name__


def _stub_names(path):
    """The top-level names a .pyi declares."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.append(node.target.id)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets]
    return sorted(names)


def _describe():
    native = sys.modules["vgpu_registry._native"]
    package_dir = os.path.dirname(vgpu_registry.__file__)
    classes = []
    for name, obj in sorted(vars(exceptions).items()):
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            classes.append({
                "name": name,
                "qualname": obj.__name__,
                "module": obj.__module__,
                "code": getattr(obj, "code", None),
                "bases": [b.__name__ for b in obj.__bases__],
                "exported": getattr(vgpu_registry, name, None) is obj,
            })
    return {
        "file": vgpu_registry.__file__,
        "native_file": native.__file__,
        "native_names": sorted(n for n in dir(native) if not n.startswith("__") or n in ("__all__", "__version__")),
        "native_all": list(native.__all__),
        "native_stub_names": _stub_names(os.path.join(package_dir, "_native.pyi")),
        "py_typed": os.path.isfile(os.path.join(package_dir, "py.typed")),
        "all": list(vgpu_registry.__all__),
        "exceptions_all": list(exceptions.__all__),
        "kinds": dict((n, _kind(getattr(vgpu_registry, n, None))) for n in dir(vgpu_registry)
                      if not n.startswith("_")),
        "convenience_names": dict(vgpu_registry.CONVENIENCE_NAMES),
        "classes": classes,
        "by_code": dict((code, [cls.__name__, cls.__module__]) for code, cls in exceptions.BY_CODE.items()),
    }


def main():
    steps = json.load(sys.stdin)["steps"]
    results = []
    for step in steps:
        op = step["op"]
        if op == "call":
            func = getattr(vgpu_registry, step["name"])
            results.append(_invoke(func, _decode(step.get("args", [])), _decode(step.get("kwargs", {}))))
        elif op == "raise":
            cls = getattr(vgpu_registry, step["name"])
            args, kwargs = _decode(step.get("args", [])), _decode(step.get("kwargs", {}))

            def throw():
                raise cls(*args, **kwargs)

            results.append(_invoke(throw, [], {}))
        elif op == "record":
            results.append(_record(step["name"], _decode(step.get("kwargs", {}))))
        elif op == "signature":
            results.append(_signature(step["name"]))
        elif op == "drop_code":
            del exceptions.BY_CODE[step["code"]]
            results.append(None)
        elif op == "describe":
            results.append(_describe())
        else:
            raise SystemExit("unknown step %r" % op)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()

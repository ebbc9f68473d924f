"""The package against the core's tables (``vgpu-admin functions --format json``): one exception
class per error code and one convenience per plugin function, taking exactly its argument keys.
A function, an argument or an error code added to the core fails here until Python has it."""

import pytest

from pkg_support import DESCRIBE, argument_keys, class_name, raised, record, signature, value

# Parameters every convenience has besides the function's arguments.
COMMON = ("session", "config")

# Arguments known to break the rule that each may be left out (the core then reports what is
# missing); test_a_required_argument_may_be_left_out below fails strictly until they follow it.
REQUIRED_IN_PYTHON = {("mediator", "action")}


def convenience_name(function, description):
    return description["convenience_names"].get(function, function.replace("-", "_"))


def test_one_exception_class_per_error_code(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    codes = table["error_codes"]
    assert len(codes) == len(set(codes)), codes
    classes = [c for c in d["classes"] if c["name"] != "VgpuError"]
    defined = sorted(c["code"] for c in classes)
    assert defined == sorted(codes), "error codes without a class, or classes without a code"
    assert sorted(d["by_code"]) == sorted(codes)
    for c in classes:
        assert c["bases"] == ["VgpuError"], c
        assert c["module"] == "vgpu_registry.exceptions", c
        assert c["name"] == c["qualname"] == class_name(c["code"]), c
        assert d["by_code"][c["code"]] == [c["name"], "vgpu_registry.exceptions"], c
        assert c["exported"] and c["name"] in d["all"], c
    base = [c for c in d["classes"] if c["name"] == "VgpuError"]
    assert base == [{"name": "VgpuError", "qualname": "VgpuError", "module": "vgpu_registry.exceptions",
                     "code": None, "bases": ["Exception"], "exported": True}]
    assert sorted(d["exceptions_all"]) == sorted(["VgpuError"] + [c["name"] for c in classes])
    assert "VgpuError" in d["all"]


def test_one_convenience_per_function(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    names = [f["name"] for f in table["functions"]]
    assert set(d["convenience_names"]) <= set(names), "a renamed convenience of no function"
    expected = sorted(convenience_name(n, d) for n in names)
    assert len(set(expected)) == len(expected), expected
    public_functions = sorted(n for n in d["all"] if d["kinds"].get(n) == "function")
    assert public_functions == expected
    assert d["kinds"]["call"] == "builtin"
    assert [n for n in d["all"] if n not in d["kinds"] and n != "__version__"] == [], "__all__ names nothing"


def test_convenience_parameters_are_the_function_arguments(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    functions = table["functions"]
    signatures = pkg.probe([signature(convenience_name(f["name"], d)) for f in functions])
    for f, params in zip(functions, signatures):
        where = "%s (%s)" % (convenience_name(f["name"], d), f["name"])
        assert params is not None, "no convenience " + where
        by_name = dict((p["name"], p) for p in params)
        own = sorted(n for n in by_name if n not in COMMON)
        assert own == sorted(k.replace("-", "_") for k in argument_keys(f)), where
        for key in COMMON:
            assert by_name[key]["kind"] == "KEYWORD_ONLY" and by_name[key]["default"] is None, where
        for key in argument_keys(f):
            p = by_name[key.replace("-", "_")]
            if (f["name"], key) in REQUIRED_IN_PYTHON:
                continue
            # Every argument may be left out: the core reports what is missing, by code.
            assert p["has_default"], (where, p)
            assert p["default"] is (False if key in f["flags"] else None), (where, p)


def test_a_required_argument_may_be_left_out(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    functions = dict((f["name"], f) for f in table["functions"])
    names = sorted(set(n for n, _ in REQUIRED_IN_PYTHON))
    signatures = pkg.probe([signature(convenience_name(n, d)) for n in names])
    results = pkg.probe([record(convenience_name(n, d)) for n in names])
    for name, params, bare in zip(names, signatures, results):
        by_name = dict((p["name"], p) for p in params)
        for fn, key in REQUIRED_IN_PYTHON:
            if fn == name:
                p = by_name[key.replace("-", "_")]
                assert p["has_default"] and p["default"] is (False if key in functions[fn]["flags"] else None), p
        assert bare["calls"] == [[name, {}, None, None]], name


def test_each_convenience_calls_its_function_with_its_keys(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    functions = table["functions"]
    steps = []
    for f in functions:
        every = dict((k.replace("-", "_"), True if k in f["flags"] else "v-" + k) for k in argument_keys(f))
        name = convenience_name(f["name"], d)
        steps += [record(name, **every), record(name), record(name, session="OpaqueRef:s", config="/c.conf")]
    results = pkg.probe(steps)
    for i, f in enumerate(functions):
        every, bare, common = results[3 * i:3 * i + 3]
        expected = dict((k, "true" if k in f["flags"] else "v-" + k) for k in argument_keys(f))
        assert every["calls"] == [[f["name"], expected, None, None]], f["name"]
        assert value(every) == {}
        if any(fn == f["name"] for fn, _ in REQUIRED_IN_PYTHON):
            continue  # called without its required argument it never reaches the core
        assert bare["calls"] == [[f["name"], {}, None, None]], f["name"]
        assert common["calls"] == [[f["name"], {}, "OpaqueRef:s", "/c.conf"]], f["name"]


def test_a_key_the_function_lacks_is_refused_by_python(pkg, table):
    d = pkg.probe([DESCRIBE])[0]
    functions = table["functions"]
    results = pkg.probe([record(convenience_name(f["name"], d), colour="red") for f in functions])
    # (A missing convenience raises AttributeError here, reported as such.)
    for f, r in zip(functions, results):
        assert raised(r)["type"] == "TypeError", f["name"]
        assert r["calls"] == [], f["name"]

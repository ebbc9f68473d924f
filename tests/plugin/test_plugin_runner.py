"""The simulator runs plugins as xapi does (tests/xapi_sim/plugins.py; ARCHITECTURE "The plugin
protocol"), since every other test of this suite relies on it: the argument, the environment,
stdin, the working directory and the session of the process, and the strict reading of stdout."""

import json
import os
import sys
import xmlrpc.client

import pytest

from plugin_support import SAMPLE_MASTER, Simulator
from xapi_sim import plugins
from xapi_sim.errors import XapiError

PROBE = r'''
import json, os, sys, xmlrpc.client
with open("/proc/self/environ", "rb") as f:
    env = dict(x.decode().split("=", 1) for x in f.read().split(b"\0") if x)
value = json.dumps({"argv": sys.argv[1:], "env": env, "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                    "own_session": os.getsid(0) == os.getpid()})
sys.stdout.write(xmlrpc.client.dumps(({"Status": "Success", "Value": value},), methodresponse=True))
'''


@pytest.fixture(scope="module")
def probe_sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugins")
    probe = d / "probe"
    probe.write_text("#!%s\n%s" % (sys.executable, PROBE))
    probe.chmod(0o755)
    with Simulator(plugin_dir=str(d)) as sim:
        yield sim


def call_probe(sim, args):
    s = sim.login()
    host = sim.call("host.get_by_uuid", s, SAMPLE_MASTER)
    return json.loads(sim.call("host.call_plugin", s, host, "probe", "echo", args))


def test_a_plugin_gets_what_xapi_gives(probe_sim):
    out = call_probe(probe_sim, {"vm-name": u"Caf\u00e9 <9> & co", "empty": "", "ctl": "a\x01b\tc"})
    assert out["env"] == {"PATH": "/sbin:/usr/sbin:/bin:/usr/bin", "VGPU_HOST_UUID": SAMPLE_MASTER,
                          "VGPU_XAPI": probe_sim.url}
    assert (out["cwd"], out["stdin"], out["own_session"]) == ("/", "", True)
    [call] = out["argv"]
    session = call.split("<param><value>")[1].split("</value>")[0]
    assert session.startswith("OpaqueRef:")
    members = "".join("<member><name>%s</name>%s</member>" % kv for kv in [
        ("vm-name", u"<value>Caf\u00e9 &lt;9&gt; &amp; co</value>"), ("empty", "<value/>"), ("ctl", "<value>ab\tc</value>")])
    assert call == ("<methodCall><methodName>echo</methodName><params><param><value>%s</value></param>"
                    "<param><value><struct>%s</struct></value></param></params></methodCall>" % (session, members))


def test_simulator_variables_come_after_xapis_path():
    env = plugins.plugin_environment({"VGPU_HOST_UUID": "h", "VGPU_XAPI": "unix:/x", "GONE": None})
    assert env == {"PATH": plugins.XAPI_PLUGIN_PATH, "VGPU_HOST_UUID": "h", "VGPU_XAPI": "unix:/x"}


def response(value):
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8")


def outcome(stdout):
    try:
        return ("ok", plugins.parse_response(stdout))
    except XapiError as e:
        return (e.code, e.params)


@pytest.mark.parametrize("stdout,code,params", [
    (response({"Status": "Success", "Value": u"caf\u00e9"}), "ok", u"caf\u00e9"),
    (response({"Status": "Success", "Value": ""}), "ok", ""),
    (response({"Status": "Failure", "ErrorDescription": ["VGPU_X", "m", "{}"]}), "VGPU_X", ["m", "{}"]),
    (response({"Status": "Failure", "ErrorDescription": ["ONLY_CODE"]}), "ONLY_CODE", []),
])
def test_well_formed_answers(stdout, code, params):
    assert outcome(stdout) == (code, params)


@pytest.mark.parametrize("value", [
    {"Status": "Success", "Value": 5},
    {"Status": "Success", "Value": {"a": "b"}},
    {"Status": "Success"},
    {"Status": "Failure", "ErrorDescription": []},
    {"Status": "Failure", "ErrorDescription": ["CODE", 5]},
    {"Status": "Failure", "ErrorDescription": "CODE"},
    {"Status": "Failure"},
    {"Status": "Maybe", "Value": "x"},
    {"Value": "x"},
    "a bare string",
], ids=lambda v: repr(v)[:40])
def test_any_other_struct_is_an_internal_error(value):
    code, params = outcome(response(value))
    assert code == "INTERNAL_ERROR" and len(params) == 1, (code, params)


@pytest.mark.parametrize("stdout", [
    b"debug: a stray line\n" + response({"Status": "Success", "Value": "x"}),
    response({"Status": "Success", "Value": "x"}) + b"<trailing/>",
    response({"Status": "Success", "Value": "x"}).replace(b"<value><string>x", b"<value><string>\xff"),
    b"<methodResponse><params><param><value>a</value></param><param><value>b</value></param></params>"
    b"</methodResponse>",
    xmlrpc.client.dumps(("a",), methodname="f").encode(),
    b"",
], ids=["text before", "text after", "invalid UTF-8", "two values", "a methodCall", "nothing"])
def test_anything_else_is_a_parse_failure(stdout):
    code, params = outcome(stdout)
    assert code == "XENAPI_PLUGIN_FAILURE" and params[0] == "failed to parse plugin output", (code, params)
    assert len(params) == 3


def test_a_fault():
    stdout = xmlrpc.client.dumps(xmlrpc.client.Fault(42, "no luck"), methodresponse=True).encode()
    assert outcome(stdout) == ("XENAPI_PLUGIN_FAILURE", ["fault", "42", "no luck"])


@pytest.mark.parametrize("script,expected", [
    ("import sys; sys.stdout.write('out'); sys.stderr.write('err'); sys.exit(2)", ["non-zero exit", "out", "err"]),
    ("import os, signal, sys; sys.stdout.write('out'); sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)",
     ["signal: SIGKILL", "out", ""]),
])
def test_exit_status_and_signals(tmp_path, script, expected):
    path = tmp_path / "plugin"
    path.write_text(script)
    with pytest.raises(XapiError) as e:
        plugins.run_plugin(str(path), "f", "OpaqueRef:x", {}, plugins.plugin_environment({}), python=sys.executable)
    assert (e.value.code, e.value.params) == ("XENAPI_PLUGIN_FAILURE", expected)

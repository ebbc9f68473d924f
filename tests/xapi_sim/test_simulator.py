"""The XAPI simulator's own tests: protocols, transports, the PyPI XenAPI client, the filter
grammar, error shapes, fault injection, the call log, host.call_plugin and the xe stand-in.

Run: python -m pytest tests/xapi_sim -q
"""

import http.client
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client

import pytest

from xapi_sim import filter as xfilter
from xapi_sim.client import JsonRpcClient, UnixHTTPConnection, XapiFault
from xapi_sim.harness import (
    PACKAGE_DIR, SAMPLE_FIXTURE, TESTS_DIR, THREE_HOST_FIXTURE, XE_PATH, Simulator,
)
from xapi_sim.records import make_ref

with open(SAMPLE_FIXTURE) as _f:
    SAMPLE = json.load(_f)

MASTER = SAMPLE["pool"]["master"]
HOST1 = SAMPLE["hosts"][0]["uuid"]
HOST2 = SAMPLE["hosts"][1]["uuid"]
assert MASTER == HOST1


def vm_uuid(name):
    found = [v["uuid"] for v in SAMPLE["vms"] if v["name_label"] == name]
    assert len(found) == 1, name
    return found[0]


SCAN_EXPR = ('(field "is_a_template"="false") and (field "is_control_domain"="false") '
             'and (field "is_a_snapshot"="false")')
REAL_VM_NAMES = sorted(["render-01", "render-02", "cuda-dev", "ml-train-a", "ml-train-b", "db-primary", "web 01",
                        "legacy-stub", "twin", "twin"])


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim_unix():
    with Simulator(transport="unix") as sim:
        yield sim


@pytest.fixture(scope="module")
def sim_tcp():
    with Simulator(transport="tcp") as sim:
        yield sim


@pytest.fixture(params=["unix", "tcp"])
def sim(request, sim_unix, sim_tcp):
    s = sim_unix if request.param == "unix" else sim_tcp
    s.reset()
    return s


@pytest.fixture
def usim(sim_unix):
    sim_unix.reset()
    sim_unix.set_plugin_python(None)
    return sim_unix


def raw_post(sim, path, body, headers=None, conn=None):
    """POST bytes to the simulator; returns (status, headers dict, body bytes)."""
    own = conn is None
    if own:
        conn = raw_conn(sim)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    conn.request("POST", path, body, hdrs)
    resp = conn.getresponse()
    data = resp.read()
    result = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    if own:
        conn.close()
    return result


def raw_conn(sim):
    if sim.url.startswith("unix:"):
        return UnixHTTPConnection(sim.url[5:], timeout=30)
    host, port = sim.url[len("http://"):].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def jsonrpc_raw(sim, method, params, version="2.0", req_id=7):
    req = {"method": method, "params": params, "id": req_id}
    if version:
        req["jsonrpc"] = version
    status, _, body = raw_post(sim, "/jsonrpc", json.dumps(req).encode())
    assert status == 200
    return json.loads(body)


def fault_of(fn, *args):
    with pytest.raises(XapiFault) as ei:
        fn(*args)
    return ei.value.code, ei.value.params


# ---------------------------------------------------------------------------- process


def _spawn(args):
    env = dict(os.environ, PYTHONPATH=TESTS_DIR)
    return subprocess.Popen([sys.executable] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=os.path.dirname(TESTS_DIR))


def test_serve_unix_prints_listening_and_sigterm_removes_socket():
    d = tempfile.mkdtemp(prefix="xsimt")
    path = os.path.join(d, "x.sock")
    proc = _spawn([os.path.join(PACKAGE_DIR, "server.py"), "serve", "--fixture", SAMPLE_FIXTURE, "--unix", path])
    try:
        line = proc.stdout.readline().decode()
        assert line == "LISTENING unix:%s\n" % path
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        c = JsonRpcClient("unix:" + path)
        assert c.call("session.login_with_password", "anyone", "anything").startswith("OpaqueRef:")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not os.path.exists(path)
    assert proc.stdout.read() == b""  # exactly one line on stdout


def test_serve_tcp_port_zero_and_sigint():
    proc = _spawn(["-m", "xapi_sim", "serve", "--fixture", THREE_HOST_FIXTURE, "--port", "0"])
    try:
        line = proc.stdout.readline().decode()
        m = re.match(r"^LISTENING (http://127\.0\.0\.1:(\d+))\n$", line)
        assert m, line
        assert int(m.group(2)) > 0
        c = JsonRpcClient(m.group(1))
        s = c.call("session.login_with_password", "root", "password", "1.0", "t")
        assert len(c.call("host.get_all", s)) == 3
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_harness_start_failure_reports_stderr(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hosts": []}')
    with pytest.raises(RuntimeError) as ei:
        Simulator(fixture=str(bad), transport="tcp", start_timeout=20).start()
    assert "fixture has no hosts" in str(ei.value)


# ---------------------------------------------------------------------------- JSON-RPC


def test_jsonrpc_v2_success_and_error_shape(sim):
    s = sim.login()
    ok = jsonrpc_raw(sim, "VM.get_by_uuid", [s, vm_uuid("render-01")])
    assert ok == {"jsonrpc": "2.0", "result": make_ref("VM", vm_uuid("render-01")), "id": 7}
    err = jsonrpc_raw(sim, "VM.get_by_uuid", [s, "00000000-1111-2222-3333-444444444444"], req_id="abc")
    assert err == {"jsonrpc": "2.0", "id": "abc",
                   "error": {"code": 1, "message": "UUID_INVALID",
                             "data": ["VM", "00000000-1111-2222-3333-444444444444"]}}


def test_jsonrpc_v1_success_and_error_shape(sim):
    s = sim.login()
    ok = jsonrpc_raw(sim, "pool.get_all", [s], version=None)
    assert ok == {"result": [make_ref("pool", SAMPLE["pool"]["uuid"])], "error": None, "id": 7}
    err = jsonrpc_raw(sim, "VM.get_record", [s, "OpaqueRef:nope"], version=None)
    # xapi (rpclib V1): the error is the array [code, params...]
    assert err == {"result": None, "error": ["HANDLE_INVALID", "VM", "OpaqueRef:nope"], "id": 7}
    v1 = JsonRpcClient(sim.url, version="1.0")
    assert fault_of(v1.call, "VM.get_record", s, "OpaqueRef:nope") == ("HANDLE_INVALID", ["VM", "OpaqueRef:nope"])
    v1.close()


def test_malformed_requests_give_http_500(sim):
    status, headers, body = raw_post(sim, "/jsonrpc", b"{not json")
    assert status == 500 and b"HTTP 500 internal server error" in body
    status, _, body = raw_post(sim, "/jsonrpc", b'{"jsonrpc":"2.0","method":"session.login_with_password","id":0}')
    assert status == 500 and b"Malformed_method_request" in body
    status, _, _ = raw_post(sim, "/", b"<methodCall><methodName>x</methodName>", {"Content-Type": "text/xml"})
    assert status == 500
    status, _, _ = raw_post(sim, "/nowhere", b"{}")
    assert status == 404


def test_keep_alive_and_connection_close(sim):
    conn = raw_conn(sim)
    body = json.dumps({"jsonrpc": "2.0", "method": "session.login_with_password",
                       "params": ["root", "password"], "id": 1}).encode()
    st1, h1, _ = raw_post(sim, "/jsonrpc", body, conn=conn)
    sock1 = conn.sock
    st2, h2, b2 = raw_post(sim, "/jsonrpc", body, conn=conn)
    assert st1 == st2 == 200
    assert conn.sock is sock1 and sock1 is not None  # same connection reused
    assert int(h2["content-length"]) == len(b2)
    assert "connection" not in h1
    st3, h3, _ = raw_post(sim, "/jsonrpc", body, {"Connection": "close"}, conn=conn)
    assert st3 == 200 and h3.get("connection") == "close"
    conn.close()


def test_chunked_request_body(sim):
    conn = raw_conn(sim)
    payload = json.dumps({"jsonrpc": "2.0", "method": "session.login_with_password",
                          "params": ["root", "password"], "id": 1}).encode()
    conn.putrequest("POST", "/jsonrpc")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    half = len(payload) // 2
    for part in (payload[:half], payload[half:]):
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["result"].startswith("OpaqueRef:")
    conn.close()


# ---------------------------------------------------------------------------- XML-RPC


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        xmlrpc.client.Transport.__init__(self)
        self.path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.path)


def xmlrpc_proxy(sim, path="/"):
    if sim.url.startswith("unix:"):
        return xmlrpc.client.ServerProxy("http://localhost" + path, transport=_UnixTransport(sim.url[5:]))
    return xmlrpc.client.ServerProxy(sim.url + path)


@pytest.mark.parametrize("path", ["/", "/RPC2"])
def test_xmlrpc_status_value_and_failure(sim, path):
    proxy = xmlrpc_proxy(sim, path)
    login = proxy.session.login_with_password("root", "password", "1.0", "t")
    assert login["Status"] == "Success" and login["Value"].startswith("OpaqueRef:")
    s = login["Value"]
    ref = make_ref("VM", vm_uuid("render-01"))
    rec = proxy.VM.get_record(s, ref)
    assert rec["Status"] == "Success"
    assert rec["Value"]["name_label"] == "render-01"
    assert rec["Value"]["domid"] == "3"  # xapi sends ints as strings over XML-RPC
    assert rec["Value"]["is_a_template"] is False
    assert isinstance(rec["Value"]["snapshot_time"], xmlrpc.client.DateTime)
    fail = proxy.VM.clean_shutdown(s, make_ref("VM", vm_uuid("ml-train-b")))
    assert fail == {"Status": "Failure",
                    "ErrorDescription": ["VM_BAD_POWER_STATE", make_ref("VM", vm_uuid("ml-train-b")), "running",
                                         "halted"]}
    # control methods are reachable over XML-RPC too
    assert proxy.sim.get_vm(vm_uuid("legacy-stub"))["Value"]["platform"]["device-model-args"] == \
        "-device vgpu-stub,pool_id=B,priority=1,vm_id=3"


def test_pypi_xenapi_client_tcp(sim_tcp):
    XenAPI = pytest.importorskip("XenAPI")
    sim_tcp.reset()
    session = XenAPI.Session(sim_tcp.url)
    session.xenapi.login_with_password("root", "password", "1.0", "test")
    try:
        records = session.xenapi.VM.get_all_records_where(SCAN_EXPR)
        assert sorted(r["name_label"] for r in records.values()) == REAL_VM_NAMES
        assert len(session.xenapi.VM.get_by_name_label("twin")) == 2
        ref = session.xenapi.VM.get_by_uuid(vm_uuid("render-01"))
        assert session.xenapi.VM.get_power_state(ref) == "Running"
        session.xenapi.VM.clean_shutdown(ref)
        assert session.xenapi.VM.get_power_state(ref) == "Halted"
        assert session.xenapi.VM.get_resident_on(ref) == "OpaqueRef:NULL"
        with pytest.raises(XenAPI.Failure) as ei:
            session.xenapi.VM.get_record("OpaqueRef:missing")
        assert ei.value.details == ["HANDLE_INVALID", "VM", "OpaqueRef:missing"]
        master = session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0])
        assert session.xenapi.host.get_uuid(master) == MASTER
        assert session.API_version == "2.21"
    finally:
        session.xenapi.session.logout()
    bad = XenAPI.Session(sim_tcp.url)
    with pytest.raises(XenAPI.Failure) as ei:
        bad.xenapi.login_with_password("root", "wrong", "1.0", "test")
    assert ei.value.details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]


def test_pypi_xenapi_client_unix_socket(sim_unix):
    XenAPI = pytest.importorskip("XenAPI")
    sim_unix.reset()
    path = sim_unix.url[len("unix:"):]
    assert "_" not in path
    session = XenAPI.Session("http://" + path.replace("/", "_"), transport=XenAPI.UDSTransport())
    session.xenapi.login_with_password("root", "", "1.0", "test")  # the socket trusts root
    try:
        hosts = session.xenapi.host.get_all_records()
        assert sorted(h["name_label"] for h in hosts.values()) == ["xcp-lab-01", "xcp-lab-02"]
        ref = session.xenapi.VM.get_by_uuid(vm_uuid("cuda-dev"))
        session.xenapi.VM.add_to_platform(ref, "vgpu-test", "1")
        assert session.xenapi.VM.get_platform(ref)["vgpu-test"] == "1"
    finally:
        session.xenapi.session.logout()
    # and the harness helper does the same
    s2 = sim_unix.xenapi_session()
    assert len(s2.xenapi.pool.get_all()) == 1
    s2.xenapi.session.logout()


# ---------------------------------------------------------------------------- sessions


def test_login_rules_per_transport(sim_unix, sim_tcp):
    assert sim_unix.call("session.login_with_password", "nobody", "wrong").startswith("OpaqueRef:")
    assert fault_of(sim_tcp.call, "session.login_with_password", "root", "wrong", "1.0", "t") == \
        ("SESSION_AUTHENTICATION_FAILED", ["root", "Authentication failure"])
    assert fault_of(sim_tcp.call, "session.login_with_password", "nobody", "password") == \
        ("SESSION_AUTHENTICATION_FAILED", ["nobody", "Authentication failure"])
    assert sim_tcp.call("session.login_with_password", "root", "password").startswith("OpaqueRef:")


def test_session_invalid_and_logout(sim):
    assert fault_of(sim.call, "VM.get_all", "OpaqueRef:bogus") == ("SESSION_INVALID", ["OpaqueRef:bogus"])
    s = sim.call("session.login_with_password", "root", "password", "1.0", "t")
    assert len(sim.call("VM.get_all", s)) == len(SAMPLE["vms"])
    uuid_ = sim.call("session.get_uuid", s, s)
    assert re.match(r"^[0-9a-f-]{36}$", uuid_)
    assert sim.call("session.get_this_host", s, s) == make_ref("host", MASTER)
    assert sim.call("session.logout", s) == ""
    assert fault_of(sim.call, "VM.get_all", s) == ("SESSION_INVALID", [s])


# ---------------------------------------------------------------------------- filter grammar


@pytest.mark.parametrize("expr,expected", [
    ('true', True),
    ('false', False),
    ('field "a"="1"', True),
    ('field "a"="2"', False),
    ('"1"=field "a"', True),
    ('not field "a"="1"', False),
    ('not (field "a"="1")', False),
    ('field "a"="1" and field "b"="x"', False),
    ('field "a"="1" or field "b"="x"', True),
    # not > and > or
    ('field "a"="2" and field "b"="y" or true', True),
    ('field "a"="2" and (field "b"="y" or true)', False),
    ('not field "a"="2" and field "b"="y"', True),
    ('not (field "a"="2" or true)', False),
    ('((field "flag"="false"))', True),
    ('field "q"="say \\"hi\\""', True),
    ('field "n"="-1"', True),
])
def test_filter_grammar(expr, expected):
    rec = {"a": "1", "b": "y", "flag": False, "q": 'say "hi"', "n": -1}
    assert xfilter.evaluate(xfilter.parse(expr), rec) is expected


@pytest.mark.parametrize("bad", ['', 'field "a"', 'field a="1"', '(true', 'true)', 'field "a"="1" and',
                                 '"unterminated', 'maybe', 'field "a"=="1"'])
def test_filter_syntax_errors(bad):
    with pytest.raises(xfilter.FilterSyntaxError):
        xfilter.parse(bad)


def test_get_all_records_where_through_server(sim):
    s = sim.login()
    recs = sim.call("VM.get_all_records_where", s, SCAN_EXPR)
    assert sorted(r["name_label"] for r in recs.values()) == REAL_VM_NAMES
    for ref, r in recs.items():
        assert ref == make_ref("VM", r["uuid"])
    running = sim.call("VM.get_all_records_where", s, 'field "power_state"="Running" and field "is_control_domain"="false"')
    assert sorted(r["name_label"] for r in running.values()) == ["cuda-dev", "ml-train-a", "render-01", "render-02",
                                                                  "twin"]
    dom0 = sim.call("VM.get_all_records_where", s, 'field "is_control_domain"="true"')
    assert len(dom0) == 2
    both = sim.call("VM.get_all_records_where", s, 'field "name_label"="web 01" or field "name_label"="cuda-dev"')
    assert sorted(r["name_label"] for r in both.values()) == ["cuda-dev", "web 01"]
    on_h2 = sim.call("VM.get_all_records_where", s, 'field "resident_on"="%s"' % make_ref("host", HOST2))
    assert sorted(r["name_label"] for r in on_h2.values()) == ["Control domain on host: xcp-lab-02", "ml-train-a",
                                                                "render-02", "twin"]
    assert sim.call("VM.get_all_records_where", s, "false") == {}
    assert len(sim.call("VM.get_all_records_where", s, "true")) == len(SAMPLE["vms"])
    code, params = fault_of(sim.call, "VM.get_all_records_where", s, 'field "is_a_template"=')
    assert code == "INTERNAL_ERROR" and "Expression_error" in params[0]
    code, params = fault_of(sim.call, "VM.get_all_records_where", s, 'field "no_such_field"="x"')
    assert code == "INTERNAL_ERROR" and params[-1] == "no_such_field"
    hosts = sim.call("host.get_all_records_where", s, 'field "name_label"="xcp-lab-02"')
    assert [h["uuid"] for h in hosts.values()] == [HOST2]


# ---------------------------------------------------------------------------- records & errors


def test_vm_record_shape(sim):
    s = sim.login()
    ref = sim.call("VM.get_by_uuid", s, vm_uuid("cuda-dev"))
    rec = sim.call("VM.get_record", s, ref)
    for field in ("uuid", "name_label", "name_description", "power_state", "is_a_template", "is_a_snapshot",
                  "is_control_domain", "platform", "other_config", "resident_on", "domid", "snapshots",
                  "snapshot_of", "allowed_operations", "memory_static_max", "VCPUs_max"):
        assert field in rec, field
    assert rec["power_state"] == "Running"
    assert rec["resident_on"] == make_ref("host", HOST1)
    assert rec["domid"] == 5
    assert rec["platform"]["device-model-args"] == "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1"
    snap_uuid = vm_uuid("cuda-dev before driver upgrade")
    assert rec["snapshots"] == [make_ref("VM", snap_uuid)]
    snap = sim.call("VM.get_record", s, make_ref("VM", snap_uuid))
    assert snap["is_a_snapshot"] is True and snap["is_a_template"] is True
    assert snap["snapshot_of"] == ref
    halted = sim.call("VM.get_record", s, make_ref("VM", vm_uuid("ml-train-b")))
    assert halted["resident_on"] == "OpaqueRef:NULL" and halted["domid"] == -1
    assert sim.call("VM.get_uuid", s, ref) == vm_uuid("cuda-dev")
    assert sim.call("VM.get_name_label", s, ref) == "cuda-dev"
    assert sim.call("VM.get_power_state", s, ref) == "Running"
    assert sim.call("VM.get_other_config", s, ref)["base_template_name"] == "Ubuntu Jammy Jellyfish 22.04"
    assert sim.call("VM.get_is_a_template", s, ref) is False


def test_host_and_pool_records(sim):
    s = sim.login()
    pools = sim.call("pool.get_all", s)
    assert pools == [make_ref("pool", SAMPLE["pool"]["uuid"])]
    assert sim.call("pool.get_master", s, pools[0]) == make_ref("host", MASTER)
    prec = sim.call("pool.get_record", s, pools[0])
    assert prec["name_label"] == "lab-pool" and prec["master"] == make_ref("host", MASTER)
    hosts = sim.call("host.get_all", s)
    assert hosts == [make_ref("host", HOST1), make_ref("host", HOST2)]
    h2 = sim.call("host.get_record", s, hosts[1])
    assert (h2["uuid"], h2["name_label"], h2["address"]) == (HOST2, "xcp-lab-02", "192.0.2.12")
    assert h2["control_domain"] == make_ref("VM", vm_uuid("Control domain on host: xcp-lab-02"))
    assert make_ref("VM", vm_uuid("render-02")) in h2["resident_VMs"]
    assert sim.call("host.get_by_uuid", s, HOST2) == hosts[1]
    assert sim.call("host.get_uuid", s, hosts[1]) == HOST2
    assert sim.call("host.get_name_label", s, hosts[0]) == "xcp-lab-01"
    assert sim.call("host.get_address", s, hosts[0]) == "192.0.2.11"
    recs = sim.call("host.get_all_records", s)
    assert set(recs) == set(hosts)


def test_lookup_errors(sim):
    s = sim.login()
    missing = "deadbeef-0000-4000-8000-000000000000"
    assert fault_of(sim.call, "VM.get_by_uuid", s, missing) == ("UUID_INVALID", ["VM", missing])
    assert fault_of(sim.call, "host.get_by_uuid", s, missing) == ("UUID_INVALID", ["host", missing])
    assert fault_of(sim.call, "VM.get_record", s, "OpaqueRef:x") == ("HANDLE_INVALID", ["VM", "OpaqueRef:x"])
    assert fault_of(sim.call, "host.get_record", s, "OpaqueRef:y") == ("HANDLE_INVALID", ["host", "OpaqueRef:y"])
    # a VM ref is not a host ref
    vm_ref = make_ref("VM", vm_uuid("render-01"))
    assert fault_of(sim.call, "host.get_name_label", s, vm_ref) == ("HANDLE_INVALID", ["host", vm_ref])
    assert fault_of(sim.call, "VM.frobnicate", s) == ("MESSAGE_METHOD_UNKNOWN", ["VM.frobnicate"])
    assert fault_of(sim.call, "VM.get_no_such_field", s, vm_ref) == \
        ("MESSAGE_METHOD_UNKNOWN", ["VM.get_no_such_field"])
    assert fault_of(sim.call, "VM.get_record", s) == ("MESSAGE_PARAMETER_COUNT_MISMATCH", ["VM.get_record", "2", "1"])
    assert fault_of(sim.call, "VM.start", s, vm_ref) == ("MESSAGE_PARAMETER_COUNT_MISMATCH", ["VM.start", "4", "2"])
    assert fault_of(sim.call, "sim.get_vm") == ("MESSAGE_PARAMETER_COUNT_MISMATCH", ["sim.get_vm", "1", "0"])


def test_get_by_name_label_returns_all_matches(sim):
    s = sim.login()
    twins = sim.call("VM.get_by_name_label", s, "twin")
    assert sorted(twins) == sorted(make_ref("VM", v["uuid"]) for v in SAMPLE["vms"] if v["name_label"] == "twin")
    assert len(twins) == 2
    assert sim.call("VM.get_by_name_label", s, "Other install media") == [make_ref("VM", vm_uuid("Other install media"))]
    assert sim.call("VM.get_by_name_label", s, "web 01") == [make_ref("VM", vm_uuid("web 01"))]
    assert sim.call("VM.get_by_name_label", s, "no such vm") == []


def test_refs_are_deterministic_across_instances(sim_unix, sim_tcp):
    s1, s2 = sim_unix.login(), sim_tcp.login()
    assert sim_unix.call("VM.get_all", s1) == sim_tcp.call("VM.get_all", s2)
    assert sim_unix.call("VM.get_by_uuid", s1, vm_uuid("db-primary")) == \
        make_ref("VM", vm_uuid("db-primary"))


# ---------------------------------------------------------------------------- platform map


def test_platform_map_operations(sim):
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-01"))
    assert "device-model-args" not in sim.call("VM.get_platform", s, ref)
    assert sim.call("VM.add_to_platform", s, ref, "device-model-args", "-device vgpu-cuda,vm_id=9") == ""
    assert sim.call("VM.get_platform", s, ref)["device-model-args"] == "-device vgpu-cuda,vm_id=9"
    assert fault_of(sim.call, "VM.add_to_platform", s, ref, "device-model-args", "x") == \
        ("MAP_DUPLICATE_KEY", ["VM", "platform", ref, "device-model-args"])
    assert sim.call("VM.remove_from_platform", s, ref, "device-model-args") == ""
    assert sim.call("VM.remove_from_platform", s, ref, "device-model-args") == ""  # absent: no error
    assert "device-model-args" not in sim.get_vm(vm_uuid("render-01"))["platform"]
    sim.call("VM.set_platform", s, ref, {"only": "this"})
    assert sim.call("VM.get_platform", s, ref) == {"only": "this"}
    assert fault_of(sim.call, "VM.set_platform", s, ref, {"n": 1}) == ("FIELD_TYPE_ERROR", ["value"])
    assert fault_of(sim.call, "VM.set_platform", s, "OpaqueRef:gone", {"k": "v"}) == \
        ("HANDLE_INVALID", ["VM", "OpaqueRef:gone"])
    assert sim.get_vm(vm_uuid("render-01"))["platform"] == {"only": "this"}
    assert fault_of(sim.call, "VM.add_to_platform", s, "OpaqueRef:gone", "k", "v") == \
        ("HANDLE_INVALID", ["VM", "OpaqueRef:gone"])


# ---------------------------------------------------------------------------- power states


def test_power_state_transitions(sim):
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-02"))  # Running on host 2
    assert sim.call("VM.get_resident_on", s, ref) == make_ref("host", HOST2)
    assert fault_of(sim.call, "VM.start", s, ref, False, False) == ("VM_BAD_POWER_STATE", [ref, "halted", "running"])
    assert sim.call("VM.clean_shutdown", s, ref) == ""
    rec = sim.get_vm(vm_uuid("render-02"))
    assert (rec["power_state"], rec["resident_on"], rec["domid"]) == ("Halted", "OpaqueRef:NULL", -1)
    assert fault_of(sim.call, "VM.clean_shutdown", s, ref) == ("VM_BAD_POWER_STATE", [ref, "running", "halted"])
    assert fault_of(sim.call, "VM.hard_shutdown", s, ref) == ("VM_BAD_POWER_STATE", [ref, "running", "halted"])
    sim.call("VM.start", s, ref, False, False)
    rec = sim.get_vm(vm_uuid("render-02"))
    assert rec["power_state"] == "Running" and rec["resident_on"] == make_ref("host", MASTER) and rec["domid"] > 0
    sim.call("VM.pause", s, ref)
    assert sim.call("VM.get_power_state", s, ref) == "Paused"
    assert fault_of(sim.call, "VM.clean_shutdown", s, ref) == ("VM_BAD_POWER_STATE", [ref, "running", "paused"])
    sim.call("VM.unpause", s, ref)
    sim.call("VM.suspend", s, ref)
    assert sim.call("VM.get_power_state", s, ref) == "Suspended"
    assert fault_of(sim.call, "VM.start", s, ref, False, False) == ("VM_BAD_POWER_STATE", [ref, "halted", "suspended"])
    sim.call("VM.resume", s, ref, False, False)
    assert sim.call("VM.get_power_state", s, ref) == "Running"
    sim.call("VM.hard_shutdown", s, ref)
    sim.call("VM.start", s, ref, True, False)
    assert sim.call("VM.get_power_state", s, ref) == "Paused"
    tmpl = make_ref("VM", vm_uuid("Other install media"))
    assert fault_of(sim.call, "VM.start", s, tmpl, False, False) == ("VM_IS_TEMPLATE", [tmpl])
    assert fault_of(sim.call, "VM.start", s, ref, "no", False) == ("FIELD_TYPE_ERROR", ["start_paused"])


def test_clean_shutdown_from_each_state(sim):
    s = sim.login()
    for name, state in (("db-primary", "paused"), ("web 01", "suspended"), ("legacy-stub", "halted")):
        ref = make_ref("VM", vm_uuid(name))
        assert fault_of(sim.call, "VM.clean_shutdown", s, ref) == ("VM_BAD_POWER_STATE", [ref, "running", state])


# ---------------------------------------------------------------------------- fault injection


def test_fault_nth_and_times(sim):
    s = sim.login()
    sim.inject_fault("VM.get_all", nth=2, times=2, code="HOST_OFFLINE", params=["h1"])
    results = []
    for _ in range(5):
        try:
            sim.call("VM.get_all", s)
            results.append("ok")
        except XapiFault as e:
            results.append((e.code, e.params))
    assert results == ["ok", ("HOST_OFFLINE", ["h1"]), ("HOST_OFFLINE", ["h1"]), "ok", "ok"]
    assert sim.call("sim.faults") == []  # exhausted faults are gone


def test_fault_default_code_and_other_methods_unaffected(sim):
    s = sim.login()
    sim.inject_fault("VM.get_record")
    ref = make_ref("VM", vm_uuid("render-01"))
    assert sim.call("VM.get_all", s)  # other method: fine
    assert fault_of(sim.call, "VM.get_record", s, ref) == ("INTERNAL_ERROR", [])
    assert sim.call("VM.get_record", s, ref)["uuid"] == vm_uuid("render-01")


def test_fault_does_not_change_state(sim):
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-01"))
    sim.inject_fault("VM.clean_shutdown", code="VM_SHUTDOWN_TIMEOUT", params=[ref, "120"])
    assert fault_of(sim.call, "VM.clean_shutdown", s, ref) == ("VM_SHUTDOWN_TIMEOUT", [ref, "120"])
    assert sim.get_vm(vm_uuid("render-01"))["power_state"] == "Running"


def test_fault_latency_only_and_latency_with_error(sim):
    s = sim.login()
    sim.call("sim.inject_fault", {"method": "pool.get_all", "latency_ms": 300})
    t0 = time.time()
    assert len(sim.call("pool.get_all", s)) == 1
    assert time.time() - t0 >= 0.29
    t0 = time.time()
    sim.call("pool.get_all", s)
    assert time.time() - t0 < 0.25  # only once
    sim.inject_fault("host.get_all", code="INTERNAL_ERROR", params=["slow failure"], latency_ms=200)
    t0 = time.time()
    assert fault_of(sim.call, "host.get_all", s) == ("INTERNAL_ERROR", ["slow failure"])
    assert time.time() - t0 >= 0.19


def test_fault_forever_wildcard_and_clear(sim):
    s = sim.login()
    sim.inject_fault("*", nth=1, times=-1, code="SIM_DOWN")
    for method in ("VM.get_all", "host.get_all", "pool.get_all"):
        assert fault_of(sim.call, method, s) == ("SIM_DOWN", [])
    assert sim.stats()["faults_pending"] == 1
    sim.clear_faults()
    assert sim.call("host.get_all", s)


def test_inject_fault_validation(sim):
    assert fault_of(sim.call, "sim.inject_fault", {"nth": 1})[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(sim.call, "sim.inject_fault", {"method": "x", "nth": 0})[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(sim.call, "sim.inject_fault", {"method": "x", "bogus": 1})[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(sim.call, "sim.nope") == ("MESSAGE_METHOD_UNKNOWN", ["sim.nope"])


def _dropped(sim, method, params):
    """Posts one call on a fresh connection; True when the server closed it without an answer."""
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
    conn = raw_conn(sim)
    try:
        conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
        try:
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return True
        return json.loads(resp.read())
    finally:
        conn.close()


def test_fault_drop_before_closes_without_answer_or_effect(sim):
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-01"))
    sim.inject_fault("VM.add_to_other_config", drop="before")
    assert _dropped(sim, "VM.add_to_other_config", [s, ref, "k", "v"]) is True
    assert "k" not in sim.vm_other_config(vm_uuid("render-01"))
    assert [e["method"] for e in sim.call_log()][-1] == "VM.add_to_other_config"  # it arrived
    # used up: the same call on a new connection is answered and applied
    assert _dropped(sim, "VM.add_to_other_config", [s, ref, "k", "v"]) == {"jsonrpc": "2.0", "result": "", "id": 1}
    assert sim.vm_other_config(vm_uuid("render-01"))["k"] == "v"


def test_fault_drop_after_applies_then_closes(sim):
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-01"))
    sim.inject_fault("VM.add_to_other_config", nth=2, drop="after")
    assert _dropped(sim, "VM.add_to_other_config", [s, ref, "a", "1"])["result"] == ""
    assert _dropped(sim, "VM.add_to_other_config", [s, ref, "b", "2"]) is True
    oc = sim.vm_other_config(vm_uuid("render-01"))
    assert (oc["a"], oc["b"]) == ("1", "2")  # applied although nobody heard about it
    # a retry of the applied call is what xapi would answer to it
    reply = _dropped(sim, "VM.add_to_other_config", [s, ref, "b", "2"])
    assert reply["error"]["message"] == "MAP_DUPLICATE_KEY", reply
    # a call that fails in xapi still ends with a dropped connection and no answer
    sim.inject_fault("VM.add_to_other_config", drop="after")
    assert _dropped(sim, "VM.add_to_other_config", [s, ref, "b", "3"]) is True
    assert sim.vm_other_config(vm_uuid("render-01"))["b"] == "2"


def test_fault_drop_with_latency_and_xmlrpc(sim):
    s = sim.login()
    sim.inject_fault("pool.get_all", drop="before", latency_ms=300)
    t0 = time.time()
    assert _dropped(sim, "pool.get_all", [s]) is True
    assert time.time() - t0 >= 0.29
    sim.inject_fault("pool.get_all", drop="before")
    conn = raw_conn(sim)
    try:
        conn.request("POST", "/RPC2", xmlrpc.client.dumps((s,), "pool.get_all").encode(),
                     {"Content-Type": "text/xml"})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
    finally:
        conn.close()
    assert sim.call("pool.get_all", s)  # the server itself is fine


def test_fault_drop_validation(sim):
    bad = [{"method": "x", "drop": "later"}, {"method": "x", "drop": "before", "code": "X"}]
    for spec in bad:
        assert fault_of(sim.call, "sim.inject_fault", spec)[0] == "SIM_INVALID_ARGUMENT", spec
    sim.inject_fault("VM.get_all", drop="after", times=2)
    assert [(f["drop"], f["code"]) for f in sim.call("sim.faults")] == [("after", None)]
    sim.clear_faults()


def test_fault_slow_beyond_client_timeout_is_applied_late(sim):
    """An answer slower than the caller's timeout: the caller gives up, the call still lands."""
    s = sim.login()
    ref = make_ref("VM", vm_uuid("render-01"))
    sim.inject_fault("VM.add_to_other_config", latency_ms=1500)
    impatient = JsonRpcClient(sim.url, timeout=0.5)
    t0 = time.time()
    with pytest.raises(OSError):  # socket.timeout is an OSError
        impatient.call("VM.add_to_other_config", s, ref, "late", "yes")
    assert time.time() - t0 < 1.4
    assert "late" not in sim.vm_other_config(vm_uuid("render-01"))
    assert sim.wait_idle(10)
    assert sim.vm_other_config(vm_uuid("render-01"))["late"] == "yes"
    impatient.close()


def test_save_and_restore_state(sim):
    s = sim.login()
    u = vm_uuid("render-01")
    ref = make_ref("VM", u)
    sim.call("VM.add_to_platform", s, ref, "device-model-args", "-device x")
    sim.set_vm(u, power_state="Halted")
    sim.set_other_config_key("pool", None, "k", "saved")
    sim.save_state("seeded")
    sim.call("VM.remove_from_platform", s, ref, "device-model-args")
    sim.call("VM.start", s, ref, False, False)
    sim.set_other_config_key("pool", None, "k", "changed")
    sim.inject_fault("VM.get_all")
    sim.restore_state("seeded")
    vm = sim.get_vm(u)
    assert (vm["platform"]["device-model-args"], vm["power_state"]) == ("-device x", "Halted")
    assert sim.pool_other_config()["k"] == "saved"
    assert sim.call("sim.faults") == [] and sim.call_log() == []
    assert sim.call("VM.get_all", s)  # the session survives
    sim.restore_state("seeded")  # as often as needed
    assert fault_of(sim.call, "sim.restore_state", "never-saved")[0] == "SIM_INVALID_ARGUMENT"


def test_calls_run_concurrently(sim):
    s = sim.login()
    sim.inject_fault("VM.get_all", times=4, latency_ms=600)  # latency only
    clients = [sim.client() for _ in range(4)]
    errors = []

    def worker(c):
        try:
            assert len(c.call("VM.get_all", s)) == len(SAMPLE["vms"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.time() - t0
    for c in clients:
        c.close()
    assert not errors
    assert elapsed < 1.8, elapsed  # serial would take 2.4 s
    assert sim.stats()["max_in_flight"] >= 2


# ---------------------------------------------------------------------------- call log


def test_call_log(sim):
    sim.clear_call_log()
    s = sim.call("session.login_with_password", "root", "password", "1.0", "log-test")
    ref = sim.call("VM.get_by_uuid", s, vm_uuid("render-01"))
    sim.call("sim.stats")  # not logged
    with pytest.raises(XapiFault):
        sim.call("VM.get_record", s, "OpaqueRef:bad")  # failures are logged too
    log = sim.call_log()
    assert [e["method"] for e in log] == ["session.login_with_password", "VM.get_by_uuid", "VM.get_record"]
    assert log[0]["params"] == ["root", "password", "1.0", "log-test"]
    assert log[1]["params"] == [s, vm_uuid("render-01")]
    assert log[2]["params"] == [s, "OpaqueRef:bad"]
    assert [e["seq"] for e in log] == sorted(e["seq"] for e in log) and len({e["seq"] for e in log}) == 3
    assert all(e["protocol"] == "jsonrpc" for e in log)
    assert ref.startswith("OpaqueRef:")
    assert sim.call_log("VM.get_by_uuid") == [log[1]]
    xmlrpc_proxy(sim).VM.get_all(s)
    assert sim.call_log()[-1]["protocol"] == "xmlrpc"
    sim.clear_call_log()
    assert sim.call_log() == []


# ---------------------------------------------------------------------------- control methods


def test_control_vm_editing_and_reset(sim):
    s = sim.login()
    u = vm_uuid("ml-train-b")
    rec = sim.set_vm(u, power_state="Running", platform={"device-model-args": "-device vgpu-cuda,vm_id=4"})
    assert rec["power_state"] == "Running" and rec["resident_on"] == make_ref("host", MASTER) and rec["domid"] > 0
    assert sim.get_vm(u)["platform"] == {"device-model-args": "-device vgpu-cuda,vm_id=4"}
    rec = sim.set_vm(u, {"resident_on": HOST2})
    assert rec["resident_on"] == make_ref("host", HOST2)
    added = sim.add_vm(name_label="fresh", power_state="Halted", platform={"a": "b"})
    assert added["ref"] == make_ref("VM", added["uuid"])
    assert sim.call("VM.get_name_label", s, added["ref"]) == "fresh"
    new_uuid = "0a1b2c3d-0000-4000-8000-00000000abcd"
    sim.add_vm({"uuid": new_uuid, "name_label": "twin", "power_state": "Running", "resident_on": HOST2})
    assert len(sim.call("VM.get_by_name_label", s, "twin")) == 3
    assert sim.get_vm(new_uuid)["resident_on"] == make_ref("host", HOST2)
    sim.destroy_vm(added["uuid"])
    assert fault_of(sim.call, "VM.get_record", s, added["ref"]) == ("HANDLE_INVALID", ["VM", added["ref"]])
    assert fault_of(sim.get_vm, added["uuid"]) == ("UUID_INVALID", ["VM", added["uuid"]])
    assert fault_of(sim.set_vm, u, {"power_state": "Exploded"})[0] == "INVALID_VALUE"
    sim.reset()
    assert sim.get_vm(u)["power_state"] == "Halted"
    assert fault_of(sim.get_vm, new_uuid)[0] == "UUID_INVALID"
    assert len(sim.call("VM.get_all", s)) == len(SAMPLE["vms"])  # session survived the reset


def test_set_master(sim):
    s = sim.login()
    sim.set_master(HOST2)
    pool = sim.call("pool.get_all", s)[0]
    assert sim.call("pool.get_master", s, pool) == make_ref("host", HOST2)
    assert sim.stats()["master"] == HOST2


def test_stats(sim):
    sim.clear_call_log()
    s = sim.login()
    sim.call("VM.get_all", s)
    st = sim.stats()
    assert st["calls_by_method"]["VM.get_all"] >= 1
    assert st["vms"] == len(SAMPLE["vms"]) and st["hosts"] == 2
    assert st["url"] == sim.url


# ---------------------------------------------------------------------------- host.call_plugin

PLUGIN_SOURCE = r'''
import http.client, json, os, socket, sys, xmlrpc.client

def out(payload):
    sys.stdout.write(xmlrpc.client.dumps((payload,), methodresponse=True, allow_none=True))

def success(value):
    out({"Status": "Success", "Value": value})

def failure(*desc):
    out({"Status": "Failure", "ErrorDescription": list(desc)})

def environ():
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read().split(b"\0")
        return dict(x.decode().split("=", 1) for x in raw if x)
    except OSError:
        return dict(os.environ)

def xapi(method, *params):
    url = os.environ["VGPU_XAPI"]
    if url.startswith("unix:"):
        class C(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(url[5:])
        conn = C("localhost")
    else:
        host, port = url[7:].split(":")
        conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/jsonrpc", json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}),
                 {"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())

params, fn = xmlrpc.client.loads(sys.argv[1])
session, args = params
if fn == "echo":
    success(json.dumps({"argc": len(sys.argv), "session": session, "args": args, "env": environ()}))
elif fn == "fail":
    failure(args.get("code", "VGPU_TEST_ERROR"), "something failed", '{"k": 1}')
elif fn == "stray":
    print("debug: stray line")
    success("never seen")
elif fn == "crash":
    sys.stdout.write("partial")
    sys.stderr.write("Traceback: boom\n")
    sys.exit(3)
elif fn == "callback":
    r = xapi("VM.get_all_records_where", session, 'field "is_control_domain"="true"')
    success(json.dumps(r))
elif fn == "sleep":
    import time
    time.sleep(float(args["s"]))
    success("slept")
elif fn == "touch":
    with open(args["path"], "a") as f:
        f.write("ran\n")
    success("touched")
else:
    failure("UNKNOWN_XENAPI_PLUGIN_FUNCTION", fn)
'''


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    p = d / "tester"
    p.write_text("#!%s\n%s" % (sys.executable, PLUGIN_SOURCE))
    p.chmod(0o755)
    q = d / "noexec"
    q.write_text(PLUGIN_SOURCE)
    q.chmod(0o644)
    return str(d)


@pytest.fixture(params=["unix", "tcp"])
def psim(request, plugin_dir):
    with Simulator(transport=request.param, plugin_dir=plugin_dir) as sim:
        yield sim


def call_plugin(sim, host_uuid, plugin, fn, args=None):
    s = sim.login()
    return sim.call("host.call_plugin", s, make_ref("host", host_uuid), plugin, fn, args or {})


def test_call_plugin_success_argv_env_session(psim):
    psim.set_plugin_env(HOST2, {"VGPU_DB": "/nonexistent/db.sqlite", "EXTRA": "1"})
    out = json.loads(call_plugin(psim, HOST1, "tester", "echo", {"vm-uuid": "abc", "pool": "A"}))
    assert out["argc"] == 2  # the plugin file and exactly one argument
    assert out["args"] == {"vm-uuid": "abc", "pool": "A"}
    assert set(out["env"]) == {"PATH", "VGPU_HOST_UUID", "VGPU_XAPI"}
    assert out["env"]["VGPU_HOST_UUID"] == HOST1
    assert out["env"]["VGPU_XAPI"] == psim.url
    assert out["env"]["PATH"] == "/sbin:/usr/sbin:/bin:/usr/bin"  # xapi's, not the caller's
    # the session handed to the plugin is a fresh, valid session of the simulator
    assert out["session"].startswith("OpaqueRef:") and out["session"] != psim.session
    assert psim.call("VM.get_all", out["session"])
    out2 = json.loads(call_plugin(psim, HOST2, "tester", "echo"))
    assert out2["env"]["VGPU_HOST_UUID"] == HOST2
    assert set(out2["env"]) == {"PATH", "VGPU_HOST_UUID", "VGPU_XAPI", "VGPU_DB", "EXTRA"}
    assert psim.call("sim.get_plugin_env", HOST2)["VGPU_DB"] == "/nonexistent/db.sqlite"
    psim.set_plugin_env(HOST2, {"EXTRA": None})
    assert "EXTRA" not in json.loads(call_plugin(psim, HOST2, "tester", "echo"))["env"]
    log = psim.call_log("host.call_plugin")
    assert log[0]["params"][1:] == [make_ref("host", HOST1), "tester", "echo", {"vm-uuid": "abc", "pool": "A"}]


def test_call_plugin_failure_is_relayed(psim):
    assert fault_of(call_plugin, psim, HOST1, "tester", "fail", {"code": "VGPU_NOT_REGISTERED"}) == \
        ("VGPU_NOT_REGISTERED", ["something failed", '{"k": 1}'])
    assert fault_of(call_plugin, psim, HOST1, "tester", "nosuchfn") == \
        ("UNKNOWN_XENAPI_PLUGIN_FUNCTION", ["nosuchfn"])


def test_call_plugin_stray_stdout_and_crash(psim):
    code, params = fault_of(call_plugin, psim, HOST1, "tester", "stray")
    assert code == "XENAPI_PLUGIN_FAILURE"
    assert params[0] == "failed to parse plugin output"
    assert params[1].startswith("debug: stray line")
    code, params = fault_of(call_plugin, psim, HOST1, "tester", "crash")
    assert (code, params) == ("XENAPI_PLUGIN_FAILURE", ["non-zero exit", "partial", "Traceback: boom\n"])


def test_call_plugin_missing_and_bad_host(psim):
    assert fault_of(call_plugin, psim, HOST1, "vgpu-nope", "scan") == ("XENAPI_MISSING_PLUGIN", ["vgpu-nope"])
    assert fault_of(call_plugin, psim, HOST1, "../plugins/tester", "echo")[0] == "XENAPI_MISSING_PLUGIN"
    s = psim.login()
    assert fault_of(psim.call, "host.call_plugin", s, "OpaqueRef:nohost", "tester", "echo", {}) == \
        ("HANDLE_INVALID", ["host", "OpaqueRef:nohost"])
    assert fault_of(psim.call, "host.call_plugin", s, make_ref("host", HOST1), "tester", "echo", {"n": 1}) == \
        ("FIELD_TYPE_ERROR", ["args"])
    assert fault_of(psim.call, "host.call_plugin", "OpaqueRef:bad", make_ref("host", HOST1), "tester", "echo", {}) == \
        ("SESSION_INVALID", ["OpaqueRef:bad"])


def test_call_plugin_calls_back_without_deadlock(psim):
    # The plugin calls the simulator while host.call_plugin is still running.
    out = json.loads(call_plugin(psim, HOST2, "tester", "callback"))
    assert out["jsonrpc"] == "2.0"
    assert sorted(r["name_label"] for r in out["result"].values()) == [
        "Control domain on host: xcp-lab-01", "Control domain on host: xcp-lab-02"]


def test_call_plugin_runs_concurrently(psim):
    results = []

    def worker():
        c = psim.client()
        s = c.call("session.login_with_password", "root", "password")
        results.append(c.call("host.call_plugin", s, make_ref("host", HOST1), "tester", "sleep", {"s": "1.0"}))
        c.close()

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == ["slept"] * 3
    assert time.time() - t0 < 2.6  # serial: 3 s plus start-up


def test_plugin_python(psim):
    code, params = fault_of(call_plugin, psim, HOST1, "noexec", "echo")
    assert code == "XENAPI_PLUGIN_FAILURE" and params[0] == "exec failed"
    psim.set_plugin_python(sys.executable)
    out = json.loads(call_plugin(psim, HOST1, "noexec", "echo", {"x": "y"}))
    assert out["args"] == {"x": "y"} and out["argc"] == 2
    assert set(out["env"]) == {"PATH", "VGPU_HOST_UUID", "VGPU_XAPI"}
    psim.set_plugin_python(None)


def test_plugin_python_option(plugin_dir):
    with Simulator(transport="tcp", plugin_dir=plugin_dir, plugin_python=sys.executable) as sim:
        assert json.loads(call_plugin(sim, HOST1, "noexec", "echo"))["argc"] == 2


def test_default_plugin_dir_is_repo_plugin(usim):
    expected = os.path.normpath(os.path.join(PACKAGE_DIR, "..", "..", "plugin"))
    assert usim.stats()["plugin_dir"] == expected


def test_set_plugin_dir_per_host(psim, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    psim.set_plugin_dir(HOST2, str(empty))
    assert fault_of(call_plugin, psim, HOST2, "tester", "echo") == ("XENAPI_MISSING_PLUGIN", ["tester"])
    assert json.loads(call_plugin(psim, HOST1, "tester", "echo"))["argc"] == 2
    psim.set_plugin_dir(HOST2, None)
    assert json.loads(call_plugin(psim, HOST2, "tester", "echo"))["argc"] == 2
    psim.set_plugin_dir(HOST2, str(empty))
    psim.reset()
    assert json.loads(call_plugin(psim, HOST2, "tester", "echo"))["argc"] == 2
    assert fault_of(psim.call, "sim.set_plugin_dir", "nope", None) == ("UUID_INVALID", ["host", "nope"])


# ---------------------------------------------------------------------------- tasks, Async, events
# What the xen-api npm client (Xen Orchestra's connector) needs: system.listMethods on connect,
# Async.* calls answered by a task, task records and event.from to watch them.


def wait_task(sim, s, task):
    deadline = time.time() + 20
    while sim.call("task.get_status", s, task) == "pending":
        assert time.time() < deadline, "task still pending"
        time.sleep(0.05)
    return sim.call("task.get_record", s, task)


def test_list_methods_needs_no_session(sim):
    methods = sim.call("system.listMethods")
    for m in ("VM.get_all_records", "host.get_all_records", "pool.get_all_records", "task.get_all_records",
              "event.from", "event.inject", "task.destroy", "Async.host.call_plugin", "host.call_plugin"):
        assert m in methods, m
    assert methods == sorted(methods)
    assert "Async.VM.get_record" not in methods


def test_async_call_plugin_is_a_task(psim):
    s = psim.login()
    host = make_ref("host", HOST1)
    task = psim.call("Async.host.call_plugin", s, host, "tester", "echo", {"k": "<&>"})
    assert task.startswith("OpaqueRef:")
    rec = wait_task(psim, s, task)
    assert rec["status"] == "success" and rec["progress"] == 1.0
    assert rec["name_label"] == "Async.host.call_plugin"
    assert rec["resident_on"] == make_ref("host", MASTER)
    assert rec["created"] <= rec["finished"]
    # the result is the XML-RPC encoding of the string the plugin returned
    m = re.match(r"^<value>(.*)</value>$", rec["result"], re.S)
    assert m, rec["result"]
    out = json.loads(xmlrpc.client.loads("<params><param><value>%s</value></param></params>" % m.group(1))[0][0])
    assert out["args"] == {"k": "<&>"}
    assert task in psim.call("task.get_all", s)
    assert psim.call("task.get_by_uuid", s, rec["uuid"]) == task
    psim.call("task.destroy", s, task)
    assert fault_of(psim.call, "task.get_record", s, task) == ("HANDLE_INVALID", ["task", task])
    assert psim.stats()["tasks"] == 0


def test_async_failures(psim):
    s = psim.login()
    host = make_ref("host", HOST1)
    task = psim.call("Async.host.call_plugin", s, host, "tester", "fail", {"code": "VGPU_NOT_REGISTERED"})
    rec = wait_task(psim, s, task)
    assert rec["status"] == "failure" and rec["result"] == ""
    assert rec["error_info"] == ["VGPU_NOT_REGISTERED", "something failed", '{"k": 1}']
    task = psim.call("Async.host.call_plugin", s, host, "nope", "x", {})
    assert wait_task(psim, s, task)["error_info"] == ["XENAPI_MISSING_PLUGIN", "nope"]
    # checked before any task exists
    assert fault_of(psim.call, "Async.host.call_plugin", "OpaqueRef:bad", host, "tester", "echo", {})[0] == \
        "SESSION_INVALID"
    assert fault_of(psim.call, "Async.host.call_plugin", s, host) == \
        ("MESSAGE_PARAMETER_COUNT_MISMATCH", ["Async.host.call_plugin", "5", "2"])
    assert fault_of(psim.call, "Async.VM.get_record", s, "x") == ("MESSAGE_METHOD_UNKNOWN", ["Async.VM.get_record"])
    # the Async call is what the call log and fault injection see
    psim.inject_fault("Async.host.call_plugin", code="HOST_OFFLINE", params=[host])
    assert fault_of(psim.call, "Async.host.call_plugin", s, host, "tester", "echo", {}) == ("HOST_OFFLINE", [host])
    assert len(psim.call_log("Async.host.call_plugin")) == 5
    assert psim.call_log("host.call_plugin") == []


def test_async_vm_power_operation(sim):
    s = sim.login()
    vm = sim.call("VM.get_by_uuid", s, vm_uuid("render-01"))
    rec = wait_task(sim, s, sim.call("Async.VM.clean_shutdown", s, vm))
    assert rec["status"] == "success" and rec["result"] == ""
    assert sim.call("VM.get_power_state", s, vm) == "Halted"
    rec = wait_task(sim, s, sim.call("Async.VM.clean_shutdown", s, vm))
    assert rec["error_info"] == ["VM_BAD_POWER_STATE", vm, "running", "halted"]


def test_tasks_create_cancel_destroy(sim):
    s = sim.login()
    task = sim.call("task.create", s, "import", "an import")
    rec = sim.call("task.get_record", s, task)
    assert (rec["status"], rec["name_label"], rec["allowed_operations"]) == ("pending", "import", ["cancel"])
    sim.call("task.cancel", s, task)
    assert sim.call("task.get_status", s, task) == "cancelled"
    assert fault_of(sim.call, "task.cancel", s, task)[0] == "OPERATION_NOT_ALLOWED"
    sim.call("task.destroy", s, task)
    assert fault_of(sim.call, "task.destroy", s, task) == ("HANDLE_INVALID", ["task", task])


def test_event_from_reports_changes_after_the_token(sim):
    s = sim.login()
    pool = sim.call("pool.get_all", s)[0]
    token = sim.call("event.inject", s, "pool", pool)
    t0 = time.time()
    idle = sim.call("event.from", s, ["VM", "host"], token, 0.2)
    assert idle["events"] == [] and time.time() - t0 >= 0.15
    assert idle["valid_ref_counts"] == {"vm": len(SAMPLE["vms"]), "host": 2}
    vm = sim.call("VM.get_by_uuid", s, vm_uuid("render-01"))

    def later():
        time.sleep(0.3)
        sim.client().call("VM.set_name_label", s, vm, "renamed")

    threading.Thread(target=later).start()
    t0 = time.time()
    got = sim.call("event.from", s, ["VM"], token, 10.0)
    assert time.time() - t0 < 5, "event.from waits for the change, not for its timeout"
    assert [(e["class"], e["operation"], e["ref"]) for e in got["events"]] == [("vm", "mod", vm)]
    assert got["events"][0]["snapshot"]["name_label"] == "renamed"
    assert got["token"] > token
    # a deleted object and a new one; classes filter; "*" is every class
    sim.destroy_vm(vm_uuid("render-02"))
    added = sim.add_vm(name_label="fresh")
    got2 = sim.call("event.from", s, ["vm"], got["token"], 5.0)
    ops = {(e["operation"], e["ref"]) for e in got2["events"]}
    assert ("del", make_ref("VM", vm_uuid("render-02"))) in ops and ("add", added["ref"]) in ops
    everything = sim.call("event.from", s, ["*"], "", 0)
    assert {"vm", "host", "pool"} <= {e["class"] for e in everything["events"]}
    assert fault_of(sim.call, "event.from", s, ["VM"], "garbage", 0) == ("EVENT_FROM_TOKEN_PARSE_FAILURE", ["garbage"])
    assert fault_of(sim.call, "event.inject", s, "pool", "OpaqueRef:nope") == \
        ("HANDLE_INVALID", ["pool", "OpaqueRef:nope"])


def test_event_from_sees_a_task_come_and_go(psim):
    s = psim.login()
    pool = psim.call("pool.get_all", s)[0]
    token = psim.call("event.inject", s, "pool", pool)
    task = psim.call("Async.host.call_plugin", s, make_ref("host", HOST1), "tester", "echo", {})
    seen = []
    deadline = time.time() + 20
    while "success" not in [status for _, status in seen]:
        assert time.time() < deadline
        got = psim.call("event.from", s, ["task"], token, 5.0)
        token = got["token"]
        seen += [(e["operation"], e["snapshot"]["status"]) for e in got["events"] if e["ref"] == task]
    assert seen[0][0] == "add" and seen[-1][1] == "success", seen
    psim.call("task.destroy", s, task)
    got = psim.call("event.from", s, ["task"], token, 5.0)
    assert [(e["operation"], e["ref"]) for e in got["events"]] == [("del", task)]
    assert got["valid_ref_counts"] == {"task": 0}


def test_event_from_ends_when_its_session_is_logged_out(sim):
    s = sim.login()
    other = sim.client()
    s2 = other.call("session.login_with_password", "root", "password")
    token = other.call("event.from", s2, ["VM"], "", 0)["token"]
    result = {}

    def waiter():
        try:
            other.call("event.from", s2, ["VM"], token, 30.0)
        except XapiFault as e:
            result["fault"] = (e.code, e.params)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    t0 = time.time()
    sim.client().call("session.logout", s2)
    t.join(10)
    assert time.time() - t0 < 5
    assert result["fault"] == ("SESSION_INVALID", [s2])
    assert sim.call("VM.get_all", s)  # the other sessions are untouched


# ---------------------------------------------------------------------------- xe stand-in


def run_xe(sim, *args, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XE_SIM_URL", "VGPU_XAPI")}
    env.update(sim.env())
    if sim.transport == "tcp":
        env.update({"XE_SIM_USER": "root", "XE_SIM_PASSWORD": "password"})
    env.update(env_extra)
    return subprocess.run([XE_PATH] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True, timeout=60)


def test_xe_vm_list_format(sim):
    r = run_xe(sim, "vm-list", "name-label=web 01")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "uuid ( RO)           : %s\n"
        "     name-label ( RW): web 01\n"
        "    power-state ( RO): suspended\n\n\n" % vm_uuid("web 01"))
    r = run_xe(sim, "vm-list", "params=uuid", "--minimal", "name-label=twin")
    assert sorted(r.stdout.strip().split(",")) == sorted(v["uuid"] for v in SAMPLE["vms"] if v["name_label"] == "twin")
    r = run_xe(sim, "vm-list", "params=name-label", "--minimal")
    names = r.stdout.strip().split(",")
    assert "Other install media" not in names and "cuda-dev before driver upgrade" not in names  # no templates
    assert "Control domain on host: xcp-lab-01" in names and len(names) == 12
    r = run_xe(sim, "vm-list", "power-state=paused", "params=name-label,resident-on")
    assert r.stdout == "name-label ( RW)     : db-primary\n    resident-on ( RO): %s\n\n\n" % HOST1


def test_xe_vm_param_get(sim):
    r = run_xe(sim, "vm-param-get", "uuid=" + vm_uuid("legacy-stub"), "param-name=platform",
               "param-key=device-model-args")
    assert (r.returncode, r.stdout) == (0, "-device vgpu-stub,pool_id=B,priority=1,vm_id=3\n")
    r = run_xe(sim, "vm-param-get", "uuid=" + vm_uuid("ml-train-a"), "param-name=platform",
               "param-key=device-model-args")
    assert r.stdout == "-global PIIX4_PM.disable_s3=1 -rtc base=localtime\n"
    r = run_xe(sim, "vm-param-get", "uuid=" + vm_uuid("db-primary"), "param-name=power-state")
    assert r.stdout == "paused\n"
    r = run_xe(sim, "vm-param-get", "uuid=" + vm_uuid("render-01"), "param-name=platform",
               "param-key=device-model-args")
    assert r.returncode == 1 and "Key device-model-args not found in map" in r.stderr
    r = run_xe(sim, "vm-param-get", "uuid=00000000-0000-4000-8000-000000000000", "param-name=power-state")
    assert r.returncode == 1
    assert r.stderr == "Error code: UUID_INVALID\nError parameters: VM, 00000000-0000-4000-8000-000000000000\n"


def test_xe_param_set_and_power(sim):
    u = vm_uuid("render-01")
    r = run_xe(sim, "vm-param-set", "uuid=" + u, "platform:device-model-args=-device vgpu-cuda,vm_id=5")
    assert r.returncode == 0, r.stderr
    assert sim.get_vm(u)["platform"]["device-model-args"] == "-device vgpu-cuda,vm_id=5"
    r = run_xe(sim, "vm-param-remove", "uuid=" + u, "param-name=platform", "param-key=device-model-args")
    assert r.returncode == 0 and "device-model-args" not in sim.get_vm(u)["platform"]
    assert run_xe(sim, "vm-shutdown", "uuid=" + u).returncode == 0
    assert sim.get_vm(u)["power_state"] == "Halted"
    r = run_xe(sim, "vm-shutdown", "uuid=" + u)
    assert r.returncode == 1 and r.stderr.startswith("Error code: VM_BAD_POWER_STATE\n")
    assert run_xe(sim, "vm-start", "vm=render-01").returncode == 0
    assert sim.get_vm(u)["power_state"] == "Running"


def test_xe_host_and_pool_list(sim):
    r = run_xe(sim, "pool-list", "params=master")
    assert r.stdout == "master ( RO)    : %s\n\n\n" % MASTER
    r = run_xe(sim, "host-list", "params=uuid,name-label,address")
    assert r.returncode == 0
    blocks = [b for b in r.stdout.split("\n\n\n") if b.strip()]
    assert len(blocks) == 2
    assert blocks[0].splitlines() == [
        "uuid ( RO)          : %s" % HOST1, "    name-label ( RW): xcp-lab-01", "       address ( RO): 192.0.2.11"]
    r = run_xe(sim, "host-list", "--minimal")
    assert r.stdout == "%s,%s\n" % (HOST1, HOST2)


def test_xe_host_call_plugin(plugin_dir):
    with Simulator(transport="unix", plugin_dir=plugin_dir) as sim:
        r = run_xe(sim, "host-call-plugin", "host-uuid=" + HOST2, "plugin=tester", "fn=echo",
                   "args:vm-name=web 01", "args:expr=a=b")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["args"] == {"vm-name": "web 01", "expr": "a=b"}
        assert out["env"]["VGPU_HOST_UUID"] == HOST2
        r = run_xe(sim, "host-call-plugin", "host-uuid=" + HOST1, "plugin=tester", "fn=fail",
                   "args:code=VGPU_VM_NOT_FOUND")
        assert r.returncode == 1
        assert r.stdout == ""
        assert r.stderr == 'Error code: VGPU_VM_NOT_FOUND\nError parameters: something failed, {"k": 1}\n'
        r = run_xe(sim, "host-call-plugin", "host-uuid=" + HOST1, "plugin=absent", "fn=x")
        assert r.returncode == 1 and r.stderr == "Error code: XENAPI_MISSING_PLUGIN\nError parameters: absent\n"


def test_xe_endpoint_from_vgpu_xapi_and_errors(sim_unix):
    env = {k: v for k, v in os.environ.items() if k not in ("XE_SIM_URL", "VGPU_XAPI")}
    env["VGPU_XAPI"] = sim_unix.url
    r = subprocess.run([XE_PATH, "pool-list", "params=master", "--minimal"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, universal_newlines=True, timeout=60)
    assert r.stdout == MASTER + "\n"
    env.pop("VGPU_XAPI")
    r = subprocess.run([XE_PATH, "vm-list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       universal_newlines=True, timeout=60)
    assert r.returncode == 1 and "XE_SIM_URL" in r.stderr
    r = run_xe(sim_unix, "vm-frobnicate")
    assert r.returncode == 1 and "Unknown command: vm-frobnicate" in r.stderr


def test_xe_tcp_needs_password(sim_tcp):
    r = run_xe(sim_tcp, "host-list", XE_SIM_PASSWORD="wrong")
    assert r.returncode == 1
    assert r.stderr == "Error code: SESSION_AUTHENTICATION_FAILED\nError parameters: root, Authentication failure\n"


# ---------------------------------------------------------------------------- fixtures


def test_sample_fixture_contents():
    vms = SAMPLE["vms"]
    real = [v for v in vms if not v.get("is_a_template") and not v.get("is_a_snapshot")
            and not v.get("is_control_domain")]
    assert len(real) == 10
    states = [v["power_state"] for v in real if v["name_label"] != "twin"]
    assert states.count("Running") >= 4 and states.count("Halted") >= 2
    assert states.count("Paused") == 1 and states.count("Suspended") == 1
    assert len([v for v in vms if v.get("is_control_domain")]) == 2
    assert len([v for v in vms if v.get("is_a_template") and not v.get("is_a_snapshot")]) == 2
    assert len([v for v in vms if v.get("is_a_snapshot")]) == 1
    assert len({v["uuid"] for v in vms}) == len(vms)
    with open(THREE_HOST_FIXTURE) as f:
        three = json.load(f)
    assert len(three["hosts"]) == 3 and three["pool"]["master"] == three["hosts"][0]["uuid"]
    assert len([v for v in three["vms"] if not v.get("is_control_domain")]) == 4


def test_readme_lists_every_fixture_uuid():
    with open(os.path.join(PACKAGE_DIR, "README.md")) as f:
        readme = f.read()
    for path in (SAMPLE_FIXTURE, THREE_HOST_FIXTURE):
        with open(path) as f:
            data = json.load(f)
        for obj in [data["pool"]] + data["hosts"] + data["vms"]:
            assert obj["uuid"] in readme, obj["name_label"]


# ---------------------------------------------------------------------------- pool-wide registry support
# What a registry mirrored in XAPI needs: other_config maps on VM / host / pool, a change of master
# (pool.designate_new_master, HA failover), hosts that go down, slow hosts, and large pools.

HOST1_REF = make_ref("host", HOST1)
HOST2_REF = make_ref("host", HOST2)


def pool_ref(sim, s):
    refs = sim.call("pool.get_all", s)
    assert len(refs) == 1
    return refs[0]


def write_fixture(tmp_path, change, name="fixture.json"):
    data = json.loads(json.dumps(SAMPLE))
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_designate_new_master(sim):
    s = sim.login()
    pool = pool_ref(sim, s)
    assert sim.call("pool.get_master", s, pool) == HOST1_REF
    assert fault_of(sim.call, "pool.designate_new_master", s, "OpaqueRef:nohost") == \
        ("HANDLE_INVALID", ["host", "OpaqueRef:nohost"])
    assert fault_of(sim.call, "pool.designate_new_master", s, make_ref("VM", vm_uuid("render-01"))) == \
        ("HANDLE_INVALID", ["host", make_ref("VM", vm_uuid("render-01"))])
    assert fault_of(sim.call, "pool.designate_new_master", "OpaqueRef:bad", HOST2_REF) == \
        ("SESSION_INVALID", ["OpaqueRef:bad"])
    assert fault_of(sim.call, "pool.designate_new_master", s) == \
        ("MESSAGE_PARAMETER_COUNT_MISMATCH", ["pool.designate_new_master", "2", "1"])
    assert sim.call("pool.designate_new_master", s, HOST1_REF) == ""  # the master already: nothing happens
    assert sim.call("pool.get_master", s, pool) == HOST1_REF
    sim.clear_call_log()
    assert sim.call("pool.designate_new_master", s, HOST2_REF) == ""
    assert sim.call("pool.get_master", s, pool) == HOST2_REF
    assert sim.call("pool.get_record", s, pool)["master"] == HOST2_REF
    assert sim.call("pool.get_all_records", s)[pool]["master"] == HOST2_REF
    assert sim.master_uuid == HOST2
    assert [e["params"] for e in sim.call_log("pool.designate_new_master")] == [[s, HOST2_REF]]
    # both hosts stay live and enabled: a planned change of master takes nobody down
    assert sim.call("host.get_enabled", s, HOST1_REF) is True
    assert sim.call("host.get_enabled", s, HOST2_REF) is True
    assert sim.call("pool.designate_new_master", s, HOST1_REF) == ""  # and back
    assert sim.call("pool.get_master", s, pool) == HOST1_REF


def test_designate_new_master_to_a_host_that_is_down(sim):
    s = sim.login()
    pool = pool_ref(sim, s)
    sim.set_host_live(HOST2, False)
    assert fault_of(sim.call, "pool.designate_new_master", s, HOST2_REF) == ("HOST_OFFLINE", [HOST2_REF])
    assert sim.call("pool.get_master", s, pool) == HOST1_REF
    sim.set_host_live(HOST2, True)
    sim.call("pool.designate_new_master", s, HOST2_REF)
    assert sim.call("pool.get_master", s, pool) == HOST2_REF


def test_designate_new_master_listed_faults_and_async(sim):
    s = sim.login()
    pool = pool_ref(sim, s)
    methods = sim.call("system.listMethods")
    assert "pool.designate_new_master" in methods and "Async.pool.designate_new_master" in methods
    sim.inject_fault("pool.designate_new_master", code="INTERNAL_ERROR", params=["injected"])
    assert fault_of(sim.call, "pool.designate_new_master", s, HOST2_REF) == ("INTERNAL_ERROR", ["injected"])
    assert sim.call("pool.get_master", s, pool) == HOST1_REF  # the fault fired before the change
    task = sim.call("Async.pool.designate_new_master", s, HOST2_REF)
    rec = wait_task(sim, s, task)
    assert (rec["status"], rec["name_label"], rec["result"]) == ("success", "Async.pool.designate_new_master", "")
    assert sim.call("pool.get_master", s, pool) == HOST2_REF
    sim.set_host_live(HOST1, False)
    rec = wait_task(sim, s, sim.call("Async.pool.designate_new_master", s, HOST1_REF))
    assert (rec["status"], rec["error_info"]) == ("failure", ["HOST_OFFLINE", HOST1_REF])
    assert sim.call("pool.get_master", s, pool) == HOST2_REF


def test_designate_new_master_refused_with_ha_enabled(tmp_path):
    path = write_fixture(tmp_path, lambda d: d["pool"].update(ha_enabled=True))
    with Simulator(fixture=path) as sim:
        s = sim.login()
        pool = pool_ref(sim, s)
        assert sim.call("pool.get_ha_enabled", s, pool) is True
        assert fault_of(sim.call, "pool.designate_new_master", s, HOST2_REF) == ("HA_IS_ENABLED", [])
        assert sim.call("pool.designate_new_master", s, HOST1_REF) == ""
        assert sim.call("pool.get_master", s, pool) == HOST1_REF


def test_host_liveness_records_and_host_metrics(sim):
    s = sim.login()
    metrics1 = sim.call("host.get_metrics", s, HOST1_REF)
    metrics2 = sim.call("host.get_metrics", s, HOST2_REF)
    assert metrics1.startswith("OpaqueRef:") and metrics1 != metrics2
    assert sorted(sim.call("host_metrics.get_all", s)) == sorted([metrics1, metrics2])
    assert sim.call("host_metrics.get_live", s, metrics2) is True
    assert sim.call("host.get_enabled", s, HOST2_REF) is True
    sim.set_host_live(HOST2, False)
    assert sim.call("host_metrics.get_live", s, metrics2) is False
    assert sim.call("host_metrics.get_live", s, metrics1) is True
    rec = sim.call("host_metrics.get_record", s, metrics2)
    assert rec["live"] is False and set(rec) >= {"uuid", "memory_total", "memory_free", "live", "last_updated",
                                                  "other_config"}
    assert sim.call("host_metrics.get_by_uuid", s, rec["uuid"]) == metrics2
    assert sim.call("host_metrics.get_all_records", s)[metrics2]["live"] is False
    assert list(sim.call("host_metrics.get_all_records_where", s, 'field "live"="false"')) == [metrics2]
    assert sim.call("host.get_enabled", s, HOST2_REF) is False
    assert sim.call("host.get_record", s, HOST2_REF)["enabled"] is False
    assert sim.call("host.get_all_records", s)[HOST1_REF]["enabled"] is True
    assert sim.get_host(HOST2)["enabled"] is False
    assert sim.stats()["hosts_down"] == [HOST2]
    assert fault_of(sim.call, "host_metrics.get_live", s, "OpaqueRef:nope") == \
        ("HANDLE_INVALID", ["host_metrics", "OpaqueRef:nope"])
    sim.set_host_live(HOST2, True)
    assert sim.call("host_metrics.get_live", s, metrics2) is True
    assert sim.call("host.get_enabled", s, HOST2_REF) is True
    assert sim.stats()["hosts_down"] == []
    assert fault_of(sim.set_host_live, "nope", False) == ("UUID_INVALID", ["host", "nope"])
    assert fault_of(sim.call, "sim.set_host_live", HOST2, "no")[0] == "SIM_INVALID_ARGUMENT"


def test_call_plugin_on_a_host_that_is_down(psim, tmp_path):
    marker = tmp_path / "ran"
    psim.set_host_live(HOST2, False)
    psim.set_plugin_delay(HOST2, 5)  # a host that is down answers at once, whatever its delay
    t0 = time.time()
    assert fault_of(call_plugin, psim, HOST2, "tester", "touch", {"path": str(marker)}) == \
        ("HOST_OFFLINE", [HOST2_REF])
    assert time.time() - t0 < 2
    assert not marker.exists()  # no plugin ran
    s = psim.login()
    rec = wait_task(psim, s, psim.call("Async.host.call_plugin", s, HOST2_REF, "tester", "touch",
                                       {"path": str(marker)}))
    assert (rec["status"], rec["error_info"]) == ("failure", ["HOST_OFFLINE", HOST2_REF])
    assert not marker.exists()
    assert call_plugin(psim, HOST1, "tester", "touch", {"path": str(marker)}) == "touched"  # others work
    assert marker.read_text() == "ran\n"
    psim.set_plugin_delay(HOST2, 0)
    psim.set_host_live(HOST2, True)
    assert call_plugin(psim, HOST2, "tester", "touch", {"path": str(marker)}) == "touched"
    assert marker.read_text() == "ran\nran\n"
    # a master that is down (and nobody took over) cannot be reached either
    psim.set_host_live(HOST1, False)
    assert fault_of(call_plugin, psim, HOST1, "tester", "echo") == ("HOST_OFFLINE", [HOST1_REF])


def test_fail_master(psim):
    s = psim.login()
    pool = pool_ref(psim, s)
    metrics1 = psim.call("host.get_metrics", s, HOST1_REF)
    assert psim.fail_master(HOST2) == ""
    assert psim.call("pool.get_master", s, pool) == HOST2_REF
    assert psim.master_uuid == HOST2
    assert psim.call("host_metrics.get_live", s, metrics1) is False
    assert psim.call("host.get_enabled", s, HOST1_REF) is False
    assert psim.call("host.get_enabled", s, HOST2_REF) is True
    assert fault_of(call_plugin, psim, HOST1, "tester", "echo") == ("HOST_OFFLINE", [HOST1_REF])
    assert json.loads(call_plugin(psim, HOST2, "tester", "echo"))["env"]["VGPU_HOST_UUID"] == HOST2
    assert fault_of(psim.call, "pool.designate_new_master", s, HOST1_REF) == ("HOST_OFFLINE", [HOST1_REF])
    assert fault_of(psim.fail_master, HOST2)[0] == "SIM_INVALID_ARGUMENT"  # it is the master already
    assert fault_of(psim.fail_master, HOST1) == ("HOST_OFFLINE", [HOST1_REF])  # down: cannot take over
    assert fault_of(psim.fail_master, "nope") == ("UUID_INVALID", ["host", "nope"])
    assert psim.call("pool.get_master", s, pool) == HOST2_REF
    psim.set_host_live(HOST1, True)  # the old master comes back as an ordinary member
    assert psim.call("pool.get_master", s, pool) == HOST2_REF
    assert json.loads(call_plugin(psim, HOST1, "tester", "echo"))["argc"] == 2


def test_fail_master_is_one_step(tmp_path):
    # Readers never see the pool without a live master, or a dead host as master.
    path = write_fixture(tmp_path, lambda d: None)
    with Simulator(fixture=path) as sim:
        s = sim.login()
        stop = threading.Event()
        seen = []
        c = sim.client()

        def reader():
            while not stop.is_set():
                snap = c.call("sim.stats")
                seen.append((snap["master"], tuple(snap["hosts_down"])))

        t = threading.Thread(target=reader)
        t.start()
        time.sleep(0.1)
        sim.fail_master(HOST2)
        time.sleep(0.1)
        stop.set()
        t.join(10)
        c.close()
        assert set(seen) == {(HOST1, ()), (HOST2, (HOST1,))}, set(seen)
        assert sim.call("pool.get_master", s, pool_ref(sim, s)) == HOST2_REF


def test_plugin_delay_per_host_runs_concurrently(psim):
    psim.set_plugin_delay(HOST1, 1.0)
    psim.set_plugin_delay(HOST2, 1.0)
    assert psim.stats()["plugin_delays"] == {HOST1: 1.0, HOST2: 1.0}
    results = {}

    def worker(host):
        c = psim.client()
        s = c.call("session.login_with_password", "root", "password")
        t = time.time()
        out = json.loads(c.call("host.call_plugin", s, make_ref("host", host), "tester", "echo", {}))
        results[host] = (out["env"]["VGPU_HOST_UUID"], time.time() - t)
        c.close()

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(h,)) for h in (HOST1, HOST2)]
    for t in threads:
        t.start()
    # the state lock is free while plugins wait: other calls are answered at once
    time.sleep(0.2)
    t1 = time.time()
    c = psim.client()
    assert len(c.call("VM.get_all", c.call("session.login_with_password", "root", "password"))) == len(SAMPLE["vms"])
    c.close()
    assert time.time() - t1 < 0.5
    for t in threads:
        t.join(20)
    elapsed = time.time() - t0
    assert results[HOST1][0] == HOST1 and results[HOST2][0] == HOST2
    assert results[HOST1][1] >= 1.0 and results[HOST2][1] >= 1.0
    assert elapsed < 1.8, elapsed  # one after the other would take over 2 s
    psim.set_plugin_delay(HOST1, 0)
    t0 = time.time()
    call_plugin(psim, HOST1, "tester", "echo")
    assert time.time() - t0 < 0.9
    assert psim.stats()["plugin_delays"] == {HOST2: 1.0}
    assert fault_of(psim.set_plugin_delay, HOST1, -1)[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(psim.set_plugin_delay, HOST1, "1")[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(psim.set_plugin_delay, "nope", 1) == ("UUID_INVALID", ["host", "nope"])


def test_plugin_delay_lets_a_caller_bound_its_wait(psim):
    psim.set_plugin_delay(HOST2, 3)
    c = JsonRpcClient(psim.url, timeout=0.5)
    s = c.call("session.login_with_password", "root", "password")
    t0 = time.time()
    with pytest.raises(OSError):  # socket.timeout
        c.call("host.call_plugin", s, HOST2_REF, "tester", "echo", {})
    assert time.time() - t0 < 2
    c.close()


@pytest.mark.parametrize("cls", ["VM", "host", "pool"])
def test_other_config_map_operations(sim, cls):
    s = sim.login()
    ref = {"VM": make_ref("VM", vm_uuid("render-01")), "host": HOST2_REF, "pool": None}[cls] or pool_ref(sim, s)
    before = sim.call(cls + ".get_other_config", s, ref)
    assert "vgpu-registry" not in before
    doc = '{"vm_id":1,"pool":"A","priority":"high"}'
    assert sim.call(cls + ".add_to_other_config", s, ref, "vgpu-registry", doc) == ""
    after = sim.call(cls + ".get_other_config", s, ref)
    assert after == dict(before, **{"vgpu-registry": doc})  # the other keys are kept
    assert sim.call(cls + ".get_record", s, ref)["other_config"]["vgpu-registry"] == doc
    assert sim.call(cls + ".get_all_records", s)[ref]["other_config"]["vgpu-registry"] == doc
    assert fault_of(sim.call, cls + ".add_to_other_config", s, ref, "vgpu-registry", "other") == \
        ("MAP_DUPLICATE_KEY", [cls, "other_config", ref, "vgpu-registry"])
    assert sim.call(cls + ".get_other_config", s, ref)["vgpu-registry"] == doc  # unchanged
    assert fault_of(sim.call, cls + ".add_to_other_config", s, ref, "n", 1) == ("FIELD_TYPE_ERROR", ["value"])
    assert fault_of(sim.call, cls + ".add_to_other_config", s, ref, "n", None) == ("FIELD_TYPE_ERROR", ["value"])
    assert fault_of(sim.call, cls + ".add_to_other_config", s, ref, 5, "v") == ("FIELD_TYPE_ERROR", ["key"])
    assert fault_of(sim.call, cls + ".set_other_config", s, ref, {"k": 2}) == ("FIELD_TYPE_ERROR", ["value"])
    assert fault_of(sim.call, cls + ".add_to_other_config", s, "OpaqueRef:gone", "k", "v") == \
        ("HANDLE_INVALID", [cls, "OpaqueRef:gone"])
    assert sim.call(cls + ".remove_from_other_config", s, ref, "vgpu-registry") == ""
    assert sim.call(cls + ".remove_from_other_config", s, ref, "vgpu-registry") == ""  # absent: fine
    assert sim.call(cls + ".get_other_config", s, ref) == before
    sim.call(cls + ".set_other_config", s, ref, {"only": "this"})
    assert sim.call(cls + ".get_other_config", s, ref) == {"only": "this"}
    # the same map through the control methods
    getter = {"VM": lambda: sim.vm_other_config(vm_uuid("render-01")), "host": lambda: sim.host_other_config(HOST2),
              "pool": sim.pool_other_config}[cls]
    assert getter() == {"only": "this"}


def test_host_other_config_keeps_its_default_keys(sim):
    s = sim.login()
    before = sim.call("host.get_other_config", s, HOST1_REF)
    assert set(before) == {"agent_start_time", "boot_time"}
    sim.call("host.add_to_other_config", s, HOST1_REF, "k", "v")
    sim.call("host.remove_from_other_config", s, HOST1_REF, "boot_time")
    assert sim.call("host.get_other_config", s, HOST1_REF) == {"agent_start_time": before["agent_start_time"],
                                                                 "k": "v"}
    vm = make_ref("VM", vm_uuid("render-01"))
    assert sim.call("VM.get_HVM_boot_params", s, vm) == {"order": "cdn"}
    sim.call("VM.add_to_HVM_boot_params", s, vm, "firmware", "uefi")
    assert sim.call("VM.get_HVM_boot_params", s, vm) == {"order": "cdn", "firmware": "uefi"}


def test_get_all_records_where_shows_other_config(sim):
    s = sim.login()
    vm = make_ref("VM", vm_uuid("cuda-dev"))
    assert "vgpu-registry" not in sim.call("VM.get_all_records_where", s, SCAN_EXPR)[vm]["other_config"]
    sim.call("VM.add_to_other_config", s, vm, "vgpu-registry", "{}")
    recs = sim.call("VM.get_all_records_where", s, SCAN_EXPR)
    assert recs[vm]["other_config"]["vgpu-registry"] == "{}"
    assert sum("vgpu-registry" in r["other_config"] for r in recs.values()) == 1


def test_other_config_controls(sim):
    s = sim.login()
    u = vm_uuid("render-02")
    seeded = sim.vm_other_config(u)
    assert "mac_seed" in seeded and "vgpu-registry" not in seeded
    sim.clear_call_log()
    assert sim.set_other_config_key("VM", u, "vgpu-registry", "{}") == dict(seeded, **{"vgpu-registry": "{}"})
    assert sim.set_other_config_key("host", HOST1, "vgpu-replica", "7")["vgpu-replica"] == "7"
    assert sim.set_other_config_key("pool", None, "vgpu-registry-pools", "[]") == {"vgpu-registry-pools": "[]"}
    pool_uuid = SAMPLE["pool"]["uuid"]
    assert sim.set_other_config_key("pool", pool_uuid, "x", "y") == {"vgpu-registry-pools": "[]", "x": "y"}
    assert sim.call_log() == []  # no XAPI call was made
    assert sim.call("VM.get_other_config", s, make_ref("VM", u)) == dict(seeded, **{"vgpu-registry": "{}"})
    assert sim.call("host.get_other_config", s, HOST1_REF)["vgpu-replica"] == "7"
    assert sim.call("pool.get_other_config", s, pool_ref(sim, s)) == {"vgpu-registry-pools": "[]", "x": "y"}
    assert sim.vm_other_config(u) == dict(seeded, **{"vgpu-registry": "{}"})
    assert sim.host_other_config(HOST1)["vgpu-replica"] == "7"
    assert sim.pool_other_config() == {"vgpu-registry-pools": "[]", "x": "y"}
    assert sim.set_other_config_key("VM", u, "vgpu-registry", None) == seeded
    assert sim.set_other_config_key("VM", u, "absent", None) == seeded
    assert sim.vm_other_config(u) == seeded
    assert fault_of(sim.set_other_config_key, "VM", "nope", "k", "v") == ("UUID_INVALID", ["VM", "nope"])
    assert fault_of(sim.set_other_config_key, "host", "nope", "k", "v") == ("UUID_INVALID", ["host", "nope"])
    assert fault_of(sim.set_other_config_key, "pool", "nope", "k", "v") == ("UUID_INVALID", ["pool", "nope"])
    assert fault_of(sim.set_other_config_key, "SR", None, "k", "v")[0] == "SIM_INVALID_ARGUMENT"
    assert fault_of(sim.set_other_config_key, "VM", u, "k", 3)[0] == "SIM_INVALID_ARGUMENT"
    assert sim.get_pool()["uuid"] == pool_uuid


def test_fixture_seeds_other_config(tmp_path):
    vm = vm_uuid("render-01")

    def seed(d):
        d["pool"]["other_config"] = {"vgpu-registry-pools": '[{"pool_id":"A"}]'}
        d["hosts"][1]["other_config"] = {"vgpu-replica-generation": "4"}
        next(v for v in d["vms"] if v["uuid"] == vm)["other_config"] = {"vgpu-registry": '{"vm_id":5}'}

    with Simulator(fixture=write_fixture(tmp_path, seed)) as sim:
        s = sim.login()
        assert sim.call("pool.get_other_config", s, pool_ref(sim, s)) == {"vgpu-registry-pools": '[{"pool_id":"A"}]'}
        assert sim.call("host.get_other_config", s, HOST2_REF) == {"vgpu-replica-generation": "4"}
        assert set(sim.call("host.get_other_config", s, HOST1_REF)) == {"agent_start_time", "boot_time"}
        assert sim.call("VM.get_all_records_where", s, SCAN_EXPR)[make_ref("VM", vm)]["other_config"] == \
            {"vgpu-registry": '{"vm_id":5}'}
        sim.call("pool.remove_from_other_config", s, pool_ref(sim, s), "vgpu-registry-pools")
        sim.set_other_config_key("host", HOST2, "vgpu-replica-generation", None)
        sim.set_other_config_key("VM", vm, "vgpu-registry", "changed")
        sim.reset()
        assert sim.pool_other_config() == {"vgpu-registry-pools": '[{"pool_id":"A"}]'}
        assert sim.host_other_config(HOST2) == {"vgpu-replica-generation": "4"}
        assert sim.vm_other_config(vm) == {"vgpu-registry": '{"vm_id":5}'}


@pytest.mark.parametrize("where", ["pool", "host"])
def test_fixture_with_a_bad_other_config_is_refused(tmp_path, where):
    def bad(d):
        target = d["pool"] if where == "pool" else d["hosts"][0]
        target["other_config"] = {"n": 1}

    with pytest.raises(RuntimeError) as ei:
        Simulator(fixture=write_fixture(tmp_path, bad)).start()
    assert "map of strings" in str(ei.value)


def test_faults_on_other_config_calls_change_nothing(sim):
    s = sim.login()
    pool = pool_ref(sim, s)
    vm = make_ref("VM", vm_uuid("cuda-dev"))
    seeded = sim.vm_other_config(vm_uuid("cuda-dev"))
    sim.call("VM.add_to_other_config", s, vm, "vgpu-registry", "{}")
    sim.inject_fault("pool.add_to_other_config", nth=1, code="INTERNAL_ERROR", params=["pool write lost"])
    sim.inject_fault("VM.remove_from_other_config", nth=1, code="HOST_OFFLINE", params=[HOST1_REF])
    assert fault_of(sim.call, "pool.add_to_other_config", s, pool, "vgpu-registry-pools", "[]") == \
        ("INTERNAL_ERROR", ["pool write lost"])
    assert "vgpu-registry-pools" not in sim.pool_other_config()
    assert fault_of(sim.call, "VM.remove_from_other_config", s, vm, "vgpu-registry") == \
        ("HOST_OFFLINE", [HOST1_REF])
    assert sim.vm_other_config(vm_uuid("cuda-dev")) == dict(seeded, **{"vgpu-registry": "{}"})
    assert sim.call("sim.faults") == []
    # the next calls go through
    sim.call("pool.add_to_other_config", s, pool, "vgpu-registry-pools", "[]")
    sim.call("VM.remove_from_other_config", s, vm, "vgpu-registry")
    assert sim.pool_other_config() == {"vgpu-registry-pools": "[]"}
    assert sim.vm_other_config(vm_uuid("cuda-dev")) == seeded
    # the second call of a method, and latency only
    sim.inject_fault("VM.add_to_other_config", nth=2, code="INTERNAL_ERROR")
    sim.call("VM.add_to_other_config", s, vm, "a", "1")
    assert fault_of(sim.call, "VM.add_to_other_config", s, vm, "b", "2") == ("INTERNAL_ERROR", [])
    assert sim.vm_other_config(vm_uuid("cuda-dev")) == dict(seeded, a="1")
    sim.inject_fault("pool.remove_from_other_config", latency_ms=300)
    t0 = time.time()
    assert sim.call("pool.remove_from_other_config", s, pool, "vgpu-registry-pools") == ""
    assert time.time() - t0 >= 0.29
    assert sim.pool_other_config() == {}  # a delayed call still applies


def test_reset_restores_master_liveness_delays_and_other_config(sim):
    s = sim.login()
    pool = pool_ref(sim, s)
    vm = vm_uuid("render-01")
    seeded = sim.vm_other_config(vm)
    sim.fail_master(HOST2)
    sim.set_plugin_delay(HOST2, 2.5)
    sim.set_other_config_key("VM", vm, "vgpu-registry", "{}")
    sim.call("pool.add_to_other_config", s, pool, "k", "v")
    sim.call("host.add_to_other_config", s, HOST2_REF, "k", "v")
    st = sim.stats()
    assert (st["master"], st["hosts_down"], st["plugin_delays"]) == (HOST2, [HOST1], {HOST2: 2.5})
    sim.reset()
    st = sim.stats()
    assert (st["master"], st["hosts_down"], st["plugin_delays"]) == (HOST1, [], {})
    assert sim.call("pool.get_master", s, pool) == HOST1_REF
    assert sim.call("host.get_enabled", s, HOST1_REF) is True
    assert sim.call("host_metrics.get_live", s, sim.call("host.get_metrics", s, HOST1_REF)) is True
    assert sim.vm_other_config(vm) == seeded and "vgpu-registry" not in seeded
    assert sim.pool_other_config() == {}
    assert "k" not in sim.host_other_config(HOST2)


def test_cached_records_follow_every_change(sim):
    # get_all_records(_where) answers are reused while nothing changes; every kind of change shows.
    s = sim.login()
    pool = pool_ref(sim, s)
    vm_u = vm_uuid("render-01")
    vm = make_ref("VM", vm_u)

    def scan():
        return sim.call("VM.get_all_records_where", s, SCAN_EXPR)

    first = scan()
    assert scan() == first
    seeded = first[vm]["other_config"]
    sim.call("VM.add_to_other_config", s, vm, "k", "v")
    assert scan()[vm]["other_config"] == dict(seeded, k="v")
    sim.call("VM.clean_shutdown", s, vm)
    assert scan()[vm]["power_state"] == "Halted"
    assert vm not in sim.call("host.get_all_records", s)[HOST1_REF]["resident_VMs"]
    wait_task(sim, s, sim.call("Async.VM.start_on", s, vm, HOST2_REF, False, False))
    assert scan()[vm]["resident_on"] == HOST2_REF
    assert vm in sim.call("host.get_all_records", s)[HOST2_REF]["resident_VMs"]
    sim.set_vm(vm_u, name_label="renamed")
    assert scan()[vm]["name_label"] == "renamed"
    sim.set_other_config_key("VM", vm_u, "k", None)
    assert scan()[vm]["other_config"] == seeded
    added = sim.add_vm(name_label="fresh")
    assert added["ref"] in scan()
    sim.destroy_vm(added["uuid"])
    assert added["ref"] not in scan()
    sim.set_host_live(HOST2, False)
    assert sim.call("host.get_all_records", s)[HOST2_REF]["enabled"] is False
    sim.call("pool.designate_new_master", s, HOST1_REF)
    sim.set_host_live(HOST2, True)
    sim.call("pool.designate_new_master", s, HOST2_REF)
    assert sim.call("pool.get_all_records", s)[pool]["master"] == HOST2_REF
    sim.reset()
    assert scan() == first
    # the XML-RPC answer is the same data
    assert xmlrpc_proxy(sim).VM.get_all_records_where(s, SCAN_EXPR)["Value"].keys() == first.keys()


def test_many_simultaneous_connections(sim):
    # A pool's hosts call the master at once: none may be refused (listen backlog).
    s = sim.login()
    results = []
    barrier = threading.Barrier(40)

    def worker():
        conn = raw_conn(sim)
        barrier.wait(10)
        body = json.dumps({"jsonrpc": "2.0", "method": "pool.get_all", "params": [s], "id": 1})
        conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
        results.append(json.loads(conn.getresponse().read())["result"])
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 40 and all(r == [make_ref("pool", SAMPLE["pool"]["uuid"])] for r in results)


# ---------------------------------------------------------------------------- generated large pools


def test_generated_fixture_shape(tmp_path):
    from xapi_sim.harness import generated_fixture

    path = generated_fixture(tmp_path / "big.json", hosts=16, vms=2000, seed=7)
    assert path == str(tmp_path / "big.json")
    with open(path) as f:
        data = json.load(f)
    hosts = data["hosts"]
    assert [h["name_label"] for h in hosts] == ["host-%02d" % i for i in range(1, 17)]
    assert data["pool"]["master"] == hosts[0]["uuid"]
    host_uuids = [h["uuid"] for h in hosts]
    real = [v for v in data["vms"] if not v["is_control_domain"] and not v["is_a_template"]]
    assert len(real) == 2000
    assert len([v for v in data["vms"] if v["is_control_domain"]]) == 16
    running = [v for v in real if v["power_state"] == "Running"]
    halted = [v for v in real if v["power_state"] == "Halted"]
    assert len(running) == 1200 and len(halted) == 800
    assert {v["resident_on"] for v in running} == set(host_uuids)  # spread over every host
    assert all(v["resident_on"] is None for v in halted)
    assert all("vgpu-registry" not in v["other_config"] and "device-model-args" not in v["platform"]
               for v in data["vms"])
    uuids = [o["uuid"] for o in [data["pool"]] + hosts + data["vms"]]
    assert len(set(uuids)) == len(uuids)
    # deterministic for a seed, different for another
    again = generated_fixture(tmp_path / "again.json", hosts=16, vms=2000, seed=7)
    assert open(again).read() == open(path).read()
    other = generated_fixture(tmp_path / "other.json", hosts=16, vms=2000, seed=8)
    assert json.load(open(other))["hosts"][0]["uuid"] != hosts[0]["uuid"]


def test_generate_command_line(tmp_path):
    from xapi_sim.generate import generated_fixture_data

    out = tmp_path / "g.json"
    p = subprocess.run([sys.executable, "-m", "xapi_sim", "generate", str(out), "--hosts", "3", "--vms", "10",
                        "--seed", "5"], env=dict(os.environ, PYTHONPATH=TESTS_DIR), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == str(out)
    assert json.loads(out.read_text()) == generated_fixture_data(hosts=3, vms=10, seed=5)
    assert [h["name_label"] for h in json.loads(out.read_text())["hosts"]] == ["host-01", "host-02", "host-03"]


def test_generated_pool_served(tmp_path):
    from xapi_sim.harness import generated_fixture

    path = generated_fixture(tmp_path / "big.json", hosts=16, vms=2000, seed=1)
    with open(path) as f:
        data = json.load(f)
    with Simulator(fixture=path) as sim:
        s = sim.login()
        recs = sim.call("VM.get_all_records_where", s, SCAN_EXPR)
        assert len(recs) == 2000
        assert sorted(r["name_label"] for r in recs.values()) == ["vm-%04d" % i for i in range(1, 2001)]
        assert sim.master_uuid == data["hosts"][0]["uuid"]
        assert len(sim.call("host.get_all", s)) == 16
        assert sim.host_uuid("host-16") == data["hosts"][15]["uuid"]
        # the 16 hosts read every VM record at once
        clients = [sim.client() for _ in range(16)]
        counts = []

        def worker(c):
            counts.append(len(c.call("VM.get_all_records_where", s, SCAN_EXPR)))

        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for c in clients:
            c.close()
        assert counts == [2000] * 16

"""HTTP front end of the XAPI simulator: JSON-RPC at /jsonrpc, XML-RPC at / and /RPC2.

Usage (from the repository root)::

    PYTHONPATH=tests python3 -m xapi_sim serve --fixture FILE (--unix PATH | --port N) [options]
    python3 tests/xapi_sim/server.py serve --fixture FILE (--unix PATH | --port N) [options]

Once listening it prints one line, ``LISTENING unix:/abs/path`` or ``LISTENING http://127.0.0.1:PORT``,
on stdout. SIGTERM / SIGINT stop it (the socket file is removed).
"""

import argparse
import json
import os
import signal
import socketserver
import stat
import sys
import threading
import time
import traceback
import xmlrpc.client
from http.server import BaseHTTPRequestHandler

if __package__ in (None, ""):
    # Run as a script: make the package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xapi_sim import plugins  # noqa: E402
from xapi_sim.core import Ctx, Shared, SimCore  # noqa: E402
from xapi_sim.errors import DropConnection, XapiError  # noqa: E402
from xapi_sim.records import XDateTime  # noqa: E402

MAX_BODY = 64 * 1024 * 1024


def _html_500(detail):
    text = (
        "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while "
        "and try again. If the problem persists, please contact your support representative.<h1> Additional "
        "information </h1>%s</body></html>" % (
            detail.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))
    )
    return 500, "text/html", text.encode("utf-8"), True


def _to_xmlrpc(value):
    """xapi's XML-RPC encoding: ints travel as strings, datetimes as dateTime.iso8601, no nil."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, XDateTime):
        return xmlrpc.client.DateTime(str(value))
    if isinstance(value, dict):
        return {str(k): _to_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_xmlrpc(v) for v in value]
    if value is None:
        return ""
    return value


def _json_bytes(value):
    return json.dumps(value).encode("utf-8")


def _xmlrpc_success(value):
    payload = {"Status": "Success", "Value": _to_xmlrpc(value)}
    return xmlrpc.client.dumps((payload,), methodresponse=True, allow_none=True).encode("utf-8")


def _from_xmlrpc(value):
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, xmlrpc.client.Binary):
        return value.data.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _from_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_from_xmlrpc(v) for v in value]
    return value


class App(object):
    """Protocol layer: bytes in, (status, content type, bytes, close) out."""

    def __init__(self, core, log_file=None):
        self.core = core
        self.log_file = log_file
        self.log_lock = threading.Lock()

    def log(self, line):
        if self.log_file is None:
            return
        with self.log_lock:
            self.log_file.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), line))
            self.log_file.flush()

    def _invoke(self, method, params, ctx):
        """Run one call; returns (ok, value_or_XapiError)."""
        t0 = time.time()
        try:
            result = self.core.call(method, params, ctx, shared=True)
            self.log("%s %s %s -> ok (%.1f ms)" % (ctx.transport, ctx.protocol, method, (time.time() - t0) * 1000))
            return True, result
        except DropConnection as e:
            self.log("%s %s %s -> connection dropped (%s applied, %.1f ms)" % (
                ctx.transport, ctx.protocol, method, "call" if e.applied else "nothing", (time.time() - t0) * 1000))
            raise
        except XapiError as e:
            self.log("%s %s %s -> %s %s (%.1f ms)" % (
                ctx.transport, ctx.protocol, method, e.code, json.dumps(e.params)[:300], (time.time() - t0) * 1000))
            return False, e
        except Exception as e:  # a simulator bug: report it the way xapi reports internal errors
            self.log("%s %s %s -> EXCEPTION\n%s" % (ctx.transport, ctx.protocol, method, traceback.format_exc()))
            sys.stderr.write(traceback.format_exc())
            return False, XapiError("INTERNAL_ERROR", ["%s: %s" % (type(e).__name__, e)])

    def jsonrpc(self, body, transport):
        try:
            req = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            return _html_500("Jsonrpc parse error: %s" % e)
        if (not isinstance(req, dict) or not isinstance(req.get("method"), str)
                or not isinstance(req.get("params"), list) or "id" not in req):
            return _html_500('Jsonrpc.Malformed_method_request("%s")' % body.decode("utf-8", "replace")[:200])
        v2 = req.get("jsonrpc") == "2.0"
        ok, value = self._invoke(req["method"], req["params"], Ctx(transport, "jsonrpc"))
        if ok:
            # Spliced by hand to reuse a shared answer's encoding; the bytes are what json.dumps
            # of the whole response would give.
            if isinstance(value, Shared):
                result = value.encode("json", _json_bytes)
            else:
                result = _json_bytes(value)
            req_id = _json_bytes(req["id"])
            if v2:
                body = b'{"jsonrpc": "2.0", "result": ' + result + b', "id": ' + req_id + b'}'
            else:
                body = b'{"result": ' + result + b', "error": null, "id": ' + req_id + b'}'
            return 200, "application/json", body, False
        elif v2:
            resp = {"jsonrpc": "2.0", "error": {"code": 1, "message": value.code, "data": value.params}, "id": req["id"]}
        else:
            resp = {"result": None, "error": [value.code] + value.params, "id": req["id"]}
        return 200, "application/json", json.dumps(resp).encode("utf-8"), False

    def xmlrpc(self, body, transport):
        try:
            params, method = xmlrpc.client.loads(body.decode("utf-8"))
        except Exception as e:
            return _html_500("Xmlrpc.Parse_error(%s)" % e)
        if not method:
            return _html_500('Xmlrpc.Parse_error("close_tag", "open_tag", _)')
        ok, value = self._invoke(method, _from_xmlrpc(list(params)), Ctx(transport, "xmlrpc"))
        if ok and isinstance(value, Shared):
            return 200, "text/xml", value.encode("xmlrpc", _xmlrpc_success), False
        if ok:
            return 200, "text/xml", _xmlrpc_success(value), False
        payload = {"Status": "Failure", "ErrorDescription": [value.code] + value.params}
        out = xmlrpc.client.dumps((payload,), methodresponse=True, allow_none=True)
        return 200, "text/xml", out.encode("utf-8"), False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xapi-sim/1.0"
    timeout = 600  # idle keep-alive connections are dropped after this

    def log_message(self, fmt, *args):  # unix sockets have no client address; keep stderr quiet
        pass

    def log_request(self, code="-", size="-"):
        pass

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status, ctype, data, close=False):
        if close:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_POST(self):
        try:
            body = self._read_body()
        except (ValueError, OSError) as e:
            self._send(*_html_500("bad request body: %s" % e))
            return
        path = self.path.split("?", 1)[0]
        app = self.server.app
        transport = self.server.transport
        try:
            if path.rstrip("/") == "/jsonrpc":
                self._send(*app.jsonrpc(body, transport))
            elif path in ("/", "/RPC2", "/RPC2/"):
                self._send(*app.xmlrpc(body, transport))
            else:
                self._send(404, "text/plain", b"not found\n")
        except DropConnection:
            # A fault: the connection ends with no answer at all, as when xapi or the network
            # goes away mid-call. The server then shuts the socket down.
            self.close_connection = True

    def do_GET(self):
        self._send(404, "text/plain", b"xapi-sim: POST /jsonrpc (JSON-RPC) or / (XML-RPC)\n")


class _Threading(socketserver.ThreadingMixIn):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog of 5 refuses connections (EAGAIN on a unix socket)
    # when a pool's hosts all call at once.
    request_queue_size = 128


class UnixServer(_Threading, socketserver.UnixStreamServer):
    transport = "unix"


class TCPServer(_Threading, socketserver.TCPServer):
    transport = "tcp"
    allow_reuse_address = True


def make_server(args):
    if args.unix:
        path = os.path.abspath(args.unix)
        if os.path.lexists(path):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
            else:
                raise SystemExit("xapi_sim: %s exists and is not a socket" % path)
        server = UnixServer(path, Handler)
        return server, "unix:" + path, path
    server = TCPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    return server, "http://%s:%d" % (host, port), None


def build_parser():
    parser = argparse.ArgumentParser(prog="python3 -m xapi_sim", description="XAPI simulator for vgpu-registry tests")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve XAPI (JSON-RPC and XML-RPC) from a fixture")
    serve.add_argument("--fixture", help="JSON fixture (default: fixtures/sample_pool.json)")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH", help="listen on this unix socket")
    where.add_argument("--port", type=int, metavar="N", help="listen on this TCP port (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default 127.0.0.1)")
    serve.add_argument("--plugin-dir", help="host plugin directory (default: <repo>/plugin)")
    serve.add_argument("--plugin-python", metavar="EXE", help="run plugins as `EXE <file> <arg>`")
    serve.add_argument("--plugin-timeout", type=float, default=plugins.DEFAULT_TIMEOUT,
                       help="safety cap on a plugin's run time in seconds (xapi has none; default 300)")
    serve.add_argument("--log", metavar="FILE", help="append one line per call to FILE")
    gen = sub.add_parser("generate", help="write a generated large pool as a fixture file")
    gen.add_argument("output", help="the fixture file to write")
    gen.add_argument("--hosts", type=int, default=16, help="number of hosts (default 16; the first is master)")
    gen.add_argument("--vms", type=int, default=2000, help="number of ordinary VMs (default 2000)")
    gen.add_argument("--seed", default="0", help="seed of the uuids (default 0)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        from xapi_sim.generate import generated_fixture

        sys.stdout.write(generated_fixture(args.output, hosts=args.hosts, vms=args.vms, seed=args.seed) + "\n")
        return 0
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    log_file = open(args.log, "a") if args.log else None
    core = SimCore(
        fixture_path=os.path.abspath(args.fixture) if args.fixture else None,
        plugin_dir=os.path.abspath(args.plugin_dir) if args.plugin_dir else None,
        plugin_python=args.plugin_python,
        plugin_timeout=args.plugin_timeout,
    )
    server, url, sock_path = make_server(args)
    core.url = url
    server.app = App(core, log_file)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="xapi-sim-serve")
    thread.daemon = True
    thread.start()
    sys.stdout.write("LISTENING %s\n" % url)
    sys.stdout.flush()
    server.app.log("listening on %s (fixture %s)" % (url, core.fixture_path))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        plugins.kill_all()
        if sock_path:
            try:
                os.unlink(sock_path)
            except OSError:
                pass
        server.app.log("stopped")
        if log_file:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

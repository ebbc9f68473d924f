"""A small standard-library XAPI JSON-RPC client (unix socket or http), used by the harness and `xe`.

    c = JsonRpcClient("unix:/run/sim.sock")      # or "http://127.0.0.1:8080"
    s = c.call("session.login_with_password", "root", "password", "1.0", "tests")
    vms = c.call("VM.get_all", s)

Errors from the server raise ``XapiFault(code, params)``; HTTP-level failures raise ``XapiHttpError``.
The connection is kept alive between calls (one per client; calls are serialized by a lock).
"""

import http.client
import itertools
import json
import socket
import threading
from urllib.parse import urlsplit


class XapiFault(Exception):
    """An XAPI error: ``code`` (e.g. "HANDLE_INVALID") and ``params`` (list of strings)."""

    def __init__(self, code, params=()):
        Exception.__init__(self, code, list(params))
        self.code = code
        self.params = list(params)

    def __str__(self):
        return "%s %s" % (self.code, self.params)


class XapiHttpError(Exception):
    def __init__(self, status, body):
        Exception.__init__(self, "HTTP %s: %s" % (status, body[:500]))
        self.status = status
        self.body = body


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=None):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def parse_url(url):
    """("unix", path, None) or ("http", host, port) from ``unix:/p`` / ``http://h:p``."""
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        return "unix", path, None
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("unsupported XAPI url %r (use unix:/path or http://host:port)" % url)
    return "http", parts.hostname or "127.0.0.1", parts.port or 80


class JsonRpcClient(object):
    def __init__(self, url, timeout=120.0, version="2.0"):
        self.url = url
        self.kind, self.host, self.port = parse_url(url)
        self.timeout = timeout
        self.version = version
        self._conn = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def _connect(self):
        if self.kind == "unix":
            return UnixHTTPConnection(self.host, timeout=self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, payload):
        """POST one JSON document to /jsonrpc; returns the decoded response document."""
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        with self._lock:
            for attempt in (0, 1):
                if self._conn is None:
                    self._conn = self._connect()
                try:
                    self._conn.request("POST", "/jsonrpc", body, headers)
                    resp = self._conn.getresponse()
                    data = resp.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    # A kept-alive connection the server closed: retry once on a fresh one.
                    self.close_locked()
                    if attempt:
                        raise
                    continue
                except Exception:
                    self.close_locked()
                    raise
                if resp.will_close:
                    self.close_locked()
                if resp.status != 200:
                    raise XapiHttpError(resp.status, data.decode("utf-8", "replace"))
                return json.loads(data.decode("utf-8"))

    def call(self, method, *params):
        req = {"method": method, "params": list(params), "id": next(self._ids)}
        if self.version == "2.0":
            req["jsonrpc"] = "2.0"
        resp = self.request(req)
        err = resp.get("error")
        if err is not None:
            if isinstance(err, dict):  # v2
                raise XapiFault(err.get("message"), err.get("data") or [])
            if isinstance(err, list) and err:  # v1
                raise XapiFault(err[0], err[1:])
            raise XapiFault(str(err), [])
        return resp.get("result")

    def close_locked(self):
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self):
        with self._lock:
            self.close_locked()

"""The stand-in mediator: its admin socket, served one connection at a time."""

import collections
import json
import os
import socket
import threading
import time

from mediator_sim import db, protocol, texts

MODES = ("normal", "slow", "dead", "drop")

# The mediator's listen queue is small; a dead one fills it, and then connecting blocks.
DEFAULT_BACKLOG = 5
# How long a connection may take to send its request before it counts as a short one.
REQUEST_WAIT_S = 5.0
# How often the accept loop looks whether it should stop.
POLL_S = 0.05

# One request as the stand-in saw it. `command`, `param1`, `param2` are None for a short request;
# `outcome` is "answered", "dropped-short", "dropped-magic", "dropped-mode" (drop mode),
# "unanswered" (dead mode) or "client-gone" (the answer could not be sent); `status` and `text`
# are the answer's, or None.
Request = collections.namedtuple("Request", "raw command param1 param2 outcome status text")


class Mediator(object):
    """A mediator stand-in on `socket_path`, reading the registry database at `db_path`.

    `mode`: "normal"; "slow" (waits `delay` seconds before each answer); "dead" (accepts, reads,
    never answers and holds the connection until the mode changes or it stops, so later clients
    queue, as behind a stuck mediator); "drop" (reads each request and closes without answering).
    `record`: a file that gets one JSON line per event (start, request, reload).
    `create_db`: create the database file and the mediator's tables at start when missing, as the
    mediator does; without it a missing database stays missing ("Database not connected").
    """

    def __init__(self, socket_path, db_path, mode="normal", delay=0.0, record=None,
                 backlog=DEFAULT_BACKLOG, create_db=False):
        if mode not in MODES:
            raise ValueError("mode %r: expected one of %s" % (mode, ", ".join(MODES)))
        self.socket_path = str(socket_path)
        self.db_path = str(db_path)
        self.record_path = str(record) if record is not None else None
        self.backlog = backlog
        self.create_db = create_db
        self._mode = mode
        self._delay = float(delay)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._loaded = collections.OrderedDict()
        self._requests = []
        self._events = []
        self._conn = None
        self._listener = None
        self._thread = None
        self._started_at = None

    # ------------------------------------------------------------------ control

    def start(self):
        """Loads the rate limits, listens (socket mode 0666) and serves on a thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._started_at = time.monotonic()
        self._conn = db.open_db(self.db_path, create=self.create_db)
        try:
            loaded = db.load_at_start(self._conn)
        except db.ConfigError as e:
            self._record({"event": "start", "ok": False, "error": e.text, "detail": e.detail})
        else:
            self._loaded = collections.OrderedDict(loaded)
            self._record({"event": "start", "ok": True, "order": list(loaded),
                          "vms": _json_vms(loaded)})
        if os.path.exists(self.socket_path) or os.path.islink(self.socket_path):
            os.unlink(self.socket_path)  # a stale socket of an earlier run, as daemons do
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o666)
        listener.listen(self.backlog)
        listener.settimeout(POLL_S)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="mediator-sim")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self):
        """Stops serving (a held or slow connection is closed unanswered) and removes the socket."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def set_mode(self, mode, delay=None):
        """Changes the mode (and the slow mode's delay); a held connection of dead mode is
        released (closed unanswered) when the mode changes."""
        if mode not in MODES:
            raise ValueError("mode %r: expected one of %s" % (mode, ", ".join(MODES)))
        with self._changed:
            self._mode = mode
            if delay is not None:
                self._delay = float(delay)
            self._changed.notify_all()

    @property
    def mode(self):
        with self._lock:
            return self._mode

    @property
    def loaded(self):
        """What the mediator holds now: {vm_id: config} in its load order. After the start only
        `max_jobs_per_sec` and `max_queue_depth`; after a reload also `weight`, `quarantined`
        (a bool) and `error_count`."""
        with self._lock:
            return collections.OrderedDict((k, dict(v)) for k, v in self._loaded.items())

    @property
    def requests(self):
        """Every request so far, as `Request` tuples, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self):
        """The events written to the record file (also kept without one), oldest first."""
        with self._lock:
            return [dict(e) for e in self._events]

    def reloads(self):
        """The reload events so far."""
        return [e for e in self.events if e["event"] == "reload"]

    def weight(self, vm_id):
        """The weight the mediator would use for a job of `vm_id` now (it reads it on every
        request): ≤ 0 counts as 50; None when there is no database, column or row."""
        with self._lock:
            return db.weight(self._conn, vm_id)

    # ------------------------------------------------------------------ serving

    def _serve(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            try:
                self._handle(conn)
            finally:
                conn.close()

    def _handle(self, conn):
        conn.settimeout(REQUEST_WAIT_S)
        try:
            raw = conn.recv(protocol.REQUEST.size)
        except (socket.timeout, OSError):
            raw = b""
        mode = self.mode
        if mode == "drop":
            self._note(raw, "dropped-mode")
            return
        if mode == "dead":
            self._note(raw, "unanswered")
            with self._changed:
                while self._mode == "dead" and not self._stopping.is_set():
                    self._changed.wait(1.0)
            return
        if len(raw) < protocol.REQUEST.size:
            self._note(raw, "dropped-short")
            return
        magic, command, param1, param2 = protocol.REQUEST.unpack(raw)
        if magic != protocol.MAGIC:
            self._note(raw, "dropped-magic")
            return
        if mode == "slow":
            if self._stopping.wait(self._delay):
                self._note(raw, "unanswered")
                return
        status, text = self._answer(command, param1)
        try:
            conn.sendall(protocol.encode_answer(status, text))
            outcome = "answered"
        except OSError:
            outcome = "client-gone"
        self._note(raw, outcome, status, text)

    def _answer(self, command, param1):
        if command == protocol.SHOW_METRICS:
            vm_ids = list(self.loaded)
            if param1 == 1:
                return protocol.STATUS_OK, texts.prometheus(vm_ids)
            return protocol.STATUS_OK, texts.summary(vm_ids, time.monotonic() - self._started_at)
        if command == protocol.SHOW_HEALTH:
            return protocol.STATUS_OK, texts.health(list(self.loaded))
        if command == protocol.RELOAD_CONFIG:
            return self._reload()
        if command == protocol.SHOW_CONNECTIONS:
            return protocol.STATUS_OK, texts.connections(self.socket_path)
        return protocol.STATUS_ERROR, texts.unknown_command(command)

    def _reload(self):
        failure = None
        with self._lock:
            if self._conn is None:
                # The database may have appeared since the start.
                self._conn = db.open_db(self.db_path)
            try:
                loaded = db.load_on_reload(self._conn)
            except db.ConfigError as e:
                failure = e
            else:
                self._loaded = collections.OrderedDict(loaded)
        if failure is not None:
            self._record({"event": "reload", "ok": False, "error": failure.text,
                          "detail": failure.detail})
            return protocol.STATUS_ERROR, failure.text
        self._record({"event": "reload", "ok": True, "order": list(loaded),
                      "vms": _json_vms(loaded)})
        return protocol.STATUS_OK, texts.reloaded(len(loaded))

    # ------------------------------------------------------------------ records

    def _note(self, raw, outcome, status=None, text=None):
        if len(raw) == protocol.REQUEST.size:
            _, command, param1, param2 = protocol.REQUEST.unpack(raw)
        else:
            command = param1 = param2 = None
        request = Request(raw, command, param1, param2, outcome, status, text)
        with self._lock:
            self._requests.append(request)
        self._record({"event": "request", "raw": raw.hex(), "command": command, "param1": param1,
                      "param2": param2, "outcome": outcome, "status": status})

    def _record(self, event):
        event = dict(event, time=round(time.time(), 3))
        with self._lock:
            self._events.append(event)
            if self.record_path is not None:
                with open(self.record_path, "a") as f:
                    f.write(json.dumps(event) + "\n")


def _json_vms(loaded):
    return collections.OrderedDict((str(k), v) for k, v in loaded.items())

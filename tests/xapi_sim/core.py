"""The simulator's state and every XAPI / control method, independent of the wire protocol.

``SimCore.call(method, params, ctx)`` is the single entry point: it returns a JSON-able value or
raises ``XapiError``. One lock (``self.lock``) guards all state; it is never held while a plugin
runs or while injected latency elapses, so calls run concurrently and a plugin can call back.
"""

import collections
import copy
import json
import os
import re
import threading
import time
import uuid as uuidlib

import xmlrpc.client

from xapi_sim import filter as xfilter
from xapi_sim import plugins
from xapi_sim.errors import DropConnection, XapiError
from xapi_sim.events import EventTracker, format_token, parse_token
from xapi_sim.records import (
    HOST_FIELDS, HOST_METRICS_FIELDS, NULL_REF, POOL_FIELDS, POWER_STATES, SESSION_FIELDS, TASK_FIELDS, VM_FIELDS,
    VM_MAP_FIELDS, HOST_MAP_FIELDS, POOL_MAP_FIELDS, host_metrics_record, host_record, make_ref, metrics_uuid,
    pool_record, ref_target, resident_index, session_record, snapshot_index, task_record, vm_record,
)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PLUGIN_DIR = os.path.normpath(os.path.join(PACKAGE_DIR, "..", "..", "plugin"))
DEFAULT_FIXTURE = os.path.join(PACKAGE_DIR, "fixtures", "sample_pool.json")
DEFAULT_USERS = {"root": "password"}
# The classes event.from reports, as the API spells them; event records use them in lower case.
EVENT_CLASSES = ("VM", "host", "host_metrics", "pool", "task")
# The methods that have an Async. form here (in xapi: the messages the datamodel marks async).
ASYNC_METHODS = frozenset([
    "host.call_plugin", "VM.start", "VM.start_on", "VM.clean_shutdown", "VM.hard_shutdown", "VM.shutdown",
    "VM.clean_reboot", "VM.hard_reboot", "VM.pause", "VM.unpause", "VM.suspend", "VM.resume",
    "pool.designate_new_master",
])
# Calls that change nothing a VM / host / host_metrics / pool record shows; every other call moves
# the state generation on, which drops the cached records (a new method is safe by default).
_NO_RECORD_CHANGE = frozenset([
    "system.listMethods", "session.login_with_password", "session.logout", "event.from", "event.inject",
    "host.call_plugin", "task.create", "task.cancel", "task.destroy",
])
_READ_ONLY_CONTROLS = frozenset([
    "sim.faults", "sim.call_log", "sim.get_vm", "sim.get_host", "sim.get_pool", "sim.get_plugin_env", "sim.stats",
    "sim.inject_fault", "sim.clear_faults", "sim.clear_call_log",
])
# Classes whose get_all_records(_where) answers are cached per state generation.
_CACHED_CLASSES = ("VM", "host", "host_metrics", "pool")


class Shared(object):
    """A result shared by every call made at one state generation (it is never mutated): the
    server encodes it once per wire format (``encoded``) instead of once per call."""

    __slots__ = ("value", "encoded", "lock")

    def __init__(self, value):
        self.value = value
        self.encoded = {}
        self.lock = threading.Lock()

    def encode(self, fmt, encoder):
        with self.lock:
            data = self.encoded.get(fmt)
            if data is None:
                data = self.encoded[fmt] = encoder(self.value)
            return data


def _mutates(method):
    if method in _NO_RECORD_CHANGE or method.startswith("Async."):
        return False
    return ".get_" not in method


class Ctx(object):
    """Where a call came from: ``transport`` is "unix" or "tcp", ``protocol`` "jsonrpc" or "xmlrpc"."""

    def __init__(self, transport="tcp", protocol="jsonrpc"):
        self.transport = transport
        self.protocol = protocol


def _now_stamp():
    return time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime())


def _is_uuid(value):
    try:
        return isinstance(value, str) and str(uuidlib.UUID(value)) == value.lower()
    except ValueError:
        return False


def _require_str_map(value, name):
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise XapiError("FIELD_TYPE_ERROR", [name])
    return dict(value)


def _fixture_map(value, what):
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("fixture %s must be a map of strings to strings" % what)


def _require_str(value, name):
    if not isinstance(value, str):
        raise XapiError("FIELD_TYPE_ERROR", [name])
    return value


def _require_bool(value, name):
    if not isinstance(value, bool):
        raise XapiError("FIELD_TYPE_ERROR", [name])
    return value


class _Method(object):
    def __init__(self, fn, nargs, session=True):
        # nargs counts every wire parameter, the session ref included (as xapi reports it).
        self.fn = fn
        self.nargs = nargs if isinstance(nargs, tuple) else (nargs, nargs)
        self.session = session


class SimCore(object):
    def __init__(self, fixture_path=None, plugin_dir=None, plugin_python=None, url="", log=None,
                 plugin_timeout=plugins.DEFAULT_TIMEOUT):
        self.lock = threading.RLock()
        self.fixture_path = fixture_path or DEFAULT_FIXTURE
        with open(self.fixture_path) as f:
            self.fixture = json.load(f)
        self.plugin_dir = plugin_dir or DEFAULT_PLUGIN_DIR
        self.default_plugin_python = plugin_python
        self.plugin_timeout = plugin_timeout
        self.url = url
        self.log = log
        self.started = time.time()
        self.sessions = {}
        self.faults = []
        self.fault_seq = 0
        self.call_log = []
        self.seq = 0
        self.counts = collections.Counter()
        self.plugin_calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.events = EventTracker()
        # Waits in event.from release the state lock; every finished call wakes them.
        self.changed = threading.Condition(self.lock)
        # State generation: moved on by every call that may change a record (see _mutates).
        self.gen = 0
        self._cache = {}
        self._cache_gen = -1
        self.saved_states = {}
        self._load(self.fixture)
        self.methods = self._method_table()
        self.controls = self._control_table()

    # ------------------------------------------------------------------ state

    def _load(self, fixture):
        """(Re)build pool, hosts and VMs from the fixture dict; validates references."""
        hosts = collections.OrderedDict()
        for h in fixture.get("hosts", []):
            h = copy.deepcopy(h)
            if not _is_uuid(h.get("uuid", "")):
                raise ValueError("fixture host without a valid uuid: %r" % (h,))
            h.setdefault("name_label", h["uuid"])
            h.setdefault("address", "")
            h.setdefault("plugin_env", {})
            # The record's defaults become the host's own maps, so map operations edit what
            # get_record shows (a first add_to_other_config keeps agent_start_time …).
            defaults = host_record({"uuid": h["uuid"]}, {})
            for field in HOST_MAP_FIELDS:
                h.setdefault(field, defaults[field])
                _fixture_map(h[field], "host %s %s" % (h["uuid"], field))
            hosts[h["uuid"]] = h
        if not hosts:
            raise ValueError("fixture has no hosts")
        pool = copy.deepcopy(fixture.get("pool", {}))
        pool.setdefault("uuid", str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "pool:" + ",".join(hosts))))
        pool.setdefault("name_label", "")
        pool.setdefault("master", next(iter(hosts)))
        if pool["master"] not in hosts:
            raise ValueError("pool master %s is not a fixture host" % pool["master"])
        for field in POOL_MAP_FIELDS:
            pool.setdefault(field, {})
            _fixture_map(pool[field], "pool %s" % field)
        self.hosts = hosts
        self.pool = pool
        self.host_live = {u: True for u in hosts}
        self.plugin_delays = {}
        self.vms = collections.OrderedDict()
        for v in fixture.get("vms", []):
            self._insert_vm(copy.deepcopy(v), from_fixture=True)
        for v in self.vms.values():
            if v.get("snapshot_of") and v["snapshot_of"] not in self.vms:
                raise ValueError("snapshot_of of VM %s names no fixture VM" % v["uuid"])
        self.users = dict(fixture.get("users") or DEFAULT_USERS)
        self.plugin_env_overrides = {}
        self.plugin_python = self.default_plugin_python
        self.host_plugin_dirs = {}
        self.tasks = collections.OrderedDict()
        self.gen += 1

    def _normalize_vm(self, vm, explicit_resident=False):
        ps = vm.get("power_state", "Halted")
        if ps not in POWER_STATES:
            raise XapiError("INVALID_VALUE", ["power_state", str(ps)])
        vm["power_state"] = ps
        if vm.get("resident_on") is not None and vm["resident_on"] not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(vm["resident_on"])])
        if ps in ("Running", "Paused"):
            if not vm.get("resident_on"):
                vm["resident_on"] = self.pool["master"]
            if vm.get("domid", -1) in (None, -1):
                vm["domid"] = 0 if vm.get("is_control_domain") else self._next_domid(vm["resident_on"], vm["uuid"])
        else:
            if not explicit_resident:
                vm["resident_on"] = None
            vm["domid"] = -1

    def _next_domid(self, host_uuid, exclude):
        used = [v.get("domid", -1) for u, v in self.vms.items() if u != exclude and v.get("resident_on") == host_uuid]
        return max([0] + [d for d in used if isinstance(d, int)]) + 1

    def _insert_vm(self, vm, from_fixture=False):
        if "uuid" not in vm or vm["uuid"] is None:
            vm["uuid"] = str(uuidlib.uuid4())
        if not _is_uuid(vm["uuid"]):
            raise XapiError("INVALID_VALUE", ["uuid", str(vm["uuid"])])
        if vm["uuid"] in self.vms:
            raise XapiError("INVALID_VALUE", ["uuid", vm["uuid"], "already exists"])
        vm.setdefault("name_label", "")
        vm.setdefault("name_description", "")
        vm.setdefault("is_a_snapshot", False)
        # Like xapi, snapshots are templates too.
        vm.setdefault("is_a_template", bool(vm["is_a_snapshot"]))
        vm.setdefault("is_control_domain", False)
        vm.setdefault("platform", {})
        vm.setdefault("other_config", {})
        for key in ("resident_on", "affinity"):
            vm[key] = self._host_uuid_of(vm.get(key))
        vm["snapshot_of"] = self._vm_uuid_of(vm.get("snapshot_of"), allow_missing=from_fixture)
        for key in VM_MAP_FIELDS:
            if key in vm:
                _require_str_map(vm[key], key)
        self._normalize_vm(vm)
        self.vms[vm["uuid"]] = vm
        return vm

    def _host_uuid_of(self, value):
        """A host given as uuid or ref (or null) -> host uuid or None."""
        if value in (None, "", NULL_REF):
            return None
        if value in self.hosts:
            return value
        for u in self.hosts:
            if make_ref("host", u) == value:
                return u
        raise XapiError("UUID_INVALID", ["host", str(value)])

    def _vm_uuid_of(self, value, allow_missing=False):
        if value in (None, "", NULL_REF):
            return None
        if value in self.vms or (allow_missing and _is_uuid(value)):
            return value
        for u in self.vms:
            if make_ref("VM", u) == value:
                return u
        raise XapiError("UUID_INVALID", ["VM", str(value)])

    # refs <-> objects

    def _find(self, cls, objects, ref):
        if isinstance(ref, str):
            target = ref_target(ref)
            if target is not None:
                if target[0] == cls and target[1] in objects:
                    return objects[target[1]]
            else:
                for u, obj in objects.items():
                    if make_ref(cls, u) == ref:
                        return obj
        raise XapiError("HANDLE_INVALID", [cls, ref if isinstance(ref, str) else str(ref)])

    def _vm_by_ref(self, ref):
        return self._find("VM", self.vms, ref)

    def _host_by_ref(self, ref):
        return self._find("host", self.hosts, ref)

    def _host_metrics_by_ref(self, ref):
        """The host whose host_metrics object ``ref`` is."""
        if isinstance(ref, str):
            for u, h in self.hosts.items():
                if make_ref("host_metrics", metrics_uuid(u)) == ref:
                    return h
        raise XapiError("HANDLE_INVALID", ["host_metrics", ref if isinstance(ref, str) else str(ref)])

    def _pool_by_ref(self, ref):
        if ref == make_ref("pool", self.pool["uuid"]):
            return self.pool
        raise XapiError("HANDLE_INVALID", ["pool", ref if isinstance(ref, str) else str(ref)])

    def _vm_rec(self, vm, snapshots=None):
        return vm_record(vm, self.vms, lambda u: u in self.hosts, lambda u: u in self.vms, snapshots)

    def _host_rec(self, host, resident=None):
        return host_record(host, self.vms, self.host_live.get(host["uuid"], True), resident)

    def _host_metrics_rec(self, host):
        return host_metrics_record(host["uuid"], self.host_live.get(host["uuid"], True))

    def _pool_rec(self):
        return pool_record(self.pool, lambda u: u in self.hosts)

    def _check_session(self, ref):
        if not isinstance(ref, str) or ref not in self.sessions:
            raise XapiError("SESSION_INVALID", [ref if isinstance(ref, str) else str(ref)])

    def _new_session(self, user, originator, transport):
        ref = "OpaqueRef:" + str(uuidlib.uuid4())
        self.sessions[ref] = {
            "uuid": str(uuidlib.uuid4()),
            "user": user,
            "originator": originator,
            "transport": transport,
            "created": _now_stamp(),
            "this_host": self.pool["master"],
        }
        return ref

    # ------------------------------------------------------------------ dispatch

    def call(self, method, params, ctx=None, shared=False):
        """Run one call. With ``shared``, a cached answer comes back as its ``Shared`` wrapper."""
        result = self._call(method, params, ctx)
        if isinstance(result, Shared) and not shared:
            return result.value
        return result

    def _call(self, method, params, ctx):
        ctx = ctx or Ctx()
        params = list(params) if isinstance(params, (list, tuple)) else [params]
        if not isinstance(method, str):
            raise XapiError("MESSAGE_METHOD_UNKNOWN", [str(method)])
        if method.startswith("sim."):
            return self._control(method, params)
        with self.lock:
            self.seq += 1
            self.call_log.append({
                "seq": self.seq, "method": method, "params": copy.deepcopy(params), "protocol": ctx.protocol,
            })
            self.counts[method] += 1
            latency_ms, failure, drop = self._match_faults(method)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if latency_ms:
                time.sleep(latency_ms / 1000.0)
            if drop == "before":
                raise DropConnection(method, False)
            if failure is not None:
                raise XapiError(failure[0], failure[1])
            if drop == "after":
                try:
                    self._dispatch(method, params, ctx)
                except XapiError:
                    pass  # the caller never learns the outcome either way
                raise DropConnection(method, True)
            return self._dispatch(method, params, ctx)
        finally:
            with self.lock:
                self.in_flight -= 1
            self._after_change()

    def _after_change(self):
        """Once a client watches events, record what this call changed and wake event.from."""
        with self.lock:
            if self.events.active:
                self._event_sync()
                self.changed.notify_all()

    def _event_sync(self):
        current = {}
        for cls in EVENT_CLASSES:
            for u, o in self._objects(cls).items():
                current[(cls.lower(), make_ref(cls, u))] = self._record_of(cls, o)
        self.events.sync(current)

    def _lookup(self, method):
        entry = self.methods.get(method)
        if entry is not None:
            return entry
        m = re.match(r"^(VM|host|host_metrics|pool|session|task)\.get_([A-Za-z0-9_]+)$", method)
        if m:
            cls, field = m.group(1), m.group(2)
            fields = {"VM": VM_FIELDS, "host": HOST_FIELDS, "pool": POOL_FIELDS, "session": SESSION_FIELDS,
                      "task": TASK_FIELDS, "host_metrics": HOST_METRICS_FIELDS}[cls]
            if field in fields or (cls == "VM" and any(field in v for v in self.vms.values())):
                return _Method(self._generic_getter(cls, field), 2)
        return None

    def _dispatch(self, method, params, ctx):
        """The call's answer: a fresh value, or a ``Shared`` one (read-only) for cached reads."""
        if method.startswith("Async."):
            return self._start_async(method, params, ctx)
        entry = self._lookup(method)
        if entry is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", [method])
        lo, hi = entry.nargs
        if not lo <= len(params) <= hi:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", [method, str(hi), str(len(params))])
        if method == "host.call_plugin":
            return self._call_plugin(ctx, *params)
        with self.lock:
            try:
                if entry.session:
                    self._check_session(params[0])
                    result = entry.fn(ctx, *params[1:])
                else:
                    result = entry.fn(ctx, *params)
            finally:
                if _mutates(method):
                    self.gen += 1
            if isinstance(result, Shared):
                return result
            return copy.deepcopy(result)

    def _cached(self, key, build):
        """``build()`` once per state generation, as a ``Shared`` answer (call under the lock)."""
        if self._cache_gen != self.gen:
            self._cache = {}
            self._cache_gen = self.gen
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = Shared(build())
        return hit

    def _all_records(self, cls):
        """{ref: record} of every object of ``cls``, built in one pass (shared: do not mutate)."""
        if cls in _CACHED_CLASSES:
            return self._cached(("records", cls), lambda: self._build_records(cls)).value
        return self._build_records(cls)

    def _build_records(self, cls):
        if cls == "VM":
            snaps = snapshot_index(self.vms)
            return {make_ref("VM", u): self._vm_rec(o, snaps) for u, o in self.vms.items()}
        if cls == "host":
            resident = resident_index(self.vms)
            return {make_ref("host", u): self._host_rec(o, resident) for u, o in self.hosts.items()}
        return {make_ref(cls, u): self._record_of(cls, o) for u, o in self._objects(cls).items()}

    def _match_faults(self, method):
        latency = 0
        failure = None
        drop = None
        for f in list(self.faults):
            if f["method"] not in (method, "*"):
                continue
            f["seen"] += 1
            last = None if f["times"] < 0 else f["nth"] + f["times"] - 1
            if f["seen"] >= f["nth"] and (last is None or f["seen"] <= last):
                f["fired"] += 1
                latency = max(latency, f["latency_ms"] or 0)
                if f["code"] is not None and failure is None:
                    failure = (f["code"], f["params"])
                if f.get("drop") and drop is None:
                    drop = f["drop"]
            if last is not None and f["seen"] >= last:
                self.faults.remove(f)
        return latency, failure, drop

    # ------------------------------------------------------------------ XAPI methods

    def _method_table(self):
        t = {}

        def add(name, fn, nargs, session=True):
            t[name] = _Method(fn, nargs, session)

        add("session.login_with_password", self.session_login_with_password, (2, 4), session=False)
        add("session.logout", self.session_logout, 1, session=False)
        add("session.get_record", self.session_get_record, 2)
        add("system.listMethods", self.system_list_methods, 0, session=False)
        for name in ("VM", "host", "host_metrics", "pool", "task"):
            add(name + ".get_all", self._get_all(name), 1)
            add(name + ".get_all_records", self._get_all_records(name), 1)
            add(name + ".get_all_records_where", self._get_all_records_where(name), 2)
            add(name + ".get_record", self._get_record(name), 2)
            add(name + ".get_by_uuid", self._get_by_uuid(name), 2)
            if name != "host_metrics":  # it has no name_label
                add(name + ".get_by_name_label", self._get_by_name_label(name), 2)
        for field in VM_MAP_FIELDS:
            add("VM.set_" + field, self._map_set("VM", field), 3)
            add("VM.add_to_" + field, self._map_add("VM", field), 4)
            add("VM.remove_from_" + field, self._map_remove("VM", field), 3)
        for field in HOST_MAP_FIELDS:
            add("host.set_" + field, self._map_set("host", field), 3)
            add("host.add_to_" + field, self._map_add("host", field), 4)
            add("host.remove_from_" + field, self._map_remove("host", field), 3)
        for field in POOL_MAP_FIELDS:
            add("pool.set_" + field, self._map_set("pool", field), 3)
            add("pool.add_to_" + field, self._map_add("pool", field), 4)
            add("pool.remove_from_" + field, self._map_remove("pool", field), 3)
        for name in ("VM", "host", "pool"):
            add(name + ".set_name_label", self._str_set(name, "name_label"), 3)
            add(name + ".set_name_description", self._str_set(name, "name_description"), 3)
        add("VM.start", self.vm_start, 4)
        add("VM.start_on", self.vm_start_on, 5)
        add("VM.clean_shutdown", self.vm_clean_shutdown, 2)
        add("VM.hard_shutdown", self.vm_hard_shutdown, 2)
        add("VM.shutdown", self.vm_shutdown, 2)
        add("VM.clean_reboot", self.vm_reboot("running"), 2)
        add("VM.hard_reboot", self.vm_reboot("hard"), 2)
        add("VM.pause", self.vm_pause, 2)
        add("VM.unpause", self.vm_unpause, 2)
        add("VM.suspend", self.vm_suspend, 2)
        add("VM.resume", self.vm_resume, 4)
        add("host.call_plugin", None, 5)
        add("pool.designate_new_master", self.pool_designate_new_master, 2)
        add("task.create", self.task_create, 3)
        add("task.destroy", self.task_destroy, 2)
        add("task.cancel", self.task_cancel, 2)
        add("event.inject", self.event_inject, 3)
        add("event.from", self.event_from, 4, session=False)
        return t

    def _objects(self, cls):
        """uuid -> internal object; host_metrics objects are the hosts (keyed by their metrics uuid)."""
        if cls == "VM":
            return self.vms
        if cls == "host":
            return self.hosts
        if cls == "task":
            return self.tasks
        if cls == "host_metrics":
            return collections.OrderedDict((metrics_uuid(u), h) for u, h in self.hosts.items())
        return {self.pool["uuid"]: self.pool}

    def _record_of(self, cls, obj):
        if cls == "VM":
            return self._vm_rec(obj)
        if cls == "host":
            return self._host_rec(obj)
        if cls == "task":
            return task_record(obj)
        if cls == "host_metrics":
            return self._host_metrics_rec(obj)
        return self._pool_rec()

    def _by_ref(self, cls, ref):
        if cls == "VM":
            return self._vm_by_ref(ref)
        if cls == "host":
            return self._host_by_ref(ref)
        if cls == "task":
            return self._task_by_ref(ref)
        if cls == "host_metrics":
            return self._host_metrics_by_ref(ref)
        return self._pool_by_ref(ref)

    def _task_by_ref(self, ref):
        if isinstance(ref, str):
            for u, task in self.tasks.items():
                if make_ref("task", u) == ref:
                    return task
        raise XapiError("HANDLE_INVALID", ["task", ref if isinstance(ref, str) else str(ref)])

    def _get_all(self, cls):
        return lambda ctx: [make_ref(cls, u) for u in self._objects(cls)]

    def _get_all_records(self, cls):
        def fn(ctx):
            if cls in _CACHED_CLASSES:
                return self._cached(("records", cls), lambda: self._build_records(cls))
            return self._build_records(cls)
        return fn

    def _get_all_records_where(self, cls):
        def build(pred):
            return {ref: rec for ref, rec in self._all_records(cls).items() if pred(rec)}

        def fn(ctx, expr):
            pred = xfilter.compile_filter(_require_str(expr, "expr"))
            if cls in _CACHED_CLASSES:
                return self._cached(("where", cls, expr), lambda: build(pred))
            return build(pred)
        return fn

    def _get_record(self, cls):
        return lambda ctx, ref: self._record_of(cls, self._by_ref(cls, ref))

    def _get_by_uuid(self, cls):
        def fn(ctx, obj_uuid):
            if isinstance(obj_uuid, str) and obj_uuid in self._objects(cls):
                return make_ref(cls, obj_uuid)
            raise XapiError("UUID_INVALID", [cls, obj_uuid if isinstance(obj_uuid, str) else str(obj_uuid)])
        return fn

    def _get_by_name_label(self, cls):
        def fn(ctx, label):
            label = _require_str(label, "label")
            return [make_ref(cls, u) for u, o in self._objects(cls).items() if o.get("name_label") == label]
        return fn

    def _generic_getter(self, cls, field):
        def fn(ctx, ref):
            if cls == "session":
                if ref not in self.sessions:
                    raise XapiError("HANDLE_INVALID", ["session", str(ref)])
                rec = session_record(ref, self.sessions[ref])
            else:
                rec = self._record_of(cls, self._by_ref(cls, ref))
            if field not in rec:
                raise XapiError("MESSAGE_METHOD_UNKNOWN", ["%s.get_%s" % (cls, field)])
            return rec[field]
        return fn

    def _map_set(self, cls, field):
        def fn(ctx, ref, value):
            obj = self._by_ref(cls, ref)
            obj[field] = _require_str_map(value, "value")
            return ""
        return fn

    def _map_of(self, cls, obj, field):
        """The object's own map ``field``; a map it does not hold yet starts as the record shows it
        (HVM_boot_params' "order" …), so an add or remove edits what get_record showed."""
        if field not in obj:
            obj[field] = dict(self._record_of(cls, obj).get(field) or {})
        return obj[field]

    def _map_add(self, cls, field):
        def fn(ctx, ref, key, value):
            obj = self._by_ref(cls, ref)
            key = _require_str(key, "key")
            value = _require_str(value, "value")
            current = self._map_of(cls, obj, field)
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", [cls, field, ref, key])
            current[key] = value
            return ""
        return fn

    def _map_remove(self, cls, field):
        def fn(ctx, ref, key):
            obj = self._by_ref(cls, ref)
            key = _require_str(key, "key")
            self._map_of(cls, obj, field).pop(key, None)
            return ""
        return fn

    def _str_set(self, cls, field):
        def fn(ctx, ref, value):
            obj = self._by_ref(cls, ref)
            obj[field] = _require_str(value, "value")
            return ""
        return fn

    # sessions

    def session_login_with_password(self, ctx, user, password, version="", originator=""):
        user = _require_str(user, "uname")
        password = _require_str(password, "pwd")
        if ctx.transport != "unix":
            if user not in self.users or self.users[user] != password:
                raise XapiError("SESSION_AUTHENTICATION_FAILED", [user, "Authentication failure"])
        return self._new_session(user, originator if isinstance(originator, str) else "", ctx.transport)

    def session_logout(self, ctx, ref):
        self._check_session(ref)
        del self.sessions[ref]
        return ""

    def session_get_record(self, ctx, ref):
        if ref not in self.sessions:
            raise XapiError("HANDLE_INVALID", ["session", str(ref)])
        return session_record(ref, self.sessions[ref])

    # VM lifecycle

    def _power_check(self, ref, vm, allowed, expected):
        if vm.get("is_a_template"):
            raise XapiError("VM_IS_TEMPLATE", [ref])
        if vm.get("is_control_domain"):
            raise XapiError("OPERATION_NOT_ALLOWED", ["This operation is not allowed on the control domain"])
        if vm["power_state"] not in allowed:
            raise XapiError("VM_BAD_POWER_STATE", [ref, expected, vm["power_state"].lower()])

    def _set_power(self, vm, state, host=None):
        vm["power_state"] = state
        if state in ("Running", "Paused"):
            vm["resident_on"] = host or vm.get("resident_on") or self.pool["master"]
            if vm.get("domid", -1) == -1:
                vm["domid"] = self._next_domid(vm["resident_on"], vm["uuid"])
        else:
            vm["resident_on"] = None
            vm["domid"] = -1

    def vm_start(self, ctx, ref, start_paused, force):
        vm = self._vm_by_ref(ref)
        _require_bool(start_paused, "start_paused")
        _require_bool(force, "force")
        self._power_check(ref, vm, ("Halted",), "halted")
        self._set_power(vm, "Paused" if start_paused else "Running", self.pool["master"])
        return ""

    def vm_start_on(self, ctx, ref, host_ref, start_paused, force):
        vm = self._vm_by_ref(ref)
        host = self._host_by_ref(host_ref)
        _require_bool(start_paused, "start_paused")
        _require_bool(force, "force")
        self._power_check(ref, vm, ("Halted",), "halted")
        self._set_power(vm, "Paused" if start_paused else "Running", host["uuid"])
        return ""

    def vm_clean_shutdown(self, ctx, ref):
        vm = self._vm_by_ref(ref)
        self._power_check(ref, vm, ("Running",), "running")
        self._set_power(vm, "Halted")
        return ""

    def vm_hard_shutdown(self, ctx, ref):
        vm = self._vm_by_ref(ref)
        self._power_check(ref, vm, ("Running", "Paused", "Suspended"), "running")
        self._set_power(vm, "Halted")
        return ""

    def vm_shutdown(self, ctx, ref):
        return self.vm_hard_shutdown(ctx, ref)

    def vm_reboot(self, kind):
        def fn(ctx, ref):
            vm = self._vm_by_ref(ref)
            allowed = ("Running",) if kind == "running" else ("Running", "Paused")
            self._power_check(ref, vm, allowed, "running")
            host = vm["resident_on"]
            vm["domid"] = -1
            self._set_power(vm, "Running", host)
            return ""
        return fn

    def vm_pause(self, ctx, ref):
        vm = self._vm_by_ref(ref)
        self._power_check(ref, vm, ("Running",), "running")
        vm["power_state"] = "Paused"
        return ""

    def vm_unpause(self, ctx, ref):
        vm = self._vm_by_ref(ref)
        self._power_check(ref, vm, ("Paused",), "paused")
        vm["power_state"] = "Running"
        return ""

    def vm_suspend(self, ctx, ref):
        vm = self._vm_by_ref(ref)
        self._power_check(ref, vm, ("Running",), "running")
        self._set_power(vm, "Suspended")
        return ""

    def vm_resume(self, ctx, ref, start_paused, force):
        vm = self._vm_by_ref(ref)
        _require_bool(start_paused, "start_paused")
        _require_bool(force, "force")
        self._power_check(ref, vm, ("Suspended",), "suspended")
        self._set_power(vm, "Paused" if start_paused else "Running", self.pool["master"])
        return ""

    # pool

    def pool_designate_new_master(self, ctx, host_ref):
        """As xapi: the call is forwarded to the new master after a liveness check (HOST_OFFLINE);
        on the master itself it does nothing; HA must be off (HA_IS_ENABLED)."""
        host = self._host_by_ref(host_ref)
        if host["uuid"] == self.pool["master"]:
            return ""
        if not self.host_live[host["uuid"]]:
            raise XapiError("HOST_OFFLINE", [host_ref])
        if self.pool.get("ha_enabled"):
            raise XapiError("HA_IS_ENABLED", [])
        self.pool["master"] = host["uuid"]
        return ""

    # host.call_plugin: prepared under the lock, run without it.

    def _call_plugin(self, ctx, session_ref, host_ref, plugin, fn, args):
        with self.lock:
            self._check_session(session_ref)
            host = self._host_by_ref(host_ref)
            plugin = _require_str(plugin, "plugin")
            fn = _require_str(fn, "fn")
            args = _require_str_map(args, "args")
            # xapi forwards the call to the host after checking host_metrics.live (message_forwarding
            # do_op_on / check_live). A master that is down fails the same way here: a real caller
            # could not reach it at all.
            if not self.host_live[host["uuid"]]:
                raise XapiError("HOST_OFFLINE", [host_ref])
            path = plugins.find_plugin(self.host_plugin_dirs.get(host["uuid"], self.plugin_dir), plugin)
            # The host's identity first, so a test can override it (a misconfigured host).
            extra = {"VGPU_HOST_UUID": host["uuid"], "VGPU_XAPI": self.url}
            extra.update({k: str(v) for k, v in (host.get("plugin_env") or {}).items()})
            extra.update(self.plugin_env_overrides.get(host["uuid"], {}))
            env = plugins.plugin_environment(extra)
            plugin_session = self._new_session("root", "xapi-plugin:%s" % plugin, "internal")
            python = self.plugin_python
            delay = self.plugin_delays.get(host["uuid"], 0)
            self.plugin_calls += 1
        if delay:
            time.sleep(delay)
        return plugins.run_plugin(path, fn, plugin_session, args, env, python, self.plugin_timeout)

    # system, tasks, Async calls, events

    def system_list_methods(self, ctx):
        return sorted(list(self.methods) + ["Async." + m for m in ASYNC_METHODS])

    def _new_task(self, label, description="", cancellable=False):
        task_uuid = str(uuidlib.uuid4())
        self.tasks[task_uuid] = {
            "uuid": task_uuid, "name_label": label, "name_description": description, "created": _now_stamp(),
            "status": "pending", "progress": 0.0, "resident_on": self.pool["master"], "cancellable": cancellable,
        }
        return make_ref("task", task_uuid)

    def task_create(self, ctx, label, description):
        return self._new_task(_require_str(label, "label"), _require_str(description, "description"),
                              cancellable=True)

    def task_destroy(self, ctx, ref):
        del self.tasks[self._task_by_ref(ref)["uuid"]]
        return ""

    def task_cancel(self, ctx, ref):
        task = self._task_by_ref(ref)
        if task["status"] != "pending" or not task.get("cancellable"):
            raise XapiError("OPERATION_NOT_ALLOWED", ["task %s cannot be cancelled (%s)" % (ref, task["status"])])
        task.update(status="cancelled", finished=_now_stamp())
        return ""

    def _start_async(self, method, params, ctx):
        """``Async.M``: the checks xapi makes up front, then M on a thread; returns the task ref."""
        inner = method[len("Async."):]
        entry = self._lookup(inner) if inner in ASYNC_METHODS else None
        if entry is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", [method])
        lo, hi = entry.nargs
        if not lo <= len(params) <= hi:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", [method, str(hi), str(len(params))])
        with self.lock:
            self._check_session(params[0])
            ref = self._new_task(method)
            task_uuid = self._task_by_ref(ref)["uuid"]
        threading.Thread(target=self._run_async, args=(task_uuid, inner, params, ctx),
                         name="xapi-sim-" + method, daemon=True).start()
        return ref

    def _run_async(self, task_uuid, method, params, ctx):
        try:
            value = self._dispatch(method, params, ctx)
            if isinstance(value, Shared):
                value = value.value
            fields = {"status": "success", "result": _task_result(value)}
        except XapiError as e:
            fields = {"status": "failure", "error_info": [e.code] + e.params}
        except Exception as e:  # a simulator bug: the task fails the way xapi reports internal errors
            fields = {"status": "failure", "error_info": ["INTERNAL_ERROR", "%s: %s" % (type(e).__name__, e)]}
        with self.lock:
            task = self.tasks.get(task_uuid)  # gone after task.destroy or sim.reset
            if task is not None and task["status"] == "pending":
                task.update(fields, progress=1.0, finished=_now_stamp())
        self._after_change()

    def event_inject(self, ctx, cls, ref):
        name = {c.lower(): c for c in EVENT_CLASSES}.get(_require_str(cls, "class").lower())
        if name is None:
            raise XapiError("HANDLE_INVALID", [cls, str(ref)])
        self._by_ref(name, ref)
        self.events.active = True
        self._event_sync()
        self.events.touch((name.lower(), ref))
        self.changed.notify_all()
        return format_token(self.events.gen)

    def event_from(self, ctx, session_ref, classes, token, timeout):
        """Events newer than ``token``, waiting up to ``timeout`` seconds for one (under the lock,
        which the wait releases). A session logged out meanwhile ends the wait with SESSION_INVALID."""
        self._check_session(session_ref)
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise XapiError("FIELD_TYPE_ERROR", ["classes"])
        since = parse_token(_require_str(token, "token"))
        if since is None:
            raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", [token])
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise XapiError("FIELD_TYPE_ERROR", ["timeout"])
        wanted = [c.lower() for c in classes]
        self.events.active = True
        deadline = time.time() + max(0.0, float(timeout))
        while True:
            self._event_sync()
            found = self.events.since(wanted, since)
            remaining = deadline - time.time()
            if found or remaining <= 0:
                break
            self.changed.wait(remaining)
            self._check_session(session_ref)
        counts = {c.lower(): len(self._objects(c)) for c in EVENT_CLASSES if "*" in wanted or c.lower() in wanted}
        return {"events": found, "valid_ref_counts": counts, "token": format_token(self.events.gen)}

    # ------------------------------------------------------------------ control (sim.*)

    def _control_table(self):
        return {
            "sim.inject_fault": (self.sim_inject_fault, 1),
            "sim.clear_faults": (self.sim_clear_faults, 0),
            "sim.faults": (self.sim_faults, 0),
            "sim.call_log": (self.sim_call_log, 0),
            "sim.clear_call_log": (self.sim_clear_call_log, 0),
            "sim.get_vm": (self.sim_get_vm, 1),
            "sim.set_vm": (self.sim_set_vm, 2),
            "sim.add_vm": (self.sim_add_vm, 1),
            "sim.destroy_vm": (self.sim_destroy_vm, 1),
            "sim.set_master": (self.sim_set_master, 1),
            "sim.set_host_live": (self.sim_set_host_live, 2),
            "sim.fail_master": (self.sim_fail_master, 1),
            "sim.set_plugin_delay": (self.sim_set_plugin_delay, 2),
            "sim.get_host": (self.sim_get_host, 1),
            "sim.get_pool": (self.sim_get_pool, 0),
            "sim.set_other_config_key": (self.sim_set_other_config_key, 4),
            "sim.reset": (self.sim_reset, 0),
            "sim.save_state": (self.sim_save_state, 1),
            "sim.restore_state": (self.sim_restore_state, 1),
            "sim.set_plugin_env": (self.sim_set_plugin_env, 2),
            "sim.get_plugin_env": (self.sim_get_plugin_env, 1),
            "sim.set_plugin_python": (self.sim_set_plugin_python, 1),
            "sim.set_plugin_dir": (self.sim_set_plugin_dir, 2),
            "sim.stats": (self.sim_stats, 0),
        }

    def _control(self, method, params):
        entry = self.controls.get(method)
        if entry is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", [method])
        fn, nargs = entry
        if len(params) != nargs:
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", [method, str(nargs), str(len(params))])
        try:
            with self.lock:
                try:
                    return copy.deepcopy(fn(*params))
                finally:
                    if method not in _READ_ONLY_CONTROLS:
                        self.gen += 1
        finally:
            self._after_change()

    def sim_inject_fault(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
            raise XapiError("SIM_INVALID_ARGUMENT", ["inject_fault needs a struct with a string 'method'"])
        unknown = set(spec) - {"method", "nth", "times", "code", "params", "latency_ms", "drop"}
        if unknown:
            raise XapiError("SIM_INVALID_ARGUMENT", ["unknown keys: " + ", ".join(sorted(unknown))])
        nth = spec.get("nth", 1)
        times = spec.get("times", 1)
        latency = spec.get("latency_ms", 0) or 0
        drop = spec.get("drop")
        if drop not in (None, "before", "after"):
            raise XapiError("SIM_INVALID_ARGUMENT", ['drop must be "before", "after" or null'])
        if "code" in spec:
            code = spec["code"]
        else:
            code = None if (latency or drop) else "INTERNAL_ERROR"
        if drop and code is not None:
            raise XapiError("SIM_INVALID_ARGUMENT", ["a fault either drops the connection or fails with a code"])
        params = spec.get("params", [])
        if not isinstance(nth, int) or isinstance(nth, bool) or nth < 1:
            raise XapiError("SIM_INVALID_ARGUMENT", ["nth must be an integer >= 1"])
        if not isinstance(times, int) or isinstance(times, bool) or not (times >= 1 or times == -1):
            raise XapiError("SIM_INVALID_ARGUMENT", ["times must be an integer >= 1, or -1 (forever)"])
        if not isinstance(latency, (int, float)) or isinstance(latency, bool) or latency < 0:
            raise XapiError("SIM_INVALID_ARGUMENT", ["latency_ms must be a number >= 0"])
        if code is not None and not isinstance(code, str):
            raise XapiError("SIM_INVALID_ARGUMENT", ["code must be a string or null"])
        if not isinstance(params, list):
            raise XapiError("SIM_INVALID_ARGUMENT", ["params must be an array"])
        self.fault_seq += 1
        self.faults.append({
            "id": self.fault_seq, "method": spec["method"], "nth": nth, "times": times, "code": code,
            "params": [p if isinstance(p, str) else json.dumps(p) for p in params],
            "latency_ms": latency, "drop": drop, "seen": 0, "fired": 0,
        })
        return self.fault_seq

    def sim_clear_faults(self):
        self.faults = []
        return ""

    def sim_faults(self):
        return self.faults

    def sim_call_log(self):
        return self.call_log

    def sim_clear_call_log(self):
        self.call_log = []
        return ""

    def _vm_by_uuid(self, vm_uuid):
        if not isinstance(vm_uuid, str) or vm_uuid not in self.vms:
            raise XapiError("UUID_INVALID", ["VM", str(vm_uuid)])
        return self.vms[vm_uuid]

    def sim_get_vm(self, vm_uuid):
        return self._vm_rec(self._vm_by_uuid(vm_uuid))

    def sim_set_vm(self, vm_uuid, fields):
        vm = self._vm_by_uuid(vm_uuid)
        if not isinstance(fields, dict):
            raise XapiError("SIM_INVALID_ARGUMENT", ["fields must be a struct"])
        if "uuid" in fields and fields["uuid"] != vm_uuid:
            raise XapiError("SIM_INVALID_ARGUMENT", ["the uuid cannot be changed"])
        new = copy.deepcopy(vm)
        for key, value in fields.items():
            if key in ("resident_on", "affinity"):
                new[key] = self._host_uuid_of(value)
            elif key == "snapshot_of":
                new[key] = self._vm_uuid_of(value)
            elif key in VM_MAP_FIELDS:
                new[key] = _require_str_map(value, key)
            else:
                new[key] = copy.deepcopy(value)
        if "power_state" in fields and fields["power_state"] != vm["power_state"] and "domid" not in fields:
            new["domid"] = -1
        self._normalize_vm(new, explicit_resident="resident_on" in fields)
        self.vms[vm_uuid] = new
        return self._vm_rec(new)

    def sim_add_vm(self, record):
        if not isinstance(record, dict):
            raise XapiError("SIM_INVALID_ARGUMENT", ["record must be a struct"])
        vm = self._insert_vm(copy.deepcopy(record))
        return {"uuid": vm["uuid"], "ref": make_ref("VM", vm["uuid"])}

    def sim_destroy_vm(self, vm_uuid):
        self._vm_by_uuid(vm_uuid)
        del self.vms[vm_uuid]
        for v in self.vms.values():
            if v.get("snapshot_of") == vm_uuid:
                v["snapshot_of"] = None
        return ""

    def sim_set_master(self, host_uuid):
        if host_uuid not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(host_uuid)])
        self.pool["master"] = host_uuid
        return ""

    def _host_by_uuid(self, host_uuid):
        if not isinstance(host_uuid, str) or host_uuid not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(host_uuid)])
        return self.hosts[host_uuid]

    def sim_set_host_live(self, host_uuid, live):
        self._host_by_uuid(host_uuid)
        if not isinstance(live, bool):
            raise XapiError("SIM_INVALID_ARGUMENT", ["live must be a boolean"])
        self.host_live[host_uuid] = live
        return ""

    def sim_fail_master(self, new_master_uuid):
        """The master goes down and ``new_master_uuid`` takes over, in one step (HA failover)."""
        self._host_by_uuid(new_master_uuid)
        old = self.pool["master"]
        if new_master_uuid == old:
            raise XapiError("SIM_INVALID_ARGUMENT", ["the new master must be another host than the master"])
        if not self.host_live[new_master_uuid]:
            raise XapiError("HOST_OFFLINE", [make_ref("host", new_master_uuid)])
        self.host_live[old] = False
        self.pool["master"] = new_master_uuid
        return ""

    def sim_set_plugin_delay(self, host_uuid, seconds):
        self._host_by_uuid(host_uuid)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise XapiError("SIM_INVALID_ARGUMENT", ["seconds must be a number >= 0"])
        if seconds:
            self.plugin_delays[host_uuid] = float(seconds)
        else:
            self.plugin_delays.pop(host_uuid, None)
        return ""

    def sim_get_host(self, host_uuid):
        return self._host_rec(self._host_by_uuid(host_uuid))

    def sim_get_pool(self):
        return self._pool_rec()

    def sim_set_other_config_key(self, cls, obj_uuid, key, value):
        """Set (or with a null value remove) one other_config key of a VM, host or the pool
        (``obj_uuid`` null or the pool's uuid); returns the resulting map."""
        if cls == "VM":
            obj = self._vm_by_uuid(obj_uuid)
        elif cls == "host":
            obj = self._host_by_uuid(obj_uuid)
        elif cls == "pool":
            if obj_uuid not in (None, self.pool["uuid"]):
                raise XapiError("UUID_INVALID", ["pool", str(obj_uuid)])
            obj = self.pool
        else:
            raise XapiError("SIM_INVALID_ARGUMENT", ["class must be \"VM\", \"host\" or \"pool\""])
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise XapiError("SIM_INVALID_ARGUMENT", ["key must be a string and value a string or null"])
        current = obj.setdefault("other_config", {})
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
        return current

    def sim_reset(self):
        self._load(self.fixture)
        self.faults = []
        self.call_log = []
        return ""

    # The parts of the state XAPI calls change (records and their maps, master, liveness).
    _SAVED = ("hosts", "pool", "vms", "host_live")

    def sim_save_state(self, name):
        if not isinstance(name, str):
            raise XapiError("SIM_INVALID_ARGUMENT", ["name must be a string"])
        self.saved_states[name] = copy.deepcopy({k: getattr(self, k) for k in self._SAVED})
        return ""

    def sim_restore_state(self, name):
        if name not in self.saved_states:
            raise XapiError("SIM_INVALID_ARGUMENT", ["no saved state %r" % (name,)])
        for k, v in copy.deepcopy(self.saved_states[name]).items():
            setattr(self, k, v)
        self.faults = []
        self.call_log = []
        return ""

    def sim_set_plugin_env(self, host_uuid, env):
        if host_uuid not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(host_uuid)])
        if not isinstance(env, dict):
            raise XapiError("SIM_INVALID_ARGUMENT", ["env must be a struct"])
        current = self.plugin_env_overrides.setdefault(host_uuid, {})
        for k, v in env.items():
            if v is None:
                current.pop(k, None)
                self.hosts[host_uuid].get("plugin_env", {}).pop(k, None)
            else:
                current[str(k)] = str(v)
        return ""

    def sim_get_plugin_env(self, host_uuid):
        if host_uuid not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(host_uuid)])
        env = {"VGPU_HOST_UUID": host_uuid, "VGPU_XAPI": self.url}
        env.update(self.hosts[host_uuid].get("plugin_env") or {})
        env.update(self.plugin_env_overrides.get(host_uuid, {}))
        return env

    def sim_set_plugin_python(self, exe):
        if exe is not None and not isinstance(exe, str):
            raise XapiError("SIM_INVALID_ARGUMENT", ["exe must be a string or null"])
        self.plugin_python = exe or None
        return ""

    def sim_set_plugin_dir(self, host_uuid, path):
        if host_uuid not in self.hosts:
            raise XapiError("UUID_INVALID", ["host", str(host_uuid)])
        if path is None:
            self.host_plugin_dirs.pop(host_uuid, None)
        elif isinstance(path, str):
            self.host_plugin_dirs[host_uuid] = path
        else:
            raise XapiError("SIM_INVALID_ARGUMENT", ["path must be a string or null"])
        return ""

    def sim_stats(self):
        return {
            "calls_total": self.seq,
            "calls_by_method": dict(self.counts),
            "sessions": len(self.sessions),
            "faults_pending": len(self.faults),
            "plugin_calls": self.plugin_calls,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "vms": len(self.vms),
            "hosts": len(self.hosts),
            "master": self.pool["master"],
            "hosts_down": [u for u in self.hosts if not self.host_live[u]],
            "plugin_delays": dict(self.plugin_delays),
            "url": self.url,
            "plugin_dir": self.plugin_dir,
            "plugin_python": self.plugin_python,
            "tasks": len(self.tasks),
            "uptime_s": round(time.time() - self.started, 3),
        }


def _task_result(value):
    """A task's ``result`` as xapi stores it: the XML-RPC encoding of the value ("" for void)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return "<value>%s</value>" % plugins._xml_text(value)
    text = xmlrpc.client.dumps((value,))
    return text[text.index("<value>"):text.rindex("</value>") + len("</value>")]

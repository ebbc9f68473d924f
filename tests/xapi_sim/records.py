"""Deterministic opaque refs and xapi-shaped records built from the simulator's state."""

import copy
import uuid as uuidlib

NULL_REF = "OpaqueRef:NULL"

# Fixed namespace so refs are stable across runs: OpaqueRef:<uuid5(ns, "<class>:<uuid>")>.
_REF_NAMESPACE = uuidlib.UUID("6f1c2a36-3f0e-4b7e-9d3a-5c1b2e7f9a10")

POWER_STATES = ("Running", "Halted", "Paused", "Suspended")

EPOCH = "19700101T00:00:00Z"


class XDateTime(str):
    """A string that XML-RPC encodes as <dateTime.iso8601> (JSON: a plain string)."""


# make_ref is pure; remembering both directions turns ref lookups into dict lookups on large pools.
_REFS = {}
_REF_TARGETS = {}


def make_ref(cls, obj_uuid):
    key = (cls, obj_uuid)
    ref = _REFS.get(key)
    if ref is None:
        ref = "OpaqueRef:" + str(uuidlib.uuid5(_REF_NAMESPACE, "%s:%s" % (cls, obj_uuid)))
        if len(_REFS) < 1000000:
            _REFS[key] = ref
            _REF_TARGETS[ref] = key
    return ref


def ref_target(ref):
    """``(class, uuid)`` of a ref ``make_ref`` has made (and remembered) in this process, else None."""
    return _REF_TARGETS.get(ref) if isinstance(ref, str) else None


def metrics_uuid(host_uuid):
    """The uuid of a host's host_metrics object (derived, so stable like refs)."""
    return str(uuidlib.uuid5(_REF_NAMESPACE, "host_metrics:%s" % host_uuid))


def _copy(value):
    """A deep copy of the plain data records hold (dicts, lists, scalars), much faster than
    copy.deepcopy, which dominates building thousands of records."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# Keys of the internal VM/host/pool dicts that are not record fields or need conversion.
VM_REF_FIELDS = {"resident_on": "host", "affinity": "host", "snapshot_of": "VM"}
VM_MAP_FIELDS = ("platform", "other_config", "xenstore_data", "HVM_boot_params", "blocked_operations",
                 "VCPUs_params")
HOST_PRIVATE = ("plugin_env",)
HOST_MAP_FIELDS = ("other_config", "logging")
POOL_MAP_FIELDS = ("other_config", "gui_config")


def _allowed_operations(vm):
    if vm.get("is_a_template") or vm.get("is_control_domain"):
        return [] if vm.get("is_control_domain") else ["clone", "copy", "export", "provision", "destroy"]
    ps = vm.get("power_state")
    return {
        "Running": ["clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause", "suspend",
                    "snapshot", "changing_dynamic_range"],
        "Halted": ["start", "start_on", "clone", "copy", "export", "snapshot", "destroy"],
        "Paused": ["unpause", "hard_shutdown", "hard_reboot", "snapshot"],
        "Suspended": ["resume", "resume_on", "hard_shutdown", "snapshot"],
    }.get(ps, [])


def snapshot_index(vms):
    """uuid -> [uuids of its snapshots], for building many VM records at once."""
    index = {}
    for u, vm in vms.items():
        parent = vm.get("snapshot_of")
        if parent:
            index.setdefault(parent, []).append(u)
    return index


def vm_record(vm, vms, host_exists, vm_exists, snapshots=None):
    """The xapi VM record of internal VM dict ``vm``; ``vms`` is the uuid->vm mapping;
    ``snapshots``: ``snapshot_index(vms)`` when the caller builds many records."""
    is_dom0 = bool(vm.get("is_control_domain"))
    rec = {
        "uuid": vm["uuid"],
        "allowed_operations": _allowed_operations(vm),
        "current_operations": {},
        "name_label": "",
        "name_description": "",
        "power_state": "Halted",
        "user_version": 1,
        "is_a_template": False,
        "is_default_template": False,
        "suspend_VDI": NULL_REF,
        "resident_on": NULL_REF,
        "scheduled_to_be_resident_on": NULL_REF,
        "affinity": NULL_REF,
        "memory_overhead": 11534336,
        "memory_target": 0,
        "memory_static_max": 4294967296,
        "memory_dynamic_max": 4294967296,
        "memory_dynamic_min": 4294967296,
        "memory_static_min": 1073741824,
        "VCPUs_params": {},
        "VCPUs_max": 2,
        "VCPUs_at_startup": 2,
        "actions_after_softreboot": "soft_reboot",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "consoles": [],
        "VIFs": [],
        "VBDs": [],
        "VUSBs": [],
        "crash_dumps": [],
        "VTPMs": [],
        "PV_bootloader": "",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": "",
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "" if is_dom0 else "BIOS order",
        "HVM_boot_params": {} if is_dom0 else {"order": "cdn"},
        "HVM_shadow_multiplier": 1.0,
        "platform": {},
        "PCI_bus": "",
        "other_config": {},
        "domid": -1,
        "domarch": "",
        "last_boot_CPU_flags": {},
        "is_control_domain": False,
        "metrics": NULL_REF,
        "guest_metrics": NULL_REF,
        "last_booted_record": "",
        "recommendations": "",
        "xenstore_data": {},
        "ha_always_run": False,
        "ha_restart_priority": "",
        "is_a_snapshot": False,
        "snapshot_of": NULL_REF,
        "snapshots": [],
        "snapshot_time": XDateTime(EPOCH),
        "transportable_snapshot_id": "",
        "blobs": {},
        "tags": [],
        "blocked_operations": {},
        "snapshot_info": {},
        "snapshot_metadata": "",
        "parent": NULL_REF,
        "children": [],
        "bios_strings": {},
        "protection_policy": NULL_REF,
        "is_snapshot_from_vmpp": False,
        "snapshot_schedule": NULL_REF,
        "is_vmss_snapshot": False,
        "appliance": NULL_REF,
        "start_delay": 0,
        "shutdown_delay": 0,
        "order": 0,
        "VGPUs": [],
        "attached_PCIs": [],
        "suspend_SR": NULL_REF,
        "version": 0,
        "generation_id": "",
        "hardware_platform_version": 0,
        "has_vendor_device": False,
        "requires_reboot": False,
        "reference_label": "",
        "domain_type": "pv" if is_dom0 else "hvm",
        "NVRAM": {},
        "pending_guidances": [],
    }
    for key, value in vm.items():
        if key in VM_REF_FIELDS:
            continue
        rec[key] = _copy(value)
    for key, cls in VM_REF_FIELDS.items():
        target = vm.get(key)
        exists = host_exists if cls == "host" else vm_exists
        rec[key] = make_ref(cls, target) if target and exists(target) else NULL_REF
    if rec["power_state"] in ("Running", "Paused"):
        rec["domarch"] = rec.get("domarch") or "x64"
    if snapshots is None:
        children = [u for u, other in vms.items() if other.get("snapshot_of") == vm["uuid"]]
    else:
        children = snapshots.get(vm["uuid"], [])
    rec["snapshots"] = [make_ref("VM", u) for u in children]
    if rec["is_a_snapshot"] and rec["snapshot_time"] == EPOCH:
        rec["snapshot_time"] = XDateTime("20240315T09:30:00Z")
    if isinstance(rec.get("snapshot_time"), str) and not isinstance(rec["snapshot_time"], XDateTime):
        rec["snapshot_time"] = XDateTime(rec["snapshot_time"])
    return rec


def resident_index(vms):
    """host uuid -> [uuids of the VMs resident on it], for building many host records at once."""
    index = {}
    for u, vm in vms.items():
        if vm.get("resident_on"):
            index.setdefault(vm["resident_on"], []).append(u)
    return index


def host_record(host, vms, live=True, resident=None):
    """``live``: the host's host_metrics.live; a host that is not live shows ``enabled`` false,
    as xapi marks a host it has declared dead. ``resident``: ``resident_index(vms)``."""
    rec = {
        "uuid": host["uuid"],
        "name_label": "",
        "name_description": "Default install",
        "memory_overhead": 0,
        "allowed_operations": ["provision", "evacuate", "vm_start", "vm_resume", "vm_migrate"],
        "current_operations": {},
        "API_version_major": 2,
        "API_version_minor": 21,
        "API_version_vendor": "XenSource",
        "API_version_vendor_implementation": {},
        "enabled": True,
        "software_version": {
            "product_version": "8.3.0",
            "product_version_text": "8.3",
            "product_version_text_short": "8.3",
            "platform_name": "XCP",
            "platform_version": "3.4.0",
            "product_brand": "XCP-ng",
            "build_number": "release/yangtze/master/58",
            "xapi": "24.19",
            "xen": "4.17.4",
            "linux": "4.19.0+1",
        },
        "other_config": {"agent_start_time": "1710495000.", "boot_time": "1710494900."},
        "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"],
        "cpu_configuration": {},
        "sched_policy": "credit",
        "supported_bootloaders": ["pygrub", "eliloader"],
        "resident_VMs": [],
        "logging": {},
        "PIFs": [],
        "suspend_image_sr": NULL_REF,
        "crash_dump_sr": NULL_REF,
        "crashdumps": [],
        "patches": [],
        "updates": [],
        "PBDs": [],
        "host_CPUs": [],
        "cpu_info": {"cpu_count": "16", "socket_count": "1", "vendor": "GenuineIntel"},
        "hostname": "",
        "address": "",
        "metrics": NULL_REF,
        "license_params": {},
        "ha_statefiles": [],
        "ha_network_peers": [],
        "blobs": {},
        "tags": [],
        "external_auth_type": "",
        "external_auth_service_name": "",
        "external_auth_configuration": {},
        "edition": "xcp-ng",
        "license_server": {},
        "bios_strings": {},
        "power_on_mode": "",
        "power_on_config": {},
        "local_cache_sr": NULL_REF,
        "chipset_info": {"iommu": "true"},
        "PCIs": [],
        "PGPUs": [],
        "PUSBs": [],
        "ssl_legacy": False,
        "guest_VCPUs_params": {},
        "display": "enabled",
        "virtual_hardware_platform_versions": [0, 1, 2],
        "control_domain": NULL_REF,
        "updates_requiring_reboot": [],
        "features": [],
        "iscsi_iqn": "",
        "multipathing": False,
        "uefi_certificates": "",
        "certificates": [],
        "editions": ["xcp-ng"],
        "pending_guidances": [],
        "tls_verification_enabled": True,
        "last_software_update": XDateTime(EPOCH),
        "https_only": False,
    }
    for key, value in host.items():
        if key in HOST_PRIVATE:
            continue
        rec[key] = _copy(value)
    if not rec["hostname"]:
        rec["hostname"] = rec["name_label"]
    rec["enabled"] = bool(rec["enabled"]) and bool(live)
    rec["metrics"] = make_ref("host_metrics", metrics_uuid(host["uuid"]))
    if resident is None:
        on_host = [u for u, vm in vms.items() if vm.get("resident_on") == host["uuid"]]
    else:
        on_host = resident.get(host["uuid"], [])
    rec["resident_VMs"] = [make_ref("VM", u) for u in on_host]
    for u in on_host:
        if vms[u].get("is_control_domain"):
            rec["control_domain"] = make_ref("VM", u)
            break
    return rec


def host_metrics_record(host_uuid, live):
    """A host's host_metrics record: ``live`` is what xapi's liveness checks read."""
    return {
        "uuid": metrics_uuid(host_uuid),
        "memory_total": 68719476736,
        "memory_free": 34359738368,
        "live": bool(live),
        "last_updated": XDateTime(EPOCH),
        "other_config": {},
    }


def pool_record(pool, host_exists):
    rec = {
        "uuid": pool["uuid"],
        "name_label": "",
        "name_description": "",
        "master": NULL_REF,
        "default_SR": NULL_REF,
        "suspend_image_SR": NULL_REF,
        "crash_dump_SR": NULL_REF,
        "other_config": {},
        "ha_enabled": False,
        "ha_configuration": {},
        "ha_statefiles": [],
        "ha_host_failures_to_tolerate": 0,
        "ha_plan_exists_for": 0,
        "ha_allow_overcommit": False,
        "ha_overcommitted": False,
        "blobs": {},
        "tags": [],
        "gui_config": {},
        "health_check_config": {},
        "wlb_url": "",
        "wlb_username": "",
        "wlb_enabled": False,
        "wlb_verify_cert": False,
        "redo_log_enabled": False,
        "redo_log_vdi": NULL_REF,
        "vswitch_controller": "",
        "restrictions": {},
        "metadata_VDIs": [],
        "ha_cluster_stack": "xhad",
        "allowed_operations": [],
        "current_operations": {},
        "guest_agent_config": {},
        "cpu_info": {},
        "policy_no_vendor_device": False,
        "live_patching_disabled": False,
        "igmp_snooping_enabled": False,
        "uefi_certificates": "",
        "is_psr_pending": False,
        "tls_verification_enabled": True,
        "repositories": [],
        "client_certificate_auth_enabled": False,
        "client_certificate_auth_name": "",
        "repository_proxy_url": "",
        "repository_proxy_username": "",
        "repository_proxy_password": NULL_REF,
        "migration_compression": False,
        "coordinator_bias": True,
    }
    for key, value in pool.items():
        if key == "master":
            continue
        rec[key] = _copy(value)
    master = pool.get("master")
    rec["master"] = make_ref("host", master) if master and host_exists(master) else NULL_REF
    return rec


def session_record(ref, sess):
    return {
        "uuid": sess["uuid"],
        "this_host": make_ref("host", sess["this_host"]) if sess.get("this_host") else NULL_REF,
        "this_user": NULL_REF,
        "last_active": XDateTime(sess["created"]),
        "pool": False,
        "other_config": {},
        "is_local_superuser": True,
        "subject": NULL_REF,
        "validation_time": XDateTime(sess["created"]),
        "auth_user_sid": "",
        "auth_user_name": sess.get("user", ""),
        "rbac_permissions": [],
        "tasks": [],
        "parent": NULL_REF,
        "originator": sess.get("originator", ""),
        "client_certificate": False,
    }


def task_record(task):
    """A task as xapi shows it; ``task`` holds the fields that change (status, result ...)."""
    rec = {
        "uuid": task["uuid"],
        "name_label": "",
        "name_description": "",
        "allowed_operations": [],
        "current_operations": {},
        "created": XDateTime(EPOCH),
        "finished": XDateTime(EPOCH),
        "status": "pending",
        "resident_on": NULL_REF,
        "progress": 0.0,
        "type": "<none/>",
        "result": "",
        "error_info": [],
        "other_config": {},
        "subtask_of": NULL_REF,
        "subtasks": [],
        "backtrace": "()",
    }
    for key, value in task.items():
        if key in rec:
            rec[key] = copy.deepcopy(value)
    if task.get("resident_on"):
        rec["resident_on"] = make_ref("host", task["resident_on"])
    for key in ("created", "finished"):
        rec[key] = XDateTime(rec[key])
    if rec["status"] == "pending" and task.get("cancellable"):
        rec["allowed_operations"] = ["cancel"]
    return rec


# Static field sets (for the generic get_<field> getters).
_DUMMY_VM = {"uuid": "00000000-0000-0000-0000-000000000000"}
VM_FIELDS = frozenset(vm_record(_DUMMY_VM, {}, lambda u: False, lambda u: False))
HOST_FIELDS = frozenset(host_record({"uuid": _DUMMY_VM["uuid"]}, {}))
POOL_FIELDS = frozenset(pool_record({"uuid": _DUMMY_VM["uuid"]}, lambda u: False))
SESSION_FIELDS = frozenset(session_record("", {"uuid": "", "created": EPOCH}))
TASK_FIELDS = frozenset(task_record({"uuid": _DUMMY_VM["uuid"]}))
HOST_METRICS_FIELDS = frozenset(host_metrics_record(_DUMMY_VM["uuid"], True))

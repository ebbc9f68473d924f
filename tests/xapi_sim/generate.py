"""Large generated pools for benchmarks and scale tests.

    from xapi_sim.generate import generated_fixture
    path = generated_fixture(tmp_path / "pool16.json", hosts=16, vms=2000, seed=1)
    with Simulator(fixture=path) as sim: ...

The same arguments always give the same file: uuids come from a seeded generator, so a benchmark
can be rerun against an identical pool. The first host is the master; host names are ``host-01``
… (zero-padded to the width of the host count, at least two digits) and VM names ``vm-0001`` ….
Every host has its control domain. VM ``i`` (from 0) is Running on host ``i % hosts`` when
``i % 5 < 3`` (three in five run), else Halted; none has a vgpu device or a registry mirror.
Two templates are added so the scan filter has something to leave out.
"""

import json
import random
import uuid as uuidlib

# The ordinary keys of an HVM guest's platform map, as XCP-ng 8.3 writes them.
_PLATFORM = {
    "timeoffset": "0", "videoram": "8", "hpet": "true", "vga": "std", "nx": "true", "acpi": "1",
    "apic": "true", "pae": "true", "viridian": "true", "device_id": "0001", "cores-per-socket": "2",
    "secureboot": "false",
}


def _uuid(rng):
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


def generated_fixture_data(hosts=16, vms=2000, seed=0):
    """The fixture as a dict (see the module docstring)."""
    if not isinstance(hosts, int) or hosts < 1:
        raise ValueError("hosts must be an integer >= 1")
    if not isinstance(vms, int) or vms < 0:
        raise ValueError("vms must be an integer >= 0")
    rng = random.Random("xapi-sim:%s:%d:%d" % (seed, hosts, vms))
    width = max(2, len(str(hosts)))
    vm_width = max(4, len(str(vms)))
    host_list = []
    for i in range(hosts):
        n = i + 1
        host_list.append({
            "uuid": _uuid(rng),
            "name_label": "host-%0*d" % (width, n),
            # 198.18.0.0/15 is reserved for benchmarks (RFC 2544).
            "address": "198.18.%d.%d" % (n // 250, n % 250 + 1),
            "plugin_env": {},
        })
    vm_list = []
    for h in host_list:
        vm_list.append({
            "uuid": _uuid(rng), "name_label": "Control domain on host: %s" % h["name_label"],
            "power_state": "Running", "is_control_domain": True, "is_a_template": False, "is_a_snapshot": False,
            "resident_on": h["uuid"], "domid": 0, "platform": {}, "other_config": {"storage_driver_domain": ""},
        })
    domids = {h["uuid"]: 0 for h in host_list}
    for i in range(vms):
        running = i % 5 < 3
        host = host_list[i % hosts]["uuid"]
        vm = {
            "uuid": _uuid(rng), "name_label": "vm-%0*d" % (vm_width, i + 1),
            "power_state": "Running" if running else "Halted",
            "is_control_domain": False, "is_a_template": False, "is_a_snapshot": False,
            "platform": dict(_PLATFORM),
            "other_config": {"base_template_name": "Other install media", "mac_seed": _uuid(rng),
                             "install-methods": "cdrom"},
            "resident_on": host if running else None,
        }
        if running:
            domids[host] += 1
            vm["domid"] = domids[host]
        vm_list.append(vm)
    for label in ("Other install media", "Ubuntu Jammy Jellyfish 22.04"):
        vm_list.append({
            "uuid": _uuid(rng), "name_label": label, "power_state": "Halted", "is_control_domain": False,
            "is_a_template": True, "is_a_snapshot": False, "platform": dict(_PLATFORM), "other_config": {},
            "resident_on": None,
        })
    return {
        "pool": {"uuid": _uuid(rng), "name_label": "gen-pool-%d" % hosts, "master": host_list[0]["uuid"],
                 "other_config": {}},
        "hosts": host_list,
        "vms": vm_list,
        "users": {"root": "password"},
    }


def generated_fixture(path, hosts=16, vms=2000, seed=0):
    """Write the generated fixture to ``path`` and return ``path`` as a string."""
    data = generated_fixture_data(hosts=hosts, vms=vms, seed=seed)
    path = str(path)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    return path

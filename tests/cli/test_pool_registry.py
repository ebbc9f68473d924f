"""The pool-wide registry through `vgpu-admin` (SPEC §9), in local registry mode (this host is
unknown, so the registry file is used directly and no host is asked to refresh; the mirror in XAPI
is still written).

- the mirror: each registered VM's `other_config` keys hold exactly its registry row and the
  custom field, the pool holds the pool rows and a generation that moves on by one per change, and
  nothing else in `other_config` is touched;
- mirror drift in `scan-vms` / `status`, and its repair by `sync`;
- `rebuild` after the registry file is lost, and over a file that is there (backup);
- `adopt` of VMs set up by older tools;
- `status`'s hosts and generation; `refresh` where this host is unknown; the help texts.

Expected values come from the registry file read with sqlite3, from the simulator's records and
from the contract, never from the command under test.
"""

import collections
import fnmatch
import json
import os
import shlex
import sqlite3
import time

import pytest

from conftest import (
    CUDA_DEV, CUDA_DEV_DMA, DMA, LEGACY_STUB, LEGACY_STUB_DMA, ML_TRAIN_B, NOT_REAL_VMS, REAL_VMS,
    RENDER_01, RENDER_02, TESTS_DIR, device_line, fixture_uuid, platforms,
)

VM_KEY = "vgpu-registry"
FIELD_KEY = "XenCenter.CustomFields.vgpu"
POOLS_KEY = "vgpu-registry:pools"
LAST_CHANGE_KEY = "vgpu-registry:last-change"
# `<prefix><generation>`: the writer that published that generation claimed it; older claims go
CLAIM_PREFIX = "vgpu-registry:claim:"
GENERATION_KEY = "vgpu-registry:generation"
WORD = {0: "low", 1: "medium", 2: "high"}

MASTER = fixture_uuid("sample_pool.json", "xcp-lab-01", kind="hosts")
MEMBER = fixture_uuid("sample_pool.json", "xcp-lab-02", kind="hosts")
with open(os.path.join(TESTS_DIR, "xapi_sim", "fixtures", "sample_pool.json")) as _f:
    POOL_UUID = json.load(_f)["pool"]["uuid"]

# A key another tool keeps in other_config (Xen Orchestra's own keys look like this).
FOREIGN_KEY = "xo:foo"


# ------------------------------------------------------------------------------------------------
# Reading the registry file and XAPI directly


def db_rows(path, table="vms", key="vm_uuid"):
    """Every row of a table of the registry file, by key, with every column; {} without a file."""
    if not os.path.exists(path):
        return {}
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r[key]: dict(r) for r in conn.execute("SELECT * FROM %s" % table)}
    finally:
        conn.close()


def mirror_of(row):
    """What the VM's mirror key must hold for a registry row (SPEC §9): every column, the uuid in
    lower case (it names the VM the copy belongs to, so a clone's inherited copy is told apart),
    `pool_id` as `pool`, the priority as a word. (A 0/1 flag column compares equal to false/true.)"""
    want = {}
    for col, value in row.items():
        if col == "vm_uuid":
            want[col] = value.lower()
        elif col == "pool_id":
            want["pool"] = value
        elif col == "priority":
            want["priority"] = WORD[value]
        else:
            want[col] = value
    return want


def field_of(row):
    return "pool %s, %s, vm_id %d" % (row["pool_id"], WORD[row["priority"]], row["vm_id"])


def assert_compact_json(text):
    doc = json.loads(text, object_pairs_hook=collections.OrderedDict)
    assert text == json.dumps(doc, separators=(",", ":"), ensure_ascii=False), text
    return dict(doc) if isinstance(doc, dict) else doc


def assert_mirror(cli, uuid):
    """The VM's two mirror keys say exactly what its registry row says."""
    row = db_rows(cli.db)[uuid]
    oc = cli.sim.vm_other_config(uuid)
    assert VM_KEY in oc and FIELD_KEY in oc, (uuid, oc)
    doc = assert_compact_json(oc[VM_KEY])
    assert doc == mirror_of(row), (uuid, doc, row)
    assert set(doc) == set(mirror_of(row))
    assert isinstance(doc["vm_id"], int) and not isinstance(doc["vm_id"], bool)
    assert oc[FIELD_KEY] == field_of(row)


def assert_pool_rows(cli):
    """The pool's mirror key holds the pools table, every column."""
    doc = assert_compact_json(cli.sim.pool_other_config()[POOLS_KEY])
    assert isinstance(doc, list)
    assert {p["pool_id"]: p for p in doc} == db_rows(cli.db, "pools", "pool_id")


def generation(sim):
    g = sim.pool_other_config().get(GENERATION_KEY)
    return None if g is None else int(g)


def other_configs(sim, extra=()):
    return {u: dict(sim.vm_other_config(u)) for u in list(REAL_VMS) + NOT_REAL_VMS + list(extra)}


def world(cli, extra=()):
    """Everything a command could change: registry rows, pools rows, every VM's platform and
    other_config, the pool's other_config."""
    return {
        "vms": db_rows(cli.db),
        "pools": db_rows(cli.db, "pools", "pool_id"),
        "platforms": platforms(cli.sim, extra),
        "other_config": other_configs(cli.sim, extra),
        "pool": dict(cli.sim.pool_other_config()),
    }


def delete_registry(cli):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(cli.db + suffix):
            os.remove(cli.db + suffix)
    assert not os.path.exists(cli.db)


def run_json_any(cli, *args, **kw):
    """`--format json` whatever the exit status: (exit status, document on stdout)."""
    r = cli.run(*(args + ("--format", "json")), **kw)
    assert r.out.strip(), "no JSON on stdout: %s -> %d\nstderr: %s" % (args, r.code, r.err)
    return r.code, json.loads(r.out)


def add_vm(sim, name, dma, power_state="Halted", other_config=None, uuid=None):
    platform = {"vga": "std", "videoram": "8"}
    if dma is not None:
        platform[DMA] = dma
    record = {"name_label": name, "power_state": power_state, "platform": platform,
              "other_config": dict(other_config or {"mac_seed": "seed-" + name})}
    if uuid:
        record["uuid"] = uuid
    return sim.add_vm(record)["uuid"]


def device_props(dma):
    """The vgpu device entry of a device-model-args value: (type, [properties])."""
    words = shlex.split(dma)
    for i, w in enumerate(words[:-1]):
        if w == "-device" and words[i + 1].split(",")[0] in ("vgpu-cuda", "vgpu-stub"):
            parts = words[i + 1].split(",")
            return parts[0], parts[1:]
    return None


# ------------------------------------------------------------------------------------------------
# 1. The mirror follows every change


def test_mirror_holds_exactly_the_registry_row(cli, sim):
    sim.set_other_config_key("VM", ML_TRAIN_B, FOREIGN_KEY, "keep-me")
    sim.set_other_config_key("VM", RENDER_01, FOREIGN_KEY, "keep-me-too")
    sim.set_other_config_key("pool", None, FOREIGN_KEY, "pool-level")
    start = other_configs(sim)
    assert generation(sim) is None and POOLS_KEY not in sim.pool_other_config()

    def check(changed, registered, gen, vm=RENDER_01, names=None):
        """After a change: the generation, every registered VM's keys, the pool rows, and every
        other key of every VM and of the pool exactly as at the start."""
        assert generation(sim) == gen
        for u in registered:
            assert_mirror(cli, u)
        assert_pool_rows(cli)
        pool_oc = sim.pool_other_config()
        claim = CLAIM_PREFIX + str(gen)
        assert set(pool_oc) == {FOREIGN_KEY, POOLS_KEY, GENERATION_KEY, LAST_CHANGE_KEY, claim}
        # `<writer> <time>`, or `<writer> <uuid> <time>` for a register that gives the VM its
        # first device (decision 0014)
        words = pool_oc[claim].split(" ")
        writer, since = words[0], words[-1]
        assert abs(int(since) - time.time()) < 600, pool_oc[claim]
        assert writer == "off-pool", pool_oc[claim]
        assert words[1:-1] == ([names.lower()] if names else []), (changed, pool_oc[claim])
        # the last change names the VM it touched, at the generation it made
        last = json.loads(pool_oc[LAST_CHANGE_KEY])
        # (the first change publishes every VM: null)
        assert last == {"generation": gen, "vms": None if gen == 1 else [vm.lower()]}, last
        assert pool_oc[FOREIGN_KEY] == "pool-level"
        now = other_configs(sim)
        for u in now:
            rest = {k: v for k, v in now[u].items() if k not in (VM_KEY, FIELD_KEY)}
            assert rest == start[u], (changed, u)
            if u not in registered:
                assert VM_KEY not in now[u] and FIELD_KEY not in now[u], (changed, u)

    cli.register(ML_TRAIN_B, "B", "medium", 7)
    check("register ml-train-b", [ML_TRAIN_B], 1, names=ML_TRAIN_B)
    assert sim.vm_other_config(ML_TRAIN_B)[FIELD_KEY] == "pool B, medium, vm_id 7"

    cli.run_json("register-vm", "--vm-uuid", RENDER_01, "--vm-name", "Render One", "--pool", "a",
                 "--priority", "2")
    check("register render-01 with a chosen name", [ML_TRAIN_B, RENDER_01], 2, names=RENDER_01)
    assert json.loads(sim.vm_other_config(RENDER_01)[VM_KEY])["vm_name"] == "Render One"
    assert db_rows(cli.db)[RENDER_01]["name_chosen"] == 1

    steps = [
        (("set-pool", "--vm-uuid", RENDER_01, "--pool", "B"), ("B", 2, 1)),
        (("set-priority", "--vm-name", "render-01", "--priority", "low"), ("B", 0, 1)),
        (("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "70"), ("B", 0, 70)),
        (("update-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "medium", "--vm-id", "71"),
         ("A", 1, 71)),
    ]
    gen = 2
    for argv, (pool, prio, vm_id) in steps:
        cli.run_json(*argv)
        gen += 1
        row = db_rows(cli.db)[RENDER_01]
        assert (row["pool_id"], row["priority"], row["vm_id"]) == (pool, prio, vm_id), argv
        check(argv[0], [ML_TRAIN_B, RENDER_01], gen)
        assert sim.vm_other_config(RENDER_01)[FIELD_KEY] == "pool %s, %s, vm_id %d" % (pool, WORD[prio], vm_id)

    cli.run_json("remove-vm", "--vm-uuid", RENDER_01)
    check("remove render-01", [ML_TRAIN_B], gen + 1)
    assert sim.vm_other_config(RENDER_01) == start[RENDER_01]
    cli.run_json("remove-vm", "--vm-name", "ml-train-b")
    check("remove ml-train-b", [], gen + 2, vm=ML_TRAIN_B)
    assert other_configs(sim) == start
    assert sim.pool_other_config()[FOREIGN_KEY] == "pool-level"


def test_mirror_carries_every_column_of_the_row(cli, sim):
    """The mediator's controls travel in the mirror, and so does a column the registry does not
    know (another tool's), with the value the row holds."""
    cli.register(RENDER_02, "A", "high", 5)
    doc = json.loads(sim.vm_other_config(RENDER_02)[VM_KEY])
    assert {k: doc[k] for k in ("weight", "max_jobs_per_sec", "max_queue_depth", "error_count")} == \
        {"weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0, "error_count": 0}
    assert doc["quarantined"] in (False, 0)
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute("ALTER TABLE vms ADD COLUMN site_note TEXT")
        conn.execute("UPDATE vms SET weight = 77, site_note = 'rack 4' WHERE vm_uuid = ?", (RENDER_02,))
    conn.close()
    cli.run_json("set-priority", "--vm-uuid", RENDER_02, "--priority", "low")
    doc = json.loads(sim.vm_other_config(RENDER_02)[VM_KEY])
    assert doc["weight"] == 77 and doc["site_note"] == "rack 4", doc
    assert_mirror(cli, RENDER_02)
    assert generation(sim) == 2


# ------------------------------------------------------------------------------------------------
# 2. Mirror drift and its repair


def test_mirror_drift_is_reported_and_repaired_by_sync(cli, sim):
    for u, pool, prio, vm_id in ((RENDER_01, "A", "high", 4), (ML_TRAIN_B, "B", "low", 5),
                                 (RENDER_02, "B", "medium", 6)):
        cli.register(u, pool, prio, vm_id)
    assert generation(sim) == 3
    assert cli.run_json("scan-vms")["summary"]["mirror_drift"] == 0
    sim.set_other_config_key("VM", RENDER_01, VM_KEY, None)                       # missing
    wrong = dict(json.loads(sim.vm_other_config(ML_TRAIN_B)[VM_KEY]), vm_id=99)
    sim.set_other_config_key("VM", ML_TRAIN_B, VM_KEY, json.dumps(wrong))        # another vm_id
    sim.set_other_config_key("VM", RENDER_02, FIELD_KEY, "pool B, medium, vm_id 60")  # the field only

    scan = cli.run_json("scan-vms")
    got = {r["vm_uuid"]: (r["mirror"], r["status"]) for r in scan["registered"]}
    assert got == {RENDER_01: ("missing", "configured"), ML_TRAIN_B: ("stale", "configured"),
                   RENDER_02: ("stale", "configured")}
    assert scan["summary"]["mirror_drift"] == 3 and scan["summary"]["drift"] == 0
    status = cli.run_json("status")
    assert sorted(v["vm_uuid"] for v in status["mirror_drift"]) == sorted([RENDER_01, ML_TRAIN_B, RENDER_02])
    assert {v["vm_uuid"]: v["vm_name"] for v in status["mirror_drift"]} == {
        RENDER_01: "render-01", ML_TRAIN_B: "ml-train-b", RENDER_02: "render-02"}
    assert status["drift"] == [] and status["not_applied"] == []

    before = world(cli)
    code, dry = run_json_any(cli, "sync", "--all", "--dry-run")
    assert code == 0 and dry["dry_run"] is True and dry["failed"] == 0
    items = {i["vm_uuid"]: i for i in dry["results"]}
    assert {u: i["action"] for u, i in items.items()} == {
        RENDER_01: "would_mirror", ML_TRAIN_B: "would_mirror", RENDER_02: "would_mirror"}
    rows = db_rows(cli.db)
    for u in (RENDER_01, ML_TRAIN_B):
        (change,) = items[u]["changes"]
        assert change["field"] == "mirror"
        assert json.loads(change["new"]) == mirror_of(rows[u])
    assert items[RENDER_01]["changes"][0]["old"] is None
    assert json.loads(items[ML_TRAIN_B]["changes"][0]["old"]) == wrong
    assert world(cli) == before, "sync --dry-run changed something"

    code, done = run_json_any(cli, "sync", "--all")
    assert code == 0 and done["failed"] == 0
    assert {i["vm_uuid"]: i["action"] for i in done["results"]} == {
        RENDER_01: "mirrored", ML_TRAIN_B: "mirrored", RENDER_02: "mirrored"}
    for u in (RENDER_01, ML_TRAIN_B, RENDER_02):
        assert_mirror(cli, u)
    assert generation(sim) > 3
    after = world(cli)
    assert after["vms"] == before["vms"] and after["platforms"] == before["platforms"]
    scan = cli.run_json("scan-vms")
    assert {r["vm_uuid"]: r["mirror"] for r in scan["registered"]} == {
        RENDER_01: "ok", ML_TRAIN_B: "ok", RENDER_02: "ok"}
    assert scan["summary"]["mirror_drift"] == 0
    assert cli.run_json("status")["mirror_drift"] == []


# ------------------------------------------------------------------------------------------------
# 3. Rebuild


def seed_for_rebuild(cli):
    """cuda-dev by name (automatic id 1, the id its device already carries); render-02 by uuid
    with a chosen name and vm_id 4242; ml-train-b (automatic id 2). legacy-stub keeps its
    vgpu-stub device (vm_id 3) and is not registered: it carries a device but no mirror."""
    assert cli.run_json("register-vm", "--vm-name", "cuda-dev", "--pool", "A", "--priority", "high")["vm_id"] == 1
    cli.run_json("register-vm", "--vm-uuid", RENDER_02, "--vm-name", "Render Two", "--pool", "B",
                 "--priority", "low", "--vm-id", "4242")
    assert cli.register(ML_TRAIN_B, "B", "medium")["vm_id"] == 2
    assert generation(cli.sim) == 3


LEGACY_ADOPTED = "-device vgpu-cuda,pool_id=B,priority=medium,vm_id=3"


def test_rebuild_after_the_registry_file_is_lost(cli, sim):
    seed_for_rebuild(cli)
    listed = cli.run_json("list-vms")
    rows = db_rows(cli.db)
    pools = db_rows(cli.db, "pools", "pool_id")
    assert rows[RENDER_02]["name_chosen"] == 1 and rows[RENDER_02]["vm_name"] == "Render Two"
    delete_registry(cli)
    xapi_before = world(cli)

    code, dry = run_json_any(cli, "rebuild", "--dry-run")
    assert code == 0, dry
    assert dry["dry_run"] is True and dry["backup"] is None
    assert dry["restored"] == 3 and dry["generation"] == 3 and dry["skipped"] == []
    assert dry["adopt"]["skipped"] == []
    (adopt,) = dry["adopt"]["adopted"]
    assert (adopt["vm_uuid"], adopt["vm_name"], adopt["pool"], adopt["priority"], adopt["vm_id"]) == \
        (LEGACY_STUB, "legacy-stub", "B", "medium", 3)
    assert adopt["before"] == LEGACY_STUB_DMA and adopt["after"] == LEGACY_ADOPTED
    now = world(cli)
    assert (now["platforms"], now["other_config"], now["pool"]) == \
        (xapi_before["platforms"], xapi_before["other_config"], xapi_before["pool"])
    assert now["vms"] == {}, "rebuild --dry-run registered something"

    code, done = run_json_any(cli, "rebuild")
    assert code == 0, done
    assert done["dry_run"] is False and done["backup"] is None  # nothing was there to keep
    assert done["restored"] == 3 and done["generation"] == 3 and done["skipped"] == []
    assert [a["vm_uuid"] for a in done["adopt"]["adopted"]] == [LEGACY_STUB]
    # every registration is back as it was: every column, timestamps and name_chosen included
    after = db_rows(cli.db)
    assert {u: r for u, r in after.items() if u != LEGACY_STUB} == rows
    assert db_rows(cli.db, "pools", "pool_id") == pools
    assert [r for r in cli.run_json("list-vms") if r["vm_uuid"] != LEGACY_STUB] == listed
    # legacy-stub was adopted with its device's values, in the standard form
    legacy = after[LEGACY_STUB]
    assert (legacy["vm_id"], legacy["pool_id"], legacy["priority"], legacy["vm_name"], legacy["name_chosen"]) == \
        (3, "B", 1, "legacy-stub", 0)
    assert cli.dma(LEGACY_STUB) == LEGACY_ADOPTED
    assert_mirror(cli, LEGACY_STUB)
    assert generation(sim) == 4
    scan = cli.run_json("scan-vms")
    assert {r["vm_uuid"]: (r["status"], r["mirror"]) for r in scan["registered"]} == {
        u: ("configured", "ok") for u in (CUDA_DEV, RENDER_02, ML_TRAIN_B, LEGACY_STUB)}

    # A second rebuild, over a registry that is there but damaged: whatever was there is kept
    # beside it, and the registry is the mirror's again.
    good = db_rows(cli.db)
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute("DELETE FROM vms WHERE vm_uuid = ?", (ML_TRAIN_B,))
        conn.execute("UPDATE vms SET vm_name = 'damaged', priority = 2 WHERE vm_uuid = ?", (RENDER_02,))
    conn.close()
    damaged = db_rows(cli.db)
    assert damaged != good
    others = set(os.listdir(os.path.dirname(cli.db)))
    code, again = run_json_any(cli, "rebuild")
    assert code == 0, again
    backup = again["backup"]
    assert backup and os.path.dirname(os.path.abspath(backup)) == os.path.dirname(os.path.abspath(cli.db))
    assert fnmatch.fnmatch(os.path.basename(backup), "vgpu_config.db.pre-rebuild-*.bak"), backup
    assert set(os.listdir(os.path.dirname(cli.db))) - others == {os.path.basename(backup)}
    assert db_rows(backup) == damaged
    assert db_rows(cli.db) == good
    assert again["restored"] == 4 and again["adopt"]["adopted"] == []


def test_rebuild_table_output(cli, sim):
    seed_for_rebuild(cli)
    delete_registry(cli)
    r = cli.run("rebuild", "--dry-run")
    assert r.code == 0, r
    assert "3" in r.out.splitlines()[0] and "Dry run" in r.out
    assert LEGACY_STUB in r.out and LEGACY_STUB_DMA in r.out and LEGACY_ADOPTED in r.out
    r = cli.run("rebuild")
    assert r.code == 0, r
    assert LEGACY_STUB in r.out and "Dry run" not in r.out
    assert sorted(db_rows(cli.db)) == sorted([CUDA_DEV, RENDER_02, ML_TRAIN_B, LEGACY_STUB])


# ------------------------------------------------------------------------------------------------
# 4. Adopt


CUDA_PROPS_DMA = ("-m 1 -global PIIX4_PM.disable_s3=1 "
                  "-device vgpu-cuda,addr=5,pool_id=a,priority=high,vm_id=8,prefer_bar1_htod=on "
                  "-rtc base=localtime")
CUDA_PROPS_ADOPTED = ("-m 1 -global PIIX4_PM.disable_s3=1 "
                      "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=8,prefer_bar1_htod=on "
                      "-rtc base=localtime")


def older_tools_pool(cli, sim):
    """VMs as older tools and hand-written lines left them. render-01 is registered with vm_id 20
    first (so `taken`'s device claims an id already registered). Returns {name: uuid}."""
    cli.register(RENDER_01, "A", "low", 20)
    vms = {
        "cuda-props": add_vm(sim, "cuda-props", CUDA_PROPS_DMA, "Running"),
        "dup-1": add_vm(sim, "dup-1", "-device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=12"),
        "dup-2": add_vm(sim, "dup-2", "-nographic -device vgpu-stub,pool_id=B,priority=0,vm_id=12"),
        "prio-7": add_vm(sim, "prio-7", "-device vgpu-cuda,addr=5,pool_id=B,priority=7,vm_id=14"),
        "pool-c": add_vm(sim, "pool-c", "-device vgpu-cuda,addr=5,pool_id=C,priority=low,vm_id=15"),
        "taken": add_vm(sim, "taken", "-device vgpu-cuda,addr=5,pool_id=B,priority=medium,vm_id=20"),
    }
    for u in vms.values():
        sim.set_other_config_key("VM", u, FOREIGN_KEY, "bar")
    return vms


def check_skip_reasons(skipped, vms):
    """Each VM that cannot be adopted is listed once, with a reason that says why."""
    reasons = {s["vm_uuid"]: s["reason"] for s in skipped}
    assert len(reasons) == len(skipped)
    assert set(reasons) == {vms[n] for n in ("dup-1", "dup-2", "prio-7", "pool-c", "taken")}
    for n in ("dup-1", "dup-2"):
        assert "12" in reasons[vms[n]] and vms["dup-1"] in reasons[vms[n]] and vms["dup-2"] in reasons[vms[n]]
    assert "priority" in reasons[vms["prio-7"]] and "7" in reasons[vms["prio-7"]]
    assert "pool" in reasons[vms["pool-c"]] and "C" in reasons[vms["pool-c"]]
    assert "20" in reasons[vms["taken"]] and RENDER_01 in reasons[vms["taken"]]
    return reasons


# what adopt --all takes from the pool above: uuid -> (name, pool, priority, vm_id, before, after)
def adoptable(vms):
    return {
        CUDA_DEV: ("cuda-dev", "A", "high", 1, CUDA_DEV_DMA, CUDA_DEV_DMA),
        vms["cuda-props"]: ("cuda-props", "A", "high", 8, CUDA_PROPS_DMA, CUDA_PROPS_ADOPTED),
        LEGACY_STUB: ("legacy-stub", "B", "medium", 3, LEGACY_STUB_DMA, LEGACY_ADOPTED),
    }


def test_adopt_the_older_tools_vms(cli, sim):
    vms = older_tools_pool(cli, sim)
    extra = list(vms.values())
    want = adoptable(vms)
    start = world(cli, extra)
    gen = generation(sim)

    code, dry = run_json_any(cli, "adopt", "--all", "--dry-run")
    assert code == 1, dry
    assert dry["dry_run"] is True
    got = {a["vm_uuid"]: (a["vm_name"], a["pool"], a["priority"], a["vm_id"], a["before"], a["after"])
           for a in dry["adopted"]}
    assert got == want
    check_skip_reasons(dry["skipped"], vms)
    skipped_dma = {s["vm_uuid"]: s["device_model_args"] for s in dry["skipped"]}
    assert skipped_dma == {u: start["platforms"][u][DMA] for u in skipped_dma}
    assert world(cli, extra) == start, "adopt --dry-run changed something"

    r = cli.run("adopt", "--all")
    assert r.code == 1, r
    # the table names each VM left alone, with its reason, on its line
    lines = r.out.splitlines()
    for name in ("dup-1", "dup-2", "prio-7", "pool-c", "taken"):
        (line,) = [l for l in lines if vms[name] in l and "(%s)" % name in l]
        reason = {"dup-1": "claimed by several VMs", "dup-2": "claimed by several VMs",
                  "prio-7": "priority", "pool-c": "pool", "taken": "already registered"}[name]
        assert reason in line, line
    for u, (name, _, _, _, _, _) in want.items():
        assert u in r.out and name in r.out

    rows = db_rows(cli.db)
    assert set(rows) == set(want) | {RENDER_01}
    now = world(cli, extra)
    for u, (name, pool, prio, vm_id, before, after) in want.items():
        row = rows[u]
        assert (row["vm_id"], row["pool_id"], WORD[row["priority"]], row["vm_name"], row["name_chosen"]) == \
            (vm_id, pool, prio, name, 0), u
        assert cli.dma(u) == after
        rest = {k: v for k, v in now["platforms"][u].items() if k != DMA}
        assert rest == {k: v for k, v in start["platforms"][u].items() if k != DMA}
        assert_mirror(cli, u)
        oc = {k: v for k, v in now["other_config"][u].items() if k not in (VM_KEY, FIELD_KEY)}
        assert oc == start["other_config"][u]
    # the entry is rewritten, not re-added: every other token, and the extra property, kept
    assert device_props(cli.dma(vms["cuda-props"])) == (
        "vgpu-cuda", ["addr=5", "pool_id=A", "priority=high", "vm_id=8", "prefer_bar1_htod=on"])
    for name in ("dup-1", "dup-2", "prio-7", "pool-c", "taken"):
        u = vms[name]
        assert now["platforms"][u] == start["platforms"][u], name
        assert now["other_config"][u] == start["other_config"][u], name
    assert rows[RENDER_01] == start["vms"][RENDER_01]
    assert generation(sim) == gen + len(want)  # each VM on its own, as register would

    # nothing left to adopt; the same VMs are still left alone
    code, again = run_json_any(cli, "adopt", "--all")
    assert code == 1 and again["adopted"] == []
    check_skip_reasons(again["skipped"], vms)
    assert db_rows(cli.db) == rows

    # one VM by name, once its device is fixed
    sim.set_platform_key(vms["prio-7"], DMA, "-device vgpu-cuda,addr=5,pool_id=B,priority=2,vm_id=14")
    code, one = run_json_any(cli, "adopt", "--vm-name", "prio-7")
    assert code == 0, one
    assert [(a["vm_uuid"], a["pool"], a["priority"], a["vm_id"]) for a in one["adopted"]] == \
        [(vms["prio-7"], "B", "high", 14)]
    assert one["skipped"] == []
    row = db_rows(cli.db)[vms["prio-7"]]
    assert (row["vm_id"], row["pool_id"], row["priority"], row["vm_name"]) == (14, "B", 2, "prio-7")
    assert cli.dma(vms["prio-7"]) == device_line("B", "high", 14)
    assert set(db_rows(cli.db)) == set(rows) | {vms["prio-7"]}


def test_adopt_one_vm_that_cannot_be_adopted(cli, sim):
    cli.register(RENDER_01, "A", "low", 20)
    before = world(cli)
    code, doc = run_json_any(cli, "adopt", "--vm-name", "render-02")  # no device at all
    assert code == 1 and doc["adopted"] == []
    assert [(s["vm_uuid"], s["vm_name"]) for s in doc["skipped"]] == [(RENDER_02, "render-02")]
    assert "device" in doc["skipped"][0]["reason"]
    code, doc = run_json_any(cli, "adopt", "--vm-uuid", RENDER_01)  # registered already
    assert code == 1 and doc["adopted"] == [] and [s["vm_uuid"] for s in doc["skipped"]] == [RENDER_01]
    assert "registered" in doc["skipped"][0]["reason"]
    assert world(cli) == before


def test_adopt_writes_the_configured_device_type(cli, sim):
    with open(cli.config, "w") as f:
        f.write('[device]\ntype = "vgpu-stub"\n')
    code, doc = run_json_any(cli, "adopt", "--all")
    assert code == 0, doc
    assert sorted(a["vm_uuid"] for a in doc["adopted"]) == sorted([CUDA_DEV, LEGACY_STUB])
    assert cli.dma(CUDA_DEV) == "-device vgpu-stub,addr=5,pool_id=A,priority=high,vm_id=1"
    assert cli.dma(LEGACY_STUB) == "-device vgpu-stub,pool_id=B,priority=medium,vm_id=3"


@pytest.mark.parametrize("argv", [(), ("--dry-run",)], ids=["plain", "dry-run"])
def test_adopt_needs_all_or_a_vm(cli, sim, argv):
    r = cli.run("adopt", *argv)
    assert r.code == 2, r
    assert r.err.startswith("error: ") and "--all" in r.err
    code, err = cli.json_error("adopt", *argv, expect_code="INVALID_ARGUMENT")
    assert code == 2
    r = cli.run("adopt", "--all", "--vm-name", "cuda-dev")
    assert r.code == 2, r
    assert db_rows(cli.db) == {}
    assert cli.dma(CUDA_DEV) == CUDA_DEV_DMA and cli.dma(LEGACY_STUB) == LEGACY_STUB_DMA


# ------------------------------------------------------------------------------------------------
# 5. status: hosts and generation


def test_status_lists_every_host_and_the_generation(cli, sim):
    doc = cli.run_json("status")
    assert doc["generation"] is None
    assert sorted(h["host"] for h in doc["hosts"]) == sorted([MASTER, MEMBER])

    cli.register(RENDER_01, "A", "high")
    cli.register(RENDER_02, "B", "low")
    gen = int(sim.pool_other_config()[GENERATION_KEY])
    assert gen == 2
    sim.set_other_config_key("host", MEMBER, GENERATION_KEY, "1")  # as a refresh would record it
    doc = cli.run_json("status")
    assert doc["generation"] == gen
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert set(hosts) == {MASTER, MEMBER} and len(doc["hosts"]) == 2
    assert hosts[MASTER]["master"] is True and hosts[MEMBER]["master"] is False
    assert hosts[MASTER]["name"] == "xcp-lab-01" and hosts[MEMBER]["name"] == "xcp-lab-02"
    assert hosts[MASTER]["generation"] == gen
    assert hosts[MEMBER]["generation"] == 1 and hosts[MEMBER]["behind"] == gen - 1

    sim.set_other_config_key("host", MEMBER, GENERATION_KEY, None)  # never refreshed
    hosts = {h["host"]: h for h in cli.run_json("status")["hosts"]}
    assert hosts[MEMBER]["generation"] is None and hosts[MEMBER]["behind"] == gen

    r = cli.ok("status")
    for h in (MASTER, MEMBER):
        assert h in r.out
    assert "xcp-lab-01" in r.out and "xcp-lab-02" in r.out and str(gen) in r.out


# ------------------------------------------------------------------------------------------------
# 6. refresh where this host is unknown; help


@pytest.mark.skipif(os.path.exists("/etc/xensource-inventory"),
                    reason="this machine is a dom0: its inventory names the host")
def test_refresh_needs_the_host_uuid(cli, sim):
    r = cli.run("refresh")
    assert r.code == 2, r
    assert r.err.startswith("error: ") and "VGPU_HOST_UUID" in r.err
    code, err = cli.json_error("refresh", expect_code="INVALID_ARGUMENT")
    assert code == 2 and "VGPU_HOST_UUID" in err["message"]
    assert cli.run("refresh", env={"VGPU_HOST_UUID": ""}).code == 2


@pytest.mark.parametrize("command", ["refresh", "adopt", "rebuild"])
def test_help_has_an_example(cli, sim, command):
    r = cli.run(command, "--help")
    assert r.code == 0, r
    examples = [l[len("Example: "):] for l in r.out.splitlines() if l.startswith("Example: ")]
    assert examples, r.out
    for ex in examples:
        words = shlex.split(ex)
        assert words[:2] == ["vgpu-admin", command], ex
        if command != "refresh":  # refresh needs a pool host
            run = cli.run(*words[1:])
            assert run.code in (0, 1), (ex, run)
    assert cli.run(command, "-h").code == 0


# ------------------------------------------------------------------------------------------------
# Product bugs (reported; each test states the behaviour the contract asks for)


@pytest.mark.parametrize("argv", [("rebuild", "--dry-run"), ("adopt", "--all", "--dry-run"), ("refresh",)],
                         ids=["rebuild-dry-run", "adopt-dry-run", "refresh-unknown-host"])
def test_commands_that_change_nothing_create_no_registry_file(cli, sim, argv):
    if argv[0] == "rebuild":
        seed_for_rebuild(cli)
        delete_registry(cli)
    r = cli.run(*argv)
    assert r.code in (0, 2), r
    assert not os.path.exists(cli.db), "%s created %s" % (" ".join(argv), cli.db)


CLONE = "0a0615b6-0000-4000-8000-000000000001"  # sorts before ml-train-b's uuid (8a0615b6-…)


def clone_of(sim, source, uuid=CLONE):
    """A copy of `source` as VM.clone makes it: platform and other_config copied."""
    vm = sim.get_vm(source)
    sim.add_vm({"uuid": uuid, "name_label": vm["name_label"] + "-clone", "power_state": "Halted",
                "platform": dict(vm["platform"]), "other_config": dict(vm["other_config"])})
    return uuid


def test_copy_on_an_unregistered_clone_is_mirror_drift(cli, sim):
    cli.register(ML_TRAIN_B, "B", "medium", 5)
    clone_of(sim, ML_TRAIN_B)
    assert VM_KEY in sim.vm_other_config(CLONE)
    assert CLONE not in db_rows(cli.db)
    status = cli.run_json("status")
    assert CLONE in [v["vm_uuid"] for v in status["mirror_drift"]]


def test_rebuild_never_registers_a_clone_from_a_copied_row(cli, sim):
    cli.register(ML_TRAIN_B, "B", "medium", 5)
    clone_of(sim, ML_TRAIN_B)
    delete_registry(cli)
    cli.run("rebuild")
    assert CLONE not in db_rows(cli.db)


def test_rebuild_dry_run_tells_what_rebuild_does_with_a_conflict(cli, sim):
    cli.register(ML_TRAIN_B, "B", "medium", 5)
    clone_of(sim, ML_TRAIN_B)
    delete_registry(cli)
    _, dry = run_json_any(cli, "rebuild", "--dry-run")
    delete_registry(cli)
    _, done = run_json_any(cli, "rebuild")
    assert dry["restored"] == done["restored"]
    assert sorted(s["vm_uuid"] for s in dry["skipped"]) == sorted(s["vm_uuid"] for s in done["skipped"])


def test_write_after_loss_never_registers_a_clone(cli, sim):
    cli.register(ML_TRAIN_B, "B", "medium", 5)
    clone_of(sim, ML_TRAIN_B)
    delete_registry(cli)
    cli.register(RENDER_01, "A", "low")
    assert CLONE not in db_rows(cli.db)


def test_rebuild_without_a_copy_in_xapi_keeps_the_registry(cli, sim):
    """A registry from before the mirror (no generation on the pool, no copy on the VMs): there is
    nothing to rebuild from, so what the registry holds must survive."""
    cli.run_json("register-vm", "--vm-uuid", ML_TRAIN_B, "--vm-name", "chosen", "--pool", "B",
                 "--priority", "medium", "--vm-id", "5")
    cli.register(RENDER_01, "A", "low", 6)
    for u in (ML_TRAIN_B, RENDER_01):
        for k in (VM_KEY, FIELD_KEY):
            sim.set_other_config_key("VM", u, k, None)
    for k in (POOLS_KEY, GENERATION_KEY):
        sim.set_other_config_key("pool", None, k, None)
    sim.set_platform_key(RENDER_01, DMA, None)  # registered, device not applied
    rows = db_rows(cli.db)
    cli.run("rebuild")
    now = db_rows(cli.db)
    assert now.get(RENDER_01) == rows[RENDER_01]
    assert now.get(ML_TRAIN_B) == rows[ML_TRAIN_B]

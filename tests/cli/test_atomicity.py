"""A mutating command changes the registry, the VM's device-model-args and the registry's copy in
XAPI (the mirror: the VM's other_config keys and the pool's rows and generation) as one unit
(SPEC §3, §9).

For every mutating command: run it once successfully and read from the simulator's call log which
XAPI calls it makes (session.* aside). Then, from the same starting state, make each of those calls
fail in turn and check that the command fails with XAPI_ERROR (exit 1) and that

- for the calls before the commit (lookups, get_platform, set_platform, the mirror's
  remove/add_to_other_config on the VM and the pool): the registry file, every VM's platform,
  the mirror and the VM's power state are exactly as before;
- for the restart calls (clean_shutdown, start), which come after the commit: the change is saved
  and written (registry and platform as after the successful run) and the error says the restart
  failed.
"""

import json
import shlex

import pytest

from conftest import (
    CUDA_DEV, DMA, LEGACY_STUB, LEGACY_STUB_DMA, ML_TRAIN_A, ML_TRAIN_A_DMA, ML_TRAIN_B, RENDER_01,
    RENDER_02, device_line, make_ref, parse_error_doc, platforms, strip_timestamps,
)

RESTART_CALLS = ("VM.clean_shutdown", "VM.start")
ALL_VMS = (CUDA_DEV, ML_TRAIN_A, ML_TRAIN_B, RENDER_01, RENDER_02, LEGACY_STUB)
REF_TO_UUID = {make_ref("VM", u): u for u in ALL_VMS}


def reg(cli, *argv):
    cli.run_json(*argv)


# Each scenario: (id, setup(cli), argv, the VM the command changes)
SCENARIOS = [
    ("register-by-uuid-foreign-tokens", None,
     ("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"), ML_TRAIN_A),
    ("register-by-uuid-no-args", None,
     ("register-vm", "--vm-uuid", RENDER_01, "--pool", "B", "--priority", "low", "--vm-id", "9"), RENDER_01),
    ("register-by-name", None,
     ("register-vm", "--vm-name", "cuda-dev", "--pool", "B", "--priority", "medium", "--vm-id", "5"), CUDA_DEV),
    ("register-legacy-stub", None,
     ("register-vm", "--vm-name", "legacy-stub", "--pool", "A", "--priority", "low"), LEGACY_STUB),
    ("set-vm-id",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("set-vm-id", "--vm-uuid", ML_TRAIN_A, "--vm-id", "42"), ML_TRAIN_A),
    ("set-pool-by-name",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("set-pool", "--vm-name", "ml-train-a", "--pool", "B"), ML_TRAIN_A),
    ("set-priority",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"),
     ("set-priority", "--vm-uuid", RENDER_01, "--priority", "low"), RENDER_01),
    ("update-vm",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("update-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "B", "--priority", "medium", "--vm-id", "77"), ML_TRAIN_A),
    ("remove-vm-foreign-tokens",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("remove-vm", "--vm-uuid", ML_TRAIN_A), ML_TRAIN_A),
    ("remove-vm-only-device",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"),
     ("remove-vm", "--vm-name", "render-01"), RENDER_01),
    ("register-restart", None,
     ("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high", "--restart", "--yes"), ML_TRAIN_A),
    ("set-vm-id-restart",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", RENDER_01, "--pool", "A", "--priority", "high"),
     ("set-vm-id", "--vm-uuid", RENDER_01, "--vm-id", "3", "--restart", "--yes"), RENDER_01),
    ("set-pool-restart",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("set-pool", "--vm-uuid", ML_TRAIN_A, "--pool", "B", "--restart", "--yes"), ML_TRAIN_A),
    ("set-priority-restart",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", CUDA_DEV, "--pool", "A", "--priority", "high"),
     ("set-priority", "--vm-name", "cuda-dev", "--priority", "medium", "-y", "--restart"), CUDA_DEV),
    ("update-vm-restart",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", RENDER_02, "--pool", "A", "--priority", "high"),
     ("update-vm", "--vm-uuid", RENDER_02, "--pool", "B", "--vm-id", "8", "--restart", "--yes"), RENDER_02),
    ("remove-vm-restart",
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"),
     ("remove-vm", "--vm-uuid", ML_TRAIN_A, "--restart", "--yes"), ML_TRAIN_A),
]


MIRROR_KEYS = ("vgpu-registry", "XenCenter.CustomFields.vgpu")
POOL_KEYS = ("vgpu-registry:generation", "vgpu-registry:pools")


def mirror(sim):
    """Every VM's mirror keys and the pool's, as XAPI holds them."""
    vms = {u: tuple(sim.get_vm(u)["other_config"].get(k) for k in MIRROR_KEYS) for u in ALL_VMS}
    pool = list(sim.call("pool.get_all_records", sim.session).values())[0]
    return {"vms": vms, "pool": tuple(pool["other_config"].get(k) for k in POOL_KEYS)}


def mirror_without_timestamps(m):
    def clean(value):
        if value is None:
            return None
        row = json.loads(value)
        row.pop("created_at", None)
        row.pop("updated_at", None)
        return row
    return {u: (clean(v[0]), v[1]) for u, v in m["vms"].items()}, m["pool"][0]


def snapshot(cli):
    return {
        "db": cli.dump(),
        "platforms": platforms(cli.sim),
        "power": {u: cli.sim.get_vm(u)["power_state"] for u in ALL_VMS},
        "mirror": mirror(cli.sim),
    }


def base_seed(cli):
    """Every scenario starts from a registry holding an unrelated VM (halted ml-train-b, id 1)."""
    cli.run_json("register-vm", "--vm-uuid", ML_TRAIN_B, "--pool", "B", "--priority", "medium", "--vm-id", "1")


def discover(cli, setup, argv, tag):
    """Runs the command once from a fresh state: (calls [(method, nth, vm)], before, after, output)."""
    before = prepare(cli, setup, tag)
    cli.sim.clear_call_log()
    r = cli.run(*(argv + ("--format", "json")))
    assert r.code == 0, r
    log = [e for e in cli.sim.call_log() if not e["method"].startswith("session.")]
    after = snapshot(cli)
    seen = {}
    calls = []
    for e in log:
        seen[e["method"]] = seen.get(e["method"], 0) + 1
        target = REF_TO_UUID.get(e["params"][1]) if len(e["params"]) > 1 else None
        calls.append((e["method"], seen[e["method"]], target))
    return calls, before, after, json.loads(r.out)


def prepare(cli, setup, tag):
    cli.sim.reset()
    cli.use_db(cli.tmp / tag / "vgpu_config.db")
    base_seed(cli)
    if setup:
        setup(cli)
    return snapshot(cli)


@pytest.mark.parametrize("setup,argv,target", [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_each_xapi_call_failing_leaves_a_consistent_state(cli, setup, argv, target):
    restart = "--restart" in argv
    calls, before, after, ok = discover(cli, setup, argv, "discover")
    methods = [m for m, _, _ in calls]
    # what a successful run does (SPEC §3)
    assert "VM.get_platform" in methods
    # device-model-args are written in one call, never removed then added (decision 0012)
    assert "VM.set_platform" in methods, methods
    assert not set(methods) & {"VM.add_to_platform", "VM.remove_from_platform"}, methods
    if restart:
        assert methods[-2:] == list(RESTART_CALLS), methods
        assert ok["restarted"] is True and ok["pending_restart"] is False
        assert after["power"][target] == "Running"
    else:
        assert not set(methods) & set(RESTART_CALLS)
    assert after["db"] != before["db"]
    assert after["platforms"][target] != before["platforms"][target]
    # the mirror follows the change, and the generation moves on by one
    assert after["mirror"]["vms"][target] != before["mirror"]["vms"][target]
    assert int(after["mirror"]["pool"][0]) == int(before["mirror"]["pool"][0]) + 1
    assert ("VM.add_to_other_config" in methods) or ("VM.remove_from_other_config" in methods), methods
    assert "pool.add_to_other_config" in methods, methods

    for i, (method, nth, _) in enumerate(calls):
        state = prepare(cli, setup, "fault-%d" % i)
        assert strip_timestamps(state["db"]) == strip_timestamps(before["db"])
        cli.sim.clear_call_log()
        cli.sim.inject_fault(method, nth=nth, code="INTERNAL_ERROR", params=["injected at %s #%d" % (method, nth)])
        r = cli.run(*(argv + ("--format", "json")))
        where = "fault on %s #%d: %s" % (method, nth, r.err)
        assert r.code == 1, where
        assert r.out == "", where
        err = parse_error_doc(r.err)
        assert err["code"] == "XAPI_ERROR", where
        assert "INTERNAL_ERROR" in err["message"], where
        assert err["details"]["xapi_method"] == method, where
        fired = [e for e in cli.sim.call_log() if e["method"] == method]
        assert len(fired) >= nth, where
        now = snapshot(cli)
        if method in RESTART_CALLS:
            # after the commit: saved and applied, and the error says the restart failed
            assert strip_timestamps(now["db"]) == strip_timestamps(after["db"]), where
            assert now["platforms"] == after["platforms"], where
            assert mirror_without_timestamps(now["mirror"]) == mirror_without_timestamps(after["mirror"]), where
            assert "the change is saved and written to the VM" in err["message"], where
            what = "shutting down" if method == "VM.clean_shutdown" else "starting"
            assert what in err["message"], where
            assert now["power"][target] == ("Running" if method == "VM.clean_shutdown" else "Halted"), where
        else:
            assert now["db"] == state["db"], where
            assert now["platforms"] == state["platforms"], where
            assert now["power"] == state["power"], where
            assert now["mirror"] == state["mirror"], where
            assert not [e for e in cli.sim.call_log() if e["method"] in RESTART_CALLS], where
            if method in ("VM.get_platform", "VM.set_platform"):
                msg = err["message"]
                assert ("unchanged" in msg) or ("put back" in msg) or ("nothing was changed" in msg), where
            if method.endswith("_other_config"):
                msg = err["message"]
                assert "registry's copy in XAPI" in msg and "nothing was changed" in msg, where


def test_sync_all_each_call_failing(cli):
    """sync --all over two VMs: a failure on one VM leaves that VM (row and platform) as it was,
    reports it as failed (exit 1), and the other VM is still synced."""

    def setup(c):
        c.run_json("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high")
        c.run_json("register-vm", "--vm-uuid", RENDER_01, "--pool", "B", "--priority", "low")
        # ml-train-a: device removed by hand (not applied) and renamed in XAPI
        c.sim.set_platform_key(ML_TRAIN_A, DMA, ML_TRAIN_A_DMA)
        c.sim.set_vm(ML_TRAIN_A, name_label="ml-train-a-renamed")
        # render-01: drift
        c.sim.set_platform_key(RENDER_01, DMA, device_line("A", "high", 2))

    for argv in [("sync", "--all"), ("sync", "--all", "--restart", "--yes")]:
        restart = "--restart" in argv
        calls, before, after, ok = discover(cli, setup, argv, "discover-%d" % restart)
        assert ok["failed"] == 0
        # ids: ml-train-b 1 (base seed), ml-train-a 2, render-01 3
        assert after["platforms"][ML_TRAIN_A][DMA] == ML_TRAIN_A_DMA + " " + device_line("A", "high", 2)
        assert after["platforms"][RENDER_01][DMA] == device_line("B", "low", 3)
        assert [r[2] for r in after["db"]] == ["render-01", "ml-train-b", "ml-train-a-renamed"]  # by uuid
        assert after["platforms"][ML_TRAIN_B] == before["platforms"][ML_TRAIN_B]
        # First the registry catches up with the pool's generation, then the one listing.
        assert [c[0] for c in calls[:2]] == ["pool.get_all_records", "VM.get_all_records_where"], calls
        # A later pool call belongs to the VM step it is in: each step begins with its read of the
        # pool (the generation check), claims the next generation before the VM's own calls, and
        # writes the rest of the pool's keys after them.
        owned = []
        step_vm = None
        for i, (method, nth, vm) in enumerate(calls):
            if i > 1 and method == "pool.get_all_records":
                ahead = []
                for m, _, v in calls[i + 1:]:
                    if m == "pool.get_all_records":
                        break
                    if v:
                        ahead.append(v)
                step_vm = ahead[0] if ahead else None
            if vm is None and i > 1 and method.startswith("pool."):
                vm = step_vm
            owned.append((method, nth, vm))
        calls = owned
        for i, (method, nth, vm) in enumerate(calls):
            state = prepare(cli, setup, "fault-%d-%d" % (restart, i))
            cli.sim.inject_fault(method, nth=nth, code="INTERNAL_ERROR", params=["injected"])
            r = cli.run(*(argv + ("--format", "json")))
            where = "%s: fault on %s #%d (%s): %s %s" % (argv, method, nth, vm, r.out, r.err)
            assert r.code == 1, where
            now = snapshot(cli)
            if vm is None:
                # the listing itself failed: nothing done
                assert parse_error_doc(r.err)["code"] == "XAPI_ERROR", where
                assert now["db"] == state["db"] and now["platforms"] == state["platforms"], where
                continue
            doc = json.loads(r.out)
            assert doc["failed"] == 1, where
            by_uuid = {x["vm_uuid"]: x for x in doc["results"]}
            assert by_uuid[vm]["action"] == "failed", where
            assert by_uuid[vm]["error"]["code"] == "XAPI_ERROR", where
            other = RENDER_01 if vm == ML_TRAIN_A else ML_TRAIN_A
            assert by_uuid[other]["action"] == "applied", where
            assert by_uuid[ML_TRAIN_B]["action"] == "unchanged", where
            rows_now = {row[1]: row for row in now["db"]}
            rows_state = {row[1]: row for row in state["db"]}
            rows_after = {row[1]: row for row in strip_timestamps(after["db"])}
            assert strip_timestamps([rows_now[other]]) == [rows_after[other]], where
            assert now["platforms"][other] == after["platforms"][other], where
            if method in RESTART_CALLS:
                assert strip_timestamps([rows_now[vm]]) == [rows_after[vm]], where
                assert now["platforms"][vm] == after["platforms"][vm], where
                assert "the change is saved" in by_uuid[vm]["error"]["message"], where
            else:
                assert rows_now[vm] == rows_state[vm], where
                assert now["platforms"][vm] == state["platforms"][vm], where
                assert now["power"][vm] == state["power"][vm], where
                assert now["mirror"]["vms"][vm] == state["mirror"]["vms"][vm], where


@pytest.mark.parametrize("argv,setup", [
    (("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high"), None),
    (("set-pool", "--vm-uuid", ML_TRAIN_A, "--pool", "B"),
     lambda cli: reg(cli, "register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high")),
])
def test_double_fault_prints_the_repair_command(cli, argv, setup):
    """set_platform lands but its answer is lost, and the undo's set_platform fails."""
    state = prepare(cli, setup, "double")
    old = state["platforms"][ML_TRAIN_A][DMA]
    inject_double_fault(cli)
    r = cli.run(*argv)
    assert r.code == 1
    assert r.err.startswith("error: ")
    prefix = "xe vm-param-set uuid=%s platform:%s=" % (ML_TRAIN_A, DMA)
    assert prefix in r.err, r.err
    assert prefix + shlex.quote(old) in r.err, r.err
    assert "may be left with the new device-model-args" in r.err, r.err
    assert cli.dump() == state["db"]
    now = platforms(cli.sim)
    # the write landed, the undo did not: the new value, and every other key as it was
    assert now[ML_TRAIN_A][DMA] != old
    assert "vgpu" in now[ML_TRAIN_A][DMA]
    expected = dict(state["platforms"][ML_TRAIN_A])
    expected[DMA] = now[ML_TRAIN_A][DMA]
    assert now[ML_TRAIN_A] == expected
    # json mode says the same
    prepare(cli, setup, "double-json")
    inject_double_fault(cli)
    code, err = cli.json_error(*argv, expect_code="XAPI_ERROR")
    assert prefix in err["message"]


def inject_double_fault(cli):
    cli.sim.inject_fault("VM.set_platform", nth=1, times=1, drop="after")
    cli.sim.inject_fault("VM.set_platform", nth=2, times=1, code="INTERNAL_ERROR", params=["disk full"])


def test_repair_command_can_be_pasted_as_is(cli):
    state = prepare(cli, None, "paste")
    old = state["platforms"][ML_TRAIN_A][DMA]
    inject_double_fault(cli)
    r = cli.run("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high")
    assert r.code == 1
    line = [l for l in r.err.splitlines() if "xe vm-param-set" in l][0]
    cmd = line[line.index("xe vm-param-set"):]
    assert shlex.split(cmd) == ["xe", "vm-param-set", "uuid=" + ML_TRAIN_A, "platform:%s=%s" % (DMA, old)]


@pytest.mark.parametrize("drop,sets", [("before", 1), ("after", 2)])
def test_lost_set_platform_answer_puts_the_old_value_back(cli, drop, sets):
    """A set_platform whose answer is lost is undone from a fresh read of the map: when the write
    landed (dropped after) the old value is set back, when it did not (dropped before) the read
    shows the old value and nothing more is written."""
    state = prepare(cli, None, "lost-" + drop)
    cli.sim.clear_call_log()
    cli.sim.inject_fault("VM.set_platform", nth=1, times=1, drop=drop)
    code, err = cli.json_error("register-vm", "--vm-uuid", ML_TRAIN_A, "--pool", "A", "--priority", "high",
                               expect_code="XAPI_ERROR")
    assert "put back" in err["message"], err
    assert "may still carry out" in err["message"], err
    assert cli.dma(ML_TRAIN_A) == ML_TRAIN_A_DMA
    assert platforms(cli.sim) == state["platforms"]
    assert [r[1] for r in cli.dump()] == [ML_TRAIN_B]
    vm_ref = make_ref("VM", ML_TRAIN_A)
    written = [e["params"][2] for e in cli.sim.call_log("VM.set_platform") if e["params"][1] == vm_ref]
    assert len(written) == sets, written
    assert written[0][DMA] != ML_TRAIN_A_DMA  # the write itself
    if drop == "after":
        assert written[1] == state["platforms"][ML_TRAIN_A]  # the undo: the map as it was
    reads = [e for e in cli.sim.call_log("VM.get_platform") if e["params"][1] == vm_ref]
    assert len(reads) == 2, reads

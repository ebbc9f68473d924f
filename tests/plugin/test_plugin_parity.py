"""Both paths and every interpreter give identical answers (SPEC section 4: "Both paths give
identical results"): one scripted session of calls — every function, errors included, a non-ASCII
VM name, a member host forwarding to the master — runs on a fresh pool per variant; the raw answer
strings and Failure parameters must be the same everywhere once timestamps (and the temporary
directory) are masked."""

import re

from plugin_support import (CUDA_DEV, LEGACY_STUB, ML_TRAIN_A, ML_TRAIN_B, RENDER_01, RENDER_02, SAMPLE_MEMBER, WEB_01,
                            Mediators, Pool, all_variants, get_simulator, unavailable)

UNICODE_VM = "5d0a3c52-3b7e-4b8e-9a51-2f0c6f6f0b11"
UNICODE_NAME = u"B\u00fcro-GPU \u2713 \U0001F600"

SCRIPT = [
    ("list-pools", {}),
    ("scan", {}),
    ("register", {"vm-uuid": RENDER_01, "pool": "A", "priority": "high"}),
    ("register", {"vm-name": "ml-train-b", "pool": "b", "priority": "0", "vm-id": "10"}),
    ("register", {"vm-uuid": LEGACY_STUB, "pool": "B", "priority": "medium", "vm-id": "3"}),
    ("register", {"vm-uuid": UNICODE_VM, "pool": "A", "priority": "low"}),
    ("register", {"vm-uuid": UNICODE_VM, "pool": "A", "priority": "low"}),  # ALREADY_REGISTERED, non-ASCII
    ("register", {"vm-name": "twin", "pool": "A", "priority": "low"}),  # AMBIGUOUS_VM_NAME
    ("register", {"vm-name": UNICODE_NAME + "x", "pool": "A", "priority": "low"}),  # VM_NOT_FOUND
    ("register", {"vm-uuid": CUDA_DEV, "pool": "A", "priority": "high", "restart": "true"}),  # CONFIRMATION
    ("set-vm-id", {"vm-uuid": ML_TRAIN_B, "vm-id": "1"}),  # VM_ID_IN_USE
    ("set-vm-id", {"vm-uuid": ML_TRAIN_B, "vm-id": "11"}),
    ("set-pool", {"vm-name": "render-01", "pool": "B"}),
    ("set-priority", {"vm-uuid": RENDER_01, "priority": "low"}),
    ("update", {"vm-uuid": ML_TRAIN_B, "pool": "A", "priority": "high", "vm-id": "12"}),
    ("update", {"vm-uuid": ML_TRAIN_B}),  # INVALID_ARGUMENT: nothing to change
    ("show", {"vm-uuid": RENDER_01}),
    ("show", {"vm-uuid": RENDER_02}),  # NOT_REGISTERED
    ("show", {"vm-uuid": UNICODE_VM}),
    ("list", {}),
    ("list", {"pool": "A"}),
    ("list", {"colour": "red"}),  # unknown key
    ("show-pool", {"pool": "B"}),
    ("status", {}),
    ("sync", {"all": "true", "dry-run": "true"}),
    ("sync", {"all": "true"}),
    ("scan", {}),
    # the mediator's controls (a stand-in on the master, none on the member)
    ("set-weight", {"vm-uuid": RENDER_01, "weight": "30"}),
    ("set-weight", {"vm-uuid": RENDER_01, "weight": "0"}),  # INVALID_ARGUMENT
    ("set-rate-limit", {"vm-name": "render-01", "rate": "25", "queue-depth": "4"}),
    ("set-rate-limit", {"vm-uuid": RENDER_01, "rate": "abc"}),  # INVALID_ARGUMENT
    ("quarantine", {"vm-uuid": ML_TRAIN_B}),
    ("list", {"quarantined": "true"}),
    ("clear-quarantine", {"vm-uuid": ML_TRAIN_B}),
    ("show-weights", {}),
    ("show-rate-limits", {"pool": "B"}),
    ("mediator", {"action": "health"}),
    ("mediator", {"action": "metrics", "prometheus": "true", "all-hosts": "true"}),
    ("mediator", {"action": "reload"}, SAMPLE_MEMBER),  # no mediator there
    ("mediator", {"action": "bogus"}),  # INVALID_ARGUMENT
    ("quarantine", {"vm-uuid": RENDER_01}, SAMPLE_MEMBER),
    ("remove", {"vm-uuid": WEB_01}),  # NOT_REGISTERED
    ("remove", {"vm-uuid": LEGACY_STUB}),
    ("list", {}, SAMPLE_MEMBER),  # forwarded to the master
    ("register", {"vm-uuid": ML_TRAIN_A, "pool": "A", "priority": "low"}, SAMPLE_MEMBER),
    ("set-vm-id", {"vm-uuid": ML_TRAIN_A, "vm-id": "12"}, SAMPLE_MEMBER),  # VM_ID_IN_USE via the master
    ("list-pools", {}, SAMPLE_MEMBER),
]

STAMP = re.compile(r'"(created_at|updated_at)":("[^"]*"|null)')


def transcript(pool):
    import XenAPI

    pool.sim.add_vm(uuid=UNICODE_VM, name_label=UNICODE_NAME, power_state="Halted")
    pool.sim.set_platform_key(RENDER_02, "device-model-args", "-device vgpu-cuda,addr=5,pool_id=A,priority=low,vm_id=7")
    meds = Mediators(pool)
    out = []
    try:
        for h in pool.hosts:
            meds.configure(h)
        meds.start(pool.master)
        for step in SCRIPT:
            fn, args = step[0], step[1]
            host = step[2] if len(step) > 2 else None
            try:
                raw = pool.call_raw(fn, args, host=host)
                assert raw.isascii(), (pool.variant, fn, raw)
                out.append((fn, "ok", STAMP.sub(r'"\1":"<ts>"', raw).replace(meds.dir, "<meds>")))
            except XenAPI.Failure as e:
                out.append((fn, "failure", [d.replace(pool.workdir, "<workdir>") for d in e.details]))
    finally:
        meds.close()
    return out


def test_same_answers_on_every_path_and_interpreter(simulators, admin, tmp_root, tmp_path):
    variants, missing = all_variants(tmp_root)
    if len(variants) < 2:
        unavailable("cross-path parity", "fewer than two variants can run: %s" % "; ".join(missing))
    results = {}
    for v in variants:
        workdir = tmp_path / v.name
        workdir.mkdir()
        pool = Pool(get_simulator(simulators, "sample_pool"), v, admin, str(workdir))
        try:
            results[v.name] = transcript(pool)
        finally:
            pool.close()
    names = [v.name for v in variants]
    reference = results[names[0]]
    kinds = [r[1] for r in reference]
    # the script really exercises both outcomes (and is not, say, failing everywhere alike)
    assert kinds.count("ok") >= 20 and kinds.count("failure") >= 8, reference
    # and the mediator's answers, not only its absence
    assert any(r[0] == "mediator" and r[1] == "ok" and '"ok":true' in r[2] for r in reference), reference
    for name in names[1:]:
        for step, (a, b) in enumerate(zip(reference, results[name])):
            assert a == b, "step %d %s: %s and %s differ:\n%r\n%r" % (step, SCRIPT[step][0], names[0], name, a, b)
        assert len(results[name]) == len(reference)
    # variants that could not run failed this test in all_variants, unless developers opted out

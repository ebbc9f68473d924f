"""The mediator's controls end to end (SPEC section 10) on the three-host pool, with the real plugin
on every host and a mediator stand-in (tests/mediator_sim) on each host's admin socket, reading that
host's registry file as the mediator does.

A control changed through any host is stored on the master, reaches every host's replica, and every
stand-in is asked to reload; the result reports each reload, and a quarantine or rate limit that a
mediator has not loaded is never reported as in effect. ``mediator`` talks to the mediator of the
host it is called on, or of others through their plugin. What each stand-in loaded (its record) is
the proof of what that host's mediator would now enforce. Expected values are worked out here from
the calls the tests make and the stand-in's documented texts, never read back from the product."""

import os
import re
import socket
import sqlite3
import struct
import threading
import time
from contextlib import closing

import pytest

from plugin_support import (ALPHA, BETA, FWD_01, FWD_02, FWD_03, GAMMA, VARIANTS, Mediators, run_admin_on,
                            write_host_config)

NAMES = {FWD_01: "fwd-01", FWD_02: "fwd-02", FWD_03: "fwd-03"}
HOSTS = (FWD_01, FWD_02, FWD_03)
CONTROLS = ("weight", "max_jobs_per_sec", "max_queue_depth", "quarantined", "error_count")
ANSWER_KEYS = {"host", "name", "ok", "status", "text", "error"}
# beta runs on fwd-02, alpha on fwd-01 (the master), gamma on fwd-03 (tests/xapi_sim/fixtures).
BETA_ID, ALPHA_ID = 5, 3
TIMEOUT_S = 1  # [mediator] timeout_s of a host whose mediator is made to fail
# What a change costs beyond a normal one when one mediator never answers: its timeout, plus
# slack for a loaded machine; far below [pool] refresh_timeout_s (10), which would be the cost if
# the client waited for the mediator.
SLACK_S = 3.5

# The heavy tests run on one modern variant; the rest on every variant.
MODERN = [v for v in VARIANTS if v.name == "py3.12-native"]
modern_only = pytest.mark.parametrize("variant", MODERN, indirect=True, ids=[v.name for v in MODERN])


# ------------------------------------------------------------------------------------------------
# Fixtures and readers


@pytest.fixture
def meds(pool3):
    """Every host configured with a socket of its own; no stand-in started yet."""
    m = Mediators(pool3)
    for h in HOSTS:
        m.configure(h, timeout_s=TIMEOUT_S if h == FWD_02 else 2)
    yield m
    m.close()


@pytest.fixture
def running(pool3, meds):
    """A stand-in on every host, and beta (vm_id 7, A, high) and alpha (vm_id 3, B, low) registered
    through members; every stand-in has loaded both."""
    for h in HOSTS:
        meds.start(h)
    pool3.call("register", {"vm-uuid": BETA, "pool": "A", "priority": "high", "vm-id": str(BETA_ID)}, host=FWD_03)
    pool3.call("register", {"vm-uuid": ALPHA, "pool": "B", "priority": "low", "vm-id": str(ALPHA_ID)}, host=FWD_02)
    for h in HOSTS:
        assert set(meds[h].loaded) == {BETA_ID, ALPHA_ID}, (h, meds[h].loaded)
    return meds


def controls(path, vm):
    """The controls of ``vm`` in a registry file, as the mediator reads the columns."""
    with closing(sqlite3.connect(path)) as c:
        rows = c.execute("SELECT %s FROM vms WHERE vm_uuid = ?" % ", ".join(CONTROLS), (vm,)).fetchall()
    assert len(rows) == 1, (path, vm, rows)
    return dict(zip(CONTROLS, rows[0]))


def all_rows(path):
    with closing(sqlite3.connect(path)) as c:
        return c.execute("SELECT * FROM vms ORDER BY vm_id").fetchall()


def everywhere(pool3, vm, **expected):
    """``vm``'s controls are ``expected`` in the master's file and in every member's replica."""
    for h in HOSTS:
        got = controls(pool3.db(h), vm)
        assert dict((k, got[k]) for k in expected) == expected, (NAMES[h], got)


def by_host(answers):
    """The answers of a ``reloads`` array (or of ``mediator``), by host uuid, each checked for shape."""
    out = {}
    for a in answers:
        assert ANSWER_KEYS <= set(a), a
        assert a["host"] not in out, answers
        assert a["name"] == NAMES[a["host"]], a
        out[a["host"]] = a
    return out


def reload_counts(meds):
    return dict((h, len(m.reloads())) for h, m in meds.running.items())


def request_counts(meds):
    return dict((h, len(m.requests)) for h, m in meds.running.items())


def assert_reloaded_ok(answer, hosts, vms):
    """Each of ``hosts`` (and no other) reloaded with status 0 and the stand-in's text for ``vms``."""
    reloads = by_host(answer["reloads"])
    assert set(reloads) == set(hosts), reloads
    for h in hosts:
        r = reloads[h]
        assert (r["ok"], r["status"], r["error"]) == (True, 0, None), r
        assert r["text"] == "Config reloaded: %d VM(s) updated\n" % vms, r


def last_reload(med):
    """What the stand-in loaded at its latest reload: {vm_id: controls}, the reload having succeeded."""
    event = med.reloads()[-1]
    assert event["ok"] is True, event
    return dict((int(k), v) for k, v in event["vms"].items())


# ------------------------------------------------------------------------------------------------
# A change through a member reaches the master, every replica and every mediator


def test_set_weight_through_a_member_reaches_every_host(pool3, running):
    meds = running
    before = reload_counts(meds)
    out = pool3.call("set-weight", {"vm-name": "beta", "weight": "30"}, host=FWD_03)
    assert (out["vm_uuid"], out["vm_id"], out["weight"]) == (BETA, BETA_ID, 30)
    assert out["in_effect"] is True
    assert_reloaded_ok(out, HOSTS, 2)
    assert all(r["ok"] for r in out["replicas"]) and set(r["host"] for r in out["replicas"]) == {FWD_02, FWD_03}
    everywhere(pool3, BETA, weight=30, max_jobs_per_sec=0, max_queue_depth=0, quarantined=0, error_count=0)
    everywhere(pool3, ALPHA, weight=50)
    for h in HOSTS:
        assert reload_counts(meds)[h] == before[h] + 1, NAMES[h]
        assert last_reload(meds[h])[BETA_ID]["weight"] == 30, NAMES[h]
        # the weight each mediator would give beta's next job, read from its own host's file
        assert meds[h].weight(BETA_ID) == 30 and meds[h].weight(ALPHA_ID) == 50, NAMES[h]
    assert pool3.call("show", {"vm-uuid": BETA}, host=FWD_02)["weight"] == 30


def test_quarantine_through_a_member_is_loaded_where_the_vm_runs(pool3, running):
    meds = running
    out = pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_03)
    assert (out["vm_uuid"], out["quarantined"], out["in_effect"]) == (BETA, True, True)
    assert_reloaded_ok(out, HOSTS, 2)
    everywhere(pool3, BETA, quarantined=1)
    everywhere(pool3, ALPHA, quarantined=0)
    # beta runs on fwd-02: its mediator now rejects beta's new GPU work, and only beta's
    assert meds[FWD_02].loaded[BETA_ID]["quarantined"] is True
    assert meds[FWD_02].loaded[ALPHA_ID]["quarantined"] is False
    for h in HOSTS:  # and wherever it might migrate to
        assert last_reload(meds[h])[BETA_ID]["quarantined"] is True, NAMES[h]
    listed = pool3.call("list", {"quarantined": "true"}, host=FWD_01)
    assert [r["vm_uuid"] for r in listed] == [BETA]


def test_clear_quarantine_also_zeroes_the_error_count(pool3, running):
    meds = running
    pool3.call("quarantine", {"vm-name": "beta"}, host=FWD_02)
    # the errors the master's mediator counted in its host's file (the primary)
    with closing(sqlite3.connect(pool3.db(FWD_01))) as c:
        c.execute("UPDATE vms SET error_count = 6 WHERE vm_uuid = ?", (BETA,))
        c.commit()
    out = pool3.call("clear-quarantine", {"vm-uuid": BETA}, host=FWD_03)
    assert (out["quarantined"], out["error_count"], out["in_effect"]) == (False, 0, True)
    assert_reloaded_ok(out, HOSTS, 2)
    everywhere(pool3, BETA, quarantined=0, error_count=0)
    for h in HOSTS:
        assert last_reload(meds[h])[BETA_ID]["quarantined"] is False, NAMES[h]
        assert meds[h].loaded[BETA_ID]["error_count"] == 0, NAMES[h]
    assert pool3.call("list", {"quarantined": "true"}) == []


def test_rate_limit_reaches_every_mediator_and_keeps_the_queue_depth(pool3, running):
    meds = running
    out = pool3.call("set-rate-limit", {"vm-uuid": ALPHA, "rate": "25", "queue-depth": "8"}, host=FWD_02)
    assert (out["max_jobs_per_sec"], out["max_queue_depth"], out["in_effect"]) == (25, 8, True)
    out = pool3.call("set-rate-limit", {"vm-uuid": ALPHA, "rate": "10"}, host=FWD_03)
    assert (out["max_jobs_per_sec"], out["max_queue_depth"], out["in_effect"]) == (10, 8, True)
    assert_reloaded_ok(out, HOSTS, 2)
    everywhere(pool3, ALPHA, max_jobs_per_sec=10, max_queue_depth=8)
    for h in HOSTS:
        assert meds[h].loaded[ALPHA_ID]["max_jobs_per_sec"] == 10, NAMES[h]
        assert meds[h].loaded[ALPHA_ID]["max_queue_depth"] == 8, NAMES[h]
    shown = pool3.call("show-rate-limits", {}, host=FWD_03)
    assert [(r["vm_uuid"], r["max_jobs_per_sec"], r["max_queue_depth"]) for r in shown] == [
        (BETA, 0, 0), (ALPHA, 10, 8)]
    weights = pool3.call("show-weights", {"pool": "B"}, host=FWD_02)
    assert [(r["vm_uuid"], r["weight"]) for r in weights] == [(ALPHA, 50)]


def test_a_mediator_started_after_a_change_loads_it_at_its_start_and_reload(pool3, meds):
    """The change reached the file of a host whose mediator was down; a mediator started later
    finds the rate limit there at its start, and the quarantine at its first reload."""
    meds.start(FWD_01)
    pool3.call("register", {"vm-uuid": GAMMA, "pool": "A", "priority": "medium"}, host=FWD_02)
    pool3.call("set-rate-limit", {"vm-uuid": GAMMA, "rate": "5"}, host=FWD_02)
    out = pool3.call("quarantine", {"vm-uuid": GAMMA}, host=FWD_02)
    assert out["in_effect"] is True and set(by_host(out["reloads"])) == {FWD_01}
    gamma_id = out["vm_id"]
    late = meds.start(FWD_03)  # gamma runs on fwd-03
    assert late.loaded == {gamma_id: {"max_jobs_per_sec": 5, "max_queue_depth": 0}}
    [answer] = pool3.call("mediator", {"action": "reload"}, host=FWD_03)
    assert (answer["host"], answer["ok"]) == (FWD_03, True), answer
    assert late.loaded[gamma_id]["quarantined"] is True


def lose_file(pool3, meds, host):
    """``host``'s registry file is lost; its mediator, restarted, finds none until a reload."""
    meds.stop(host)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(pool3.db(host) + suffix):
            os.unlink(pool3.db(host) + suffix)
    return meds.start(host)


def test_controls_survive_a_change_of_master(pool3, running):
    """The controls travel in the mirror: a new master that lost its file rebuilds them from XAPI,
    and its mediator and the remaining member's load them again."""
    import json

    meds = running
    pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_03)
    pool3.call("set-weight", {"vm-uuid": BETA, "weight": "80"}, host=FWD_02)
    pool3.call("set-rate-limit", {"vm-uuid": ALPHA, "rate": "9", "queue-depth": "2"}, host=FWD_03)
    mirror = json.loads(pool3.sim.vm_other_config(BETA)["vgpu-registry"])
    assert (mirror["weight"], mirror["quarantined"], mirror["error_count"]) == (80, True, 0), mirror
    mirror = json.loads(pool3.sim.vm_other_config(ALPHA)["vgpu-registry"])
    assert (mirror["max_jobs_per_sec"], mirror["max_queue_depth"], mirror["quarantined"]) == (9, 2, False), mirror

    fresh = lose_file(pool3, meds, FWD_02)
    pool3.sim.fail_master(FWD_02)
    out = pool3.call("set-priority", {"vm-uuid": ALPHA, "priority": "medium"}, host=FWD_03)
    reloads = by_host(out["reloads"])
    assert reloads[FWD_02]["ok"] is True and reloads[FWD_03]["ok"] is True, reloads
    assert reloads[FWD_01]["ok"] is False, reloads  # the old master is down
    out = pool3.call("set-weight", {"vm-uuid": ALPHA, "weight": "60"}, host=FWD_03)
    assert out["weight"] == 60
    for h in (FWD_02, FWD_03):
        got = controls(pool3.db(h), BETA)
        assert (got["weight"], got["quarantined"]) == (80, 1), (NAMES[h], got)
        got = controls(pool3.db(h), ALPHA)
        assert (got["weight"], got["max_jobs_per_sec"], got["max_queue_depth"]) == (60, 9, 2), (NAMES[h], got)
        assert last_reload(meds[h])[BETA_ID]["quarantined"] is True, NAMES[h]
        assert last_reload(meds[h])[ALPHA_ID]["max_jobs_per_sec"] == 9, NAMES[h]
    assert fresh.weight(ALPHA_ID) == 60 and fresh.weight(BETA_ID) == 80


BEHIND = ("reads the registration before catching the file up: on a master whose file is behind "
          "the pool (lost, or it missed a change while down) it answers VGPU_NOT_REGISTERED, "
          "again on every retry, until some other command catches the file up")


def stuck_behind(fn, args, check):
    return pytest.param(fn, args, check, id=fn)


@modern_only
@pytest.mark.parametrize("how", ["lost", "missed"])
@pytest.mark.parametrize("fn,args,check", [
    pytest.param("set-pool", {"pool": "A"}, ("pool", "A"), id="set-pool"),
    stuck_behind("set-weight", {"weight": "60"}, ("weight", 60)),
    stuck_behind("set-rate-limit", {"rate": "4"}, ("max_jobs_per_sec", 4)),
    stuck_behind("quarantine", {}, ("quarantined", True)),
    stuck_behind("clear-quarantine", {}, ("quarantined", False)),
    stuck_behind("remove", {}, ("removed", True)),
])
def test_first_change_on_a_new_master_that_is_behind(pool3, meds, fn, args, check, how):
    for h in HOSTS:
        meds.start(h)
    if how == "missed":
        pool3.sim.set_host_live(FWD_02, False)
    pool3.call("register", {"vm-uuid": ALPHA, "pool": "B", "priority": "low"}, host=FWD_03)
    if how == "lost":
        lose_file(pool3, meds, FWD_02)
    else:
        pool3.sim.set_host_live(FWD_02, True)
    pool3.sim.fail_master(FWD_02)
    out = pool3.call(fn, dict(args, **{"vm-uuid": ALPHA}), host=FWD_03)
    field, value = check
    assert (out["vm_uuid"], out[field]) == (ALPHA, value), out
    assert meds[FWD_02].reloads()[-1]["ok"] is True


# ------------------------------------------------------------------------------------------------
# Hosts without a mediator, hosts that are down


def test_a_host_without_a_mediator_socket_is_skipped(pool3, meds):
    meds.start(FWD_01)
    meds.start(FWD_02)  # fwd-03 is configured, but no mediator runs there: no socket file
    assert not os.path.exists(meds.socket(FWD_03))
    pool3.call("register", {"vm-uuid": BETA, "pool": "A", "priority": "high", "vm-id": str(BETA_ID)}, host=FWD_01)
    out = pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_03)
    assert out["in_effect"] is True
    assert_reloaded_ok(out, (FWD_01, FWD_02), 1)
    replicas = dict((r["host"], r) for r in out["replicas"])
    assert replicas[FWD_03]["ok"] is True  # its replica was refreshed all the same
    everywhere(pool3, BETA, quarantined=1)
    assert meds[FWD_02].loaded[BETA_ID]["quarantined"] is True
    # asked directly, it says it has none
    [answer] = pool3.call("mediator", {"action": "health", "host": "fwd-03"}, host=FWD_01)
    assert (answer["host"], answer["ok"], answer.get("absent")) == (FWD_03, False, True), answer
    assert "no mediator" in answer["error"] and meds.socket(FWD_03) in answer["error"], answer


def test_a_host_that_is_down_leaves_a_quarantine_not_in_effect(pool3, running):
    """Whether a host that cannot be reached runs a mediator is unknown: it is listed as a failed
    reload, and neither a quarantine nor a weight (its replica did not get it) is in effect."""
    meds = running
    pool3.sim.set_host_live(FWD_03, False)
    try:
        out = pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_02)
        assert out["in_effect"] is False
        reloads = by_host(out["reloads"])
        assert set(reloads) == set(HOSTS)
        assert reloads[FWD_03]["ok"] is False and "not refreshed" in reloads[FWD_03]["error"], reloads[FWD_03]
        assert reloads[FWD_01]["ok"] is True and reloads[FWD_02]["ok"] is True
        assert controls(pool3.db(FWD_01), BETA)["quarantined"] == 1  # stored all the same
        assert meds[FWD_02].loaded[BETA_ID]["quarantined"] is True
        assert meds[FWD_03].loaded[BETA_ID]["quarantined"] is False
        out = pool3.call("set-weight", {"vm-uuid": BETA, "weight": "20"}, host=FWD_02)
        assert out["in_effect"] is False
    finally:
        pool3.sim.set_host_live(FWD_03, True)


PAST_64 = ("every reload succeeds but no mediator loads the control of a VM past the 64th row of its "
           "order (status warns about it), and the change still says in_effect: true; issue 11: a "
           "quarantine that a mediator has not loaded is never reported as in effect")


@modern_only
@pytest.mark.parametrize("fn,args,field", [
    pytest.param("quarantine", {}, "quarantined"),
    pytest.param("set-rate-limit", {"rate": "7"}, "max_jobs_per_sec"),
])
def test_control_past_the_64th_row_is_not_in_effect(pool3, meds, fn, args, field):
    for h in HOSTS:
        meds.start(h)
    # 65 VMs of pool A, high, vm_id 101..165, then gamma (B, low, vm_id 7): vm_id 165 is the 65th
    vms = [pool3.sim.add_vm(name_label="many-%d" % n, power_state="Halted", platform={
        "device-model-args": "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=%d" % n})["uuid"]
        for n in range(101, 166)]
    adopted = pool3.call("adopt", {"all": "true"}, host=FWD_02)
    assert len(adopted["adopted"]) == 66 and adopted["skipped"] == [], adopted["skipped"]
    out = pool3.call(fn, dict(args, **{"vm-uuid": vms[-1]}), host=FWD_03)
    assert out["vm_id"] == 165 and out[field] == controls(pool3.db(FWD_01), vms[-1])[field]
    assert_reloaded_ok(out, HOSTS, 64)
    for h in HOSTS:
        assert set(meds[h].loaded) == set(range(101, 165)), NAMES[h]
    warnings = pool3.call("status", {}, host=FWD_01)["warnings"]
    assert any("vm_id 165" in w for w in warnings), warnings
    assert out["in_effect"] is False, "stored but loaded by no mediator, yet reported in effect"


# ------------------------------------------------------------------------------------------------
# A mediator that never answers costs at most its timeout; the change is stored, not in effect


def timed(fn, *args, **kw):
    started = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - started


def assert_timed_out(answer, host, command="RELOAD_CONFIG"):
    assert (answer["host"], answer["ok"], answer["status"], answer["text"]) == (host, False, None, None), answer
    assert re.search(r"did not answer %s within %d ?s\b" % (command, TIMEOUT_S), answer["error"]), answer
    assert meds_socket_named(answer), answer


def meds_socket_named(answer):
    return re.search(r"/%s\.sock\b" % answer["host"][:8], answer["error"])


def test_dead_mediator_where_the_vm_runs(pool3, running):
    meds = running
    # what a change costs here when every mediator answers
    _, normal = timed(pool3.call, "set-weight", {"vm-uuid": BETA, "weight": "40"}, host=FWD_03)
    meds[FWD_02].set_mode("dead")
    out, took = timed(pool3.call, "quarantine", {"vm-uuid": BETA}, host=FWD_03)
    assert took < normal + TIMEOUT_S + SLACK_S, "took %.1f s (a normal change: %.1f s)" % (took, normal)
    assert out["quarantined"] is True and out["in_effect"] is False
    reloads = by_host(out["reloads"])
    assert set(reloads) == set(HOSTS)
    assert_timed_out(reloads[FWD_02], FWD_02)
    assert reloads[FWD_01]["ok"] is True and reloads[FWD_03]["ok"] is True
    # stored, mirrored and refreshed everywhere; the dead mediator still holds the old value
    assert all(r["ok"] for r in out["replicas"]), out["replicas"]
    everywhere(pool3, BETA, quarantined=1)
    assert meds[FWD_02].loaded[BETA_ID]["quarantined"] is False
    assert meds[FWD_03].loaded[BETA_ID]["quarantined"] is True

    # a weight is read on every request: in effect without a reload
    out, took = timed(pool3.call, "set-weight", {"vm-uuid": BETA, "weight": "70"}, host=FWD_03)
    assert took < normal + TIMEOUT_S + SLACK_S, "took %.1f s (a normal change: %.1f s)" % (took, normal)
    assert out["weight"] == 70 and out["in_effect"] is True
    assert_timed_out(by_host(out["reloads"])[FWD_02], FWD_02)
    assert meds[FWD_02].weight(BETA_ID) == 70

    # the mediator restarted, the reload retried through any host: now it is loaded there
    fresh = meds.start(FWD_02)
    [answer] = pool3.call("mediator", {"action": "reload", "host": "fwd-02"}, host=FWD_01)
    assert (answer["host"], answer["ok"], answer["status"]) == (FWD_02, True, 0), answer
    assert fresh.loaded[BETA_ID]["quarantined"] is True and fresh.loaded[BETA_ID]["weight"] == 70


def test_dead_mediator_on_the_master(pool3, meds):
    write_host_config(pool3, FWD_01, '[mediator]\nadmin_socket = "%s"\ntimeout_s = %d\n'
                      % (meds.socket(FWD_01), TIMEOUT_S))
    for h in HOSTS:
        meds.start(h)
    _, normal = timed(pool3.call, "register", {"vm-uuid": ALPHA, "pool": "A", "priority": "low"}, host=FWD_02)
    meds[FWD_01].set_mode("dead")
    out, took = timed(pool3.call, "set-rate-limit", {"vm-uuid": ALPHA, "rate": "12"}, host=FWD_02)
    assert took < normal + TIMEOUT_S + SLACK_S, "took %.1f s (a normal change: %.1f s)" % (took, normal)
    assert out["max_jobs_per_sec"] == 12 and out["in_effect"] is False
    reloads = by_host(out["reloads"])
    assert_timed_out(reloads[FWD_01], FWD_01)
    assert reloads[FWD_02]["ok"] is True and reloads[FWD_03]["ok"] is True
    everywhere(pool3, ALPHA, max_jobs_per_sec=12)
    alpha_id = out["vm_id"]
    assert meds[FWD_01].loaded[alpha_id]["max_jobs_per_sec"] == 0
    assert meds[FWD_02].loaded[alpha_id]["max_jobs_per_sec"] == 12


def test_mediator_command_on_a_dead_mediator_is_bounded(pool3, running):
    meds = running
    _, normal = timed(pool3.call, "mediator", {"action": "health", "all-hosts": "true"}, host=FWD_03)
    meds[FWD_02].set_mode("dead")
    answers, took = timed(pool3.call, "mediator", {"action": "health", "all-hosts": "true"}, host=FWD_03)
    assert took < normal + TIMEOUT_S + SLACK_S, "took %.1f s (with every mediator: %.1f s)" % (took, normal)
    answers = by_host(answers)
    assert set(answers) == set(HOSTS)
    assert_timed_out(answers[FWD_02], FWD_02, "SHOW_HEALTH")
    assert answers[FWD_01]["ok"] is True and answers[FWD_03]["ok"] is True


# ------------------------------------------------------------------------------------------------
# A mediator that answers an error, drops the request, or answers outside the protocol


def older_design_db(path):
    """A database of the mediator's oldest design: no control columns, so a reload cannot read it."""
    with closing(sqlite3.connect(path)) as c:
        c.executescript("CREATE TABLE vms (vm_id INTEGER, vm_uuid TEXT, pool_id TEXT, priority INTEGER);"
                        "INSERT INTO vms VALUES (7, 'x', 'A', 2);")
    return path


@pytest.mark.parametrize("why,error", [
    ("no database", "ERROR: Database not connected"),
    ("older design", "ERROR: Failed to read VM configs from DB"),
])
def test_mediator_answering_an_error(pool3, running, why, error):
    meds = running
    db = os.path.join(pool3.workdir, "elsewhere.db")
    if why == "older design":
        older_design_db(db)
    meds.start(FWD_03, db=db)  # fwd-03's mediator reads another file
    out = pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_02)
    assert out["in_effect"] is False
    reloads = by_host(out["reloads"])
    r = reloads[FWD_03]
    assert (r["ok"], r["status"], r["text"], r["error"]) == (False, 1, error + "\n", error), r
    assert reloads[FWD_01]["ok"] is True and reloads[FWD_02]["ok"] is True
    everywhere(pool3, BETA, quarantined=1)
    # asked directly: the same answer
    [answer] = pool3.call("mediator", {"action": "reload", "host": FWD_03}, host=FWD_01)
    assert (answer["ok"], answer["status"], answer["error"]) == (False, 1, error), answer


def test_dropping_mediator(pool3, running):
    meds = running
    meds[FWD_03].set_mode("drop")
    before = request_counts(meds)
    out = pool3.call("clear-quarantine", {"vm-uuid": BETA}, host=FWD_01)
    assert out["in_effect"] is False
    r = by_host(out["reloads"])[FWD_03]
    assert (r["ok"], r["status"], r["text"]) == (False, None, None), r
    assert re.search(r"closed the connection without answering RELOAD_CONFIG", r["error"]), r
    assert meds_socket_named(r), r
    # it was asked once, and dropped it
    asked = meds[FWD_03].requests[before[FWD_03]:]
    assert [(q.command, q.outcome) for q in asked] == [(0x12, "dropped-mode")]


class RawServer(object):
    """A socket that answers every request with ``reply`` (bytes), then closes: a program that is not
    the mediator, or a broken one."""

    def __init__(self, path, reply):
        self.path = path
        self.reply = reply
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(5)
        self.thread = threading.Thread(target=self._serve)
        self.thread.daemon = True
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with closing(conn):
                conn.recv(16)
                conn.sendall(self.reply)

    def close(self):
        self.listener.close()
        os.unlink(self.path)


HEADER = struct.Struct("<III")
MAGIC = 0x56475055


@pytest.mark.parametrize("reply,error", [
    (HEADER.pack(0x12345678, 0, 0), r"answered RELOAD_CONFIG wrongly: .*0x12345678"),
    (b"UP", r"answered RELOAD_CONFIG wrongly: .*2 of the 12 header bytes"),
    (HEADER.pack(MAGIC, 0, 100) + b"abc", r"answered RELOAD_CONFIG wrongly: .*3 of the 100 bytes"),
], ids=["wrong-magic", "short-header", "short-text"])
def test_answer_outside_the_protocol(pool3, meds, reply, error):
    server = RawServer(meds.socket(FWD_03), reply)
    try:
        [answer] = pool3.call("mediator", {"action": "reload", "host": "fwd-03"}, host=FWD_02)
    finally:
        server.close()
    assert (answer["host"], answer["ok"], answer["status"], answer["text"]) == (FWD_03, False, None, None), answer
    assert re.search(error, answer["error"]) and meds_socket_named(answer), answer


def test_socket_left_behind_by_a_crashed_mediator(pool3, meds):
    """The socket file is there but nothing listens: the mediator is down, not absent."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(meds.socket(FWD_03))
    s.close()
    pool3.call("register", {"vm-uuid": BETA, "pool": "A", "priority": "high"}, host=FWD_02)
    out = pool3.call("quarantine", {"vm-uuid": BETA}, host=FWD_02)
    assert out["in_effect"] is False
    r = by_host(out["reloads"])[FWD_03]
    assert r["ok"] is False and not r.get("absent"), r
    assert "cannot connect" in r["error"] and meds_socket_named(r), r


def test_slow_mediator_is_waited_for_within_the_timeout(pool3, running):
    meds = running
    meds[FWD_03].set_mode("slow", delay=0.5)  # fwd-03's timeout: 2 s
    meds[FWD_02].set_mode("slow", delay=TIMEOUT_S + 1.5)
    out = pool3.call("set-rate-limit", {"vm-uuid": BETA, "rate": "3"}, host=FWD_01)
    reloads = by_host(out["reloads"])
    assert reloads[FWD_03]["ok"] is True and reloads[FWD_03]["status"] == 0, reloads[FWD_03]
    assert_timed_out(reloads[FWD_02], FWD_02)
    assert out["in_effect"] is False


# ------------------------------------------------------------------------------------------------
# `mediator`: this host's, another host's (by name-label or uuid), every host's


def stand_in_samples(vm_ids):
    """The Prometheus samples the stand-in gives for ``vm_ids`` (its README: jobs 10N, errors N mod 3,
    rejected N mod 2, p95 200+N, p99 300+N, 3 context switches per VM, no GPU reset)."""
    out = {
        ("vgpu_jobs_total", ()): sum(10 * n for n in vm_ids),
        ("vgpu_errors_total", ()): sum(n % 3 for n in vm_ids),
        ("vgpu_rejected_total", ()): sum(n % 2 for n in vm_ids),
        ("vgpu_context_switches_total", ()): 3 * len(vm_ids),
        ("vgpu_gpu_resets_total", ()): 0,
    }
    for n in vm_ids:
        labels = (("vm_id", str(n)),)
        out[("vgpu_vm_jobs_total", labels)] = 10 * n
        out[("vgpu_vm_latency_p95_us", labels)] = 200 + n
        out[("vgpu_vm_latency_p99_us", labels)] = 300 + n
    return out


def samples_of(answer):
    got = {}
    for s in answer["samples"]:
        assert set(s) == {"name", "labels", "value"}, s
        key = (s["name"], tuple(sorted(s["labels"].items())))
        assert key not in got, answer["samples"]
        got[key] = s["value"]
    return got


def test_mediator_actions_on_this_host_are_not_forwarded(pool3, running):
    meds = running
    pool3.sim.clear_call_log()
    [answer] = pool3.call("mediator", {"action": "connections"}, host=FWD_03)
    assert (answer["host"], answer["ok"], answer["status"], answer["error"]) == (FWD_03, True, 0, None), answer
    assert answer["text"].startswith("=== Active VM Connections ===\n"), answer
    assert "Admin: %s\n" % meds.socket(FWD_03) in answer["text"], answer  # fwd-03's own mediator
    calls = pool3.sim.call_log("host.call_plugin")
    assert [(c["params"][1], c["params"][3]) for c in calls] == [(pool3.host_ref(FWD_03), "mediator")]

    [answer] = pool3.call("mediator", {"action": "health"}, host=FWD_02)
    assert answer["host"] == FWD_02 and answer["ok"] is True
    assert answer["text"].startswith("NVML: not available (GPU monitoring disabled)\n"), answer
    assert "=== Watchdog ===\n" in answer["text"] and "Context Switches: 6\n" in answer["text"], answer
    assert "samples" not in answer or answer["samples"] is None, answer


@pytest.mark.parametrize("target", ["name-label", "uuid", "upper-case uuid"])
def test_mediator_actions_on_another_host(pool3, running, target):
    meds = running
    host = {"name-label": "fwd-02", "uuid": FWD_02, "upper-case uuid": FWD_02.upper()}[target]
    before = reload_counts(meds)
    [answer] = pool3.call("mediator", {"action": "connections", "host": host}, host=FWD_03)
    assert (answer["host"], answer["name"], answer["ok"]) == (FWD_02, "fwd-02", True), answer
    assert "Admin: %s\n" % meds.socket(FWD_02) in answer["text"], answer

    [answer] = pool3.call("mediator", {"action": "metrics", "host": host}, host=FWD_03)
    assert answer["host"] == FWD_02 and answer["ok"] is True
    text = answer["text"]
    assert text.startswith("=== vGPU Mediator Metrics ===\n"), answer
    assert "Total jobs: %d\n" % (10 * (BETA_ID + ALPHA_ID)) in text, answer
    assert "--- VM %d ---\n" % BETA_ID in text and "--- VM %d ---\n" % ALPHA_ID in text, answer

    [answer] = pool3.call("mediator", {"action": "metrics", "prometheus": "true", "host": host}, host=FWD_03)
    assert answer["host"] == FWD_02 and answer["ok"] is True
    assert answer["text"].startswith("# HELP vgpu_jobs_total "), answer
    assert samples_of(answer) == stand_in_samples([BETA_ID, ALPHA_ID])

    [answer] = pool3.call("mediator", {"action": "reload", "host": host}, host=FWD_03)
    assert (answer["host"], answer["ok"], answer["status"]) == (FWD_02, True, 0), answer
    assert answer["text"] == "Config reloaded: 2 VM(s) updated\n"
    after = reload_counts(meds)
    assert after == dict(before, **{FWD_02: before[FWD_02] + 1}), (before, after)


def test_mediator_on_every_host(pool3, running):
    meds = running
    meds.stop(FWD_01)  # the master has none now
    answers = pool3.call("mediator", {"action": "connections", "all-hosts": "true"}, host=FWD_02)
    answers = by_host(answers)
    assert set(answers) == set(HOSTS)
    assert answers[FWD_01]["ok"] is False and answers[FWD_01].get("absent") is True, answers[FWD_01]
    for h in (FWD_02, FWD_03):
        assert answers[h]["ok"] is True, answers[h]
        assert "Admin: %s\n" % meds.socket(h) in answers[h]["text"], answers[h]
    answers = by_host(pool3.call("mediator", {"action": "metrics", "prometheus": "true", "all-hosts": "true"},
                                 host=FWD_01))
    for h in (FWD_02, FWD_03):
        assert samples_of(answers[h]) == stand_in_samples([BETA_ID, ALPHA_ID]), h


BAD_MEDIATOR_ARGS = [
    ({"action": "health", "host": "nope"}, "host", '"nope"'),
    ({"action": "health", "host": "fwd-0"}, "host", '"fwd-0"'),
    ({"action": "bogus"}, "action", '"bogus"'),
    ({"action": ""}, "action", "action"),
    ({"action": "health", "prometheus": "true"}, "prometheus", "metrics"),
    ({"action": "health", "host": "fwd-02", "all-hosts": "true"}, None, "all-hosts"),
    ({"host": "fwd-02"}, None, "action"),
]


def test_mediator_refuses_bad_arguments(pool3, running):
    meds = running
    before = request_counts(meds)
    for args, argument, needle in BAD_MEDIATOR_ARGS:
        code, message, details = pool3.fail("mediator", args, host=FWD_03)
        assert code == "VGPU_INVALID_ARGUMENT", (args, code, message)
        assert needle in message, (args, message)
        if argument:
            assert details["argument"] == argument, (args, details)
        if argument == "host":
            assert all(name in message for name in NAMES.values()), message  # the hosts it could have been
    assert request_counts(meds) == before  # no mediator was asked anything


# ------------------------------------------------------------------------------------------------
# Bad values are refused before anything is resolved or changed


@pytest.mark.parametrize("fn,args,argument", [
    ("set-weight", {"weight": "0"}, "weight"),
    ("set-weight", {"weight": "101"}, "weight"),
    ("set-weight", {"weight": "50.5"}, "weight"),
    ("set-weight", {"weight": "-3"}, "weight"),
    ("set-rate-limit", {"rate": "-1"}, "rate"),
    ("set-rate-limit", {"rate": "abc"}, "rate"),
    ("set-rate-limit", {"rate": "5", "queue-depth": "-1"}, "queue-depth"),
    ("set-rate-limit", {"rate": "99999999999"}, "rate"),
], ids=lambda x: x if isinstance(x, str) else "=".join(sorted(x.items())[-1]))
def test_bad_values_change_nothing(pool3, running, fn, args, argument):
    meds = running
    files = dict((h, all_rows(pool3.db(h))) for h in HOSTS)
    generation = pool3.sim.pool_other_config()["vgpu-registry:generation"]
    before = request_counts(meds)
    # a VM that does not exist is not even looked up: the value is refused first
    for vm in ("beta", "no-such-vm"):
        code, message, details = pool3.fail(fn, dict(args, **{"vm-name": vm}), host=FWD_02)
        assert code == "VGPU_INVALID_ARGUMENT", (vm, code, message)
        assert (details["argument"], details["value"]) == (argument, args[argument]), details
        assert '"%s"' % args[argument] in message, message
    assert dict((h, all_rows(pool3.db(h))) for h in HOSTS) == files
    assert pool3.sim.pool_other_config()["vgpu-registry:generation"] == generation
    assert request_counts(meds) == before  # no mediator was asked anything


# ------------------------------------------------------------------------------------------------
# Other registry changes reload the mediators too


def test_registration_changes_reload_every_mediator(pool3, running):
    meds = running
    out = pool3.call("set-pool", {"vm-uuid": ALPHA, "pool": "A"}, host=FWD_03)
    assert_reloaded_ok(out, HOSTS, 2)
    assert "in_effect" not in out or out["in_effect"] is None  # only control changes say it
    out = pool3.call("remove", {"vm-uuid": ALPHA}, host=FWD_03)
    assert_reloaded_ok(out, HOSTS, 1)
    for h in HOSTS:
        assert set(meds[h].loaded) == {BETA_ID}, NAMES[h]  # a removed VM keeps no control


@modern_only
def test_adopt_reports_the_reloads(pool3, running):
    meds = running
    before = reload_counts(meds)
    out = pool3.call("adopt", {"vm-uuid": GAMMA}, host=FWD_03)  # gamma carries a device (vm_id 7)
    assert [(a["vm_uuid"], a["vm_id"]) for a in out["adopted"]] == [(GAMMA, 7)] and out["skipped"] == []
    assert all(reload_counts(meds)[h] == before[h] + 1 for h in HOSTS)  # they did reload
    assert_reloaded_ok(out, HOSTS, 3)


@modern_only
def test_rebuild_reports_the_reloads(pool3, running):
    meds = running
    meds.stop(FWD_01)  # the master's registry is lost
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(pool3.db(FWD_01) + suffix):
            os.unlink(pool3.db(FWD_01) + suffix)
    meds.start(FWD_01)
    before = reload_counts(meds)
    out = pool3.call("rebuild", {}, host=FWD_02)
    assert out["restored"] == 2 and [a["vm_uuid"] for a in out["adopt"]["adopted"]] == [GAMMA]
    assert all(reload_counts(meds)[h] == before[h] + 1 for h in HOSTS)  # they did reload
    assert set(meds[FWD_01].loaded) == {BETA_ID, ALPHA_ID, 7}
    assert_reloaded_ok(out, HOSTS, 3)


# ------------------------------------------------------------------------------------------------
# The CLI on the master: exit status and message when a mediator did not reload


def host_config(meds, host):
    """``host``'s config file, as the fixture wrote it, for running vgpu-admin there."""
    return meds.configure(host, timeout_s=TIMEOUT_S if host == FWD_02 else 2)


def master_config(pool3, meds):
    return host_config(meds, FWD_01)


@modern_only
@pytest.mark.parametrize("where", [FWD_01, FWD_03], ids=["on-the-master", "on-a-member"])
def test_cli_quarantine_with_a_dead_mediator_exits_1_and_names_the_retry(pool3, running, where):
    meds = running
    config = host_config(meds, where)
    meds[FWD_02].set_mode("dead")
    started = time.monotonic()
    code, out, err = run_admin_on(pool3, where, ["quarantine-vm", "--vm-name", "beta"], config=config)
    took = time.monotonic() - started
    assert code == 1, (code, out, err)
    assert took < TIMEOUT_S + 1 + SLACK_S, took
    text = out + err
    assert "fwd-02" in text and FWD_02 in text, text
    assert "did not answer RELOAD_CONFIG within %d s" % TIMEOUT_S in text, text
    retry = re.findall(r"vgpu-admin mediator reload --host (\S+)", text)
    assert retry == ["fwd-02"], text
    everywhere(pool3, BETA, quarantined=1)  # stored all the same
    assert meds[FWD_02].loaded[BETA_ID]["quarantined"] is False

    # the mediator is back: the command the message named loads it
    fresh = meds.start(FWD_02)
    code, out, err = run_admin_on(pool3, where, ["mediator", "reload", "--host", retry[0]], config=config)
    assert code == 0, (code, out, err)
    assert "Config reloaded: 2 VM(s) updated" in out, out
    assert fresh.loaded[BETA_ID]["quarantined"] is True


@modern_only
@pytest.mark.parametrize("argv", [
    ["clear-quarantine", "--vm-name", "beta"],
    ["set-rate-limit", "--vm-name", "beta", "--rate", "6"],
], ids=lambda a: a[0])
def test_cli_other_reload_needing_changes_with_a_dead_mediator_exit_1(pool3, running, argv):
    meds = running
    meds[FWD_02].set_mode("dead")
    code, out, err = run_admin_on(pool3, FWD_01, argv, config=master_config(pool3, meds))
    assert code == 1, (code, out, err)
    assert re.findall(r"vgpu-admin mediator reload --host (\S+)", out + err) == ["fwd-02"], out + err


@modern_only
def test_cli_quarantine_json_with_a_dead_mediator(pool3, running):
    import json

    meds = running
    config = master_config(pool3, meds)
    meds[FWD_02].set_mode("dead")
    code, out, err = run_admin_on(pool3, FWD_01, ["--format", "json", "quarantine-vm", "--vm-uuid", BETA],
                                  config=config)
    assert code == 1, (code, out, err)
    doc = json.loads(out)
    assert doc["in_effect"] is False and doc["quarantined"] is True
    reloads = by_host(doc["reloads"])
    assert_timed_out(reloads[FWD_02], FWD_02)
    assert reloads[FWD_01]["ok"] is True and reloads[FWD_03]["ok"] is True


@modern_only
def test_cli_set_weight_with_a_dead_mediator_warns_and_exits_0(pool3, running):
    meds = running
    config = master_config(pool3, meds)
    meds[FWD_02].set_mode("dead")
    code, out, err = run_admin_on(pool3, FWD_01, ["set-weight", "--vm-name", "beta", "--weight", "20"], config=config)
    assert code == 0, (code, out, err)
    text = out + err
    assert "fwd-02" in text and "did not answer RELOAD_CONFIG" in text, text
    assert "\u26a0" in text or "warning" in text.lower(), text
    everywhere(pool3, BETA, weight=20)
    assert meds[FWD_02].weight(BETA_ID) == 20


@modern_only
@pytest.mark.parametrize("argv,needle", [
    (["set-weight", "--vm-name", "no-such-vm", "--weight", "0"], "--weight"),
    (["set-weight", "--vm-name", "beta", "--weight", "101"], "--weight"),
    (["set-rate-limit", "--vm-name", "no-such-vm", "--rate", "abc"], "--rate"),
    (["set-rate-limit", "--vm-name", "beta", "--rate", "-1"], "--rate"),
])
def test_cli_bad_values_exit_2_and_change_nothing(pool3, running, argv, needle):
    meds = running
    config = master_config(pool3, meds)
    files = dict((h, all_rows(pool3.db(h))) for h in HOSTS)
    before = request_counts(meds)
    code, out, err = run_admin_on(pool3, FWD_01, argv, config=config)
    assert code == 2, (code, out, err)
    assert needle in err, err
    assert dict((h, all_rows(pool3.db(h))) for h in HOSTS) == files
    assert request_counts(meds) == before


@modern_only
def test_cli_mediator_on_other_hosts(pool3, running):
    import json

    meds = running
    config = master_config(pool3, meds)
    code, out, err = run_admin_on(pool3, FWD_01, ["--format", "json", "mediator", "metrics", "--prometheus",
                                                  "--host", "fwd-03"], config=config)
    assert code == 0, (code, out, err)
    [answer] = json.loads(out)
    assert answer["host"] == FWD_03 and samples_of(answer) == stand_in_samples([BETA_ID, ALPHA_ID])
    # the older tool's names
    code, out, err = run_admin_on(pool3, FWD_01, ["show-connections", "--all-hosts"], config=config)
    assert code == 0, (code, out, err)
    for h in HOSTS:
        assert "Admin: %s" % meds.socket(h) in out, out
    code, out, err = run_admin_on(pool3, FWD_01, ["mediator", "health", "--host", "nope"], config=config)
    assert code == 2 and "nope" in err, (code, out, err)

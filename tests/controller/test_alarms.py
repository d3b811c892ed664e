"""ISA-18.2 alarm engine: every transition, delays, shelving, suppression, OOS, ack, persistence."""

import json
from dataclasses import dataclass

import pytest

from controller.alarms import AlarmEngine, AlarmError, AlarmEvent, AlarmState
from controller.config import AlarmConfig

S = AlarmState


@dataclass(frozen=True)
class Cfg:
    name: str = "a"
    priority: str = "high"
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    max_shelve_s: float = 3600.0
    message: str = ""


def engine(**kw) -> AlarmEngine:
    return AlarmEngine([Cfg(**kw)])


def moves(events) -> list[tuple[S, S, str]]:
    return [(e.from_state, e.to_state, e.cause) for e in events]


# --- the basic cycle ---------------------------------------------------------------------------

def test_activate_ack_clear():
    e = engine()
    assert moves(e.update(1.0, {"a": True})) == [(S.NORMAL, S.UNACK, "condition")]
    assert e.active() == ("a",)
    (ev,) = e.ack("a", "alice", 2.0)
    assert (ev.from_state, ev.to_state, ev.cause, ev.user, ev.time) == (S.UNACK, S.ACKED, "ack", "alice", 2.0)
    assert moves(e.update(3.0, {"a": False})) == [(S.ACKED, S.NORMAL, "condition")]
    assert e.active() == ()


def test_clear_before_ack_then_ack():
    e = engine()
    e.update(1.0, {"a": True})
    assert moves(e.update(2.0, {"a": False})) == [(S.UNACK, S.RTN_UNACK, "condition")]
    assert e.active() == ()
    assert moves(e.ack("a", "bob", 3.0)) == [(S.RTN_UNACK, S.NORMAL, "ack")]


def test_return_to_active_from_rtn_unack():
    e = engine()
    e.update(1.0, {"a": True})
    e.update(2.0, {"a": False})
    assert moves(e.update(3.0, {"a": True})) == [(S.RTN_UNACK, S.UNACK, "condition")]


def test_reactivation_after_ack_needs_a_new_ack():
    e = engine()
    e.update(1.0, {"a": True})
    e.ack("a", "u", 1.5)
    e.update(2.0, {"a": False})
    assert moves(e.update(3.0, {"a": True})) == [(S.NORMAL, S.UNACK, "condition")]


@pytest.mark.parametrize("state_setup", ["normal", "acked", "shelved", "suppressed", "oos"])
def test_ack_does_nothing_where_nothing_is_unacknowledged(state_setup):
    e = engine()
    if state_setup == "acked":
        e.update(1.0, {"a": True})
        e.ack("a", "u", 1.0)
    elif state_setup == "shelved":
        e.update(1.0, {"a": True})
        e.shelve("a", "u", 1.0, 60)
    elif state_setup == "suppressed":
        e.update(1.0, {"a": True}, {"a": True})
    elif state_setup == "oos":
        e.update(1.0, {"a": True})
        e.set_out_of_service("a", "u", 1.0, True)
    before = e.state("a")
    assert e.ack("a", "u", 2.0) == []
    assert e.state("a") is before


def test_unchanged_update_returns_the_shared_empty_tuple():
    e = engine()
    first = e.update(1.0, {"a": False})
    assert first == () and first is e.update(2.0, {"a": False}) and first is e.update(3.0, {})


def test_unknown_alarm_is_an_error():
    e = engine()
    with pytest.raises(AlarmError, match="unknown alarm 'zz'"):
        e.ack("zz", "u", 1.0)
    with pytest.raises(AlarmError, match="used twice"):
        AlarmEngine([Cfg(), Cfg()])


# --- delays --------------------------------------------------------------------------------------

def test_on_delay_needs_the_condition_to_hold():
    e = engine(on_delay_s=2.0)
    assert e.update(10.0, {"a": True}) == ()
    assert e.update(11.9, {"a": True}) == ()
    assert moves(e.update(12.0, {"a": True})) == [(S.NORMAL, S.UNACK, "condition")]


def test_on_delay_restarts_when_the_condition_drops():
    e = engine(on_delay_s=2.0)
    e.update(10.0, {"a": True})
    e.update(11.0, {"a": False})
    e.update(11.5, {"a": True})
    assert e.update(13.0, {"a": True}) == ()  # only 1.5 s since it came back
    assert moves(e.update(13.5, {})) == [(S.NORMAL, S.UNACK, "condition")]  # timers run without inputs


def test_off_delay_holds_the_alarm():
    e = engine(off_delay_s=5.0)
    e.update(0.0, {"a": True})
    assert e.update(1.0, {"a": False}) == ()
    assert e.update(3.0, {"a": True}) == ()  # came back within the off-delay: no chatter
    e.update(4.0, {"a": False})
    assert e.update(8.9, {}) == ()
    assert moves(e.update(9.0, {})) == [(S.UNACK, S.RTN_UNACK, "condition")]


def test_deadband_via_condition():
    cfg = AlarmConfig(name="hot", source="threshold:t > 80", deadband=2.0)
    e = AlarmEngine([cfg])
    cond = cfg.source.condition
    active = False
    states = []
    for x in (79, 81, 79, 78.5, 77.9, 80.5):
        active = cond.holds(x, active=active, deadband=cfg.deadband)
        e.update(0.0, {"hot": active})
        states.append(e.state("hot"))
    assert states == [S.NORMAL, S.UNACK, S.UNACK, S.UNACK, S.RTN_UNACK, S.UNACK]


# --- shelving --------------------------------------------------------------------------------------

def test_shelve_expires_to_the_state_the_condition_implies():
    e = engine()
    e.update(0.0, {"a": True})
    assert moves(e.shelve("a", "op", 1.0, 10.0)) == [(S.UNACK, S.SHELVED, "shelve")]
    assert e.active() == ()
    assert e.update(10.9, {}) == ()
    (ev,) = e.update(11.0, {})
    assert (ev.from_state, ev.to_state, ev.cause, ev.user) == (S.SHELVED, S.UNACK, "shelve_expired", "")


def test_shelve_expires_to_normal_when_the_condition_cleared():
    e = engine()
    e.update(0.0, {"a": True})
    e.shelve("a", "op", 1.0, 10.0)
    assert e.update(2.0, {"a": False}) == ()  # hidden: no annunciation
    assert moves(e.update(11.0, {})) == [(S.SHELVED, S.NORMAL, "shelve_expired")]


def test_condition_changes_while_shelved_are_tracked():
    e = engine()
    e.shelve("a", "op", 0.0, 10.0)
    e.update(5.0, {"a": True})
    assert moves(e.update(10.0, {})) == [(S.SHELVED, S.UNACK, "shelve_expired")]


def test_unshelve_and_reshelve():
    e = engine()
    e.update(0.0, {"a": True})
    e.shelve("a", "op", 1.0, 10.0)
    (ev,) = e.shelve("a", "op2", 5.0, 30.0)  # extend: recorded, same state
    assert (ev.from_state, ev.to_state, ev.cause, ev.user) == (S.SHELVED, S.SHELVED, "shelve", "op2")
    assert e.update(20.0, {}) == ()  # the extension holds past the first expiry
    assert moves(e.unshelve("a", "op", 21.0)) == [(S.SHELVED, S.UNACK, "unshelve")]
    assert e.unshelve("a", "op", 22.0) == []


def test_shelve_duration_is_bounded():
    e = engine(max_shelve_s=60)
    with pytest.raises(AlarmError, match="<= 60"):
        e.shelve("a", "op", 0.0, 61)
    with pytest.raises(AlarmError, match="> 0"):
        e.shelve("a", "op", 0.0, 0)


# --- suppression by design, out of service -----------------------------------------------------

def test_suppression_hides_and_returns():
    e = engine()
    e.update(0.0, {"a": True})
    assert moves(e.update(1.0, {}, {"a": True})) == [(S.UNACK, S.SUPPRESSED, "suppressed")]
    assert e.active() == ()
    assert moves(e.update(2.0, {"a": False}, {"a": False})) == [(S.SUPPRESSED, S.NORMAL, "unsuppressed")]


def test_activation_while_suppressed_annunciates_on_release():
    e = engine()
    e.update(0.0, {"a": True}, {"a": True})
    assert e.state("a") is S.SUPPRESSED
    assert moves(e.update(1.0, {}, {"a": False})) == [(S.SUPPRESSED, S.UNACK, "unsuppressed")]


def test_out_of_service_and_back():
    e = engine()
    e.update(0.0, {"a": True})
    e.shelve("a", "op", 0.5, 100)
    (ev,) = e.set_out_of_service("a", "tech", 1.0, True)
    assert (ev.from_state, ev.to_state, ev.cause, ev.user) == (S.SHELVED, S.OUT_OF_SERVICE, "oos", "tech")
    assert e.update(200.0, {"a": False}) == ()  # shelving was cleared, nothing expires
    with pytest.raises(AlarmError, match="out of service"):
        e.shelve("a", "op", 201.0, 10)
    assert e.set_out_of_service("a", "tech", 202.0, True) == []
    assert moves(e.set_out_of_service("a", "tech", 203.0, False)) == [
        (S.OUT_OF_SERVICE, S.NORMAL, "return_to_service")]


def test_oos_beats_shelved_beats_suppressed():
    e = engine()
    e.update(0.0, {"a": True}, {"a": True})
    assert e.state("a") is S.SUPPRESSED
    e.shelve("a", "op", 1.0, 10)
    assert e.state("a") is S.SHELVED
    e.set_out_of_service("a", "op", 2.0, True)
    assert e.state("a") is S.OUT_OF_SERVICE
    e.set_out_of_service("a", "op", 3.0, False)
    assert e.state("a") is S.SUPPRESSED


# --- views and persistence --------------------------------------------------------------------------

def test_active_is_sorted_by_priority():
    e = AlarmEngine([Cfg("low1", "low"), Cfg("crit", "critical"), Cfg("med", "medium")])
    e.update(0.0, {"low1": True, "crit": True, "med": True})
    assert e.active() == ("crit", "med", "low1")
    assert [r["name"] for r in e.status()] == ["crit", "med", "low1"]


def test_event_serialises():
    e = engine()
    (ev,) = e.update(1.0, {"a": True})
    assert isinstance(ev, AlarmEvent)
    assert json.loads(json.dumps(ev.to_dict()))["to_state"] == "UNACK"


def test_snapshot_restore_round_trip():
    cfgs = [Cfg("a", on_delay_s=5), Cfg("b"), Cfg("c"), Cfg("d")]
    e = AlarmEngine(cfgs)
    e.update(0.0, {"a": True, "b": True, "c": True, "d": True}, {"d": True})
    e.ack("b", "u", 1.0)
    e.shelve("c", "u", 1.0, 100)
    snap = json.loads(json.dumps(e.snapshot()))  # survives JSON
    r = AlarmEngine(cfgs)
    assert r.restore(snap) == []
    expected = e.snapshot()
    # a running on-delay was timed on the old process's monotonic clock: it restarts from live data
    expected["alarms"]["a"].update(raw=False, pending_since=None)
    assert r.snapshot() == expected
    assert r.active() == e.active() == ("b",)
    assert r.update(5.0, {"a": True}) == ()  # the on-delay starts again at the first live update
    assert moves(r.update(10.0, {})) == [(S.NORMAL, S.UNACK, "condition")]
    # a shelve expiry is a wall-clock deadline: it survives the restart
    assert moves(r.update(101.0, {}, wall=101.0)) == [(S.SHELVED, S.UNACK, "shelve_expired")]


def test_delays_run_on_the_monotonic_clock_and_shelves_on_the_wall_clock():
    e = AlarmEngine([Cfg("a", on_delay_s=2), Cfg("b")])
    e.shelve("b", "u", 1000.0, 60)
    assert e.update(0.0, {"a": True, "b": True}, wall=1000.0) == ()
    # wall time jumps back an hour and forward a day: the on-delay only sees monotonic time
    assert e.update(1.0, {}, wall=1000.0 - 3600) == ()
    events = e.update(2.0, {}, wall=1000.0 + 86400)
    # stamped in wall time; the day-later wall time is past the shelve deadline
    assert [(ev.alarm, ev.cause, ev.time) for ev in events] == [
        ("a", "condition", 1000.0 + 86400), ("b", "shelve_expired", 1000.0 + 86400)]


def test_first_out_names_the_first_rise_of_an_episode_even_when_suppressed():
    e = AlarmEngine([Cfg("flat", on_delay_s=1), Cfg("line", off_delay_s=1)])
    e.update(0.0, {"flat": True, "line": False}, {"flat": False}, wall=50.0)
    e.update(0.1, {"line": True}, {"flat": True}, wall=50.1)  # the stop suppresses the first cause
    assert e.first_out == ("flat", 50.0) and e.state("flat") is S.SUPPRESSED
    e.update(0.2, {"flat": False, "line": False})
    assert e.first_out == ("flat", 50.0)  # "line" is still active (its off-delay runs)
    e.update(1.2, {})
    assert e.first_out is None  # quiet: the next rise starts a new episode
    e.update(0.4, {"line": True}, wall=60.0)
    assert e.first_out == ("line", 60.0)


def test_restore_skips_removed_alarms_and_rejects_other_versions():
    e = AlarmEngine([Cfg("a"), Cfg("gone")])
    snap = e.snapshot()
    assert AlarmEngine([Cfg("a")]).restore(snap) == ["gone"]
    with pytest.raises(AlarmError, match="version"):
        AlarmEngine([Cfg("a")]).restore({"version": 99})

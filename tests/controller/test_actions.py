"""Action engine: interlocks, rate limit, latch + reset, inhibit, shadow, confirmation, persistence."""

import json
import math

import numpy as np
import pytest

from controller.actions import ActionEngine, ActionError, WriteRequest
from controller.conditions import ArrayTagView
from controller.config import ActionConfig

RUNNING = {"speed": 100.0}


def action(**kw) -> ActionConfig:
    base = {"name": "stop", "alarm": "anomaly", "write": {"tag": "line_stop", "value": True},
            "interlocks": ["speed > 50"], "confirm_within_s": 1.0}
    return ActionConfig.model_validate({**base, **kw})


def kinds(engine: ActionEngine) -> list[str]:
    return [e.kind for e in engine.take_events()]


def test_fires_once_per_activation():
    e = ActionEngine([action()])
    assert e.evaluate(0.0, (), RUNNING) == ()
    (w,) = e.evaluate(1.0, {"anomaly"}, RUNNING)
    assert w == WriteRequest("stop", "line_stop", True, 1.0, 2.0)
    assert e.evaluate(1.5, {"anomaly"}, RUNNING) == ()  # still the same activation
    e.evaluate(2.0, (), RUNNING)
    assert len(e.evaluate(3.0, {"anomaly"}, RUNNING)) == 1  # a new activation fires again
    assert kinds(e) == ["fired", "fired"]


def test_interlock_blocks_and_fires_when_it_clears():
    e = ActionEngine([action()])
    assert e.evaluate(0.0, {"anomaly"}, {"speed": 10.0}) == ()
    assert e.evaluate(0.1, {"anomaly"}, {"speed": 20.0}) == ()
    (ev,) = e.take_events()  # reported once, not per step
    assert ev.kind == "blocked" and ev.detail.startswith("blocked by interlock speed > 50")
    assert len(e.evaluate(0.2, {"anomaly"}, {"speed": 60.0})) == 1


def test_unknown_interlock_value_blocks():
    e = ActionEngine([action(interlocks=["speed != 0"])])
    assert e.evaluate(0.0, {"anomaly"}, {"speed": math.nan}) == ()
    assert e.evaluate(0.0, {"anomaly"}, {}) == ()
    assert kinds(e) == ["blocked"]


def test_every_interlock_must_hold():
    e = ActionEngine([action(interlocks=["speed > 50", "mode == 1"])])
    assert e.evaluate(0.0, {"anomaly"}, {"speed": 100.0, "mode": 0.0}) == ()
    assert "mode == 1" in e.take_events()[0].detail
    assert len(e.evaluate(0.1, {"anomaly"}, {"speed": 100.0, "mode": 1.0})) == 1


def test_blocked_demand_is_dropped_when_the_alarm_clears():
    e = ActionEngine([action()])
    e.evaluate(0.0, {"anomaly"}, {"speed": 0.0})
    e.evaluate(0.1, (), {"speed": 0.0})
    assert e.evaluate(0.2, (), RUNNING) == ()


def test_min_interval_delays_the_next_fire():
    e = ActionEngine([action(min_interval_s=5.0)])
    e.evaluate(0.0, {"anomaly"}, RUNNING)
    e.evaluate(1.0, (), RUNNING)
    assert e.evaluate(2.0, {"anomaly"}, RUNNING) == ()
    assert e.evaluate(4.9, {"anomaly"}, RUNNING) == ()
    assert kinds(e) == ["fired", "rate_limited"]
    assert len(e.evaluate(5.0, {"anomaly"}, RUNNING)) == 1


def test_latch_blocks_refire_until_reset():
    e = ActionEngine([action(latch=True)])
    assert len(e.evaluate(0.0, {"anomaly"}, RUNNING)) == 1
    e.evaluate(1.0, (), RUNNING)
    assert e.evaluate(2.0, {"anomaly"}, RUNNING) == ()
    assert kinds(e) == ["fired", "latched"]
    assert e.status()[0]["latched"]
    (ev,) = e.reset("stop", "alice", 3.0)
    assert (ev.kind, ev.user) == ("reset", "alice") and "latched" in ev.detail
    assert e.evaluate(3.5, {"anomaly"}, RUNNING) == ()  # reset re-arms for the NEXT activation
    e.evaluate(4.0, (), RUNNING)
    assert len(e.evaluate(5.0, {"anomaly"}, RUNNING)) == 1


def test_inhibit_blocks_and_release_lets_a_waiting_demand_fire():
    e = ActionEngine([action()])
    (ev,) = e.inhibit("stop", "bob", 0.0, True)
    assert (ev.kind, ev.user) == ("inhibited", "bob")
    assert e.inhibit("stop", "bob", 0.0, True) == []
    assert e.evaluate(1.0, {"anomaly"}, RUNNING) == ()
    assert kinds(e) == ["inhibited"]
    assert e.inhibit("stop", "bob", 2.0, False)[0].kind == "uninhibited"
    assert len(e.evaluate(2.0, {"anomaly"}, RUNNING)) == 1


@pytest.mark.parametrize(("global_shadow", "per_action"), [(True, False), (False, True), (True, True)])
def test_shadow_writes_nothing_and_says_what_it_would_write(global_shadow, per_action):
    e = ActionEngine([action(shadow=per_action, latch=True)], shadow_global=global_shadow)
    assert e.evaluate(0.0, {"anomaly"}, RUNNING) == ()
    (ev,) = e.take_events()
    assert (ev.kind, ev.detail) == ("shadow", "shadow: would write line_stop=True")
    assert e.check_deadlines(100.0) == () and e.failed() == frozenset()
    # shadow never latches: the next activation shows again what would happen
    e.evaluate(1.0, (), RUNNING)
    e.evaluate(2.0, {"anomaly"}, RUNNING)
    assert kinds(e) == ["shadow"]


def test_shadow_still_honours_interlocks():
    e = ActionEngine([action()], shadow_global=True)
    e.evaluate(0.0, {"anomaly"}, {"speed": 0.0})
    assert kinds(e) == ["blocked"]


def test_confirm_within_deadline():
    e = ActionEngine([action()])
    e.evaluate(0.0, {"anomaly"}, RUNNING)
    assert e.check_deadlines(0.5) == ()
    (ev,) = e.confirm("stop", 0.3, ok=True)
    assert ev.kind == "confirmed" and "0.300 s" in ev.detail
    assert e.check_deadlines(5.0) == () and e.failed() == frozenset()
    assert e.confirm("stop", 0.4, ok=True) == []  # nothing awaits any more


def test_missed_deadline_is_one_failure_and_a_late_confirm_clears_it():
    e = ActionEngine([action()])
    e.evaluate(0.0, {"anomaly"}, RUNNING)
    assert e.check_deadlines(1.0) == ()  # exactly at the deadline is still in time
    (ev,) = e.check_deadlines(1.01)
    assert ev.kind == "failed" and "not confirmed within 1 s" in ev.detail
    assert e.check_deadlines(2.0) == ()  # reported once
    assert e.failed() == {"stop"} and e.has_failed("stop")
    (late,) = e.confirm("stop", 3.0, ok=True)
    assert "after the deadline" in late.detail and e.failed() == frozenset()


def test_failed_readback_raises_failure_until_reset():
    e = ActionEngine([action(latch=True)])
    e.evaluate(0.0, {"anomaly"}, RUNNING)
    (ev,) = e.confirm("stop", 0.2, ok=False, detail="readback 0 != 1")
    assert ev.kind == "failed" and ev.detail.endswith("readback 0 != 1")
    assert e.failed() == {"stop"}
    e.reset("stop", "op", 1.0)
    assert e.failed() == frozenset()


def test_no_deadline_when_confirm_within_is_none():
    e = ActionEngine([action(confirm_within_s=None)])
    (w,) = e.evaluate(0.0, {"anomaly"}, RUNNING)
    assert w.deadline is None and e.check_deadlines(1e9) == ()


def test_array_tag_view_feeds_interlocks():
    values = np.array([10.0, 0.0])
    view = ArrayTagView({"speed": 0, "other": 1}, values)
    e = ActionEngine([action()])
    assert e.evaluate(0.0, {"anomaly"}, view) == ()
    values[0] = 80.0  # the view reads the live array
    assert len(e.evaluate(0.1, {"anomaly"}, view)) == 1


def test_unknown_action_and_duplicate_names():
    e = ActionEngine([action()])
    with pytest.raises(ActionError, match="unknown action 'nope'"):
        e.reset("nope", "u", 0.0)
    with pytest.raises(ActionError, match="used twice"):
        ActionEngine([action(), action()])


def test_snapshot_restore_keeps_latch_inhibit_and_failure():
    cfgs = [action(latch=True), action(name="gate", alarm="reject", min_interval_s=10.0),
            action(name="horn", alarm="x")]
    e = ActionEngine(cfgs)
    e.evaluate(0.0, {"anomaly", "reject"}, RUNNING)
    e.confirm("stop", 0.1, ok=True)  # gate's write stays unconfirmed
    e.inhibit("horn", "op", 0.5, True)
    snap = json.loads(json.dumps(e.snapshot()))
    r = ActionEngine(cfgs)
    assert r.restore(snap) == []
    st = {s["name"]: s for s in r.status()}
    assert st["stop"]["latched"] and st["horn"]["inhibited"]
    assert st["gate"]["failed"]  # an unconfirmed write cannot be confirmed after a restart
    assert r.evaluate(1.0, {"anomaly", "reject", "x"}, RUNNING) == ()  # same activations, inhibited
    r.evaluate(2.0, (), RUNNING)
    # latched; min_interval_s ran on the old process's monotonic clock, so gate may fire again
    assert [w.action for w in r.evaluate(3.0, {"anomaly", "reject"}, RUNNING)] == ["gate"]
    assert [k for k in kinds(r) if k != "inhibited"] == ["latched", "fired"]
    assert st["stop"]["last_fire"] == 0.0  # the wall time of the fire before the restart


def test_min_interval_and_deadlines_run_on_the_monotonic_clock():
    e = ActionEngine([action(min_interval_s=5.0, confirm_within_s=1.0)])
    (w,) = e.evaluate(0.0, {"anomaly"}, RUNNING, wall=1000.0)
    assert w.time == 1000.0
    e.evaluate(0.5, (), RUNNING, wall=1000.0 + 86400)  # the wall clock jumps a day ahead
    assert e.check_deadlines(0.9, wall=1000.0 + 86400) == ()  # the deadline is 1 s of monotonic time
    assert e.evaluate(1.0, {"anomaly"}, RUNNING, wall=1000.0 + 86400) == ()  # still rate-limited
    (ev,) = e.check_deadlines(1.1, wall=5.0)
    assert (ev.kind, ev.time) == ("failed", 5.0)


def test_a_firing_names_its_first_out_cause():
    e = ActionEngine([action()])
    e.evaluate(0.0, {"anomaly"}, RUNNING, first_out="vibration_flatline (vibration_rms: flatline)")
    (ev,) = [ev for ev in e.take_events() if ev.kind == "fired"]
    assert ev.detail.endswith("; first out: vibration_flatline (vibration_rms: flatline)")
    assert e.status()[0]["first_out"] == "vibration_flatline (vibration_rms: flatline)"


def test_restore_rejects_other_versions_and_skips_removed_actions():
    snap = ActionEngine([action(), action(name="old")]).snapshot()
    assert ActionEngine([action()]).restore(snap) == ["old"]
    with pytest.raises(ActionError, match="version"):
        ActionEngine([action()]).restore({"version": 2})

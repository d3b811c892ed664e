"""Hypothesis state machine: random operator and process histories keep the ISA-18.2 invariants."""

import json
import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from controller.alarms import ANNUNCIATED_ACTIVE, AlarmEngine, AlarmState
from controller.config import AlarmConfig

S = AlarmState
CFGS = [AlarmConfig(name="slow", source="comm:plc", priority="critical", on_delay_s=1.0, off_delay_s=2.0),
        AlarmConfig(name="fast", source="comm:plc", priority="low")]
NAMES = st.sampled_from([c.name for c in CFGS])
DELAYS = {c.name: (c.on_delay_s, c.off_delay_s) for c in CFGS}
VISIBLE = {S.NORMAL, S.UNACK, S.ACKED, S.RTN_UNACK}
REVEALED = {S.NORMAL, S.UNACK}  # leaving a hidden state: the state the condition implies, ack pending or not
LEGAL = {  # cause -> allowed (from, to) pairs
    "condition": {(S.NORMAL, S.UNACK), (S.UNACK, S.RTN_UNACK), (S.ACKED, S.NORMAL), (S.RTN_UNACK, S.UNACK)},
    "ack": {(S.UNACK, S.ACKED), (S.RTN_UNACK, S.NORMAL)},
    "shelve": {(f, S.SHELVED) for f in VISIBLE | {S.SUPPRESSED, S.SHELVED}},
    "unshelve": {(S.SHELVED, t) for t in REVEALED | {S.SUPPRESSED}},
    "shelve_expired": {(S.SHELVED, t) for t in REVEALED | {S.SUPPRESSED}},
    "suppressed": {(f, S.SUPPRESSED) for f in VISIBLE},
    "unsuppressed": {(S.SUPPRESSED, t) for t in REVEALED},
    "oos": {(f, S.OUT_OF_SERVICE) for f in VISIBLE | {S.SUPPRESSED, S.SHELVED}},
    "return_to_service": {(S.OUT_OF_SERVICE, t) for t in REVEALED | {S.SUPPRESSED}},
}


class AlarmMachine(RuleBasedStateMachine):
    """Keeps a model of the inputs (not of the engine) and checks what they imply."""

    @initialize()
    def start(self) -> None:
        self.engine = AlarmEngine(CFGS)
        self.now = 0.0
        self.raw = {n: False for n in DELAYS}
        self.raw_since = {n: -math.inf for n in DELAYS}
        self.suppressed = {n: False for n in DELAYS}
        self.shelved_until: dict[str, float | None] = {n: None for n in DELAYS}
        self.oos = {n: False for n in DELAYS}
        self.last_state = {n: S.NORMAL for n in DELAYS}
        self.last_time = 0.0

    def record(self, events) -> None:
        for ev in events:
            assert ev.from_state is self.last_state[ev.alarm], f"chain broken at {ev}"
            assert (ev.from_state, ev.to_state) in LEGAL[ev.cause], f"illegal transition {ev}"
            assert ev.time >= self.last_time
            self.last_state[ev.alarm], self.last_time = ev.to_state, ev.time

    def step(self, conditions: dict[str, bool], suppressed: dict[str, bool] | None = None) -> None:
        for n, c in conditions.items():
            if c != self.raw[n]:
                self.raw[n], self.raw_since[n] = c, self.now
        self.suppressed.update(suppressed or {})
        for n, until in self.shelved_until.items():
            if until is not None and self.now >= until:
                self.shelved_until[n] = None
        self.record(self.engine.update(self.now, conditions, suppressed))

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.step({})

    @rule(name=NAMES, value=st.booleans())
    def condition(self, name: str, value: bool) -> None:
        self.step({name: value})

    @rule(name=NAMES, value=st.booleans())
    def suppress(self, name: str, value: bool) -> None:
        self.step({}, {name: value})

    @rule(name=NAMES)
    def ack(self, name: str) -> None:
        before = self.engine.state(name)
        events = self.engine.ack(name, "op", self.now)
        expected = {S.UNACK: S.ACKED, S.RTN_UNACK: S.NORMAL}.get(before, before)
        assert self.engine.state(name) is expected
        assert len(events) == (before is not expected)
        self.record(events)

    @rule(name=NAMES, duration=st.sampled_from([0.5, 1.0, 4.0]))
    def shelve(self, name: str, duration: float) -> None:
        if self.oos[name]:
            return
        self.record(self.engine.shelve(name, "op", self.now, duration))
        self.shelved_until[name] = self.now + duration

    @rule(name=NAMES)
    def unshelve(self, name: str) -> None:
        self.record(self.engine.unshelve(name, "op", self.now))
        self.shelved_until[name] = None

    @rule(name=NAMES, value=st.booleans())
    def out_of_service(self, name: str, value: bool) -> None:
        self.record(self.engine.set_out_of_service(name, "op", self.now, value))
        self.oos[name] = value
        if value:
            self.shelved_until[name] = None

    @rule()
    def restart(self) -> None:
        snap = json.loads(json.dumps(self.engine.snapshot()))
        fresh = AlarmEngine(CFGS)
        fresh.restore(snap)
        # A running on/off delay was timed on the old process's monotonic clock: it is dropped
        # and the raw condition restarts from the debounced one (the next live update re-feeds it).
        for n, facts in snap["alarms"].items():
            facts.update(raw=facts["active"], pending_since=None)
            self.raw[n], self.raw_since[n] = facts["active"], -math.inf
        assert fresh.snapshot() == snap
        assert fresh.active() == self.engine.active()
        self.engine = fresh

    @invariant()
    def state_follows_the_inputs(self) -> None:
        if not hasattr(self, "engine"):
            return
        for n in DELAYS:
            state = self.engine.state(n)
            assert state is self.last_state[n], "a state changed without an event"
            if self.oos[n]:
                assert state is S.OUT_OF_SERVICE
                continue
            if self.shelved_until[n] is not None:
                assert state is S.SHELVED
                continue
            if self.suppressed[n]:
                assert state is S.SUPPRESSED
                continue
            on, off = DELAYS[n]
            settled = self.now - self.raw_since[n] >= (on if self.raw[n] else off)
            if settled:
                # e.g. never UNACK/ACKED once the condition has been false for off_delay
                assert (state in ANNUNCIATED_ACTIVE) == self.raw[n], (n, state, self.raw[n])
            assert state not in (S.SHELVED, S.SUPPRESSED, S.OUT_OF_SERVICE)

    @invariant()
    def active_lists_exactly_the_annunciated_active_alarms(self) -> None:
        if not hasattr(self, "engine"):
            return
        expected = {n for n in DELAYS if self.engine.state(n) in ANNUNCIATED_ACTIVE}
        assert set(self.engine.active()) == expected


AlarmMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestAlarmMachine = AlarmMachine.TestCase

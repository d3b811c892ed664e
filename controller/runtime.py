"""The controller service: drivers, detector, alarms, actions, summaries, outbox, sync and API.

Hot path (`_on_batch`, one call per driver batch, on the event loop):
    line state <- batch;  detector.step;  alarm conditions -> AlarmEngine.update;
    ActionEngine.evaluate -> writes scheduled as tasks (never awaited here);
    then, past the critical part, the window summarizer.
No disk, network (other than the actuator writes it schedules), logging or JSON
happens there: events and summaries are handed to `_housekeeping`, a task that
runs every 50 ms and also drives everything time-based (alarm delays and shelve
expiry when no data arrives, readback deadlines, staleness, fail-safe).

Durations run on `self.clock.mono()` (controller.clock), wall time only stamps events and
times shelve expiry. Liveness has one owner: a PLC is live while good data arrives, i.e.
`mono - max(driver.stats.last_alive, start) <= stale_timeout_s`; a PLC that never delivered
counts from the controller's start. Comm loss is raised by housekeeping, so within
stale_timeout_s + HOUSEKEEPING_S of the last good data, and clears only when good data
arrives again (docs/safety.md).

Each PLC runs in its own task under a `DriverSupervisor`; a watchdog task per
PLC writes the heartbeat counter. `run()` returns after `stop()` (SIGTERM):
in-flight writes finish, state is saved, sessions close, no task is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import math
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from controller.actions import ActionEngine, WriteRequest
from controller.alarms import AlarmEngine
from controller.api import ApiServer, Refused, create_app, reserved_fds
from controller.clock import Clock
from controller.conditions import ArrayTagView
from controller.config import LineConfig, ModbusPlc, OpcUaPlc, safe_state_alarm_name
from controller.events import EventLog
from controller.linestate import LineState
from controller.logs import alarm_transition_level
from controller.metrics import ControllerCollector, LatencyRing
from controller.outbox import Outbox
from controller.points import EventClock, Identity, TagInfo, event_point, window_points
from controller.statedir import READ_TOKEN_FILE, TOKEN_FILE, StateDir
from controller.summaries import WindowSummarizer, WindowSummary
from controller.sync import SyncWorker
from drivers.base import ConnectionState, Driver, Quality, ReadingBatch
from drivers.errors import DriverError
from drivers.modbus.driver import ModbusDriver
from drivers.opcua.driver import OpcUaDriver
from drivers.supervisor import DriverSupervisor
from models import ModelError, StreamingDetector, TagLimits, load_model, spec_differences
from models.kernels import FLAG_BITS, FLAG_NAMES, O_ALARM, O_SCORE

log = logging.getLogger("linesentry")

HOUSEKEEPING_S = 0.05
SHUTDOWN_SYNC_S = 2.0
SUMMARY_WINDOW_S = 10.0
COMM_LOST = int(Quality.COMM_LOST)
TEXT_IN_DETECTOR = ("carries text, not a number: it is never fed to the detector (its invalid flag "
                    "is raised); remove it from [detector] tags")


@dataclass
class Plc:
    """One PLC at run time: its driver, supervisor, where its tags sit on the line, liveness."""

    config: OpcUaPlc | ModbusPlc
    driver: Driver
    binding: np.ndarray  # driver tag index -> line position
    stale_timeout_s: float
    polled: bool  # Modbus polls deliver every cycle, so per-tag age means staleness
    supervisor: DriverSupervisor | None = None
    comm_lost: bool = False  # the comm-loss condition: no good data for longer than stale_timeout_s
    delivered: bool = False  # good data arrived at least once (before that its tags are "not heard yet")
    safe_state_done: bool = False
    safe_state_failed: bool = False  # a safe-state write failed during this comm loss (an alarm)
    heartbeat: int = 0
    write_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class BuiltinAlarm:
    """An alarm the controller defines itself: `<plc>_safe_state_failed` for every PLC with
    on_comm_loss = 'safe_state' (a safe state that was not reached needs a human, now)."""

    name: str
    message: str
    priority: str = "critical"
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    max_shelve_s: float = 0.0
    shelvable: bool = False


def _clock(wall: float | None) -> str:
    """A wall time for operator messages: local ISO time to the second."""
    if wall is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def make_driver(plc: OpcUaPlc | ModbusPlc) -> Driver:
    return OpcUaDriver(plc.driver) if isinstance(plc, OpcUaPlc) else ModbusDriver(plc.driver)


class Controller:
    """One line's controller. `await run()` until `stop()`."""

    def __init__(self, config: LineConfig, *, detector: StreamingDetector | None = None,
                 api_port: int | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self._mono, self._wall = self.clock.mono, self.clock.wall
        self._started_mono = self._mono()  # reset by run(): never-connected PLCs count from here
        c = config.controller
        self.identity = Identity(c.site, c.line, c.name)
        self.state_dir = StateDir(c.state_dir)
        self.api_port = c.api_port if api_port is None else api_port
        self.tag_refs = config.tags()
        self.tag_names = list(self.tag_refs)
        self.detector_tags = config.detector_tags()
        self.line = LineState(self.tag_names, self.detector_tags)
        self.values = ArrayTagView(self.line.position, self.line.values)
        self.events = EventLog()
        self.model_path = config.detector.model
        self.detector: StreamingDetector = self._make_detector(detector)

        self.plcs = [Plc(p, make_driver(p), self.line.binding([t.name for t in p.driver.tags]),
                         p.effective_stale_timeout_s(), polled=isinstance(p, ModbusPlc))
                     for _, p in config.plcs()]
        self._plc_of_tag = {t.name: plc for plc in self.plcs for t in plc.config.driver.tags}
        self._plc_by_name = {plc.name: plc for plc in self.plcs}
        self._stale_timeout = np.full(len(self.tag_names), np.inf)
        for plc in self.plcs:
            if plc.polled:
                self._stale_timeout[plc.binding] = plc.stale_timeout_s

        # Their names are reserved: the config check refuses an [[alarms]] entry that takes one.
        self._builtin_alarms = {p.name: BuiltinAlarm(safe_state_alarm_name(p.name),
                                                     f"Safe-state write after losing {p.name} failed: "
                                                     "bring the line to its safe state by hand")
                                for p in self.plcs if p.config.on_comm_loss == "safe_state"}
        self.alarms = AlarmEngine([*config.alarms, *self._builtin_alarms.values()])
        self.actions = ActionEngine(config.actions, shadow_global=c.shadow)
        self._compile_conditions()
        self._first_out_seen: tuple[str, float] | None = None
        self.first_out = ""  # the current alarm episode's first cause, described (status, fired events)
        self.housekeeping_rounds = 0
        self._event_clock = EventClock()
        units = dict(config.detector.units)
        self._tag_info = [TagInfo(t, units.get(t, "")) for t in self.tag_names]
        self.summarizer = WindowSummarizer(len(self.tag_names), window_s=SUMMARY_WINDOW_S)
        self._tag_scores = np.full(len(self.tag_names), np.nan)
        self._det_positions = self.line.detector_index
        self.outbox: Outbox | None = None
        self.sync: SyncWorker | None = None

        self.step_latency = LatencyRing()
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(self.metrics_snapshot, self.step_latency))
        self.token = self.state_dir.token()

        self._pending_alarm_events: list = []
        self._pending_action_events: list = []
        self._closed_windows: list[WindowSummary] = []
        self._writes: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._state_dirty = False
        self._save_lock = asyncio.Lock()
        self._reasons: dict[str, str] = {}  # "alarm:<name>" / "action:<name>" -> the operator's reason
        self.restored: list[str] = []  # what the saved state brought back at start (status)
        self._action_counts: dict[str, int] = {}
        self.line_score = 0.0
        self.line_alarm = False
        self.started_at = self._wall()
        self._restore_state()

    # ------------------------------------------------------------------ detector
    def _make_detector(self, given: StreamingDetector | None) -> StreamingDetector:
        """The model artifact's detector under the config's rules, or, without [detector] model,
        the rules-only detector for commissioning: invalid, limit, and flatline for the tags of
        [detector.flatline_s]; no statistical detector or model."""
        d = self.config.detector
        if given is None and d.model is None:
            return StreamingDetector.rules_only(self.detector_tags, limits=self.config.detector_spec().limits,
                                                flatline_s=dict(d.flatline_s), units=dict(d.units))
        det = given if given is not None else load_model(d.model, expected_tags=self.detector_tags)
        self._apply_config(det, d.model)
        return det

    def _apply_config(self, det: StreamingDetector, path: Path | None) -> None:
        """One rule: [detector.spec] must agree with the artifact (else refuse to start), and the
        config's [detector.limits] win over the artifact's (each override announced)."""
        differ = spec_differences(det.spec, self.config.detector.spec)
        if differ:
            raise ModelError(f"[detector.spec] disagrees with model {path}: {'; '.join(differ)}; refit "
                             "the model with this config (`linesentry fit`) or remove these keys")
        cfg = self.config.detector_spec().limits  # a tag absent here has no limits: the config decides
        for change in det.set_limits({t: cfg.get(t, TagLimits()) for t in self.detector_tags}):
            self.events.add("model", "detector", f"limits override the model's: {change}")
            log.warning("detector: limits override the model's: %s", change)

    # ------------------------------------------------------------------ conditions
    def _compile_conditions(self) -> None:
        """Turn every alarm source into a cheap zero-argument check, evaluated once per step."""
        det_index = {t: i for i, t in enumerate(self.detector_tags)}
        plc_by_name = {p.name: p for p in self.plcs}
        checks: list[tuple[str, Callable[[], bool]]] = []
        for alarm in self.config.alarms:
            src = alarm.source
            if src.kind == "line":
                checks.append((alarm.name, lambda: self.line_alarm))
            elif src.kind == "tag":
                bit = FLAG_BITS[src.flag]  # config accepts exactly the detector's flag names
                idx, pos, plc = det_index[src.tag], self.line.position[src.tag], self._plc_of_tag[src.tag]
                # A tag of a PLC never heard from is "not heard yet", not a sensor fault: its PLC's
                # comm loss (after stale_timeout_s) is the first cause, not the tag's bad alarm.
                checks.append((alarm.name, lambda i=idx, b=bit, q=pos, p=plc: bool(
                    self.detector.tag_flags[i] & b) and (p.delivered or self.line.quality[q] != COMM_LOST)))
            elif src.kind == "comm":
                checks.append((alarm.name, lambda p=plc_by_name[src.plc]: p.comm_lost))
            elif src.kind == "action_failed":
                checks.append((alarm.name, lambda a=src.action: self.actions.has_failed(a)))
            else:  # threshold with optional deadband
                pos, cond, name, band = self.line.position[src.tag], src.condition, alarm.name, alarm.deadband
                checks.append((name, lambda p=pos, c=cond, n=name, d=band: c.holds(
                    float(self.line.values[p]), active=n in self.alarms.active(), deadband=d)))
        for plc_name, builtin in self._builtin_alarms.items():
            checks.append((builtin.name, lambda p=plc_by_name[plc_name]: p.safe_state_failed))
        self._checks = checks
        self._conditions = {name: False for name, _ in checks}
        self._suppress = [(a.name, s) for a in self.config.alarms if (s := self._suppression(a)) is not None]
        self._suppressed = {name: False for name, _ in self._suppress}

    def _suppression(self, alarm) -> Callable[[], bool] | None:
        """Suppressed by design (ISA-18.2): `suppress_when`, and, for an alarm on a tag, while the
        link to that tag is down (its PLC comm-lost, or the tag COMM_LOST because the session
        broke): a consequence of the communication fault, not a cause of its own."""
        src, cond, values = alarm.source, alarm.suppress_when, self.values
        plc = self._plc_of_tag.get(src.tag) if src.kind in ("tag", "threshold") else None
        if plc is None:
            return None if cond is None else (lambda c=cond: c.evaluate(values))
        q, i = self.line.quality, self.line.position[src.tag]
        if cond is None:
            return lambda p=plc: p.comm_lost or (p.delivered and q[i] == COMM_LOST)
        return lambda p=plc, c=cond: p.comm_lost or (p.delivered and q[i] == COMM_LOST) or c.evaluate(values)

    # ------------------------------------------------------------------ hot path
    def _on_batch(self, plc: Plc, batch: ReadingBatch) -> None:
        t0 = time.perf_counter()
        mono, wall = self._mono(), self._wall()
        self.line.apply(plc.binding, batch, mono)
        self._step_detector(mono)
        self._decide(mono, wall)
        self.step_latency.record(time.perf_counter() - t0)
        self._summarize(wall)

    def _step_detector(self, mono: float) -> None:
        line, det = self.line, self.detector
        line.gather_frame()
        det.step(mono, line.frame_values, line.frame_fresh, line.frame_good)
        self.line_score = det.out[O_SCORE]
        self.line_alarm = det.out[O_ALARM] != 0.0

    def _decide(self, mono: float, wall: float) -> None:
        """Alarm conditions -> alarm engine -> actions -> writes (scheduled, not awaited)."""
        conditions = self._conditions
        for name, check in self._checks:
            conditions[name] = check()
        suppressed = self._suppressed
        for name, check in self._suppress:
            suppressed[name] = check()
        alarms = self.alarms
        events = alarms.update(mono, conditions, suppressed, wall)
        if events:
            self._pending_alarm_events.extend(events)
        if alarms.first_out is not self._first_out_seen:  # rare: a new episode began or ended
            self._first_out_seen = alarms.first_out
            self.first_out = self._describe_first_out(alarms.first_out)
        for write in self.actions.evaluate(mono, alarms.active(), self.values, wall, self.first_out):
            self._spawn_write(write)

    def _describe_first_out(self, first: tuple[str, float] | None) -> str:
        """'<alarm> (<what raised it>)': the flagged tags for the line alarm, the tag flag otherwise."""
        if first is None:
            return ""
        name = first[0]
        if name in self._conditions and name not in {b.name for b in self._builtin_alarms.values()}:
            src = self.config.alarm(name).source
            if src.kind == "line":
                flagged = [f"{t}: {'/'.join(n for b, n in FLAG_NAMES.items() if int(f) & b)}"
                           for t, f in zip(self.detector_tags, self.detector.tag_flags, strict=True) if f]
                return f"{name} ({', '.join(flagged) or 'multivariate score'})"
            return f"{name} ({src})"
        return name

    def _summarize(self, now: float) -> None:
        if self.config.sync is None:  # summaries only exist for the cloud
            self.line.clear_fresh()
            return
        self._tag_scores[self._det_positions] = self.detector.tag_scores
        closed = self.summarizer.update(now, self.line.values, self.line.fresh, self.line.quality,
                                        self.line_score, self.line_alarm, self._tag_scores)
        if closed is not None:
            self._closed_windows.append(closed)
        self.line.clear_fresh()

    # ------------------------------------------------------------------ writes
    def _spawn_write(self, write: WriteRequest) -> None:
        task = asyncio.create_task(self._write(write))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, write: WriteRequest) -> None:
        plc = self._plc_of_tag[write.tag]
        lock = plc.write_locks.setdefault(write.tag, asyncio.Lock())
        try:
            async with lock:
                await plc.driver.write(write.tag, float(write.value))
            ok, detail = True, ""
        except (DriverError, OSError, TimeoutError) as exc:
            ok, detail = False, str(exc) or type(exc).__name__
        if not write.action.startswith("safe_state:"):
            # Logged by housekeeping after the action's own "fired" event, in order.
            self._pending_action_events.extend(
                self.actions.confirm(write.action, self._mono(), ok, detail, wall=self._wall()))
        elif not ok:
            self._plc_by_name[write.action.removeprefix("safe_state:")].safe_state_failed = True
            self.events.add("action", write.action, f"safe-state write {write.tag}={write.value} "
                            f"failed: {detail}", result="failed")
        else:
            self.events.add("action", write.action, f"safe-state write {write.tag}={write.value} "
                            "confirmed", result="confirmed")

    # ------------------------------------------------------------------ time-based work
    async def _housekeeping(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self._housekeeping_round()
                failures = 0
            except Exception as exc:  # a fault here (disk, a bug) must not end the loop silently
                failures += 1
                if failures == 1:  # once per run of failures: no log flood at 20 Hz
                    log.error("housekeeping failed, retrying every %g s: %s: %s",
                              HOUSEKEEPING_S, type(exc).__name__, exc)

    async def _housekeeping_round(self) -> None:
        mono, wall = self._mono(), self._wall()
        self.housekeeping_rounds += 1
        lost = self._check_liveness(mono)
        stale = self.line.mark_stale(mono, self._stale_timeout)
        if stale.size:
            names = ", ".join(self.tag_names[i] for i in stale[:10])
            self.events.add("driver", "stale", f"no fresh value within the timeout: {names}")
        for tag in self.line.take_text_in_detector():  # each tag once per run
            self.events.add("driver", tag, f"detector tag {tag!r} {TEXT_IN_DETECTOR}")
            log.error("detector tag %r %s", tag, TEXT_IN_DETECTOR)
        if stale.size or lost:  # the detector sees those tags fresh and not good: invalid flags
            self._step_detector(mono)
            self.line.clear_fresh()
        self._decide(mono, wall)
        for event in self.actions.take_events():
            self._action_event(event)
        pending, self._pending_action_events = self._pending_action_events, []
        for event in (*pending, *self.actions.check_deadlines(mono, wall)):
            self._action_event(event)
        await self._flush_events_and_windows()

    def _check_liveness(self, mono: float) -> bool:
        """Raise or clear each PLC's comm loss from the age of its last good data; True if one was raised."""
        raised = False
        for plc in self.plcs:
            last_alive = plc.driver.stats.last_alive
            plc.delivered = plc.delivered or last_alive > -math.inf
            age = mono - max(last_alive, self._started_mono)
            if age <= plc.stale_timeout_s:
                if plc.comm_lost:
                    plc.comm_lost = plc.safe_state_done = plc.safe_state_failed = False
                    self.events.add("driver", plc.name, "good data again: comm loss cleared")
                continue
            if plc.comm_lost:
                continue
            plc.comm_lost = raised = True
            self.line.mark_lost(plc.binding)
            since = "since the controller started" if last_alive < self._started_mono else "since the last"
            self.events.add("driver", plc.name, f"no good data for {age:.2f} s ({since} good data; "
                            f"stale_timeout_s {plc.stale_timeout_s:g}): comm loss")
            if plc.config.on_comm_loss == "safe_state" and not plc.safe_state_done:
                plc.safe_state_done = True
                self._go_safe(plc)
        return raised

    def _go_safe(self, plc: Plc) -> None:
        for w in plc.config.safe_state:
            if self.config.controller.shadow:
                self.events.add("action", f"safe_state:{plc.name}",
                                f"shadow: would write {w.tag}={w.value} (comm loss)", result="shadow")
                continue
            self.events.add("action", f"safe_state:{plc.name}",
                            f"writing {w.tag}={w.value} (comm loss)", result="fired")
            self._spawn_write(WriteRequest(f"safe_state:{plc.name}", w.tag, w.value, self._wall(), None))

    async def _watchdog(self, plc: Plc) -> None:
        wd = plc.config.watchdog
        failures = 0
        while True:
            await asyncio.sleep(wd.period_s)
            if plc.driver.state != ConnectionState.CONNECTED:
                continue
            plc.heartbeat = (plc.heartbeat + 1) % wd.wrap
            try:
                await plc.driver.write(wd.tag, float(plc.heartbeat))
                failures = 0
            except (DriverError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1:  # once per run of failures: no log spam on a flapping PLC
                    log.warning("%s: heartbeat write failed: %s", plc.name, exc)

    # ------------------------------------------------------------------ events, cloud
    def _action_event(self, event) -> None:
        self._action_counts[event.kind] = self._action_counts.get(event.kind, 0) + 1
        self.events.add("action", event.action, event.detail or event.kind, at=event.time,
                        result=event.kind, user=event.user)
        self._state_dirty = True
        level = logging.WARNING if event.kind in ("failed", "fired") else logging.INFO
        detail = event.detail or ""
        detail = detail if detail.startswith(event.kind) else f"{event.kind} {detail}"
        log.log(level, "action %s: %s", event.action, detail.rstrip())  # never "confirmed confirmed"

    async def _flush_events_and_windows(self) -> None:
        if self._pending_alarm_events:
            events, self._pending_alarm_events = self._pending_alarm_events, []
            for e in events:
                self.events.add("alarm", e.alarm, f"{e.from_state} -> {e.to_state} ({e.cause})",
                                at=e.time, state=str(e.to_state), user=e.user, priority=e.priority)
                log.log(alarm_transition_level(e.to_state), "alarm %s: %s -> %s (%s)",
                        e.alarm, e.from_state, e.to_state, e.cause)
            self._state_dirty = True
        new_events = self.events.since(self._cloud_event_id)
        windows, self._closed_windows = self._closed_windows, []
        if new_events:
            self._cloud_event_id = new_events[-1]["id"]
        if self.outbox is not None and (new_events or windows):
            await asyncio.to_thread(self._to_outbox, new_events, windows)
            if self.sync is not None:
                self.sync.wake()
        if self._state_dirty:
            await self._save_state()

    _cloud_event_id = 0

    def _to_outbox(self, events: list[dict], windows: list[WindowSummary]) -> None:
        points = [event_point(self.identity, self._event_clock, e["kind"], e["source"], e["message"],
                              time_ns=int(e["time"] * 1e9), result=e.get("result"),
                              state=e.get("state")) for e in events]
        for w in windows:
            points += window_points(w, self.identity, self._tag_info)
        self.outbox.append(points)

    # ------------------------------------------------------------------ persistence
    def _durable_state(self, summary: bool = False) -> dict:
        state = {"alarms": self.alarms.snapshot(), "actions": self.actions.snapshot(),
                 "heartbeats": {p.name: p.heartbeat for p in self.plcs},
                 "reasons": dict(self._reasons)}
        if summary:  # at shutdown only: the open summary window, resumed by the next start
            snap = self.summarizer.snapshot(self._wall())
            if snap is not None:
                state["summary"] = {"tags": self.tag_names, **snap}
        return state

    def _restore_state(self) -> None:
        """Load the saved state and announce what it brings back (events, `status()["restored"]`):
        a latch or an inhibit from the last run must never act unseen."""
        state = self.state_dir.load_state()
        if not state:
            return
        try:
            skipped = self.alarms.restore(state.get("alarms", {"version": 1}))
            skipped += self.actions.restore(state.get("actions", {"version": 1}))
            heartbeats = {p.name: int(state.get("heartbeats", {}).get(p.name, 0)) for p in self.plcs}
            reasons = state.get("reasons", {})
            self._reasons = {k: v for k, v in reasons.items() if isinstance(v, str)}
        except Exception as exc:  # a state file that parses but is malformed must not stop the service
            self._start_clean(exc)
            return
        for plc in self.plcs:
            plc.heartbeat = heartbeats[plc.name]
        for name in self.alarms.refused_on_restore:
            self._restored_event("alarm", name, "was shelved or out of service in the saved state, but it is "
                                 "not shelvable (shelvable = false): restored active instead")
        if skipped:
            log.info("saved state for removed alarms/actions ignored: %s", ", ".join(skipped))
        self._announce_restored()
        if "summary" in state:
            self._restore_summary(state["summary"])
            # Saved again at once without it: a second start must not resume the same window again.
            self.state_dir.save_state(self._durable_state())

    def _start_clean(self, exc: Exception) -> None:
        """Forget a malformed saved state, loudly: latches, shelves and inhibits of the last run are gone."""
        self.alarms = AlarmEngine([*self.config.alarms, *self._builtin_alarms.values()])
        self.actions = ActionEngine(self.config.actions, shadow_global=self.config.controller.shadow)
        self._reasons = {}
        aside = self.state_dir.set_aside()
        text = (f"saved state unusable ({type(exc).__name__}: {exc}); kept as {aside}; started clean: "
                "latched actions, shelves and inhibits of the last run are NOT restored, check the line")
        self.restored.append(text)
        self.events.add("model", "controller", text, result="restored")
        log.error("%s", text)

    def _announce_restored(self) -> None:
        for a in self.alarms.status():
            if a["state"] in ("NORMAL", "SUPPRESSED"):  # suppression is re-derived, not restored
                continue
            if a["state"] == "SHELVED":
                what = f"shelved by {a['shelved_by'] or 'operator'} until {_clock(a['shelved_until'])}"
            else:
                what = a["state"]
            self._restored_event("alarm", a["name"], what, f"alarm:{a['name']}")
        latched_at = {n: s["latched_at"] for n, s in self.actions.snapshot()["actions"].items()}
        for act in self.actions.status():
            name = act["name"]
            if act["latched"]:
                since = latched_at.get(name)
                self._restored_event("action", name, "latched" + (f" since {_clock(since)}" if since else ""))
            if act["inhibited"]:
                self._restored_event("action", name, f"inhibited by {act['inhibited_by'] or 'operator'}",
                                     f"action:{name}")
            if act["failed"]:
                self._restored_event("action", name, "failed (its write was not confirmed)")

    def _restored_event(self, kind: str, name: str, what: str, reason_key: str = "") -> None:
        reason = self._reasons.get(reason_key, "") if reason_key else ""
        text = f"restored: {name} {what}" + (f" ({reason})" if reason else "")
        self.restored.append(text)
        self.events.add(kind, name, text, result="restored")
        log.warning("%s", text)

    def _restore_summary(self, saved: object) -> None:
        """Continue the summary window open at the last shutdown, or commit it if it has closed."""
        try:
            if not isinstance(saved, dict) or saved.get("tags") != self.tag_names:
                raise ValueError("the tags changed")
            closed = self.summarizer.restore(saved, self._wall())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("saved summary window ignored: %s", exc)
            return
        if closed is not None:
            self._closed_windows.append(closed)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, on_ready: Callable[[Controller], None] | None = None) -> None:
        """Run until `stop()`; start-up errors (bad model, port in use) raise before any task runs."""
        self.detector.warm_up()
        # Everything built so far lives as long as the service: keep the collector from
        # walking it again and again (fewer, shorter pauses on the hot path).
        gc.collect()
        gc.freeze()
        runner = self._api_server()
        await runner.start()
        self.api_port = runner.port  # the real port when 0 was asked
        sync_cfg = self.config.sync
        if sync_cfg is not None:  # no [sync]: no cloud, so nothing to keep for it
            outbox_dir = Path(self.state_dir.path) / "outbox"
            outbox_dir.mkdir(exist_ok=True)
            self.outbox = Outbox(outbox_dir, max_bytes=sync_cfg.max_outbox_bytes, identity=self.identity)
        if sync_cfg is not None and sync_cfg.enabled:
            self.sync = SyncWorker(sync_cfg, self.outbox, on_alarm=self._sync_alarm)
            await self.sync.start()
        try:
            self._started_mono = self._mono()  # a PLC that never delivers is comm-lost from here on
            for plc in self.plcs:
                plc.supervisor = DriverSupervisor(
                    plc.driver, lambda batch, p=plc: self._on_batch(p, batch),
                    on_state=lambda state, detail, p=plc: self._driver_state(p, state, detail))
                self._tasks.append(plc.supervisor.start())
                if plc.config.watchdog is not None:
                    self._tasks.append(asyncio.create_task(self._watchdog(plc), name=f"watchdog:{plc.name}"))
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            self._warn_tight_timeouts()
            self.events.add("model", "controller", f"started: {len(self.plcs)} PLC(s), "
                            f"{len(self.tag_names)} tags, model "
                            f"{self.model_path or 'none (rules only: invalid, limit, stale, flatline_s)'}")
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()
        finally:
            await self._shutdown(runner)

    def _warn_tight_timeouts(self) -> None:
        """Say once when a PLC's stale_timeout_s is shorter than its driver's worst-case liveness gap."""
        for plc in self.plcs:
            gap = plc.driver.alive_interval_s
            if plc.stale_timeout_s < gap:
                message = (f"stale_timeout_s {plc.stale_timeout_s:g} is shorter than the driver's "
                           f"worst-case gap between proofs of good data ({gap:g} s: poll interval and "
                           "request timeouts); a PLC answering every request just under its timeout "
                           "would be declared comm-lost: raise stale_timeout_s if this PLC is slow")
                self.events.add("driver", plc.name, message)
                log.info("%s: %s", plc.name, message)  # a worst case, not a fault: no warning noise

    def stop(self) -> None:
        self._stop.set()

    def _api_server(self) -> ApiServer:
        """The API with its limits (controller.api); reads need a token beyond loopback."""
        c = self.config.controller
        if c.reads_need_token:
            log.warning("API bound to %s, beyond loopback: reads, /metrics and the event stream need a "
                        "token (%s or %s in %s)", c.api_host, READ_TOKEN_FILE, TOKEN_FILE,
                        self.state_dir.path)
        app = create_app(self, self.token, read_token=self.state_dir.token(READ_TOKEN_FILE),
                         reads_need_token=c.reads_need_token,
                         allowed_hosts={c.api_host, *c.api_allowed_hosts},
                         body_timeout_s=c.api_idle_timeout_s)
        return ApiServer(app, c.api_host, self.api_port, max_connections=c.api_max_connections,
                         idle_timeout_s=c.api_idle_timeout_s,
                         reserved=reserved_fds(len(self.plcs), sync=self.config.sync is not None))

    async def _shutdown(self, runner: ApiServer) -> None:
        if self._writes:  # let actuator writes in flight finish (bounded by the driver timeouts)
            await asyncio.wait(list(self._writes), timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for plc in self.plcs:
            if plc.supervisor is not None:
                await plc.supervisor.stop()
        self._tasks.clear()
        self.events.add("model", "controller", "stopped")
        with contextlib.suppress(Exception):
            await self._flush_events_and_windows()
        # The open summary window goes into the state file, not the outbox: the next start resumes
        # it (or commits it whole), so one window is never committed twice (docs/cloud-sync.md).
        await self._save_state(summary=True)
        if self.sync is not None:
            # A short, bounded chance to send what is waiting; the rest goes at the next start.
            self.sync.wake()
            deadline = time.monotonic() + SHUTDOWN_SYNC_S
            while self.outbox.backlog()[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await self.sync.stop()
        if self.outbox is not None:
            self.outbox.close()
        await runner.stop()

    def _driver_state(self, plc: Plc, state: ConnectionState, detail: str) -> None:
        if state in (ConnectionState.CONNECTED, ConnectionState.BACKOFF):
            message = "connected" if state is ConnectionState.CONNECTED else f"connection lost: {detail}"
            self.events.add("driver", plc.name, message, state=state.value)

    def _sync_alarm(self, kind: str, message: str) -> None:
        self.events.add("outbox", "sync", f"{kind}: {message}", result="alarm")
        log.error("cloud sync: %s: %s", kind, message)

    # ------------------------------------------------------------------ API operations
    def status(self) -> dict:
        return {
            "controller": {"site": self.identity.site, "line": self.identity.line,
                           "name": self.identity.controller, "started_at": self.started_at,
                           "shadow": self.config.controller.shadow},
            "plcs": [self._plc_status(p) for p in self.plcs],
            "detector": {"model": str(self.model_path) if self.model_path else None,
                         "tags": self.detector_tags, "score": float(self.line_score),
                         "alarm": bool(self.line_alarm),
                         "threshold": self.detector.threshold if self.detector else None,
                         "step_p50_us": self.step_latency.percentiles([50])[0] * 1e6,
                         "step_p99_us": self.step_latency.percentiles([99])[0] * 1e6},
            "alarms": {"active": list(self.alarms.active()), "first_out": self.first_out},
            "actions": self.actions.status(),
            "protections_disabled": self.protections_disabled(),
            "restored": list(self.restored),
            "outbox": self._outbox_status(),
            "sync": self.sync.metrics() if self.sync else None,
        }

    def _plc_status(self, plc: Plc) -> dict:
        s = plc.driver.stats
        age = self._mono() - s.last_alive
        return {"name": plc.name, "state": plc.driver.state.value, "comm_lost": plc.comm_lost,
                "last_good_data_age_s": age if age < float("inf") else None,
                "tags": len(plc.binding), "reads": s.reads, "read_errors": s.read_errors,
                "writes": s.writes, "write_errors": s.write_errors, "last_error": s.last_error}

    def _outbox_status(self) -> dict:
        if self.outbox is None:
            return {"rows": 0, "points": 0, "bytes": 0}
        rows, points, nbytes = self.outbox.backlog()
        return {"rows": rows, "points": points, "bytes": nbytes}

    def tags(self) -> list[dict]:
        return self.line.snapshot()

    def alarm_list(self) -> list[dict]:
        return self.alarms.status()

    # Operator requests: each one answers what it did and, where it takes a protection away, what
    # it disables; the API makes the change durable (`persist`) before it answers.
    def ack(self, name: str, user: str, reason: str = "") -> dict:
        name = self._alarm_name(name)
        self._operator_alarm(self.alarms.ack(name, user, self._wall()), reason)
        return self._answer(f"{name} acknowledged", alarm=name)

    def shelve(self, name: str, user: str, seconds: float, reason: str) -> dict:
        alarm = self._alarm_settings(name)
        self._require_reason(reason, f"shelve {name}")
        if not alarm.shelvable:
            raise Refused(self._not_shelvable(alarm.name, "shelved"))
        if seconds > alarm.max_shelve_s:
            raise ValueError(f"{name} can be shelved for at most {alarm.max_shelve_s:g} s")
        self._operator_alarm(self.alarms.shelve(name, user, self._wall(), seconds), reason)
        self._reasons[f"alarm:{name}"] = reason
        return self._answer(f"{name} shelved for {seconds:g} s", alarm=name,
                            disables=self._actions_of(name), doing=f"shelving {name}")

    def unshelve(self, name: str, user: str, reason: str = "") -> dict:
        name = self._alarm_name(name)
        self._operator_alarm(self.alarms.unshelve(name, user, self._wall()), reason)
        return self._answer(f"{name} unshelved", alarm=name)

    def set_out_of_service(self, name: str, user: str, enabled: bool, reason: str = "") -> dict:
        alarm = self._alarm_settings(name)
        if enabled:
            self._require_reason(reason, f"take {name} out of service")
            if not alarm.shelvable:
                raise Refused(self._not_shelvable(name, "taken out of service"))
        self._operator_alarm(self.alarms.set_out_of_service(name, user, self._wall(), enabled), reason)
        if not enabled:
            return self._answer(f"{name} returned to service", alarm=name)
        self._reasons[f"alarm:{name}"] = reason
        return self._answer(f"{name} out of service", alarm=name, disables=self._actions_of(name),
                            doing=f"taking {name} out of service")

    def reset_action(self, name: str, user: str, reason: str) -> dict:
        name = self._action_name(name)
        self._require_reason(reason, f"reset {name}")
        events = self.actions.reset(name, user, self._wall())
        for event in events:
            self._action_event(dataclasses.replace(event, detail=f"{event.detail}: {reason}"))
        alarm = self.config.action(name).alarm
        return self._answer(f"{name} {events[0].detail if events else 'reset'}; it fires again on the "
                            f"next activation of {alarm}", action=name)

    def inhibit_action(self, name: str, user: str, enabled: bool, reason: str = "") -> dict:
        name = self._action_name(name)
        if enabled:
            self._require_reason(reason, f"inhibit {name}")
        for event in self.actions.inhibit(name, user, self._wall(), enabled):
            detail = f"{event.detail}: {reason}" if reason else event.detail
            self._action_event(dataclasses.replace(event, detail=detail))
        if not enabled:
            return self._answer(f"{name} no longer inhibited", action=name)
        self._reasons[f"action:{name}"] = reason
        return self._answer(f"{name} inhibited", action=name, disables=[name],
                            doing=f"inhibiting {name}")

    async def persist(self) -> None:
        """Write the state file now (fsync'd) and return when it is on disk: the API answers
        an operator request only after this, so an acknowledged change survives a kill -9."""
        await self._save_state()

    async def _save_state(self, summary: bool = False) -> None:
        # One save at a time, each built when it starts: a later save is never older on disk.
        async with self._save_lock:
            self._state_dirty = False
            await asyncio.to_thread(self.state_dir.save_state, self._durable_state(summary))

    def _operator_alarm(self, events, reason: str) -> None:
        """Log an operator's alarm transitions now (with the reason), not on the next round."""
        for e in events:
            message = f"{e.from_state} -> {e.to_state} ({e.cause})" + (f": {reason}" if reason else "")
            self.events.add("alarm", e.alarm, message, at=e.time, state=str(e.to_state), user=e.user,
                            priority=e.priority)
            log.warning("alarm %s: %s by %s", e.alarm, message, e.user)
        self._state_dirty = True

    def _answer(self, message: str, *, alarm: str | None = None, action: str | None = None,
                disables: list[str] | None = None, doing: str = "") -> dict:
        """The API's answer to an operator request: what happened and what it disables."""
        disables = disables or []
        warning = ""
        if disables:
            what = ", ".join(f"action {a} ({self._action_text(a)})" for a in disables)
            warning = f"{doing} disables {what}"
            message += f"; {warning}"
        answer: dict = {"ok": True, "message": message, "disables": disables, "warning": warning}
        if alarm is not None:
            answer["alarm"], answer["state"] = alarm, str(self.alarms.state(alarm))
        if action is not None:
            answer["action"] = action
        return answer

    def _alarm_settings(self, name: str):
        """The alarm's config: an [[alarms]] table or one of the controller's own alarms."""
        name = self._alarm_name(name)
        builtin = next((b for b in self._builtin_alarms.values() if b.name == name), None)
        return builtin if builtin is not None else self.config.alarm(name)

    def _action_text(self, name: str) -> str:
        a = self.config.action(name)
        return f"writes {a.write.tag}={a.write.value} when {a.alarm} is active"

    def _actions_of(self, alarm: str) -> list[str]:
        return [a.name for a in self.config.actions if a.alarm == alarm]

    def _not_shelvable(self, name: str, done: str) -> str:
        drives = ", ".join(self._actions_of(name))
        return (f"{name} cannot be {done}: shelvable = false in its [[alarms]] table"
                + (f" (it drives {drives})" if drives else ""))

    @staticmethod
    def _require_reason(reason: str, what: str) -> None:
        if not any(c.isprintable() and not c.isspace() and unicodedata.category(c) != "Cf" for c in reason):
            raise ValueError(f"a reason is required to {what}: send \"reason\" (CLI: --reason TEXT)")

    def protections_disabled(self) -> list[dict]:
        """Every protection that will not act now: alarms that drive actions but are shelved or out
        of service, inhibited, latched and shadow actions. Each with a one-line description."""
        out: list[dict] = []
        for a in self.alarms.status():
            acts = self._actions_of(a["name"])
            if not acts or a["state"] not in ("SHELVED", "OUT_OF_SERVICE"):
                continue
            kind = "shelved" if a["state"] == "SHELVED" else "out_of_service"
            reason = self._reasons.get(f"alarm:{a['name']}", "")
            until = f" until {_clock(a['shelved_until'])}" if a["shelved_until"] else ""
            for act in acts:
                out.append({"kind": kind, "action": act, "alarm": a["name"], "reason": reason,
                            "message": f"{act} disabled: {a['name']} {kind.replace('_', ' ')}{until}"
                                       + (f" ({reason})" if reason else "")})
        latched_at = {n: s["latched_at"] for n, s in self.actions.snapshot()["actions"].items()}
        for act in self.actions.status():
            name = act["name"]
            if act["inhibited"]:
                reason = self._reasons.get(f"action:{name}", "")
                out.append({"kind": "inhibited", "action": name, "by": act["inhibited_by"], "reason": reason,
                            "message": f"{name} inhibited by {act['inhibited_by'] or 'operator'}"
                                       + (f" ({reason})" if reason else "")})
            if act["latched"]:
                since = latched_at.get(name)
                out.append({"kind": "latched", "action": name, "since": since,
                            "message": f"{name} latched" + (f" since {_clock(since)}" if since else "")
                                       + ": reset to re-arm"})
            if act["shadow"]:
                out.append({"kind": "shadow", "action": name,
                            "message": f"{name} in shadow mode: decides but never writes"})
        return out

    async def reload_model(self, user: str, path: str | None) -> dict:
        """Swap in a new model without a restart; the old one stays if the new one is refused."""
        target = Path(path) if path else self.model_path
        if target is None:
            raise Refused("no model configured: pass a path or set [detector] model")
        try:
            new = await asyncio.to_thread(load_model, target, self.detector_tags)
            self._apply_config(new, target)  # the same rule as at start: spec agrees, config limits win
            await asyncio.to_thread(new.warm_up)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        self.detector, self.model_path = new, target
        self.events.add("model", "detector", f"model reloaded from {target}", user=user)
        return {"model": str(target), "threshold": new.threshold}

    def _alarm_name(self, name: str) -> str:
        if name not in self._conditions:
            raise LookupError(f"no alarm named {name!r}")
        return name

    def _action_name(self, name: str) -> str:
        if not any(a.name == name for a in self.config.actions):
            raise LookupError(f"no action named {name!r}")
        return name

    def metrics_snapshot(self) -> dict:
        states: dict[str, int] = {}
        for a in self.alarms.status():
            states[a["state"]] = states.get(a["state"], 0) + 1
        plcs = []
        for p in self.plcs:
            s = p.driver.stats
            lat = np.asarray(s.read_latency_s[-256:]) if s.read_latency_s else np.zeros(0)
            plcs.append({"name": p.name, "state": p.driver.state.value,
                         "stats": {k: getattr(s, k) for k in ("reads", "read_errors", "writes",
                                                             "write_errors", "values", "bad_values",
                                                             "sessions_created")},
                         "read_latency": ({q: float(np.quantile(lat, float(q))) for q in ("0.5", "0.99")}
                                          if lat.size else {})})
        return {"plcs": plcs, "alarm_states": states, "line_score": float(self.line_score),
                "action_counts": dict(self._action_counts), "outbox": self._outbox_status(),
                "protections_disabled": self.protections_disabled(),
                "sync": self.sync.metrics() if self.sync else {}}

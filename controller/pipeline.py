"""The hot path as one pure, synchronous step: no sockets, no asyncio, no disk, no logging.

    step(batch):  LineState <- batch;  detector.step;  alarm conditions -> AlarmEngine.update;
                  first-out;  ActionEngine.evaluate -> the writes to issue (returned);
                  then, past the timed part, the window summarizer.

The caller issues the returned writes (controller.writes) and housekeeping flushes the
transitions and decisions this step put in the `Journal`. Everything the step touches is
preallocated (LineState arrays, the detector's buffers, the conditions' result dicts), so a live
step and a replayed one compute the same numbers bit for bit.

When the detector's line alarm rises, the step asks the detector why, once (models.attribution,
~50-100 µs for a few tags): `explanation` holds it while the line alarm lasts, and the line alarms'
activations carry it into their events (controller.explanation). Steps without a rise only compare
two booleans. A line alarm that chatters (rising every other step) is explained at most once per
EXPLAIN_EVERY_S: a rise sooner than that after the last explanation reuses it, so the cost on the
hot path is bounded whatever the data (a replay, controller.replay, explains every rise).

The threshold margin (the device shadow's `threshold_margin`, controller.shadow) multiplies the
model's line thresholds (on, and off for the hysteresis) inside the detector's decision parameters,
so the kernel compares the fused score against the scaled value with no extra work per step; a
model swapped in by a reload (`use_detector`) gets the margin in force.

What the step reads of each PLC's link (comm loss, data delivered yet, safe-state failure) is a
`LinkFlags` object that controller.plc_health writes: the pipeline never learns about sockets.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from controller.actions import ActionEngine, WriteRequest
from controller.alarms import ANNUNCIATED_ACTIVE, AlarmEngine, AlarmEvent
from controller.conditions import ArrayTagView
from controller.explanation import explanation, for_alarm, unexplained
from controller.journal import Journal
from controller.linestate import COMM_LOST, LineState
from controller.metrics import LatencyRing
from controller.summaries import WindowSummarizer, WindowSummary
from models.names import FLAG_BITS, FLAG_NAMES

if TYPE_CHECKING:
    from controller.config import AlarmConfig, LineConfig
    from controller.lifecycle.counters import Challenger, Watch
    from drivers.base import ReadingBatch
    from models.detector import StreamingDetector

SUMMARY_WINDOW_S = 10.0
EXPLAIN_EVERY_S = 1.0  # at most one explanation of a rise per this many seconds (monotonic)


@dataclass
class LinkFlags:
    """What the alarm conditions need of one PLC's link; controller.plc_health writes it."""

    comm_lost: bool = False  # no good data for longer than stale_timeout_s
    delivered: bool = False  # good data arrived at least once (before that: "not heard yet")
    safe_state_failed: bool = False  # a safe-state write failed during this comm loss


@dataclass(frozen=True)
class BuiltinAlarm:
    """An alarm the controller defines itself: `<plc>_safe_state_failed` for every PLC with
    on_comm_loss = 'safe_state' (a safe state that was not reached needs a human, now)."""

    name: str
    message: str
    plc: str = ""
    priority: str = "critical"
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    max_shelve_s: float = 0.0
    shelvable: bool = False


class StepPipeline:
    """One line's decision chain. `detector` is set before the first step (and swapped by a reload)."""

    def __init__(self, config: LineConfig, line: LineState, *, links: Mapping[str, LinkFlags],
                 tag_plc: Mapping[str, str], builtin: Sequence[BuiltinAlarm], alarms: AlarmEngine,
                 actions: ActionEngine, journal: Journal, summary_window_s: float = SUMMARY_WINDOW_S) -> None:
        self.config, self.line, self.journal = config, line, journal
        self.alarms, self.actions = alarms, actions
        self.detector: StreamingDetector | None = None
        self.threshold_margin = 1.0  # multiplies the detector's line threshold (set_threshold_margin)
        self._model_thresholds: tuple[StreamingDetector, float, float] | None = None  # (det, on, off)
        self.detector_tags = list(config.detector_tags())
        self.values = ArrayTagView(line.position, line.values)
        self.builtin = {b.name: b for b in builtin}
        self.step_latency = LatencyRing()  # the timed part of every step (metrics, status, benchmarks)
        self._failing: dict[int, float] = {}  # id(binding) of a source whose batches fail -> since
        self.step_failure = ""  # the last failed step's exception, one line
        self.line_score = 0.0
        self.line_alarm = False
        self.first_out = ""  # the current alarm episode's first cause, described
        # Why the detector's line alarm is on (controller.explanation's dict), None while it is off;
        # per line alarm, the explanation from when it last became active (the API's alarm list).
        self.explanation: dict | None = None
        self.alarm_explanations: dict[str, dict | None] = {
            a.name: None for a in config.alarms if a.source.kind == "line"}
        self._units = dict(config.detector.units)
        self._bits = frozenset(t for t, ref in config.tags().items() if ref.kind == "bit")
        self._wall = 0.0  # wall time of the step in progress (the explanation's time stamp)
        self._first_out_seen: tuple[str, float] | None = None
        self._det_index = {t: i for i, t in enumerate(self.detector_tags)}
        self._rise_explained: tuple[float, dict] | None = None  # (mono, explanation) of the last rise
        self._summaries = config.sync is not None  # summaries only exist for the cloud
        # the model lifecycle's counters (controller.lifecycle), stepped by `after_writes`; None: none
        self.challenger: Challenger | None = None
        self.watch: Watch | None = None
        self._mono = 0.0  # monotonic time of the latest detector step (the challenger's)
        self.summarizer = WindowSummarizer(len(line.tags), window_s=summary_window_s)
        self._tag_scores = np.full(len(line.tags), np.nan)
        self._closed: list[WindowSummary] = []
        self._compile(links, tag_plc)

    # ------------------------------------------------------------------ the step
    def step(self, binding: np.ndarray, batch: ReadingBatch, mono: float, wall: float
             ) -> Sequence[WriteRequest]:
        """One driver batch through the chain; returns the writes to issue now (usually none).

        A step that raises is re-raised (the caller's to handle) and remembered per source (each
        PLC's `binding`, `failing_since`), for housekeeping to tell a dead hot path from a quiet
        one (controller.housekeeping)."""
        t0 = time.perf_counter()
        self._wall = wall
        try:
            self.line.apply(binding, batch, mono)
            self.step_detector(mono)
            writes = self.decide(mono, wall)
        except Exception as exc:
            self._failing.setdefault(id(binding), mono)
            self.step_failure = f"{type(exc).__name__}: {exc}"
            raise
        if self._failing:
            self._failing.pop(id(binding), None)
        self.step_latency.record(time.perf_counter() - t0)
        self._summarize(wall)
        return writes

    # ------------------------------------------------------------------ the line threshold
    def use_detector(self, detector: StreamingDetector) -> None:
        """Swap in a detector (a model reload), with the threshold margin in force applied to it."""
        self.detector = detector
        if self.threshold_margin != 1.0:
            self.set_threshold_margin(self.threshold_margin)

    @property
    def model_threshold(self) -> float | None:
        """The line threshold the model itself has (before the margin); None before a detector is set."""
        det = self.detector
        if det is None:
            return None
        saved = self._model_thresholds
        return saved[1] if saved is not None and saved[0] is det else det.threshold

    def set_threshold_margin(self, margin: float) -> None:
        """The line threshold becomes the model's times `margin` (on and off thresholds alike), from the
        next step; callers validate `margin` (Operations.set_threshold_margin)."""
        from models.kernels import D_THRESHOLD_OFF, D_THRESHOLD_ON  # numba: loaded with any detector

        det = self.detector
        if det is not None:
            dp = det.model["decision_params"]
            saved = self._model_thresholds
            if saved is None or saved[0] is not det:
                saved = self._model_thresholds = (det, float(dp[D_THRESHOLD_ON]), float(dp[D_THRESHOLD_OFF]))
            dp[D_THRESHOLD_ON], dp[D_THRESHOLD_OFF] = saved[1] * margin, saved[2] * margin
        self.threshold_margin = margin

    def failing_since(self, binding: np.ndarray) -> float | None:
        """When the batches of this source (a PLC's `binding`) began to fail, None if its last one
        went through (see `step`)."""
        return self._failing.get(id(binding))

    def after_writes(self, wrote: bool = False) -> None:
        """The model lifecycle's counters on the frame just stepped, once its writes were issued: the
        watch counts, the challenger steps in shadow; `wrote`: writes were issued, so the challenger
        steps on a copy of the frame after their tasks' first step (never before the actuator write)."""
        if self.watch is not None:
            self.watch.observe(self.line_alarm)
        if self.challenger is not None:
            self.challenger.after(self._mono, self._wall, self.line_alarm, later=wrote)

    def step_detector(self, mono: float) -> None:
        line, det = self.line, self.detector
        self._mono = mono
        line.gather_frame()
        was = self.line_alarm
        self.line_alarm = det.step(mono, line.frame_values, line.frame_fresh, line.frame_good)
        self.line_score = det.score
        if self.line_alarm != was:  # rare: the line alarm rose (explain it, once) or cleared
            self.explanation = self._explain_rise(mono) if self.line_alarm else None

    def _explain_rise(self, mono: float) -> dict:
        last = self._rise_explained
        if last is not None and 0.0 <= mono - last[0] < EXPLAIN_EVERY_S:
            return last[1]  # a chattering line alarm: bounded cost, the explanation of a moment ago
        why = self.explain()
        self._rise_explained = (mono, why)
        return why

    def explain(self, alarm: str | None = None) -> dict:
        """Why the detector scores what it does now, as controller.explanation's dict (off the hot
        path: on a rise of the line alarm, or on request), with the top tags' latest readings."""
        name = alarm or next(iter(self.alarm_explanations), "line")
        try:
            why = self.detector.explain()
            values = self.line.frame_values
            readings = {t.tag: float(values[self._det_index[t.tag]]) for t in why.top
                        if t.tag in self._det_index}
            return explanation(name, why, self._units, self._bits, at=self._wall, readings=readings)
        except Exception as exc:  # the explanation is a courtesy: it must never cost the alarm
            return unexplained(name, f"{type(exc).__name__}: {exc}", at=self._wall)

    def tick(self, mono: float, wall: float, *, restep: bool) -> Sequence[WriteRequest]:
        """Time-based work without a batch (housekeeping): alarm delays, shelve expiry, deadlines.
        `restep`: tags went stale or comm-lost, so the detector must see them (fresh, not good)."""
        if restep:
            self._wall = wall
            self.step_detector(mono)
            self.line.clear_fresh()
        writes = self.decide(mono, wall)
        self.journal.put(self.actions.check_deadlines(mono, wall))
        return writes

    def decide(self, mono: float, wall: float) -> Sequence[WriteRequest]:
        """Alarm conditions -> alarm engine -> first out -> actions; returns the writes."""
        conditions = self._conditions
        for name, check in self._checks:
            conditions[name] = check()
        suppressed = self._suppressed
        for name, check in self._suppress:
            suppressed[name] = check()
        alarms = self.alarms
        events = alarms.update(mono, conditions, suppressed, wall)
        if events:  # rare: transitions (a line alarm's activation carries its explanation)
            events = self._explained(events)
        self.journal.put(events)
        if alarms.first_out is not self._first_out_seen:  # rare: a new episode began or ended
            self._first_out_seen = alarms.first_out
            self.first_out = self.describe_first_out(alarms.first_out)
        writes = self.actions.evaluate(mono, alarms.active(), self.values, wall, self.first_out)
        if self.actions.has_events:  # decisions first: a write's confirmation always comes after
            self.journal.put(self.actions.take_events())
        return writes

    def _explained(self, events: Sequence[AlarmEvent]) -> Sequence[AlarmEvent]:
        """`events` with the explanation on each activation of a line alarm (recorded per alarm)."""
        out = list(events)
        for k, e in enumerate(out):
            if (e.alarm in self.alarm_explanations and e.to_state in ANNUNCIATED_ACTIVE
                    and e.from_state not in ANNUNCIATED_ACTIVE):
                why = self.explanation or self.explain()  # off again before its on-delay ran out
                why = for_alarm(why, e.alarm)
                self.alarm_explanations[e.alarm] = why
                out[k] = dataclasses.replace(e, explanation=why)
        return out

    def take_windows(self) -> list[WindowSummary]:
        """Summary windows closed since the last call (for the outbox)."""
        out, self._closed = self._closed, []
        return out

    def add_window(self, window: WindowSummary) -> None:
        """A window closed outside a step (one resumed from the saved state)."""
        self._closed.append(window)

    def _summarize(self, now: float) -> None:
        if self._summaries:
            self._tag_scores[self.line.detector_index] = self.detector.tag_scores
            closed = self.summarizer.update(now, self.line.values, self.line.fresh, self.line.quality,
                                            self.line_score, self.line_alarm, self._tag_scores)
            if closed is not None:
                self._closed.append(closed)
        self.line.clear_fresh()

    # ------------------------------------------------------------------ first out
    def describe_first_out(self, first: tuple[str, float] | None) -> str:
        """'<alarm> (<what raised it>)': the flagged tags for the line alarm, the tag flag otherwise."""
        if first is None:
            return ""
        name = first[0]
        if name in self.builtin:
            return name
        src = self.config.alarm(name).source
        if src.kind == "line":
            why = self.alarm_explanations.get(name) or self.explanation
            if why is not None:
                return why["text"]
            flagged = [f"{t}: {'/'.join(n for b, n in FLAG_NAMES.items() if int(f) & b)}"
                       for t, f in zip(self.detector_tags, self.detector.tag_flags, strict=True) if f]
            return f"{name} ({', '.join(flagged) or 'multivariate score'})"
        return f"{name} ({src})"

    # ------------------------------------------------------------------ conditions
    @property
    def alarm_names(self) -> Sequence[str]:
        return list(self._conditions)

    def _compile(self, links: Mapping[str, LinkFlags], tag_plc: Mapping[str, str]) -> None:
        """Turn every alarm source into a cheap zero-argument check, evaluated once per step."""
        det_index = self._det_index
        line = self.line
        checks: list[tuple[str, Callable[[], bool]]] = []
        for alarm in self.config.alarms:
            src = alarm.source
            if src.kind == "line":
                checks.append((alarm.name, lambda: self.line_alarm))
            elif src.kind == "tag":
                bit = FLAG_BITS[src.flag]  # config accepts exactly the detector's flag names
                idx, pos, link = det_index[src.tag], line.position[src.tag], links[tag_plc[src.tag]]
                # A tag of a PLC never heard from is "not heard yet", not a sensor fault: its PLC's
                # comm loss (after stale_timeout_s) is the first cause, not the tag's bad alarm.
                checks.append((alarm.name, lambda i=idx, b=bit, q=pos, k=link: bool(
                    self.detector.tag_flags[i] & b) and (k.delivered or line.quality[q] != COMM_LOST)))
            elif src.kind == "comm":
                checks.append((alarm.name, lambda k=links[src.plc]: k.comm_lost))
            elif src.kind == "action_failed":
                checks.append((alarm.name, lambda a=src.action: self.actions.has_failed(a)))
            else:  # threshold with optional deadband
                pos, cond, name, band = line.position[src.tag], src.condition, alarm.name, alarm.deadband
                checks.append((name, lambda p=pos, c=cond, n=name, d=band: c.holds(
                    float(line.values[p]), active=n in self.alarms.active(), deadband=d)))
        for builtin in self.builtin.values():
            checks.append((builtin.name, lambda k=links[builtin.plc]: k.safe_state_failed))
        self._checks = checks
        self._conditions = {name: False for name, _ in checks}
        self._suppress = [(a.name, s) for a in self.config.alarms
                          if (s := self._suppression(a, links, tag_plc)) is not None]
        self._suppressed = {name: False for name, _ in self._suppress}

    def _suppression(self, alarm: AlarmConfig, links: Mapping[str, LinkFlags],
                     tag_plc: Mapping[str, str]) -> Callable[[], bool] | None:
        """Suppressed by design (ISA-18.2): `suppress_when`, and, for an alarm on a tag, while the
        link to that tag is down (its PLC comm-lost, or the tag COMM_LOST because the session
        broke): a consequence of the communication fault, not a cause of its own."""
        src, cond, values = alarm.source, alarm.suppress_when, self.values
        plc = tag_plc.get(src.tag) if src.kind in ("tag", "threshold") else None
        if plc is None:
            return None if cond is None else (lambda c=cond: c.evaluate(values))
        q, i, link = self.line.quality, self.line.position[src.tag], links[plc]
        if cond is None:
            return lambda k=link: k.comm_lost or (k.delivered and q[i] == COMM_LOST)
        return lambda k=link, c=cond: k.comm_lost or (k.delivered and q[i] == COMM_LOST) or c.evaluate(values)

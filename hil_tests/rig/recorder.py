"""Ground truth of a HIL run, and the report computed from it.

The recorder stamps what the simulated PLCs know for certain: when each fault began, when
each actuator write arrived (per server), the heartbeat history and plant events. Alarms come
from outside (the controller, a log, a test) as (time, name) pairs on the same clock, so the
report works before the controller exists and against any alarm source.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.scenario import Scenario

Clock = Literal["monotonic", "wall"]


@dataclass
class FaultRecord:
    index: int  # position in the scenario's fault list
    type: str
    plant_s: float  # plant time of the onset
    onset_mono: float
    onset_wall: float
    end_mono: float | None = None
    end_wall: float | None = None


@dataclass
class WriteRecord:
    server: str  # "conveyor" (OPC UA) or "press" (Modbus)
    actuator: str
    value: float
    mono: float
    wall: float


@dataclass
class HeartbeatRecord:
    server: str
    value: int
    mono: float
    wall: float


@dataclass
class EventRecord:
    kind: str
    detail: str
    mono: float
    wall: float


class Recorder:
    """Append-only ground truth; the clocks are injectable so tests can use synthetic time."""

    def __init__(
        self, mono: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self.mono, self.wall = mono, wall
        self.faults: list[FaultRecord] = []
        self.writes: list[WriteRecord] = []
        self.heartbeats: list[HeartbeatRecord] = []
        self.events: list[EventRecord] = []

    def fault(self, index: int, spec: FaultSpec, phase: str, plant_s: float) -> None:
        now_m, now_w = self.mono(), self.wall()
        if phase == "onset":
            self.faults.append(FaultRecord(index, spec.type, plant_s, now_m, now_w))
            return
        for rec in self.faults:
            if rec.index == index and rec.end_mono is None:
                rec.end_mono, rec.end_wall = now_m, now_w

    def actuator_write(self, server: str, actuator: str, value: float) -> None:
        self.writes.append(WriteRecord(server, actuator, float(value), self.mono(), self.wall()))

    def heartbeat(self, server: str, value: int) -> None:
        self.heartbeats.append(HeartbeatRecord(server, int(value), self.mono(), self.wall()))

    def event(self, kind: str, detail: str = "") -> None:
        self.events.append(EventRecord(kind, detail, self.mono(), self.wall()))

    def onset(self, index: int, clock: Clock = "monotonic") -> float | None:
        rec = next((r for r in self.faults if r.index == index), None)
        if rec is None:
            return None
        return rec.onset_mono if clock == "monotonic" else rec.onset_wall

    def to_dict(self) -> dict:
        return {
            "faults": [asdict(r) for r in self.faults],
            "writes": [asdict(r) for r in self.writes],
            "heartbeats": [asdict(r) for r in self.heartbeats],
            "events": [asdict(r) for r in self.events],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no samples."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


@dataclass
class RunResult:
    """One run of one scenario, judged against its expectations."""

    scenario: str
    faults: int = 0  # faults with an expected alarm whose onset was recorded
    detected: int = 0
    missed: list[str] = field(default_factory=list)  # "jam@20.0s: no 'conveyor_jam' within 500 ms"
    false_alarms: list[tuple[float, str]] = field(default_factory=list)  # (seconds since run start, name)
    detection_ms: list[float] = field(default_factory=list)
    actuation_ms: list[float] = field(default_factory=list)
    missed_actions: list[str] = field(default_factory=list)


def judge(
    scenario: Scenario,
    recorder: Recorder,
    alarms: Iterable[tuple[float, str]],
    run_start: float,
    clock: Clock = "monotonic",
) -> RunResult:
    """Match alarms and actuator writes to the recorded fault onsets of one run.

    An alarm is legitimate when it carries a fault's expected (or allowed) name and arrives
    between that fault's onset and `settle_s` after the fault ends; every other alarm is a
    false alarm. A fault is missed when its expected alarm does not come within `within_ms`.
    """
    alarms = sorted((float(t), name) for t, name in alarms)
    result = RunResult(scenario.name)
    windows: list[tuple[float, float, set[str]]] = []
    for i, f in enumerate(scenario.faults):
        onset = recorder.onset(i, clock)
        if onset is None:
            continue  # the run ended before this fault began
        end = onset + (min(f.end_s, scenario.duration_s) - f.onset_s)
        exp = f.expect
        names = ({exp.alarm} if exp and exp.alarm else set()) | set(exp.allow if exp else ())
        windows.append((onset, end + scenario.settle_s, names))
        label = f"{f.type}@{f.onset_s:g}s"
        if exp is None:
            continue
        if exp.alarm is not None:
            result.faults += 1
            first = next((t for t, n in alarms if n == exp.alarm and t >= onset), None)
            if first is not None and (first - onset) * 1000 <= exp.within_ms:
                result.detected += 1
                result.detection_ms.append((first - onset) * 1000)
            else:
                late = "" if first is None else f" (came after {(first - onset) * 1000:.0f} ms)"
                result.missed.append(f"{label}: no {exp.alarm!r} within {exp.within_ms:g} ms{late}")
        if exp.action is not None:
            writes = [w for w in recorder.writes if w.actuator == exp.action and w.value]
            first_w = min(
                (
                    (w.mono if clock == "monotonic" else w.wall)
                    for w in writes
                    if (w.mono if clock == "monotonic" else w.wall) >= onset
                ),
                default=None,
            )
            if first_w is None:
                result.missed_actions.append(f"{label}: no {exp.action} write")
            else:
                result.actuation_ms.append((first_w - onset) * 1000)
    for t, name in alarms:
        if not any(start <= t <= stop and name in names for start, stop, names in windows):
            result.false_alarms.append((t - run_start, name))
    return result


class Report:
    """Results of many runs, grouped per scenario: detection delay, actuation latency p50/p99,
    false alarms and missed faults, as a rich table and as JSON."""

    def __init__(self) -> None:
        self.runs: list[RunResult] = []

    def add(self, result: RunResult) -> RunResult:
        self.runs.append(result)
        return result

    def add_run(
        self,
        scenario: Scenario,
        recorder: Recorder,
        alarms: Iterable[tuple[float, str]],
        run_start: float,
        clock: Clock = "monotonic",
    ) -> RunResult:
        return self.add(judge(scenario, recorder, alarms, run_start, clock))

    def summary(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name in dict.fromkeys(r.scenario for r in self.runs):
            runs = [r for r in self.runs if r.scenario == name]
            det = [x for r in runs for x in r.detection_ms]
            act = [x for r in runs for x in r.actuation_ms]
            out[name] = {
                "runs": len(runs),
                "faults": sum(r.faults for r in runs),
                "detected": sum(r.detected for r in runs),
                "missed_faults": sum(len(r.missed) for r in runs),
                "false_alarms": sum(len(r.false_alarms) for r in runs),
                "missed_actions": sum(len(r.missed_actions) for r in runs),
                "detection_ms": {
                    "p50": percentile(det, 50),
                    "p99": percentile(det, 99),
                    "max": max(det) if det else None,
                    "n": len(det),
                },
                "actuation_ms": {
                    "p50": percentile(act, 50),
                    "p99": percentile(act, 99),
                    "max": max(act) if act else None,
                    "n": len(act),
                },
                "details": {
                    "missed": [m for r in runs for m in r.missed],
                    "false_alarms": [list(a) for r in runs for a in r.false_alarms],
                    "missed_actions": [m for r in runs for m in r.missed_actions],
                },
            }
        return out

    def to_json(self, path: Path | None = None) -> str:
        text = json.dumps({"scenarios": self.summary()}, indent=2)
        if path is not None:
            path.write_text(text)
        return text

    def table(self) -> Table:
        t = Table(title="HIL report")
        for col in (
            "scenario",
            "runs",
            "detected",
            "missed",
            "false alarms",
            "detect p50 ms",
            "detect p99 ms",
            "actuate p50 ms",
            "actuate p99 ms",
        ):
            t.add_column(col, justify="left" if col == "scenario" else "right")

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        for name, s in self.summary().items():
            t.add_row(
                name,
                str(s["runs"]),
                f"{s['detected']}/{s['faults']}",
                str(s["missed_faults"]),
                str(s["false_alarms"]),
                ms(s["detection_ms"]["p50"]),
                ms(s["detection_ms"]["p99"]),
                ms(s["actuation_ms"]["p50"]),
                ms(s["actuation_ms"]["p99"]),
            )
        return t

    def print(self, console: Console | None = None) -> None:
        (console or Console()).print(self.table())

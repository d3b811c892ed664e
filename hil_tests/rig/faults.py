"""The fault library: what can go wrong on a line, applied on top of the healthy physics.

Three classes, because they enter the system at different places:
- process faults change the physics (`Plant.disturbance`), so correlated tags move together;
- sensor faults change only what a PLC serves for one tag (value or quality), never the physics;
- communication faults act on a server or its TCP gate (`servers.Rig` performs them).

`FaultInjector` drives them from plant time, so a schedule replays identically for a seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil_tests.rig.plant import INDEX, SENSOR_NAMES, Disturbance, Plant, Snapshot

ProcessFault = Literal["jam", "bearing_wear", "leak", "cavitation"]
SensorFault = Literal["spike", "stuck", "dropout", "drift", "noise_burst"]
CommFault = Literal["plc_restart", "connection_drop", "slow_responses", "never_answers"]
PROCESS_FAULTS = frozenset(ProcessFault.__args__)
SENSOR_FAULTS = frozenset(SensorFault.__args__)
COMM_FAULTS = frozenset(CommFault.__args__)
FAULT_TYPES = tuple(sorted(PROCESS_FAULTS | SENSOR_FAULTS | COMM_FAULTS))
TARGETS = ("conveyor", "press")

# What `magnitude` means per fault type (docs/hil.md repeats this table).
MAGNITUDE = {
    "jam": "severity; 1 = heavy jam (+2 load units, speed -35 %)",
    "bearing_wear": "wear level reached after ramp_s (1 = worn out: vibration x5)",
    "leak": "leak opening; 0.3 = flow +20 %, discharge pressure -1 bar",
    "cavitation": "intensity 0..1 (flow noise and dips)",
    "spike": "offset added to the tag (engineering units)",
    "stuck": "unused: the value freezes at onset",
    "dropout": "unused: the value is served with Bad quality",
    "drift": "offset added per second since onset (units/s)",
    "noise_burst": "standard deviation of added white noise (engineering units)",
    "plc_restart": "unused: see down_s",
    "connection_drop": "unused: every client connection is closed at onset",
    "slow_responses": "unused: see delay_ms",
    "never_answers": "unused: connections are accepted, requests never answered",
}


class FaultSpec(BaseModel):
    """One fault on the timeline: type, onset and duration (plant seconds), and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal[FAULT_TYPES]  # type: ignore[valid-type]
    onset_s: float = Field(ge=0)
    duration_s: float | None = Field(default=None, gt=0)  # None: until the end of the run
    magnitude: float = 1.0
    tag: str | None = None  # sensor faults: which served tag
    target: Literal["conveyor", "press"] | None = None  # comm faults: which PLC
    ramp_s: float = Field(default=0.0, ge=0)  # process faults: linear rise time from onset
    down_s: float = Field(default=2.0, gt=0)  # plc_restart: how long the PLC stays down
    delay_ms: float = Field(default=200.0, ge=0)  # slow_responses: added to every response

    @model_validator(mode="after")
    def _check(self) -> FaultSpec:
        if self.type in SENSOR_FAULTS:
            if self.tag not in SENSOR_NAMES:
                raise ValueError(
                    f"fault {self.type!r} needs tag = one of {', '.join(SENSOR_NAMES)} (got {self.tag!r})"
                )
        elif self.tag is not None:
            raise ValueError(f"fault {self.type!r} does not take a tag; remove tag = {self.tag!r}")
        if self.type in COMM_FAULTS:
            if self.target is None:
                raise ValueError(
                    f'fault {self.type!r} needs target = "conveyor" (OPC UA) or "press" (Modbus)'
                )
        elif self.target is not None:
            raise ValueError(f"fault {self.type!r} does not take a target; remove target = {self.target!r}")
        return self

    @property
    def end_s(self) -> float:
        """When the fault stops acting (inf when it lasts to the end of the run)."""
        if self.type == "plc_restart":
            return self.onset_s + self.down_s
        if self.type == "connection_drop":
            return self.onset_s
        if self.type == "spike" and self.duration_s is None:
            return self.onset_s + 0.05
        return self.onset_s + self.duration_s if self.duration_s is not None else float("inf")

    def level(self, t: float) -> float:
        """Magnitude at plant time t, including the ramp (0 when inactive)."""
        if not (self.onset_s <= t < self.end_s):
            return 0.0
        if self.ramp_s > 0:
            return self.magnitude * min(1.0, (t - self.onset_s) / self.ramp_s)
        return self.magnitude


Transition = Callable[[int, FaultSpec, str, float], None]  # (index, fault, "onset" | "end", plant time)


class FaultInjector:
    """Applies a fault schedule while stepping a plant; reports each onset and end to listeners."""

    def __init__(self, faults: Sequence[FaultSpec] = (), seed: int = 0) -> None:
        self.faults = list(faults)
        self.rng = np.random.default_rng(seed + 7919)  # independent of the plant's noise stream
        self.listeners: list[Transition] = []
        self._active: set[int] = set()
        self._ended: set[int] = set()
        self._stuck: dict[int, float] = {}
        self._last: Snapshot | None = None

    def step(self, plant: Plant, n: int = 1) -> Snapshot:
        """Advance the plant n ticks under the schedule; returns what the PLCs serve afterwards."""
        snap = self._last
        for _ in range(n):
            t = plant.t  # the tick's start: a fault with onset_s = t acts on this tick
            self._transitions(t)
            plant.disturbance = self.disturbance(t)
            snap = self.observe(plant.step(), t)
        assert snap is not None
        return snap

    def _transitions(self, t: float) -> None:
        for i, f in enumerate(self.faults):
            if i in self._ended or t < f.onset_s:
                continue
            if i not in self._active:
                self._active.add(i)
                self._notify(i, f, "onset", t)
            if t >= f.end_s:
                self._active.discard(i)
                self._ended.add(i)
                self._notify(i, f, "end", t)

    def _notify(self, index: int, fault: FaultSpec, phase: str, t: float) -> None:
        for listener in self.listeners:
            listener(index, fault, phase, t)

    def disturbance(self, t: float) -> Disturbance:
        d = Disturbance()
        for f in self.faults:
            if f.type in PROCESS_FAULTS and (lvl := f.level(t)):
                field = "wear" if f.type == "bearing_wear" else f.type
                setattr(d, field, getattr(d, field) + lvl)
        return d

    def observe(self, snap: Snapshot, t: float) -> Snapshot:
        """Apply the active sensor faults to a snapshot (in place) and return it."""
        for i, f in enumerate(self.faults):
            if f.type not in SENSOR_FAULTS or not (f.onset_s <= t < f.end_s):
                continue
            k = INDEX[f.tag]  # type: ignore[index]
            if f.type == "spike":
                snap.values[k] += f.magnitude
            elif f.type == "stuck":
                snap.values[k] = self._stuck.setdefault(i, self._held(k, snap))
            elif f.type == "dropout":
                snap.bad[k] = True
            elif f.type == "drift":
                snap.values[k] += f.magnitude * (t - f.onset_s)
            elif f.type == "noise_burst":
                snap.values[k] += f.magnitude * self.rng.standard_normal()
        self._last = snap
        return snap

    def _held(self, k: int, snap: Snapshot) -> float:
        """The value served just before a stuck fault began."""
        return float(self._last.values[k]) if self._last is not None else float(snap.values[k])

    def active(self, t: float) -> list[FaultSpec]:
        return [f for f in self.faults if f.onset_s <= t < f.end_s]

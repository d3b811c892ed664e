"""Scenario files: a timeline of normal phases and faults, with the outcomes the controller owes.

A scenario is TOML validated by pydantic; `load_scenario` turns every mistake into one line
naming the file, the key and the fix (`ScenarioError`). The same file drives the simulator
and, with the endpoints swapped in the controller's config, a run against real PLCs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hil_tests.rig.faults import FaultInjector, FaultSpec

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    """What the controller must do about a fault."""

    alarm: str | None = None  # the alarm that must be raised ...
    within_ms: float = Field(default=1000.0, gt=0)  # ... at most this long after onset
    action: Literal["line_stop", "reject_gate"] | None = None  # the actuator write expected at the PLC
    allow: list[str] = Field(default_factory=list)  # other alarms that are fine while this fault is on


class ScenarioFault(FaultSpec):
    expect: Expect | None = None


class Phase(_Strict):
    """A stretch of the timeline where the line is healthy: no alarm is allowed."""

    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> Phase:
        if self.end_s <= self.start_s:
            raise ValueError(f"normal phase end_s ({self.end_s:g}) must be after start_s ({self.start_s:g})")
        return self


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    duration_s: float = Field(gt=0)
    seed: int = 0
    repeat: int = Field(default=1, ge=1)  # runs per report
    settle_s: float = Field(default=5.0, ge=0)  # expected alarms may persist this long after a fault ends
    watchdog_timeout_s: float = Field(default=1.0, gt=0)
    normal: list[Phase] = Field(default_factory=list)
    faults: list[ScenarioFault] = Field(default_factory=list)

    @model_validator(mode="after")
    def _timeline(self) -> Scenario:
        for i, f in enumerate(self.faults):
            if f.onset_s >= self.duration_s:
                raise ValueError(
                    f"faults[{i}] ({f.type}): onset_s {f.onset_s:g} is not before "
                    f"duration_s {self.duration_s:g}"
                )
        for k, ph in enumerate(self.normal):
            if ph.end_s > self.duration_s:
                raise ValueError(f"normal[{k}]: end_s {ph.end_s:g} is past duration_s {self.duration_s:g}")
            for i, f in enumerate(self.faults):
                if f.onset_s < ph.end_s and ph.start_s < min(f.end_s, self.duration_s) + self.settle_s:
                    raise ValueError(
                        f"normal[{k}] ({ph.start_s:g}-{ph.end_s:g} s) overlaps faults[{i}] "
                        f"({f.type} at {f.onset_s:g} s, plus settle_s {self.settle_s:g}); "
                        "a normal phase must be fault-free"
                    )
        return self

    def injector(self) -> FaultInjector:
        return FaultInjector(self.faults, seed=self.seed)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):
            out += ("." if out else "") + str(part)
    return out


def parse_scenario(data: dict, source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/hil.md)"
        elif err["type"] == "literal_error" and where.endswith("type"):
            msg = f"unknown fault type {err.get('input')!r}; {msg}"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ScenarioError(f"{source}: {where + ': ' if where else ''}{msg}{more}") from None


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate one scenario file; every failure is a one-line ScenarioError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    return parse_scenario(data, str(path))


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))

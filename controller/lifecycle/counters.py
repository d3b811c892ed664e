"""What the hot path does for the model lifecycle: counters only, after the active step's writes went out.

`Challenger` steps a second detector on the frame the active one just stepped (its own arrays: it
never touches the active model's state, alarms or acts) and counts rows, alarm rows and rises of
each, the rows only one of them alarmed, and when (wall time) the last few disagreements began.
`Watch` counts the promoted model's own line alarm per row. Neither allocates per row (but for a frame
copy on a row that issued actuator writes); a challenger step that raises is remembered (`failed`) and
the challenger is skipped from then on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from controller.linestate import LineState
    from models.detector import StreamingDetector

DIFFERENCES = 10  # the last disagreements kept (their start times)


class Challenger:
    """A detector run in shadow beside the active one, with its agreement counters."""

    def __init__(self, detector: StreamingDetector, line: LineState) -> None:
        self.detector, self.line = detector, line
        self.rows = self.alarm_rows = self.rises = 0
        self.active_alarm_rows = self.active_rises = 0
        self.only_active = self.only_challenger = 0
        self.differences: deque[tuple[float, str]] = deque(maxlen=DIFFERENCES)  # (wall, who alarmed)
        self.failed = ""
        self.retired = False  # detached from the pipeline (stopped, promoted, restarted): steps no more
        self._alarm = self._active = False

    def after(self, mono: float, wall: float, active: bool, *, later: bool = False) -> None:
        """One row, the frame `line` holds (gathered for the active step) and the active's decision: now,
        or (`later`: actuator writes were just issued as tasks) on a copy of the frame, from a callback
        queued behind the write tasks' first step, so the challenger never delays a write."""
        if not later:
            self.step(mono, wall, active, self.line.frame_values, self.line.frame_fresh, self.line.frame_good)
            return
        line = self.line
        frame = (line.frame_values.copy(), line.frame_fresh.copy(), line.frame_good.copy())
        asyncio.get_running_loop().call_soon(self.step, mono, wall, active, *frame)

    def step(self, mono: float, wall: float, active: bool, values: np.ndarray, fresh: np.ndarray,
             good: np.ndarray) -> None:
        if self.failed or self.retired:
            return
        try:
            alarm = self.detector.step(mono, values, fresh, good)
        except Exception as exc:  # its own model or frame problem: never the active model's
            self.failed = f"{type(exc).__name__}: {exc}"
            return
        self.rows += 1
        if alarm:
            self.alarm_rows += 1
            if not self._alarm:
                self.rises += 1
        if active:
            self.active_alarm_rows += 1
            if not self._active:
                self.active_rises += 1
        if alarm != active:
            if alarm:
                self.only_challenger += 1
            else:
                self.only_active += 1
            if self._alarm == self._active:  # a disagreement begins
                self.differences.append((wall, "challenger" if alarm else "active"))
        self._alarm, self._active = alarm, active

    @property
    def agreement(self) -> float:
        return 1.0 - (self.only_active + self.only_challenger) / self.rows if self.rows else 1.0

    def figures(self) -> dict[str, Any]:
        rows = self.rows or 1
        return {"rows": self.rows, "agreement": self.agreement,
                "alarm_rate": {"active": self.active_alarm_rows / rows, "challenger": self.alarm_rows / rows},
                "rises": {"active": self.active_rises, "challenger": self.rises,
                          "active_per_row": self.active_rises / rows,
                          "challenger_per_row": self.rises / rows},
                "only_active": self.only_active, "only_challenger": self.only_challenger,
                "differences": [{"at": at, "alarmed": who} for at, who in self.differences]}


class Watch:
    """The promoted model's line alarm, counted per row: rows, rises, the current run of alarm rows."""

    def __init__(self) -> None:
        self.rows = self.alarm_rows = self.rises = self.on_run = self.longest_on = 0
        self._on = False

    def observe(self, alarm: bool) -> None:
        self.rows += 1
        if alarm:
            self.alarm_rows += 1
            self.on_run += 1
            if not self._on:
                self.rises += 1
            if self.on_run > self.longest_on:
                self.longest_on = self.on_run
        else:
            self.on_run = 0
        self._on = alarm

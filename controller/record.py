"""Record live tag values from a line's PLCs, for fitting a model on real normal operation.

Uses the same drivers, supervisors and LineState as the controller, so the
recording has the cadence and sample-and-hold the detector will see live: one
row per driver batch, every detector tag at its latest value.
"""

import asyncio
import csv
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.config import LineConfig
from controller.linestate import LineState
from drivers import registry
from drivers.base import ConnectionState, Quality, ReadingBatch
from drivers.supervisor import DriverSupervisor


@dataclass
class Gaps:
    """Why rows were left out: per detector tag, the rows it kept incomplete and its last reason."""

    rows: Counter = field(default_factory=Counter)
    reason: dict[str, str] = field(default_factory=dict)
    dropped: int = 0

    def summary(self, limit: int = 5) -> str:
        """'tag (n rows: reason), ...' for the tags that kept the most rows incomplete."""
        return ", ".join(f"{tag} ({n} rows: {self.reason[tag]})" for tag, n in self.rows.most_common(limit))


async def record(config: LineConfig, seconds: float, *, min_interval_s: float = 0.0,
                 gaps: Gaps | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of (time, detector tag values) for `seconds`; rows with a non-GOOD value are left out
    (counted in `gaps`, with the tags that made them incomplete and why).

    `min_interval_s` thins the rows (0 keeps one per batch).
    """
    tags = config.detector_tags()
    line = LineState(list(config.tags()), tags)
    times: list[float] = []
    rows: list[np.ndarray] = []
    last = -np.inf
    gaps = gaps if gaps is not None else Gaps()
    driver_of = {}

    def on_batch(binding: np.ndarray, batch: ReadingBatch) -> None:
        nonlocal last
        line.apply(binding, batch)
        now = time.time()
        if now - last < min_interval_s:
            return
        line.gather_frame()
        quality = line.quality[line.detector_index]
        if np.all(quality == Quality.GOOD):
            times.append(now)
            rows.append(line.frame_values.copy())
            last = now
            return
        gaps.dropped += 1
        for k in np.flatnonzero(quality != Quality.GOOD):
            tag = tags[k]
            gaps.rows[tag] += 1
            driver = driver_of.get(tag)
            why = driver.stats.tag_errors.get(tag) if driver is not None else None
            gaps.reason[tag] = f"{Quality(int(quality[k])).name}" + (f", {why}" if why else "")

    def on_state(binding: np.ndarray, state: ConnectionState) -> None:
        if state in (ConnectionState.BACKOFF, ConnectionState.FAILED):
            line.mark_lost(binding)  # its values are unknown until it delivers again

    supervisors = []
    for _, plc in config.plcs():
        driver = registry.plugin(plc.protocol).create(plc.driver)
        names = [t.name for t in plc.driver.tags]
        driver_of.update(dict.fromkeys(names, driver))
        binding = line.binding(names)
        supervisors.append(DriverSupervisor(driver, lambda b, m=binding: on_batch(m, b),
                                            on_state=lambda s, _d, m=binding: on_state(m, s)))
    for s in supervisors:
        s.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        for s in supervisors:
            await s.stop()
    return np.asarray(times), np.asarray(rows).reshape(len(rows), len(tags)), tags


def write_csv(path: Path, times: np.ndarray, values: np.ndarray, tags: list[str]) -> None:
    """`time,<tag>,...` with epoch seconds: the format `linesentry replay` and `fit` read."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *tags])
        for t, row in zip(times, values, strict=True):
            w.writerow([f"{t:.6f}", *(repr(float(v)) for v in row)])

"""Record live tag values from a line's PLCs, for fitting a model on real normal operation.

Uses the same drivers, supervisors and LineState as the controller, so the
recording has the cadence and sample-and-hold the detector will see live: one
row per driver batch, every detector tag at its latest value.
"""

import asyncio
import csv
import time
from pathlib import Path

import numpy as np

from controller.config import LineConfig
from controller.linestate import LineState
from controller.runtime import make_driver
from drivers.base import Quality, ReadingBatch
from drivers.supervisor import DriverSupervisor


async def record(config: LineConfig, seconds: float, *, min_interval_s: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of (time, detector tag values) for `seconds`; rows with a non-GOOD value are left out.

    `min_interval_s` thins the rows (0 keeps one per batch).
    """
    tags = config.detector_tags()
    line = LineState(list(config.tags()), tags)
    times: list[float] = []
    rows: list[np.ndarray] = []
    last = -np.inf

    def on_batch(binding: np.ndarray, batch: ReadingBatch) -> None:
        nonlocal last
        line.apply(binding, batch)
        now = time.time()
        if now - last < min_interval_s:
            return
        line.gather_frame()
        if np.all(line.quality[line.detector_index] == Quality.GOOD):
            times.append(now)
            rows.append(line.frame_values.copy())
            last = now

    supervisors = []
    for _, plc in config.plcs():
        driver = make_driver(plc)
        binding = line.binding([t.name for t in plc.driver.tags])
        supervisors.append(DriverSupervisor(driver, lambda b, m=binding: on_batch(m, b)))
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

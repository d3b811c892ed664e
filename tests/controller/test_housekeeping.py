"""Housekeeping's per-tag staleness: only a polled driver's tags have their own age limit (a
subscription reports on change, so a quiet tag is not a stale one)."""

from __future__ import annotations

import numpy as np

from controller.housekeeping import stale_timeouts
from controller.linestate import STALE, LineState
from controller.plc_health import Plc
from drivers.base import Quality, ReadingBatch


class Driver:
    def __init__(self, polled: bool) -> None:
        self.polled = polled


def test_only_the_tags_of_polled_drivers_get_a_stale_timeout():
    line = LineState(["a", "b", "c"], [])
    plcs = [Plc(None, Driver(polled=True), line.binding(["a", "b"]), 0.5),
            Plc(None, Driver(polled=False), line.binding(["c"]), 0.7)]
    timeouts = stale_timeouts(plcs, 3)
    assert timeouts.tolist() == [0.5, 0.5, np.inf]
    good = ReadingBatch(index=np.arange(3, dtype=np.int32), values=np.ones(3),
                        quality=np.full(3, int(Quality.GOOD), dtype=np.uint8),
                        source_ts=np.full(3, np.nan), receive_ts=np.zeros(3))
    line.apply(line.binding(["a", "b", "c"]), good, mono=10.0)
    assert line.mark_stale(11.0, timeouts).tolist() == [0, 1]
    assert line.quality.tolist() == [STALE, STALE, int(Quality.GOOD)]

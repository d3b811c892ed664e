"""The controller's two clocks, in one injectable object.

`mono()` measures every duration (detector step time, debounce, alarm delays, action
intervals and readback deadlines, staleness, comm loss); it never jumps. `wall()` is for
event timestamps and persisted deadlines (shelve expiry) only. Tests pass a clock whose
wall time they step by hours to prove that nothing safety-related depends on it.

`mono()` must share time.monotonic's base: the drivers stamp `stats.last_alive` with it.
"""

import time


class Clock:
    """The system clocks (the default); subclass to step wall time in a test."""

    def mono(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

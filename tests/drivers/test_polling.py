"""The shared fixed-rate schedule: ticks on a grid, overruns skip and count the missed ticks."""

import asyncio

import pytest

from drivers.polling import poll_at_fixed_rate


async def test_ticks_stay_on_the_grid_and_an_overrun_skips_the_missed_ones():
    period, loop = 0.1, asyncio.get_running_loop()
    stamps: list[float] = []
    missed: list[int] = []

    async def poll() -> None:
        stamps.append(loop.time())
        if len(stamps) == 3:
            await asyncio.sleep(2.5 * period)  # overruns: ticks 3 and 4 are missed, tick 5 is kept
        if len(stamps) == 6:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await poll_at_fixed_rate(period, poll, missed.append)
    assert missed == [2]
    grid = [round((t - stamps[0]) / period) for t in stamps]  # tick numbers (jitter << period)
    assert grid == [0, 1, 2, 5, 6, 7], grid

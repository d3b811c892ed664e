"""The one fixed-rate schedule every polling loop uses (Modbus devices, OPC UA polling groups).

Ticks sit on a grid `start + k x period`, so polls do not drift by their own duration; a poll
that overruns its period skips the ticks it missed (reported to `on_missed`) instead of firing
them back to back.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn


async def poll_at_fixed_rate(period_s: float, poll: Callable[[], Awaitable[None]],
                             on_missed: Callable[[int], None] | None = None) -> NoReturn:
    """Await `poll()` at every tick of a `period_s` grid, forever (until cancelled or it raises)."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while True:
        await poll()
        next_tick += period_s
        now = loop.time()
        if now > next_tick:
            missed = int((now - next_tick) // period_s) + 1
            if on_missed is not None:
                on_missed(missed)
            next_tick += missed * period_s
        await asyncio.sleep(next_tick - now)

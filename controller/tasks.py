"""Ending tasks at stop when a cancel can be lost.

Python 3.11's `asyncio.wait_for` returns (or raises) the inner result when its caller is cancelled in
the loop round the inner future finishes (CPython gh-86296, fixed in 3.12): the cancel is gone and
the task goes on. The product's waits and its libraries' (pymodbus' connect, aiomqtt, asyncua) use
wait_for, so a stop that cancels a task once and awaits it can wait for ever: the full test suite
hung in `Controller.aclose` that way, its Modbus supervisor reconnecting to a refused port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

RECANCEL_S = 1.0  # a task still running this long after its cancel is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and return once every one has ended, cancelling again each RECANCEL_S a task
    still runs (a lost cancel; a task's own bounded cleanup is only cut short after that long).
    What the tasks raised is theirs to report: it is not raised here."""
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in pending:
            log.warning("stop: task %s still running %g s after its cancel (a cancel lost in a wait): "
                        "cancelling it again", task.get_name(), RECANCEL_S)
            task.cancel()

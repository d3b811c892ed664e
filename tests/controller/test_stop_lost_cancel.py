"""A stop whose cancel is lost (Python 3.11's wait_for, controller.tasks) still ends every task:
`cancel_and_wait` cancels again, and a real controller whose task loses its first cancel stops."""

from __future__ import annotations

import asyncio

from controller.config import load_config
from controller.runtime import Controller
from controller.tasks import RECANCEL_S, cancel_and_wait
from tests.controller.test_runtime_lifecycle import line, other_tasks


async def blocked() -> None:
    """A wait that only a cancel ends."""
    await asyncio.get_running_loop().create_future()


async def loses_one_cancel(cancels: list[int]) -> None:
    """What a task does when wait_for loses its cancel: it goes on to its next wait."""
    try:
        await blocked()
    except asyncio.CancelledError:
        cancels.append(1)  # taken for the wait's own result, as wait_for does in that round
    await blocked()


async def test_a_task_that_loses_its_cancel_is_cancelled_again_until_it_ends(caplog):
    cancels: list[int] = []
    lossy = asyncio.create_task(loses_one_cancel(cancels), name="lossy")
    plain = asyncio.create_task(blocked(), name="plain")
    await asyncio.sleep(0)  # both are in their first wait
    async with asyncio.timeout(10 * RECANCEL_S):
        await cancel_and_wait([lossy, plain])
    assert lossy.cancelled() and plain.cancelled() and cancels == [1]
    assert "task lossy still running" in caplog.text and "plain" not in caplog.text


async def test_a_controller_whose_task_loses_its_cancel_still_stops(tmp_path):
    """Was: stop cancelled each task once and the task group waited for them: a task whose cancel a
    wait_for lost (a Modbus supervisor reconnecting to a refused port) hung the stop for ever."""
    c = Controller(load_config(line(tmp_path)), api_port=0)
    cancels: list[int] = []
    c.history.run = lambda: loses_one_cancel(cancels)  # an instance attribute: the task start() makes
    await c.start()
    await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await c.aclose()
    assert cancels == [1]
    assert other_tasks() == set()

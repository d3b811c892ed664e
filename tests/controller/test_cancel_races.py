"""A stop must not be lost when it races a wake-up.

Python 3.11's `asyncio.wait_for` returns the inner result when the caller is cancelled in the same
round as the inner wait finishes, swallowing the cancellation (fixed in 3.12). A loop waiting that
way (the Sparkplug node on new events, the sync worker on its wake-up) then goes on after
`task.cancel()`, and `Controller.stop()` hangs (seen in a full run under load: the node's task
never ended). These tests cancel right after the wake-up and fail if the cancel is swallowed.
"""

import asyncio

import pytest

from controller.events import EventLog


async def cancel_after_wake(coro_factory, wake) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(coro_factory())
    await asyncio.sleep(0)  # the task is waiting
    wake()  # the wait is done in this round...
    task.cancel()  # ...and the stop comes in the same round
    return task


async def test_wait_newer_keeps_a_cancel_that_races_a_new_event():
    events = EventLog()
    task = await cancel_after_wake(lambda: events.wait_newer(events.last_id, 5.0),
                                   lambda: events.add("model", "test", "an event"))
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_connected_keeps_a_cancel_that_races_the_connect():
    from controller.mqtt.session import MqttLink

    link = MqttLink.__new__(MqttLink)  # only the wait's state: no broker is involved in this race
    link._up = asyncio.Event()
    task = await cancel_after_wake(lambda: link.wait_connected(5.0), link._up.set)
    with pytest.raises(asyncio.CancelledError):
        await task

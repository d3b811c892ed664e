"""Actuator writes: scheduled as tasks (the step never waits for a PLC), one at a time per tag,
confirmed by the driver's readback.

Every result goes through the one path the step's decisions take, the `Journal` (flushed at once,
so a result is never seen after the alarm it raises): an action's write is confirmed (or failed)
by `ActionEngine.confirm`, a safe-state write reports as an `ActionEvent` of action
`safe_state:<plc>`; a failed safe-state write also tells PLC health (its
`<plc>_safe_state_failed` alarm).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from controller.actions import ActionEngine, ActionEvent, WriteRequest
from controller.clock import Clock
from controller.journal import Journal
from drivers.base import Driver
from drivers.errors import DriverError

SAFE_STATE = "safe_state:"  # action name prefix of a safe-state write: safe_state:<plc>
FINISH_TIMEOUT_S = 5.0  # at shutdown, in-flight writes get this long (bounded by driver timeouts)


def safe_state_action(plc: str) -> str:
    return f"{SAFE_STATE}{plc}"


class Writes:
    """Issues WriteRequests; `finish()` waits for those in flight (shutdown)."""

    def __init__(self, driver_of_tag: Mapping[str, Driver], actions: ActionEngine, journal: Journal,
                 clock: Clock, on_safe_state_failed: Callable[[str], None]) -> None:
        self._driver_of_tag = driver_of_tag
        self._actions, self._journal, self._clock = actions, journal, clock
        self._on_safe_state_failed = on_safe_state_failed
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_flight: set[asyncio.Task] = set()

    def issue(self, writes: Sequence[WriteRequest]) -> None:
        """Start each write as its own task (never awaited here: called from the step)."""
        for write in writes:
            task = asyncio.create_task(self._write(write), name=f"write:{write.tag}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def finish(self, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """Let the writes in flight end (a stop must not cut an actuator write in half); one still
        waiting for its PLC after `timeout_s` is cancelled and recorded as failed, so no write task
        outlives the controller and no action is left without a result."""
        if not self._in_flight:
            return
        _, hanging = await asyncio.wait(list(self._in_flight), timeout=timeout_s)
        for task in hanging:
            task.cancel()
        if hanging:
            await asyncio.wait(hanging)

    async def _write(self, write: WriteRequest) -> None:
        lock = self._locks.setdefault(write.tag, asyncio.Lock())
        try:
            async with lock:
                await self._driver_of_tag[write.tag].write(write.tag, float(write.value))
            ok, detail = True, ""
        except asyncio.CancelledError:
            self._record(write, False, "cancelled: the controller stopped before the PLC answered")
            raise
        except Exception as exc:  # a PLC's refusal, a lost session, or a bug: the action still gets a result
            plc_said = isinstance(exc, DriverError | OSError | TimeoutError)
            ok = False
            detail = (str(exc) or type(exc).__name__) if plc_said else f"{type(exc).__name__}: {exc}"
        self._record(write, ok, detail)

    def _record(self, write: WriteRequest, ok: bool, detail: str) -> None:
        mono, wall = self._clock.mono(), self._clock.wall()
        if not write.action.startswith(SAFE_STATE):
            self._journal.put(self._actions.confirm(write.action, mono, ok, detail, wall=wall))
        else:
            what = f"safe-state write {write.tag}={write.value}"
            self._journal.put([ActionEvent(wall, write.action, "confirmed" if ok else "failed",
                                           f"{what} confirmed" if ok else f"{what} failed: {detail}")])
            if not ok:
                self._on_safe_state_failed(write.action.removeprefix(SAFE_STATE))
        # Recorded now (this task is off the hot path), after what was queued before it: the result is
        # in the event log before any alarm it raises can be seen, and still after its "fired".
        self._journal.flush()

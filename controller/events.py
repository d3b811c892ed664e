"""The controller's event log: every alarm transition, action decision and driver state change.

Kept in memory (a bounded ring, numbered) for the local API and `linesentry
events --follow`; the runtime also turns each event into a cloud point. Events
are plain dicts so they serialise to JSON as they are.
"""

import asyncio
import itertools
import time
from collections import deque


class EventLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[dict] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def add(self, kind: str, source: str, message: str, *, at: float | None = None, **fields) -> dict:
        """Record one event: kind (alarm|action|driver|model|outbox), what it is about, and why."""
        event = {"id": next(self._ids), "time": time.time() if at is None else at, "kind": kind,
                 "source": source, "message": message, **fields}
        self._events.append(event)
        self._changed.set()
        return event

    def since(self, last_id: int = 0, limit: int = 1000) -> list[dict]:
        """Events newer than `last_id`, oldest first (at most `limit`)."""
        out = [e for e in self._events if e["id"] > last_id]
        return out[:limit]

    @property
    def last_id(self) -> int:
        return self._events[-1]["id"] if self._events else 0

    async def wait_newer(self, last_id: int, timeout: float) -> list[dict]:
        """Wait up to `timeout` seconds for events newer than `last_id` (for streaming)."""
        if self.last_id <= last_id:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                return []
        return self.since(last_id)

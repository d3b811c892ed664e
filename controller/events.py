"""The controller's event log: every alarm transition, action decision, operator request and
driver state change, numbered.

The newest events are kept in memory (a bounded ring) for the local API and `linesentry events
--follow`; the runtime also turns each event into a cloud point. Once `open` has attached the
journal (controller.eventstore, SQLite in the state directory), `flush` writes what was added since
the last flush in one transaction: housekeeping calls it every round, never the hot path, so `add`
does no I/O (but once every RESERVE_IDS / 2 events in a burst, see below). Ids go on after a
restart from above every id handed out before it, and `since` reads older events back from it:
the journal holds a reserved high-water mark RESERVE_IDS ahead of the last id, renewed by `flush`,
so an event the API served and a kill -9 lost before its flush never has its id given to another
(a client at `events --since ID` would miss that one); a restart leaves a gap instead. A journal
that cannot be written is one error line; the events stay in memory.
Events are plain dicts so they serialise to JSON as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.eventstore import EventStore

log = logging.getLogger(__name__)

RETRY_S = 5.0  # a journal that failed is tried again this often (not every 50 ms round)
PRUNE_EVERY_S = 60.0
CHECK_FILE_EVERY_S = 5.0  # how often the journal file is checked to be still the one written
RESERVE_IDS = 1000  # ids reserved ahead in the journal; renewed by flush when half are used
MESSAGE_MAX_CHARS = 4000  # a PLC's 20 MB error text made every page that held it too big to serve


class EventLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[dict] = deque(maxlen=capacity)
        self._unsaved: list[dict] = []  # added, not yet in the journal (at most `capacity`)
        self._ids = itertools.count(1)
        self._last_id = 0
        self._reserved = 0  # ids up to this are reserved in the journal (0: no journal)
        self._reserve_failed = False  # the last reservation failed: the next try is flush's
        self._changed = asyncio.Event()
        self._store: EventStore | None = None
        self._failing = False
        self._retry_at = self._prune_at = self._check_at = 0.0
        self._replaced = ""  # what happened to the journal file while running (told once)
        self._dropped = 0  # unsaved events pushed out of memory while the journal failed
        self.run_start = 0  # the journal's last id when this run opened it: older ids are earlier runs'

    def open(self, store: EventStore) -> bool:
        """Continue the journal in `store`: ids after its last one, its newest events in memory.
        One that cannot be opened is one error line, and this run keeps events in memory only."""
        try:
            store.open()
            last, recent = store.id_floor(), store.recent(self._events.maxlen or 0)
        except (sqlite3.Error, OSError) as exc:
            store.close()
            log.error("event journal %s cannot be opened (%s): events are kept in memory only (the last "
                      "%d) until a restart with a writable state directory", store.path, exc,
                      self._events.maxlen)
            return False
        early = list(self._events)  # added before the journal was opened: numbered after it
        self._events.clear()
        self._events.extend(recent)
        self._ids, self._last_id, self._store = itertools.count(last + 1), last, store
        self.run_start, self._reserved = last, last
        self._reserve()  # before any id of this run is handed out (one that fails: flush reports it)
        for e in early:
            e["id"] = self._next_id()
            self._events.append(e)
        self._unsaved = list(early)
        return True

    def _next_id(self) -> int:
        self._last_id = next(self._ids)
        if self._store is not None and self._last_id > self._reserved and not self._reserve_failed:
            self._reserve()  # a burst used every reserved id since the last flush
        return self._last_id

    def _reserve(self) -> None:
        """Reserve RESERVE_IDS ids past the last one in the journal. One that cannot be written
        (the journal failing) is left to `flush` to report: the ids go on being handed out."""
        up_to = self._last_id + RESERVE_IDS
        try:
            self._store.reserve(up_to)
        except (sqlite3.Error, OSError):
            self._reserve_failed, self._retry_at = True, time.monotonic() + RETRY_S
            return
        self._reserved, self._reserve_failed = up_to, False

    def add(self, kind: str, source: str, message: str, *, at: float | None = None, **fields) -> dict:
        """Record one event: kind (alarm|action|driver|model|outbox|controller), what it is about, and why."""
        if not (message.isascii() and source.isascii()):  # a lone surrogate (bytes decoded with
            # surrogateescape, in an OS or a PLC's error text) cannot be written as UTF-8: that one
            # event failed every flush after it, for the whole run
            message, source = (t.encode("utf-8", "backslashreplace").decode("utf-8")
                               for t in (message, source))
        if len(message) > MESSAGE_MAX_CHARS:
            message = f"{message[:MESSAGE_MAX_CHARS]}... ({len(message) - MESSAGE_MAX_CHARS} more characters)"
        event = {"id": self._next_id(), "time": time.time() if at is None else at, "kind": kind,
                 "source": source, "message": message, **fields}
        self._events.append(event)
        if self._store is not None:
            if len(self._unsaved) >= (self._events.maxlen or 0):
                del self._unsaved[0]
                self._dropped += 1
            self._unsaved.append(event)
        self._changed.set()
        return event

    def flush(self) -> None:
        """Write the events added since the last flush, in one transaction. A failure (full disk,
        unwritable file) is one error line; the events wait in memory and are tried every RETRY_S."""
        store = self._store
        if store is None:
            return
        now = time.monotonic()
        if self._unsaved and (not self._failing or now >= self._retry_at):
            try:
                store.append(self._unsaved)
            except (sqlite3.Error, OSError) as exc:
                if not self._failing:
                    log.error("event journal %s: cannot write (%s): events are kept in memory (the last %d) "
                              "and written when it works again; free the disk or fix the state directory",
                              store.path, exc, self._events.maxlen)
                self._failing, self._retry_at = True, now + RETRY_S
                return
            if self._failing:
                log.warning("event journal %s: writing again (%d events written now%s)", store.path,
                            len(self._unsaved), f", {self._dropped} older ones lost" if self._dropped else "")
            self._unsaved, self._failing, self._dropped = [], False, 0
        if self._last_id + RESERVE_IDS // 2 > self._reserved and not self._failing and (
                not self._reserve_failed or now >= self._retry_at):
            self._reserve()
        if now >= self._check_at:
            self._check_at = now + CHECK_FILE_EVERY_S
            replaced = store.replaced()
            if replaced and replaced != self._replaced:
                log.error("event journal %s %s while the controller runs: the events go on into the file "
                          "it opened, which is lost at the next start; restore the state directory and "
                          "restart the controller", store.path, replaced)
            self._replaced = replaced
        if now >= self._prune_at and not self._failing:
            self._prune_at = now + PRUNE_EVERY_S
            try:
                store.prune(time.time())
            except (sqlite3.Error, OSError) as exc:
                log.warning("event journal %s: cannot delete old events (%s)", store.path, exc)

    def close(self) -> None:
        """Flush and close the journal (the controller's stop)."""
        self.flush()
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(sqlite3.Error, OSError):  # else the reservation stands: a gap
                store.reserve(self._last_id)  # ids reserved, not used, given back: a clean restart has no gap
            store.close()

    def since(self, last_id: int = 0, limit: int = 1000) -> list[dict]:
        """Events newer than `last_id`, oldest first (at most `limit`); older than the memory holds
        come from the journal."""
        first = self._events[0]["id"] if self._events else self._last_id + 1
        out: list[dict] = []
        if self._store is not None and last_id + 1 < first:
            try:
                out = self._store.read(last_id, first, limit)
            except sqlite3.Error as exc:
                log.warning("event journal %s: cannot read (%s): showing the events in memory",
                            self._store.path, exc)
        if len(out) < limit:
            out += [e for e in self._events if e["id"] > last_id][:limit - len(out)]
        return out

    @property
    def last_id(self) -> int:
        return self._last_id

    async def wait_newer(self, last_id: int, timeout: float) -> list[dict]:
        """Wait up to `timeout` seconds for events newer than `last_id` (for streaming)."""
        if self.last_id <= last_id:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                return []
        return self.since(last_id)

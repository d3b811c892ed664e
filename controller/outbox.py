"""Store-and-forward outbox: every point for the cloud is committed to SQLite before it is sent.

One SQLite file (``outbox.sqlite3`` in the given directory), WAL journal, ``synchronous=FULL``:
in WAL mode NORMAL is already safe against a process crash (kill -9) but can lose the last
commits on power loss, and the design promises nothing is lost on either. FULL costs one fsync
per commit, and we commit once per window (every ~10 s) plus once per confirmed send, so the
price is negligible.

Tables:

- ``outbox``: one row per `append` (one window, or a handful of events): the line protocol text,
  its point count and byte size. Rows are sent oldest first and deleted only after the server
  confirmed them (`delete`).
- ``dead_letter``: batches the server rejected as malformed (HTTP 400), with the status and the
  server's message, kept for inspection instead of being retried forever.

Failure behaviour, none of which raises into the caller:

- Size cap (``max_bytes``, on the stored line protocol bytes; the file itself is larger, see
  docs/cloud-sync.md): after an append, the oldest rows are deleted until the backlog fits; the
  dropped points are counted and an ``outbox`` event point records the drop in the same
  transaction (with a running total, since an older drop event can itself be dropped later).
- Disk full / I/O error (`sqlite3.OperationalError`, e.g. "database or disk is full"): the append
  is rolled back, returns ``AppendResult(ok=False, ...)``, and its points are counted as dropped.
  Fetch/delete errors return None/False and are counted; data stays in the outbox.

Thread safety: one connection guarded by a lock, so the sync worker can run blocking calls in a
thread (`asyncio.to_thread`) while the controller appends; the event loop never waits on fsync.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from influxdb_client import Point

from controller.points import EventClock, Identity, event_point, to_lines

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    n_points INTEGER NOT NULL,
    n_bytes INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_ids TEXT NOT NULL,
    moved_ns INTEGER NOT NULL,
    status INTEGER NOT NULL,
    message TEXT NOT NULL,
    n_points INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AppendResult:
    ok: bool
    points: int
    error: str = ""


@dataclass(frozen=True)
class Batch:
    """Oldest rows of the outbox, to be sent as one write request."""

    ids: tuple[int, ...]
    body: str  # line protocol, one point per line
    n_points: int
    n_bytes: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    outbox_ids: str
    moved_ns: int
    status: int
    message: str
    n_points: int
    body: str


@dataclass
class OutboxStats:
    """Counters since start (the drop events in the outbox are the durable record)."""

    appended_points: int = 0
    appended_rows: int = 0
    append_failures: int = 0
    dropped_points_io: int = 0  # could not be stored at all (disk full, I/O error)
    dropped_points_cap: int = 0  # stored, then deleted by the size cap
    dropped_rows_cap: int = 0
    dead_lettered_points: int = 0
    io_errors: int = 0  # any sqlite error, including fetch/delete
    last_error: str = field(default="")


class Outbox:
    """Durable, size-capped FIFO of line-protocol rows in SQLite (see module docstring)."""

    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30,
                 identity: Identity | None = None, max_page_count: int | None = None) -> None:
        """Open or create the outbox in `directory`.

        `identity` tags the drop events (without it drops are only counted). `max_page_count`
        is SQLite's hard limit on the file size in pages; a last-resort guard, and how tests
        simulate a full disk.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"outbox directory {directory} does not exist; create it first")
        self.path = directory / DB_NAME
        self.max_bytes = max_bytes
        self.identity = identity
        self.stats = OutboxStats()
        self._events = EventClock()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        if max_page_count is not None:
            self._conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        self._conn.executescript(_SCHEMA)
        rows, points, nbytes = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_points), 0), COALESCE(SUM(n_bytes), 0) FROM outbox").fetchone()
        self._rows, self._points, self._bytes = rows, points, nbytes

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[str] | Sequence[Point]) -> AppendResult:
        """Commit one window's points (line protocol strings or `Point`s) in one transaction."""
        lines = _as_lines(records)
        if not lines:
            return AppendResult(True, 0)
        body = "\n".join(lines)
        n_bytes = len(body.encode())
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                cur = self._conn.execute(
                    "INSERT INTO outbox (created_ns, n_points, n_bytes, body) VALUES (?, ?, ?, ?)",
                    (time.time_ns(), len(lines), n_bytes, body))
                dropped = self._enforce_cap(self._bytes + n_bytes, cur.lastrowid)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.stats.append_failures += 1
                self.stats.dropped_points_io += len(lines)
                self._io_error("append", exc)
                return AppendResult(False, len(lines), str(exc))
            self._rows += 1
            self._points += len(lines)
            self._bytes += n_bytes
            if dropped is not None:
                d_rows, d_points, d_bytes, ev_points, ev_bytes = dropped
                self._rows += -d_rows + (1 if ev_points else 0)
                self._points += -d_points + ev_points
                self._bytes += -d_bytes + ev_bytes
                self.stats.dropped_rows_cap += d_rows
                self.stats.dropped_points_cap += d_points
            self.stats.appended_rows += 1
            self.stats.appended_points += len(lines)
        return AppendResult(True, len(lines))

    async def append_async(self, records: Sequence[str] | Sequence[Point]) -> AppendResult:
        """`append` in a worker thread: the caller's event loop never waits on the fsync."""
        return await asyncio.to_thread(self.append, records)

    def _enforce_cap(self, total: int, new_id: int | None) -> tuple[int, int, int, int, int] | None:
        """Inside the append transaction: delete the oldest rows (never the one just appended)
        until the backlog fits, and record an `outbox` drop event (the event row may exceed the
        cap by its own few hundred bytes)."""
        if total <= self.max_bytes:
            return None
        excess = total - self.max_bytes
        ids, d_points, d_bytes = [], 0, 0
        cur = self._conn.execute("SELECT id, n_points, n_bytes FROM outbox WHERE id < ? ORDER BY id",
                                 (new_id,))
        for row_id, n_points, n_bytes in cur:
            ids.append(row_id)
            d_points += n_points
            d_bytes += n_bytes
            if d_bytes >= excess:
                break
        cur.close()
        if not ids:
            return None
        self._conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        ev_points = ev_bytes = 0
        if self.identity is not None:
            ev = to_lines([event_point(
                self.identity, self._events, "outbox", "size_cap",
                f"outbox over {self.max_bytes} bytes: dropped {d_points} oldest points",
                result="dropped", dropped_points=d_points, dropped_bytes=d_bytes,
                dropped_points_total=self.stats.dropped_points_cap + d_points)])
            body = "\n".join(ev)
            ev_points, ev_bytes = len(ev), len(body.encode())
            self._conn.execute("INSERT INTO outbox (created_ns, n_points, n_bytes, body) VALUES (?, ?, ?, ?)",
                               (time.time_ns(), ev_points, ev_bytes, body))
        log.warning("outbox size cap %d bytes: dropped %d oldest points", self.max_bytes, d_points)
        return len(ids), d_points, d_bytes, ev_points, ev_bytes

    # -- reading and acknowledging -------------------------------------------------------------

    def fetch_batch(self, max_points: int) -> Batch | None:
        """The oldest rows up to `max_points` (always at least one row), or None if empty."""
        with self._lock:
            try:
                cur = self._conn.execute("SELECT id, n_points, n_bytes, body FROM outbox ORDER BY id")
                ids, bodies, points, nbytes = [], [], 0, 0
                for row_id, n_points, n_bytes, body in cur:
                    if ids and points + n_points > max_points:
                        break
                    ids.append(row_id)
                    bodies.append(body)
                    points += n_points
                    nbytes += n_bytes
                cur.close()
            except sqlite3.Error as exc:
                self._io_error("fetch", exc)
                return None
        if not ids:
            return None
        return Batch(tuple(ids), "\n".join(bodies), points, nbytes)

    def delete(self, batch: Batch) -> bool:
        """Forget a batch the server confirmed (2xx). False if SQLite failed; it will be resent."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                removed = self._delete_rows(batch.ids)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._io_error("delete", exc)
                return False
            self._account_removed(removed)
        return True

    def dead_letter(self, batch: Batch, status: int, message: str) -> bool:
        """Move a batch the server rejected as malformed into `dead_letter`, in one transaction."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO dead_letter (outbox_ids, moved_ns, status, message, n_points, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (",".join(map(str, batch.ids)), time.time_ns(), int(status), message, batch.n_points,
                     batch.body))
                removed = self._delete_rows(batch.ids)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._io_error("dead_letter", exc)
                return False
            self._account_removed(removed)
            self.stats.dead_lettered_points += batch.n_points
        return True

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._conn.execute("SELECT id, outbox_ids, moved_ns, status, message, n_points, body "
                                      "FROM dead_letter ORDER BY id").fetchall()
        return [DeadLetter(*r) for r in rows]

    def backlog(self) -> tuple[int, int, int]:
        """(rows, points, bytes) waiting to be sent; kept in memory, no query."""
        return self._rows, self._points, self._bytes

    def file_bytes(self) -> int:
        """Size on disk of the database and its WAL."""
        return sum(p.stat().st_size for p in self.path.parent.glob(DB_NAME + "*") if p.is_file())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _delete_rows(self, ids: Iterable[int]) -> tuple[int, int, int]:
        ids = list(ids)
        marks = ",".join("?" * len(ids))
        rows, points, nbytes = self._conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(n_points), 0), COALESCE(SUM(n_bytes), 0) FROM outbox "
            f"WHERE id IN ({marks})", ids).fetchone()
        self._conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        return rows, points, nbytes

    def _account_removed(self, removed: tuple[int, int, int]) -> None:
        self._rows -= removed[0]
        self._points -= removed[1]
        self._bytes -= removed[2]

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _io_error(self, what: str, exc: sqlite3.Error) -> None:
        self.stats.io_errors += 1
        self.stats.last_error = f"{what}: {exc}"
        log.error("outbox %s failed: %s", what, exc)


def _as_lines(records: Sequence[str] | Sequence[Point]) -> list[str]:
    lines = []
    for r in records:
        line = r.to_line_protocol() if isinstance(r, Point) else str(r).strip()
        if line:
            lines.append(line)
    return lines

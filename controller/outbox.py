"""Store-and-forward outbox: every record for the cloud is committed to SQLite before any sink sends it.

One SQLite file (``outbox.sqlite3`` in the given directory), WAL journal, ``synchronous=FULL``:
in WAL mode NORMAL is already safe against a process crash (kill -9) but can lose the last
commits on power loss, and the design promises nothing is lost on either. FULL costs one fsync
per commit, and we commit once per window (every ~10 s) plus once per confirmed send, so the
price is negligible.

Tables (schema version in ``PRAGMA user_version``, see `_MIGRATIONS`):

- ``outbox``: one row per `append` (one window, or a handful of events): the records as
  sink-neutral JSON (`controller.records.encode`, ``encoding = 'records'``), their count and byte
  size. Rows written by the version before records (``encoding = 'lineproto'``, InfluxDB line
  protocol) are kept as they are and delivered, as they are, to the InfluxDB sink only.
- ``sinks`` and ``pending``: each sink that drains the outbox (`subscribe`) and the rows it has not
  yet delivered. A row goes to every sink, or only to the sinks its append names (``route``); a
  sink subscribed ``routed_only`` (the Sparkplug node) gets only the rows routed to it, never the
  summaries and events of the cloud sync. A sink that subscribes later gets the rows routed to it
  (and, unless routed-only, the unrouted ones). Sinks drain independently (one
  can be down while another sends); a row is deleted once no sink has it pending. `ack` takes any
  rows, not only the oldest, so a sink may send live records before its backlog.
- ``dead_letter``: batches a sink rejected as malformed, with the sink, status and message, kept
  for inspection instead of being retried forever.

Failure behaviour, none of which raises into the caller:

- Size cap (``max_bytes``, on the stored body bytes; the file itself is larger, see
  docs/cloud-sync.md): after an append, the oldest rows are deleted until the backlog fits,
  whichever sinks still had them; the dropped records are counted and an ``outbox`` event records
  the drop in the same transaction (with a running total, since an older drop event can itself
  be dropped later).
- Disk full / I/O error (`sqlite3.OperationalError`, e.g. "database or disk is full"): the append
  is rolled back, returns ``AppendResult(ok=False, ...)``, and its records are counted as dropped.
  Fetch/ack errors return None/False and are counted; data stays in the outbox.

Thread safety: one connection guarded by a lock, so sync workers can run blocking calls in a
thread (`asyncio.to_thread`) while the controller appends; the event loop never waits on fsync.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.points import EventClock, Identity, event_point
from controller.records import Record, decode, encode

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite3"
RECORDS, LINE_PROTOCOL = "records", "lineproto"  # outbox.encoding
LEGACY_SINK = "influxdb"  # the only sink before records: it inherits the line-protocol rows
# The first schema (line protocol rows, one implicit sink), then each migration in order; the
# index of a migration + 1 is the user_version after it. A file of any version opens in one
# transaction per step, so an interrupted upgrade leaves the previous version intact.
_BASE = """
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
_MIGRATIONS = (
    f"""
    ALTER TABLE outbox ADD COLUMN encoding TEXT NOT NULL DEFAULT '{LINE_PROTOCOL}';
    ALTER TABLE dead_letter ADD COLUMN encoding TEXT NOT NULL DEFAULT '{LINE_PROTOCOL}';
    ALTER TABLE dead_letter ADD COLUMN sink TEXT NOT NULL DEFAULT '{LEGACY_SINK}';
    CREATE TABLE sinks (name TEXT PRIMARY KEY, subscribed_ns INTEGER NOT NULL);
    CREATE TABLE pending (sink TEXT NOT NULL, row_id INTEGER NOT NULL, PRIMARY KEY (sink, row_id))
        WITHOUT ROWID;
    CREATE INDEX pending_row ON pending (row_id);
    INSERT INTO sinks (name, subscribed_ns) SELECT '{LEGACY_SINK}', 0 WHERE EXISTS (SELECT 1 FROM outbox);
    INSERT INTO pending (sink, row_id) SELECT '{LEGACY_SINK}', id FROM outbox;
    """,
    # route: the sinks a row is for (comma-separated), NULL: every sink but the routed-only ones;
    # routed_only: a sink that gets only the rows routed to it (the Sparkplug node)
    """
    ALTER TABLE outbox ADD COLUMN route TEXT;
    ALTER TABLE sinks ADD COLUMN routed_only INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True)
class AppendResult:
    ok: bool
    points: int  # records (one record is one point in InfluxDB)
    error: str = ""


@dataclass(frozen=True)
class Batch:
    """The oldest rows one sink has pending, to be sent as one request: either records, or the
    line protocol of rows from before records (never both)."""

    sink: str
    ids: tuple[int, ...]
    records: tuple[Record, ...]
    # only for LEGACY_SINK, from an outbox written before records: each row's line protocol as
    # stored (its lines joined by newlines; a string field may hold a raw newline, so never split)
    line_protocol: tuple[str, ...]
    n_points: int
    n_bytes: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    sink: str
    outbox_ids: str
    moved_ns: int
    status: int
    message: str
    n_points: int
    encoding: str
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
    io_errors: int = 0  # any sqlite error, including fetch/ack
    last_error: str = field(default="")


Sizes = tuple[int, int, int]  # rows, points, bytes


class Outbox:
    """Durable, size-capped store of record rows in SQLite, drained per sink (see module docstring)."""

    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30,
                 identity: Identity | None = None, max_page_count: int | None = None) -> None:
        """Open or create the outbox in `directory`, upgrading a file of an older schema.

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
        self._migrate()
        self._sinks, self._routed_only = [], set()
        for name, routed_only in self._conn.execute("SELECT name, routed_only FROM sinks ORDER BY name"):
            self._sinks.append(name)
            if routed_only:
                self._routed_only.add(name)
        self._total = self._sizes("SELECT COUNT(*), COALESCE(SUM(n_points), 0), COALESCE(SUM(n_bytes), 0) "
                                  "FROM outbox")
        self._pending = {name: self._pending_sizes(name) for name in self._sinks}

    def _migrate(self) -> None:
        self._conn.executescript(_BASE)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has outbox schema {version}, newer than this linesentry "
                               f"({SCHEMA_VERSION}); upgrade linesentry or move the file away")
        for step in range(version, SCHEMA_VERSION):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # another process may have done this step while we waited for the lock
                if self._conn.execute("PRAGMA user_version").fetchone()[0] > step:
                    self._conn.execute("COMMIT")
                    continue
                for statement in filter(str.strip, _MIGRATIONS[step].split(";")):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={step + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            log.info("outbox %s upgraded to schema %d", self.path, step + 1)

    # -- writing -----------------------------------------------------------------------------

    def append(self, records: Sequence[Record], sinks: Sequence[str] | None = None) -> AppendResult:
        """Commit one window's records (and/or events) as one row, in one transaction, pending for
        every subscribed sink or (`sinks`) only for those named."""
        if not records:
            return AppendResult(True, 0)
        body = encode(records)
        n, n_bytes = len(records), len(body.encode())
        route = None if sinks is None else tuple(sorted(set(sinks)))
        if route is not None and any("," in name for name in route):
            raise ValueError(f"a sink name has no comma, got {route}")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                row_id = self._insert(n, n_bytes, body, route)
                dropped = self._enforce_cap(self._total[2] + n_bytes, row_id)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.stats.append_failures += 1
                self.stats.dropped_points_io += n
                self._io_error("append", exc)
                return AppendResult(False, n, str(exc))
            self._added((1, n, n_bytes), route)
            if dropped is not None:
                removed, per_sink, event = dropped
                self._removed(removed, per_sink)
                if event is not None:
                    self._added(event)
                self.stats.dropped_rows_cap += removed[0]
                self.stats.dropped_points_cap += removed[1]
            self.stats.appended_rows += 1
            self.stats.appended_points += n
        return AppendResult(True, n)

    async def append_async(self, records: Sequence[Record],
                           sinks: Sequence[str] | None = None) -> AppendResult:
        """`append` in a worker thread: the caller's event loop never waits on the fsync."""
        return await asyncio.to_thread(self.append, records, sinks)

    def _insert(self, n: int, n_bytes: int, body: str, route: tuple[str, ...] | None = None) -> int:
        """Inside a transaction: one records row, pending for every subscribed sink (or those of `route`)."""
        cur = self._conn.execute("INSERT INTO outbox (created_ns, n_points, n_bytes, body, encoding, route) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (time.time_ns(), n, n_bytes, body, RECORDS,
                                                               None if route is None else ",".join(route)))
        row_id = int(cur.lastrowid)
        if route is None:
            self._conn.execute("INSERT INTO pending (sink, row_id) SELECT name, ? FROM sinks "
                               "WHERE routed_only = 0", (row_id,))
        else:
            self._conn.execute(f"INSERT INTO pending (sink, row_id) SELECT name, ? FROM sinks WHERE name IN "
                               f"({_marks(route)})", (row_id, *route))
        return row_id

    def _enforce_cap(self, total: int, new_id: int) -> tuple[Sizes, dict[str, Sizes], Sizes | None] | None:
        """Inside the append transaction: delete the oldest rows (never the one just appended)
        until the backlog fits, and record an `outbox` drop event (the event row may exceed the
        cap by its own few hundred bytes)."""
        if total <= self.max_bytes:
            return None
        excess = total - self.max_bytes
        ids, d_bytes = [], 0
        cur = self._conn.execute("SELECT id, n_bytes FROM outbox WHERE id < ? ORDER BY id", (new_id,))
        for row_id, n_bytes in cur:
            ids.append(row_id)
            d_bytes += n_bytes
            if d_bytes >= excess:
                break
        cur.close()
        if not ids:
            return None
        per_sink = self._pending_of(ids)
        removed = self._delete_rows(ids)
        self._conn.execute(f"DELETE FROM pending WHERE row_id IN ({_marks(ids)})", ids)
        # the sinks that had those rows pending are the ones that lost them: a healthy sink that has
        # sent them already reads in the event that the loss is another sink's (a dead or removed one)
        lost_for = ",".join(sorted(per_sink)) or "no subscribed sink"
        event = None
        if self.identity is not None and self._takes_events():
            body = encode([event_point(
                self.identity, self._events, "outbox", "size_cap",
                f"outbox over {self.max_bytes} bytes: dropped {removed[1]} oldest points not yet sent to "
                f"{lost_for}", result="dropped", dropped_points=removed[1], dropped_bytes=removed[2],
                dropped_points_total=self.stats.dropped_points_cap + removed[1], lost_for=lost_for)])
            event = (1, 1, len(body.encode()))
            self._insert(1, event[2], body)
        log.warning("outbox size cap %d bytes: dropped %d oldest points not yet sent to %s", self.max_bytes,
                    removed[1], lost_for)
        return removed, per_sink, event

    # -- sinks: subscribing, reading and acknowledging -----------------------------------------

    def subscribe(self, sink: str, *, routed_only: bool = False) -> None:
        """Have `sink` drain this outbox from now on (durable). The first time, every records row
        still stored for it becomes pending for it (`routed_only`: only the rows an append routed to
        it, now and later); later calls change nothing."""
        with self._lock:
            if sink in self._sinks:
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO sinks (name, subscribed_ns, routed_only) VALUES (?, ?, ?)",
                                   (sink, time.time_ns(), int(routed_only)))
                self._conn.execute("INSERT INTO pending (sink, row_id) SELECT ?, id FROM outbox "
                                   "WHERE encoding = ? AND ((route IS NULL AND NOT ?) "
                                   "OR instr(',' || route || ',', ?) > 0)",
                                   (sink, RECORDS, int(routed_only), f",{sink},"))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._sinks.append(sink)
            if routed_only:
                self._routed_only.add(sink)
            self._pending[sink] = self._pending_sizes(sink)

    def unsubscribe(self, sink: str) -> Sizes:
        """`sink` no longer drains this outbox (it was removed from the configuration): what it had
        pending is no longer kept for it, and rows no other sink has pending are deleted, with an
        ``outbox`` event. Without this, a removed sink holds every row until the size cap (or a
        full disk, which then drops the newest data of the sinks still configured). Returns the
        (rows, points, bytes) deleted."""
        with self._lock:
            if sink not in self._sinks:
                return 0, 0, 0
            routed_only = sink in self._routed_only
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [i for (i,) in self._conn.execute("SELECT row_id FROM pending WHERE sink = ?", (sink,))]
                done = self._settle(sink, ids) if ids else ((0, 0, 0), {})
                self._conn.execute("DELETE FROM sinks WHERE name = ?", (sink,))
                self._sinks.remove(sink)
                self._routed_only.discard(sink)
                event = None
                if self.identity is not None and self._takes_events():
                    body = encode([event_point(
                        self.identity, self._events, "outbox", "unsubscribe",
                        f"sink {sink} is no longer configured: dropped {done[0][1]} points only it had "
                        "pending",
                        result="dropped", dropped_points=done[0][1], dropped_bytes=done[0][2], sink=sink)])
                    event = (1, 1, len(body.encode()))
                    self._insert(1, event[2], body)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                if sink not in self._sinks:
                    self._sinks.append(sink)
                    if routed_only:
                        self._routed_only.add(sink)
                raise
            self._removed(*done)
            self._pending.pop(sink, None)
            if event is not None:
                self._added(event)
        log.warning("outbox: sink %s unsubscribed, %d points only it had pending dropped", sink, done[0][1])
        return done[0]

    def fetch_batch(self, sink: str, max_points: int, after_id: int = 0) -> Batch | None:
        """The oldest rows `sink` has pending, up to `max_points` (always at least one row) and of
        one encoding, or None if it has nothing pending (`after_id`: only rows after that one, for a
        sink that leaves some rows pending for later and reads on past them). A row that does not
        decode (not written by `encode`: a newer version's record kind, a hand edit) is moved to the
        dead letters for `sink` instead of stalling the rows behind it forever; a batch stops before
        such a row."""
        while True:
            rows, encoding = self._pending_rows(sink, max_points, after_id)
            if not rows:
                return None
            if encoding == LINE_PROTOCOL:
                return _batch(sink, rows, (), tuple(body for *_, body in rows))
            records: list[Record] = []
            for i, (row_id, n_points, _, body) in enumerate(rows):
                try:
                    records.extend(decode(body))
                except (ValueError, TypeError) as exc:
                    if i:
                        return _batch(sink, rows[:i], tuple(records), ())
                    self._quarantine(sink, row_id, n_points, body, exc)
                    break
            else:
                return _batch(sink, rows, tuple(records), ())

    def _pending_rows(self, sink: str, max_points: int,
                      after_id: int = 0) -> tuple[list[tuple[int, int, int, str]], str]:
        """(id, points, bytes, body) of the oldest rows `sink` has pending, and their encoding."""
        with self._lock:
            try:
                cur = self._conn.execute(
                    "SELECT o.id, o.n_points, o.n_bytes, o.encoding, o.body FROM pending p "
                    "JOIN outbox o ON o.id = p.row_id WHERE p.sink = ? AND p.row_id > ? "
                    "ORDER BY p.row_id", (sink, after_id))
                rows, points, encoding = [], 0, ""
                for row_id, n_points, n_bytes, enc, body in cur:
                    if rows and (points + n_points > max_points or enc != encoding):
                        break
                    rows.append((row_id, n_points, n_bytes, body))
                    points += n_points
                    encoding = enc
                cur.close()
            except sqlite3.Error as exc:
                self._io_error("fetch", exc)
                return [], ""
        return rows, encoding

    def _quarantine(self, sink: str, row_id: int, n_points: int, body: str, exc: Exception) -> None:
        log.error("outbox row %d does not decode (%s): dead-lettered for sink %s", row_id, exc, sink)
        self._dead_letter(sink, (row_id,), n_points, 0, f"unreadable row: {exc}", RECORDS, body)

    def ack(self, batch: Batch) -> bool:
        """`batch.sink` delivered the batch: no longer pending for it; rows no sink has pending are
        deleted. False if SQLite failed; the batch stays pending and will be resent."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                done = self._settle(batch.sink, batch.ids)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._io_error("ack", exc)
                return False
            self._removed(*done)
        return True

    def dead_letter(self, batch: Batch, status: int, message: str) -> bool:
        """Move a batch `batch.sink` rejected as malformed into `dead_letter`, in one transaction
        (other sinks still get those rows)."""
        if batch.line_protocol:
            encoding, body = LINE_PROTOCOL, "\n".join(batch.line_protocol)
        else:
            encoding, body = RECORDS, encode(batch.records)
        return self._dead_letter(batch.sink, batch.ids, batch.n_points, status, message, encoding, body)

    def _dead_letter(self, sink: str, ids: Sequence[int], n_points: int, status: int, message: str,
                     encoding: str, body: str) -> bool:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO dead_letter (sink, outbox_ids, moved_ns, status, message, n_points, "
                    "encoding, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sink, ",".join(map(str, ids)), time.time_ns(), int(status), message, n_points,
                     encoding, body))
                done = self._settle(sink, ids)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._io_error("dead_letter", exc)
                return False
            self._removed(*done)
            self.stats.dead_lettered_points += n_points
        return True

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._conn.execute("SELECT id, sink, outbox_ids, moved_ns, status, message, n_points, "
                                      "encoding, body FROM dead_letter ORDER BY id").fetchall()
        return [DeadLetter(*r) for r in rows]

    def backlog(self, sink: str | None = None) -> Sizes:
        """(rows, points, bytes) stored (`sink` None: not yet delivered to every sink) or pending for
        `sink`; kept in memory, no query."""
        if sink is None:
            return self._total
        return self._pending.get(sink, (0, 0, 0))

    def sinks(self) -> list[str]:
        """The subscribed sinks, by name."""
        return list(self._sinks)

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

    def _settle(self, sink: str, row_ids: Sequence[int]) -> tuple[Sizes, dict[str, Sizes]]:
        """Inside a transaction: rows `row_ids` are no longer pending for `sink`; delete the rows no
        sink has pending. Rows the size cap removed since the fetch count for nothing."""
        ids = list(row_ids)
        mine = self._pending_of(ids, sink)
        marks = _marks(ids)
        self._conn.execute(f"DELETE FROM pending WHERE sink = ? AND row_id IN ({marks})", [sink, *ids])
        cur = self._conn.execute(f"SELECT row_id FROM pending WHERE row_id IN ({marks})", ids)
        still = {row_id for (row_id,) in cur}
        return self._delete_rows([i for i in ids if i not in still]), mine

    def _delete_rows(self, ids: list[int]) -> Sizes:
        if not ids:
            return 0, 0, 0
        removed = self._sizes(f"SELECT COUNT(*), COALESCE(SUM(n_points), 0), COALESCE(SUM(n_bytes), 0) "
                              f"FROM outbox WHERE id IN ({_marks(ids)})", ids)
        self._conn.execute(f"DELETE FROM outbox WHERE id IN ({_marks(ids)})", ids)
        return removed

    def _pending_of(self, ids: list[int], sink: str | None = None) -> dict[str, Sizes]:
        """Per sink: what of rows `ids` it has pending (only `sink`, if given)."""
        where = f"o.id IN ({_marks(ids)})" + (" AND p.sink = ?" if sink is not None else "")
        rows = self._conn.execute(
            "SELECT p.sink, COUNT(*), SUM(o.n_points), SUM(o.n_bytes) FROM pending p "
            f"JOIN outbox o ON o.id = p.row_id WHERE {where} GROUP BY p.sink",
            [*ids, sink] if sink is not None else ids).fetchall()
        return {name: (int(r), int(p), int(b)) for name, r, p, b in rows}

    def _pending_sizes(self, sink: str) -> Sizes:
        return self._sizes("SELECT COUNT(*), COALESCE(SUM(o.n_points), 0), COALESCE(SUM(o.n_bytes), 0) "
                           "FROM pending p JOIN outbox o ON o.id = p.row_id WHERE p.sink = ?", [sink])

    def _sizes(self, sql: str, args: Sequence[object] = ()) -> Sizes:
        rows, points, nbytes = self._conn.execute(sql, args).fetchone()
        return int(rows), int(points), int(nbytes)

    def _added(self, sizes: Sizes, route: tuple[str, ...] | None = None) -> None:
        """A row was inserted: it counts in the total and for every subscribed sink (of `route`)."""
        self._total = _plus(self._total, sizes)
        for name in self._sinks:
            if name in route if route is not None else name not in self._routed_only:
                self._pending[name] = _plus(self._pending[name], sizes)

    def _removed(self, rows: Sizes, per_sink: dict[str, Sizes]) -> None:
        self._total = _plus(self._total, rows, -1)
        for name, sizes in per_sink.items():
            self._pending[name] = _plus(self._pending[name], sizes, -1)

    def _takes_events(self) -> bool:
        """A sink gets the outbox's own events (unrouted rows): else one would be pending for no one,
        kept until the size cap (the Sparkplug node alone is routed-only; the log says the drop)."""
        return any(name not in self._routed_only for name in self._sinks)

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


def _batch(sink: str, rows: list[tuple[int, int, int, str]], records: tuple[Record, ...],
           line_protocol: tuple[str, ...]) -> Batch:
    return Batch(sink, tuple(r[0] for r in rows), records, line_protocol, sum(r[1] for r in rows),
                 sum(r[2] for r in rows))


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def _plus(a: Sizes, b: Sizes, sign: int = 1) -> Sizes:
    return a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2]

"""The durable half of the event log: events appended to an SQLite file in the state directory,
so ids go on after a restart and `events --since ID` finds what happened before it.

WAL mode with synchronous=NORMAL: a commit is one append to the write-ahead log, no fsync on the
event loop. A kill -9 loses nothing committed; a power cut at most the last commits; neither leaves
a file SQLite cannot open. Ids are never handed out twice, even for events lost that way: the
journal keeps a high-water mark of ids reserved ahead (`reserve`, like a database's sequence
cache), and a restart numbers after it (`id_floor`), leaving a gap where the lost ones were.
The checkpoints (WAL -> database, with the fsync) run in a thread of
their own on a second connection: SQLite's automatic one, inside a commit, stalled the event loop
~20 ms every 4 MiB (benchmarks/journal.py). Retention is bounded by age and by row count, pruned
in small batches.
Every failure (full disk, unwritable file) is an `sqlite3.Error` / `OSError` for the caller
(controller.events) to report once; a file SQLite says is damaged is set aside at open.
One controller at a time: `open` holds an exclusive lock (flock on journal.sqlite.lock, released
by the kernel when the process dies, kill -9 included); a second controller on the same state
directory is refused at its start (two would hand out the same ids and fight over the state file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from controller.errors import Refused

if TYPE_CHECKING:
    from controller.config.controller import ControllerSection

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite"
SCHEMA_VERSION = 2  # 2: the ids table (the reserved high-water mark); a version-1 file gets it at open
PRUNE_BATCH = 2000  # rows deleted per prune (~2 ms): a lowered limit never stalls a housekeeping round
CHECKPOINT_EVERY_S = 5.0
BASE_KEYS = ("id", "time", "kind", "source", "message")
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
    message TEXT NOT NULL, fields TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS ids (reserved INTEGER NOT NULL);
"""


class DamagedJournal(Exception):
    """SQLite reports the file as not a database or corrupt."""


class NewerJournal(Exception):
    """The file was written by a newer linesentry (a higher schema version than this one knows)."""


class JournalInUse(Refused):
    """Another process holds the journal's lock: another controller runs on this state directory."""


class EventStore:
    """One SQLite connection, used from the event loop's thread only."""

    def __init__(self, path: str | Path, *, max_age_s: float, max_rows: int) -> None:
        self.path, self.max_age_s, self.max_rows = Path(path), max_age_s, max_rows
        self._db: sqlite3.Connection | None = None
        self._checkpoints: _Checkpointer | None = None
        self._rows = 0  # rows in the file (counted at open, then kept): retention by count, not by ids
        self._lock: int | None = None  # the lock file's descriptor while open
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._carried = 0  # the id floor of a file set aside at open: the new file numbers above it
        self._run_floor = 0  # the id floor at open: ids above it are this run's events
        self._marks: deque[tuple[float, int]] = deque()  # (monotonic, last id) at each prune of this run

    def open(self) -> None:
        """Open (or create) the file; a damaged one is renamed aside with one warning and a new one
        started. Raises sqlite3.Error / OSError when the file cannot be opened at all, JournalInUse
        when another process has it open."""
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if path.is_symlink():  # SQLite would write into whatever it points at
                raise OSError(errno.ELOOP, "a symbolic link: the journal's files must be files of the "
                              "state directory (remove the link)", str(path))
        self._lock = self._take_lock()
        try:
            self._db = self._connect()
        except (DamagedJournal, NewerJournal) as exc:
            self._carried = _readable_floor(self.path)
            damaged = isinstance(exc, DamagedJournal)
            aside = self._set_aside("damaged" if damaged else "newer")
            what = f"was damaged ({exc})" if damaged else f"is from a newer linesentry ({exc})"
            log.warning("event journal %s %s; kept it as %s and started a new one (ids go on above %d)",
                        self.path, what, aside.name, self._carried)
            self._db = self._connect()
        self._rows = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        opened = os.stat(self.path)
        self._identity = (opened.st_dev, opened.st_ino)
        self._run_floor = self.id_floor()
        self._checkpoints = _Checkpointer(self.path)
        self._checkpoints.start()

    def _take_lock(self) -> int:
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = "".join(c for c in os.pread(fd, 32, 0).decode("ascii", "replace") if c.isdigit()) or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalInUse(f"another controller (pid {holder}) is running on the state directory "
                                   f"{self.path.parent}: stop it, or give this line its own state_dir"
                                   ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA busy_timeout = 100")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise DamagedJournal(check)
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint thread does them
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise NewerJournal(f"schema version {version}, this one knows up to {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            if exc.sqlite_errorcode in _DAMAGED:
                raise DamagedJournal(str(exc)) from exc
            raise
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, why: str) -> Path:
        aside = self.path.with_name(f"{self.path.name}.{why}-{int(time.time())}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):  # they belong to the damaged file, not to the new one
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return aside

    def replaced(self) -> str:
        """What happened to the file since `open`, if it is no longer the one being written ("" if
        it is): SQLite goes on writing into the file it opened, lost at the next start."""
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return "was removed"
        if stat.S_ISLNK(now.st_mode):
            return "was replaced by a symbolic link"
        if stat.S_ISDIR(now.st_mode):
            return "was replaced by a directory"
        return "was replaced by another file" if (now.st_dev, now.st_ino) != self._identity else ""

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def last_id(self) -> int:
        return self._need().execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def id_floor(self) -> int:
        """The highest id ever handed out or reserved: the next run numbers after it."""
        reserved = self._need().execute("SELECT coalesce(max(reserved), 0) FROM ids").fetchone()[0]
        return max(self.last_id(), reserved, self._carried)

    def reserve(self, up_to: int) -> None:
        """Record that ids up to `up_to` may be handed out (a commit like an append's: a kill -9
        never loses it; a power cut may lose the last ~CHECKPOINT_EVERY_S of commits, so ids are
        reused after one only if over half a reservation of events came in those seconds)."""
        db = self._need()
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM ids")
            db.execute("INSERT INTO ids VALUES (?)", (up_to,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def append(self, events: list[dict]) -> None:
        """All of `events` in one transaction (or none of them)."""
        rows = [(e["id"], e["time"], e["kind"], e["source"], e["message"],
                 json.dumps({k: v for k, v in e.items() if k not in BASE_KEYS}, default=str))
                for e in events]
        db = self._need()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._rows += len(rows)

    def read(self, after_id: int, before_id: int, limit: int) -> list[dict]:
        """Stored events with after_id < id < before_id, oldest first."""
        rows = self._need().execute(
            "SELECT id, time, kind, source, message, fields FROM events WHERE id > ? AND id < ? "
            "ORDER BY id LIMIT ?", (after_id, before_id, limit)).fetchall()
        return [{"id": i, "time": t, "kind": k, "source": s, "message": m, **json.loads(f)}
                for i, t, k, s, m, f in rows]

    def recent(self, count: int) -> list[dict]:
        """The newest `count` stored events, oldest first (the in-memory ring after a restart)."""
        rows = self._need().execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?",
                                    (max(count - 1, 0),)).fetchone()
        return self.read((rows[0] if rows else 0) - 1, self.last_id() + 1, count) if count else []

    def prune(self, now: float) -> int:
        """Delete (a batch of) the oldest events beyond the newest max_rows, and of those older than
        max_age_s. Rows are counted, not ids (ids have gaps after a restart: RESERVE_IDS). This
        run's events go by age only once the monotonic clock says they are that old: a wall clock
        set wrong at boot and corrected later (or stepped forward by months) made them look old and
        deleted what had just happened."""
        db = self._need()
        excess = min(self._rows - self.max_rows, PRUNE_BATCH)
        deleted = 0
        if excess > 0:
            deleted = db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                                 (excess,)).rowcount
        mono = time.monotonic()
        if not self._marks or mono - self._marks[-1][0] >= self.max_age_s / 1000:  # at most ~1000 kept
            self._marks.append((mono, self.last_id()))
        old_enough = self._run_floor
        while self._marks and self._marks[0][0] <= mono - self.max_age_s:
            old_enough = max(old_enough, self._marks.popleft()[1])
        self._run_floor = old_enough
        deleted += db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? AND "
                              "id <= ? ORDER BY id LIMIT ?)", (now - self.max_age_s, old_enough, PRUNE_BATCH)
                              ).rowcount
        self._rows -= deleted
        return deleted

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
            self._checkpoints = None
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            os.close(lock)

    def _need(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError(f"event journal {self.path} is not open")
        return self._db


def _readable_floor(path: Path) -> int:
    """The highest id or reservation a file about to be set aside still shows (0 when it shows
    none): the new journal numbers above it, so no id a client saw is reused."""
    floor = 0
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            for query in ("SELECT max(id) FROM events", "SELECT max(reserved) FROM ids"):
                with contextlib.suppress(sqlite3.Error):
                    floor = max(floor, int(db.execute(query).fetchone()[0] or 0))
        finally:
            db.close()
    return floor


class _Checkpointer(threading.Thread):
    """Checkpoints the journal's WAL every CHECKPOINT_EVERY_S on its own connection (PASSIVE: it
    never waits for the writer, nor the writer for it). A failure is left to the writer to report."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="journal-checkpoint", daemon=True)
        self.path, self._stopping = path, threading.Event()

    def run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


def journal_store(section: ControllerSection) -> EventStore:
    """The event journal of a [controller] section: journal.sqlite in its state directory."""
    return EventStore(Path(section.state_dir) / JOURNAL_FILE, max_age_s=section.events_max_age_days * 86400.0,
                      max_rows=section.events_max_rows)

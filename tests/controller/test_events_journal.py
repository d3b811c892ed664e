"""EventLog over its SQLite journal (real files): ids across reopen, reads older than memory,
retention, a damaged file set aside, a failing write kept in memory and written when it works."""

from __future__ import annotations

import json
import logging
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.events import EventLog
from controller.eventstore import EventStore, JournalInUse


def store(path: Path, *, max_age_s: float = 1e9, max_rows: int = 1_000_000) -> EventStore:
    return EventStore(path, max_age_s=max_age_s, max_rows=max_rows)


def stored(path: Path) -> list[tuple]:
    """The rows as another process sees them (a second connection)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT id, kind, source, message FROM events ORDER BY id").fetchall()
    finally:
        db.close()


def test_add_does_no_io_flush_writes_one_batch_and_ids_go_on_after_reopen(tmp_path):
    path = tmp_path / "journal.sqlite"
    log = EventLog()
    assert log.open(store(path))
    log.add("alarm", "a", "NORMAL -> UNACK (condition)", state="UNACK")
    log.add("action", "stop", "fired", user="ann", role="engineer", reason="test")
    assert stored(path) == []  # nothing written by add (the hot path's callers never wait for a disk)
    log.flush()
    assert stored(path) == [(1, "alarm", "a", "NORMAL -> UNACK (condition)"), (2, "action", "stop", "fired")]
    log.close()

    again = EventLog()
    assert again.open(store(path))
    assert again.last_id == 2 and again.add("driver", "press", "connected")["id"] == 3
    assert [e["id"] for e in again.since(0)] == [1, 2, 3]
    assert again.since(1)[0] == {**again.since(1)[0], "user": "ann", "role": "engineer", "reason": "test"}
    again.close()


def test_since_reads_events_older_than_the_memory_from_the_journal(tmp_path):
    path = tmp_path / "journal.sqlite"
    log = EventLog(capacity=10)
    log.open(store(path))
    for i in range(35):
        log.add("driver", "press", f"event {i + 1}")
        log.flush()
    assert [e["id"] for e in log.since(0, limit=1000)] == list(range(1, 36))
    assert [e["id"] for e in log.since(3, limit=5)] == [4, 5, 6, 7, 8]
    assert [e["id"] for e in log.since(22, limit=6)] == [23, 24, 25, 26, 27, 28]  # journal, then memory
    assert log.since(35) == []
    log.close()


def test_retention_bounds_the_journal_by_rows_and_by_age(tmp_path):
    path = tmp_path / "journal.sqlite"
    log = EventLog()
    log.open(store(path, max_rows=1000, max_age_s=3600))
    now = time.time()
    for i in range(1500):
        log.add("driver", "press", f"event {i}", at=now - 7200 if i < 100 else now)
    log.flush()  # the first flush prunes too
    ids = [row[0] for row in stored(path)]
    assert ids == list(range(501, 1501))  # the newest 1000
    log.close()
    log = EventLog()
    log.open(store(path, max_rows=1_000_000, max_age_s=3600))
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET time = ? WHERE id <= 600", (now - 7200,))
    db.commit()
    db.close()
    log.add("driver", "press", "new")
    log.flush()
    assert [row[0] for row in stored(path)][:2] == [601, 602]  # older than an hour: gone
    log.close()


def test_a_wall_clock_set_wrong_never_makes_this_runs_events_look_old_enough_to_delete(tmp_path):
    """A controller booted with its clock at 1970 (no RTC battery, NTP not yet there) stamps its
    first events 1970; when the clock is right the age rule saw them 56 years old and deleted them
    within a minute. This run's events go by age on the monotonic clock; earlier runs' by their time."""
    path = tmp_path / "journal.sqlite"
    earlier = EventLog()
    earlier.open(store(path))
    earlier.add("driver", "press", "a week ago", at=time.time() - 7 * 86400)
    earlier.close()
    log = EventLog()
    log.open(store(path, max_age_s=86400))
    for i in range(3):
        log.add("alarm", "press_comm_loss", f"at boot {i}", at=1e6)  # the clock still at 1970
    log.add("alarm", "press_comm_loss", "after NTP")
    log.flush()  # the first flush prunes, with the wall clock right again
    assert [row[3] for row in stored(path)] == ["at boot 0", "at boot 1", "at boot 2", "after NTP"]
    log.close()


@pytest.mark.parametrize("damage", ["garbage", "torn page"])
def test_a_damaged_journal_is_set_aside_with_one_warning_and_a_new_one_started(tmp_path, caplog, damage):
    path = tmp_path / "journal.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite file at all\n" * 200)
    else:
        log = EventLog()
        log.open(store(path))
        for i in range(2000):
            log.add("driver", "press", f"event {i} " + "x" * 100)
        log.close()
        raw = bytearray(path.read_bytes())
        raw[8192:16384] = b"\xff" * 8192  # pages 3-4 overwritten
        path.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING)
    log = EventLog()
    assert log.open(store(path))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "damaged" in warnings[0], warnings
    aside = list(tmp_path.glob("journal.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].name in warnings[0]
    # ids go on above the ones the damaged file still shows (no id a client saw is reused)
    first = 1 if damage == "garbage" else 2001
    assert log.add("controller", "controller", "started")["id"] == first
    log.close()
    assert stored(path) == [(first, "controller", "controller", "started")]


def test_a_journal_of_a_newer_version_is_set_aside_and_ids_go_on_above_it(tmp_path, caplog):
    """A downgrade: this version cannot know what a newer schema means, so it does not write into
    it; the newer file is kept, and the new one numbers above its ids."""
    path = tmp_path / "journal.sqlite"
    log = EventLog()
    log.open(store(path))
    for i in range(5):
        log.add("driver", "press", f"event {i}")
    log.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.execute("ALTER TABLE events ADD COLUMN future TEXT")
    db.close()
    caplog.set_level(logging.WARNING)
    log = EventLog()
    assert log.open(store(path))
    assert log.add("controller", "controller", "started")["id"] == 6
    log.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "newer linesentry (schema version 99" in warnings[0], warnings
    (aside,) = tmp_path.glob("journal.sqlite.newer-*")
    assert len(stored(aside)) == 5 and stored(path) == [(6, "controller", "controller", "started")]


@pytest.mark.parametrize("link", ["journal.sqlite", "journal.sqlite-wal"])
def test_a_journal_file_that_is_a_symlink_is_not_followed(tmp_path, caplog, link):
    """A link in the state directory (to another program's database, to /etc/...): SQLite would
    write the events into its target. One error line; the events stay in memory."""
    target = tmp_path / "elsewhere.sqlite"
    db = sqlite3.connect(target)
    db.execute("CREATE TABLE precious (x)")
    db.commit()
    db.close()
    before = target.read_bytes()
    (tmp_path / link).symlink_to(target)
    caplog.set_level(logging.ERROR)
    log = EventLog()
    assert not log.open(store(tmp_path / "journal.sqlite"))
    assert len(caplog.records) == 1 and "symbolic link" in caplog.records[0].getMessage()
    log.add("controller", "controller", "started")
    log.close()
    assert target.read_bytes() == before


def test_a_failing_write_is_one_error_line_then_written_when_it_works_again(tmp_path, caplog, monkeypatch):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG, as a full disk refuses one); the events
    wait in memory, later flushes are silent, and the first that works writes them all."""
    import controller.events as events_module

    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN  # Python ignores it: a write fails instead
    path = tmp_path / "journal.sqlite"
    log = EventLog()
    log.open(store(path))
    log.add("controller", "controller", "started")
    log.flush()
    monkeypatch.setattr(events_module, "RETRY_S", 0.0)
    caplog.set_level(logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    wal_size = Path(f"{path}-wal").stat().st_size
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal_size + 1, hard))
        for i in range(3):
            log.add("driver", "press", f"while full {i}")
            log.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0] and "kept in memory" in errors[0], errors
    assert [e["message"] for e in log.since(1)] == ["while full 0", "while full 1", "while full 2"]
    assert len(stored(path)) == 1
    log.flush()
    assert [row[3] for row in stored(path)] == ["started", "while full 0", "while full 1", "while full 2"]
    assert any("writing again" in r.getMessage() for r in caplog.records)
    log.close()


def test_a_journal_that_cannot_be_opened_leaves_the_log_in_memory(tmp_path, caplog):
    (tmp_path / "journal.sqlite").mkdir()  # a directory where the file should be: SQLite cannot open it
    caplog.set_level(logging.ERROR)
    log = EventLog()
    assert not log.open(store(tmp_path / "journal.sqlite"))
    assert len(caplog.records) == 1 and "kept in memory only" in caplog.records[0].getMessage()
    log.add("controller", "controller", "started")
    log.flush()
    assert [e["id"] for e in log.since(0)] == [1]
    log.close()


def test_events_added_before_the_journal_opens_are_numbered_after_it(tmp_path):
    path = tmp_path / "journal.sqlite"
    first = EventLog()
    first.open(store(path))
    first.add("controller", "controller", "started")
    first.close()
    log = EventLog()
    log.add("driver", "press", "early")
    log.open(store(path))
    assert [(e["id"], e["message"]) for e in log.since(0)] == [(1, "started"), (2, "early")]
    log.flush()
    assert [row[0] for row in stored(path)] == [1, 2]
    log.close()


async def test_the_cloud_feed_sends_this_runs_events_only_not_the_journals_history(tmp_path):
    """After a restart the journal holds the earlier runs' events; they went to the outbox then."""
    from controller.housekeeping import CloudFeed
    from controller.outbox import Outbox
    from controller.points import Identity

    path = tmp_path / "journal.sqlite"
    first = EventLog()
    first.open(store(path))
    for i in range(5):
        first.add("driver", "press", f"earlier run {i}")
    first.close()
    log = EventLog()
    log.open(store(path))
    assert log.run_start == 5
    log.add("controller", "controller", "started")
    identity = Identity("s", "l", "c")
    (tmp_path / "outbox").mkdir()
    outbox = Outbox(tmp_path / "outbox", identity=identity)
    try:
        feed = CloudFeed(identity, [], {})
        feed.open(outbox)
        await feed.feed(log, [])
        assert outbox.backlog()[1] == 1  # one point: "started"
    finally:
        outbox.close()
        log.close()


def killed_run(path: Path, count: int, max_rows: int = 1_000_000, flush: bool = False) -> list[int]:
    """A process that opens the journal, adds `count` events (flushing once if `flush`) and is
    killed -9 before any other flush or a close. Returns the ids it handed out."""
    code = (f"import os, signal\nfrom controller.events import EventLog\n"
            f"from controller.eventstore import EventStore\nlog = EventLog()\n"
            f"log.open(EventStore({str(path)!r}, max_age_s=1e9, max_rows={max_rows}))\n"
            f"ids = [log.add('driver', 'press', f'event {{i}}')['id'] for i in range({count})]\n"
            f"{'log.flush()' if flush else ''}\nprint(ids, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr
    return json.loads(run.stdout)


def test_ids_handed_out_are_never_reused_by_the_next_run_even_unflushed(tmp_path):
    """A run killed before its flush (a burst larger than the reservation): the next run numbers
    after every id the first handed out; a clean close gives the unused reservation back (no gap)."""
    path = tmp_path / "journal.sqlite"
    handed = killed_run(path, 2500)
    assert stored(path) == []
    after = EventLog()
    after.open(store(path))
    first = after.add("controller", "controller", "started")["id"]
    assert first > max(handed)
    after.close()
    clean = EventLog()
    clean.open(store(path))
    assert clean.add("controller", "controller", "started")["id"] == first + 1
    clean.close()


def test_row_retention_counts_rows_not_ids_across_the_gaps_restarts_leave(tmp_path):
    path = tmp_path / "journal.sqlite"
    for _ in range(3):  # each run killed: its unused reserved ids become a gap
        killed_run(path, 400, max_rows=1000, flush=True)
    assert len(stored(path)) == 1000  # the newest 1000 of 1200, not only the ones within 1000 ids
    assert stored(path)[0][3] == "event 200"


def test_a_second_controller_on_the_same_journal_is_refused_until_the_first_is_gone(tmp_path):
    """Two processes on one state directory would number the same ids and fight over the file."""
    path = tmp_path / "journal.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom controller.eventstore import "
                               f"EventStore\nEventStore({str(path)!r}, max_age_s=1, max_rows=1000).open()\n"
                               "print('open', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        second = EventLog()
        with pytest.raises(JournalInUse, match=f"another controller \\(pid {holder.pid}\\) is running"):
            second.open(store(path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert second.open(store(path))  # the kernel let go of the lock of the killed process
    second.close()


def test_a_huge_message_is_cut_so_a_page_of_events_stays_servable(tmp_path):
    """A driver's error text of 20 MB (what a PLC sent back): a page holding it was larger than
    the CLI takes (16 MiB), so `events` failed on every page that held it, until retention."""
    from controller.client import MAX_REPLY_BYTES

    path = tmp_path / "journal.sqlite"
    log = EventLog()
    log.open(store(path))
    for _ in range(3):
        log.add("driver", "press", "connection lost: " + "x" * (20 << 20))
    log.close()
    again = EventLog()
    again.open(store(path))
    page = again.since(0)
    assert len(json.dumps(page)) < MAX_REPLY_BYTES and len(page) == 3
    assert page[0]["message"].startswith("connection lost: xxx") and "more characters)" in page[0]["message"]
    again.close()


def test_text_that_is_not_valid_unicode_is_written_not_left_to_block_every_flush(tmp_path):
    """An error text holding bytes decoded with surrogateescape (a file name, a PLC's reply): SQLite
    cannot store the lone surrogate as UTF-8, and the flush raised on it at every round, so no
    later event reached the journal for the whole run."""
    path = tmp_path / "journal.sqlite"
    log = EventLog()
    log.open(store(path))
    event = log.add("driver", "press\udcff", "cannot open /dev/ttyS\udc80: no such device")
    log.add("driver", "press", "next")
    log.flush()
    assert [row[2:] for row in stored(path)] == [
        ("press\\udcff", "cannot open /dev/ttyS\\udc80: no such device"), ("press", "next")]
    assert log.since(0)[0] == event and "\\udc80" in event["message"]  # memory says the same
    assert "−89 %" in log.add("alarm", "line_anomaly", "hydraulic_pressure −89 %")["message"]  # text kept
    log.close()

"""Outbox: FIFO, delete after confirmation, dead letters, size cap, disk full, reopen."""

from __future__ import annotations

import sqlite3

import pytest
from influxdb_client import Point, WritePrecision

from controller.outbox import Outbox
from controller.points import Identity
from hil_tests.rig.lineproto import parse

ID = Identity("s", "l", "c")


def window(i: int, n: int = 10) -> list[str]:
    return [Point("linesentry_tag").tag("tag", f"t{j}").field("mean", float(i))
            .time(i * 10**10, WritePrecision.NS).to_line_protocol() for j in range(n)]


def test_append_fetch_delete_oldest_first_and_survives_reopen(tmp_path):
    with Outbox(tmp_path) as ob:
        for i in range(5):
            assert ob.append(window(i)).ok
        assert ob.backlog()[:2] == (5, 50)
        b = ob.fetch_batch(25)  # whole rows only, oldest first: 2 windows = 20 points
        assert b.n_points == 20 and [parse(x)[3] for x in b.body.splitlines()[::10]] == [0, 10**10]
        assert ob.fetch_batch(25).ids == b.ids  # nothing is removed by fetching
        assert ob.delete(b)
        assert ob.backlog()[:2] == (3, 30)
    with Outbox(tmp_path) as ob:  # committed data and the backlog figures survive a reopen
        assert ob.backlog()[:2] == (3, 30)
        b = ob.fetch_batch(1)  # at least one row even if larger than the budget
        assert b.n_points == 10 and parse(b.body.splitlines()[0])[3] == 2 * 10**10
        assert ob.fetch_batch(10**6).n_points == 30
        assert ob.backlog()[2] == sum(len(x.encode()) + 1 for i in range(2, 5) for x in window(i)) - 3


def test_accepts_points_and_uses_wal_full(tmp_path):
    with Outbox(tmp_path) as ob:
        assert ob.append([Point("m").field("f", 1.0).time(5, WritePrecision.NS)]).points == 1
        assert ob.fetch_batch(10).body == "m f=1 5"
        assert ob._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_dead_letter_keeps_batch_and_message(tmp_path):
    with Outbox(tmp_path) as ob:
        ob.append(window(0))
        ob.append(window(1))
        b = ob.fetch_batch(10)
        assert ob.dead_letter(b, 400, "unable to parse 'x': missing fields")
        assert ob.backlog()[:2] == (1, 10) and ob.stats.dead_lettered_points == 10
        (dl,) = ob.dead_letters()
        assert (dl.status, dl.n_points, dl.body) == (400, 10, b.body)
        assert dl.message == "unable to parse 'x': missing fields"
        assert parse(ob.fetch_batch(100).body.splitlines()[0])[3] == 10**10


def test_size_cap_drops_oldest_counts_and_records_an_event(tmp_path):
    row = len("\n".join(window(0)).encode())
    with Outbox(tmp_path, max_bytes=3 * row + 10, identity=ID) as ob:
        for i in range(5):
            assert ob.append(window(i)).ok
        assert ob.stats.dropped_points_cap >= 20 and ob.stats.dropped_rows_cap >= 2
        body = ob.fetch_batch(10**6).body.splitlines()
        data = [parse(x) for x in body if x.startswith("linesentry_tag")]
        assert sorted({p[3] for p in data})[-1] == 4 * 10**10  # the newest window is kept
        assert min(p[3] for p in data) >= 2 * 10**10  # the oldest went first
        events = [parse(x) for x in body if x.startswith("linesentry_event")]
        assert events and all(e[1]["kind"] == "outbox" and e[2]["result"] == "dropped" for e in events)
        assert events[-1][2]["dropped_points_total"] == ob.stats.dropped_points_cap
        rows, points, nbytes = ob.backlog()
        assert points == len(body) and nbytes <= 3 * row + 10 + 2 * 400


def test_a_single_row_over_the_cap_is_kept(tmp_path):
    with Outbox(tmp_path, max_bytes=10) as ob:
        assert ob.append(window(0)).ok and ob.backlog()[1] == 10


def test_disk_full_returns_failure_counts_drops_and_keeps_working(tmp_path):
    big = [f"m,tag=t{j} f={j} {j}" + " " * 0 for j in range(2000)]
    with Outbox(tmp_path, max_page_count=12) as ob:  # ~48 KiB database: a tiny "disk"
        assert ob.append(window(0)).ok
        result = ob.append(big)  # must not raise
        assert not result.ok and "full" in result.error
        assert ob.stats.append_failures == 1 and ob.stats.dropped_points_io == 2000
        assert ob.backlog()[:2] == (1, 10)  # the failed append left nothing behind
        b = ob.fetch_batch(100)
        assert b.n_points == 10 and ob.delete(b)  # and the outbox still works
        assert ob.append(window(1)).ok


def test_disk_full_error_is_sqlite_full(tmp_path):
    """The simulation raises the same error a full disk does."""
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA max_page_count=2")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    conn.close()


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Outbox(tmp_path / "nope")

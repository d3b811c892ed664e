"""Outbox: FIFO per sink, ack after confirmation, dead letters, size cap, disk full, reopen."""

from __future__ import annotations

import sqlite3

import pytest

from controller.outbox import Outbox
from controller.points import Identity
from controller.records import Record, decode

ID = Identity("s", "l", "c")
SINK = "influxdb"


def window(i: int, n: int = 10) -> list[Record]:
    return [Record("linesentry_tag", {"tag": f"t{j}"}, {"mean": float(i)}, i * 10**10, "window")
            for j in range(n)]


def times(records) -> list[int]:
    return sorted({r.time_ns for r in records})


def opened(path, **kw) -> Outbox:
    ob = Outbox(path, **kw)
    ob.subscribe(SINK)
    return ob


def test_append_fetch_ack_oldest_first_and_survives_reopen(tmp_path):
    with opened(tmp_path) as ob:
        for i in range(5):
            assert ob.append(window(i)).ok
        assert ob.backlog()[:2] == (5, 50) == ob.backlog(SINK)[:2]
        b = ob.fetch_batch(SINK, 25)  # whole rows only, oldest first: 2 windows = 20 points
        assert b.n_points == 20 and times(b.records) == [0, 10**10]
        assert b.records == tuple(window(0) + window(1))  # exactly what was appended
        assert ob.fetch_batch(SINK, 25).ids == b.ids  # nothing is removed by fetching
        assert ob.ack(b)
        assert ob.backlog()[:2] == (3, 30)
    with Outbox(tmp_path) as ob:  # committed data, the subscription and the figures survive a reopen
        assert ob.backlog()[:2] == (3, 30) == ob.backlog(SINK)[:2] and ob.sinks() == [SINK]
        b = ob.fetch_batch(SINK, 1)  # at least one row even if larger than the budget
        assert b.n_points == 10 and times(b.records) == [2 * 10**10]
        assert ob.fetch_batch(SINK, 10**6).n_points == 30
        assert ob.backlog()[2] == sum(len(ob_body.encode()) for ob_body in bodies(ob))


def bodies(ob: Outbox) -> list[str]:
    return [b for (b,) in sqlite3.connect(ob.path).execute("SELECT body FROM outbox")]


def test_wal_full_and_json_bodies(tmp_path):
    with opened(tmp_path) as ob:
        assert ob.append([Record("m", {}, {"f": 1.0, "n": 2, "ok": True, "s": "x"}, 5, "event")]).points == 1
        assert bodies(ob) == ['["event","m",5,{},{"f":1.0,"n":2,"ok":true,"s":"x"}]']
        (r,) = ob.fetch_batch(SINK, 10).records
        assert type(r.fields["f"]) is float and type(r.fields["n"]) is int and r.fields["ok"] is True
        db = sqlite3.connect(ob.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL (per connection)


def test_any_text_survives_the_outbox(tmp_path):
    text = "line\nbreak \u2028 sep \u0085 nel \x1c fs \"quoted\" \\ back ünïcødé ✓ \x00"
    records = [Record("m", {"tag": text}, {"message": text}, 1, "event"), *window(1)]
    with opened(tmp_path) as ob:
        ob.append(records)
        ob.append(window(2))
        assert list(ob.fetch_batch(SINK, 100).records) == records + window(2)


def test_rows_are_kept_until_a_sink_subscribes(tmp_path):
    with Outbox(tmp_path) as ob:  # [sync] enabled = false: the outbox fills, nothing drains it
        ob.append(window(0))
        assert ob.fetch_batch(SINK, 100) is None and ob.backlog()[:2] == (1, 10)
        ob.subscribe(SINK)  # enabled later: the stored rows are sent
        assert ob.fetch_batch(SINK, 100).n_points == 10
        ob.subscribe(SINK)  # idempotent
        assert ob.backlog(SINK)[:2] == (1, 10)


def test_rows_stay_until_every_sink_acked_them(tmp_path):
    with opened(tmp_path) as ob:
        ob.subscribe("other")
        ob.append(window(0))
        ob.append(window(1))
        assert ob.ack(ob.fetch_batch(SINK, 10))
        assert ob.backlog()[:2] == (2, 20) and ob.backlog(SINK)[:2] == (1, 10)
        assert ob.backlog("other")[:2] == (2, 20)
        assert ob.ack(ob.fetch_batch("other", 100))
        assert ob.backlog()[:2] == (1, 10) and ob.backlog("other")[:2] == (0, 0, 0)[:2]
        assert times(ob.fetch_batch(SINK, 100).records) == [10**10]


def test_dead_letter_keeps_batch_and_message_and_the_other_sinks_copy(tmp_path):
    with opened(tmp_path) as ob:
        ob.subscribe("other")
        ob.append(window(0))
        ob.append(window(1))
        b = ob.fetch_batch(SINK, 10)
        assert ob.dead_letter(b, 400, "unable to parse 'x': missing fields")
        assert ob.backlog(SINK)[:2] == (1, 10) and ob.stats.dead_lettered_points == 10
        (dl,) = ob.dead_letters()
        assert (dl.sink, dl.status, dl.n_points, dl.encoding) == (SINK, 400, 10, "records")
        assert decode(dl.body) == list(b.records)
        assert dl.message == "unable to parse 'x': missing fields"
        assert times(ob.fetch_batch(SINK, 100).records) == [10**10]
        assert ob.backlog("other")[:2] == (2, 20)  # the row is still there for the other sink


def test_size_cap_drops_oldest_counts_and_records_an_event(tmp_path):
    row = len("\n".join(bodies_of(window(0))).encode())
    with opened(tmp_path, max_bytes=3 * row + 10, identity=ID) as ob:
        ob.subscribe("other")
        for i in range(5):
            assert ob.append(window(i)).ok
        assert ob.stats.dropped_points_cap >= 20 and ob.stats.dropped_rows_cap >= 2
        records = ob.fetch_batch(SINK, 10**6).records
        data = [r for r in records if r.measurement == "linesentry_tag"]
        assert times(data)[-1] == 4 * 10**10  # the newest window is kept
        assert times(data)[0] >= 2 * 10**10  # the oldest went first
        events = [r for r in records if r.measurement == "linesentry_event"]
        assert events and all(e.tags["kind"] == "outbox" and e.fields["result"] == "dropped" for e in events)
        assert events[-1].fields["dropped_points_total"] == ob.stats.dropped_points_cap
        rows, points, nbytes = ob.backlog()
        assert points == len(records) and nbytes <= 3 * row + 10 + 2 * 400
        assert ob.backlog(SINK) == ob.backlog("other") == ob.backlog()  # per-sink figures follow the drops
    with Outbox(tmp_path) as ob:  # and agree with what is stored
        assert ob.backlog(SINK) == ob.backlog("other") == (rows, points, nbytes)


def bodies_of(records: list[Record]) -> list[str]:
    from controller.records import encode

    return [encode(records)]


def test_a_single_row_over_the_cap_is_kept(tmp_path):
    with opened(tmp_path, max_bytes=10) as ob:
        assert ob.append(window(0)).ok and ob.backlog()[1] == 10


def test_ack_of_rows_the_cap_removed_meanwhile_counts_nothing_twice(tmp_path):
    row = len(bodies_of(window(0))[0].encode())
    with opened(tmp_path, max_bytes=3 * row) as ob:  # room for windows 0+1 or 1+2, not all three
        ob.append(window(0))
        b = ob.fetch_batch(SINK, 10)
        ob.append(window(1))
        ob.append(window(2))  # drops window 0 while its batch is in flight
        assert ob.ack(b)
        assert ob.backlog() == ob.backlog(SINK) and ob.backlog()[:2] == (2, 20)


def test_disk_full_returns_failure_counts_drops_and_keeps_working(tmp_path):
    big = [Record("m", {"tag": f"t{j}"}, {"f": j}, j, "window") for j in range(2000)]
    with opened(tmp_path, max_page_count=12) as ob:  # ~48 KiB database: a tiny "disk"
        assert ob.append(window(0)).ok
        result = ob.append(big)  # must not raise
        assert not result.ok and "full" in result.error
        assert ob.stats.append_failures == 1 and ob.stats.dropped_points_io == 2000
        assert ob.backlog()[:2] == (1, 10) == ob.backlog(SINK)[:2]  # the failed append left nothing behind
        b = ob.fetch_batch(SINK, 100)
        assert b.n_points == 10 and ob.ack(b)  # and the outbox still works
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


@pytest.mark.parametrize("bad, match", [
    (dict(fields={"x": float("nan")}), "leave it out"), (dict(fields={}), "no fields"),
    (dict(fields={"x": None}), "NoneType is not a str"), (dict(kind="sample"), "kind 'sample'"),
    (dict(measurement=""), "non-empty")])
def test_records_refuse_what_no_sink_could_store(bad, match):
    good = dict(measurement="m", tags={}, fields={"x": 1.0}, time_ns=1, kind="window")
    with pytest.raises(ValueError, match=match):
        Record(**(good | bad))

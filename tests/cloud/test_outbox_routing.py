"""Outbox routing: an append names the sinks it is for, and a routed-only sink (the Sparkplug node)
sees nothing else, now, after a reopen, and when it or another sink subscribes later."""

from __future__ import annotations

import sqlite3

from controller.outbox import SCHEMA_VERSION, Outbox
from controller.points import Identity
from controller.records import Record

CLOUD, SPARKPLUG = "influxdb", "sparkplug"


def rec(i: int, name: str = "m") -> list[Record]:
    return [Record(name, {}, {"i": i}, i, "event")]


def values(ob: Outbox, sink: str) -> list[int]:
    batch = ob.fetch_batch(sink, 10**6)
    return [] if batch is None else [r.fields["i"] for r in batch.records]


def test_a_routed_row_is_pending_only_for_its_sinks_and_a_routed_only_sink_gets_nothing_else(tmp_path):
    with Outbox(tmp_path) as ob:
        ob.subscribe(CLOUD)
        ob.subscribe(SPARKPLUG, routed_only=True)
        assert ob.append(rec(1)).ok  # unrouted: the cloud's summaries and events
        assert ob.append(rec(2, "sparkplug"), sinks=(SPARKPLUG,)).ok
        assert ob.append(rec(3)).ok
        assert values(ob, CLOUD) == [1, 3]
        assert values(ob, SPARKPLUG) == [2]
        assert ob.backlog(CLOUD)[:2] == (2, 2) and ob.backlog(SPARKPLUG)[:2] == (1, 1)
        assert ob.backlog()[:2] == (3, 3)
        assert ob.ack(ob.fetch_batch(SPARKPLUG, 10))  # delivered: the row is gone, the cloud's stay
        assert ob.backlog()[:2] == (2, 2) and ob.fetch_batch(SPARKPLUG, 10) is None
    with Outbox(tmp_path) as ob:  # the routing and the routed-only flag are durable
        assert ob.append(rec(4)).ok
        assert ob.append(rec(5), sinks=(SPARKPLUG,)).ok
        assert values(ob, CLOUD) == [1, 3, 4] and values(ob, SPARKPLUG) == [5]
        assert ob.backlog(SPARKPLUG)[:2] == (1, 1) and ob.backlog(CLOUD)[:2] == (3, 3)


def test_a_sink_subscribing_later_gets_only_what_is_routed_to_it(tmp_path):
    with Outbox(tmp_path) as ob:
        ob.subscribe(SPARKPLUG, routed_only=True)
        assert ob.append(rec(1), sinks=(SPARKPLUG,)).ok
        assert ob.append(rec(2), sinks=(CLOUD,)).ok  # for a sink not subscribed yet: kept for it
        ob.subscribe(CLOUD)  # the cloud sync configured later: never the Sparkplug backlog
        assert values(ob, CLOUD) == [2] and values(ob, SPARKPLUG) == [1]
        ob.unsubscribe(SPARKPLUG)  # [mqtt.sparkplug] removed: its backlog goes, the cloud's stays
        assert values(ob, CLOUD) == [2] and ob.backlog()[:2] == (1, 1)
        ob.subscribe(SPARKPLUG, routed_only=True)
        assert values(ob, SPARKPLUG) == []


def test_a_size_cap_drop_event_is_not_sent_to_a_routed_only_sink(tmp_path):
    with Outbox(tmp_path, max_bytes=1 << 16, identity=Identity("s", "l", "c")) as ob:
        ob.subscribe(CLOUD)
        ob.subscribe(SPARKPLUG, routed_only=True)
        big = [Record("m", {}, {"s": "x" * 40_000, "i": 0}, 1, "event")]
        assert ob.append(big, sinks=(SPARKPLUG,)).ok
        assert ob.append(big, sinks=(SPARKPLUG,)).ok  # over the cap: the first is dropped, an event added
        batch = ob.fetch_batch(CLOUD, 100)
        assert [r.measurement for r in batch.records] == ["linesentry_event"]
        assert "sparkplug" in batch.records[0].fields["lost_for"]
        assert len(ob.fetch_batch(SPARKPLUG, 100).records) == 1


def test_an_outbox_of_the_schema_before_routing_is_upgraded_with_its_rows_for_every_sink(tmp_path):
    with Outbox(tmp_path) as ob:
        ob.subscribe(CLOUD)
        assert ob.append(rec(1)).ok
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")  # back to schema 1: no route, no routed_only
    db.executescript("ALTER TABLE outbox DROP COLUMN route; ALTER TABLE sinks DROP COLUMN routed_only; "
                     "PRAGMA user_version = 1;")
    db.close()
    with Outbox(tmp_path) as ob:
        assert values(ob, CLOUD) == [1]
        ob.subscribe(SPARKPLUG, routed_only=True)
        assert values(ob, SPARKPLUG) == []
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_a_sink_can_read_on_past_rows_it_leaves_pending(tmp_path):
    with Outbox(tmp_path) as ob:
        ob.subscribe(SPARKPLUG, routed_only=True)
        for i in range(5):
            assert ob.append(rec(i), sinks=(SPARKPLUG,)).ok
        first = ob.fetch_batch(SPARKPLUG, 2)
        assert [r.fields["i"] for r in first.records] == [0, 1]
        rest = ob.fetch_batch(SPARKPLUG, 10, after_id=first.ids[-1])
        assert [r.fields["i"] for r in rest.records] == [2, 3, 4]
        assert ob.ack(rest) and ob.fetch_batch(SPARKPLUG, 10, after_id=first.ids[-1]) is None
        assert values(ob, SPARKPLUG) == [0, 1]  # left pending, still first in line

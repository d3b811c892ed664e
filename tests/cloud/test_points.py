"""The cloud schema as records, and the InfluxDB sink's line protocol for it, read back and compared
byte for byte with what the previous code (influxdb `Point`s built directly) wrote."""

from __future__ import annotations

import numpy as np
import pytest
from influxdb_client import Point, WritePrecision

from controller.points import (
    EventClock,
    Identity,
    TagInfo,
    event_point,
    line_point,
    tag_points,
    window_points,
)
from controller.records import decode, encode
from controller.sinks.influxdb import line_protocol
from controller.summaries import NS, WindowSummarizer
from hil_tests.rig.lineproto import parse

ID = Identity(site="plant 1", line="L,2", controller="ctl=a")
T0 = 1_700_000_000.0


def summary():
    s = WindowSummarizer(2, 10.0)
    f, q = np.array([1, 1], np.uint8), np.array([0, 2], np.uint8)
    s.update(T0 + 1, np.array([1.5, 2.0]), f, q, 0.4, True, np.array([0.1, 0.9]))
    s.update(T0 + 2, np.array([2.5, 2.0]), f, q, 0.6, False, np.array([0.3, np.nan]))
    return s.update(T0 + 11, np.zeros(2), f, q, 0.0, False, np.zeros(2))


def test_tag_points_schema_and_types():
    records = tag_points(summary(), ID, [TagInfo("motor current", "A"), TagInfo("speed")])
    assert [r.kind for r in records] == ["window", "window"]
    lines = line_protocol(records)
    assert len(lines) == 2
    name, tags, fields, ts = parse(lines[0])
    assert name == "linesentry_tag"
    assert tags == {"site": "plant 1", "line": "L,2", "controller": "ctl=a", "tag": "motor current",
                    "unit": "A"}
    assert ts == int(T0 + 10) * NS
    assert fields["count"] == 2 and isinstance(fields["count"], int)
    assert fields["bad_count"] == 0 and isinstance(fields["bad_count"], int)
    assert fields["mean"] == 2.0 and fields["min"] == 1.5 and fields["max"] == 2.5 and fields["last"] == 2.5
    assert fields["std"] == 0.5 and fields["max_score"] == 0.3 and fields["alarm_seconds"] == 1.0
    for key in ("mean", "min", "max", "std", "last", "max_score", "alarm_seconds"):
        assert isinstance(fields[key], float), key
    # tag 2: only bad samples -> no statistics fields at all (not NaN, not 0), counts still there
    name, tags, fields, _ = parse(lines[1])
    assert "unit" not in tags
    assert fields == {"count": 0, "bad_count": 2, "max_score": 0.9, "alarm_seconds": 1.0}
    assert records[1].fields == fields  # the record itself has no NaN either


def test_line_point():
    record = line_point(summary(), ID)
    name, tags, fields, ts = parse(line_protocol([record])[0])
    assert name == "linesentry_line" and set(tags) == {"site", "line", "controller"}
    assert fields == {"steps": 2, "score_max": 0.6, "score_mean": 0.5, "alarm_seconds": 1.0}
    assert ts == int(T0 + 10) * NS and record.kind == "window"
    assert len(window_points(summary(), ID, [TagInfo("a"), TagInfo("b")])) == 3


def test_events_in_the_same_instant_get_distinct_timestamps():
    clock = EventClock()
    t = 1_700_000_000_123_000_000
    pts = [event_point(ID, clock, "alarm", "line", "raised", time_ns=t, state="active") for _ in range(3)]
    pts.append(event_point(ID, clock, "action", "stop", 'said "stop"\nnow', time_ns=t - 5, result="ok",
                           latency_ms=1.5, attempts=np.int64(2)))
    assert {r.kind for r in pts} == {"event"}
    parsed = [parse(line) for line in line_protocol(pts)]
    assert [p[3] for p in parsed] == [t, t + 1, t + 2, t + 3]
    name, tags, fields, _ = parsed[0]
    assert name == "linesentry_event"
    assert tags == {"site": "plant 1", "line": "L,2", "controller": "ctl=a", "kind": "alarm",
                    "source": "line"}
    assert fields == {"message": "raised", "seq": 1, "state": "active"}
    assert parsed[3][2] == {"message": 'said "stop"\nnow', "seq": 4, "result": "ok", "latency_ms": 1.5,
                            "attempts": 2}


@pytest.mark.parametrize("kind, source, extra, match", [
    ("oops", "x", {}, "event kind 'oops'"), ("alarm", "", {}, "source"),
    ("alarm", "x", {"seq": 1}, "reserved")])
def test_event_mistakes_are_one_line_errors(kind, source, extra, match):
    with pytest.raises(ValueError, match=match):
        event_point(ID, EventClock(), kind, source, "m", **extra)


def test_identity_and_tag_count_are_checked():
    with pytest.raises(ValueError, match="identity.site"):
        Identity("", "l", "c")
    with pytest.raises(ValueError, match="1 tag infos for a summary of 2 tags"):
        tag_points(summary(), ID, [TagInfo("a")])


# ---- golden: the previous code's Points, built here the way controller/points.py built them ----

def golden_window(summary, identity: Identity, tags: list[TagInfo]) -> list[str]:
    def apply(p: Point) -> Point:
        return p.tag("site", identity.site).tag("line", identity.line).tag("controller", identity.controller)

    s, points = summary, []
    cols = (s.count.tolist(), s.mean.tolist(), s.min.tolist(), s.max.tolist(), s.std.tolist(),
            s.last.tolist(), s.bad_count.tolist(), s.max_score.tolist(), s.alarm_seconds.tolist())
    rows = zip(*cols, strict=True)
    for info, (count, mean, mn, mx, std, last, bad, score, alarm_s) in zip(tags, rows, strict=True):
        p = apply(Point("linesentry_tag")).tag("tag", info.name)
        if info.unit:
            p.tag("unit", info.unit)
        (p.field("count", int(count)).field("mean", float(mean)).field("min", float(mn))
         .field("max", float(mx)).field("std", float(std)).field("last", float(last))
         .field("bad_count", int(bad)).field("max_score", float(score))
         .field("alarm_seconds", float(alarm_s)).time(s.end_ns, WritePrecision.NS))
        points.append(p)
    points.append(apply(Point("linesentry_line")).field("steps", int(s.steps))
                  .field("score_max", float(s.line_score_max)).field("score_mean", float(s.line_score_mean))
                  .field("alarm_seconds", float(s.line_alarm_seconds)).time(s.end_ns, WritePrecision.NS))
    return [p.to_line_protocol(WritePrecision.NS) for p in points]


def golden_event(identity: Identity, t: int, seq: int, kind: str, source: str, message: str,
                 state=None, result=None, **fields) -> str:
    p = (Point("linesentry_event").tag("site", identity.site).tag("line", identity.line)
         .tag("controller", identity.controller).tag("kind", kind).tag("source", source)
         .field("message", str(message)).field("seq", seq))
    if state is not None:
        p.field("state", str(state))
    if result is not None:
        p.field("result", str(result))
    for key, value in fields.items():
        p.field(key, value.item() if isinstance(value, np.generic) else value)
    return p.time(t, WritePrecision.NS).to_line_protocol(WritePrecision.NS)


def random_windows(n_tags: int, n_windows: int, seed: int):
    """Summaries with every kind of value: NaN and inf statistics (-1e300 squared), tiny floats,
    negative, whole numbers."""
    rng = np.random.default_rng(seed)
    s = WindowSummarizer(n_tags, 10.0)
    out = []
    for i in range(n_windows * 4):
        values = rng.choice([rng.normal(0, 1e-300), rng.normal(50, 5), -1e300, 3.0, 1 / 3], n_tags)
        quality = rng.choice(np.array([0, 0, 0, 1, 2], np.uint8), n_tags)
        with np.errstate(over="ignore", invalid="ignore"):  # the inf std is part of the test
            w = s.update(T0 + i * 3.3, values, np.ones(n_tags, np.uint8), quality, float(rng.random()),
                         bool(rng.random() < 0.3), rng.random(n_tags) * rng.choice([1, np.nan], n_tags))
        if w is not None:
            out.append(w)
    return out


def test_influxdb_line_protocol_is_byte_identical_to_the_previous_code():
    ident = Identity("plant \"1\"", "L,2 = x", "ctl\\a")
    infos = [TagInfo(f"tag {j},=\"", "°C" if j % 2 else "") for j in range(7)]
    windows = random_windows(len(infos), 6, seed=3)
    assert len(windows) >= 5
    for w in windows:
        records = window_points(w, ident, infos)
        want = golden_window(w, ident, infos)
        assert line_protocol(records) == want
        assert line_protocol(decode(encode(records))) == want  # and after a trip through the outbox
    clock, t = EventClock(), 1_700_000_000_000_000_000
    cases = [("alarm", "line", "raised", dict(state="active")),
             ("action", "stop pump", 'said "stop"\nnow\\ ok', dict(result="ok", latency_ms=1.5,
                                                                  attempts=np.int64(2), forced=True)),
             ("outbox", "size_cap", "dropped", dict(result="dropped", dropped_points=10**12, ratio=1e-300)),
             ("driver", "plc=1", "ünïcødé ✓", {})]
    for seq, (kind, source, message, extra) in enumerate(cases, start=1):
        record = event_point(ident, clock, kind, source, message, time_ns=t, **extra)
        want = golden_event(ident, t + seq - 1, seq, kind, source, message, **extra)
        assert line_protocol(decode(encode([record]))) == [want]

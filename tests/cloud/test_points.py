"""The point schema, read back from the line protocol `Point` produced."""

from __future__ import annotations

import numpy as np
import pytest

from controller.points import (
    EventClock,
    Identity,
    TagInfo,
    event_point,
    line_point,
    tag_points,
    to_lines,
    window_points,
)
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
    lines = to_lines(tag_points(summary(), ID, [TagInfo("motor current", "A"), TagInfo("speed")]))
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


def test_line_point():
    name, tags, fields, ts = parse(line_point(summary(), ID).to_line_protocol())
    assert name == "linesentry_line" and set(tags) == {"site", "line", "controller"}
    assert fields == {"steps": 2, "score_max": 0.6, "score_mean": 0.5, "alarm_seconds": 1.0}
    assert ts == int(T0 + 10) * NS
    assert len(window_points(summary(), ID, [TagInfo("a"), TagInfo("b")])) == 3


def test_events_in_the_same_instant_get_distinct_timestamps():
    clock = EventClock()
    t = 1_700_000_000_123_000_000
    pts = [event_point(ID, clock, "alarm", "line", "raised", time_ns=t, state="active") for _ in range(3)]
    pts.append(event_point(ID, clock, "action", "stop", 'said "stop"\nnow', time_ns=t - 5, result="ok",
                           latency_ms=1.5, attempts=np.int64(2)))
    parsed = [parse(line) for line in to_lines(pts)]
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

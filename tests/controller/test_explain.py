"""Why a line alarm fired: the text format (controller.explanation), and the pipeline that explains
a line alarm once, when it rises, and hands the explanation to its event, status and alarm list."""

from __future__ import annotations

import json

import numpy as np
import pytest

from controller.actions import ActionEngine
from controller.alarms import AlarmEngine
from controller.config import load_config
from controller.events import EventLog
from controller.explanation import explanation
from controller.journal import Journal
from controller.linestate import LineState
from controller.pipeline import LinkFlags, StepPipeline
from drivers.base import Quality, ReadingBatch
from hil_tests.rig.demo import tag_value
from models import StreamingDetector
from models.attribution import Attribution, TagContribution

NAN = float("nan")


def contribution(tag, share, value, expected, flags=()):
    deviation = value - expected
    percent = 100.0 * deviation / abs(expected) if expected not in (0.0,) and expected == expected else NAN
    return TagContribution(tag, share, value, expected, deviation, percent, NAN, tuple(flags))


def attribution(component, ratio, *top, flagged=None):
    return Attribution(component, ratio, {"tags": 0.1, "pca_t2": 0.2, "pca_spe": 3.1, "iforest": 0.4},
                       tuple(top), flagged or {})


UNITS = {"hydraulic_pressure": "bar", "vibration_rms": "mm/s", "motor_current": "A"}


def text(a, bits=()):
    return explanation("line_anomaly", a, UNITS, bits)["text"]


def test_the_contracts_example():
    a = attribution("pca_spe", 3.14, contribution("hydraulic_pressure", 0.93, 12.1, 110.0))
    assert text(a) == "line_anomaly: hydraulic_pressure \u221289 % (SPE 3.1\u00d7 limit)"


def test_sign_is_explicit_and_small_percentages_keep_a_decimal():
    a = attribution("pca_t2", 2.05, contribution("vibration_rms", 0.7, 2.35, 2.24),
                    contribution("motor_current", 0.3, 15.0, 16.0))
    assert text(a) == ("line_anomaly: vibration_rms +4.9 %, motor_current \u22126.2 % "
                       "(T\u00b2 2.0\u00d7 limit)")


def test_a_level_near_zero_is_shown_in_units_not_percent():
    a = attribution("iforest", 1.6, contribution("vibration_rms", 1.0, 0.52, 0.0))  # expected 0: no %
    assert text(a) == "line_anomaly: vibration_rms +0.52 mm/s (iforest 1.6\u00d7 limit)"
    a = attribution("iforest", 1.6, contribution("motor_current", 1.0, 5.0, 0.004))  # +125000 %
    assert text(a) == "line_anomaly: motor_current +5 A (iforest 1.6\u00d7 limit)"


def test_a_rule_finding_gives_the_value_and_the_rule_not_a_ratio():
    a = attribution("tags", 2.3e4, contribution("motor_current", 1.0, 31.25, 16.0, ["limit", "ewma_z"]))
    assert text(a) == "line_anomaly: motor_current 31.25 A (hard limit)"
    a = attribution("tags", 1.0e4, contribution("vibration_rms", 1.0, 2.3, 2.24, ["flatline"]))
    assert text(a) == "line_anomaly: vibration_rms 2.3 mm/s (flatline)"


def test_a_statistical_per_tag_finding_names_its_detector_and_ratio():
    a = attribution("tags", 2.4, contribution("motor_current", 1.0, 22.0, 16.0, ["ewma_z", "cusum"]))
    assert text(a) == "line_anomaly: motor_current +38 % (EWMA z-score/CUSUM 2.4\u00d7 limit)"


def test_a_bit_is_on_or_off_never_1_000():
    a = attribution("tags", 1.5e4, contribution("door_open", 1.0, 1.0, 0.0, ["limit"]))
    assert text(a, bits={"door_open"}) == "line_anomaly: door_open on (hard limit)"
    assert tag_value({"value": 1.0, "text": None}, "", bit=True) == "on"
    assert tag_value({"value": 0.0, "text": None}, "", bit=True) == "off"
    assert tag_value({"value": 123.456789, "text": None}, "bar", bit=False) == "123.5 bar"
    assert tag_value({"value": None, "text": None}, "bar", bit=False) == "-"


def test_rules_only_has_no_expected_level_so_the_value_is_given():
    a = attribution("iforest", 1.2, contribution("hydraulic_pressure", 1.0, 80.0, NAN))
    assert text(a) == "line_anomaly: hydraulic_pressure 80 bar (iforest 1.2\u00d7 limit)"


def test_small_contributors_are_left_out_and_at_most_three_tags_shown():
    tops = [contribution(f"t{k}", s, 11.0, 10.0) for k, s in enumerate((0.3, 0.25, 0.2, 0.17, 0.08))]
    assert text(attribution("pca_spe", 1.2, *tops)).count("+10 %") == 3
    one = attribution("pca_spe", 1.2, contribution("a", 0.1, 11.0, 10.0), contribution("b", 0.09, 9.0, 10.0))
    assert text(one) == "line_anomaly: a +10 % (SPE 1.2\u00d7 limit)"  # the largest, however small


def test_nothing_scored_only_flags():
    a = Attribution(None, 0.0, {}, (), {"pump_flow": ("invalid",)})
    assert text(a) == "line_anomaly: pump_flow bad value"


def test_the_dict_is_the_contracts_and_json_without_nan():
    a = attribution("pca_spe", 3.14, contribution("hydraulic_pressure", 0.93, 12.1, NAN))
    e = explanation("line_anomaly", a, UNITS, at=1000.0)
    assert {"text", "component", "ratio", "top"} <= e.keys()
    assert e["component"] == "pca_spe" and e["ratio"] == 3.14 and e["at"] == 1000.0
    assert e["top"][0]["tag"] == "hydraulic_pressure" and e["top"][0]["share"] == 0.93
    assert e["top"][0]["deviation"] is None and e["top"][0]["unit"] == "bar"
    json.dumps(e, allow_nan=False)


# ------------------------------------------------------------------ the pipeline explains on a rise
LINE = """
[controller]
site = "test"
line = "explain"
state_dir = "{state}"

[[modbus]]
name = "press"
host = "127.0.0.1"
port = 1502
  [[modbus.tags]]
  name = "a"
  table = "holding_register"
  dtype = "float32"
  address = 0
  [[modbus.tags]]
  name = "b"
  table = "holding_register"
  dtype = "float32"
  address = 2
  [[modbus.tags]]
  name = "c"
  table = "holding_register"
  dtype = "float32"
  address = 4

[detector]
model = "unused.npz"
tags = ["a", "b", "c"]
  [detector.units]
  c = "bar"

[[alarms]]
name = "line_anomaly"
source = "line"
on_delay_s = 0.5
message = "line"
"""


@pytest.fixture
def pipe(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text(LINE.format(state=tmp_path / "state"))
    config = load_config(path)
    tags = list(config.tags())
    line = LineState(tags, config.detector_tags())
    p = StepPipeline(config, line, links={"press": LinkFlags(delivered=True)},
                     tag_plc=dict.fromkeys(tags, "press"), builtin=[], alarms=AlarmEngine(config.alarms),
                     actions=ActionEngine(config.actions), journal=Journal(EventLog()))
    rng = np.random.default_rng(5)
    base = rng.normal(size=(3000, 1))
    normal = np.hstack([50 + 5 * base, 20 + 2 * base, 100 + 10 * base])
    normal += rng.normal(scale=0.2, size=(3000, 3))
    p.detector = StreamingDetector(config.detector_tags(), config.detector_spec(),
                                   dict(config.detector.units)).fit(normal, np.arange(3000) * 0.01)
    return p, line.binding(tags), normal


def frame(values) -> ReadingBatch:
    return ReadingBatch(index=np.arange(3, dtype=np.int32), values=np.asarray(values, dtype=float),
                        quality=np.full(3, int(Quality.GOOD), dtype=np.uint8), source_ts=np.full(3, np.nan),
                        receive_ts=np.zeros(3))


def test_a_line_alarm_is_explained_once_when_it_rises_and_its_event_says_why(pipe, monkeypatch):
    p, binding, normal = pipe
    calls = []
    explain = p.detector.explain
    monkeypatch.setattr(p.detector, "explain", lambda *a, **k: calls.append(1) or explain(*a, **k))
    t = 0.0
    for row in normal[:200]:
        t += 0.01
        p.step(binding, frame(row), t, 1000.0 + t)
    assert not p.line_alarm and p.explanation is None and calls == []
    broken = normal[200].copy()
    broken[2] -= 60.0  # c breaks its correlation with a and b: -60 % of its normal level
    for _ in range(100):  # 1 s: past the debounce and the 0.5 s on-delay
        t += 0.01
        p.step(binding, frame(broken), t, 1000.0 + t)
    assert p.line_alarm and len(calls) == 1  # once, at the rise: never per step
    why = p.explanation
    assert why["top"][0]["tag"] == "c" and why["text"].startswith("line_anomaly: c \u2212")
    assert p.alarms.state("line_anomaly") == "UNACK"
    p.journal.flush()
    (event,) = [e for e in p.journal.events.since() if e["source"] == "line_anomaly"]
    assert event["message"] == f"{why['text']}; NORMAL -> UNACK (condition)"
    assert event["explanation"]["top"][0]["tag"] == "c"
    assert p.alarm_explanations["line_anomaly"]["text"] == why["text"]
    assert p.first_out == why["text"]
    for row in normal[201:400]:  # back to normal: the detector's explanation goes, the alarm's stays
        t += 0.01
        p.step(binding, frame(row), t, 1000.0 + t)
    assert not p.line_alarm and p.explanation is None
    assert p.alarm_explanations["line_anomaly"]["text"] == why["text"] and len(calls) == 1


def test_a_statistical_score_at_its_cap_is_not_taken_for_a_rule():
    """Scores are capped at the rules' grade (a tag constant in training moves by 5): the text said
    'b 25 (baseline)', neither the detector nor its ratio."""
    a = attribution("tags", 1.0e4, contribution("b", 1.0, 25.0, 20.0, ["ewma_z", "cusum"]))
    assert text(a) == "line_anomaly: b +25 % (EWMA z-score/CUSUM 10000\u00d7 limit)"


def test_a_whole_plc_of_bad_tags_stays_one_short_line():
    """Nothing scored, 500 tags flagged (a PLC's tags all bad): the text listed all 500."""
    a = Attribution(None, 0.0, {}, (), {f"tag_{k:03d}": ("invalid",) for k in range(500)})
    assert text(a) == ("line_anomaly: tag_000 bad value, tag_001 bad value, tag_002 bad value "
                       "and 497 more")


def rise_with(p, binding, normal, broken_row):
    t = 0.0
    for row in normal[:200]:
        t += 0.01
        p.step(binding, frame(row), t, 1000.0 + t)
    for _ in range(100):
        t += 0.01
        p.step(binding, frame(broken_row), t, 1000.0 + t)
    assert p.line_alarm
    return p.explanation


@pytest.mark.parametrize("bad", [NAN, float("inf"), -float("inf")])
def test_a_tag_reading_nan_or_inf_is_a_bad_value_not_its_last_good_value(pipe, bad):
    """The models hold a's last usable value; the text gave that one's deviation ('a +9.1 %')
    while the PLC reads NaN."""
    p, binding, normal = pipe
    row = normal[200].copy()
    row[0] = bad
    why = rise_with(p, binding, normal, row)
    assert why["text"].startswith("line_anomaly: a bad value"), why["text"]
    json.dumps(why, allow_nan=False)


def test_a_reading_beyond_the_usable_range_is_told_by_its_reading(pipe):
    """1e300 is refused by the models (they keep c's last value, 114.3): the text said
    'c 114.3 bar (hard limit)'."""
    p, binding, normal = pipe
    row = normal[200].copy()
    row[2] = 1e300
    why = rise_with(p, binding, normal, row)
    assert why["text"] == "line_anomaly: c 1e+300 bar (hard limit)"
    assert why["top"][0]["reading"] == 1e300 and why["top"][0]["value"] != 1e300


def test_a_chattering_line_alarm_is_explained_at_most_once_a_second(pipe, monkeypatch):
    """A line alarm rising every other step (40 s at 100 Hz: 2,000 rises) was explained 2,000 times
    on the hot path; at most once per EXPLAIN_EVERY_S (1 s) now, the rises in between reuse it."""
    p, binding, normal = pipe
    calls = []
    explain = p.detector.explain
    monkeypatch.setattr(p.detector, "explain", lambda *a, **k: calls.append(1) or explain(*a, **k))
    broken = normal[200].copy()
    broken[2] -= 60.0
    t, rises, was = 0.0, 0, False
    for row in normal[:200]:
        t += 0.01
        p.step(binding, frame(row), t, 1000.0 + t)
    for k in range(4000):
        t += 0.01
        p.step(binding, frame(broken if k % 2 else normal[200 + k % 100]), t, 1000.0 + t)
        rises += p.line_alarm and not was
        was = p.line_alarm
        if p.line_alarm:
            assert p.explanation["text"].startswith("line_anomaly: c \u2212")
    assert rises > 1000 and len(calls) <= 41, (rises, len(calls))


def test_an_explanation_that_fails_never_costs_the_alarm(pipe, monkeypatch):
    """A fault in the attribution (a model's explain raising) escaped from the step: the batch's
    alarms, actions and writes were not evaluated and the driver's session was dropped as lost."""
    p, binding, normal = pipe

    def broken(*_a, **_k):
        raise FloatingPointError("attribution overflow")

    monkeypatch.setattr(p.detector, "explain", broken)
    broken_row = normal[200].copy()
    broken_row[2] -= 60.0
    why = rise_with(p, binding, normal, broken_row)
    assert why["text"] == ("line_anomaly: why unknown (the explanation failed: FloatingPointError: "
                           "attribution overflow)")
    assert p.alarms.state("line_anomaly") == "UNACK"
    p.journal.flush()
    (event,) = [e for e in p.journal.events.since() if e["source"] == "line_anomaly"]
    assert event["message"].startswith("line_anomaly: why unknown (the explanation failed")
    json.dumps(why, allow_nan=False)

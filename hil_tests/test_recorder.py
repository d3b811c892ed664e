"""Recorder timings and report math on synthetic inputs (no sockets, synthetic clocks)."""

import json

import pytest

from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.recorder import Recorder, Report, judge, percentile
from hil_tests.rig.scenario import parse_scenario


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def scenario(**kw):
    base = {
        "name": "jam",
        "duration_s": 60,
        "settle_s": 2.0,
        "normal": [{"start_s": 0, "end_s": 20}],
        "faults": [
            {
                "type": "jam",
                "onset_s": 20,
                "duration_s": 5,
                "expect": {
                    "alarm": "conveyor_jam",
                    "within_ms": 500,
                    "action": "line_stop",
                    "allow": ["motor_overcurrent"],
                },
            }
        ],
    }
    return parse_scenario(base | kw)


def recorded(onset: float, write_after_ms: float | None, mono: Clock) -> Recorder:
    rec = Recorder(mono=mono, wall=lambda: mono.t + 1.7e9)
    sc = scenario()
    mono.t = onset
    rec.fault(0, sc.faults[0], "onset", 20.0)
    if write_after_ms is not None:
        mono.t = onset + write_after_ms / 1000
        rec.actuator_write("press", "line_stop", 1)
    mono.t = onset + 5
    rec.fault(0, sc.faults[0], "end", 25.0)
    return rec


def test_recorder_stamps_onsets_writes_and_heartbeats_with_both_clocks():
    mono = Clock(50.0)
    rec = Recorder(mono=mono, wall=lambda: 1.7e9 + mono.t)
    spec = FaultSpec(type="leak", onset_s=3)
    rec.fault(0, spec, "onset", 3.0)
    mono.t = 50.25
    rec.actuator_write("conveyor", "reject_gate", True)
    rec.heartbeat("press", 7)
    mono.t = 53.0
    rec.fault(0, spec, "end", 6.0)
    rec.event("controller watchdog expired", "x")
    [f] = rec.faults
    assert (f.onset_mono, f.onset_wall, f.end_mono, f.plant_s) == (50.0, 1.7e9 + 50.0, 53.0, 3.0)
    assert (rec.writes[0].server, rec.writes[0].actuator, rec.writes[0].value, rec.writes[0].mono) == (
        "conveyor",
        "reject_gate",
        1.0,
        50.25,
    )
    assert rec.heartbeats[0].value == 7 and rec.events[0].mono == 53.0
    assert rec.onset(0) == 50.0 and rec.onset(0, "wall") == 1.7e9 + 50.0 and rec.onset(1) is None
    assert json.loads(json.dumps(rec.to_dict()))["writes"][0]["actuator"] == "reject_gate"


def test_detection_and_actuation_are_measured_from_the_onset():
    mono = Clock()
    rec = recorded(100.0, write_after_ms=42.0, mono=mono)
    r = judge(scenario(), rec, [(100.120, "conveyor_jam"), (100.2, "motor_overcurrent")], run_start=80.0)
    assert r.faults == 1 and r.detected == 1 and r.missed == [] and r.false_alarms == []
    assert r.detection_ms == pytest.approx([120.0]) and r.actuation_ms == pytest.approx([42.0])


def test_late_absent_and_wrong_alarms_are_missed_faults_and_false_alarms():
    mono = Clock()
    rec = recorded(100.0, write_after_ms=None, mono=mono)
    alarms = [
        (90.0, "conveyor_jam"),  # during the normal phase: false
        (100.8, "conveyor_jam"),  # after within_ms: the fault is missed (but the alarm is legitimate)
        (101.0, "pump_leak"),  # not expected for this fault: false
        (106.5, "conveyor_jam"),  # within settle_s after the end: legitimate
        (108.0, "conveyor_jam"),
    ]  # after settle_s: false
    r = judge(scenario(), rec, alarms, run_start=80.0)
    assert r.detected == 0 and len(r.missed) == 1 and "came after 800 ms" in r.missed[0]
    assert [name for _, name in r.false_alarms] == ["conveyor_jam", "pump_leak", "conveyor_jam"]
    assert [round(t, 3) for t, _ in r.false_alarms] == [10.0, 21.0, 28.0]  # seconds since run start
    assert r.missed_actions == ["jam@20s: no line_stop write"]
    no_alarm = judge(scenario(), rec, [], run_start=80.0)
    assert "no 'conveyor_jam' within 500 ms" in no_alarm.missed[0] and "came after" not in no_alarm.missed[0]


def test_a_fault_whose_onset_was_never_recorded_is_not_counted():
    r = judge(scenario(), Recorder(), [(5.0, "conveyor_jam")], run_start=0.0)
    assert r.faults == 0 and r.missed == [] and len(r.false_alarms) == 1


def test_wall_clock_alarms_are_matched_against_wall_clock_onsets():
    mono = Clock()
    rec = recorded(100.0, write_after_ms=10.0, mono=mono)
    r = judge(scenario(), rec, [(1.7e9 + 100.3, "conveyor_jam")], run_start=1.7e9 + 80, clock="wall")
    assert r.detection_ms == pytest.approx([300.0], abs=1e-3) and r.actuation_ms == pytest.approx(
        [10.0], abs=1e-3
    )


def test_report_aggregates_runs_into_p50_p99_and_counts():
    report = Report()
    sc = scenario()
    for i in range(100):  # detection 1..100 ms, actuation 2..200 ms
        mono = Clock()
        rec = recorded(100.0, write_after_ms=2.0 * (i + 1), mono=mono)
        alarms = [(100.0 + (i + 1) / 1000, "conveyor_jam")] + ([(85.0, "conveyor_jam")] if i < 3 else [])
        report.add_run(sc, rec, alarms, run_start=80.0)
    mono = Clock()
    report.add_run(sc, recorded(100.0, None, mono), [], run_start=80.0)  # one run where nothing happened
    s = report.summary()["jam"]
    assert (
        s["runs"],
        s["faults"],
        s["detected"],
        s["missed_faults"],
        s["false_alarms"],
        s["missed_actions"],
    ) == (101, 101, 100, 1, 3, 1)
    assert s["detection_ms"]["p50"] == pytest.approx(50.5) and s["detection_ms"]["p99"] == pytest.approx(
        99.01
    )
    assert s["actuation_ms"]["p50"] == pytest.approx(101.0) and s["actuation_ms"]["p99"] == pytest.approx(
        198.02
    )
    assert s["detection_ms"]["max"] == pytest.approx(100.0)


def test_report_json_file_and_rich_table(tmp_path):
    report = Report()
    mono = Clock()
    report.add_run(scenario(), recorded(100.0, 5.0, mono), [(100.1, "conveyor_jam")], run_start=80.0)
    report.add_run(scenario(name="quiet", faults=[]), Recorder(), [(3.0, "x")], run_start=0.0)
    path = tmp_path / "report.json"
    report.to_json(path)
    data = json.loads(path.read_text())["scenarios"]
    assert data["jam"]["detected"] == 1 and data["quiet"]["false_alarms"] == 1
    assert data["quiet"]["detection_ms"]["p50"] is None
    table = report.table()
    assert table.row_count == 2 and [c.header for c in table.columns][0] == "scenario"


def test_percentile_of_nothing_is_none():
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0

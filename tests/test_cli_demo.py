"""The demo replay and the CLI around it."""

from typer.testing import CliRunner

from controller.cli import app
from controller.demo import fault_schedule, run_demo

PROCESS_FAULTS = {"jam", "bearing_wear", "leak", "sensor_stuck", "sensor_spike"}


def test_demo_flags_every_fault_and_stays_quiet_in_between():
    outcomes, stats = run_demo(seed=7)
    by_kind = {o.kind: o for o in outcomes}
    assert set(by_kind) == {kind for kind, _, _ in fault_schedule()}
    for kind in PROCESS_FAULTS:
        assert by_kind[kind].alarm_delay is not None, f"{kind} raised no line alarm"
    # A dropout is a quality problem: flagged per tag, not a process alarm.
    assert "invalid" in by_kind["dropout"].flags["pump_flow"]
    assert by_kind["sensor_stuck"].flags["vibration_rms"] >= {"flatline"}
    assert stats["false_alarm_rows"] <= 0.01 * stats["normal_rows"]


def test_demo_command_prints_the_fault_table():
    result = CliRunner().invoke(app, ["demo", "--seed", "3"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "injected faults" in result.output
    assert "LINE ALARM RAISED" in result.output


def test_bad_option_is_a_usage_error_not_a_traceback():
    result = CliRunner().invoke(app, ["demo", "--seed", "many"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output

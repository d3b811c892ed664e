"""controller.logs: one event per line, JSON, per-module levels and the repeat rate limit."""

import io
import json
import logging

import pytest

from controller.logs import (
    RateLimitFilter,
    parse_level,
    parse_module_levels,
    setup_logging,
)


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {n: logging.getLogger(n).level for n in ("drivers", "drivers.opcua", "asyncua", "linesentry")}
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for n, lvl in named.items():
        logging.getLogger(n).setLevel(lvl)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_is_one_object_per_line_with_the_fields_and_extras():
    out = io.StringIO()
    setup_logging("INFO", json=True, stream=out)
    log = logging.getLogger("linesentry")
    log.warning("alarm %s: %s", "line_anomaly", "UNACK", extra={"plc": "conveyor"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("housekeeping failed")
    log.debug("not shown")
    got = [json.loads(line) for line in lines(out)]
    assert len(got) == 2
    assert set(got[0]) == {"time", "level", "logger", "message", "plc"}
    assert got[0]["level"] == "WARNING" and got[0]["logger"] == "linesentry"
    assert got[0]["message"] == "alarm line_anomaly: UNACK" and got[0]["plc"] == "conveyor"
    assert got[0]["time"].endswith("+00:00")
    assert "RuntimeError: boom" in got[1]["exc"]


def test_text_is_one_line_per_event_even_with_a_traceback():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("drivers.opcua").exception("read failed:\nmultiline")
    (line,) = lines(out)
    assert " ERROR drivers.opcua: read failed:\\nmultiline" in line and "ValueError: bad" in line


def test_per_module_levels():
    out = io.StringIO()
    setup_logging("WARNING", module_levels=parse_module_levels("drivers=DEBUG, asyncua=error"), stream=out)
    logging.getLogger("drivers.opcua").debug("driver detail")
    logging.getLogger("asyncua.client").warning("asyncua chatter")
    logging.getLogger("asyncua.client").error("asyncua error")
    logging.getLogger("linesentry").info("info hidden")
    logging.getLogger("linesentry").warning("warning shown")
    text = out.getvalue()
    assert "driver detail" in text and "asyncua error" in text and "warning shown" in text
    assert "asyncua chatter" not in text and "info hidden" not in text


def test_setup_twice_replaces_its_handler():
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=first)
    setup_logging("INFO", stream=second)
    logging.getLogger("linesentry").info("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


def test_rate_limit_lets_one_per_interval_through_and_counts_the_rest():
    now = [0.0]
    out = io.StringIO()
    handler = setup_logging("INFO", stream=out)
    handler.filters[:] = [RateLimitFilter(5.0, clock=lambda: now[0])]
    log = logging.getLogger("drivers.modbus")
    for _ in range(100):  # a flapping PLC at 20 Hz for 5 s
        log.warning("%s: read failed: %s", "press", "timeout")
        log.warning("other message")
        now[0] += 0.05
    now[0] = 5.0  # the next window
    log.warning("%s: read failed: %s", "press", "timeout")
    got = lines(out)
    assert len(got) == 3, got
    assert "press: read failed: timeout" in got[0] and "other message" in got[1]
    assert got[2].endswith("press: read failed: timeout (repeated 99 times)")
    logging.getLogger("drivers.other").warning("%s: read failed: %s", "press", "x")  # other logger
    assert len(lines(out)) == 4


def test_rate_limit_note_is_in_json_too():
    now = [0.0]
    out = io.StringIO()
    handler = setup_logging("INFO", json=True, stream=out)
    handler.filters[:] = [RateLimitFilter(1.0, clock=lambda: now[0])]
    log = logging.getLogger("linesentry")
    for _ in range(3):
        log.error("100%% flapping %s", "press")
    now[0] = 2.0
    log.error("100%% flapping %s", "press")
    got = [json.loads(line) for line in lines(out)]
    assert [g["message"] for g in got] == ["100% flapping press", "100% flapping press (repeated 2 times)"]
    assert got[1]["repeated"] == 2


def test_rate_limit_zero_disables_it():
    out = io.StringIO()
    setup_logging("INFO", stream=out, rate_limit_s=0)
    for _ in range(5):
        logging.getLogger("linesentry").warning("same")
    assert len(lines(out)) == 5


def test_rate_limit_memory_is_bounded():
    f = RateLimitFilter(60.0, clock=lambda: 0.0, max_keys=10)
    for i in range(100):
        assert f.filter(logging.LogRecord("x", logging.INFO, "", 0, f"msg {i}", None, None))
    assert len(f._seen) <= 10


def test_parsing_levels():
    assert parse_level("debug") == logging.DEBUG and parse_level("30") == 30
    assert parse_module_levels("") == {} and parse_module_levels(None) == {}
    assert parse_module_levels("drivers=debug,asyncua=WARNING") == {"drivers": "DEBUG", "asyncua": "WARNING"}
    with pytest.raises(ValueError, match="unknown log level"):
        parse_module_levels("drivers=LOUD")
    with pytest.raises(ValueError, match="module=LEVEL"):
        parse_module_levels("drivers")
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("verbose")


def test_run_sets_up_json_logging_and_module_levels(monkeypatch):
    from typer.testing import CliRunner

    import controller.runtime
    from controller.cli import app

    class Stub:
        def __init__(self, cfg):
            logging.getLogger("drivers.opcua").debug("driver debug %d", 1)
            logging.getLogger("linesentry").info("controller info")
            raise OSError("stub: stop here")

    monkeypatch.setattr(controller.runtime, "Controller", Stub)
    result = CliRunner().invoke(app, ["run", "configs/demo_line.toml", "--log-json", "--log-level", "warning",
                                      "--log-levels", "drivers=DEBUG"])
    assert result.exit_code == 2 and "stub: stop here" in result.output
    logged = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [(e["logger"], e["message"]) for e in logged] == [("drivers.opcua", "driver debug 1")]


def test_rate_limit_never_merges_different_alarms_of_one_template():
    """Issue 10 item 16: 13 repeats of pump_flow_bad swallowed the conveyor_comm_loss raise."""
    now = [0.0]
    out = io.StringIO()
    handler = setup_logging("INFO", stream=out)
    handler.filters[:] = [RateLimitFilter(10.0, clock=lambda: now[0])]
    log = logging.getLogger("linesentry")
    for _ in range(13):
        log.info("alarm %s: %s -> %s (%s)", "pump_flow_bad", "RTN_UNACK", "UNACK", "condition")
        now[0] += 0.1
    log.warning("alarm %s: %s -> %s (%s)", "conveyor_comm_loss", "NORMAL", "UNACK", "condition")
    log.info("alarm %s: %s -> %s (%s)", "conveyor_comm_loss", "UNACK", "RTN_UNACK", "condition")
    got = lines(out)
    assert len(got) == 3, got
    assert "WARNING linesentry: alarm conveyor_comm_loss: NORMAL -> UNACK" in got[1]
    assert "INFO linesentry: alarm conveyor_comm_loss: UNACK -> RTN_UNACK" in got[2]


def test_alarm_raises_are_warnings_and_everything_else_info():
    from controller.alarms import AlarmState
    from controller.logs import alarm_transition_level

    assert alarm_transition_level(AlarmState.UNACK) == logging.WARNING
    for state in AlarmState:
        if state is not AlarmState.UNACK:
            assert alarm_transition_level(state) == logging.INFO, state


def test_asyncua_is_quiet_unless_asked_for():
    out = io.StringIO()
    setup_logging("DEBUG", stream=out)
    logging.getLogger("asyncua.client.ua_client").info("9 KB publish dump")
    logging.getLogger("asyncua.client.ua_client").warning("a real problem")
    assert [line.split(": ", 1)[1] for line in lines(out)] == ["a real problem"]
    setup_logging("INFO", stream=out, module_levels={"asyncua": "INFO"})
    logging.getLogger("asyncua.client.ua_client").info("asked for")
    assert lines(out)[-1].endswith("asked for")

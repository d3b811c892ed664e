"""The `linesentry` command line: exit codes and one-line errors, through typer's runner."""

import csv
import json
import re
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli import app, load_plugins
from controller.errors import NotFound, Refused
from hil_tests.rig.net import free_port
from models import load_model

DEMO = "configs/demo_line.toml"
LAUNCH = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]


def as_from_a_terminal() -> None:
    """A Popen preexec_fn: Ctrl-C reaches a command started at a terminal, but a shell without job
    control starts background jobs with SIGINT ignored (a CI runner may), and children inherit it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
runner = CliRunner()
load_plugins()  # what `app()` does for a command that is not its own (CliRunner bypasses app())


def invoke(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_validate_prints_the_line(tmp_path):
    result = invoke("validate", DEMO)
    assert result.exit_code == 0, result.output
    assert "conveyor" in result.output and "press" in result.output and "OK" in result.output


def test_a_bad_config_is_exit_2_with_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[controller]\nsite = "s"\nline = "l"\nbogus = 1\n')
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert "bogus" in result.output and "Traceback" not in result.output
    missing = invoke("validate", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_status_of_a_controller_that_is_not_running_is_one_line_exit_1(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "line.toml"
    config.write_text(Path(DEMO).read_text().replace("api_port = 8470", f"api_port = {port}"))
    result = invoke("status", str(config))
    assert result.exit_code == 1
    assert "not running" in result.output and result.output.count("\n") == 1


def test_fit_writes_a_model_from_a_recorded_csv_and_refuses_bad_data(tmp_path):
    from controller.config import load_config
    from hil_tests.rig.training import simulated_normal

    tags = load_config(DEMO).detector_tags()
    times, rows = simulated_normal(tags, seconds=120.0)
    data = tmp_path / "normal.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *tags])
        w.writerows([[t, *r] for t, r in zip(times[::2], rows[::2], strict=True)])
    model = tmp_path / "model.npz"
    result = invoke("fit", DEMO, str(data), "-o", str(model))
    assert result.exit_code == 0, result.output
    assert "line threshold" in result.output
    assert load_model(model, expected_tags=tags).threshold > 0

    short = tmp_path / "short.csv"
    short.write_text("time," + ",".join(tags) + "\n" + "0," + ",".join(["1"] * len(tags)) + "\n")
    result = invoke("fit", DEMO, str(short), "-o", str(tmp_path / "m2.npz"))
    assert result.exit_code == 2 and "at least" in result.output
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    result = invoke("fit", DEMO, str(wrong), "-o", str(tmp_path / "m3.npz"))
    assert result.exit_code == 2 and "header" in result.output
    assert np.isfinite(load_model(model).threshold)


def test_unknown_command_is_a_usage_error():
    result = invoke("frobnicate")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_demo_detects_an_injected_jam_and_stops_the_line(tmp_path):
    """The README's main job, shortened: plant + controller, a jam, a line stop, a clean exit, even
    after an earlier run left a latch behind (the demo starts from a clean state)."""
    text = Path(DEMO).read_text()
    text = text.replace("127.0.0.1:4840", f"127.0.0.1:{free_port()}")
    text = re.sub(r"^port = 5020$", f"port = {free_port()}", text, flags=re.M)
    text = text.replace("api_port = 8470", f"api_port = {free_port()}")
    text = text.replace('"../state/demo_line', f'"{tmp_path}/state')
    config = tmp_path / "demo.toml"
    config.write_text(text)
    # what Ctrl-C in an earlier run can leave behind: stop_line latched (the line would never stop)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({
        "alarms": {"version": 1, "alarms": {}},
        "actions": {"version": 1, "actions": {"stop_line": {
            "latched": True, "latched_at": 1.0, "inhibited": False, "inhibited_by": "", "failed": False,
            "demand": False, "served": False, "last_fire": 1.0}}}}))
    result = invoke("demo", "--config", str(config), "--seconds", "20", "--no-live", "--fault-every", "8")
    assert result.exit_code == 0, result.output
    assert "fitting the demo model" in result.output and "starting from a clean state" in result.output
    jam = next(line for line in result.output.splitlines() if line.startswith("│ jam"))
    assert re.search(r"\d+ ms", jam), jam  # the line was stopped after the jam


# ---------------------------------------------------------------- operator commands against a live API
class FakeOps:
    """The operations the API needs, recording every call (a real controller is not needed here)."""

    ALARMS = [
        {"name": "line_anomaly", "state": "UNACK", "priority": "critical", "message": "line score high"},
        {"name": "oil_temp_high", "state": "ACKED", "priority": "low", "message": "oil 66 C"},
        {"name": "motor_current_limit", "state": "NORMAL", "priority": "medium", "message": ""},
        {"name": "stop_line_failed", "state": "NORMAL", "priority": "critical", "message": ""},
    ]

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        from controller.events import EventLog

        self.events = EventLog()
        self.registry = CollectorRegistry()
        self.calls: list[tuple] = []
        self.polls = 0

    def status(self) -> dict:
        self.polls += 1
        return {"controller": {"line": "demo-line", "name": "demo-controller"},
                "plcs": [{"name": "conveyor", "state": "connected", "reads": 10 * self.polls,
                          "read_errors": 0, "last_error": ""}],
                "detector": {"score": 0.125, "alarm": False, "step_p99_us": 7.5},
                "alarms": {"active": ["line_anomaly"]}, "outbox": {"points": 3},
                "protections_disabled": [{"kind": "inhibited", "action": "stop_line",
                                          "message": "stop_line inhibited by ann (belt work)"}],
                "restored": ["restored: stop_line inhibited by ann (belt work)"]}

    def tags(self) -> list[dict]:
        return []

    def alarm_list(self) -> list[dict]:
        return self.ALARMS

    def _alarm(self, name: str) -> None:
        if name not in {a["name"] for a in self.ALARMS}:
            raise NotFound(f"no alarm named {name!r}")

    def ack(self, name, user, reason="", role="operator"):
        self._alarm(name)
        self.calls.append(("ack", name, user))
        return {"ok": True, "message": f"{name} acknowledged", "warning": ""}

    def shelve(self, name, user, seconds, reason, role="operator"):
        self._alarm(name)
        if name == "stop_line_failed":
            raise Refused("stop_line_failed cannot be shelved: shelvable = false in its [[alarms]] table")
        self.calls.append(("shelve", name, user, seconds, reason))
        warning = "shelving line_anomaly disables action stop_line" if name == "line_anomaly" else ""
        return {"ok": True, "message": "shelved", "warning": warning}

    def unshelve(self, name, user, reason="", role="operator"):
        self._alarm(name)
        self.calls.append(("unshelve", name, user))
        return {"ok": True, "message": f"{name} unshelved", "warning": ""}

    def set_out_of_service(self, name, user, enabled, reason="", role="operator"):
        self.calls.append(("oos", name, user, enabled))
        return {"ok": True, "message": "", "warning": ""}

    def reset_action(self, name, user, reason, role="operator"):
        self.calls.append(("reset", name, user, reason))
        return {"ok": True, "message": f"{name} reset (latched): {reason}", "warning": ""}

    def inhibit_action(self, name, user, enabled, reason="", role="operator"):
        if name != "stop_line":
            raise NotFound(f"no action named {name!r}")
        self.calls.append(("inhibit", name, user, enabled, reason))
        return {"ok": True, "message": "", "warning": "inhibiting stop_line disables action stop_line"
                if enabled else ""}

    async def persist(self):
        self.calls.append(("persist",))

    async def reload_model(self, user, path, role="operator"):
        return {}


def line_config(tmp_path, port: int) -> Path:
    from controller.statedir import ENGINEER_TOKEN_FILE, TOKEN_FILE

    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / TOKEN_FILE).write_text("secret-token\n")
    (state / ENGINEER_TOKEN_FILE).write_text("engineer-token\n")
    text = Path(DEMO).read_text().replace("api_port = 8470", f"api_port = {port}")
    config = tmp_path / "line.toml"
    config.write_text(text.replace('state_dir = "../state/demo_line"', f'state_dir = "{state}"'))
    return config


@pytest.fixture
def service(tmp_path):
    """A real API server (controller.api) on a free port over FakeOps; yields (config, ops)."""
    import asyncio
    import threading

    from aiohttp import web

    from controller.api import create_app

    ops, port = FakeOps(), free_port()
    ops.events.add("alarm", "line_anomaly", "NORMAL -> UNACK", state="UNACK")
    ops.events.add("action", "stop_line", "fired")
    ops.events.add("driver", "conveyor", "connected")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder = {}

    async def start():
        api = create_app(ops, "secret-token", engineer_token="engineer-token")
        runner = web.AppRunner(api, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder["runner"] = runner

    def main():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(holder["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield line_config(tmp_path, port), ops
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def down(tmp_path):
    """A config whose API port nothing listens on (the token exists, so the connection is tried)."""
    return line_config(tmp_path, free_port())


def test_shelve_unshelve_and_inhibit_reach_the_api_with_the_token(service):
    config, ops = service
    result = invoke("shelve", str(config), "line_anomaly", "--for", "30m", "--user", "ann",
                    "--reason", "swap")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["line_anomaly shelved for 30 min",
                                          "warning: shelving line_anomaly disables action stop_line"]
    result = invoke("shelve", str(config), "oil_temp_high", "--for", "1h30m", "--reason", "known drift")
    assert result.exit_code == 0 and "warning" not in result.output
    assert invoke("unshelve", str(config), "line_anomaly", "--user", "bob").exit_code == 0
    result = invoke("inhibit", str(config), "stop_line", "--user", "ann", "--reason", "belt work")
    assert result.exit_code == 0
    assert "warning: inhibiting stop_line disables action stop_line" in result.output
    result = invoke("inhibit", str(config), "stop_line", "--off")
    assert result.exit_code == 0 and "no longer inhibited" in result.output
    result = invoke("reset", str(config), "stop_line", "--reason", "jam cleared")
    assert result.exit_code == 0 and "stop_line reset (latched): jam cleared" in result.output
    calls = [c for c in ops.calls if c != ("persist",)]
    assert calls == [("shelve", "line_anomaly", "ann", 1800.0, "swap"),
                     ("shelve", "oil_temp_high", "operator", 5400.0, "known drift"),
                     ("unshelve", "line_anomaly", "bob"), ("inhibit", "stop_line", "ann", True, "belt work"),
                     ("inhibit", "stop_line", "operator", False, ""),
                     ("reset", "stop_line", "operator", "jam cleared")]
    assert ops.calls.count(("persist",)) == len(calls)  # each answer waited for the state file


@pytest.mark.parametrize("args", [("shelve", "line_anomaly", "--for", "30m"),
                                  ("shelve", "line_anomaly", "--for", "30m", "--reason", "  "),
                                  ("inhibit", "stop_line"), ("reset", "stop_line")])
def test_shelve_inhibit_and_reset_without_a_reason_are_exit_2_one_line(service, args):
    config, ops = service
    result = invoke(args[0], str(config), *args[1:])
    assert result.exit_code == 2, result.output
    assert "a reason is required" in result.output and "--reason" in result.output
    assert result.output.count("\n") == 1 and ops.calls == []


def test_shelving_a_non_shelvable_alarm_is_refused_exit_1_one_line(service):
    config, ops = service
    result = invoke("shelve", str(config), "stop_line_failed", "--for", "30m", "--reason", "test")
    assert result.exit_code == 1 and "shelvable = false" in result.output
    assert result.output.count("\n") == 1


def test_api_refusals_are_one_line_exit_1(service):
    config, ops = service
    result = invoke("shelve", str(config), "nope", "--for", "90s", "--reason", "r")
    assert result.exit_code == 1 and "no alarm named 'nope'" in result.output
    assert result.output.count("\n") == 1
    result = invoke("inhibit", str(config), "nope", "--reason", "r")
    assert result.exit_code == 1 and "no action named 'nope'" in result.output
    assert ops.calls == []


@pytest.mark.parametrize("duration", ["30x", "abc", "0s", "-5m", "", "1h30"])
def test_shelve_with_a_bad_duration_is_exit_2_one_line(tmp_path, duration):
    result = invoke("shelve", str(line_config(tmp_path, free_port())), "line_anomaly", "--for", duration)
    assert result.exit_code == 2, result.output
    assert "bad duration" in result.output and result.output.count("\n") == 1


def test_parse_duration():
    from controller.cli import parse_duration

    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("45") == 45 and parse_duration("1.5h") == 5400


def test_alarms_filters_by_state_and_priority(service):
    config, _ = service
    result = invoke("alarms", str(config), "--state", "unack", "--priority", "critical")
    assert result.exit_code == 0, result.output
    assert "line_anomaly" in result.output and "oil_temp_high" not in result.output
    result = invoke("alarms", str(config), "--state", "UNACK,ACKED", "--json")
    assert [a["name"] for a in json.loads(result.output)] == ["line_anomaly", "oil_temp_high"]
    result = invoke("alarms", str(config), "--priority", "low", "--json")
    assert [a["name"] for a in json.loads(result.output)] == ["oil_temp_high"]
    assert "motor_current_limit" in invoke("alarms", str(config)).output


@pytest.mark.parametrize("args", [("--state", "BOGUS"), ("--priority", "urgent"), ("--state", ",")])
def test_alarms_with_a_bad_filter_is_exit_2(tmp_path, args):
    result = invoke("alarms", str(line_config(tmp_path, free_port())), *args)
    assert result.exit_code == 2 and "unknown value" in result.output
    assert result.output.count("\n") == 1


def test_events_page_and_since(service):
    config, _ = service
    result = invoke("events", str(config))
    assert result.exit_code == 0, result.output
    assert "line_anomaly" in result.output and "stop_line" in result.output and "conveyor" in result.output
    result = invoke("events", str(config), "--since", "1", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [e["id"] for e in lines] == [2, 3] and lines[0]["source"] == "stop_line"
    assert invoke("events", str(config), "--since", "-1").exit_code == 2


def test_events_follow_reads_the_stream_until_ctrl_c(service, monkeypatch):
    import controller.cli as cli

    config, _ = service
    seen: list[dict] = []
    real = cli.print_event

    def printer(event, as_json):
        real(event, as_json)
        seen.append(event)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does while the stream is read

    monkeypatch.setattr(cli, "print_event", printer)
    result = invoke("events", str(config), "--follow", "--since", "0")
    assert result.exit_code == 0, result.output
    assert [e["id"] for e in seen] == [1, 2, 3]
    assert "UNACK" in result.output and "fired" in result.output


def test_status_watch_refreshes_until_ctrl_c(service, monkeypatch):
    config, ops = service
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    result = invoke("status", str(config), "--watch")
    assert result.exit_code == 0, result.output
    assert sleeps == [1.0, 1.0, 1.0] and ops.polls == 3
    assert "demo-line" in result.output and "line score 0.125" in result.output
    assert invoke("status", str(config), "--watch", "--json").exit_code == 2


@pytest.mark.parametrize("args", [
    ("shelve", "{c}", "line_anomaly", "--for", "30m", "--user", "ann", "--reason", "r"),
    ("unshelve", "{c}", "line_anomaly"),
    ("inhibit", "{c}", "stop_line", "--reason", "r"),
    ("inhibit", "{c}", "stop_line", "--off"),
    ("events", "{c}"),
    ("events", "{c}", "--follow"),
    ("alarms", "{c}", "--state", "UNACK"),
    ("status", "{c}", "--watch"),
])
def test_operator_commands_with_the_service_down_are_one_line_exit_1(down, args):
    result = invoke(*[a.format(c=down) for a in args])
    assert result.exit_code == 1, result.output
    assert "not running" in result.output and result.output.count("\n") == 1


def test_post_without_a_readable_token_is_exit_2(tmp_path):
    from controller.statedir import ENGINEER_TOKEN_FILE, TOKEN_FILE

    config = line_config(tmp_path, free_port())
    for name in (TOKEN_FILE, ENGINEER_TOKEN_FILE):  # a higher role's token would do as well
        (tmp_path / "state" / name).unlink()
    result = invoke("shelve", str(config), "line_anomaly", "--for", "30m", "--reason", "r")
    assert result.exit_code == 2 and "API token" in result.output


# ---------------------------------------------------------------- certs
def test_certs_create_writes_a_der_certificate_and_a_0600_key(tmp_path):
    import stat

    from cryptography import x509

    out = tmp_path / "pki"
    result = invoke("certs", "create", "--out", str(out), "--uri", "urn:acme:line1", "--host", "ctrl-1")
    assert result.exit_code == 0, result.output
    cert, key = out / "client.der", out / "client_key.pem"
    assert str(cert) in result.output and str(key) in result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN")
    san = x509.load_der_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:acme:line1"]
    assert san.get_values_for_type(x509.DNSName) == ["ctrl-1"]

    again = invoke("certs", "create", "--out", str(out), "--uri", "urn:acme:line1", "--host", "ctrl-1")
    assert again.exit_code == 2 and "--force" in again.output
    key.chmod(0o644)
    forced = invoke("certs", "create", "--out", str(out), "--uri", "urn:acme:line1", "--host", "ctrl-1",
                    "--force")
    assert forced.exit_code == 0, forced.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize("args", [("--uri", "not a uri"), ("--host", "bad host!"), ("--days", "0")])
def test_certs_create_bad_arguments_are_exit_2(tmp_path, args):
    result = invoke("certs", "create", "--out", str(tmp_path / "pki"), *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "pki" / "client_key.pem").exists()


def test_certs_create_into_an_unwritable_place_is_exit_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("certs", "create", "--out", str(blocker / "pki"), "--host", "h")
    assert result.exit_code == 1 and "cannot write" in result.output


def test_run_with_bad_log_levels_is_exit_2():
    result = invoke("run", DEMO, "--log-levels", "drivers=LOUD")
    assert result.exit_code == 2 and "unknown log level" in result.output
    result = invoke("run", DEMO, "--log-levels", "drivers")
    assert result.exit_code == 2 and "module=LEVEL" in result.output


# ---------------------------------------------------------------- shipped Grafana dashboard
def test_grafana_dashboard_is_valid_json_with_flux_panels():
    dash = json.loads(Path("configs/grafana-dashboard.json").read_text())
    panels = dash["panels"]
    assert panels and all(p["targets"] for p in panels)
    queries = [t["query"] for p in panels for t in p["targets"]]
    for q in queries:
        assert q.startswith('from(bucket: "${bucket}")') and "range(start: v.timeRangeStart" in q, q
    text = "\n".join(queries)
    for needed in ('"linesentry_line"', '"linesentry_tag"', '"linesentry_event"', '"score_max"',
                   '"alarm_seconds"', '"bad_count"', 'r.tag == "${tag}"', '"mean"', '"min"', '"max"'):
        assert needed in text, needed
    assert {"table", "timeseries"} <= {p["type"] for p in panels}
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "bucket", "line", "tag"} <= variables
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def test_validate_connect_reports_unreachable_plcs_with_exit_1(tmp_path):
    text = Path(DEMO).read_text()
    text = text.replace("127.0.0.1:4840", f"127.0.0.1:{free_port()}")
    text = re.sub(r"^port = 5020$", f"port = {free_port()}", text, flags=re.M)
    text = text.replace("timeout_s = 2.0", "timeout_s = 0.5")
    config = tmp_path / "line.toml"
    config.write_text(text)
    result = invoke("validate", str(config), "--connect")
    assert result.exit_code == 1, result.output
    assert "cannot reach PLC(s) conveyor, press" in result.output
    assert "cannot reach conveyor: " in result.output and "cannot reach press: " in result.output


def test_status_shows_every_disabled_protection_and_what_was_restored(service):
    config, _ = service
    result = invoke("status", str(config))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "PROTECTIONS DISABLED: 1" in lines and "  stop_line inhibited by ann (belt work)" in lines
    assert "restored: stop_line inhibited by ann (belt work)" in lines


def test_sim_serves_the_plant_until_ctrl_c(tmp_path):
    """`linesentry sim` (it once died on its own `sim` argument): both PLC ports answer, Ctrl-C is exit 0."""
    import subprocess
    import sys
    import time

    opcua, modbus = free_port(), free_port()
    log = tmp_path / "sim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from controller.cli import app; app()",
                                 "sim", "--opcua-port", str(opcua), "--modbus-port", str(modbus)],
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 30
        for port in (modbus, opcua):
            while True:
                assert proc.poll() is None, log.read_text()
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, f"port {port} never answered:\n{log.read_text()}"
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert f"opc.tcp://127.0.0.1:{opcua}" in text and f"127.0.0.1:{modbus}" in text
    assert "Traceback" not in text


def test_the_rig_commands_plug_in_through_the_entry_points():
    """demo/sim/hil are not defined in controller/cli.py: they come from the `linesentry.cli` group."""
    import inspect

    import controller.cli as cli

    help_text = invoke("--help").output
    for name in ("demo", "sim", "hil", "status", "validate"):
        assert f" {name} " in help_text, name
    assert "def demo(" not in inspect.getsource(cli) and "hil_tests" not in inspect.getsource(cli)


def test_operator_commands_validate_the_controller_section_only(tmp_path):
    """A mistake in [controller] is the usual one-line usage error; the rest of the file is not read."""
    config = tmp_path / "line.toml"
    config.write_text('[controller]\nsite = "s"\nline = "l"\napi_port = "8470"\n')
    result = invoke("status", str(config))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {config}: controller.api_port: Input should be a valid integer")
    config.write_text(f'[controller]\nsite = "s"\nline = "l"\napi_port = {free_port()}\n[[bogus]]\nx = 1\n')
    result = invoke("alarms", str(config))  # no PLC, an unknown table: not this command's business
    assert result.exit_code == 1 and "not running" in result.output, result.output


# ---------------------------------------------------------------- against a real `linesentry run`
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real controller process (the demo line, PLCs on closed ports, a fitted model); yields
    (config path, service)."""
    import time

    from controller.config import load_config
    from hil_tests.rig.service_process import ServiceProcess, closed_ports_config
    from hil_tests.rig.training import simulated_normal
    from models import StreamingDetector

    tmp = tmp_path_factory.mktemp("live")
    cfg = load_config(DEMO)
    times, rows = simulated_normal(cfg.detector_tags(), seconds=60.0)
    model = tmp / "model.npz"
    StreamingDetector(cfg.detector_tags(), cfg.detector_spec()).fit(rows, times).save(model)
    service = ServiceProcess(closed_ports_config(tmp, model))
    try:
        service.start()
        deadline = time.monotonic() + 20
        while alarm_state(service, "press_comm_loss") != "UNACK":  # the closed port is noticed
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.05)
        yield service.config, service
    finally:
        service.close()


def alarm_state(service, name: str) -> str:
    return next(a for a in service.get("/alarms") if a["name"] == name)["state"]


def post(service, path: str, body: dict, token_file: str) -> dict:
    """A request straight to the API (not through the CLI), with a token from the state dir."""
    import urllib.request

    token = (service.config.parent / "state" / token_file).read_text().strip()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{service.port}/api/v1{path}", method="POST",
                                     data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def test_the_config_comes_from_linesentry_config_or_the_first_argument(live):
    config, _ = live
    for args, env in (([], {"LINESENTRY_CONFIG": str(config)}), ([str(config)], {})):
        for command in ("status", "alarms", "events"):
            result = runner.invoke(app, [command, *args], env={"COLUMNS": "200", **env})
            assert result.exit_code == 0, (command, args, result.output)
        assert "demo-line" in runner.invoke(app, ["status", *args], env=env).output
    result = runner.invoke(app, ["ack", "oil_temp_high"], env={"LINESENTRY_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status"], env={"LINESENTRY_CONFIG": str(config.parent / "nope.toml")})
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "LINESENTRY_CONFIG=" in result.output and "does not exist" in result.output


def test_no_ops_say_so_exit_0_record_nothing_and_the_api_answers_changed_false(live):
    from controller.statedir import ENGINEER_TOKEN_FILE, TOKEN_FILE

    config, service = live
    c = str(config)
    before = service.events()[-1]["id"]
    state = alarm_state(service, "oil_temp_high")  # NORMAL, or SUPPRESSED while its PLC is lost
    assert state in ("NORMAL", "SUPPRESSED")
    assert invoke("ack", c, "oil_temp_high").output == f"oil_temp_high is {state}: nothing to acknowledge\n"
    assert invoke("ack", c, "press_comm_loss", "--user", "ann").output == "press_comm_loss acknowledged\n"
    again = invoke("ack", c, "press_comm_loss")
    assert again.exit_code == 0 and again.output == "press_comm_loss already acknowledged\n"
    result = invoke("reset", c, "stop_line", "--reason", "nothing latched")
    assert result.exit_code == 0 and result.output == "stop_line is not latched: nothing to reset\n"
    assert invoke("unshelve", c, "oil_temp_high").output == (
        "oil_temp_high is not shelved: nothing to unshelve\n")
    assert invoke("inhibit", c, "stop_line", "--off").output == "stop_line is not inhibited\n"
    assert invoke("out-of-service", c, "oil_temp_high", "--off").output == (
        "oil_temp_high already in service\n")
    answer = post(service, "/alarms/press_comm_loss/ack", {"user": "bob"}, TOKEN_FILE)
    assert answer["changed"] is False and answer["message"] == "press_comm_loss already acknowledged"
    answer = post(service, "/actions/stop_line/reset", {"user": "bob", "reason": "r"}, ENGINEER_TOKEN_FILE)
    assert answer["changed"] is False
    new = [e for e in service.events(before) if e["kind"] in ("alarm", "action") and e.get("user")]
    assert [(e["source"], e["user"]) for e in new] == [("press_comm_loss", "ann")]  # the one real change


def test_out_of_service_and_back_is_recorded_with_the_engineer_role(live):
    config, service = live
    c = str(config)
    result = invoke("out-of-service", c, "motor_current_limit")
    assert result.exit_code == 2 and "a reason is required" in result.output
    result = invoke("out-of-service", c, "motor_current_limit", "--user", "eve", "--reason", "sensor swap")
    assert result.exit_code == 0 and result.output == "motor_current_limit out of service\n", result.output
    assert alarm_state(service, "motor_current_limit") == "OUT_OF_SERVICE"
    assert invoke("out-of-service", c, "motor_current_limit", "--reason", "x").output == (
        "motor_current_limit already out of service\n")
    assert invoke("out-of-service", c, "motor_current_limit", "--off", "--user", "eve").output == (
        "motor_current_limit returned to service\n")
    assert alarm_state(service, "motor_current_limit") != "OUT_OF_SERVICE"
    mine = [e for e in service.events() if e["source"] == "motor_current_limit" and e.get("user") == "eve"]
    assert [(e["state"], e["role"], e["reason"]) for e in mine] == [
        ("OUT_OF_SERVICE", "engineer", "sensor swap"), (mine[1]["state"], "engineer", "")]
    table = invoke("events", c, "--last", "5").output
    assert "eve (engineer)" in table


def test_alarms_shows_since_acked_by_and_shelved_until(live):
    import time

    config, service = live
    c = str(config)
    invoke("ack", c, "conveyor_comm_loss", "--user", "ann")
    row = next(r for r in invoke("alarms", c).output.splitlines() if r.startswith("conveyor_comm_loss"))
    assert re.search(r"ACKED +\w+ +\d\d:\d\d:\d\d +ann +- ", row), row
    invoke("shelve", c, "conveyor_comm_loss", "--for", "2h", "--user", "bob", "--reason", "cable swap")
    output = invoke("alarms", c).output
    header = output.splitlines()[0]
    assert header.split() == ["alarm", "state", "priority", "since", "acked", "by", "shelved", "until",
                              "message"]
    row = next(line for line in output.splitlines() if line.startswith("conveyor_comm_loss"))
    shelved = next(a for a in service.get("/alarms") if a["name"] == "conveyor_comm_loss")
    until = time.strftime("%H:%M:%S", time.localtime(shelved["shelved_until"]))
    assert "SHELVED" in row and f"{until} by bob" in row, row


def test_model_reload_swaps_the_model_and_a_refused_one_is_one_line_exit_2(live, tmp_path):
    config, service = live
    result = invoke("model", "reload", str(config), "--user", "eve")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"model reloaded from \S+model\.npz \(threshold \d+\.\d{4}\)\n", result.output)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    result = invoke("model", "reload", str(config), "--model", str(bad))
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "bad.npz" in result.output
    reloads = [e for e in service.events() if e["kind"] == "model" and e.get("user") == "eve"]
    assert reloads and reloads[-1]["role"] == "engineer"


def test_status_watch_piped_prints_each_status_with_its_update_time(live):
    import subprocess
    import time

    config, service = live
    proc = subprocess.Popen([*LAUNCH, "status", "--watch", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=service.config.parent,
                            preexec_fn=as_from_a_terminal)
    updates: list[str] = []
    try:
        while len(updates) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("updated "):
                updates.append(line.strip())
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
    assert code == 0
    stamps = [time.strptime(u.removeprefix("updated "), "%H:%M:%S") for u in updates]
    assert len(set(stamps)) >= 2  # a new time for each refresh (one per second)


def test_a_usage_mistake_is_one_line_on_stderr(tmp_path):
    import os
    import subprocess

    config = line_config(tmp_path, free_port())
    for args, expected in ((["shelve", str(config), "line_anomaly"], "Missing option '--for'"),
                           (["ack"], "Missing argument 'alarm'"),
                           (["status", "--bogus"], "No such option: --bogus"),
                           (["status"], "no line config")):
        run = subprocess.run([*LAUNCH, *args], capture_output=True, text=True,
                             env={**os.environ, "LINESENTRY_CONFIG": str(tmp_path / "none.toml")})
        assert run.returncode == 2 and run.stdout == "", (args, run.stdout, run.stderr)
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
        assert expected in run.stderr, run.stderr


def test_a_config_that_is_a_directory_a_fifo_or_a_command_name_is_one_line_saying_so(tmp_path):
    import os
    import subprocess

    (tmp_path / "dir.toml").mkdir()
    os.mkfifo(tmp_path / "fifo.toml")  # opened, it would block the command for ever
    for args, env, expected in (
            (["status"], str(tmp_path / "dir.toml"), "dir.toml is a directory, not a config file"),
            (["ack", "press_comm_loss"], str(tmp_path / "fifo.toml"), "fifo.toml is not a regular file"),
            (["status", str(tmp_path / "fifo.toml")], "", "fifo.toml is not a regular file"),
            (["status", "status"], "", "'status' is a command name, not a line config"),
            (["ack", "events", "press_comm_loss"], "", "'events' is a command name, not a line config")):
        run = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                             env={**os.environ, "LINESENTRY_CONFIG": env})
        assert run.returncode == 2 and run.stdout == "", (args, run.stdout, run.stderr)
        assert run.stderr.count("\n") == 1 and expected in run.stderr, run.stderr


@pytest.mark.parametrize("args", [["validate", DEMO], ["version"], ["--help"]])
def test_a_reader_that_goes_away_is_not_an_error(args):
    """`linesentry events | head`: the pipe closes under the command; it stops quietly (exit 1),
    without a traceback or an "error: Broken pipe" line."""
    import subprocess

    proc = subprocess.Popen([*LAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command writes its first line
    assert proc.wait(30) == 1 and proc.stderr.read() == ""

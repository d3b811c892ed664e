"""The `linesentry` command line: exit codes and one-line errors, through typer's runner."""

import csv
import re
import socket
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from controller.cli import app
from models import load_model

DEMO = "configs/demo_line.toml"
runner = CliRunner()


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
    from hil_tests.training import simulated_normal

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_detects_an_injected_jam_and_stops_the_line(tmp_path):
    """The README's main job, shortened: plant + controller, a jam, a line stop, a clean exit."""
    text = Path(DEMO).read_text()
    text = text.replace("127.0.0.1:4840", f"127.0.0.1:{free_port()}")
    text = re.sub(r"^port = 5020$", f"port = {free_port()}", text, flags=re.M)
    text = text.replace("api_port = 8470", f"api_port = {free_port()}")
    text = text.replace('"../state/demo_line', f'"{tmp_path}/state')
    config = tmp_path / "demo.toml"
    config.write_text(text)
    result = invoke("demo", "--config", str(config), "--seconds", "20", "--no-live", "--fault-every", "8")
    assert result.exit_code == 0, result.output
    assert "fitting the demo model" in result.output
    jam = next(line for line in result.output.splitlines() if line.startswith("│ jam"))
    assert re.search(r"\d+ ms", jam), jam  # the line was stopped after the jam

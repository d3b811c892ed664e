"""`linesentry record` against a real Modbus server: it names the tag that keeps rows incomplete."""

import csv

from conftest import free_port
from modbus_server import SimServer, ThreadedServer, bits_at, device, registers_at
from test_modbus_validate import TAG, line_config
from typer.testing import CliRunner

from controller.cli import app

runner = CliRunner()


def sim():
    return device([bits_at(0, [False] * 16)], [bits_at(0, [False] * 16)], [registers_at(0, [10, 20, 30])],
                  [registers_at(0, [4])])


def record(tmp_path, tags: str):
    port = free_port()
    config = line_config(tmp_path, port, tags, poll_interval_s=0.05)
    out = tmp_path / "rec.csv"
    with ThreadedServer(SimServer(sim, port)):
        result = runner.invoke(app, ["record", config, "--minutes", "0.01", "-o", str(out)],
                               env={"COLUMNS": "80"})
    return result, out


def test_record_names_the_tag_that_keeps_every_row_incomplete(tmp_path):
    result, out = record(tmp_path, TAG.format(name="good", address=0) + TAG.format(name="gone", address=4000))
    assert result.exit_code == 1
    assert ("no complete rows recorded: incomplete because of gone (" in result.output
            and "rows: BAD, exception 2 (illegal data address) reading holding_register 4000..4000)"
            in result.output), result.output
    assert not out.exists()


def test_record_writes_complete_rows(tmp_path):
    result, out = record(tmp_path, TAG.format(name="a", address=0) + TAG.format(name="b", address=2))
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["time", "a", "b"] and len(rows) > 2
    assert all(r[1:] == ["10.0", "30.0"] for r in rows[1:])

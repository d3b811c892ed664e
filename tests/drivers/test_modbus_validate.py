"""`linesentry validate --connect` against real Modbus servers: exit 1 and one full line per bad tag."""

from pathlib import Path

from conftest import free_port
from modbus_server import RawServer, SimServer, ThreadedServer, bits_at, device, registers_at
from typer.testing import CliRunner

from controller.cli import app

runner = CliRunner()


def line_config(tmp_path: Path, port: int, tags: str, device_id: int = 1,
                poll_interval_s: float = 1.0) -> str:
    path = tmp_path / "line.toml"
    path.write_text(f"""
[controller]
site = "s"
line = "l"
name = "c"
state_dir = "{tmp_path / 'state'}"

[[modbus]]
name = "press_with_a_long_device_name"
host = "127.0.0.1"
port = {port}
device_id = {device_id}
timeout_s = 0.3
poll_interval_s = {poll_interval_s}
{tags}
""")
    return str(path)


TAG = """
  [[modbus.tags]]
  name = "{name}"
  table = "holding_register"
  address = {address}
  dtype = "uint16"
"""


def sim():
    return device([bits_at(0, [False] * 16)], [bits_at(0, [False] * 16)], [registers_at(0, [1, 2, 3])],
                  [registers_at(0, [4])])


def validate(config: str, columns: int = 80):
    """80 columns is what rich uses when the output is piped; the table wraps, bad-tag lines must not."""
    return runner.invoke(app, ["validate", config, "--connect"], env={"COLUMNS": str(columns)})


def test_all_good_exits_0(tmp_path):
    port = free_port()
    config = line_config(tmp_path, port, TAG.format(name="a", address=0) + TAG.format(name="b", address=2))
    with ThreadedServer(SimServer(sim, port)):
        result = validate(config, columns=200)
    assert result.exit_code == 0, result.output
    assert "yes (2 of 2 tags good)" in result.output and "bad tag" not in result.output


def test_a_bad_tag_is_named_with_its_reason_on_one_unwrapped_line_and_exits_1(tmp_path):
    port = free_port()
    tags = TAG.format(name="oil_temperature_after_the_cooler", address=0)
    tags += TAG.format(name="hydraulic_pressure_at_the_main_cylinder", address=4000)
    with ThreadedServer(SimServer(sim, port)):
        result = validate(line_config(tmp_path, port, tags))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    want = ("bad tag press_with_a_long_device_name.hydraulic_pressure_at_the_main_cylinder: "
            "exception 2 (illegal data address) reading holding_register 4000..4000")
    assert want in lines, result.output  # a whole line, longer than 80 columns
    assert "1 tag(s) not good on PLC(s) press_with_a_long_device_name" in result.output
    assert "hint:" not in result.output  # one tag answered: not a unit-id problem


def test_wrong_unit_id_names_every_tag_and_hints_at_device_id_and_zero_based_addresses(tmp_path):
    port = free_port()
    tags = TAG.format(name="a", address=0) + TAG.format(name="b", address=1) + TAG.format(name="c", address=9)
    with ThreadedServer(SimServer(sim, port)):
        result = validate(line_config(tmp_path, port, tags, device_id=9), columns=200)
    assert result.exit_code == 1
    bad = [line for line in result.output.splitlines() if line.startswith("bad tag")]
    assert [line.split(":")[0] for line in bad] == [f"bad tag press_with_a_long_device_name.{t}"
                                                    for t in "abc"]
    assert "yes (0 of 3 tags good)" in result.output
    hint = next(line for line in result.output.splitlines() if line.startswith("hint:"))
    assert "check device_id (the unit id, now 9" in hint and "zero-based" in hint and "40001" in hint


def test_a_device_that_never_answers_is_named_with_the_timeout(tmp_path):
    port = free_port()
    with ThreadedServer(RawServer(port, lambda _req: None)):
        result = validate(line_config(tmp_path, port, TAG.format(name="a", address=0)))
    assert result.exit_code == 1
    assert "bad tag press_with_a_long_device_name.a: no answer within 0.3 s" in result.output.splitlines()
    assert "hint: no tag of press_with_a_long_device_name could be read" in result.output

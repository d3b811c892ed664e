"""Hostile line configs: every problem is one line with the exact key path and a TOML-style fix,
never a traceback and never a silent accept (issue 13.2 / 13.5, adversarial review)."""

import copy
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from controller.config import ConfigError, line_model, load_config
from drivers.registry import DriverPlugin, register, unregister

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.toml"))
MODBUS = (ROOT / "configs" / "modbus_only.toml").read_text()

HEAD = """
[controller]
site = "s"
line = "l"

"""
PRESS = """
[[modbus]]
name = "press"
host = "127.0.0.1"
  [[modbus.tags]]
  name = "oil_temp"
  table = "input_register"
  address = 1
  dtype = "int16"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    """The ConfigError lines for `text` (the test fails if it loads)."""
    path = tmp_path / "line.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.problems
    assert all("\n" not in line and "Traceback" not in line for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_unchanged(path):
    cfg = load_config(path)
    assert list(cfg.plcs())


def test_a_plc_table_written_as_a_single_table_says_to_use_double_brackets(tmp_path):
    text = HEAD + PRESS.replace("[[modbus]]", "[modbus]").split("  [[modbus.tags]]")[0]
    assert problems(tmp_path, text) == [
        "modbus: expected an array of tables: write [[modbus]] (one [[modbus]] table per item), not [modbus]"]
    text = HEAD + '[opcua]\nname = "c"\nendpoint = "opc.tcp://h:4840"\n'
    assert problems(tmp_path, text)[0].startswith("opcua: expected an array of tables: write [[opcua]]")


def test_tags_written_as_a_single_table_say_to_use_double_brackets(tmp_path):
    text = HEAD + PRESS.replace("[[modbus.tags]]", "[modbus.tags]")
    assert problems(tmp_path, text) == [
        "modbus[0].tags: expected an array of tables: write [[modbus.tags]] (one [[modbus.tags]] table per "
        "item), not [modbus.tags]"]


def test_controller_written_as_an_array_of_tables_says_single_brackets(tmp_path):
    text = HEAD.replace("[controller]", "[[controller]]") + PRESS
    assert problems(tmp_path, text) == [
        "controller: expected one table: write [controller], not [[controller]]"]


def test_a_missing_or_scalar_controller_section_says_how_to_write_it(tmp_path):
    assert problems(tmp_path, PRESS) == ["controller: required section is missing: add a [controller] table"]
    assert problems(tmp_path, "controller = 5\n" + PRESS) == [
        "controller: expected a table: write [controller] with its keys below it, not controller = 5"]


def test_a_typo_in_a_section_name_suggests_the_section(tmp_path):
    (line,) = problems(tmp_path, HEAD + PRESS + "\n[detectr]\nmodel = 'm.npz'\n")
    assert line.startswith("detectr: unknown section; did you mean 'detector'?")


def test_a_table_of_a_driver_that_is_not_installed_is_named_as_such(tmp_path):
    (line,) = problems(tmp_path, HEAD + PRESS + '\n[[kafka]]\nname = "m"\n')
    assert line.startswith("kafka: unknown section;") and "[[modbus]], [[opcua]]" in line
    assert line.endswith("; no driver named 'kafka' is installed: install its package or remove these tables")
    (line,) = problems(tmp_path, HEAD + PRESS + '\n[kafka]\nname = "m"\n')  # not PLC tables: a section
    assert line.startswith("kafka: unknown section;") and "installed: install" not in line


def test_duplicate_plc_names_across_protocols_are_one_line(tmp_path):
    text = HEAD + PRESS + ('\n[[opcua]]\nname = "press"\nendpoint = "opc.tcp://h:4840"\n'
                           '  [[opcua.tags]]\n  name = "speed"\n  node = "nsu=urn:x;s=S"\n')
    assert problems(tmp_path, text) == [
        "opcua[0].name: PLC name 'press' is already used by modbus[0]; PLC names must be unique"]


@pytest.mark.parametrize("name", ["press\\u202e7", "press\\u001b[31m7", "press\\u200f", "oil\\ttemp"])
def test_names_with_control_or_bidi_characters_are_refused_and_shown_escaped(tmp_path, name):
    """A terminal escape or a right-to-left override in a name would rewrite what an operator
    reads in every log, status and error line."""
    for text in (HEAD + PRESS.replace('name = "press"', f'name = "{name}"'),
                 HEAD + PRESS.replace('name = "oil_temp"', f'name = "{name}"')):
        lines = problems(tmp_path, text)
        assert len(lines) == 1 and "an invisible or control character" in lines[0], lines
        assert all(c.isprintable() for c in lines[0]), lines  # the message itself is safe to print


def test_unicode_letters_in_names_are_fine(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text(HEAD + PRESS.replace('"press"', '"Presse-Öl"').replace('"oil_temp"', '"油温"'),
                    encoding="utf-8")
    cfg = load_config(path)
    assert [p.name for _, p in cfg.plcs()] == ["Presse-Öl"] and list(cfg.tags()) == ["油温"]


def test_an_error_line_never_carries_raw_control_characters(tmp_path):
    text = HEAD + PRESS + "\n[[alarms]]\nname = \"a\"\nsource = \"plc:x\\u001b[2Jy\"\n"
    for line in problems(tmp_path, text):
        assert "\x1b" not in line and line.isprintable(), line


def test_a_plc_table_with_a_driver_key_cannot_skip_the_split(tmp_path):
    """`driver = {...}` is the internal shape of a dump; in a TOML file it is an unknown key."""
    text = HEAD + ('[[modbus]]\ndriver = { name = "press", host = "h", tags = [{ name = "t", '
                   'table = "input_register", address = 1, dtype = "int16" }] }\n')
    lines = problems(tmp_path, text)
    assert any(line.startswith("modbus[0].driver: unknown key") for line in lines), lines


def test_a_dump_still_validates_to_the_same_config():
    cfg = load_config(ROOT / "configs" / "modbus_only.toml")
    again = type(cfg).model_validate(cfg.model_dump())
    assert again.model_dump() == cfg.model_dump() and list(again.tags()) == list(cfg.tags())


class _Exploding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    tags: list[dict] = []

    @field_validator("name")
    @classmethod
    def _boom(cls, v: str) -> str:
        raise RuntimeError("plugin bug: lookup table missing")


def test_a_driver_plugin_whose_config_model_raises_is_one_line_naming_the_table(tmp_path):
    plugin = DriverPlugin(name="boomdrv", config=_Exploding, create=lambda c: None)
    register(plugin)
    try:
        lines = problems(tmp_path, HEAD + PRESS + '\n[[boomdrv]]\nname = "x"\n')
    finally:
        unregister("boomdrv")
    assert lines == ["boomdrv[0]: the boomdrv driver plugin failed on this table (RuntimeError: plugin bug: "
                     "lookup table missing); report it to the plugin's authors or remove the table"]


class _Methods(BaseModel):
    """A plugin config that validates but whose methods raise (asked by the cross-checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    tags: list[dict] = []

    @property
    def endpoint(self) -> str:
        return "x"

    def acquisition_interval_s(self) -> float:
        raise ZeroDivisionError("division by zero")


def test_a_driver_plugin_whose_methods_raise_is_one_line(tmp_path):
    register(DriverPlugin(name="methdrv", config=_Methods, create=lambda c: None))
    try:
        lines = problems(tmp_path, HEAD + PRESS + '\n[[methdrv]]\nname = "x"\n')
    finally:
        unregister("methdrv")
    assert len(lines) == 1 and lines[0].startswith("methdrv[0]: the methdrv driver plugin failed"), lines
    assert "ZeroDivisionError" in lines[0]


@pytest.mark.parametrize("section", ["alarms", "controller", "detector", "sync", "actions"])
def test_a_driver_plugin_named_like_a_section_cannot_replace_it(section, caplog):
    register(DriverPlugin(name=section, config=_Methods, create=lambda c: None))
    try:
        cfg = load_config(ROOT / "configs" / "modbus_only.toml")
    finally:
        unregister(section)
    assert cfg.alarms and cfg.controller.line == "press-7" and section not in type(cfg).plc_tables
    assert f"driver plugin {section!r} is named like the [{section}] section" in caplog.text


def _numeric_leaves(data, path=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _numeric_leaves(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _numeric_leaves(v, (*path, i))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        yield path


# Where +-inf is a documented meaning: hard limits (no limit on that side). Where any finite value
# is in range: a deadband and a Modbus scale are in the tag's own units (docs/configuration.md).
INF_OK = {"lo", "hi"}
FINITE_OK = {"lo", "hi", "deadband", "scale"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_inf_nan_and_1e300_in_every_numeric_key_are_one_line_naming_that_key(path):
    from controller.config.errors import format_errors
    from controller.config.toml import read_toml

    data = read_toml(path)
    schema = line_model()
    accepted = []
    for leaf in _numeric_leaves(data):
        for bad in (math.inf, -math.inf, math.nan, 1e300, -1e300):
            hostile = copy.deepcopy(data)
            node = hostile
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = bad
            try:
                schema.model_validate(hostile, strict=True, context={"base_dir": path.parent})
            except ValueError as exc:
                lines = format_errors(exc, schema)
                assert len(lines) == 1, (leaf, bad, lines)
            else:
                if leaf[-1] not in (INF_OK if math.isinf(bad) else FINITE_OK):
                    accepted.append((leaf, bad))
    assert not accepted, accepted


def test_a_huge_array_is_refused_with_its_bound(tmp_path):
    hosts = ", ".join(['"h"'] * 100_000)
    text = HEAD.replace('line = "l"', f'line = "l"\napi_allowed_hosts = [{hosts}]') + PRESS
    (line,) = problems(tmp_path, text)
    assert line.startswith("controller.api_allowed_hosts: List should have at most"), line


def test_a_modbus_plc_with_100k_tags_is_one_line_for_its_one_bad_tag(tmp_path):
    tag = ('\n  [[modbus.tags]]\n  name = "t{i}"\n  table = "holding_register"\n  address = {a}\n'
           '  dtype = "uint16"\n')
    tags = "".join(tag.format(i=i, a=i % 9000) for i in range(100_000))
    bad = '\n  [[modbus.tags]]\n  name = "last"\n  table = "coil"\n  address = "1"\n  dtype = "bool"\n'
    lines = problems(tmp_path, HEAD + '[[modbus]]\nname = "big"\nhost = "h"\n' + tags + bad)
    assert len(lines) == 1 and lines[0].startswith("modbus[0].tags[100000].address: "), lines[:3]
    assert "without quotes" in lines[0]


def test_deep_nesting_is_one_line(tmp_path):
    text = HEAD + PRESS + "\n[detector.spec]\nx = " + "[" * 5000 + "]" * 5000 + "\n"
    (line,) = problems(tmp_path, text)
    assert "nested" in line


def test_validate_exit_codes(tmp_path):
    good = ROOT / "configs" / "modbus_only.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(HEAD + PRESS.replace("[[modbus]]", "[modbus]"))
    cli = [sys.executable, "-c", "import sys; from controller.cli import app; app(prog_name='linesentry')"]
    ok = subprocess.run([*cli, "validate", str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run([*cli, "validate", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert no.returncode == 2 and no.stderr.count("\n") == no.stderr.count("error:") >= 1, no.stderr
    missing = subprocess.run([*cli, "validate", str(tmp_path / "nope.toml")], capture_output=True, text=True,
                             cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "Traceback" not in no.stderr + missing.stderr


def test_tomllib_still_parses_the_shipped_configs_byte_for_byte():
    for path in SHIPPED:  # loading never rewrites a shipped file
        before = path.read_bytes()
        load_config(path)
        assert path.read_bytes() == before and tomllib.loads(before.decode())

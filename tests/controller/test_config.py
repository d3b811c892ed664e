"""Line config: shipped configs load, and every mistake gives one line naming file, key and fix."""

import math
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from controller.config import (
    ConfigError,
    Plc,
    PlcSettings,
    line_model,
    load_config,
)
from drivers.modbus import ModbusDeviceConfig
from drivers.opcua import OpcUaConfig
from drivers.registry import plugins
from models import DetectorSpec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.toml"))

BASE = """
[controller]
site = "s1"
line = "l1"

[[opcua]]
name = "conv"
endpoint = "opc.tcp://127.0.0.1:4840"
  [[opcua.tags]]
  name = "speed"
  node = "nsu=urn:x;s=Speed"
  [[opcua.tags]]
  name = "current"
  node = "nsu=urn:x;s=Current"
  [[opcua.tags]]
  name = "stop"
  node = "nsu=urn:x;s=Stop"
  writable = true
  [[opcua.tags]]
  name = "hb"
  node = "nsu=urn:x;s=Hb"
  writable = true

[[modbus]]
name = "press"
host = "127.0.0.1"
poll_interval_s = 0.1
  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  address = 0
  dtype = "float32"
  [[modbus.tags]]
  name = "running"
  table = "coil"
  address = 0
  dtype = "bool"
  [[modbus.tags]]
  name = "gate"
  table = "coil"
  address = 1
  dtype = "bool"
  writable = true
  [[modbus.tags]]
  name = "mb_hb"
  table = "holding_register"
  address = 10
  dtype = "uint16"
  writable = true

[detector]
model = "model.npz"
  [detector.limits]
  pressure = { lo = 0, hi = 200 }

[[alarms]]
name = "anomaly"
source = "line"
priority = "critical"

[[alarms]]
name = "pressure_limit"
source = "tag:pressure:limit"

[[actions]]
name = "stop_line"
alarm = "anomaly"
write = { tag = "stop", value = true }
interlocks = ["speed > 50"]
"""


PRESS = 'name = "press"\n'
SRC = 'source = "tag:pressure:limit"'
WRITE = 'write = { tag = "stop"'
DET = "[detector]\n"


def write(tmp_path: Path, text: str, name: str = "line.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines == info.value.problems
    for line in lines:
        assert line.startswith(f"{path}:"), line
    return [line.removeprefix(f"{path}: ") for line in lines]


def one_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# --- shipped configs ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.detector_tags()
    assert cfg.alarms and cfg.actions


def test_the_three_required_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"demo_line.toml", "secure_opcua.toml", "modbus_only.toml"}


def test_demo_line_matches_the_plant_address_map():
    cfg = load_config(ROOT / "configs/demo_line.toml")
    (conv,) = cfg.opcua
    assert conv.driver.endpoint == "opc.tcp://127.0.0.1:4840/linesentry/"
    nodes = {t.node.split(";s=")[1]: t for t in conv.driver.tags}
    assert all(t.node.startswith("nsu=urn:linesentry:plant;s=") for t in conv.driver.tags)
    assert set(nodes) == {"Conveyor.MotorCurrent", "Conveyor.MotorSpeed", "Conveyor.VibrationRMS",
                          "Conveyor.BearingTemp", "Conveyor.LineStop", "Conveyor.RejectGate",
                          "Conveyor.Heartbeat"}
    assert {n for n, t in nodes.items() if t.writable} == {"Conveyor.LineStop", "Conveyor.RejectGate",
                                                           "Conveyor.Heartbeat"}
    (group,) = {conv.driver.group(t.group) for t in conv.driver.tags}
    assert group.mode == "subscription"
    assert group.sampling_interval_ms == 10 and group.publishing_interval_ms == 10

    (press,) = cfg.modbus
    d = press.driver
    assert (d.host, d.port, d.device_id) == ("127.0.0.1", 5020, 1)
    assert d.poll_interval_s <= 0.1
    got = {t.name: (t.table, t.address, t.dtype, t.order, t.writable) for t in d.tags}
    hr = "holding_register"
    assert got == {
        "hydraulic_pressure": (hr, 0, "float32", "ABCD", False),
        "oil_temp": (hr, 2, "float32", "ABCD", False),
        "cycle_count": (hr, 4, "uint32", "ABCD", False),
        "pump_flow": (hr, 6, "float32", "ABCD", False),
        "discharge_pressure": (hr, 8, "float32", "ABCD", False),
        "heartbeat": (hr, 10, "uint16", "ABCD", True),
        "line_stop": ("coil", 0, "bool", "ABCD", True),
        "reject_gate": ("coil", 1, "bool", "ABCD", True),
    }


def test_demo_line_alarms_actions_and_watchdogs():
    cfg = load_config(ROOT / "configs/demo_line.toml")
    line = cfg.alarm("line_anomaly")
    assert (str(line.source), line.priority) == ("line", "critical")
    stop = cfg.action("stop_line")
    assert stop.alarm == "line_anomaly" and stop.latch and stop.confirm_within_s == 1.0
    assert cfg.tags()[stop.write.tag].plc == "conveyor"
    assert [str(c) for c in stop.interlocks] == ["motor_speed > 50"]
    sources = {str(a.source) for a in cfg.alarms}
    assert {"comm:conveyor", "comm:press"} <= sources
    assert any(s.endswith(":flatline") for s in sources) and any(s.endswith(":limit") for s in sources)
    assert all(a.priority == "medium" for a in cfg.alarms if str(a.source).startswith("tag:"))
    assert all(p.watchdog is not None for _, p in cfg.plcs())


def test_secure_config_uses_signandencrypt_and_an_env_password():
    cfg = load_config(ROOT / "configs/secure_opcua.toml")
    sec = cfg.opcua[0].driver.security
    assert (sec.policy, sec.mode) == ("Basic256Sha256", "SignAndEncrypt")
    assert sec.client_certificate and sec.client_private_key and sec.server_certificate
    assert sec.password_env and sec.username
    assert cfg.sync is not None and cfg.sync.options.token_env


def test_modbus_only_has_no_opcua_and_default_detector_tags():
    cfg = load_config(ROOT / "configs/modbus_only.toml")
    assert not cfg.opcua and cfg.sync is None
    # every non-writable, non-bit tag; coils/discrete inputs and the watchdog register excluded
    assert cfg.detector_tags() == ["ram_pressure", "oil_temp", "ram_position"]


# --- composition and defaults ----------------------------------------------------------------

def test_base_config_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    c = cfg.controller
    assert (c.name, c.api_host, c.api_port, c.shadow, c.log_level) == ("l1", "127.0.0.1", 8470, False, "INFO")
    assert c.state_dir == tmp_path / "state"  # relative to the TOML file
    assert cfg.detector.model == tmp_path / "model.npz"
    assert isinstance(cfg.opcua[0].driver, OpcUaConfig)
    assert isinstance(cfg.modbus[0].driver, ModbusDeviceConfig)
    assert cfg.opcua[0].on_comm_loss == "alarm" and cfg.opcua[0].watchdog is None
    assert cfg.sync is None
    # default detector tags: not writable, not a Modbus bit
    assert cfg.detector_tags() == ["speed", "current", "pressure"]
    spec = cfg.detector_spec()
    assert isinstance(spec, DetectorSpec)
    assert (spec.limits["pressure"].lo, spec.limits["pressure"].hi) == (0, 200)


def test_stale_timeout_default_is_three_intervals_but_at_least_two_seconds(tmp_path):
    cfg = load_config(write(tmp_path, BASE.replace("poll_interval_s = 0.1", "poll_interval_s = 5")))
    assert cfg.modbus[0].effective_stale_timeout_s() == 15.0
    assert cfg.opcua[0].effective_stale_timeout_s() == 2.0  # 3 x 100 ms publishing < 2 s
    cfg = load_config(write(tmp_path, BASE.replace(PRESS, PRESS + "stale_timeout_s = 0.4\n")))
    assert cfg.modbus[0].effective_stale_timeout_s() == 0.4


@pytest.mark.parametrize("name", sorted(plugins()))
def test_plc_settings_never_collide_with_driver_keys(name):
    assert not set(PlcSettings.model_fields) & set(plugins()[name].config.model_fields)


def test_plc_settings_sit_in_the_driver_table(tmp_path):
    text = BASE.replace('name = "conv"\n', 'name = "conv"\nstale_timeout_s = 0.5\n'
                        'on_comm_loss = "safe_state"\n'
                        'safe_state = [{tag = "gate", value = true}]\n'
                        'watchdog = {tag = "hb", period_s = 0.5}\n')
    plc = load_config(write(tmp_path, text)).opcua[0]
    assert isinstance(plc, Plc) and plc.protocol == "opcua"
    assert (plc.stale_timeout_s, plc.on_comm_loss, plc.watchdog.tag, plc.watchdog.period_s) == (
        0.5, "safe_state", "hb", 0.5)
    assert plc.safe_state[0].tag == "gate" and plc.name == "conv"


def test_dumped_config_validates_again(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    again = line_model().model_validate(cfg.model_dump())
    assert again == cfg
    assert isinstance(again.modbus[0], Plc) and again.modbus[0].protocol == "modbus"


def test_relative_certificate_paths_resolve_against_the_config_file(tmp_path):
    text = BASE.replace('endpoint = "opc.tcp://127.0.0.1:4840"\n', '''endpoint = "opc.tcp://127.0.0.1:4840"
  [opcua.security]
  policy = "Basic256Sha256"
  mode = "Sign"
  client_certificate = "pki/client.der"
  client_private_key = "/abs/key.pem"
''')
    sec = load_config(write(tmp_path, text)).opcua[0].driver.security
    assert sec.client_certificate == tmp_path / "pki/client.der"
    assert sec.client_private_key == Path("/abs/key.pem")


# --- one line per problem ----------------------------------------------------------------------

def test_toml_syntax_error_format(tmp_path):
    path = write(tmp_path, '[controller]\nsite = "s1"\nline = "l1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}:3:") and "TOML syntax error" in line


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    (line,) = info.value.problems
    assert "nope.toml" in line and "cannot read" in line


def test_several_problems_give_one_line_each(tmp_path):
    text = BASE.replace('site = "s1"', 'site = "s1"\napi_port = 0\nlog_level = "loud"')
    found = problems(tmp_path, text)
    assert len(found) == 2
    assert found[0].startswith("controller.api_port: ") and "greater than or equal to 1" in found[0]
    assert found[1].startswith("controller.log_level: ")


def test_unknown_key_suggests_the_right_one(tmp_path):
    msg = one_problem(tmp_path, BASE.replace('site = "s1"', 'site = "s1"\napi_prot = 9000'))
    assert msg.startswith("controller.api_prot: unknown key; did you mean 'api_port'?")


def test_unknown_key_in_a_plc_table_lists_driver_and_controller_keys(tmp_path):
    msg = one_problem(tmp_path, BASE.replace('name = "press"\n', 'name = "press"\nstale_timout_s = 1\n'))
    assert msg.startswith("modbus[0].stale_timout_s: unknown key; did you mean 'stale_timeout_s'?")
    assert "poll_interval_s" in msg and "watchdog" in msg


def test_driver_errors_keep_the_plc_key_path(tmp_path):
    msg = one_problem(tmp_path, BASE.replace("opc.tcp://127.0.0.1:4840", "http://x"))
    assert msg.startswith("opcua[0]: ") and "opc.tcp://" in msg
    msg = one_problem(tmp_path, BASE.replace('poll_interval_s = 0.1', 'poll_interval_s = "fast"'))
    assert msg.startswith("modbus[0].poll_interval_s: ") and "'fast'" in msg


@pytest.mark.parametrize(("key", "alt"), [("password", "password_env"), ("token", "token_env")])
def test_literal_secrets_are_refused(tmp_path, key, alt):
    text = BASE + f'\n[sync]\nurl = "http://x"\norg = "o"\nbucket = "b"\n{key} = "hunter2"\n'
    msg = one_problem(tmp_path, text)
    assert msg.startswith(f"sync.{key}: ") and alt in msg
    assert "hunter2" not in msg


def test_password_in_opcua_security_is_refused(tmp_path):
    text = BASE.replace('endpoint = "opc.tcp://127.0.0.1:4840"\n', 'endpoint = "opc.tcp://127.0.0.1:4840"\n'
                        '  [opcua.security]\n  username = "u"\n  password = "pw"\n')
    msg = one_problem(tmp_path, text)
    assert msg.startswith("opcua[0].security.password: ") and "password_env" in msg


def test_an_env_key_holding_the_secret_itself_is_refused(tmp_path):
    text = BASE + '\n[sync]\nurl = "http://x"\norg = "o"\nbucket = "b"\ntoken_env = "abc/123=="\n'
    msg = one_problem(tmp_path, text)
    assert msg.startswith("sync.token_env: ") and "NAME of an environment variable" in msg


def test_detector_spec_errors_name_each_key(tmp_path):
    text = BASE.replace('[detector]\n', '[detector]\nspec = { ewma_alpha = 2.0, warmup = 0, wobble = 1 }\n')
    found = problems(tmp_path, text)
    assert [f.split(":")[0] for f in found] == ["detector.spec.wobble", "detector.spec.ewma_alpha",
                                                 "detector.spec.warmup"]
    assert "expected 0 < value <= 1" in found[1]


def test_detector_spec_limits_point_to_detector_limits(tmp_path):
    text = BASE.replace('[detector]\n', '[detector]\nspec = { limits = {} }\n')
    assert one_problem(tmp_path, text).startswith("detector.spec.limits: set hard limits in [detector.limits")


def test_limits_must_be_ordered(tmp_path):
    msg = one_problem(tmp_path, BASE.replace("{ lo = 0, hi = 200 }", "{ lo = 5, hi = 1 }"))
    assert msg.startswith("detector.limits.pressure: ") and "must be < hi" in msg


def test_bad_condition_names_the_list_index(tmp_path):
    msg = one_problem(tmp_path, BASE.replace('["speed > 50"]', '["speed > 1", "speed >> 3"]'))
    assert msg.startswith("actions[0].interlocks[1]: expected '<tag> <op> <number>'")


def test_bad_alarm_source(tmp_path):
    msg = one_problem(tmp_path, BASE.replace(SRC, 'source = "tag:pressure:wobble"'))
    assert msg.startswith("alarms[1].source: expected 'tag:<tag>:<flag>'") and "flatline" in msg
    msg = one_problem(tmp_path, BASE.replace(SRC, 'source = "sensor:pressure"'))
    assert msg.startswith("alarms[1].source: expected 'line'")


def test_deadband_only_on_threshold_sources(tmp_path):
    msg = one_problem(tmp_path, BASE.replace(SRC, SRC + "\ndeadband = 2"))
    assert msg.startswith("alarms[1]: deadband applies only to threshold sources")
    cfg = load_config(write(tmp_path, BASE.replace(SRC, 'source = "threshold:pressure > 150"\ndeadband = 2')))
    assert cfg.alarms[1].source.condition.holds(149.0, active=True, deadband=2)


# --- cross-references ---------------------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "key", "needle"), [
    (WRITE, 'write = { tag = "stpo"', "actions[0].write.tag", "unknown tag 'stpo' (did you mean 'stop'?)"),
    (WRITE, 'write = { tag = "speed"', "actions[0].write.tag", "tag 'speed' is not writable"),
    (WRITE + ", value = true }", 'write = { tag = "gate", value = 2 }', "actions[0].write.value",
     "is a coil; expected true/false"),
    ('["speed > 50"]', '["sped > 50"]', "actions[0].interlocks[0]", "unknown tag 'sped'"),
    ('alarm = "anomaly"', 'alarm = "anomly"', "actions[0].alarm",
     "unknown alarm 'anomly' (did you mean 'anomaly'?)"),
    ('name = "pressure_limit"', 'name = "anomaly"', "alarms[1].name", "alarm name 'anomaly' is already used"),
    (SRC, 'source = "tag:presure:limit"', "alarms[1].source", "unknown tag 'presure'"),
    (SRC, 'source = "tag:stop:limit"', "alarms[1].source", "not a detector tag"),
    (SRC, 'source = "tag:speed:limit"', "alarms[1].source", "has no hard limits"),
    (SRC, 'source = "comm:pump"', "alarms[1].source", "unknown PLC 'pump'"),
    (SRC, 'source = "action_failed:stop"', "alarms[1].source", "unknown action 'stop'"),
    (SRC, 'source = "threshold:temp > 3"', "alarms[1].source", "unknown tag 'temp'"),
    (SRC, SRC + '\nsuppress_when = "runing == 1"', "alarms[1].suppress_when",
     "unknown tag 'runing' (did you mean 'running'?)"),
    ('model = "model.npz"\n', "", "alarms[0].source", "source 'line' needs a fitted model"),
    (DET, DET + 'tags = ["pressure", "nope"]\n', "detector.tags[1]", "unknown tag 'nope'"),
    (DET, DET + 'tags = ["pressure", "pressure"]\n', "detector.tags[1]", "listed twice"),
    (DET, DET + 'units = { spede = "rpm" }\n', "detector.units.spede", "unknown tag 'spede'"),
    (DET, DET + 'units = { stop = "-" }\n', "detector.units.stop", "not a detector tag"),
    (PRESS, 'name = "conv"\n', "modbus[0].name", "PLC name 'conv' is already used by opcua[0]"),
    ('name = "mb_hb"', 'name = "hb"', "modbus[0].tags[3].name",
     "tag 'hb' is already defined in opcua[0].tags[3]"),
    (PRESS, PRESS + "stale_timeout_s = 0.1\n", "modbus[0].stale_timeout_s",
     "must be longer than the PLC's acquisition interval"),
    (PRESS, PRESS + 'on_comm_loss = "safe_state"\n', "modbus[0].safe_state", "needs safe_state"),
    (PRESS, PRESS + 'safe_state = [{tag = "stop", value = true}]\n', "modbus[0].on_comm_loss",
     "on_comm_loss is 'alarm'"),
    (PRESS, PRESS + 'on_comm_loss = "safe_state"\nsafe_state = [{tag = "speed", value = 1}]\n',
     "modbus[0].safe_state[0].tag", "tag 'speed' is not writable"),
    (PRESS, PRESS + 'watchdog = {tag = "hbb"}\n', "modbus[0].watchdog.tag", "unknown watchdog tag 'hbb'"),
    (PRESS, PRESS + 'watchdog = {tag = "pressure"}\n', "modbus[0].watchdog.tag", "not writable"),
    (PRESS, PRESS + 'watchdog = {tag = "hb"}\n', "modbus[0].watchdog.tag", "belongs to PLC 'conv'"),
    (PRESS, PRESS + 'watchdog = {tag = "gate"}\n', "modbus[0].watchdog.tag", "is a coil"),
    (PRESS, PRESS + 'watchdog = {tag = "mb_hb", wrap = 100000}\n', "modbus[0].watchdog.wrap",
     "does not fit uint16"),
])
def test_cross_reference_errors(tmp_path, old, new, key, needle):
    assert old in BASE
    msg = one_problem(tmp_path, BASE.replace(old, new, 1))
    assert msg.startswith(f"{key}: "), msg
    assert needle in msg, msg


def test_model_based_flags_need_a_model(tmp_path):
    text = BASE.replace('model = "model.npz"\n', "")
    text = text.replace('source = "line"', 'source = "tag:speed:ewma_z"')
    msg = one_problem(tmp_path, text)
    assert msg.startswith("alarms[0].source: flag 'ewma_z' needs a fitted model")
    assert load_config(write(tmp_path, text.replace("tag:speed:ewma_z", "tag:speed:invalid")))


NO_MODEL_FLATLINE = BASE.replace('model = "model.npz"\n', "").replace('source = "line"',
                                                                      'source = "tag:speed:flatline"')


def test_without_a_model_flatline_runs_for_the_tags_of_detector_flatline_s(tmp_path):
    msg = one_problem(tmp_path, NO_MODEL_FLATLINE)
    assert msg == ("alarms[0].source: tag 'speed' has no flatline time: without a model add "
                   "[detector.flatline_s] speed = <seconds>, or set [detector] model")
    text = NO_MODEL_FLATLINE.replace(DET, DET + "  [detector.flatline_s]\n  speed = 30.0\n", 1)
    cfg = load_config(write(tmp_path, text))
    assert cfg.detector.flatline_s == {"speed": 30.0}
    other = text.replace("speed = 30.0", "current = 30.0")  # flatline for another tag only
    assert one_problem(tmp_path, other).startswith("alarms[0].source: tag 'speed' has no flatline time")


@pytest.mark.parametrize("entry, needle", [
    ("speed = 0.0", "detector.flatline_s.speed: Input should be greater than 0"),
    ("speed = -1.0", "detector.flatline_s.speed: Input should be greater than 0"),
    ("speed = inf", "detector.flatline_s.speed: Input should be a finite number"),
    ("speed = 100000.0", "detector.flatline_s.speed: Input should be less than or equal to 86400"),
    ('speed = "30"', "detector.flatline_s.speed: Input should be a valid number"),
    ("stop = 30.0", "detector.flatline_s.stop: tag 'stop' is not a detector tag"),
    ("nope = 30.0", "detector.flatline_s.nope: unknown tag 'nope'"),
])
def test_detector_flatline_s_is_range_checked_and_names_detector_tags(tmp_path, entry, needle):
    text = NO_MODEL_FLATLINE.replace(DET, DET + f"  [detector.flatline_s]\n  {entry}\n", 1)
    found = problems(tmp_path, text)
    assert any(f.startswith(needle) for f in found), found


def test_detector_flatline_s_with_a_model_is_refused(tmp_path):
    limits = "  pressure = { lo = 0, hi = 200 }\n"
    msg = one_problem(tmp_path, BASE.replace(limits, limits + "  [detector.flatline_s]\n  speed = 30.0\n"))
    assert msg.startswith("detector.flatline_s: is for the rules-only detector (no [detector] model)")


def test_an_alarm_cannot_take_the_name_of_a_builtin_safe_state_alarm(tmp_path):
    safe = PRESS + 'on_comm_loss = "safe_state"\nsafe_state = [{tag = "gate", value = true}]\n'
    text = BASE.replace(PRESS, safe).replace('name = "pressure_limit"', 'name = "press_safe_state_failed"')
    assert one_problem(tmp_path, text) == (
        "alarms[1].name: alarm name 'press_safe_state_failed' is reserved: the controller raises it when "
        "a safe-state write of PLC 'press' fails; rename this alarm")
    # Only a PLC that goes to a safe state has that alarm: the name is free otherwise.
    free = BASE.replace('name = "pressure_limit"', 'name = "press_safe_state_failed"')
    assert load_config(write(tmp_path, free))


def test_modbus_string_tags_are_display_only(tmp_path):
    string = ('  [[modbus.tags]]\n  name = "recipe"\n  table = "holding_register"\n  address = 20\n'
              '  dtype = "string"\n  length = 4\n')
    text = BASE.replace("[detector]\n", string + "\n[detector]\n", 1)
    cfg = load_config(write(tmp_path, text))
    assert "recipe" in cfg.tags() and "recipe" not in cfg.detector_tags()  # not in the default list
    listed = text.replace(DET, DET + 'tags = ["pressure", "recipe"]\n', 1)
    assert one_problem(tmp_path, listed) == (
        "detector.tags[1]: tag 'recipe' carries text (for display only), never a detector "
        "value; remove it from [detector] tags")


def test_action_cannot_be_triggered_by_its_own_failure(tmp_path):
    text = BASE + '\n[[alarms]]\nname = "stop_failed"\nsource = "action_failed:stop_line"\n'
    assert load_config(write(tmp_path, text))
    msg = one_problem(tmp_path, text.replace('alarm = "anomaly"', 'alarm = "stop_failed"'))
    assert msg.startswith("actions[0].alarm: ") and "its own failure" in msg


def test_no_plc_is_an_error(tmp_path):
    text = '[controller]\nsite = "s"\nline = "l"\n'
    assert one_problem(tmp_path, text).startswith("(top level): no PLC defined; add at least one ")


def test_cross_reference_problems_are_all_reported(tmp_path):
    text = BASE.replace(WRITE, 'write = { tag = "nope"').replace('alarm = "anomaly"', 'alarm = "x"')
    found = problems(tmp_path, text)
    assert [f.split(":")[0] for f in found] == ["actions[0].alarm", "actions[0].write.tag"]


def test_limits_and_inf(tmp_path):
    cfg = load_config(write(tmp_path, BASE.replace("{ lo = 0, hi = 200 }", "{ hi = 200 }")))
    assert cfg.detector_spec().limits["pressure"].lo == -math.inf


def test_base_is_valid_toml():
    tomllib.loads(BASE)


def test_minimal_example_in_the_reference_loads(tmp_path):
    doc = (ROOT / "docs/configuration.md").read_text()
    block = re.search(r"## A minimal line\n\n```toml\n(.*?)```", doc, re.S).group(1)
    cfg = load_config(write(tmp_path, block))
    assert cfg.detector_tags() == ["pressure"] and cfg.action("stop_press").latch


# --- PLC tables come from the driver registry --------------------------------------------------

def test_an_unknown_top_level_table_names_the_sections_and_the_installed_drivers(tmp_path):
    msg = one_problem(tmp_path, BASE + '\n[[profinett]]\nname = "x"\n')
    assert msg.startswith("profinett: unknown section; expected one of: controller, detector, alarms, "
                          "actions, sync, mqtt, "), msg  # then the sections added since ([history], ...)
    assert "history" in msg and ", or a PLC table of an installed driver: " in msg, msg
    assert "[[modbus]]" in msg and "[[opcua]]" in msg
    assert one_problem(tmp_path, BASE + '\n[[modbuss]]\nname = "x"\n').startswith(
        "modbuss: unknown section; did you mean 'modbus'?")


class ToyTag(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    writable: bool = False


class ToyConfig(BaseModel):
    """A third protocol the schema has never heard of: only the registry knows it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    endpoint: str = "toy://here"
    period_s: float = Field(default=0.5, ge=0.01, le=10.0)
    tags: list[ToyTag]

    def acquisition_interval_s(self) -> float:
        return self.period_s

    def write_problem(self, tag: str, value: bool | int | float) -> str | None:
        return None if value in (0, 1) else f"tag {tag!r} takes 0 or 1, got {value!r}"

    def counter_problem(self, tag: str, wrap: int) -> str | None:
        return None

    def value_kind(self, tag: str) -> str | None:
        return "number"


@pytest.fixture
def toy_driver():
    from drivers import registry

    registry.register(registry.DriverPlugin(name="toy", config=ToyConfig, create=lambda cfg: None))
    yield
    registry.unregister("toy")


TOY = '''
[[toy]]
name = "bench"
period_s = 2.0
stale_timeout_s = 7.0
  [[toy.tags]]
  name = "level"
  [[toy.tags]]
  name = "valve"
  writable = true
'''


def test_a_registered_driver_gets_its_own_plc_table(tmp_path, toy_driver):
    cfg = load_config(write(tmp_path, BASE + TOY))
    plc = cfg.plc("bench")
    assert plc.protocol == "toy" and isinstance(plc.driver, ToyConfig) and plc.stale_timeout_s == 7.0
    assert [loc for loc, _ in cfg.plcs()] == [("opcua", 0), ("modbus", 0), ("toy", 0)]
    assert cfg.tags()["level"].protocol == "toy" and "level" in cfg.detector_tags()
    default = load_config(write(tmp_path, BASE + TOY.replace("stale_timeout_s = 7.0\n", "")))
    assert default.plc("bench").effective_stale_timeout_s() == 6.0  # 3 x the driver's 2 s
    # the driver's ranges and its write check, with the exact key path
    assert one_problem(tmp_path, BASE + TOY.replace("period_s = 2.0", "period_s = 99.0")).startswith(
        "toy[0].period_s: Input should be less than or equal to 10")
    bad_write = BASE + TOY.replace('name = "bench"\n', 'name = "bench"\non_comm_loss = "safe_state"\n'
                                   'safe_state = [{tag = "valve", value = 5}]\n')
    assert one_problem(tmp_path, bad_write) == "toy[0].safe_state[0].value: tag 'valve' takes 0 or 1, got 5"


def test_plc_tables_keep_the_order_of_the_file(tmp_path):
    head, rest = BASE.split("[[opcua]]", 1)
    opcua, modbus_and_more = rest.split("[[modbus]]", 1)
    swapped = head + "[[modbus]]" + modbus_and_more.replace("[detector]", f"[[opcua]]{opcua}[detector]", 1)
    assert [loc[0] for loc, _ in load_config(write(tmp_path, BASE)).plcs()] == ["opcua", "modbus"]
    cfg = load_config(write(tmp_path, swapped))
    assert [loc[0] for loc, _ in cfg.plcs()] == ["modbus", "opcua"]
    assert [loc[0] for loc, _ in line_model().model_validate(cfg.model_dump()).plcs()] == ["modbus", "opcua"]

"""What every driver config model answers for the controller (drivers.registry.DriverConfig)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.modbus import ModbusDeviceConfig
from drivers.opcua import OpcUaConfig, OpcUaGroup

MODBUS = {"name": "press", "host": "127.0.0.1", "poll_interval_s": 0.5, "tags": [
    {"name": "run", "table": "coil", "address": 0, "dtype": "bool", "writable": True},
    {"name": "flag", "table": "holding_register", "address": 1, "dtype": "bool", "bit": 3, "writable": True},
    {"name": "beat", "table": "holding_register", "address": 2, "dtype": "int16", "writable": True},
    {"name": "temp", "table": "holding_register", "address": 3, "dtype": "uint16", "scale": 0.1,
     "writable": True},
    {"name": "label", "table": "input_register", "address": 0, "dtype": "string", "length": 2},
    {"name": "level", "table": "input_register", "address": 2, "dtype": "float32"},
]}
OPCUA = {"name": "oven", "endpoint": "opc.tcp://127.0.0.1:4840", "tags": [
    {"name": "t", "node": "nsu=urn:x;s=T", "group": "fast"},
    {"name": "p", "node": "i=2258", "group": "slow"}],
    "groups": [{"name": "fast", "publishing_interval_ms": 250},
               {"name": "slow", "mode": "polling", "poll_interval_ms": 2000}]}


def test_modbus_answers_for_its_tags():
    cfg = ModbusDeviceConfig.model_validate(MODBUS)
    assert cfg.acquisition_interval_s() == 0.5
    assert cfg.write_problem("run", True) is None and cfg.write_problem("beat", -7) is None
    assert cfg.write_problem("run", 7) == "tag 'run' is a coil; expected true/false (or 1/0), got 7"
    assert "is a bit" in cfg.write_problem("flag", 2)
    assert "outside int16" in cfg.write_problem("beat", 40000)
    assert "whole numbers only" in cfg.write_problem("beat", 1.5)
    assert cfg.write_problem("temp", 12.3) is None  # scaled: rounds to the resolution
    assert "coil" in cfg.counter_problem("run", 10)
    assert cfg.counter_problem("beat", 1 << 15) is None
    assert cfg.counter_problem("beat", 1 << 16) == "65536 does not fit int16 tag 'beat'; expected <= 32768"
    kinds = [cfg.value_kind(n) for n in ("run", "flag", "label", "level")]
    assert kinds == ["bit", "number", "text", "number"]


def test_opcua_takes_the_slowest_group_and_leaves_types_to_the_connection():
    cfg = OpcUaConfig.model_validate(OPCUA)
    assert cfg.group("slow").poll_interval_s == 2.0
    assert cfg.acquisition_interval_s() == 2.0
    assert cfg.write_problem("t", 7) is None and cfg.counter_problem("t", 1 << 32) is None
    assert cfg.value_kind("t") is None


def test_poll_interval_in_seconds_or_the_older_milliseconds():
    assert OpcUaGroup(name="g", mode="polling", poll_interval_s=0.25).poll_interval_s == 0.25
    assert OpcUaGroup(name="g", mode="polling", poll_interval_ms=250).poll_interval_s == 0.25
    with pytest.raises(ValidationError, match="not both"):
        OpcUaGroup(name="g", poll_interval_ms=250, poll_interval_s=0.25)
    with pytest.raises(ValidationError, match=r"poll_interval_ms: 0 is out of range; expected 1 <= value"):
        OpcUaGroup(name="g", poll_interval_ms=0)


@pytest.mark.parametrize(("model", "data", "key"), [
    (ModbusDeviceConfig, {**MODBUS, "timeout_s": 0.001}, "timeout_s"),
    (ModbusDeviceConfig, {**MODBUS, "poll_interval_s": 7200}, "poll_interval_s"),
    (ModbusDeviceConfig, {**MODBUS, "poll_interval_s": float("inf")}, "poll_interval_s"),
    (ModbusDeviceConfig, {**MODBUS, "max_consecutive_timeouts": 5000}, "max_consecutive_timeouts"),
    (OpcUaConfig, {**OPCUA, "timeout_s": 1e9}, "timeout_s"),
    (OpcUaConfig, {**OPCUA, "session_timeout_s": 0.5}, "session_timeout_s"),
    (OpcUaConfig, {**OPCUA, "groups": [{"name": "fast", "queue_size": 20_000}, {"name": "slow"}]},
     "queue_size"),
    (OpcUaConfig, {**OPCUA, "groups": [{"name": "fast", "publishing_interval_ms": 0.5}, {"name": "slow"}]},
     "publishing_interval_ms"),
])
def test_durations_and_counts_have_ranges(model, data, key):
    with pytest.raises(ValidationError) as info:
        model.model_validate(data, strict=True)
    assert any(key in err["loc"] for err in info.value.errors())


def test_relative_certificate_paths_are_relative_to_the_config_file(tmp_path):
    sec = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "client_certificate": "pki/client.der",
           "client_private_key": "/abs/key.pem", "trust_server_certificate": True}
    cfg = OpcUaConfig.model_validate({**OPCUA, "security": sec}, strict=True,
                                     context={"base_dir": tmp_path / "line" / ".." / "site"})
    assert cfg.security.client_certificate == tmp_path / "site" / "pki" / "client.der"
    assert cfg.security.client_private_key == Path("/abs/key.pem")
    no_context = OpcUaConfig.model_validate({**OPCUA, "security": sec}, strict=True)
    assert no_context.security.client_certificate == Path("pki/client.der")

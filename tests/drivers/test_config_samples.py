"""Every TOML sample in the driver READMEs and docs/drivers.md validates against the driver's config model."""

import re
import tomllib
from pathlib import Path

import pytest

from drivers.modbus import ModbusDeviceConfig
from drivers.opcua import OpcUaConfig

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"modbus": ModbusDeviceConfig, "opcua": OpcUaConfig}
DOCS = ["drivers/modbus/README.md", "drivers/opcua/README.md", "docs/drivers.md"]


def samples():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", (ROOT / doc).read_text(), re.S)):
            yield pytest.param(doc, block, id=f"{doc}#{i}")


@pytest.mark.parametrize(("doc", "block"), list(samples()))
def test_sample_validates(doc, block):
    data = tomllib.loads(block)
    devices = [(key, dev) for key in MODELS for dev in data.get(key, [])]
    assert devices, f"{doc}: sample has no [[modbus]] or [[opcua]] device"
    for key, dev in devices:
        MODELS[key].model_validate(dev)

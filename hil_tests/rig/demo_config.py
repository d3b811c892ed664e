"""The demo line config (configs/demo_line.toml, shipped in the wheel as hil_tests/rig/demo_line.toml)
and the copies of it the rig runs: pointed at a writable state dir and at the rig's actual ports.

The shipped file's relative paths (`state_dir`, `model`) are relative to the file itself, which in
an installed wheel is inside site-packages: the demo and the HIL runs therefore never use it in
place but write a copy whose paths point where they may write.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("demo_line.toml")

_STATE_DIR = 'state_dir = "../state/demo_line"'
_MODEL = 'model = "../state/demo_line/model.npz"'
_ENDPOINT = 'endpoint = "opc.tcp://127.0.0.1:4840/linesentry/"'


def default_state_dir() -> Path:
    """Where `linesentry demo` and `hil` keep state and the fitted demo model unless told otherwise:
    $XDG_STATE_HOME/linesentry/demo (~/.local/state/linesentry/demo when XDG_STATE_HOME is unset)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "linesentry" / "demo"


def demo_text(state_dir: Path, model: Path, *, opcua_endpoint: str | None = None,
              modbus_port: int | None = None, api_port: int | None = None,
              template: Path = DEMO_CONFIG) -> str:
    """The demo config's TOML with its state dir and model (absolute), and optionally its ports, replaced.

    Each replaced line must occur exactly once: an edit of the demo config that breaks this fails
    loudly here instead of silently running against the shipped paths."""
    subs = [(re.escape(_STATE_DIR), f'state_dir = "{Path(state_dir).absolute()}"'),
            (re.escape(_MODEL), f'model = "{Path(model).absolute()}"')]
    if opcua_endpoint is not None:
        subs.append((re.escape(_ENDPOINT), f'endpoint = "{opcua_endpoint}"'))
    if modbus_port is not None:
        subs.append((r"^port = 5020$", f"port = {modbus_port}"))
    if api_port is not None:
        subs.append((r"^api_port = 8470$", f"api_port = {api_port}"))
    text = template.read_text()
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement.replace("\\", "\\\\"), text, flags=re.M)
        if n != 1:
            raise ValueError(f"{template}: expected one line matching {pattern!r}, found {n}")
    return text


def mqtt_text(host: str, port: int) -> str:
    """The [mqtt] and [mqtt.sparkplug] tables that make the demo line a Sparkplug B edge node
    (group demo-site, edge node demo-line) on the broker at host:port (docs/sparkplug.md)."""
    return f'\n[mqtt]\nbroker = "mqtt://{host}:{port}"\n\n[mqtt.sparkplug]\ntag_interval_s = 1.0\n'


def write_demo_config(state_dir: Path, *, opcua_port: int | None = None, modbus_port: int | None = None,
                      api_port: int | None = None, mqtt: tuple[str, int] | None = None) -> Path:
    """A copy of the demo config in `state_dir` (created) keeping its state and model there, optionally
    on other ports than 4840 (OPC UA), 5020 (Modbus) and 8470 (API) of 127.0.0.1, and (`mqtt`: host,
    port) publishing to an MQTT broker; its path."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    endpoint = None if opcua_port is None else f"opc.tcp://127.0.0.1:{opcua_port}/linesentry/"
    path = state_dir / "demo_line.toml"
    path.write_text(demo_text(state_dir, state_dir / "model.npz", opcua_endpoint=endpoint,
                              modbus_port=modbus_port, api_port=api_port)
                    + (mqtt_text(*mqtt) if mqtt is not None else ""))
    return path

"""The line configuration: one TOML file per line, validated with pydantic v2.

One module per concern: `base` (strict model, bounded durations, key paths), `controller`
([controller]), `plcs` (the PLC tables of every registered driver plugin plus the controller's
per-PLC settings), `detector`, `alarms`, `actions`, `line` (`LineConfig` and its views),
`crosscheck` (references between sections), `errors` (`ConfigError`, one line per problem),
`toml` (reading the file), `secrets`, `load` (`load_config`). See docs/configuration.md.

Names are imported on first use (PEP 562), so ``import controller.config.controller`` (the CLI's
operator commands) does not build the whole schema. The schema imports no numerical or protocol
library (numba, scipy, sklearn, asyncua, pymodbus, influxdb_client): tests/controller/test_config_imports.py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ActionConfig": "actions",
    "AlarmConfig": "alarms", "AlarmSource": "alarms", "PRIORITIES": "alarms", "Priority": "alarms",
    "MAX_DELAY_S": "base", "MAX_PERIOD_S": "base", "MAX_SHELVE_S": "base", "MIN_PERIOD_S": "base",
    "Seconds": "base",
    "ControllerSection": "controller",
    "DetectorSection": "detector", "LimitsEntry": "detector", "MODEL_FREE_FLAGS": "detector",
    "TAG_FLAGS": "detector",
    "ConfigError": "errors", "format_errors": "errors",
    "LineConfig": "line", "TagRef": "plcs", "line_model": "line",
    "load_config": "load", "load_controller_section": "controller",
    "Plc": "plcs", "PlcSettings": "plcs", "WatchdogConfig": "plcs", "WriteSpec": "plcs",
    "plc_model": "plcs", "safe_state_alarm_name": "plcs",
    "SECRET_KEYS": "secrets", "secret_values": "secrets",
}
__all__ = ["ActionConfig", "AlarmConfig", "AlarmSource", "ConfigError", "ControllerSection",
    "DetectorSection", "LimitsEntry", "LineConfig", "MAX_DELAY_S", "MAX_PERIOD_S", "MAX_SHELVE_S",
    "MIN_PERIOD_S", "MODEL_FREE_FLAGS", "PRIORITIES", "Plc", "PlcSettings", "Priority", "SECRET_KEYS",
    "Seconds", "TAG_FLAGS", "TagRef", "WatchdogConfig", "WriteSpec", "format_errors", "line_model",
    "load_config", "load_controller_section", "plc_model", "safe_state_alarm_name", "secret_values"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'controller.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"controller.config.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from controller.config.actions import ActionConfig
    from controller.config.alarms import PRIORITIES, AlarmConfig, AlarmSource, Priority
    from controller.config.base import MAX_DELAY_S, MAX_PERIOD_S, MAX_SHELVE_S, MIN_PERIOD_S, Seconds
    from controller.config.controller import ControllerSection, load_controller_section
    from controller.config.detector import MODEL_FREE_FLAGS, TAG_FLAGS, DetectorSection, LimitsEntry
    from controller.config.errors import ConfigError, format_errors
    from controller.config.line import LineConfig, line_model
    from controller.config.load import load_config
    from controller.config.plcs import (
        Plc,
        PlcSettings,
        TagRef,
        WatchdogConfig,
        WriteSpec,
        plc_model,
        safe_state_alarm_name,
    )
    from controller.config.secrets import SECRET_KEYS, secret_values

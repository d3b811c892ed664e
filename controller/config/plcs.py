"""PLC tables: one top-level array of tables per registered driver (``[[opcua]]``, ``[[modbus]]``,
``[[toy]]``), each table the driver's own keys plus the controller's per-PLC settings.

The schema never names a protocol: `plc_model(plugin)` builds the table model of any plugin from
`drivers.registry`. `Plc` splits one table: the settings (`PlcSettings`, reserved key names a
driver config must not use) become fields of the wrapper, every other key goes to the plugin's
config model under ``.driver``, untouched, so a driver's sample pastes in unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.config.base import MAX_PERIOD_S, MIN_PERIOD_S, Loc, Seconds, Strict

if TYPE_CHECKING:
    from drivers.registry import DriverPlugin


@dataclass(frozen=True)
class TagRef:
    """Where a tag lives: which PLC (and its protocol), whether it is writable, what kind of value."""

    name: str
    plc: str
    protocol: str  # the PLC table's name, a registered driver plugin
    loc: Loc  # key path of the tag's table, for error messages
    writable: bool
    kind: str | None  # "number", "bit" (a coil, a discrete input), "text", or None: known once connected


class WriteSpec(Strict):
    """One write: a writable tag and the value to put there (bools are written as 1/0)."""

    tag: str = Field(min_length=1)
    value: bool | int | float

    @field_validator("value")
    @classmethod
    def _finite(cls, v: bool | int | float) -> bool | int | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v


class WatchdogConfig(Strict):
    """Heartbeat: the controller writes an incrementing counter so PLC logic can see it is alive."""

    tag: str = Field(min_length=1)  # a writable tag of the same PLC
    period_s: float = Seconds(MIN_PERIOD_S, MAX_PERIOD_S, default=1.0)
    wrap: int = Field(default=1 << 16, ge=2, le=1 << 32)  # the counter runs 0 .. wrap-1, then 0 again


class PlcSettings(Strict):
    """Per-PLC controller settings, written in the PLC's own table next to the driver's keys."""

    # None: max(3 x interval, 2 s)
    stale_timeout_s: float | None = Seconds(MIN_PERIOD_S, MAX_PERIOD_S, default=None)
    on_comm_loss: Literal["alarm", "safe_state"] = "alarm"
    safe_state: list[WriteSpec] = Field(default_factory=list)  # writes done on comm loss
    watchdog: WatchdogConfig | None = None


SETTING_KEYS = frozenset(PlcSettings.model_fields)
FROM_FILE = "from_file"  # validation context key: the data is a TOML file's, never a dump


def plugin_failure(protocol: str, exc: BaseException) -> PydanticCustomError:
    """The one-line problem for a driver plugin that raised where it should have answered."""
    return PydanticCustomError(
        "driver_plugin", "the {protocol} driver plugin failed on this table ({error}); report it to the "
        "plugin's authors or remove the table",
        {"protocol": protocol, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"})


def safe_state_alarm_name(plc: str) -> str:
    """The alarm the controller adds for a PLC with on_comm_loss = 'safe_state' (reserved name)."""
    return f"{plc}_safe_state_failed"


class Plc(PlcSettings):
    """One PLC: the controller settings (fields here) and the driver's config (`driver`)."""

    protocol: ClassVar[str]  # the table name, the registered plugin's name
    driver: BaseModel

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any, info: ValidationInfo) -> Any:
        from_file = (info.context or {}).get(FROM_FILE, False)  # a TOML table is never split already
        if not isinstance(data, dict) or (not from_file and "driver" in data
                                          and set(data) <= SETTING_KEYS | {"driver"}):
            return data  # already split (e.g. model_validate of a dumped config)
        settings = {k: v for k, v in data.items() if k in SETTING_KEYS}
        return {**settings, "driver": {k: v for k, v in data.items() if k not in SETTING_KEYS}}

    @field_validator("driver", mode="wrap")
    @classmethod
    def _plugin_must_not_crash(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A bug in a driver plugin's config model (it raises something other than ValueError) is
        one problem at this table, not a traceback out of the whole load."""
        try:
            driver = handler(value)
            driver.endpoint, driver.acquisition_interval_s()  # what the controller asks of every PLC
            for t in driver.tags:
                driver.value_kind(t.name)
        except (ValidationError, PydanticCustomError):
            raise
        except Exception as exc:
            raise plugin_failure(cls.protocol, exc) from None
        return driver

    @property
    def name(self) -> str:
        return self.driver.name  # type: ignore[attr-defined]

    def acquisition_interval_s(self) -> float:
        """The slowest poll or publishing interval of this PLC (the driver knows)."""
        return self.driver.acquisition_interval_s()  # type: ignore[attr-defined]

    def effective_stale_timeout_s(self) -> float:
        """The configured timeout, else the larger of 3 x the slowest acquisition interval and 2 s.

        Subscriptions report on change only, so per-tag age is not a liveness signal there; the
        runtime measures the age of the PLC's last message (data or keep-alive).
        """
        if self.stale_timeout_s is not None:
            return self.stale_timeout_s
        return max(3.0 * self.acquisition_interval_s(), 2.0)


@cache
def plc_model(plugin: DriverPlugin) -> type[Plc]:
    """The table model of one driver plugin's PLCs (built once per plugin)."""
    clash = SETTING_KEYS & set(plugin.config.model_fields)
    if clash:  # a driver field would silently take over a controller setting
        raise TypeError(f"driver plugin {plugin.name!r}: its config uses the reserved PLC setting key(s) "
                        f"{', '.join(sorted(clash))}; rename them in the driver's config model")
    model = create_model(f"{plugin.name.title()}Plc", __base__=Plc, driver=(plugin.config, ...))
    model.protocol = plugin.name
    return model

"""`LineConfig`: everything one controller needs for one line, and the views derived from it.

The PLC tables are not fields written here: `line_model(plugins)` adds one list field per
registered driver plugin (``opcua``, ``modbus``, ``toy``, ...) to a subclass, so the schema
follows `drivers.registry` and never names a protocol. Every loaded config is a `LineConfig`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any, ClassVar

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.config.actions import ActionConfig
from controller.config.alarms import AlarmConfig
from controller.config.base import Strict
from controller.config.controller import ControllerSection
from controller.config.crosscheck import cross_check
from controller.config.detector import DetectorSection
from controller.config.history import HistorySection
from controller.config.models import ModelsSection
from controller.config.mqtt import MqttConfig, sparkplug_problems
from controller.config.plcs import Plc, TagRef, plc_model
from controller.sinks.config import SyncConfig
from drivers.registry import DriverPlugin, plugins
from models.spec import DetectorSpec, TagLimits

log = logging.getLogger(__name__)


class LineConfig(Strict):
    """Everything one controller needs for one line (PLC tables: see `line_model`)."""

    plc_tables: ClassVar[tuple[str, ...]] = ()  # the driver plugins' table names
    _file_order: tuple[str, ...] = PrivateAttr(default=())  # PLC tables in the order the file has them

    controller: ControllerSection
    detector: DetectorSection = Field(default_factory=DetectorSection)
    alarms: list[AlarmConfig] = Field(default_factory=list)
    actions: list[ActionConfig] = Field(default_factory=list)
    sync: SyncConfig | None = None  # absent: no cloud
    mqtt: MqttConfig | None = None  # absent: no MQTT (Sparkplug B, device shadow)
    history: HistorySection = Field(default_factory=HistorySection)  # detector frames on disk (refit)
    models: ModelsSection = Field(default_factory=ModelsSection)  # registry the shadow fetches models from

    # -- derived views ---------------------------------------------------------------------------

    def plc_table_order(self) -> tuple[str, ...]:
        """The PLC tables ([[opcua]], [[modbus]], ...) in the order the file first names them."""
        return (*self._file_order, *(t for t in self.plc_tables if t not in self._file_order))

    def plcs(self) -> Iterator[tuple[tuple[str, int], Plc]]:
        """(key path, PLC) for every PLC in file order (tables as `plc_table_order`)."""
        for table in self.plc_table_order():
            for i, plc in enumerate(getattr(self, table)):
                yield (table, i), plc

    def tags(self) -> dict[str, TagRef]:
        """Every tag by name, in PLC then tag order (first definition wins on a duplicate)."""
        out: dict[str, TagRef] = {}
        for loc, plc in self.plcs():
            for j, t in enumerate(plc.driver.tags):  # type: ignore[attr-defined]
                out.setdefault(t.name, TagRef(t.name, plc.name, plc.protocol, (*loc, "tags", j), t.writable,
                                              kind=plc.driver.value_kind(t.name)))  # type: ignore[attr-defined]
        return out

    def detector_tags(self) -> list[str]:
        """The detector's tags, in order: the explicit list, or every non-writable tag that is
        neither a bit nor text (a Modbus coil or string: for interlocks and display); a tag whose
        kind is known only once connected (OPC UA) counts as a number."""
        if self.detector.tags is not None:
            return list(self.detector.tags)
        return [r.name for r in self.tags().values() if not r.writable and r.kind not in ("bit", "text")]

    def detector_spec(self) -> DetectorSpec:
        """DetectorSpec from [detector.spec] with the hard limits of [detector.limits]."""
        spec = DetectorSpec.from_dict(self.detector.spec)
        limits = {k: TagLimits(v.lo, v.hi) for k, v in self.detector.limits.items()}
        return DetectorSpec(**{**{f: getattr(spec, f) for f in DetectorSpec.__dataclass_fields__},
                               "limits": limits})

    def plc(self, name: str) -> Plc:
        return next(p for _, p in self.plcs() if p.name == name)

    def alarm(self, name: str) -> AlarmConfig:
        return next(a for a in self.alarms if a.name == name)

    def action(self, name: str) -> ActionConfig:
        return next(a for a in self.actions if a.name == name)

    # -- cross-references ------------------------------------------------------------------------

    @model_validator(mode="wrap")
    @classmethod
    def _cross_check(cls, data: Any, handler: ModelWrapValidatorHandler[LineConfig]) -> LineConfig:
        cfg = handler(data)
        if isinstance(data, dict):
            cfg._file_order = tuple(k for k in data if k in cls.plc_tables)
        problems = cross_check(cfg) + sparkplug_problems(
            cfg.mqtt, cfg.controller.site, cfg.controller.line, ((loc, p.name) for loc, p in cfg.plcs()))
        if problems:
            raise PydanticCustomError("line_config", "{count} cross-reference problem(s)",
                                      {"count": len(problems), "problems": problems})
        return cfg

    @model_serializer(mode="wrap")
    def _in_file_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A dump keeps the PLC tables in file order, so validating it again gives the same PLC order."""
        out = handler(self)
        return {**{k: v for k, v in out.items() if k not in self.plc_tables},
                **{t: out[t] for t in self.plc_table_order() if t in out}}


@cache
def _line_model(drivers: tuple[DriverPlugin, ...]) -> type[LineConfig]:
    usable = []
    for p in drivers:
        if p.name in LineConfig.model_fields:  # a plugin named "alarms" must not replace [[alarms]]
            log.warning("driver plugin %r is named like the [%s] section of the line config; its tables "
                        "cannot be used: rename the plugin", p.name, p.name)
        else:
            usable.append(p)
    tables = {p.name: (list[plc_model(p)], Field(default_factory=list)) for p in usable}
    model = create_model("LineConfig", __base__=LineConfig, **tables)  # type: ignore[call-overload]
    model.plc_tables = tuple(tables)
    return model


def line_model(drivers: Mapping[str, DriverPlugin] | None = None) -> type[LineConfig]:
    """The schema for these driver plugins (default: every registered one), built once per set."""
    return _line_model(tuple((plugins() if drivers is None else drivers).values()))

"""The line configuration: one TOML file per line, validated with pydantic v2.

It composes the models other packages own instead of repeating their fields:

- ``[[opcua]]`` / ``[[modbus]]``: the drivers' own ``OpcUaConfig`` / ``ModbusDeviceConfig`` keys,
  *plus* four controller keys in the same table (``stale_timeout_s``, ``on_comm_loss``,
  ``safe_state``, ``watchdog``). `_Plc` splits the table: the controller keys become fields of
  the wrapper, every other key goes to the driver model under ``.driver``, untouched. The two
  key sets are disjoint (checked at import), so a driver sample pastes in unchanged.
- ``[detector.spec]``: ``models.DetectorSpec`` fields, validated by DetectorSpec itself.
- ``[sync]``: ``controller.sync.SyncConfig``.

`load_config(path)` raises `ConfigError` whose message has one line per problem:
``<file>: <key path>: <what is wrong and what is expected>``. Structural errors (types, unknown
keys, ranges) are reported first; cross-references (tags, alarms, actions, PLCs named elsewhere)
are checked once the structure is valid. Relative paths are resolved against the directory of
the TOML file. See docs/configuration.md for every key.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.conditions import TAG_NAME, Condition
from controller.sync import SyncConfig
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.config import BIT_TABLES
from drivers.opcua import OpcUaConfig
from drivers.opcua.config import OpcUaGroup, OpcUaTag
from models.kernels import FLAG_NAMES
from models.spec import DetectorSpec, TagLimits

Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: tuple[str, ...] = get_args(Priority)
TAG_FLAGS: tuple[str, ...] = tuple(FLAG_NAMES.values())  # invalid, limit, rate_of_change, ...
MODEL_FREE_FLAGS = frozenset({"invalid", "limit"})  # per-tag flags that run without a model
# (and 'flatline' for the tags of [detector.flatline_s])
SECRET_KEYS = {"password": "password_env", "token": "token_env", "secret": "secret_env"}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CERT_KEYS = ("client_certificate", "client_private_key", "server_certificate")
_WATCHDOG_MAX_WRAP = {"int16": 1 << 15, "uint16": 1 << 16, "int32": 1 << 31, "uint32": 1 << 32,
                      "float32": 1 << 24}


class ConfigError(ValueError):
    """A user mistake in a line config; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Every duration and count has a range (docs/configuration.md): a value outside it is refused at
# load, naming the key, instead of failing at run time (inf timeouts, 1e-9 s poll periods).
MAX_DELAY_S = 86_400.0  # on/off delays, min_interval_s: a day
MAX_SHELVE_S = 7 * 86_400.0  # a week
MIN_PERIOD_S = 0.01  # watchdog periods, stale timeouts, readback deadlines
MAX_PERIOD_S = 3_600.0
FlatlineSeconds = Annotated[float, Field(gt=0.0, le=MAX_DELAY_S, allow_inf_nan=False)]


def safe_state_alarm_name(plc: str) -> str:
    """The alarm the controller adds for a PLC with on_comm_loss = 'safe_state' (reserved name)."""
    return f"{plc}_safe_state_failed"


def Seconds(lo: float, hi: float, *, default: Any, lo_open: bool = False) -> Any:  # noqa: N802
    """A finite duration in [lo, hi] (or (lo, hi] with lo_open)."""
    bound = {"gt": lo} if lo_open else {"ge": lo}
    return Field(default=default, le=hi, allow_inf_nan=False, **bound)


def _as_path(v: Any) -> Any:
    """Strict mode refuses a str for a Path; TOML only has strings, so convert exactly those."""
    return Path(v) if isinstance(v, str) else v


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths are relative to the TOML file, not to wherever the service was started."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base) / value))


# --- [controller] ------------------------------------------------------------------------------

class ControllerSection(_Strict):
    """Identity of this controller (tags every cloud point carries), local state and API."""

    site: str = Field(min_length=1)
    line: str = Field(min_length=1)
    name: str = Field(default="", description="controller name; defaults to the line name")
    state_dir: Path = Field(default=Path("./state"), validate_default=True)  # relative to the TOML
    api_host: str = Field(default="127.0.0.1", min_length=1)
    api_port: int = Field(default=8470, ge=1, le=65535)
    # None: reads need no token on loopback and are forced to need one on any other bind.
    api_require_token_for_reads: bool | None = None
    api_allowed_hosts: list[str] = Field(default_factory=list)  # extra Host header names (DNS names)
    api_max_connections: int = Field(default=128, ge=4, le=10_000)
    api_idle_timeout_s: float = Seconds(1.0, 600.0, default=15.0)  # idle or slow-header connections
    shadow: bool = False  # global shadow mode: every action only logs what it would write
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_path(cls, v: Any) -> Any:
        return _as_path(v)

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: Path, info: ValidationInfo) -> Path:
        return _resolve(v, info)  # type: ignore[return-value]

    @field_validator("api_host")
    @classmethod
    def _api_host(cls, v: str) -> str:
        if any(c.isspace() for c in v) or "/" in v:
            raise ValueError(f"api_host must be a host name or an IP address, got {v!r}")
        return v

    @field_validator("api_allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9.])?|\[?[0-9A-Fa-f:.]+\]?", name):
                raise ValueError(f"expected host names without port or scheme, got {name!r}")
        return [n.lower().strip("[]") for n in v]

    @model_validator(mode="after")
    def _default_name(self) -> ControllerSection:
        if not self.name:
            object.__setattr__(self, "name", self.line)
        if self.api_require_token_for_reads is False and not _is_loopback(self.api_host):
            raise ValueError(f"api_host = {self.api_host!r} is reachable from other hosts, so reads "
                             "and the event stream must need a token: remove api_require_token_for_reads"
                             " = false (it is forced on) or set api_host = '127.0.0.1'")
        return self

    @property
    def loopback_only(self) -> bool:
        return _is_loopback(self.api_host)

    @property
    def reads_need_token(self) -> bool:
        """Forced on for any bind beyond loopback (0.0.0.0, a LAN address, a host name)."""
        return bool(self.api_require_token_for_reads) or not self.loopback_only


# --- PLC tables: driver config + controller settings --------------------------------------------

class WriteSpec(_Strict):
    """One write: a writable tag and the value to put there (bools are written as 1/0)."""

    tag: str = Field(min_length=1)
    value: bool | int | float

    @field_validator("value")
    @classmethod
    def _finite(cls, v: bool | int | float) -> bool | int | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v


class WatchdogConfig(_Strict):
    """Heartbeat: the controller writes an incrementing counter so PLC logic can see it is alive."""

    tag: str = Field(min_length=1)  # a writable tag of the same PLC
    period_s: float = Seconds(MIN_PERIOD_S, MAX_PERIOD_S, default=1.0)
    wrap: int = Field(default=1 << 16, ge=2, le=1 << 32)  # the counter runs 0 .. wrap-1, then 0 again


class PlcSettings(_Strict):
    """Per-PLC controller settings, written in the PLC's own [[opcua]] / [[modbus]] table."""

    # None: max(3 x interval, 2 s)
    stale_timeout_s: float | None = Seconds(MIN_PERIOD_S, MAX_PERIOD_S, default=None)
    on_comm_loss: Literal["alarm", "safe_state"] = "alarm"
    safe_state: list[WriteSpec] = Field(default_factory=list)  # writes done on comm loss
    watchdog: WatchdogConfig | None = None


_SETTING_KEYS = frozenset(PlcSettings.model_fields)
for _driver in (OpcUaConfig, ModbusDeviceConfig):
    _clash = _SETTING_KEYS & set(_driver.model_fields)
    if _clash:  # pragma: no cover - guards a future driver field against a silent takeover
        raise RuntimeError(f"{_driver.__name__} now has field(s) {sorted(_clash)} that the controller "
                           "uses for PLC settings; rename them in controller/config.py")


class _Plc(PlcSettings):
    """Splits one PLC table into controller settings (fields here) and the driver config."""

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or "driver" in data and set(data) <= _SETTING_KEYS | {"driver"}:
            return data  # already split (e.g. model_validate of a dumped config)
        settings = {k: v for k, v in data.items() if k in _SETTING_KEYS}
        driver = {k: v for k, v in data.items() if k not in _SETTING_KEYS}
        base = (info.context or {}).get("base_dir")
        security = driver.get("security")
        if base is not None and isinstance(security, dict):
            security = dict(security)
            for key in _CERT_KEYS:
                if isinstance(security.get(key), str) and not Path(security[key]).is_absolute():
                    security[key] = os.path.normpath(Path(base) / security[key])
        if isinstance(security, dict):
            driver["security"] = {k: _as_path(v) if k in _CERT_KEYS else v for k, v in security.items()}
        return {**settings, "driver": driver}

    @model_validator(mode="after")
    def _driver_ranges(self) -> _Plc:
        problems = list(_range_problems(self.driver, ()))  # type: ignore[attr-defined]
        if problems:
            raise PydanticCustomError("line_config", "{count} out-of-range value(s)",
                                      {"count": len(problems), "problems": problems})
        return self

    @property
    def name(self) -> str:
        return self.driver.name  # type: ignore[attr-defined]

    def acquisition_interval_s(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def effective_stale_timeout_s(self) -> float:
        """The configured timeout, else the larger of 3 x the slowest acquisition interval and 2 s.

        OPC UA subscriptions report on change only, so per-tag age is not a liveness signal
        there; the runtime measures the age of the PLC's last message (data or keep-alive).
        """
        if self.stale_timeout_s is not None:
            return self.stale_timeout_s
        return max(3.0 * self.acquisition_interval_s(), 2.0)


# Ranges of the drivers' duration and count keys, checked here so a value that the driver would
# turn into "no timeout" or a busy loop (inf, 1e-9) is refused at load: (model, key) -> (lo, hi).
DRIVER_RANGES: dict[tuple[type, str], tuple[float, float]] = {
    (OpcUaConfig, "timeout_s"): (0.01, 600.0),
    (OpcUaConfig, "session_timeout_s"): (1.0, 86_400.0),
    (OpcUaGroup, "sampling_interval_ms"): (0.0, 3_600_000.0),
    (OpcUaGroup, "publishing_interval_ms"): (1.0, 3_600_000.0),
    (OpcUaGroup, "poll_interval_ms"): (1.0, 3_600_000.0),
    (OpcUaGroup, "queue_size"): (0, 10_000),
    (OpcUaGroup, "deadband_value"): (0.0, 1e300),
    (OpcUaTag, "deadband_abs"): (0.0, 1e300),
    (ModbusDeviceConfig, "timeout_s"): (0.01, 60.0),
    (ModbusDeviceConfig, "poll_interval_s"): (0.001, 3_600.0),
    (ModbusDeviceConfig, "max_consecutive_timeouts"): (1, 1_000),
}


def _range_problems(model: BaseModel, loc: Loc) -> Iterator[tuple[Loc, str]]:
    for key, value in model:
        bounds = DRIVER_RANGES.get((type(model), key))
        if bounds is not None and isinstance(value, int | float) and not isinstance(value, bool):
            lo, hi = bounds
            if not (math.isfinite(value) and lo <= value <= hi):
                yield (*loc, key), f"{value!r} is out of range; expected {lo:g} <= value <= {hi:g}"
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                yield from _range_problems(item, (*loc, key, i) if isinstance(value, list) else (*loc, key))


class OpcUaPlc(_Plc):
    """One [[opcua]] table."""

    driver: OpcUaConfig

    def acquisition_interval_s(self) -> float:
        return max((g.publishing_interval_ms if g.mode == "subscription" else g.poll_interval_ms) / 1000.0
                   for g in self.driver.groups)


class ModbusPlc(_Plc):
    """One [[modbus]] table."""

    driver: ModbusDeviceConfig

    def acquisition_interval_s(self) -> float:
        return self.driver.poll_interval_s


@dataclass(frozen=True)
class TagRef:
    """Where a tag lives: which PLC (and protocol), whether it is writable, whether it is a bit."""

    name: str
    plc: str
    protocol: Literal["opcua", "modbus"]
    loc: tuple[str | int, ...]  # key path of the tag's table, for error messages
    writable: bool
    is_bit: bool  # a Modbus coil/discrete input; OPC UA types are unknown until connect
    dtype: str | None  # Modbus dtype; None for OPC UA


# --- [detector] --------------------------------------------------------------------------------

class LimitsEntry(_Strict):
    """Engineering hard limits of one tag -> models.TagLimits."""

    lo: float = -math.inf
    hi: float = math.inf

    @model_validator(mode="after")
    def _order(self) -> LimitsEntry:
        if not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo}) must be < hi ({self.hi})")
        return self


class DetectorSection(_Strict):
    """Which tags the detector watches, their units and limits, the model and its spec."""

    model: Path | None = None  # model artifact; without one only 'invalid', 'limit' (and flatline_s) run
    tags: list[str] | None = None  # None: every non-writable tag except Modbus bits
    units: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, LimitsEntry] = Field(default_factory=dict)
    # Rules-only detector (no model): seconds a tag's value may stay unchanged before its flatline
    # flag rises. With a model, flatline comes from the fit (flat_factor, flat_min_seconds).
    flatline_s: dict[str, FlatlineSeconds] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)  # models.DetectorSpec fields

    @field_validator("model", mode="before")
    @classmethod
    def _model_as_path(cls, v: Any) -> Any:
        return _as_path(v)

    @field_validator("model")
    @classmethod
    def _model_path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = sorted(set(DetectorSpec.__dataclass_fields__) - {"limits"})
        unknown = f"unknown detector setting; expected one of: {', '.join(allowed)}"
        problems = [(k, "set hard limits in [detector.limits.<tag>] (lo/hi), not in [detector.spec]"
                     if k == "limits" else unknown) for k in v if k not in allowed]
        try:
            DetectorSpec.from_dict({k: v[k] for k in v if k in allowed})
        except (ValueError, TypeError) as exc:
            problems += _spec_problems(str(exc))
        if problems:
            raise PydanticCustomError("detector_spec", "invalid detector spec", {"problems": problems})
        return v


def _spec_problems(message: str) -> list[tuple[str, str]]:
    """Split DetectorSpec's one ValueError ("a=1 (why); b=2 (why)") into (key, problem) pairs."""
    out = []
    for part in message.removeprefix("invalid detector spec: ").split("; "):
        key = re.match(r"^([a-z_]+)", part)
        out.append((key.group(1) if key else "", part))
    return out


# --- [[alarms]] and [[actions]] ------------------------------------------------------------------

def _parse_condition(v: Any) -> Any:
    return Condition.parse(v) if isinstance(v, str) else v


ConditionField = Annotated[Condition, BeforeValidator(_parse_condition)]

@dataclass(frozen=True)
class AlarmSource:
    """What an alarm watches, parsed from its `source` string."""

    kind: Literal["line", "tag", "comm", "action_failed", "threshold"]
    tag: str | None = None
    flag: str | None = None
    plc: str | None = None
    action: str | None = None
    condition: Condition | None = None

    @classmethod
    def parse(cls, text: str) -> AlarmSource:
        if text == "line":
            return cls("line")
        kind, sep, rest = text.partition(":")
        if sep and kind == "tag":
            tag, sep2, flag = rest.rpartition(":")
            if not sep2 or not re.fullmatch(TAG_NAME, tag) or flag not in TAG_FLAGS:
                raise ValueError(f"expected 'tag:<tag>:<flag>' with flag one of {', '.join(TAG_FLAGS)}, "
                                 f"got {text!r}")
            return cls("tag", tag=tag, flag=flag)
        if sep and kind == "comm" and rest:
            return cls("comm", plc=rest)
        if sep and kind == "action_failed" and rest:
            return cls("action_failed", action=rest)
        if sep and kind == "threshold":
            return cls("threshold", condition=Condition.parse(rest), tag=Condition.parse(rest).tag)
        raise ValueError("expected 'line', 'tag:<tag>:<flag>', 'comm:<plc>', 'action_failed:<action>' "
                         f"or 'threshold:<tag> <op> <number>', got {text!r}")

    def __str__(self) -> str:
        if self.kind == "line":
            return "line"
        if self.kind == "tag":
            return f"tag:{self.tag}:{self.flag}"
        if self.kind == "comm":
            return f"comm:{self.plc}"
        if self.kind == "action_failed":
            return f"action_failed:{self.action}"
        return f"threshold:{self.condition}"


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"expected letters, digits, '_', '.' or '-' only, got {v!r}")
    return v


class AlarmConfig(_Strict):
    """One ISA-18.2 alarm: what it watches, how urgent, delays, deadband, suppression by design."""

    name: str
    source: AlarmSource
    priority: Priority = "medium"
    on_delay_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    off_delay_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    deadband: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # threshold sources, tag units
    suppress_when: ConditionField | None = None
    max_shelve_s: float = Seconds(1.0, MAX_SHELVE_S, default=8 * 3600.0)
    shelvable: bool = True  # false: a safety alarm the operator can neither shelve nor take out of service
    message: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        return AlarmSource.parse(v) if isinstance(v, str) else v

    @field_serializer("source", "suppress_when")
    def _as_text(self, v: Any) -> str | None:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _deadband(self) -> AlarmConfig:
        if self.deadband and not (self.source.kind == "threshold" and self.source.condition.ordered):
            raise ValueError("deadband applies only to threshold sources with < <= > >= "
                             "(e.g. source = 'threshold:bearing_temp > 80'); remove it or set 0")
        return self


class ActionConfig(_Strict):
    """Binds an alarm to a write, guarded by interlocks, rate limit, latch and readback deadline."""

    name: str
    alarm: str = Field(min_length=1)
    write: WriteSpec
    interlocks: list[ConditionField] = Field(default_factory=list)  # all must hold to write
    latch: bool = False  # once fired, never again until an operator reset
    min_interval_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    confirm_within_s: float | None = Seconds(MIN_PERIOD_S, 600.0, default=1.0)  # readback deadline
    shadow: bool = False  # log "would write" instead of writing (global [controller].shadow wins)
    message: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_serializer("interlocks")
    def _as_text(self, v: list[Condition]) -> list[str]:
        return [str(c) for c in v]


# --- the whole line ------------------------------------------------------------------------------

class LineConfig(_Strict):
    """Everything one controller needs for one line."""

    controller: ControllerSection
    opcua: list[OpcUaPlc] = Field(default_factory=list)
    modbus: list[ModbusPlc] = Field(default_factory=list)
    detector: DetectorSection = Field(default_factory=DetectorSection)
    alarms: list[AlarmConfig] = Field(default_factory=list)
    actions: list[ActionConfig] = Field(default_factory=list)
    sync: SyncConfig | None = None  # absent: no cloud

    # -- derived views ---------------------------------------------------------------------------

    def plcs(self) -> Iterator[tuple[tuple[str, int], OpcUaPlc | ModbusPlc]]:
        """(key path, PLC) for every PLC: OPC UA ones first, then Modbus, each in file order."""
        for i, p in enumerate(self.opcua):
            yield ("opcua", i), p
        for i, m in enumerate(self.modbus):
            yield ("modbus", i), m

    def tags(self) -> dict[str, TagRef]:
        """Every tag by name, in PLC then tag order (first definition wins on a duplicate)."""
        out: dict[str, TagRef] = {}
        for loc, plc in self.plcs():
            for j, t in enumerate(plc.driver.tags):
                is_modbus = loc[0] == "modbus"
                out.setdefault(t.name, TagRef(
                    t.name, plc.name, loc[0], (*loc, "tags", j), t.writable,
                    is_bit=is_modbus and t.table in BIT_TABLES, dtype=t.dtype if is_modbus else None))
        return out

    def detector_tags(self) -> list[str]:
        """The detector's tags, in order: the explicit list, or every non-writable tag that is
        neither a Modbus bit nor a Modbus string (text is for display, never for a model)."""
        if self.detector.tags is not None:
            return list(self.detector.tags)
        return [r.name for r in self.tags().values()
                if not r.writable and not r.is_bit and r.dtype != "string"]

    def detector_spec(self) -> DetectorSpec:
        """DetectorSpec from [detector.spec] with the hard limits of [detector.limits]."""
        spec = DetectorSpec.from_dict(self.detector.spec)
        limits = {k: TagLimits(v.lo, v.hi) for k, v in self.detector.limits.items()}
        return DetectorSpec(**{**{f: getattr(spec, f) for f in DetectorSpec.__dataclass_fields__},
                               "limits": limits})

    def plc(self, name: str) -> OpcUaPlc | ModbusPlc:
        return next(p for _, p in self.plcs() if p.name == name)

    def alarm(self, name: str) -> AlarmConfig:
        return next(a for a in self.alarms if a.name == name)

    def action(self, name: str) -> ActionConfig:
        return next(a for a in self.actions if a.name == name)

    # -- cross-references ------------------------------------------------------------------------

    @model_validator(mode="after")
    def _cross_check(self) -> LineConfig:
        problems = _CrossCheck(self).run()
        if problems:
            raise PydanticCustomError("line_config", "{count} cross-reference problem(s)",
                                      {"count": len(problems), "problems": problems})
        return self


Loc = tuple[str | int, ...]


class _CrossCheck:
    """Every check that needs more than one section, collected (not stopped at the first)."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.problems: list[tuple[Loc, str]] = []
        self.tags = cfg.tags()

    def add(self, loc: Loc, msg: str) -> None:
        self.problems.append((loc, msg))

    def run(self) -> list[tuple[Loc, str]]:
        self._plcs()
        det = self._detector()
        self._alarms(det)
        self._actions()
        return self.problems

    def tag(self, loc: Loc, name: str, *, writable: bool = False, what: str = "tag") -> TagRef | None:
        ref = self.tags.get(name)
        if ref is None:
            close = difflib.get_close_matches(name, self.tags, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.add(loc, f"unknown {what} {name!r}{hint}; expected a tag defined in [[opcua.tags]] "
                          "or [[modbus.tags]]")
            return None
        if writable and not ref.writable:
            self.add(loc, f"tag {name!r} is not writable; set writable = true on it in {_fmt(ref.loc)} "
                          "or write to another tag")
            return None
        return ref

    def _plcs(self) -> None:
        cfg = self.cfg
        plcs = list(cfg.plcs())
        if not plcs:
            self.add(("opcua",), "no PLC defined; add at least one [[opcua]] or [[modbus]] table")
        first_plc: dict[str, Loc] = {}
        first_tag: dict[str, Loc] = {}
        for loc, plc in plcs:
            if plc.name in first_plc:
                self.add((*loc, "name"), f"PLC name {plc.name!r} is already used by "
                         f"{_fmt(first_plc[plc.name])}; PLC names must be unique")
            first_plc.setdefault(plc.name, loc)
            for j, t in enumerate(plc.driver.tags):
                if t.name in first_tag and first_tag[t.name][:2] != loc:
                    self.add((*loc, "tags", j, "name"), f"tag {t.name!r} is already defined in "
                             f"{_fmt(first_tag[t.name])}; tag names must be unique across PLCs")
                first_tag.setdefault(t.name, (*loc, "tags", j))
            interval = plc.acquisition_interval_s()
            if plc.stale_timeout_s is not None and plc.stale_timeout_s <= interval:
                self.add((*loc, "stale_timeout_s"), f"{plc.stale_timeout_s} s must be longer than the "
                         f"PLC's acquisition interval ({interval:g} s), e.g. {3 * interval:g}")
            if plc.on_comm_loss == "safe_state" and not plc.safe_state:
                self.add((*loc, "safe_state"), "on_comm_loss = 'safe_state' needs safe_state = "
                         "[{tag = '<writable tag>', value = <number>}, ...]")
            if plc.on_comm_loss == "alarm" and plc.safe_state:
                self.add((*loc, "on_comm_loss"), "safe_state writes are configured but on_comm_loss is "
                         "'alarm'; set on_comm_loss = 'safe_state' or remove safe_state")
            for k, w in enumerate(plc.safe_state):
                ref = self.tag((*loc, "safe_state", k, "tag"), w.tag, writable=True)
                if ref is not None:
                    self._value_fits((*loc, "safe_state", k, "value"), ref, w.value)
            if plc.watchdog is not None:
                self._watchdog((*loc, "watchdog"), plc)

    def _watchdog(self, loc: Loc, plc: OpcUaPlc | ModbusPlc) -> None:
        wd = plc.watchdog
        ref = self.tag((*loc, "tag"), wd.tag, writable=True, what="watchdog tag")
        if ref is None:
            return
        if ref.plc != plc.name:
            self.add((*loc, "tag"), f"watchdog tag {wd.tag!r} belongs to PLC {ref.plc!r}; a heartbeat must "
                     f"be written to the PLC that watches it ({plc.name!r})")
        elif ref.is_bit:
            self.add((*loc, "tag"), f"watchdog tag {wd.tag!r} is a coil; the heartbeat is a counter: use "
                     "a holding_register (e.g. dtype = 'uint16')")
        elif ref.dtype in _WATCHDOG_MAX_WRAP and wd.wrap > _WATCHDOG_MAX_WRAP[ref.dtype]:
            self.add((*loc, "wrap"), f"{wd.wrap} does not fit {ref.dtype} tag {wd.tag!r}; expected "
                     f"<= {_WATCHDOG_MAX_WRAP[ref.dtype]}")

    def _value_fits(self, loc: Loc, ref: TagRef, value: bool | int | float) -> None:
        if ref.is_bit and value not in (0, 1):
            self.add(loc, f"tag {ref.name!r} is a coil; expected true/false (or 1/0), got {value!r}")

    def _detector(self) -> set[str]:
        d = self.cfg.detector
        det_tags = self.cfg.detector_tags()
        if d.tags is not None:
            seen: set[str] = set()
            for i, name in enumerate(d.tags):
                if name in seen:
                    self.add(("detector", "tags", i), f"tag {name!r} is listed twice")
                seen.add(name)
                ref = self.tag(("detector", "tags", i), name)
                if ref is not None and ref.dtype == "string":
                    self.add(("detector", "tags", i), f"tag {name!r} is a Modbus string (text, for display "
                             "only), never a detector value; remove it from [detector] tags")
        det = set(det_tags)
        if d.flatline_s and d.model is not None:
            self.add(("detector", "flatline_s"), "is for the rules-only detector (no [detector] model); "
                     "with a model, flatline comes from the fit: remove [detector.flatline_s] or set "
                     "flat_factor / flat_min_seconds in [detector.spec] before `linesentry fit`")
        for section in ("units", "limits", "flatline_s"):
            for name in getattr(d, section):
                if name not in self.tags:
                    self.tag(("detector", section, name), name)
                elif name not in det:
                    self.add(("detector", section, name), f"tag {name!r} is not a detector tag; add it to "
                             "[detector] tags or remove this entry")
        return det

    def _alarms(self, det: set[str]) -> None:
        cfg = self.cfg
        plc_names = {p.name for _, p in cfg.plcs()}
        reserved = {safe_state_alarm_name(p.name): p.name for _, p in cfg.plcs()
                    if p.on_comm_loss == "safe_state"}
        action_names = {a.name for a in cfg.actions}
        seen: dict[str, int] = {}
        for i, a in enumerate(cfg.alarms):
            loc: Loc = ("alarms", i)
            if a.name in seen:
                self.add((*loc, "name"), f"alarm name {a.name!r} is already used by alarms[{seen[a.name]}]; "
                         "alarm names must be unique")
            if a.name in reserved:
                self.add((*loc, "name"), f"alarm name {a.name!r} is reserved: the controller raises it when "
                         f"a safe-state write of PLC {reserved[a.name]!r} fails; rename this alarm")
            seen.setdefault(a.name, i)
            src = a.source
            if src.kind == "line" and cfg.detector.model is None:
                self.add((*loc, "source"), "source 'line' needs a fitted model: set [detector] model = "
                         "'<path to model artifact>' (without one only per-tag flags run)")
            elif src.kind == "tag":
                if self.tag((*loc, "source"), src.tag) is not None:
                    if src.tag not in det:
                        self.add((*loc, "source"), f"tag {src.tag!r} is not a detector tag, so it has no "
                                 "flags; add it to [detector] tags")
                    elif src.flag == "flatline" and cfg.detector.model is None:
                        if src.tag not in cfg.detector.flatline_s:
                            self.add((*loc, "source"), f"tag {src.tag!r} has no flatline time: without a "
                                     f"model add [detector.flatline_s] {src.tag} = <seconds>, or set "
                                     "[detector] model")
                    elif src.flag not in MODEL_FREE_FLAGS and cfg.detector.model is None:
                        self.add((*loc, "source"), f"flag {src.flag!r} needs a fitted model ([detector] "
                                 "model); without one only 'invalid', 'limit' and 'flatline' (with "
                                 "[detector.flatline_s]) run")
                    elif src.flag == "limit" and src.tag not in cfg.detector.limits:
                        self.add((*loc, "source"), f"tag {src.tag!r} has no hard limits; add "
                                 f"[detector.limits.{src.tag}] with lo and/or hi")
            elif src.kind == "threshold":
                self.tag((*loc, "source"), src.tag)
            elif src.kind == "comm" and src.plc not in plc_names:
                self.add((*loc, "source"), f"unknown PLC {src.plc!r}; expected one of "
                         f"{', '.join(sorted(plc_names)) or '(none defined)'}")
            elif src.kind == "action_failed" and src.action not in action_names:
                self.add((*loc, "source"), f"unknown action {src.action!r}; expected one of "
                         f"{', '.join(sorted(action_names)) or '(none defined)'}")
            if a.suppress_when is not None:
                self.tag((*loc, "suppress_when"), a.suppress_when.tag)

    def _actions(self) -> None:
        cfg = self.cfg
        alarms = {a.name: a for a in cfg.alarms}
        seen: dict[str, int] = {}
        for i, act in enumerate(cfg.actions):
            loc: Loc = ("actions", i)
            if act.name in seen:
                self.add((*loc, "name"), f"action name {act.name!r} is already used by "
                         f"actions[{seen[act.name]}]; action names must be unique")
            seen.setdefault(act.name, i)
            alarm = alarms.get(act.alarm)
            if alarm is None:
                close = difflib.get_close_matches(act.alarm, alarms, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add((*loc, "alarm"), f"unknown alarm {act.alarm!r}{hint}; expected the name of an "
                         "[[alarms]] entry")
            elif alarm.source.kind == "action_failed" and alarm.source.action == act.name:
                self.add((*loc, "alarm"), f"alarm {act.alarm!r} is raised when this action fails; an action "
                         "cannot be triggered by its own failure")
            ref = self.tag((*loc, "write", "tag"), act.write.tag, writable=True)
            if ref is not None:
                self._value_fits((*loc, "write", "value"), ref, act.write.value)
            for k, cond in enumerate(act.interlocks):
                self.tag((*loc, "interlocks", k), cond.tag)


# --- loading and error formatting ----------------------------------------------------------------

MAX_CONFIG_BYTES = 16 << 20  # a line config is kilobytes; refuse anything absurd before parsing
MAX_NESTING = 32  # tables/arrays inside each other; real configs use 4


def load_config(path: str | Path) -> LineConfig:
    """Read and validate one line config; `ConfigError` lists every problem, one line each."""
    path = Path(path)
    data = _read_toml(path)
    problems = [f"{path}: {_fmt(loc)}: {msg}" for loc, msg in _secret_problems(data, ())]
    try:
        # strict: no "8470" -> 8470 or "yes" -> true coercion anywhere, driver tables included
        cfg = LineConfig.model_validate(data, strict=True, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        problems += [f"{path}: {line}" for line in format_errors(exc)]
        cfg = None
    if problems:
        raise ConfigError(problems)
    return cfg


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML, or ConfigError with one line saying what is wrong with the file itself."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; is this a line config?"])
    text = _decode(path, raw)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error(path, exc)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: TOML syntax error: arrays or tables nested too deeply "
                           f"(at most {MAX_NESTING} levels)"]) from None
    depth = _depth(data)
    if depth > MAX_NESTING:
        raise ConfigError([f"{path}: arrays or tables nested more than {MAX_NESTING} levels deep"])
    return data


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text; a UTF-8 BOM (Windows editors) is accepted, anything else named with the fix."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([f"{path}: the file is UTF-16 text; save it as UTF-8"])
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if b"\x00" in raw:
        raise ConfigError([f"{path}: contains NUL bytes: a binary file, not a TOML line config"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file "
                           "as UTF-8 (e.g. iconv -f latin1 -t utf-8)"]) from None


def _depth(data: Any) -> int:
    """Nesting depth of the parsed TOML, without recursion (the input decides how deep it is)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_NESTING:
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        return f"{path}:{m.group(1)}:{m.group(2)}: TOML syntax error: {msg[:m.start()].strip()}"
    return f"{path}: TOML syntax error: {msg}"


def _secret_problems(data: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Literal secrets are refused (and removed so they are not reported twice as unknown keys)."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield from _secret_problems(item, (*loc, i))
    elif isinstance(data, dict):
        for key in list(data):
            value = data[key]
            if key.lower() in SECRET_KEYS:
                alt = SECRET_KEYS[key.lower()]
                del data[key]
                yield (*loc, key), (f"secrets must not be written in the config file; set {alt} = "
                                    "'<NAME_OF_ENVIRONMENT_VARIABLE>' and export the secret in that variable")
            elif key.endswith("_env") and isinstance(value, str) and not _ENV_NAME.match(value):
                del data[key]
                yield (*loc, key), ("expected the NAME of an environment variable (letters, digits, _), "
                                    "not the secret itself")
            else:
                yield from _secret_problems(value, (*loc, key))


def format_errors(exc: ValidationError) -> list[str]:
    """One `<key path>: <problem>` line per pydantic error (cross-reference lists expanded)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] in ("line_config", "detector_spec"):
            for sub, msg in ctx["problems"]:
                sub_loc = (sub,) if isinstance(sub, str) else tuple(sub)
                lines.append(f"{_fmt((*loc, *sub_loc) if sub_loc != ('',) else loc)}: {msg}")
            continue
        lines.append(f"{_fmt(loc) or '(top level)'}: {_message(err, loc)}")
    return lines


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Hide the wrapper's internal `driver` level: opcua[0].driver.endpoint -> opcua[0].endpoint."""
    out = list(loc)
    if len(out) >= 3 and out[0] in ("opcua", "modbus") and out[2] == "driver":
        del out[2]
    return tuple(out)


def _message(err: dict[str, Any], loc: Loc) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}expected one of: {', '.join(allowed)}" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    if kind != "value_error" and not isinstance(value, dict | list) and len(repr(value)) < 80:
        msg += f" (got {value!r})"
    if kind in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        msg += "; write numbers and true/false without quotes"
    return msg


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys the model at `loc` accepts (for 'unknown key' messages); [] when unsure."""
    model: Any = LineConfig
    mapping = False  # the next string part is a free key of a [table.<name>] mapping
    for part in loc:
        if isinstance(part, int):
            continue
        if mapping:
            mapping = False
            continue
        fields = _fields(model)
        if part not in fields:
            return []
        model, mapping = _model_of(fields[part].annotation)
        if model is None:
            return []
    return [] if mapping else sorted(_fields(model))


def _fields(model: Any) -> dict[str, Any]:
    """A model's fields; a PLC wrapper offers its settings and its driver's keys as one table."""
    fields = dict(getattr(model, "model_fields", {}))
    if model in (OpcUaPlc, ModbusPlc):
        fields.update(fields.pop("driver").annotation.model_fields)
    return fields


def _model_of(annotation: Any) -> tuple[Any, bool]:
    """(pydantic model inside an annotation, whether it sits in a dict) or (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        return _model_of(get_args(annotation)[1])[0], True
    for arg in get_args(annotation):
        found, mapping = _model_of(arg)
        if found is not None:
            return found, mapping
    return None, False


def _fmt(loc: Loc) -> str:
    """('actions', 1, 'write', 'tag') -> 'actions[1].write.tag'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


def secret_values(cfg: LineConfig) -> list[str]:
    """The values of every secret the config names (`*_env` keys: passwords, the sync token), for
    the log scrubber. The sync token must be set when sync is on: SyncConfigError otherwise."""
    if cfg.sync is not None and cfg.sync.enabled:
        cfg.sync.token()
    out: list[str] = []
    stack: list[Any] = [cfg]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, BaseModel):
            for key, value in item:
                if key.endswith("_env") and isinstance(value, str) and os.environ.get(value):
                    out.append(os.environ[value])
                elif isinstance(value, BaseModel | list):
                    stack.append(value)
    return out

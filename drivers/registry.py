"""The driver registry: which protocols exist, found by name, never by an isinstance switch.

A driver is one folder under `drivers/` whose package exposes `PLUGIN = DriverPlugin(...)`, plus
one registration: an entry point in the group `linesentry.drivers` (the built-ins, and any
installed third-party package), or `register(plugin)` at run time (tests, embedding). The config
schema takes each plugin's `config` model for the TOML tables named `[[<name>]]`; the runtime
builds drivers with `create`; `linesentry validate --connect` uses `probe`.

Loading is cheap by contract: a plugin package imports its config model only; `create` and
`probe` import the protocol library (asyncua, pymodbus, ...) when first called.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from drivers.errors import DriverError, UnknownDriver

if TYPE_CHECKING:
    from pydantic import BaseModel

    from drivers.base import Driver
    from drivers.probe import ProbeReport

log = logging.getLogger(__name__)

GROUP = "linesentry.drivers"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a bare TOML key: [[opcua]], [[modbus]], [[toy]]
# The controller's per-PLC settings, written in the same TOML table as the driver's keys: a driver
# config must not define them (the controller's PlcSettings has exactly these fields; a test ties them).
RESERVED_KEYS = frozenset({"stale_timeout_s", "on_comm_loss", "safe_state", "watchdog"})


ValueKind = Literal["number", "bit", "text"]


class TagConfig(Protocol):
    name: str
    writable: bool


class DriverConfig(Protocol):
    """What the controller asks of one PLC's driver config (a strict pydantic model), by method.

    Its durations and counts carry their own ranges (Field ge/le); relative file paths are
    resolved against the validation context's "base_dir" (the TOML file's directory). It must not
    define the controller's per-PLC keys (stale_timeout_s, on_comm_loss, safe_state, watchdog).
    """

    name: str
    tags: Sequence[TagConfig]

    @property
    def endpoint(self) -> str: ...  # where the PLC is, for messages and `validate`

    def acquisition_interval_s(self) -> float: ...  # the slowest poll/publish interval

    def write_problem(self, tag: str, value: bool | int | float) -> str | None: ...

    def counter_problem(self, tag: str, wrap: int) -> str | None: ...  # a watchdog heartbeat counter

    def value_kind(self, tag: str) -> ValueKind | None: ...  # None: known only once connected


@dataclass(frozen=True)
class DriverPlugin:
    """Everything the controller needs of one protocol, without naming it."""

    name: str  # the TOML table of its PLCs: [[opcua]], [[modbus]], [[toy]]
    config: type[BaseModel]  # ONE PLC's driver keys; its module imports no protocol library
    create: Callable[[BaseModel], Driver]  # builds the Driver; imports the protocol library lazily
    probe: Callable[[BaseModel], Awaitable[ProbeReport]] | None = None  # connect, read each tag, close
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"driver plugin name {self.name!r} must be lower-case letters, digits and _ "
                             "(it is the TOML table name of its PLCs)")
        clash = RESERVED_KEYS & set(getattr(self.config, "model_fields", ()))
        if clash:  # checked here, so a bad plugin is refused alone instead of breaking the whole schema
            raise ValueError(f"driver plugin {self.name!r}: its config uses the reserved PLC setting key(s) "
                             f"{', '.join(sorted(clash))}; rename them in the driver's config model")


_registered: dict[str, DriverPlugin] = {}
_loaded: dict[str, DriverPlugin] | None = None  # from entry points, loaded once
_broken: dict[str, str] = {}  # entry point name -> why it cannot be used (one line)


def _load_entry_points() -> dict[str, DriverPlugin]:
    """The usable entry points. A broken one (does not import, is not a DriverPlugin of its name,
    or two packages claim the name) is left out and named when asked for, so one bad third-party
    package does not take the other drivers down with it."""
    from importlib.metadata import entry_points  # ~20 ms: paid by plugins(), not by importing this module

    found: dict[str, DriverPlugin] = {}
    for ep in entry_points(group=GROUP):
        try:
            plugin = ep.load()
        except Exception as exc:
            _broken[ep.name] = (f"driver plugin {ep.name!r} ({ep.value}) failed to load: "
                                f"{type(exc).__name__}: {exc}; reinstall or remove that package")
            continue
        if not isinstance(plugin, DriverPlugin) or plugin.name != ep.name:
            _broken[ep.name] = (f"entry point {ep.name!r} = {ep.value!r} in group {GROUP!r} is not a "
                                f"DriverPlugin named {ep.name!r}")
        elif ep.name in found and found[ep.name] is not plugin:
            _broken[ep.name] = (f"two installed packages register the driver {ep.name!r} (one is "
                                f"{ep.value}); uninstall one of them")
        else:
            found[ep.name] = plugin
    for name, why in _broken.items():
        found.pop(name, None)
        log.warning("%s; its [[%s]] tables cannot be used", why, name)
    return found


def plugins() -> dict[str, DriverPlugin]:
    """Every usable driver plugin by name: the installed entry points, then those registered at run time."""
    global _loaded
    if _loaded is None:
        _loaded = _load_entry_points()
    return {**_loaded, **_registered}


def register(plugin: DriverPlugin) -> None:
    """Add a driver plugin at run time; a name that is already taken is refused (ValueError)."""
    if plugin.name in plugins():
        raise ValueError(f"a driver plugin named {plugin.name!r} is already registered")
    _registered[plugin.name] = plugin


def unregister(name: str) -> None:
    """Remove a plugin added with `register` (tests that register a driver clean up with this)."""
    _registered.pop(name, None)


def plugin(name: str) -> DriverPlugin:
    """The plugin for TOML table `name`; UnknownDriver listing the registered names otherwise."""
    found = plugins()
    if name not in found and name in _broken:
        raise DriverError(_broken[name])
    if name not in found:
        raise UnknownDriver(f"no driver named {name!r}; registered drivers: {', '.join(sorted(found))}")
    return found[name]

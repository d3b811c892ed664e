"""Sinks: where the outbox's records go (InfluxDB today, MQTT Sparkplug B next), found by name.

A sink is one module exposing ``PLUGIN = SinkPlugin(...)``: a pydantic `config` model for its own
keys of the ``[sync]`` section (the module imports no client library, so the config schema can
import it cheaply) and `create`, which imports the client library and builds the `Sink`. The
sink only translates records to its wire format and reports the outcome as a typed error; the
shared worker (controller/sync.py) owns the outbox, retry, backoff with jitter, Retry-After,
dead letters, alarms and metrics, the same for every sink.

Registration: the built-in sinks below, the entry-point group ``linesentry.sinks`` (installed
third-party packages), or `register(plugin)` at run time (tests, embedding).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from controller.errors import LinesentryError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from controller.records import Record
    from controller.sinks.config import SyncConfig

GROUP = "linesentry.sinks"
BUILTIN = {"influxdb": "controller.sinks.influxdb"}  # name -> module with PLUGIN (imported on first use)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SinkError(LinesentryError):
    """A send did not deliver the records. `status` is the sink's own code (HTTP status, 0 = transport)."""

    status = 502

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Retryable(SinkError):
    """Transient (server down, timeout, 5xx, throttled): keep the records, retry with backoff, or
    after exactly `retry_after` seconds when the server said so."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class AuthFailed(Retryable):
    """The credentials were refused: one ``sync_auth`` alarm per episode, records kept, retried
    (a fixed token starts flowing again)."""


class Misconfigured(Retryable):
    """The destination does not exist (unknown bucket/org/topic): one ``sync_config`` alarm, records kept."""


class TooLarge(SinkError):
    """The request was too large: the worker halves the records per send and tries again."""


class Rejected(SinkError):
    """The records themselves are refused (malformed): they go to the dead-letter table, not retried."""


class Sink(Protocol):
    """What the worker needs of a sink. `send` returns only once the destination confirmed the
    records (then they are acknowledged in the outbox) and raises a `SinkError` otherwise."""

    name: str

    async def send(self, records: Sequence[Record]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class LineProtocolSink(Protocol):
    """A sink that also takes ready InfluxDB line protocol: the rows an outbox written before records
    holds (only the InfluxDB sink inherits them)."""

    async def send_line_protocol(self, lines: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class SinkPlugin:
    """One kind of sink, without the controller naming it."""

    name: str  # the value of `sync.sink`, and the outbox's delivery-state key
    config: type[BaseModel]  # the sink's own keys of [sync]; its module imports no client library
    create: Callable[[BaseModel, SyncConfig], Sink]  # imports the client library lazily
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"sink plugin name {self.name!r} must be lower-case letters, digits and _")


class UnknownSink(LinesentryError, ValueError):
    """`sync.sink` names no registered sink (a ValueError, so config validation reports it)."""

    status = 400


_registered: dict[str, SinkPlugin] = {}


def register(plugin: SinkPlugin) -> None:
    """Add a sink plugin at run time; a name that is already taken is refused (ValueError)."""
    if plugin.name in BUILTIN or plugin.name in _registered or plugin.name in _entry_point_names():
        raise ValueError(f"a sink plugin named {plugin.name!r} is already registered")
    _registered[plugin.name] = plugin


def unregister(name: str) -> None:
    """Remove a plugin added with `register` (tests clean up with this)."""
    _registered.pop(name, None)


def plugin(name: str) -> SinkPlugin:
    """The plugin named `name`: built-in, registered, or from an entry point (loaded on demand)."""
    if name in BUILTIN:
        return importlib.import_module(BUILTIN[name]).PLUGIN
    if name in _registered:
        return _registered[name]
    from importlib.metadata import entry_points  # only for a sink that is not built in: ~10 ms

    found_eps = list(entry_points(group=GROUP, name=name))
    if len({ep.value for ep in found_eps}) > 1:  # never pick one silently by sys.path order
        raise UnknownSink(f"two installed packages register the sink {name!r} "
                          f"({', '.join(sorted(ep.value for ep in found_eps))}); uninstall one of them")
    for ep in found_eps:
        try:
            found = ep.load()
        except Exception as exc:  # a broken plugin package: one line naming it, not a traceback
            raise UnknownSink(f"sink plugin {name!r} ({ep.value}, entry point group {GROUP!r}) failed to "
                              f"load: {type(exc).__name__}: {exc}; reinstall or remove that package") from exc
        if not isinstance(found, SinkPlugin) or found.name != name:
            raise UnknownSink(f"entry point {name!r} = {ep.value!r} in group {GROUP!r} is not a SinkPlugin "
                              f"named {name!r}")
        return found
    names = sorted({*BUILTIN, *_registered, *_entry_point_names()})
    raise UnknownSink(f"no sink named {name!r} (sync.sink); available sinks: {', '.join(names)}")


def _entry_point_names() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=GROUP)}

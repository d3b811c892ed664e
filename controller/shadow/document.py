"""The shadow document, pure logic: per-field desired state with versions, what was rejected and
why, the reported version. No MQTT, no asyncio, no controller: the agent (controller.shadow.agent)
feeds it and publishes what it returns; tests drive it directly.

Rules (docs/shadow.md):
- Each field is its own register: last writer wins per field, ordered by the writer's `version`.
- A version not above the highest one seen for that field (accepted or rejected) is stale and
  ignored: the broker redelivers retained copies at every reconnect, and an old copy must never
  undo a newer change. A rejected version is not tried again: the fleet sends a higher one.
- `desired` holds the last accepted value per field; it is what the edge applies again at start.
- `delta` is what the running state does not match of `desired` (a field's `pending`, below).
- The reported `version` rises by one each time the reported content changes, never goes back
  (it is persisted with the rest, controller.shadow.store).

>>> doc = ShadowDocument(("shadow_mode",))
>>> d = parse_desired(b'{"value": true, "version": 3, "by": "fleet"}')
>>> doc.offer("shadow_mode", d)
'new'
>>> doc.accept("shadow_mode", d); doc.offer("shadow_mode", d)
'stale'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_VERSION = 2**53  # what every JSON implementation (the fleet's JavaScript too) holds exactly
MAX_BY_CHARS = 64
MAX_PAYLOAD_BYTES = 64 * 1024  # a desired field is a few hundred bytes; beyond this is a mistake
MAX_UNKNOWN_REJECTED = 8  # rejected entries kept for fields the shadow does not have (topic typos)
# a rejection's reason echoes the refused value, an unknown field's name is the topic's last level:
# clipped, so a few big payloads cannot make a reported document no broker takes (nor huge journal events)
MAX_REASON_CHARS = 400
MAX_FIELD_CHARS = 64


class DesiredError(ValueError):
    """A desired payload or value the shadow cannot accept; the message is the reported reason."""


@dataclass(frozen=True)
class Desired:
    """One field's desired state as the fleet wrote it."""

    value: Any
    version: int
    by: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "version": self.version, "by": self.by}


def check_version(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VERSION:
        raise DesiredError(f"version must be an integer from 1 to 2^53, got {v!r}")
    return v


def check_by(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_BY_CHARS or not v.isprintable():
        raise DesiredError(f"by must name the writer: 1 to {MAX_BY_CHARS} printable characters, got {v!r}")
    return v


def parse_desired(payload: bytes) -> Desired:
    """`{"value": ..., "version": <int>, "by": "<who>"}`; DesiredError says what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DesiredError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        data = decode_json(payload)
    except ValueError as exc:
        raise DesiredError(f"payload is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DesiredError("payload must be a JSON object {\"value\": ..., \"version\": N, \"by\": \"who\"}")
    extra = sorted(set(data) - {"value", "version", "by"})
    if extra:
        raise DesiredError(f"unknown key(s) {', '.join(extra)}: expected value, version, by")
    if "value" not in data:
        raise DesiredError("value is missing")
    return Desired(data["value"], check_version(data.get("version")), check_by(data.get("by")))


def version_of(payload: bytes) -> int | None:
    """The version of a payload `parse_desired` refused, if it has a usable one (for the record)."""
    try:
        data = decode_json(payload)
        return check_version(data.get("version")) if isinstance(data, dict) else None
    except ValueError:
        return None


def decode_json(text: bytes | str) -> Any:
    """Strict JSON (no NaN/Infinity); ValueError for anything else, a nesting too deep for the decoder
    too (its RecursionError would otherwise end whoever reads it: the shadow's worker, its start)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


Offer = Literal["new", "stale"]


class ShadowDocument:
    """Desired (accepted), rejected and the reported version of one device shadow."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields  # the fields this shadow has, in the order they are applied at start
        self.desired: dict[str, Desired] = {}
        self.rejected: dict[str, dict[str, Any]] = {}  # field -> {"version", "by", "reason"}
        self.version = 0  # of the reported document
        self._last_content: Any = None

    # ------------------------------------------------------------------ desired
    def seen(self, field: str) -> int:
        """The highest version of `field` accepted or rejected (0: none)."""
        accepted = self.desired[field].version if field in self.desired else 0
        r = self.rejected.get(field, {})
        return max(accepted, r.get("version") or 0, r.get("seen") or 0)

    def offer(self, field: str, desired: Desired) -> Offer:
        """Whether `desired` is news for `field`: "stale" when its version is not above the last seen."""
        return "new" if desired.version > self.seen(field) else "stale"

    def accept(self, field: str, desired: Desired) -> None:
        """`desired` is in effect: it becomes the field's desired state (a rejection of it is gone)."""
        self.desired[field] = desired
        self.rejected.pop(field, None)  # any rejection of this field is of a lower version (`offer`)

    def reject(self, field: str, version: int | None, by: str, reason: str) -> None:
        """`field`'s version `version` was refused for `reason`; desired keeps the last accepted one."""
        if field not in self.fields and field not in self.rejected and sum(
                f not in self.fields for f in self.rejected) >= MAX_UNKNOWN_REJECTED:
            return  # a flood of made-up field names must not grow the reported document
        entry: dict[str, Any] = {"version": version, "by": by, "reason": reason}
        if version is None and self.seen(field):  # a payload without a version: the field keeps the
            entry["seen"] = self.seen(field)  # highest one seen, or an older retained copy is news again
        self.rejected[field] = entry

    # ------------------------------------------------------------------ reported
    def delta(self, pending: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """{field: the part of its desired value not in effect} (pending[field](value) gives it, None
        when all of it is in effect)."""
        out = {}
        for field, d in self.desired.items():
            missing = pending[field](d.value) if field in pending else None
            if missing is not None:
                out[field] = missing
        return out

    def report(self, state: dict[str, Any], delta: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The reported document for this `state` and `delta`, and whether its content changed since
        the last report (the version rises only then)."""
        content = {"state": state, "desired": {f: d.to_dict() for f, d in self.desired.items()},
                   "delta": delta, "rejected": dict(self.rejected)}
        changed = content != self._last_content
        if changed:
            self.version += 1
            self._last_content = json.loads(json.dumps(content))  # a deep copy: later edits do not leak in
        return {"version": self.version, **content}, changed

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "reported_version": self.version,
                "desired": {f: d.to_dict() for f, d in self.desired.items()}, "rejected": self.rejected}

    def load_json(self, data: Mapping[str, Any]) -> None:
        """Take the saved document (ValueError if malformed: the caller sets it aside)."""
        if data.get("format") != 1:
            raise ValueError(f"shadow file format {data.get('format')!r} is not 1")
        version = data.get("reported_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"reported_version {version!r} is not a count")
        desired, rejected = {}, {}
        for field, d in _mapping(data, "desired").items():
            if field not in self.fields or not isinstance(d, dict) or "value" not in d:
                raise ValueError(f"desired {field!r} is not a field with a value")
            desired[field] = Desired(d["value"], check_version(d.get("version")), check_by(d.get("by")))
        for field, r in _mapping(data, "rejected").items():
            if not isinstance(r, dict) or not isinstance(r.get("reason"), str):
                raise ValueError(f"rejected {field!r} has no reason")
            entry = {"version": _saved_version(r.get("version")), "by": str(r.get("by", "")),
                     "reason": r["reason"]}
            if r.get("seen") is not None:
                entry["seen"] = check_version(r["seen"])
            rejected[field] = entry
        self.version, self.desired, self.rejected = version, desired, rejected


def _saved_version(v: Any) -> int | None:
    """A saved rejection's version: none (its payload had no usable one) or a valid one."""
    return None if v is None else check_version(v)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def finite_number(v: Any) -> bool:
    """A JSON number that is a real, finite value (bool is not a number here)."""
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)

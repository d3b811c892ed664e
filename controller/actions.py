"""Action logic: which writes to issue when alarms become active. Pure; the caller passes the time.

Two clocks, as in the alarm engine: `now` (monotonic in the controller) times min_interval_s and
readback deadlines, `wall` (default: `now`) stamps events and the status/snapshot times, so a
wall-clock step neither fires nor holds back an action. min_interval_s is measured within one
run; across a restart the latch and the served activation carry over (they are facts, not times).

An action *fires at most once per activation* of its alarm. While the alarm stays active an
unserved demand waits: it fires as soon as nothing stands in the way, in this order of checks:

1. operator inhibit          -> event "inhibited"
2. latched (fired before, not reset)  -> event "latched"
3. min_interval_s since the last fire -> event "rate_limited"
4. every interlock must hold (unknown value = false) -> event "blocked" ("blocked by interlock ...")
5. shadow (per action or global) -> event "shadow" ("shadow: would write tag=value"), no write
6. otherwise -> `WriteRequest` + event "fired"; latch set if configured

A waiting demand reports each distinct reason once, not on every step. When the alarm clears,
an unserved demand is dropped. Shadow firing never latches and never waits for a readback, so
switching shadow off later cannot leave a latch nobody saw; switching the global shadow off
during an activation that only shadow-fired fires it for real at the next step (`set_global_shadow`).

After a write the runtime calls `confirm(name, now, ok)` (readback result); `check_deadlines`
reports writes not confirmed within `confirm_within_s`. A failed action stays failed (the
runtime raises its ``action_failed:<name>`` alarm from `failed()`) until a later confirmation
or an operator reset. There is no automatic retry: the failure alarm asks a human.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.conditions import Condition
from controller.errors import BadRequest

SNAPSHOT_VERSION = 1


class ActionError(BadRequest):
    """An operator request naming an unknown action, or a bad snapshot."""


class _WriteSettings(Protocol):
    tag: str
    value: bool | int | float


class ActionSettings(Protocol):
    """What the engine needs of an action's config (controller.config.ActionConfig has it)."""

    name: str
    alarm: str
    write: _WriteSettings
    interlocks: Sequence[Condition]
    latch: bool
    min_interval_s: float
    confirm_within_s: float | None
    shadow: bool


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write the runtime must issue now, then confirm by readback before `deadline`."""

    action: str
    tag: str
    value: bool | int | float
    time: float
    deadline: float | None


@dataclass(frozen=True, slots=True)
class ActionEvent:
    """One decision: fired, shadow, blocked, rate_limited, latched, inhibited, uninhibited, reset,
    confirmed, failed."""

    time: float
    action: str
    kind: str
    detail: str
    user: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "action": self.action, "kind": self.kind, "detail": self.detail,
                "user": self.user}


_NO_WRITES: tuple[WriteRequest, ...] = ()
_NO_EVENTS: tuple[ActionEvent, ...] = ()


class _Action:
    __slots__ = ("awaiting", "cfg", "deadline", "demand", "failed", "inhibited", "inhibited_by",
                 "fired_at", "first_out", "last_fire", "latched", "latched_at", "name", "notice",
                 "notice_ref", "served", "shadow", "shadow_served", "written_at")

    def __init__(self, cfg: ActionSettings, shadow: bool) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.shadow = shadow
        self.demand = False  # its alarm is active (an activation is in progress)
        self.served = False  # this activation already fired (or shadow-fired)
        # served by a shadow fire only, with last_fire from before it: global shadow going off re-arms it
        self.shadow_served: float | None = None
        self.notice = ""  # last reason reported for the waiting demand (dedupes events)
        self.notice_ref: object = None
        self.latched = False
        self.latched_at: float | None = None
        self.inhibited = False
        self.inhibited_by = ""
        self.last_fire = -math.inf  # monotonic: min_interval_s
        self.fired_at: float | None = None  # wall time of the last fire (views, snapshot)
        self.first_out = ""  # the first-out cause given with the last fire
        self.awaiting = False  # a write waits for its confirmation
        self.written_at = math.nan
        self.deadline: float | None = None  # None: no deadline (or already reported missed)
        self.failed = False


_SAVED_FIELDS = {"latched": bool, "inhibited": bool, "failed": bool, "demand": bool, "served": bool,
                 "latched_at": (float, int, type(None)), "inhibited_by": (str, type(None)),
                 "last_fire": (float, int, type(None))}


def _check_saved(name: str, s: Any) -> None:
    """A saved action entry must have every field with its type (a hand-edited file may not)."""
    if not isinstance(s, dict):
        raise ActionError(f"saved action {name!r} is not an object")
    for key, kind in _SAVED_FIELDS.items():
        if key not in s or not isinstance(s[key], kind):
            raise ActionError(f"saved action {name!r}: field {key!r} missing or of the wrong type")
        if isinstance(s[key], float) and (not math.isfinite(s[key]) or abs(s[key]) > 1e11):
            raise ActionError(f"saved action {name!r}: {key} {s[key]!r} is not a time")
    if not isinstance(s.get("first_out", ""), str):
        raise ActionError(f"saved action {name!r}: first_out is not text")


class ActionEngine:
    """All actions of a line. `evaluate()` is the hot path; the rest are runtime/operator calls."""

    def __init__(self, action_configs: Iterable[ActionSettings], shadow_global: bool = False) -> None:
        self._actions: dict[str, _Action] = {}
        for cfg in action_configs:
            if cfg.name in self._actions:
                raise ActionError(f"action name {cfg.name!r} is used twice")
            self._actions[cfg.name] = _Action(cfg, shadow_global or cfg.shadow)
        self.shadow_global = shadow_global
        self._list = tuple(self._actions.values())
        self._awaiting: set[str] = set()
        self._events: list[ActionEvent] = []

    # -- hot path ---------------------------------------------------------------------------------

    def evaluate(self, now: float, active_alarms: Collection[str], tag_values: Mapping[str, float],
                 wall: float | None = None, first_out: str = "") -> Sequence[WriteRequest]:
        """The writes to issue now. Decisions are queued for `take_events()`.

        `tag_values` maps tag name -> current value (NaN when unknown), e.g. a dict or a
        `controller.conditions.ArrayTagView` over the live value array. `first_out` names the
        first cause of the current alarm episode; a firing records it in its event and status.
        Returns a shared empty tuple when there is nothing to write.
        """
        if wall is None:
            wall = now
        writes: list[WriteRequest] | None = None
        for a in self._list:
            if a.cfg.alarm not in active_alarms:
                if a.demand:
                    a.demand = a.served = False
                    a.notice, a.notice_ref, a.shadow_served = "", None, None
                continue
            if not a.demand:
                a.demand, a.served, a.shadow_served = True, False, None
            if a.served:
                continue
            if a.inhibited:
                if self._new_notice(a, "inhibited", None):
                    self._emit(wall, a, "inhibited", f"inhibited by {a.inhibited_by or 'operator'}")
                continue
            if a.latched:
                if self._new_notice(a, "latched", None):
                    self._emit(wall, a, "latched", "latched since the last firing; reset to re-arm")
                continue
            if now - a.last_fire < a.cfg.min_interval_s:
                if self._new_notice(a, "rate_limited", None):
                    self._emit(wall, a, "rate_limited", f"min_interval_s {a.cfg.min_interval_s:g}: last "
                               f"fired {now - a.last_fire:.3f} s ago; waiting")
                continue
            blocking = self._blocking(a, tag_values)
            if blocking is not None:
                if self._new_notice(a, "blocked", blocking):
                    value = tag_values.get(blocking.tag, math.nan)
                    self._emit(wall, a, "blocked",
                               f"blocked by interlock {blocking} ({blocking.tag} = {value:g})")
                continue
            w = a.cfg.write
            a.shadow_served = a.last_fire if a.shadow else None
            a.served, a.last_fire, a.fired_at, a.first_out = True, now, wall, first_out
            a.notice, a.notice_ref = "", None
            cause = f"; first out: {first_out}" if first_out else ""
            if a.shadow:
                self._emit(wall, a, "shadow", f"shadow: would write {w.tag}={w.value}{cause}")
                continue
            if a.cfg.latch:
                a.latched, a.latched_at = True, wall
            a.awaiting, a.written_at = True, now
            a.deadline = None if a.cfg.confirm_within_s is None else now + a.cfg.confirm_within_s
            self._awaiting.add(a.name)
            req = WriteRequest(a.name, w.tag, w.value, wall, a.deadline)
            self._emit(wall, a, "fired", f"write {w.tag}={w.value}"
                       + (" (latched until reset)" if a.cfg.latch else "") + cause)
            if writes is None:
                writes = []
            writes.append(req)
        return _NO_WRITES if writes is None else writes

    @staticmethod
    def _blocking(a: _Action, values: Mapping[str, float]) -> Condition | None:
        for cond in a.cfg.interlocks:
            if not cond.holds(values.get(cond.tag, math.nan)):
                return cond
        return None

    @staticmethod
    def _new_notice(a: _Action, kind: str, ref: object) -> bool:
        """True the first time a waiting demand meets this reason (events once, not every step)."""
        if a.notice == kind and a.notice_ref is ref:
            return False
        a.notice, a.notice_ref = kind, ref
        return True

    def _emit(self, now: float, a: _Action, kind: str, detail: str) -> None:
        self._events.append(ActionEvent(now, a.name, kind, detail))

    @property
    def has_events(self) -> bool:
        """Decisions are waiting for `take_events()` (a cheap check for the hot path)."""
        return bool(self._events)

    def take_events(self) -> list[ActionEvent]:
        """The decisions `evaluate()` made since the last call, oldest first."""
        if not self._events:
            return []
        out, self._events = self._events, []
        return out

    # -- confirmation -----------------------------------------------------------------------------

    def confirm(self, name: str, now: float, ok: bool, detail: str = "",
                wall: float | None = None) -> list[ActionEvent]:
        """The runtime's readback result for the action's write (`detail`: the driver's error)."""
        if wall is None:
            wall = now
        a = self._get(name)
        if not a.awaiting:
            return []
        a.awaiting, a.deadline = False, None
        self._awaiting.discard(name)
        took = now - a.written_at
        if ok:
            a.failed = False
            late = (a.cfg.confirm_within_s is not None and took > a.cfg.confirm_within_s)
            text = f"confirmed {took:.3f} s after the write" + (" (after the deadline)" if late else "")
            return [ActionEvent(wall, name, "confirmed", text)]
        a.failed = True
        w = a.cfg.write
        return [ActionEvent(wall, name, "failed", f"write {w.tag}={w.value} failed"
                            + (f": {detail}" if detail else ""))]

    def check_deadlines(self, now: float, wall: float | None = None) -> Sequence[ActionEvent]:
        """'failed' events for writes whose confirmation is overdue (each reported once)."""
        if not self._awaiting:
            return _NO_EVENTS
        if wall is None:
            wall = now
        events: list[ActionEvent] | None = None
        for name in self._awaiting:
            a = self._actions[name]
            if a.deadline is not None and now > a.deadline:
                a.deadline, a.failed = None, True  # still awaiting: a late confirmation clears it
                w = a.cfg.write
                ev = ActionEvent(wall, name, "failed", f"write {w.tag}={w.value} not confirmed within "
                                 f"{a.cfg.confirm_within_s:g} s")
                events = [ev] if events is None else [*events, ev]
        return _NO_EVENTS if events is None else events

    def has_failed(self, name: str) -> bool:
        """One action's `action_failed` condition: a lookup, cheap enough for every hot-path step."""
        return self._get(name).failed

    def failed(self) -> frozenset[str]:
        """All actions whose last write failed (for views and tests; the hot path uses `has_failed`)."""
        return frozenset(a.name for a in self._list if a.failed)

    # -- operator requests ----------------------------------------------------------------------

    def _get(self, name: str) -> _Action:
        try:
            return self._actions[name]
        except KeyError:
            raise ActionError(f"unknown action {name!r}") from None

    def reset(self, name: str, user: str, now: float) -> list[ActionEvent]:
        """Clear the latch and a failure. The current activation does not fire again; the next one can.
        Nothing latched, failed or waiting to fire: nothing to reset (no event, no change)."""
        a = self._get(name)
        was = [w for w, on in (("latched", a.latched), ("failed", a.failed)) if on]
        if not was and not (a.demand and not a.served):
            return []
        a.latched, a.latched_at, a.failed = False, None, False
        if a.demand:
            a.served, a.shadow_served = True, None  # reset re-arms for the NEXT activation only
        a.notice, a.notice_ref = "", None
        detail = f"reset ({' and '.join(was)})" if was else "reset (waiting demand dropped)"
        return [ActionEvent(now, name, "reset", detail, user)]

    def inhibit(self, name: str, user: str, now: float, on: bool) -> list[ActionEvent]:
        """Operator inhibit: while on, the action never writes (a waiting demand fires on release)."""
        a = self._get(name)
        if a.inhibited == on:
            return []
        a.inhibited, a.inhibited_by = on, user if on else ""
        a.notice, a.notice_ref = "", None
        return [ActionEvent(now, name, "inhibited" if on else "uninhibited",
                            "inhibited by operator" if on else "inhibit released", user)]

    def set_global_shadow(self, on: bool) -> list[str]:
        """The global shadow mode at run time (the device shadow): on, every action decides but never
        writes; off, each action follows its own `shadow`. Returns the actions whose mode changed.
        An action that goes live while its alarm is active and only shadow-fired for this activation
        fires at the next step (it wrote nothing: the activation is not served), with the rate limit
        of its last real write."""
        self.shadow_global = on
        changed = [a.name for a in self._list if a.shadow != (on or a.cfg.shadow)]
        for a in self._list:
            a.shadow = on or a.cfg.shadow
            if not a.shadow and a.shadow_served is not None:
                a.served, a.last_fire, a.shadow_served = False, a.shadow_served, None
                a.notice, a.notice_ref = "", None
        return changed

    # -- views and persistence --------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every action for the API/CLI (JSON-serialisable)."""
        return [{"name": a.name, "alarm": a.cfg.alarm, "shadow": a.shadow, "latched": a.latched,
                 "inhibited": a.inhibited, "inhibited_by": a.inhibited_by, "failed": a.failed,
                 "awaiting_confirmation": a.awaiting, "last_fire": a.fired_at,
                 "first_out": a.first_out} for a in self._list]

    def snapshot(self) -> dict[str, Any]:
        """Latch, inhibit, failure and rate-limit facts, JSON-serialisable, for restarts."""
        return {"version": SNAPSHOT_VERSION, "actions": {a.name: {
            "latched": a.latched, "latched_at": a.latched_at, "inhibited": a.inhibited,
            "inhibited_by": a.inhibited_by, "failed": a.failed or a.awaiting, "demand": a.demand,
            "served": a.served, "last_fire": a.fired_at, "first_out": a.first_out,
        } for a in self._list}}

    def restore(self, snapshot: Mapping[str, Any]) -> list[str]:
        """Load a snapshot; actions no longer configured are skipped and returned.

        A write still awaiting confirmation at the snapshot is restored as failed: after a
        restart nobody can confirm it, and a human should look.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ActionError(f"action snapshot version {snapshot.get('version')!r} is not "
                              f"{SNAPSHOT_VERSION}; delete the state file to start fresh")
        skipped = []
        for name, s in snapshot.get("actions", {}).items():
            a = self._actions.get(name)
            if a is None:
                skipped.append(name)
                continue
            _check_saved(name, s)
            a.latched, a.latched_at = bool(s["latched"]), s["latched_at"]
            a.inhibited, a.inhibited_by = bool(s["inhibited"]), s["inhibited_by"]
            a.failed, a.demand, a.served = bool(s["failed"]), bool(s["demand"]), bool(s["served"])
            a.fired_at, a.first_out = s["last_fire"], s.get("first_out", "")
            a.last_fire = -math.inf  # min_interval_s runs on this process's monotonic clock
            a.awaiting, a.deadline = False, None
            self._awaiting.discard(name)
        return skipped

"""ISA-18.2 / IEC 62682 alarm engine: pure logic, the caller passes the time in.

Each alarm keeps a few facts and its state is *derived* from them, so no sequence of calls can
leave it in a state its facts do not imply:

- ``active``: the debounced process condition (raw condition held for ``on_delay_s`` to rise,
  absent for ``off_delay_s`` to clear);
- ``acked``: no acknowledgement is pending;
- ``oos`` > ``shelved`` > ``suppressed``: administrative states that hide the alarm, in that
  order of precedence.

Derived state: OUT_OF_SERVICE, SHELVED or SUPPRESSED if hidden; else NORMAL (inactive, acked),
UNACK (active, not acked), ACKED (active, acked), RTN_UNACK (inactive, not acked). When an alarm
leaves a hidden state it takes the state its condition implies *at that moment*: UNACK if
active (a fresh annunciation), NORMAL if not. Every state change is one `AlarmEvent` with its
time, cause and user; nothing else produces events.

Deadbands are applied where the analog value is compared (`Condition.holds(..., deadband)`),
so the engine itself sees booleans only.

Two clocks: `update(now, ..., wall=)` measures on/off delays on `now` (the controller passes
its monotonic clock) and stamps events and checks shelve expiry (a persisted deadline) on
`wall`. A wall-clock step therefore never starts, shortens or stretches a delay.

First out (ISA-18.2 first-out annunciation): the first alarm whose raw condition rose since
the line was last quiet (no raw condition and no active alarm) is kept in `first_out`,
whether or not it is later suppressed or shelved, so a line stop can name its first cause.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.errors import BadRequest, Refused

PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
SNAPSHOT_VERSION = 1


class AlarmState(enum.StrEnum):
    NORMAL = "NORMAL"
    UNACK = "UNACK"  # active, unacknowledged
    ACKED = "ACKED"  # active, acknowledged
    RTN_UNACK = "RTN_UNACK"  # returned to normal, unacknowledged
    SHELVED = "SHELVED"
    SUPPRESSED = "SUPPRESSED"  # by design (suppress_when holds)
    OUT_OF_SERVICE = "OUT_OF_SERVICE"


HIDDEN = frozenset({AlarmState.SHELVED, AlarmState.SUPPRESSED, AlarmState.OUT_OF_SERVICE})
ANNUNCIATED_ACTIVE = frozenset({AlarmState.UNACK, AlarmState.ACKED})


class AlarmError(BadRequest):
    """An operator request that cannot be done (unknown alarm, bad shelve duration, ...)."""


class AlarmRefused(AlarmError, Refused):
    """A request refused in the alarm's current state (shelving one that is out of service): 409."""

    status = Refused.status  # BadRequest's 400 comes first in the MRO: a refusal is a 409


class AlarmSettings(Protocol):
    """What the engine needs of an alarm's config (controller.config.AlarmConfig has it)."""

    name: str
    priority: str
    on_delay_s: float
    off_delay_s: float
    max_shelve_s: float
    message: str


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One state transition: when, which alarm, from -> to, why, and who (empty for the process)."""

    time: float
    alarm: str
    from_state: AlarmState
    to_state: AlarmState
    cause: str  # condition | ack | shelve | unshelve | shelve_expired | suppressed | unsuppressed |
    #             oos | return_to_service
    user: str = ""
    priority: str = ""
    explanation: dict | None = None  # a line alarm's activation: why it fired (controller.explanation)

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "alarm": self.alarm, "from_state": str(self.from_state),
                "to_state": str(self.to_state), "cause": self.cause, "user": self.user,
                "priority": self.priority}


_NO_EVENTS: tuple[AlarmEvent, ...] = ()


class _Alarm:
    """Mutable per-alarm facts (slots: the hot path touches these on every update)."""

    __slots__ = ("acked", "acked_by", "active", "cfg", "name", "off_delay", "on_delay", "oos",
                 "pending_since", "raw", "shelved_by", "shelved_until", "since", "state", "suppressed")

    def __init__(self, cfg: AlarmSettings) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.on_delay = float(cfg.on_delay_s)
        self.off_delay = float(cfg.off_delay_s)
        self.raw = False  # last raw condition given to update()
        self.active = False  # debounced condition
        self.acked = True
        self.acked_by = ""  # who acknowledged the current activation ("" before an ack)
        self.pending_since: float | None = None  # raw != active since then
        self.shelved_until: float | None = None
        self.shelved_by = ""
        self.suppressed = False
        self.oos = False
        self.state = AlarmState.NORMAL
        self.since = math.nan  # time of the last transition

    def implied(self) -> AlarmState:
        if self.oos:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved_until is not None:
            return AlarmState.SHELVED
        if self.suppressed:
            return AlarmState.SUPPRESSED
        if self.active:
            return AlarmState.ACKED if self.acked else AlarmState.UNACK
        return AlarmState.NORMAL if self.acked else AlarmState.RTN_UNACK


_SAVED_FIELDS = {"active": bool, "acked": bool, "suppressed": bool, "oos": bool,
                 "shelved_until": (float, int, type(None)), "shelved_by": (str, type(None)),
                 "since": (float, int, type(None))}


def _check_saved(name: str, s: Any) -> None:
    """A saved alarm entry must have every field with its type (a hand-edited file may not)."""
    if not isinstance(s, dict):
        raise AlarmError(f"saved alarm {name!r} is not an object")
    for key, kind in _SAVED_FIELDS.items():
        if key not in s or not isinstance(s[key], kind):
            raise AlarmError(f"saved alarm {name!r}: field {key!r} missing or of the wrong type")
        if isinstance(s[key], float) and not math.isfinite(s[key]) or \
                key in ("shelved_until", "since") and s[key] is not None and abs(s[key]) > 1e11:
            raise AlarmError(f"saved alarm {name!r}: {key} {s[key]!r} is not a time")


class AlarmEngine:
    """All alarms of a line. `update()` is the hot path; the rest are operator requests."""

    def __init__(self, alarm_configs: Iterable[AlarmSettings]) -> None:
        self._alarms: dict[str, _Alarm] = {}
        self.refused_on_restore: list[str] = []  # non-shelvable alarms a snapshot had shelved / OOS
        for cfg in alarm_configs:
            if cfg.name in self._alarms:
                raise AlarmError(f"alarm name {cfg.name!r} is used twice")
            self._alarms[cfg.name] = _Alarm(cfg)
        self._pending: set[str] = set()  # alarms with a running on/off delay
        self._shelved: set[str] = set()  # alarms with a shelve expiry to watch
        self._next_expiry = math.inf  # earliest shelve expiry: update() scans only once it is due
        self._active_cache: tuple[str, ...] | None = ()
        self._raw_on = 0  # alarms whose raw condition is true
        self._debounced_on = 0  # alarms whose debounced condition is active
        self.first_out: tuple[str, float] | None = None  # (alarm, wall time) of this episode

    # -- hot path ---------------------------------------------------------------------------------

    def update(self, now: float, conditions: Mapping[str, bool],
               suppressed: Mapping[str, bool] | None = None, wall: float | None = None
               ) -> Sequence[AlarmEvent]:
        """Feed raw conditions (and suppression results); return the transitions they caused.

        `now` times the on/off delays (monotonic in the controller); `wall` (default: `now`)
        stamps events and is compared with shelve expiries. Alarms missing from `conditions`
        keep their last raw condition. Allocates nothing and returns a shared empty tuple when
        nothing changes.
        """
        if wall is None:
            wall = now
        alarms = self._alarms
        for name, cond in conditions.items():
            a = alarms[name]
            if cond != a.raw:
                a.raw = cond = bool(cond)
                if cond:
                    self._raw_on += 1
                    if self.first_out is None:
                        self.first_out = (name, wall)
                else:
                    self._raw_on -= 1
                if cond != a.active:
                    a.pending_since = now
                    self._pending.add(name)
                else:  # back before the delay ran out: nothing happened
                    a.pending_since = None
                    self._pending.discard(name)
        events: list[AlarmEvent] | None = None
        if self._pending:
            done: list[str] | None = None
            for name in self._pending:
                a = alarms[name]
                if now - a.pending_since >= (a.off_delay if a.active else a.on_delay):  # type: ignore[operator]
                    a.active, a.pending_since = a.raw, None
                    self._debounced_on += 1 if a.active else -1
                    if a.active and a.state not in HIDDEN:
                        a.acked, a.acked_by = False, ""  # a new activation is annunciated (-> UNACK)
                    events = self._move(a, wall, "condition", "", events)
                    if done is None:
                        done = []
                    done.append(name)
            if done:
                self._pending.difference_update(done)
        if suppressed:
            for name, sup in suppressed.items():
                a = alarms[name]
                if sup != a.suppressed:
                    a.suppressed = bool(sup)
                    events = self._move(a, wall, "suppressed" if sup else "unsuppressed", "", events)
        if self._shelved and wall >= self._next_expiry:
            for name in [n for n in self._shelved if wall >= alarms[n].shelved_until]:  # type: ignore[operator]
                a = alarms[name]
                a.shelved_until, a.shelved_by = None, ""
                self._shelved.discard(name)
                events = self._move(a, wall, "shelve_expired", "", events)
            self._update_next_expiry()
        if self.first_out is not None and not self._raw_on and not self._debounced_on:
            self.first_out = None  # the line is quiet again: the next rise starts a new episode
        return _NO_EVENTS if events is None else events

    def _update_next_expiry(self) -> None:
        self._next_expiry = min((self._alarms[n].shelved_until for n in self._shelved),  # type: ignore[type-var]
                                default=math.inf)

    def _move(self, a: _Alarm, now: float, cause: str, user: str,
              events: list[AlarmEvent] | None) -> list[AlarmEvent] | None:
        """Re-derive the state; record an event if it changed."""
        if a.state in HIDDEN and not (a.oos or a.shelved_until is not None or a.suppressed):
            a.acked, a.acked_by = not a.active, ""  # leaving a hidden state: what the condition implies
        new = a.implied()
        if new is a.state:
            return events
        ev = AlarmEvent(now, a.name, a.state, new, cause, user, a.cfg.priority)
        a.state, a.since = new, now
        if (new in ANNUNCIATED_ACTIVE) != (ev.from_state in ANNUNCIATED_ACTIVE):
            self._active_cache = None
        if events is None:
            return [ev]
        events.append(ev)
        return events

    def active(self) -> tuple[str, ...]:
        """Alarms that are active and annunciated (UNACK or ACKED), by priority: what actions act on.

        Shelved, suppressed and out-of-service alarms are not active here, by ISA-18.2's intent:
        the operator or the design removed them from service.
        """
        if self._active_cache is None:
            act = [a for a in self._alarms.values() if a.state in ANNUNCIATED_ACTIVE]
            act.sort(key=lambda a: (PRIORITY_ORDER.get(a.cfg.priority, 9), a.name))
            self._active_cache = tuple(a.name for a in act)
        return self._active_cache

    # -- operator requests ----------------------------------------------------------------------

    def _get(self, name: str) -> _Alarm:
        try:
            return self._alarms[name]
        except KeyError:
            raise AlarmError(f"unknown alarm {name!r}") from None

    def ack(self, name: str, user: str, now: float) -> list[AlarmEvent]:
        """Acknowledge: UNACK -> ACKED, RTN_UNACK -> NORMAL; nothing in any other state."""
        a = self._get(name)
        if a.state not in (AlarmState.UNACK, AlarmState.RTN_UNACK):
            return []
        a.acked, a.acked_by = True, user
        return self._move(a, now, "ack", user, None) or []

    def shelve(self, name: str, user: str, now: float, duration_s: float) -> list[AlarmEvent]:
        """Hide the alarm until now + duration_s (at most the alarm's max_shelve_s); re-shelving extends."""
        a = self._get(name)
        if a.oos:
            raise AlarmRefused(f"alarm {name!r} is out of service; return it to service before shelving")
        if not 0 < duration_s <= a.cfg.max_shelve_s:
            raise AlarmError(f"shelve duration must be > 0 and <= {a.cfg.max_shelve_s:g} s for alarm "
                             f"{name!r}, got {duration_s!r}")
        was = a.state
        a.shelved_until, a.shelved_by = now + duration_s, user
        self._shelved.add(name)
        self._update_next_expiry()
        if was is AlarmState.SHELVED:  # an extension is recorded too: who kept it hidden, and until when
            return [AlarmEvent(now, name, was, was, "shelve", user, a.cfg.priority)]
        return self._move(a, now, "shelve", user, None) or []

    def unshelve(self, name: str, user: str, now: float) -> list[AlarmEvent]:
        """Return a shelved alarm to the state its condition implies now."""
        a = self._get(name)
        if a.shelved_until is None:
            return []
        a.shelved_until, a.shelved_by = None, ""
        self._shelved.discard(name)
        self._update_next_expiry()
        return self._move(a, now, "unshelve", user, None) or []

    def set_out_of_service(self, name: str, user: str, now: float, oos: bool) -> list[AlarmEvent]:
        """Remove the alarm from service (clears any shelving) or return it to service."""
        a = self._get(name)
        if a.oos == oos:
            return []
        a.oos = oos
        if oos:
            a.shelved_until, a.shelved_by = None, ""
            self._shelved.discard(name)
            self._update_next_expiry()
        return self._move(a, now, "oos" if oos else "return_to_service", user, None) or []

    # -- views and persistence --------------------------------------------------------------------

    def state(self, name: str) -> AlarmState:
        return self._get(name).state

    def status(self) -> list[dict[str, Any]]:
        """Every alarm for the API/CLI, most urgent first (JSON-serialisable)."""
        rows = sorted(self._alarms.values(), key=lambda a: (PRIORITY_ORDER.get(a.cfg.priority, 9), a.name))
        return [{"name": a.name, "state": str(a.state), "priority": a.cfg.priority, "active": a.active,
                 "since": None if math.isnan(a.since) else a.since, "shelved_until": a.shelved_until,
                 "shelved_by": a.shelved_by, "acked_by": a.acked_by,
                 "message": getattr(a.cfg, "message", "")} for a in rows]

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable facts of every alarm, for persistence across restarts."""
        return {"version": SNAPSHOT_VERSION, "alarms": {a.name: {
            "raw": a.raw, "active": a.active, "acked": a.acked, "acked_by": a.acked_by,
            "pending_since": a.pending_since,
            "shelved_until": a.shelved_until, "shelved_by": a.shelved_by, "suppressed": a.suppressed,
            "oos": a.oos, "state": str(a.state), "since": None if math.isnan(a.since) else a.since,
        } for a in self._alarms.values()}}

    def restore(self, snapshot: Mapping[str, Any]) -> list[str]:
        """Load a snapshot; alarms no longer configured are skipped and returned (for a log line).

        The state is re-derived from the restored facts (no events): a snapshot cannot put an
        alarm in a state its facts contradict.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise AlarmError(f"alarm snapshot version {snapshot.get('version')!r} is not "
                             f"{SNAPSHOT_VERSION}; delete the state file to start fresh")
        skipped: list[str] = []
        self.refused_on_restore.clear()
        for name, s in snapshot.get("alarms", {}).items():
            a = self._alarms.get(name)
            if a is None:
                skipped.append(name)
                continue
            _check_saved(name, s)
            # A delay in progress was timed on the old process's monotonic clock: it restarts
            # from the live condition (raw = active until the first update says otherwise).
            a.active, a.acked = bool(s["active"]), bool(s["acked"])
            a.acked_by = str(s.get("acked_by") or "")  # absent in snapshots of older versions
            a.raw, a.pending_since = a.active, None
            a.shelved_until, a.shelved_by = s["shelved_until"], s["shelved_by"]
            a.suppressed, a.oos = bool(s["suppressed"]), bool(s["oos"])
            if not getattr(a.cfg, "shelvable", True) and (a.shelved_until is not None or a.oos):
                a.shelved_until, a.shelved_by, a.oos = None, None, False  # a safety alarm stays armed
                self.refused_on_restore.append(name)
            a.since = math.nan if s["since"] is None else float(s["since"])
            a.state = a.implied()
            (self._pending.add if a.pending_since is not None else self._pending.discard)(name)
            (self._shelved.add if a.shelved_until is not None else self._shelved.discard)(name)
        self._update_next_expiry()
        self._active_cache = None
        self._raw_on = sum(a.raw for a in self._alarms.values())
        self._debounced_on = sum(a.active for a in self._alarms.values())
        return skipped

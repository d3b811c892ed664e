"""The one path by which alarm transitions, action decisions and write confirmations become
events (the API, the cloud) and log lines.

The hot path and the write tasks only `put` what happened (no logging, no JSON there);
housekeeping `flush`es it, in the order it happened: a write's "fired" decision is always put
before its confirmation, so the event log reads fired -> confirmed; then the event log writes
what is new to its durable journal (one SQLite transaction, controller.events). An operator's
request is recorded at once with who asked, in which role and why (`record_operator`,
`record_actions`: fields user, role, reason), so the answer it gets is already logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from controller.actions import ActionEvent
from controller.alarms import AlarmEvent
from controller.events import EventLog
from controller.logs import alarm_transition_level

log = logging.getLogger(__name__)


class Journal:
    """Queue of AlarmEvent / ActionEvent, recorded into the EventLog and the log by `flush`."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.action_counts: dict[str, int] = {}  # ActionEvent.kind -> how many (metrics)
        self.dirty = False  # something the state file keeps changed since the last save
        self._pending: list[AlarmEvent | ActionEvent] = []

    def put(self, items: Sequence[AlarmEvent | ActionEvent]) -> None:
        """Queue what happened (cheap: called on the hot path, usually with an empty tuple)."""
        if items:
            self._pending.extend(items)

    @property
    def pending(self) -> bool:
        """Something is queued that `flush` has not recorded yet."""
        return bool(self._pending)

    def flush(self) -> None:
        """Record everything queued, oldest first; then the event log's journal write."""
        pending, self._pending = self._pending, []
        for item in pending:
            if isinstance(item, AlarmEvent):
                self._alarm(item)
            else:
                self._action(item)
        self.events.flush()

    def record_operator(self, events: Sequence[AlarmEvent], reason: str, role: str) -> None:
        """An operator's alarm transitions, now, with their role and the reason they gave."""
        for e in events:
            message = f"{e.from_state} -> {e.to_state} ({e.cause})" + (f": {reason}" if reason else "")
            self.events.add("alarm", e.alarm, message, at=e.time, state=str(e.to_state), user=e.user,
                            priority=e.priority, role=role, reason=reason)
            log.warning("alarm %s: %s by %s (%s)", e.alarm, message, e.user, role)
        self.dirty = True

    def record_actions(self, events: Sequence[ActionEvent], reason: str, role: str) -> None:
        """An operator's action events (reset, inhibit), now, with their role and reason."""
        for event in events:
            self._action(event, role=role, reason=reason)

    def _alarm(self, e: AlarmEvent) -> None:
        message = f"{e.from_state} -> {e.to_state} ({e.cause})"
        why = {} if e.explanation is None else {"explanation": e.explanation}
        if why:  # a line alarm fired: the message says why first (controller.explanation)
            message = f"{e.explanation['text']}; {message}"
        self.events.add("alarm", e.alarm, message, at=e.time, state=str(e.to_state), user=e.user,
                        priority=e.priority, **why)
        log.log(alarm_transition_level(e.to_state), "alarm %s: %s -> %s (%s)%s", e.alarm, e.from_state,
                e.to_state, e.cause, f": {e.explanation['why']}" if why else "")
        self.dirty = True

    def _action(self, event: ActionEvent, **operator: str) -> None:
        self.action_counts[event.kind] = self.action_counts.get(event.kind, 0) + 1
        self.events.add("action", event.action, event.detail or event.kind, at=event.time,
                        result=event.kind, user=event.user, **operator)
        self.dirty = True
        level = logging.WARNING if event.kind in ("failed", "fired") else logging.INFO
        detail = event.detail or ""
        detail = detail if detail.startswith(event.kind) else f"{event.kind} {detail}"
        log.log(level, "action %s: %s", event.action, detail.rstrip())  # never "confirmed confirmed"

"""The operator state that survives a restart: alarms (shelves, out of service, acks), actions
(latches, inhibits, failures), heartbeat counters, operators' reasons and, at shutdown only, the
open summary window.

Restoring announces what it brings back (events, `restored`): a latch or an inhibit from the
last run must never act unseen. A state file that parses but is malformed starts the line clean,
loudly (kept aside for a human); it is checked on throwaway engines first, so the live engines
are either restored whole or left as built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from controller.actions import ActionEngine
from controller.alarms import AlarmEngine
from controller.events import EventLog
from controller.journal import Journal
from controller.plc_health import Plc
from controller.statedir import StateDir
from controller.summaries import WindowSummarizer, WindowSummary

log = logging.getLogger(__name__)


def clock_text(wall: float | None) -> str:
    """A wall time for operator messages: local ISO time to the second."""
    if wall is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


class StateKeeper:
    """Saves and restores the durable state; `restored` lists what the last restore brought back."""

    def __init__(self, state_dir: StateDir, *, alarms: AlarmEngine, actions: ActionEngine,
                 new_engines: Callable[[], tuple[AlarmEngine, ActionEngine]], plcs: Sequence[Plc],
                 reasons: dict[str, str], summarizer: WindowSummarizer, tag_names: list[str],
                 events: EventLog, journal: Journal, wall: Callable[[], float]) -> None:
        self.state_dir, self.alarms, self.actions, self._new_engines = state_dir, alarms, actions, new_engines
        self.plcs, self.reasons, self.summarizer, self.tag_names = plcs, reasons, summarizer, tag_names
        self.events, self.journal, self._wall = events, journal, wall
        self.restored: list[str] = []
        self._save_lock = asyncio.Lock()
        self._summary_taken = False  # restore resumed the saved window: `forget_summary` drops it

    # ------------------------------------------------------------------ saving
    async def save(self, summary: bool = False) -> None:
        """Write the state file (fsync'd); one save at a time, each built when it starts, so a later
        save is never older on disk."""
        async with self._save_lock:
            self.journal.dirty = False
            try:
                await asyncio.to_thread(self.state_dir.save_state, self.durable_state(summary))
            except BaseException:
                self.journal.dirty = True  # not on disk: the next housekeeping round tries again
                raise

    def durable_state(self, summary: bool = False) -> dict:
        state = {"alarms": self.alarms.snapshot(), "actions": self.actions.snapshot(),
                 "heartbeats": {p.name: p.heartbeat for p in self.plcs}, "reasons": dict(self.reasons)}
        if summary:  # at shutdown only: the open summary window, resumed by the next start
            snap = self.summarizer.snapshot(self._wall())
            if snap is not None:
                state["summary"] = {"tags": self.tag_names, **snap}
        return state

    # ------------------------------------------------------------------ restoring
    def restore(self) -> WindowSummary | None:
        """Load the saved state into the engines; returns a summary window it closed, if any."""
        state = self.state_dir.load_state()
        if not state:
            return None
        try:
            heartbeats, reasons = self._check(state)
        except Exception as exc:  # a state file that parses but is malformed must not stop the service
            self._start_clean(exc)
            return None
        skipped = self.alarms.restore(state.get("alarms", {"version": 1}))
        skipped += self.actions.restore(state.get("actions", {"version": 1}))
        self.reasons.update(reasons)
        for plc in self.plcs:
            plc.heartbeat = heartbeats[plc.name]
        for name in self.alarms.refused_on_restore:
            self._restored_event("alarm", name, "was shelved or out of service in the saved state, but it is "
                                 "not shelvable (shelvable = false): restored active instead")
        if skipped:
            log.info("saved state for removed alarms/actions ignored: %s", ", ".join(skipped))
        self._announce()
        if "summary" not in state:
            return None
        self._summary_taken = True
        return self._restore_summary(state["summary"])

    def forget_summary(self) -> None:
        """Once the start can no longer fail: save the state without the resumed window, so a second
        start does not resume it again (a start that failed before keeps it on disk for the next)."""
        if self._summary_taken:
            self._summary_taken = False
            self.state_dir.save_state(self.durable_state())

    def _check(self, state: dict) -> tuple[dict[str, int], dict[str, str]]:
        """Everything the restore will apply, tried on throwaway engines (raises if malformed)."""
        alarms, actions = self._new_engines()
        alarms.restore(state.get("alarms", {"version": 1}))
        actions.restore(state.get("actions", {"version": 1}))
        heartbeats = {p.name: int(state.get("heartbeats", {}).get(p.name, 0)) for p in self.plcs}
        reasons = {k: v for k, v in state.get("reasons", {}).items() if isinstance(v, str)}
        return heartbeats, reasons

    def _start_clean(self, exc: Exception) -> None:
        """Forget a malformed saved state, loudly: latches, shelves and inhibits of the last run are gone."""
        aside = self.state_dir.set_aside()
        text = (f"saved state unusable ({type(exc).__name__}: {exc}); kept as {aside}; started clean: "
                "latched actions, shelves and inhibits of the last run are NOT restored, check the line")
        self.restored.append(text)
        self.events.add("controller", "controller", text, result="restored")
        log.error("%s", text)

    def _announce(self) -> None:
        for a in self.alarms.status():
            if a["state"] in ("NORMAL", "SUPPRESSED"):  # suppression is re-derived, not restored
                continue
            if a["state"] == "SHELVED":
                what = f"shelved by {a['shelved_by'] or 'operator'} until {clock_text(a['shelved_until'])}"
            else:
                what = a["state"]
            self._restored_event("alarm", a["name"], what, f"alarm:{a['name']}")
        latched_at = {n: s["latched_at"] for n, s in self.actions.snapshot()["actions"].items()}
        for act in self.actions.status():
            name = act["name"]
            if act["latched"]:
                since = latched_at.get(name)
                what = "latched" + (f" since {clock_text(since)}" if since else "")
                self._restored_event("action", name, what)
            if act["inhibited"]:
                self._restored_event("action", name, f"inhibited by {act['inhibited_by'] or 'operator'}",
                                     f"action:{name}")
            if act["failed"]:
                self._restored_event("action", name, "failed (its write was not confirmed)")

    def _restored_event(self, kind: str, name: str, what: str, reason_key: str = "") -> None:
        reason = self.reasons.get(reason_key, "") if reason_key else ""
        text = f"restored: {name} {what}" + (f" ({reason})" if reason else "")
        self.restored.append(text)
        self.events.add(kind, name, text, result="restored")
        log.warning("%s", text)

    def _restore_summary(self, saved: object) -> WindowSummary | None:
        """Continue the summary window open at the last shutdown, or commit it if it has closed."""
        try:
            if not isinstance(saved, dict) or saved.get("tags") != self.tag_names:
                raise ValueError("the tags changed")
            return self.summarizer.restore(saved, self._wall())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("saved summary window ignored: %s", exc)
            return None

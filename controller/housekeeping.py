"""Housekeeping: everything time-based, every HOUSEKEEPING_S, off the hot path.

One round: liveness (comm loss, safe state), per-tag staleness of polled PLCs, alarm delays and
shelve expiry when no data arrives, readback deadlines; then the journal is flushed into events
and log lines, new events and closed summary windows go to the outbox (when there is a cloud),
and the state file is saved if an operator-visible fact changed. After each round whose checks ran
the systemd watchdog is pinged (controller.systemd): no checks, no ping, a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from controller.actions import WriteRequest
from controller.events import EventLog
from controller.journal import Journal
from controller.linestate import LineState
from controller.persistence import StateKeeper
from controller.pipeline import StepPipeline
from controller.plc_health import Plc, PlcHealth
from controller.summaries import WindowSummary

if TYPE_CHECKING:  # the cloud modules are imported only when a [sync] section opens the feed
    from controller.outbox import Outbox
    from controller.points import Identity
    from controller.sync import SyncWorker

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 0.05
STEPS_FAILING_S = 2.0  # every batch of a PLC failing this long: the hot path is dead for its tags
FEED_PAGE = 1000  # events per outbox append
TEXT_IN_DETECTOR = ("carries text, not a number: it is never fed to the detector (its invalid flag "
                    "is raised); remove it from [detector] tags")


class HotPathFailing(RuntimeError):
    """Every batch of a PLC has failed for STEPS_FAILING_S: the watchdog must not be pinged."""


def stale_timeouts(plcs: Sequence[Plc], n_tags: int) -> np.ndarray:
    """Per line position: the PLC's stale_timeout_s for tags of polled PLCs, inf otherwise."""
    out = np.full(n_tags, np.inf)
    for plc in plcs:
        if plc.polled:
            out[plc.binding] = plc.stale_timeout_s
    return out


class CloudFeed:
    """New events and closed summary windows into the outbox, as sink-neutral records."""

    def __init__(self, identity: Identity, tags: list[str], units: dict[str, str]) -> None:
        self.identity, self.tags, self.units = identity, tags, units
        self.outbox: Outbox | None = None  # set by `open` at start when there is a [sync] section
        self.sync: SyncWorker | None = None
        self._last_event_id = 0

    def open(self, outbox: Outbox) -> None:
        from controller.points import EventClock, TagInfo

        self.outbox, self._clock = outbox, EventClock()
        self._tag_info = [TagInfo(t, self.units.get(t, "")) for t in self.tags]

    async def feed(self, events: EventLog, windows: list[WindowSummary]) -> None:
        """Everything new, page by page: a burst larger than one `since` page (the final flush at
        stop has no next round) must not leave events behind."""
        while True:
            new = events.since(max(self._last_event_id, events.run_start), FEED_PAGE)  # this run's only
            if new:
                self._last_event_id = new[-1]["id"]
            if self.outbox is not None and (new or windows):
                await asyncio.to_thread(self._append, new, windows)
                if self.sync is not None:
                    self.sync.wake()
            if len(new) < FEED_PAGE:
                return
            windows = []

    def _append(self, events: list[dict], windows: list[WindowSummary]) -> None:
        from controller.points import event_point, window_points

        points = [event_point(self.identity, self._clock, e["kind"], e["source"], e["message"],
                              time_ns=int(e["time"] * 1e9), result=e.get("result"),
                              state=e.get("state")) for e in events]
        for w in windows:
            points += window_points(w, self.identity, self._tag_info)
        self.outbox.append(points)

    def status(self) -> dict:
        """The outbox backlog and the sync counters (status, metrics)."""
        if self.outbox is None:
            outbox = {"rows": 0, "points": 0, "bytes": 0}
        else:
            rows, points, nbytes = self.outbox.backlog()
            outbox = {"rows": rows, "points": points, "bytes": nbytes}
        return {"outbox": outbox, "sync": self.sync.metrics() if self.sync else None}


class Housekeeping:
    """The periodic round and the final flush at shutdown."""

    def __init__(self, *, pipeline: StepPipeline, health: PlcHealth, line: LineState, journal: Journal,
                 events: EventLog, cloud: CloudFeed, keeper: StateKeeper,
                 issue: Callable[[Sequence[WriteRequest]], None],
                 alive: Callable[[], None] = lambda: None) -> None:
        self.pipeline, self.health, self.line, self.journal = pipeline, health, line, journal
        self.events, self.cloud, self.keeper, self._issue = events, cloud, keeper, issue
        self._alive = alive  # after every round: the systemd watchdog ping (controller.systemd)
        self.stale_timeout = stale_timeouts(health.plcs, len(line.tags))
        self.rounds = 0

    async def run(self) -> None:
        """Rounds until cancelled; a failing part (a bug, the disk) is logged once per run of failures.

        `alive` (the watchdog ping) is called after each round whose checks ran: it says the event
        loop turns and comm loss, staleness, alarm delays and readback deadlines are being checked.
        A blocked loop, a round that never returns, checks that raise every round, or a PLC whose
        batches have all failed for STEPS_FAILING_S (a dead hot path) stop it and
        systemd restarts the service (the PLCs' own heartbeat watchdogs see the restart). A failing
        flush (journal, outbox, state file) is logged and pinged on: a restart would not free a
        disk, and the line would go unwatched while the service starts again."""
        failing = {"checks": False, "flush": False}
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            checked = True
            try:
                self.check()
            except Exception as exc:  # a fault here must not end the loop silently
                checked = False
                self._failed(failing, "checks", exc)
            else:
                failing["checks"] = False
            try:
                await self.flush()
            except Exception as exc:
                self._failed(failing, "flush", exc)
            else:
                failing["flush"] = False
            if checked:
                self._alive()

    @staticmethod
    def _failed(failing: dict[str, bool], part: str, exc: Exception) -> None:
        if not failing[part]:  # no log flood at 20 Hz
            log.error("housekeeping %s failed, retrying every %g s: %s: %s",
                      part, HOUSEKEEPING_S, type(exc).__name__, exc)
        failing[part] = True

    def check(self) -> None:
        """The round's time-based checks: comm loss, staleness, alarm delays, shelve expiry, deadlines."""
        clock = self.health.clock
        mono, wall = clock.mono(), clock.wall()
        self.rounds += 1
        lost = self.health.check(mono)
        stale = self.line.mark_stale(mono, self.stale_timeout)
        if stale.size:
            names = ", ".join(self.line.tags[i] for i in stale[:10])
            self.events.add("driver", "stale", f"no fresh value within the timeout: {names}")
        for tag in self.line.take_text_in_detector():  # each tag once per run
            self.events.add("driver", tag, f"detector tag {tag!r} {TEXT_IN_DETECTOR}")
            log.error("detector tag %r %s", tag, TEXT_IN_DETECTOR)
        # Stale or comm-lost tags are fresh and not good: the detector must see them (invalid flags).
        self._issue(self.pipeline.tick(mono, wall, restep=bool(stale.size or lost)))
        # A PLC delivers (no comm loss) but none of its batches gets through the detector, alarms
        # and actions: protections do not see its tags, so no watchdog ping (a restart).
        failing = {plc.name: mono - since for plc in self.health.plcs
                   if (since := self.pipeline.failing_since(plc.binding)) is not None
                   and mono - since > STEPS_FAILING_S}
        if failing:
            raise HotPathFailing(f"every batch from {', '.join(failing)} failed for "
                                 f"{max(failing.values()):.1f} s (last: {self.pipeline.step_failure})")

    async def flush(self) -> None:
        """Journal -> events and logs; events and windows -> outbox; state file if it changed."""
        self.journal.flush()
        await self.cloud.feed(self.events, self.pipeline.take_windows())
        if self.journal.dirty:
            await self.keeper.save()

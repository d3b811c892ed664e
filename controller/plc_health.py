"""PLC health: the single owner of each PLC's connection state, liveness and comm loss.

Two inputs, one owner:
- the supervisor's `on_state(state, detail)` callback (the only channel for connection changes,
  drivers.supervisor): a lost session (BACKOFF) or a permanent failure (FAILED: credentials or
  certificate refused) makes the PLC's tags COMM_LOST in LineState at once, so their alarms are
  suppressed as consequences and the detector sees them as not good;
- the liveness age, checked by housekeeping, the fallback for a silent link that never breaks:
  a PLC is live while good data arrives, i.e. `mono - max(driver.stats.last_alive, start) <=
  stale_timeout_s`; one that never delivered counts from the controller's start.

Comm loss (the `comm` alarm source) is raised only by the age, so within stale_timeout_s +
housekeeping period of the last good data, and clears only when good data arrives again
(docs/safety.md). On comm loss with on_comm_loss = 'safe_state' it issues the safe-state writes
(once per loss); the watchdog heartbeat runs while the PLC is connected.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.actions import ActionEvent, WriteRequest
from controller.clock import Clock
from controller.events import EventLog
from controller.journal import Journal
from controller.linestate import LineState
from controller.pipeline import LinkFlags
from controller.writes import safe_state_action
from drivers.base import ConnectionState, Driver
from drivers.errors import DriverError
from drivers.supervisor import DriverSupervisor

log = logging.getLogger(__name__)


@dataclass
class Plc:
    """One PLC at run time: its config, driver, where its tags sit on the line, and its health."""

    config: Any  # the PLC's config table: .name, .driver, stale_timeout_s, on_comm_loss, safe_state, watchdog
    driver: Driver
    binding: np.ndarray  # driver tag index -> line position
    stale_timeout_s: float
    link: LinkFlags = field(default_factory=LinkFlags)
    state: ConnectionState = ConnectionState.DISCONNECTED  # as the supervisor last reported it
    supervisor: DriverSupervisor | None = None
    safe_state_done: bool = False
    safe_state_shadowed: bool = False  # this comm loss's safe state was only logged (global shadow on)
    heartbeat: int = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def polled(self) -> bool:
        """Every acquisition cycle reads every tag, so a tag's own age is its staleness."""
        return bool(getattr(self.driver, "polled", False))

    @property
    def comm_lost(self) -> bool:
        return self.link.comm_lost


class PlcHealth:
    """Connection state, liveness, comm loss, safe state and heartbeat of every PLC of the line."""

    def __init__(self, plcs: Sequence[Plc], line: LineState, events: EventLog, journal: Journal,
                 clock: Clock, *, shadow: bool, issue: Callable[[Sequence[WriteRequest]], None],
                 restep: Callable[[], None]) -> None:
        self.plcs = list(plcs)
        self.by_name = {p.name: p for p in self.plcs}
        self.line, self.events, self.journal, self.clock = line, events, journal, clock
        self.shadow = shadow
        self._issue, self._restep = issue, restep
        self.started_mono = clock.mono()  # reset by `start`: never-connected PLCs count from there

    def start(self) -> None:
        """From now on a PLC that never delivers is comm-lost after its stale_timeout_s."""
        self.started_mono = self.clock.mono()

    # ------------------------------------------------------------------ the state channel
    def on_state(self, plc: Plc, state: ConnectionState, detail: str) -> None:
        """The supervisor's report of a connection change (the only channel for it)."""
        plc.state = state
        self.journal.flush()  # the transitions of steps before this change are logged before it
        if state is ConnectionState.CONNECTED:
            self.events.add("driver", plc.name, "connected", state=state.value)
        elif state in (ConnectionState.BACKOFF, ConnectionState.FAILED):
            if state is ConnectionState.BACKOFF:
                message = f"connection lost: {detail}"
            else:  # permanent (credentials, certificate): the supervisor stopped retrying
                message = f"connection failed, no more attempts until the controller restarts: {detail}"
                log.error("%s: %s", plc.name, message)
            self.events.add("driver", plc.name, message, state=state.value)
            self.line.mark_lost(plc.binding)  # its values are unknown from now on
            self._restep()

    # ------------------------------------------------------------------ liveness (housekeeping)
    def check(self, mono: float) -> bool:
        """Raise or clear each PLC's comm loss from the age of its last good data; True if one was raised."""
        self.journal.flush()  # what the steps before this round did is logged before what it finds
        raised = False
        for plc in self.plcs:
            link = plc.link
            last_alive = plc.driver.stats.last_alive
            link.delivered = link.delivered or last_alive > -math.inf
            age = mono - max(last_alive, self.started_mono)
            if age <= plc.stale_timeout_s:
                if link.comm_lost:
                    link.comm_lost = link.safe_state_failed = plc.safe_state_done = False
                    plc.safe_state_shadowed = False
                    self.events.add("driver", plc.name, "good data again: comm loss cleared")
                continue
            if link.comm_lost:
                continue
            link.comm_lost = raised = True
            self.line.mark_lost(plc.binding)
            since = "the controller started" if last_alive < self.started_mono else "its last good data"
            self.events.add("driver", plc.name, f"no good data for {age:.2f} s since {since} "
                            f"(stale_timeout_s {plc.stale_timeout_s:g}): comm loss")
            if plc.config.on_comm_loss == "safe_state" and not plc.safe_state_done:
                plc.safe_state_done = True
                self._go_safe(plc)
        return raised

    def set_shadow(self, on: bool) -> list[str]:
        """The global shadow mode at run time (Operations.set_shadow_mode). Going off while a PLC's comm
        loss lasts writes the safe state that was only logged for it; returns those PLCs."""
        self.shadow = on
        owed = [] if on else [p for p in self.plcs if p.link.comm_lost and p.safe_state_shadowed]
        for plc in owed:
            self._go_safe(plc)
        return [p.name for p in owed]

    def _go_safe(self, plc: Plc) -> None:
        action, wall = safe_state_action(plc.name), self.clock.wall()
        plc.safe_state_shadowed = self.shadow
        for w in plc.config.safe_state:
            if self.shadow:
                self.journal.put([ActionEvent(wall, action, "shadow",
                                              f"shadow: would write {w.tag}={w.value} (comm loss)")])
                continue
            self.journal.put([ActionEvent(wall, action, "fired", f"writing {w.tag}={w.value} (comm loss)")])
            self._issue([WriteRequest(action, w.tag, w.value, wall, None)])

    def safe_state_failed(self, plc_name: str) -> None:
        """A safe-state write failed (controller.writes): raises `<plc>_safe_state_failed`."""
        self.by_name[plc_name].link.safe_state_failed = True

    # ------------------------------------------------------------------ heartbeat
    async def watchdog(self, plc: Plc) -> None:
        """Write the heartbeat counter every period while connected, so PLC logic sees us alive."""
        wd = plc.config.watchdog
        failures = 0
        while True:
            await asyncio.sleep(wd.period_s)
            if plc.state is not ConnectionState.CONNECTED:
                continue
            plc.heartbeat = (plc.heartbeat + 1) % wd.wrap
            try:
                await plc.driver.write(wd.tag, float(plc.heartbeat))
                failures = 0
            except (DriverError, OSError, TimeoutError) as exc:
                failures += 1
                if failures == 1:  # once per run of failures: no log spam on a flapping PLC
                    log.warning("%s: heartbeat write failed: %s", plc.name, exc)

    # ------------------------------------------------------------------ at start, views
    def warn_tight_timeouts(self) -> None:
        """Say once when a PLC's stale_timeout_s is shorter than its driver's worst-case liveness gap."""
        for plc in self.plcs:
            gap = plc.driver.alive_interval_s
            if plc.stale_timeout_s < gap:
                message = (f"stale_timeout_s {plc.stale_timeout_s:g} is shorter than the driver's "
                           f"worst-case gap between proofs of good data ({gap:g} s: poll interval and "
                           "request timeouts); a PLC answering every request just under its timeout "
                           "would be declared comm-lost: raise stale_timeout_s if this PLC is slow")
                self.events.add("driver", plc.name, message)
                log.info("%s: %s", plc.name, message)  # a worst case, not a fault: no warning noise

    def status(self, plc: Plc) -> dict:
        s = plc.driver.stats
        age = self.clock.mono() - s.last_alive
        return {"name": plc.name, "state": plc.state.value, "comm_lost": plc.link.comm_lost,
                "last_good_data_age_s": age if age < float("inf") else None,
                "tags": len(plc.binding), "reads": s.reads, "read_errors": s.read_errors,
                "writes": s.writes, "write_errors": s.write_errors, "last_error": s.last_error}

"""The answers of the probes GET /healthz and GET /readyz (Kubernetes, load balancers, scripts).

/healthz: is the service alive, i.e. would restarting it help? It says what the systemd watchdog
hears (controller.systemd): a housekeeping round whose checks ran (comm loss, staleness, alarm
delays, readback deadlines) within LIVENESS_S, the unit's WatchdogSec. A blocked event loop does not
answer at all; a wedged or failing round makes it 503. Before the start is complete (the numba
kernels compile, the API and the drivers start) it is 503 "starting", as systemd waits for READY=1;
from the stop on (SIGTERM) it is 503 "stopping".

/readyz: is the line watched with live data? Started, the configured model loaded (a start with a
model that does not load fails; without [detector] model the line runs on rules only), and every
PLC connected with good data no older than its stale_timeout_s. A PLC that is down makes it 503
and never /healthz: a restart of the controller never repairs a PLC, and would leave the line
unwatched while the service starts again (docs/fleet.md, probes).

Both only read counters and flags the service keeps anyway: no lock, no I/O, no await.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from drivers.base import ConnectionState

if TYPE_CHECKING:
    from controller.plc_health import Plc

LIVENESS_S = 10.0  # WatchdogSec=10s in configs/linesentry@.service: the same bound, the same reason


class Probes:
    """Liveness and readiness of one controller, from its housekeeping beats and its PLCs' health."""

    def __init__(self, mono: Callable[[], float], plcs: Sequence[Plc], *, liveness_s: float = LIVENESS_S,
                 model: Callable[[], object] = lambda: None) -> None:
        self._mono, self.plcs, self.liveness_s, self._model = mono, list(plcs), liveness_s, model
        self._started: float | None = None  # monotonic end of the start; None before it and from the stop
        self._stopping = False
        self._last_beat = -math.inf

    def started(self) -> None:
        """The start is complete (the moment systemd hears READY=1): liveness counts from here."""
        self._started = self._mono()

    def stopping(self) -> None:
        """The stop has begun (SIGTERM): writes finish, state is saved, the API closes soon."""
        self._started, self._stopping = None, True

    def beat(self) -> None:
        """A housekeeping round whose checks ran (called where the systemd watchdog is pinged)."""
        self._last_beat = self._mono()

    def health(self) -> tuple[bool, dict]:
        """(alive, body) for GET /healthz."""
        if self._started is None:
            return False, {"status": "stopping" if self._stopping else "starting"}
        age = self._mono() - max(self._last_beat, self._started)
        body = {"status": "ok" if age <= self.liveness_s else "wedged", "housekeeping_age_s": round(age, 3)}
        return age <= self.liveness_s, body

    def readiness(self) -> tuple[bool, dict]:
        """(ready, body) for GET /readyz: `waiting` names what keeps it not ready."""
        if self._started is None:
            return False, {"ready": False, "waiting": ["stop" if self._stopping else "start"]}
        mono = self._mono()
        waiting = [f"{plc.name}: {why}" for plc in self.plcs if (why := self._plc_waiting(plc, mono))]
        model = self._model()
        return not waiting, {"ready": not waiting, "model": str(model) if model else None,
                             "waiting": waiting}

    @staticmethod
    def _plc_waiting(plc: Plc, mono: float) -> str:
        """Why this PLC keeps the line not ready ('' when it delivers good data)."""
        if plc.state is not ConnectionState.CONNECTED:
            return plc.state.value
        age = mono - plc.driver.stats.last_alive
        if age > plc.stale_timeout_s:
            return "no good data yet" if math.isinf(age) else f"no good data for {age:.1f} s"
        return ""

"""systemd service notifications (sd_notify): READY=1, WATCHDOG=1, STOPPING=1.

Under `Type=notify` systemd counts the service started only when it says READY=1 (API
listening, drivers started), and with `WatchdogSec=` it kills and restarts a service that stops
sending WATCHDOG=1: the housekeeping loop pings, so a stuck event loop (the one that runs every
protection) ends in a restart instead of a line watched by nobody (configs/linesentry@.service).

Without NOTIFY_SOCKET (not started by systemd, or a `Type=simple` unit) every call is a no-op.
A notification that cannot be sent is logged once and never raised: the line's protection must
not depend on systemd hearing from us. The socket is non-blocking: a datagram socket whose reader
has stopped reading (a hung or busy PID 1, a wrong NOTIFY_SOCKET) fills after 10 messages
(net.unix.max_dgram_qlen), and a blocking send would then freeze the event loop that runs every
protection, forever; sdnotify's socket blocks, so the send is done here with the standard library.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from controller.housekeeping import HOUSEKEEPING_S

log = logging.getLogger(__name__)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises,
    or None when systemd asks for no watchdog (unset, unparsable, or meant for another pid)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(pid)):
        return None
    return usec / 2e6


def connect(path: str) -> socket.socket:
    """A non-blocking datagram socket connected to NOTIFY_SOCKET (`@name`: Linux abstract namespace)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.connect("\0" + path[1:] if path.startswith("@") else path)
    except OSError:
        sock.close()
        raise
    return sock


class SystemdNotify:
    """The service's messages to systemd; a no-op object when there is no NOTIFY_SOCKET."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None) -> None:
        self.socket_path, self.watchdog_s = socket_path, watchdog_s
        self._socket: socket.socket | None = None  # connected at the first message
        self._last_ping = -float("inf")
        self._failed = False

    @classmethod
    def from_environment(cls) -> SystemdNotify:
        """What systemd passed in the environment (reads it only: no socket until the first message)."""
        interval = watchdog_interval(os.environ, os.getpid())
        if interval is not None and 2 * interval < 2 * HOUSEKEEPING_S:  # the timeout is 2 * interval
            log.warning("WatchdogSec=%gs is shorter than two %g s housekeeping rounds (the pings come "
                        "from them): systemd will kill and restart the service; set WatchdogSec=10s "
                        "(configs/linesentry@.service)", 2 * interval, HOUSEKEEPING_S)
        return cls(os.environ.get("NOTIFY_SOCKET") or None, interval)

    def ready(self) -> None:
        self._send("READY=1\nSTATUS=running")

    def stopping(self) -> None:
        """Said once at stop; no ping after it (systemd stops the watchdog when the unit stops)."""
        self.watchdog_s = None
        self._send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        """Called every housekeeping round; pings at most every `watchdog_s` (WatchdogSec / 2)."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s and self._send("WATCHDOG=1"):
            self._last_ping = now  # a ping that was not sent is tried again next round

    def _send(self, message: str) -> bool:
        """True once systemd's socket took the message."""
        if self.socket_path is None:
            return False
        try:
            if self._socket is None:
                self._socket = connect(self.socket_path)
            self._socket.send(message.encode())  # non-blocking: a full queue raises BlockingIOError
            self._failed = False
            return True
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path; the controller runs on
            if self._socket is not None:
                self._socket.close()
            self._socket = None  # reconnect next time (systemd may have been restarted)
            if not self._failed:
                log.error("systemd notification %r to %s failed: %s: %s", message.split("\n")[0],
                          self.socket_path, type(exc).__name__, exc)
            self._failed = True
            return False

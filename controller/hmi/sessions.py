"""Browser sessions of the HMI, kept in memory: a login with a role's token opens one.

A session has a random id (the HttpOnly cookie), a random CSRF token (sent back by the page in a
header on every change), a user name and a role, and a bounded lifetime on the monotonic clock.
Memory is bounded too: at `max_sessions` a login ends the oldest session of its own role or a
lower one (expired sessions go first), never a higher role's: whoever holds the viewer token (a
dashboard's) cannot log the operator's panel out by logging in 64 times. With every open session
of a higher role the login is refused (503). A restart of the controller ends every session (the
operator logs in again); the bearer tokens of the API are not affected.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controller.errors import LinesentryError
from controller.roles import Role

SESSION_LIFETIME_S = 8 * 3600.0  # one shift
MAX_SESSIONS = 64  # panels and engineers' laptops on one line


class SessionLimit(LinesentryError):
    """Every open session belongs to a higher role than the login's: none of them may end for it."""

    status = 503


@dataclass(frozen=True)
class Session:
    id: str  # the cookie's value
    csrf: str  # the page sends it in X-CSRF-Token on every change
    user: str
    role: Role
    expires_at: float  # on the store's (monotonic) clock


class SessionStore:
    """Open sessions by id; an expired one is gone the first time it is asked for."""

    def __init__(self, lifetime_s: float = SESSION_LIFETIME_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s, self.max_sessions, self.clock = lifetime_s, max_sessions, clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def create(self, user: str, role: Role) -> Session:
        """A new session; at the cap the oldest one of `role` or a lower role ends (SessionLimit if none)."""
        now = self.clock()
        for expired in [s.id for s in self._open.values() if now >= s.expires_at]:
            del self._open[expired]
        if len(self._open) >= self.max_sessions:
            oldest = next((s for s in self._open.values() if role.allows(s.role)), None)
            if oldest is None:
                raise SessionLimit(f"all {self.max_sessions} HMI sessions belong to a higher role than "
                                   f"{role.value}: one of them must log out first")
            del self._open[oldest.id]
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), user=user, role=role,
                          expires_at=now + self.lifetime_s)
        self._open[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._open.get(session_id) if session_id else None
        if session is not None and self.clock() >= session.expires_at:
            del self._open[session.id]
            return None
        return session

    def remaining_s(self, session: Session) -> float:
        return max(0.0, session.expires_at - self.clock())

    def end(self, session_id: str) -> None:
        self._open.pop(session_id, None)

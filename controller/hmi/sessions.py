"""Browser sessions of the HMI, kept in memory: a login with a role's token opens one.

A session has a random id (the HttpOnly cookie), a random CSRF token (sent back by the page in a
header on every change), a user name and a role, and a bounded lifetime on the monotonic clock.
Memory is bounded too: beyond `max_sessions` the oldest session ends. A restart of the controller
ends every session (the operator logs in again); the bearer tokens of the API are not affected.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controller.roles import Role

SESSION_LIFETIME_S = 8 * 3600.0  # one shift
MAX_SESSIONS = 64  # panels and engineers' laptops on one line


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
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), user=user, role=role,
                          expires_at=self.clock() + self.lifetime_s)
        self._open[session.id] = session
        while len(self._open) > self.max_sessions:
            self._open.popitem(last=False)
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

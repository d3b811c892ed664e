"""Who may do what on the local API: three roles, one token file each, one route table.

The API (controller.api) checks a request against `required_role`; the CLI (controller.client)
reads the token file of the role a request needs. One table keeps the two from disagreeing.
Standard library only: the CLI imports this on every command.

>>> required_role("POST", "/api/v1/alarms/line_anomaly/ack")
<Role.OPERATOR: 'operator'>
>>> required_role("POST", "/api/v1/actions/stop_line/reset").value
'engineer'
>>> Role.ENGINEER.allows(Role.OPERATOR), Role.VIEWER.allows(Role.OPERATOR)
(True, False)
"""

from __future__ import annotations

import enum
import re


class Role(enum.Enum):
    """Lowest to highest; a higher role may do what a lower one may."""

    VIEWER = "viewer"  # every read: status, tags, alarms, events, the stream, metrics, the HMI
    OPERATOR = "operator"  # ack, shelve, unshelve
    ENGINEER = "engineer"  # reset, inhibit, out of service, model reload

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """True when this role may do what `needed` may."""
        return self.rank >= needed.rank


_RANK = {role: rank for rank, role in enumerate(Role)}

# The bearer token of each role in the state directory (mode 0600, created at first start).
# `api-token` keeps its name from before roles existed: it is the operator's.
TOKEN_FILES: dict[Role, str] = {
    Role.VIEWER: "api-read-token",
    Role.OPERATOR: "api-token",
    Role.ENGINEER: "api-engineer-token",
}

# Requests that change something, and the role each needs. Every read (GET, HEAD) is the viewer's;
# a POST that is not listed needs the highest role, so a new route is closed until it is listed.
_CHANGES: tuple[tuple[re.Pattern[str], Role], ...] = tuple((re.compile(pattern), role) for pattern, role in (
    (r"/api/v1/alarms/[^/]+/(ack|shelve|unshelve)", Role.OPERATOR),
    (r"/api/v1/alarms/[^/]+/out-of-service", Role.ENGINEER),
    (r"/api/v1/actions/[^/]+/(reset|inhibit)", Role.ENGINEER),
    (r"/api/v1/model/reload", Role.ENGINEER),
))


def required_role(method: str, path: str) -> Role:
    """The lowest role that may send `method` to `path` (an API path, '/api/v1/...')."""
    if method.upper() in ("GET", "HEAD"):
        return Role.VIEWER
    for pattern, role in _CHANGES:
        if pattern.fullmatch(path):
            return role
    return Role.ENGINEER

"""Who is asking, and may they: a bearer token (the CLI, scripts) or an HMI session (a browser).

A request's role is the role of the bearer token it sends, else that of its session cookie, else
none. No valid credentials where a role is needed is 401; a valid token or session whose role is
too low is 403. A change made through a session must carry the session's CSRF token in the
`X-CSRF-Token` header, and any change whose `Origin` (or `Sec-Fetch-Site`) says another site sent
it is refused (403): a page elsewhere cannot make the operator's browser ack or reset. A login
and a session's change must declare a JSON body (415 otherwise), which no HTML form can.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from controller.errors import LinesentryError
from controller.hmi.sessions import Session, SessionStore
from controller.roles import TOKEN_FILES, Role

COOKIE = "linesentry_session"  # and the port: `cookie_name`
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Unauthorized(LinesentryError):
    """No valid credentials (token or session) where a role is needed."""

    status = 401


class Forbidden(LinesentryError):
    """Valid credentials, but a role too low, or a change without its CSRF token or from another site."""

    status = 403


class NotJson(LinesentryError):
    """A browser's login or change whose body is not declared JSON (a form post from another page)."""

    status = 415


@dataclass(frozen=True)
class Caller:
    role: Role | None  # None: nobody identified (reads on loopback need no one)
    session: Session | None = None  # set when the browser's session cookie identified the caller

    @property
    def user(self) -> str | None:
        """The logged-in user of a session (a bearer caller names the user in the request body)."""
        return self.session.user if self.session else None


class Access:
    """The roles' bearer tokens and the HMI's sessions; `require` checks one request."""

    def __init__(self, tokens: Mapping[Role, str | None], sessions: SessionStore, *,
                 reads_need_token: bool = False) -> None:
        self.tokens = {role: token for role, token in tokens.items() if token}
        self.sessions, self.reads_need_token = sessions, reads_need_token

    def role_of(self, token: str) -> Role | None:
        """The role whose token this is; every token is compared (constant time whatever matches)."""
        found = None
        for role, expected in self.tokens.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = role
        return found

    def bearer_role(self, request: web.Request) -> Role | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.role_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None

    def known_role(self, request: web.Request) -> Role | None:
        """The role the request's token (or else its session) gives; None, never an error, otherwise."""
        if "Authorization" in request.headers:
            return self.bearer_role(request)
        session = self.sessions.get(request.cookies.get(cookie_name(request)))
        return session.role if session else None

    def caller(self, request: web.Request) -> Caller:
        """Who sent `request`; Unauthorized for an Authorization header that is not a token of ours."""
        if "Authorization" in request.headers:
            role = self.bearer_role(request)
            if role is None:
                raise Unauthorized("wrong API token: send 'Authorization: Bearer <token>' with a token from "
                                   f"the state directory ({', '.join(TOKEN_FILES.values())})")
            return Caller(role)
        session = self.sessions.get(request.cookies.get(cookie_name(request)))
        return Caller(session.role, session) if session else Caller(None)

    def require(self, request: web.Request, needed: Role) -> Caller:
        """The caller of `request` if it may do what `needed` may; Unauthorized / Forbidden otherwise."""
        changes = request.method not in SAFE_METHODS
        if changes:
            refuse_other_sites(request)
        if needed is Role.VIEWER and not self.reads_need_token and not changes:
            return Caller(None)  # reads on loopback are open: no header is even looked at
        caller = self.caller(request)
        if caller.role is None:
            raise Unauthorized(_missing(needed))
        if changes and caller.session is not None:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), caller.session.csrf.encode()):
                raise Forbidden(f"missing or wrong CSRF token: a change from a browser session must send "
                                f"the session's {CSRF_HEADER} header (reload the HMI page)")
        if not caller.role.allows(needed):
            raise Forbidden(f"the {caller.role.value} role may not do this: it needs the {needed.value} role "
                            f"(the {TOKEN_FILES[needed]} token, or an HMI login with it)")
        if changes and caller.session is not None:
            require_json(request)
        return caller


def _missing(needed: Role) -> str:
    if needed is Role.VIEWER:
        return ("this API is reachable beyond loopback, so reads need a token too: send 'Authorization: "
                f"Bearer <token>' ({TOKEN_FILES[Role.VIEWER]} or higher in the state directory) or log in")
    return (f"missing API token: this needs the {needed.value} role: send 'Authorization: Bearer <token>' "
            f"with the {TOKEN_FILES[needed]} token from the state directory, or log in on the HMI")


def cookie_name(request: web.Request) -> str:
    """The session cookie of the controller on the request's port, `linesentry_session_8470`.

    Browsers keep cookies per host, not per port: with one name, the controllers of two lines on
    one host (linesentry@line1, @line2) overwrote each other's cookie, and a login on one logged
    the same browser out of the other.
    """
    _, colon, port = request.host.rpartition(":")
    return f"{COOKIE}_{port}" if colon and port.isdigit() else COOKIE


def refuse_other_sites(request: web.Request) -> None:
    """Forbidden when the browser says another origin sent this request (CSRF, login CSRF).

    Browsers send `Origin` on every POST and `Sec-Fetch-Site` on every request; the CLI sends
    neither, so it is not affected. The Origin's host and port must be the Host header's; its
    scheme is not compared: behind a TLS proxy the browser's https:// reaches us as plain http,
    and a page served from this host and port is served by this controller anyway.
    """
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower().partition("://")[2] != request.host.lower():
        raise Forbidden(f"cross-origin request refused: Origin {origin[:100]!r} is not this controller")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site[:40]})")


def require_json(request: web.Request) -> None:
    """NotJson unless a body is declared `application/json`: a plain HTML form (text/plain,
    urlencoded, multipart) can be sent cross-site without a preflight, JSON only by a script of
    this page. A request without a body (a logout) has nothing to declare; bearer callers are not
    held to it (curl -d)."""
    if request.can_read_body and request.content_type != "application/json":
        raise NotJson(f"send the body as JSON (Content-Type: application/json), not "
                      f"{request.content_type[:60]!r}")

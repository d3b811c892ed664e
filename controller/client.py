"""The local HTTP API as the CLI's operator commands see it: one request to
``[controller] api_host:api_port``, the bearer token of the role the request needs
(controller.roles) read from the state directory, every failure one `ApiError` line. Standard
library only (http.client), so `linesentry status` starts fast."""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path
from typing import Any

from controller.config.controller import ControllerSection
from controller.errors import LinesentryError
from controller.roles import TOKEN_FILES, Role, required_role

# The largest answer read: an events page or a status is kilobytes; anything beyond is not the API.
MAX_REPLY_BYTES = 16 << 20


USER_MISTAKES = (400, 422)  # API answers that exit 2, like the same errors raised locally (describe_error)


class ApiError(LinesentryError):
    """A failed API call: a one-line message and the CLI exit code it maps to (1, or 2 when the
    mistake is the user's to fix: the token cannot be read (run the command as the service user),
    or the API called the request itself wrong (400 bad input, 422 an unusable model))."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _token(section: ControllerSection, needed: Role) -> str:
    """The bearer token of the lowest role that may send the request that needs `needed`, or of a
    higher one when that file cannot be read (a reader with the operator's file may still read)."""
    higher = [role for role in Role if role.allows(needed)]
    for role in higher:
        path = Path(section.state_dir) / TOKEN_FILES[role]
        with contextlib.suppress(OSError):
            return path.read_text().strip()
    first = Path(section.state_dir) / TOKEN_FILES[needed]
    raise ApiError(f"cannot read the API token {first} ({needed.value} role): run this on the controller "
                   "host as the service user", exit_code=2)


def request(section: ControllerSection, method: str, path: str, body: dict | None = None,
            timeout: float = 5.0) -> http.client.HTTPResponse:
    """Send one request and return the response (status < 400); ApiError for every failure."""
    headers = {"Content-Type": "application/json"}
    needed = required_role(method, f"/api/v1{path}")
    if needed is not Role.VIEWER or section.reads_need_token:  # reads need a token beyond loopback
        headers["Authorization"] = f"Bearer {_token(section, needed)}"
    host, port = section.api_host, section.api_port
    where = f"{host}:{port}"
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request(method, f"/api/v1{path}", body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
    except ConnectionRefusedError:
        conn.close()
        raise ApiError(f"the controller is not running (nothing answers on {where})") from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise ApiError(f"no usable answer from the controller on {where}: {_why(exc, timeout)}") from None
    if response.status >= 400:
        message = f"http://{where}/api/v1{path}: HTTP {response.status}"
        with contextlib.suppress(Exception):  # the API's one-line {"error": ...} when it sent one
            message = one_line(json.loads(response.read(MAX_REPLY_BYTES))["error"])
        conn.close()
        raise ApiError(message, exit_code=2 if response.status in USER_MISTAKES else 1)
    return response


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (overloaded or hung?)"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def one_line(value: Any, limit: int | None = 500) -> str:
    """Text from the API as one printable line: whitespace folded, control characters (terminal
    escape sequences) shown escaped, at most `limit` characters.

    >>> one_line("a\\n b\\x1b[31m")
    'a b\\\\x1b[31m'
    """
    text = " ".join(str(value).split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def call(section: ControllerSection, method: str, path: str, body: dict | None = None,
         timeout: float = 5.0) -> Any:
    """One request, its JSON answer; ApiError for every failure (also a reply that is not JSON)."""
    response = request(section, method, path, body, timeout)
    try:
        with response:
            raw = response.read(MAX_REPLY_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:  # a reset connection, a timeout, a cut body
        raise ApiError(f"bad reply from the controller on {path}: {_why(exc, timeout)}") from None
    if len(raw) > MAX_REPLY_BYTES:
        raise ApiError(f"bad reply from the controller on {path}: larger than {MAX_REPLY_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except ValueError as exc:  # not JSON (not UTF-8, or not the API at all)
        raise ApiError(f"bad reply from the controller on {path}: not JSON ({one_line(exc, 120)})") from None

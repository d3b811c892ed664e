"""The local HTTP API as the CLI's operator commands see it: one request to
``[controller] api_host:api_port``, the bearer token read from the state directory, every failure
one `ApiError` line. Standard library only (http.client), so `linesentry status` starts fast."""

from __future__ import annotations

import contextlib
import http.client
import json
from pathlib import Path
from typing import Any

from controller.config.controller import ControllerSection
from controller.errors import LinesentryError
from controller.statedir import READ_TOKEN_FILE, TOKEN_FILE


class ApiError(LinesentryError):
    """A failed API call: a one-line message and the CLI exit code it maps to (1, or 2 when the
    token cannot be read: run the command as the service user)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _token(section: ControllerSection, method: str) -> str:
    """The bearer token: POSTs need the operator token, reads accept the read-only one."""
    names = (TOKEN_FILE,) if method == "POST" else (READ_TOKEN_FILE, TOKEN_FILE)
    for name in names:
        path = Path(section.state_dir) / name
        with contextlib.suppress(OSError):
            return path.read_text().strip()
    raise ApiError(f"cannot read the API token {path}: run this on the controller host as the service user",
                   exit_code=2)


def request(section: ControllerSection, method: str, path: str, body: dict | None = None,
            timeout: float = 5.0) -> http.client.HTTPResponse:
    """Send one request and return the response (status < 400); ApiError for every failure."""
    headers = {"Content-Type": "application/json"}
    if method == "POST" or section.reads_need_token:  # reads need a token on binds beyond loopback
        headers["Authorization"] = f"Bearer {_token(section, method)}"
    host, port = section.api_host, section.api_port
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request(method, f"/api/v1{path}", body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
    except OSError:
        conn.close()
        raise ApiError(f"the controller is not running (nothing answers on {host}:{port})") from None
    if response.status >= 400:
        message = f"http://{host}:{port}/api/v1{path}: HTTP {response.status}"
        with contextlib.suppress(Exception):  # the API's one-line {"error": ...} when it sent one
            message = str(json.loads(response.read())["error"])
        conn.close()
        raise ApiError(message)
    return response


def call(section: ControllerSection, method: str, path: str, body: dict | None = None) -> Any:
    """One request, its JSON answer; ApiError for every failure (also a reply that is not JSON)."""
    response = request(section, method, path, body)
    try:
        with response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:  # a reset connection or a reply that is not JSON
        raise ApiError(f"bad reply from the controller on {path}: {exc}") from None

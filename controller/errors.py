"""The product's error root: every error a user can cause or meet is a `LinesentryError`.

The CLI prints one as a single line (never a traceback); the API answers its `status`
(controller.api maps `status` alone: it never looks at the message or the class name).
`drivers` and `models` depend on no project package, so their own roots (`drivers.errors.DriverError`,
`models.errors.ModelError`) are translated where the controller meets them, keeping the original as
``__cause__`` (``raise PlcError(...) from exc``).
"""

from __future__ import annotations


class LinesentryError(Exception):
    """Root of the product's errors. `status` is the HTTP status the local API answers with."""

    status = 500


class BadRequest(LinesentryError, ValueError):
    """The request itself is wrong (a missing reason, a bad duration). Also a ValueError, so code
    that validates input with `except ValueError` keeps catching it."""

    status = 400


class NotFound(LinesentryError, LookupError):
    """No alarm, action, PLC or tag of that name (also a LookupError)."""

    status = 404


class Refused(LinesentryError):
    """Refused in the current state (e.g. shelving a suppressed-by-design alarm); documented as 409."""

    status = 409


class PlcError(LinesentryError):
    """A PLC could not be reached, refused us, or answered with errors (cause: a `DriverError`)."""

    status = 502


class ModelLoadError(LinesentryError):
    """A model artifact could not be loaded or does not fit the line (cause: a `ModelError`)."""

    status = 422


class NotSaved(LinesentryError):
    """An operator's change is in effect but the state file could not be written (disk full, the
    state directory gone): it is not yet durable; housekeeping retries the save (cause: the OSError)."""

    status = 503

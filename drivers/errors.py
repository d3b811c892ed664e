"""The driver error hierarchy: what went wrong with a PLC, as a type, never as message text.

Every driver raises these (root `DriverError`) with a one-line message fit for an operator and
the protocol library's exception as `__cause__` (`raise ConnectionLost(...) from exc`), so the
controller can translate them into its own errors and a log keeps the full chain.

`permanent` errors cannot heal by reconnecting: the PLC refused our identity or our certificate,
we refused its certificate, or a secret the config names is missing from our environment. The
supervisor stops retrying on them and reports FAILED with the cause, instead of backing off
forever against a PLC that will say no every time.
"""


class DriverError(Exception):
    """A driver failure with a one-line message fit for an operator."""

    permanent = False


class ConnectionLost(DriverError):
    """The PLC connection could not be opened or broke; the supervisor reconnects."""


class AccessDenied(DriverError):
    """The PLC and we do not accept each other's identity: permanent (see the two kinds below)."""

    permanent = True


class CredentialsRejected(AccessDenied):
    """The PLC refused our user identity (user name/password, identity token)."""


class CertificateUntrusted(AccessDenied):
    """The PLC does not trust our client certificate, or its certificate is not the one we trust."""


class SecretMissing(DriverError):
    """The environment variable the config names for a secret (a password) is not set: permanent,
    as nothing outside can add it to a running process's environment."""

    permanent = True


class WriteRefused(DriverError):
    """A write to a tag the configuration does not mark writable, to an unknown tag, or of a value
    the tag cannot hold; nothing was sent."""


class WriteFailed(DriverError):
    """The PLC rejected a write, did not answer it, or the readback did not confirm it."""


class UnknownDriver(DriverError):
    """No driver plugin of that name is registered; the message lists the registered ones."""

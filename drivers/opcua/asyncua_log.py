"""Keep asyncua's log honest and short: no ERROR traceback for an ordinary PLC restart.

When a server restarts, asyncua's background loops (publish, subscription watchdog, session
teardown) log the broken connection with `logger.exception` ("Publish iteration crashed;
retrying in 1s", ...) although the driver reports the loss itself, in one line, as
ConnectionLost. `install()` puts a filter on those asyncua loggers that turns such a record
into a one-line DEBUG record when its exception is a connection/timeout error, and so for the
"... was called but connection is closed" warnings of closing a lost session; any other
record is left untouched (it may be a real bug).
"""

import asyncio
import logging

from asyncua.common.utils import NotEnoughData
from asyncua.ua import uaerrors

# The asyncua loggers whose background loops log a lost connection with a traceback.
LOGGERS = (
    "asyncua.client.ua_session.UaSession",  # "Publish iteration crashed; retrying in 1s"
    "asyncua.client.client",  # "Subscription ... recreate failed", "close_session raised during disconnect"
    "asyncua.client.ua_client.UASocketProtocol",
    "asyncua.client.ua_client.UaClient",  # "close_secure_channel was called but connection is closed"
    "asyncua.common.subscription",
)
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncio.TimeoutError, asyncio.CancelledError,
                      uaerrors.BadSessionClosed, uaerrors.BadSessionIdInvalid, uaerrors.BadConnectionClosed,
                      uaerrors.BadSecureChannelClosed, uaerrors.BadServerHalted, uaerrors.BadShutdown,
                      uaerrors.BadTimeout, uaerrors.BadNoSubscription, uaerrors.BadSubscriptionIdInvalid,
                      uaerrors.BadTooManyPublishRequests,
                      NotEnoughData)  # a message asyncua cannot parse, e.g. a refused secure channel


_CLOSED_WARNING = "was called but connection is closed"


class ConnectionNoise(logging.Filter):
    """Demote asyncua's 'lost connection' tracebacks and warnings to one DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _CONNECTION_ERRORS):
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
        elif exc is None and _CLOSED_WARNING in str(record.msg):
            record.msg = record.getMessage()
        else:
            return True
        record.args, record.exc_info, record.exc_text = None, None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = ConnectionNoise()


def install() -> None:
    """Attach the filter to asyncua's loggers (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

"""Logging for the service: one event per line, optional JSON, per-module levels, no floods.

    setup_logging("INFO", json=True, module_levels={"drivers": "DEBUG", "asyncua": "WARNING"})

Text lines are `time LEVEL logger: message`; JSON lines are one object each with
`time` (ISO 8601 UTC), `level`, `logger`, `message`, plus any `extra=` fields and
`exc` for a traceback (escaped, so still one line). `RateLimitFilter` passes one
record per (logger, level, formatted message) every `interval_s` seconds and counts
the rest; the next one let through carries "(repeated K times)", so a flapping PLC
logs a line every few seconds, not 20 per second. It keys on the full message, not
the template: two different alarms are never merged into one line.

`SecretFilter` (installed first on the handler) replaces every registered secret
(`register_secret`: API tokens, passwords and tokens read from the environment)
and asyncua's `Password=b'...'` dumps with `***` in messages, tracebacks and
extra fields, at every level. asyncua logs at WARNING unless `module_levels`
names it: its INFO is 9 KB publish dumps and tracebacks on normal disconnects. pymodbus logs
at CRITICAL unless named: its per-request ERRORs repeat what the Modbus driver reports once.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

DEFAULT_RATE_LIMIT_S = 10.0
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_OURS = "_linesentry_handler"


# Chatty libraries, unless module_levels names them. pymodbus logs ERROR for every unanswered or
# stray frame; the Modbus driver reports each failure itself (once per block), so only CRITICAL passes.
QUIET_BY_DEFAULT = {"asyncua": logging.WARNING, "pymodbus": logging.CRITICAL}
MIN_SECRET_CHARS = 4  # shorter values would scrub ordinary words
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_ASYNCUA_PASSWORD = re.compile(r"(Password=b?)('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
SCRUBBED = "***"


def register_secret(value: str | bytes | None) -> None:
    """Never log `value` (nor its bytes repr) again, by any logger at any level."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    forms = {value, repr(value.encode("utf-8"))[2:-1], repr(value)[1:-1]}
    with _secrets_lock:
        _secrets.update(f for f in forms if len(f) >= MIN_SECRET_CHARS)


def scrub(text: str) -> str:
    """`text` with every registered secret and asyncua password dump replaced by ***."""
    if "Password=" in text:
        text = _ASYNCUA_PASSWORD.sub(lambda m: f"{m.group(1)}'{SCRUBBED}'", text)
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, SCRUBBED)
    return text


class SecretFilter(logging.Filter):
    """Scrubs secrets from a record before any formatter sees it (message, traceback, extras)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


def parse_level(level: str) -> int:
    """'debug' / 'INFO' / '20' -> the numeric level; ValueError naming the choices."""
    text = str(level).strip()
    if text.isdigit():
        return int(text)
    value = logging.getLevelNamesMapping().get(text.upper())
    if value is None:
        raise ValueError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return value


def parse_module_levels(spec: str | None) -> dict[str, str]:
    """'drivers=DEBUG,asyncua=WARNING' -> {'drivers': 'DEBUG', 'asyncua': 'WARNING'} (validated)."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, level = part.partition("=")
        if not sep or not name.strip() or not level.strip():
            raise ValueError(f"bad log level entry {part!r}: use module=LEVEL, e.g. drivers=DEBUG")
        parse_level(level)
        out[name.strip()] = level.strip().upper()
    return out


class RateLimitFilter(logging.Filter):
    """Let one record per (logger, level, formatted message) through every `interval_s` seconds."""

    def __init__(self, interval_s: float = DEFAULT_RATE_LIMIT_S,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._seen: dict[tuple, list] = {}  # key -> [time let through, suppressed count]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval_s <= 0:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return False
            repeated = entry[1] if entry is not None else 0
            if entry is None and len(self._seen) >= self.max_keys:
                self._prune(now)
            self._seen[key] = [now, 0]
        if repeated:
            record.msg = f"{record.getMessage()} (repeated {repeated} times)"
            record.args = None
            record.repeated = repeated
        return True

    def _prune(self, now: float) -> None:
        for key in [k for k, (t, _) in self._seen.items() if now - t >= self.interval_s]:
            del self._seen[key]
        if len(self._seen) >= self.max_keys:  # all recent: forget the oldest half
            for key in sorted(self._seen, key=lambda k: self._seen[k][0])[: self.max_keys // 2]:
                del self._seen[key]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(out, default=str, ensure_ascii=False)


class OneLineFormatter(logging.Formatter):
    """The text format, with newlines in messages and tracebacks escaped: one event, one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(level: str | int = "INFO", json: bool = False, module_levels: dict[str, str] | None = None,
                  *, rate_limit_s: float = DEFAULT_RATE_LIMIT_S, stream: TextIO | None = None
                  ) -> logging.Handler:
    """Configure the root logger (replacing the handler an earlier call installed); returns the handler."""
    root_level = level if isinstance(level, int) else parse_level(level)
    parsed = {name: parse_level(lvl) for name, lvl in (module_levels or {}).items()}
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(h)
        h.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _OURS, True)
    handler.setFormatter(JsonFormatter() if json else OneLineFormatter(TEXT_FORMAT))
    handler.addFilter(SecretFilter())  # first: the rate limiter keys on the scrubbed message
    handler.addFilter(RateLimitFilter(rate_limit_s))
    root.addHandler(handler)
    root.setLevel(root_level)
    for name, lvl in {**QUIET_BY_DEFAULT, **parsed}.items():
        logging.getLogger(name).setLevel(lvl)
    return handler


def alarm_transition_level(to_state: str) -> int:
    """The one place that decides how loud an alarm transition is in the service log:
    a raise (-> UNACK) is a WARNING; returns to normal, acks, shelving and the rest are INFO."""
    return logging.WARNING if str(to_state).upper().rsplit(".", 1)[-1] == "UNACK" else logging.INFO

"""Logging for the service: one event per line, optional JSON, per-module levels, no floods.

    setup_logging("INFO", json=True, module_levels={"drivers": "DEBUG", "asyncua": "WARNING"})

Text lines are `time LEVEL logger: message`; JSON lines are one object each with
`time` (ISO 8601 UTC), `level`, `logger`, `message`, plus any `extra=` fields and
`exc` for a traceback (escaped, so still one line). `RateLimitFilter` passes one
record per (logger, message template) every `interval_s` seconds and counts the
rest; the next one let through carries "(repeated K times)", so a flapping PLC
logs a line every few seconds, not 20 per second.
"""

from __future__ import annotations

import json as jsonlib
import logging
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
    """Let one record per (logger, level, message template) through every `interval_s` seconds."""

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
        key = (record.name, record.levelno, str(record.msg))
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
    handler.addFilter(RateLimitFilter(rate_limit_s))
    root.addHandler(handler)
    root.setLevel(root_level)
    for name, lvl in parsed.items():
        logging.getLogger(name).setLevel(lvl)
    return handler

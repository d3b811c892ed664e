"""What every section of the line config is built from: the strict pydantic base, bounded
durations, name rules and key paths (one place each, so sections cannot drift apart)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

Loc = tuple[str | int, ...]  # a key path: ('actions', 1, 'write', 'tag')

# Every duration and count has a range (docs/configuration.md): a value outside it is refused at
# load, naming the key, instead of failing at run time (inf timeouts, 1e-9 s poll periods).
MAX_DELAY_S = 86_400.0  # on/off delays, min_interval_s: a day
MAX_SHELVE_S = 7 * 86_400.0  # a week
MIN_PERIOD_S = 0.01  # watchdog periods, stale timeouts, readback deadlines
MAX_PERIOD_S = 3_600.0

NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # alarm and action names
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # the name of an environment variable


class Strict(BaseModel):
    """No unknown keys, no coercion ("8470" is not 8470), immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def Seconds(lo: float, hi: float, *, default: Any, lo_open: bool = False) -> Any:  # noqa: N802
    """A finite duration in [lo, hi] (or (lo, hi] with lo_open)."""
    bound = {"gt": lo} if lo_open else {"ge": lo}
    return Field(default=default, le=hi, allow_inf_nan=False, **bound)


def printable(text: str) -> str:
    """`text` with every invisible or control character (a terminal escape, a right-to-left
    override, a newline) written as its Python escape, so a message shows what the file holds.

    >>> printable("press\\u202e7 \\x1b[2J")
    'press\\\\u202e7 \\\\x1b[2J'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def check_name(v: str) -> str:
    if not NAME.match(v):
        raise ValueError(f"expected letters, digits, '_', '.' or '-' only, got {v!r}")
    return v


def as_path(v: Any) -> Any:
    """Strict mode refuses a str for a Path; TOML only has strings, so convert exactly those."""
    return Path(v) if isinstance(v, str) else v


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths are relative to the TOML file, not to wherever the service was started."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base) / value))


def _empty_is_none(v: Any) -> Any:
    return None if v == "" else as_path(v)


OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none), AfterValidator(resolve_path)]
"""A folder key that "" or absence leaves unset; relative to the TOML file."""


def fmt_loc(loc: Loc) -> str:
    """The key path as a user writes it.

    >>> fmt_loc(('actions', 1, 'write', 'tag'))
    'actions[1].write.tag'
    >>> fmt_loc(('detector', 'limits', 'oil temp'))
    "detector.limits['oil temp']"
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out

"""Reading the TOML file itself: size, encoding, syntax and nesting problems, each one line that
names the file (and the line:column where TOML says), before any key is looked at."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from controller.config.errors import ConfigError

MAX_CONFIG_BYTES = 16 << 20  # a line config is kilobytes; refuse anything absurd before parsing
MAX_NESTING = 32  # tables/arrays inside each other; real configs use 4


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML, or ConfigError with one line saying what is wrong with the file itself."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; is this a line config?"])
    text = _decode(path, raw)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error(path, exc)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: TOML syntax error: arrays or tables nested too deeply "
                           f"(at most {MAX_NESTING} levels)"]) from None
    if _depth(data) > MAX_NESTING:
        raise ConfigError([f"{path}: arrays or tables nested more than {MAX_NESTING} levels deep"])
    return data


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text; a UTF-8 BOM (Windows editors) is accepted, anything else named with the fix."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([f"{path}: the file is UTF-16 text; save it as UTF-8"])
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if b"\x00" in raw:
        raise ConfigError([f"{path}: contains NUL bytes: a binary file, not a TOML line config"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file "
                           "as UTF-8 (e.g. iconv -f latin1 -t utf-8)"]) from None


def _depth(data: Any) -> int:
    """Nesting depth of the parsed TOML, without recursion (the input decides how deep it is).

    >>> _depth({"a": [{"b": 1}]})
    2
    """
    deepest, stack = 0, [(data, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_NESTING:
            children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    msg = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        return f"{path}:{m.group(1)}:{m.group(2)}: TOML syntax error: {msg[:m.start()].strip()}"
    return f"{path}: TOML syntax error: {msg}"

"""One durable file write for every state file (tokens, state, shadow, Sparkplug bdSeq) and copy
(model artifacts into a registry or a models folder).

Temp file in the same directory (created with `mode`), fsync, rename over the target, fsync of
the directory: a kill -9 or a power cut leaves the old file or the new one, never a torn one,
and a failed write (disk full, a folder in the way) leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def remove_leftovers(path: Path) -> list[Path]:
    """Delete the temp files of `write_atomic(path, ...)` calls a kill -9 or a power cut interrupted
    (call it before this process writes `path`: a running write's temp file matches too)."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            gone.append(tmp)
    return gone


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` with `text`, all or nothing (OSError when the directory cannot take it)."""
    _replace(Path(path), mode, lambda out: out.write(text.encode("utf-8")))


def copy_atomic(source: Path, path: Path, mode: int = 0o644) -> None:
    """Replace `path` with a copy of `source`, all or nothing (a model artifact into a registry)."""
    def copy(out: IO[bytes]) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    _replace(Path(path), mode, copy)


def _replace(path: Path, mode: int, write: Callable[[IO[bytes]], None]) -> None:
    """Temp file beside `path`, written, fsynced, renamed over it, then the directory fsynced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

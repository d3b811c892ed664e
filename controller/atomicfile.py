"""One durable file write for every state file (tokens, state, shadow, Sparkplug bdSeq).

Temp file in the same directory (created with `mode`), fsync, rename over the target, fsync of
the directory: a kill -9 or a power cut leaves the old file or the new one, never a torn one,
and a failed write (disk full, a folder in the way) leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path


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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
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

"""``[history]``: the detector frames the running controller keeps on disk, for `linesentry fit
--history` (controller.history). On by default and bounded twice (days and megabytes); the
recorder never slows the hot path, so the only cost of leaving it on is the disk."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from controller.config.base import OptionalPath, Seconds, Strict


class HistorySection(Strict):
    """Where and how much of the detector frames are kept (docs/configuration.md#history)."""

    enabled: bool = True
    dir: OptionalPath = None  # "" or absent: <state_dir>/history; relative to the TOML
    keep_days: float = Field(default=14.0, gt=0, le=3650, allow_inf_nan=False)  # older segments deleted
    max_mb: float = Field(default=2000.0, ge=1, le=10_000_000, allow_inf_nan=False)  # oldest deleted first
    flush_s: float = Seconds(1.0, 300.0, default=10.0)  # a kill -9 loses at most this much
    # frames held in memory between flushes; beyond: dropped and counted (a stalled disk)
    max_buffer_rows: int = Field(default=100_000, ge=1000, le=10_000_000)  # ~250 bytes each (8 tags)

    def dir_for(self, state_dir: Path) -> Path:
        """The segment directory in use: the configured one or <state_dir>/history."""
        return self.dir if self.dir is not None else Path(state_dir) / "history"

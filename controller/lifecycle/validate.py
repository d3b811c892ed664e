"""The checks a new model passes before it runs, beyond what loading already refuses (checksum, format,
the config's tags and [detector.spec]: controller.modelload): its units agree with the config's
[detector] units where both name one, and its calibration is sane (a finite line threshold in (0, 1),
not pinned at the cap, as its calibration report records). One line says why a model is refused."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from controller.errors import ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path

    from controller.config import LineConfig
    from models.detector import StreamingDetector


def check_model(det: StreamingDetector, config: LineConfig, path: Path | str) -> None:
    """ModelLoadError (one line) when `det`, loaded from `path`, must not run on this line."""
    units = det.units or {}
    differ = [f"{tag} {units[tag]!r} (model) vs {want!r} (config)"
              for tag, want in config.detector.units.items() if units.get(tag) and units[tag] != want]
    if differ:
        raise ModelLoadError(f"model {path} was fitted in other units than [detector.units]: "
                             f"{'; '.join(differ)}; refit it on data in the config's units")
    threshold = det.threshold
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ModelLoadError(f"model {path} has an unusable line threshold {threshold!r}: refit it")
    cal = (det.metadata.get("summary") or {}).get("calibration") or {}
    if cal.get("pinned_at_cap"):
        raise ModelLoadError(f"model {path}: its calibration pinned the line threshold at the cap "
                             f"(the training data has anomalies or a tag far outside its spread): "
                             f"{(cal.get('warnings') or ['see its calibration report'])[-1]}")

"""The detector the line runs: the model artifact under the config's rules, or the rules-only
detector for commissioning. Used at start and by a model reload, with the same rule both times:
[detector.spec] must agree with the artifact (else refuse), [detector.limits] win over the
artifact's (each override announced).

`models` resolves names lazily: loading and stepping a fitted detector imports numba, never the
fitting libraries (scipy, scikit-learn).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import models
from controller.errors import ModelLoadError
from controller.events import EventLog

if TYPE_CHECKING:
    from controller.config import LineConfig
    from models.detector import StreamingDetector

log = logging.getLogger(__name__)


class ModelLoader:
    """Builds and loads detectors for one line; `path` is the model in use (None: rules only)."""

    def __init__(self, config: LineConfig, events: EventLog) -> None:
        self.config, self.events = config, events
        self.path: Path | None = config.detector.model
        self.detector_tags = config.detector_tags()

    def initial(self, given: StreamingDetector | None = None) -> StreamingDetector:
        """The detector to start with: `given` (tests, benchmarks), the configured model, or, without
        [detector] model, rules only: invalid, limit, and flatline for the tags of [detector.flatline_s]."""
        d = self.config.detector
        if given is None and d.model is None:
            return models.StreamingDetector.rules_only(
                self.detector_tags, limits=self.config.detector_spec().limits,
                flatline_s=dict(d.flatline_s), units=dict(d.units))
        if given is None:
            return self._load(d.model)
        self._apply_config(given, d.model)
        return given

    async def load(self, path: Path, *, warm_up: bool = False) -> StreamingDetector:
        """Load `path` off the event loop (a reload); ModelLoadError says why it is refused."""
        det = await asyncio.to_thread(self._load, path)
        if warm_up:
            await asyncio.to_thread(det.warm_up)
        return det

    def _load(self, path: Path) -> StreamingDetector:
        try:
            det = models.load_model(path, expected_tags=self.detector_tags)
        except models.ModelError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._apply_config(det, path)
        return det

    def _apply_config(self, det: StreamingDetector, path: Path | None) -> None:
        differ = models.spec_differences(det.spec, self.config.detector.spec)
        if differ:
            raise ModelLoadError(f"[detector.spec] disagrees with model {path}: {'; '.join(differ)}; refit "
                                 "the model with this config (`linesentry fit`) or remove these keys")
        cfg = self.config.detector_spec().limits  # a tag absent here has no limits: the config decides
        for change in det.set_limits({t: cfg.get(t, models.TagLimits()) for t in self.detector_tags}):
            self.events.add("model", "detector", f"limits override the model's: {change}")
            log.warning("detector: limits override the model's: %s", change)

"""``[models]``: where the edge fetches a desired model it does not hold yet (controller.registry), and
the lifecycle of a new model at the edge (controller.lifecycle): how long it runs as a challenger in
shadow, the bounds of an automatic promotion, and the watch that rolls a promoted model back.

The rates left out are derived from the designed false-alarm rate (`target_far`) of the model they
judge, when it runs (controller.lifecycle.policy); a value given here applies to every model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controller.config.base import OptionalPath, Seconds, Strict

MAX_LIFECYCLE_S = 30 * 86_400.0  # a challenge or a watch: a month at most


class ModelsSection(Strict):
    """The model registry and the edge's model lifecycle (docs/configuration.md#models)."""

    registry: OptionalPath = None  # "" or absent: none (a desired model must already be in models_dir)
    promotion: Literal["manual", "auto"] = "manual"  # auto: promote a challenger within the bounds
    challenge_s: float = Seconds(0.0, MAX_LIFECYCLE_S, default=3600.0, lo_open=True)
    min_rows: int | None = Field(default=None, ge=1, le=10**9)  # None: ceil(ln 20 / max_alarm_rate)
    max_alarm_rate: float | None = Field(default=None, gt=0.0, lt=1.0, allow_inf_nan=False)  # 2 x target_far
    min_agreement: float = Field(default=0.99, ge=0.0, le=1.0, allow_inf_nan=False)
    watch_s: float = Seconds(0.0, MAX_LIFECYCLE_S, default=3600.0)  # 0: no watch after a promotion
    rollback_alarm_rate: float | None = Field(default=None, gt=0.0, lt=1.0, allow_inf_nan=False)  # 10 x
    report_s: float = Seconds(0.0, 3600.0, default=10.0, lo_open=True)  # challenger / watch figures

    @model_validator(mode="after")
    def _bounds(self) -> ModelsSection:
        """A promotion bound above the rollback bound would roll back a model promoted within it."""
        high, low = self.max_alarm_rate, self.rollback_alarm_rate
        if high is not None and low is not None and high > low:
            raise ValueError(f"max_alarm_rate {high:g} is above rollback_alarm_rate {low:g}: a model "
                             "promoted within its bounds would be rolled back for them")
        return self

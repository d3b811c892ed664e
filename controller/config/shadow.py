"""``[mqtt.shadow]``: the device shadow (desired/reported state over MQTT retained topics, see
docs/shadow.md). Only the topic prefix, where desired model versions are looked up and the range a
desired threshold margin must lie in; what the fleet may change is fixed in code, not configurable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from controller.config.base import OptionalPath, Strict


class ShadowConfig(Strict):
    """The device shadow of this line; absent: no shadow."""

    topic_prefix: str = ""  # default "linesentry/<site>/<line>/shadow" (`prefix_for`)
    models_dir: OptionalPath = None  # "" or absent: <state_dir>/models; relative to the TOML
    # the range always holds 1.0 (the configured threshold as is): min in (0, 1], max in [1, 100]
    threshold_margin_min: float = Field(default=0.8, gt=0, le=1.0, allow_inf_nan=False)
    threshold_margin_max: float = Field(default=1.5, ge=1.0, le=100.0, allow_inf_nan=False)

    @field_validator("topic_prefix")
    @classmethod
    def _topic(cls, v: str) -> str:
        if v and (any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/") or "//" in v):
            raise ValueError(f"topic_prefix must be an MQTT topic without wildcards (+, #), without a "
                             f"leading or trailing '/' and without empty levels, got {v!r}")
        return v

    def prefix_for(self, site: str, line: str) -> str:
        """The topic prefix in use: the configured one or ``linesentry/<site>/<line>/shadow``."""
        return self.topic_prefix or f"linesentry/{site}/{line}/shadow"

    def models_dir_for(self, state_dir: Path) -> Path:
        """Where desired model versions are looked up: the configured one or <state_dir>/models."""
        return self.models_dir if self.models_dir is not None else Path(state_dir) / "models"

"""``[detector]``: which tags the detector watches, their units and hard limits, the model
artifact and ``[detector.spec]`` (validated by `models.spec.DetectorSpec` itself, a stdlib-only
module, so the schema pulls in no numerical library)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from controller.config.base import MAX_DELAY_S, Strict, as_path, resolve_path
from models.names import FLAG_NAMES
from models.spec import DetectorSpec

TAG_FLAGS: tuple[str, ...] = tuple(FLAG_NAMES.values())  # invalid, limit, rate_of_change, ...
MODEL_FREE_FLAGS = frozenset({"invalid", "limit"})  # per-tag flags that run without a model
# (and 'flatline' for the tags of [detector.flatline_s])
FlatlineSeconds = Annotated[float, Field(gt=0.0, le=MAX_DELAY_S, allow_inf_nan=False)]


class LimitsEntry(Strict):
    """Engineering hard limits of one tag -> models.TagLimits."""

    lo: float = -math.inf
    hi: float = math.inf

    @model_validator(mode="after")
    def _order(self) -> LimitsEntry:
        if not self.lo < self.hi:
            raise ValueError(f"lo ({self.lo}) must be < hi ({self.hi})")
        return self


class DetectorSection(Strict):
    """Which tags the detector watches, their units and limits, the model and its spec."""

    model: Path | None = None  # model artifact; without one only 'invalid', 'limit' (and flatline_s) run
    tags: list[str] | None = None  # None: every non-writable tag of value kind "number"
    units: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, LimitsEntry] = Field(default_factory=dict)
    # Rules-only detector (no model): seconds a tag's value may stay unchanged before its flatline
    # flag rises. With a model, flatline comes from the fit (flat_factor, flat_min_seconds).
    flatline_s: dict[str, FlatlineSeconds] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)  # models.DetectorSpec fields

    @field_validator("model", mode="before")
    @classmethod
    def _model_as_path(cls, v: Any) -> Any:
        return as_path(v)

    @field_validator("model")
    @classmethod
    def _model_path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(v, info)

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = sorted(set(DetectorSpec.__dataclass_fields__) - {"limits"})
        unknown = f"unknown detector setting; expected one of: {', '.join(allowed)}"
        problems = [(k, "set hard limits in [detector.limits.<tag>] (lo/hi), not in [detector.spec]"
                     if k == "limits" else unknown) for k in v if k not in allowed]
        try:
            DetectorSpec.from_dict({k: v[k] for k in v if k in allowed})
        except (ValueError, TypeError) as exc:
            problems += spec_problems(str(exc))
        if problems:
            raise PydanticCustomError("detector_spec", "invalid detector spec", {"problems": problems})
        return v


def spec_problems(message: str) -> list[tuple[str, str]]:
    """Split DetectorSpec's one ValueError into (key, problem) pairs.

    >>> spec_problems("invalid detector spec: warmup=0 (>= 1); z_max=-1 (> 0)")
    [('warmup', 'warmup=0 (>= 1)'), ('z_max', 'z_max=-1 (> 0)')]
    """
    out = []
    for part in message.removeprefix("invalid detector spec: ").split("; "):
        key = re.match(r"^([a-z_]+)", part)
        out.append((key.group(1) if key else "", part))
    return out

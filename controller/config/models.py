"""``[models]``: where the edge fetches a desired model it does not hold yet (controller.registry).
Only `registry` for now; the promotion / rollback keys of issue 17 come later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationInfo, field_validator

from controller.config.base import Strict, as_path, resolve_path


class ModelsSection(Strict):
    """The model registry the device shadow's `model_version` fetches from (docs/configuration.md#models)."""

    registry: Path | None = None  # "" or absent: none (a desired model must already be in models_dir)

    @field_validator("registry", mode="before")
    @classmethod
    def _registry_path(cls, v: Any) -> Any:
        return None if v == "" else as_path(v)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(v, info)

"""``[[actions]]``: bind an alarm to a write, guarded by interlocks, rate limit, latch and a
readback deadline."""

from __future__ import annotations

from pydantic import Field, field_serializer, field_validator

from controller.conditions import Condition
from controller.config.alarms import ConditionField
from controller.config.base import MAX_DELAY_S, MIN_PERIOD_S, Seconds, Strict, check_name
from controller.config.plcs import WriteSpec


class ActionConfig(Strict):
    """Binds an alarm to a write, guarded by interlocks, rate limit, latch and readback deadline."""

    name: str
    alarm: str = Field(min_length=1)
    write: WriteSpec
    interlocks: list[ConditionField] = Field(default_factory=list)  # all must hold to write
    latch: bool = False  # once fired, never again until an operator reset
    min_interval_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    confirm_within_s: float | None = Seconds(MIN_PERIOD_S, 600.0, default=1.0)  # readback deadline
    shadow: bool = False  # log "would write" instead of writing (global [controller].shadow wins)
    message: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_serializer("interlocks")
    def _as_text(self, v: list[Condition]) -> list[str]:
        return [str(c) for c in v]

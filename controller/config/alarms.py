"""``[[alarms]]``: one ISA-18.2 alarm each: what it watches (`AlarmSource`), how urgent, delays,
deadband and suppression by design."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, field_serializer, field_validator, model_validator

from controller.conditions import TAG_NAME, Condition
from controller.config.base import MAX_DELAY_S, MAX_SHELVE_S, Seconds, Strict, check_name
from controller.config.detector import TAG_FLAGS

Priority = Literal["critical", "high", "medium", "low"]
PRIORITIES: tuple[str, ...] = get_args(Priority)


def _parse_condition(v: Any) -> Any:
    return Condition.parse(v) if isinstance(v, str) else v


ConditionField = Annotated[Condition, BeforeValidator(_parse_condition)]


@dataclass(frozen=True)
class AlarmSource:
    """What an alarm watches, parsed from its `source` string.

    >>> str(AlarmSource.parse("tag:oil_temp:cusum")), AlarmSource.parse("comm:press7").plc
    ('tag:oil_temp:cusum', 'press7')
    """

    kind: Literal["line", "tag", "comm", "action_failed", "threshold"]
    tag: str | None = None
    flag: str | None = None
    plc: str | None = None
    action: str | None = None
    condition: Condition | None = None

    @classmethod
    def parse(cls, text: str) -> AlarmSource:
        if text == "line":
            return cls("line")
        kind, sep, rest = text.partition(":")
        if sep and kind == "tag":
            tag, sep2, flag = rest.rpartition(":")
            if not sep2 or not re.fullmatch(TAG_NAME, tag) or flag not in TAG_FLAGS:
                raise ValueError(f"expected 'tag:<tag>:<flag>' with flag one of {', '.join(TAG_FLAGS)}, "
                                 f"got {text!r}")
            return cls("tag", tag=tag, flag=flag)
        if sep and kind == "comm" and rest:
            return cls("comm", plc=rest)
        if sep and kind == "action_failed" and rest:
            return cls("action_failed", action=rest)
        if sep and kind == "threshold":
            condition = Condition.parse(rest)
            return cls("threshold", condition=condition, tag=condition.tag)
        raise ValueError("expected 'line', 'tag:<tag>:<flag>', 'comm:<plc>', 'action_failed:<action>' "
                         f"or 'threshold:<tag> <op> <number>', got {text!r}")

    def __str__(self) -> str:
        if self.kind == "line":
            return "line"
        if self.kind == "tag":
            return f"tag:{self.tag}:{self.flag}"
        if self.kind == "comm":
            return f"comm:{self.plc}"
        if self.kind == "action_failed":
            return f"action_failed:{self.action}"
        return f"threshold:{self.condition}"


class AlarmConfig(Strict):
    """One ISA-18.2 alarm: what it watches, how urgent, delays, deadband, suppression by design."""

    name: str
    source: AlarmSource
    priority: Priority = "medium"
    on_delay_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    off_delay_s: float = Seconds(0.0, MAX_DELAY_S, default=0.0)
    deadband: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # threshold sources, tag units
    suppress_when: ConditionField | None = None
    max_shelve_s: float = Seconds(1.0, MAX_SHELVE_S, default=8 * 3600.0)
    shelvable: bool = True  # false: a safety alarm the operator can neither shelve nor take out of service
    message: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        return AlarmSource.parse(v) if isinstance(v, str) else v

    @field_serializer("source", "suppress_when")
    def _as_text(self, v: Any) -> str | None:
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _deadband(self) -> AlarmConfig:
        if self.deadband and not (self.source.kind == "threshold" and self.source.condition.ordered):
            raise ValueError("deadband applies only to threshold sources with < <= > >= "
                             "(e.g. source = 'threshold:bearing_temp > 80'); remove it or set deadband = 0")
        return self

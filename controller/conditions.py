"""The one tiny expression grammar of the line config: `<tag> <op> <number>`.

Used by action interlocks, alarm `suppress_when` and threshold alarm sources. It is parsed
once at load (never `eval`), so a typo is a config error instead of a run-time surprise.

>>> c = Condition.parse("motor_speed > 100")
>>> c.holds(120.0), c.holds(float("nan"))
(True, False)

A value that is unknown (NaN: bad, stale or comm-lost data, or a tag not in the view) never
satisfies a condition, whatever the operator: an interlock with unknown data blocks, an
unknown value does not suppress an alarm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config schema parses conditions: it must not pay for numpy
    import numpy as np

OPS = ("==", "!=", "<=", ">=", "<", ">")
ORDERED_OPS = frozenset({"<", "<=", ">", ">="})
TAG_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_EXPR = re.compile(rf"^\s*({TAG_NAME})\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")
_WORDS = {"true": 1.0, "false": 0.0}

TagValues = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Condition:
    """`tag op value`; `holds()` compares a live value, optionally with hysteresis (deadband)."""

    tag: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse `<tag> <op> <number>`; a ValueError says what was expected."""
        m = _EXPR.match(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"expected '<tag> <op> <number>' with op one of {' '.join(OPS)} "
                             f"(e.g. 'motor_speed > 100'), got {text!r}")
        tag, op, raw = m.groups()
        number = _WORDS.get(raw.lower())
        if number is None:
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"{text!r}: {raw!r} is not a number (use e.g. 1, 0.5, -3e2, true, false)"
                                 ) from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r}: the number must be finite, got {raw!r}")
        return cls(tag, op, number)

    @property
    def ordered(self) -> bool:
        """True for < <= > >=, the operators a deadband can apply to."""
        return self.op in ORDERED_OPS

    def holds(self, x: float, active: bool = False, deadband: float = 0.0) -> bool:
        """Compare `x`; while `active`, a threshold releases only `deadband` past its value."""
        if x != x:  # NaN: unknown never satisfies a condition
            return False
        op, v = self.op, self.value
        if active and deadband:
            if op in (">", ">="):
                v -= deadband
            elif op in ("<", "<="):
                v += deadband
        if op == ">":
            return x > v
        if op == ">=":
            return x >= v
        if op == "<":
            return x < v
        if op == "<=":
            return x <= v
        if op == "==":
            return x == v
        return x != v

    def evaluate(self, values: TagValues) -> bool:
        """`holds()` on the tag's value in `values` (a missing tag counts as unknown)."""
        return self.holds(values.get(self.tag, math.nan))

    def __str__(self) -> str:
        return f"{self.tag} {self.op} {self.value:g}"


class ArrayTagView(Mapping[str, float]):
    """Name -> value over the runtime's live value array, without copying it."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: np.ndarray) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, name: str) -> float:
        return float(self._values[self._index[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

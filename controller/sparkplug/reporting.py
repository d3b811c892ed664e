"""Report by exception: which metric values are worth a DATA message.

A value is reported when it differs from the last one reported for that metric: for numbers by
more than the metric's absolute deadband (0: any change), for anything else by any change; a value
becoming null (NaN, no data) or coming back from null is always a change, and so is a quality change.

>>> f = ChangeFilter()
>>> f.changed("a", 1.0, 0.5), f.changed("a", 1.3, 0.5), f.changed("a", 1.6, 0.5)
(True, False, True)
>>> f.changed("a", float("nan"), 0.5), f.changed("a", float("nan"), 0.5)
(True, False)
>>> f.changed("a", float("inf"), 0.5), f.changed("a", float("inf"), 0.5)
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from controller.sparkplug.payload import Value


def _null(value: Value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class ChangeFilter:
    """The last reported value per key (a metric, or a metric's quality)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, Value] = {}

    def changed(self, key: Hashable, value: Value, deadband: float = 0.0) -> bool:
        """True (and `value` is now the last reported) when `value` must be reported."""
        if key in self._last:
            last = self._last[key]
            if _null(last) or _null(value):
                if _null(last) and _null(value):
                    return False
            elif isinstance(value, float) and isinstance(last, float):
                # equal first: an infinite value's difference to itself is NaN, never within a deadband
                if value == last or abs(value - last) <= deadband:
                    return False
            elif value == last and type(value) is type(last):
                return False
        self._last[key] = value
        return True

    def set(self, key: Hashable, value: Value) -> None:
        """`value` was reported (in a birth): later changes are measured from it."""
        self._last[key] = value

    def forget(self) -> None:
        """Forget every key (a new session: the births report everything again)."""
        self._last.clear()

"""One look at a PLC for `linesentry validate --connect`: connect, read every tag once, close.

Shared by every plugin's `probe`, so each protocol only adds its own hint for a PLC that answers
but gives no good tag (e.g. Modbus: the unit id or Modicon-style addresses).
"""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import Driver, Quality


@dataclass(frozen=True)
class ProbeReport:
    """What one probe found: reached or not (`error` says why), and every tag that is not GOOD."""

    reached: bool
    tags: int = 0  # tags read
    bad: list[tuple[str, str]] = field(default_factory=list)  # (tag, why it is not GOOD)
    hint: str = ""  # what to check when nothing is good
    error: str = ""  # why the PLC could not be reached

    @property
    def summary(self) -> str:
        if not self.reached:
            return "no"
        return f"yes ({self.tags - len(self.bad)} of {self.tags} tags good)"


async def probe_driver(driver: Driver, timeout_s: float,
                       hint_when_all_bad: Callable[[], str] | None = None) -> ProbeReport:
    """Connect, read all tags once and close `driver`; each step bounded by `timeout_s`."""
    try:
        await asyncio.wait_for(driver.connect(), timeout_s)
        batch = await asyncio.wait_for(driver.read(), timeout_s)
    except Exception as exc:  # any failure to reach a PLC is a finding to report, not a crash
        return ProbeReport(reached=False, error=(str(exc) or type(exc).__name__).removeprefix(
            f"{driver.name}: "))
    finally:
        with contextlib.suppress(Exception):
            await driver.close()
    reasons = driver.stats.tag_errors
    bad = [(driver.tag_names[i], reasons.get(driver.tag_names[i]) or f"quality {Quality(q).name}")
           for i, q in zip(batch.index.tolist(), batch.quality.tolist(), strict=True) if q != Quality.GOOD]
    hint = hint_when_all_bad() if hint_when_all_bad is not None and bad and len(bad) == len(batch) else ""
    return ProbeReport(reached=True, tags=len(batch), bad=bad, hint=hint)

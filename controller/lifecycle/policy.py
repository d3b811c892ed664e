"""The promotion and rollback rules, as pure decisions over counters (no clock, no I/O): what a
challenger must show to be promoted automatically, and what makes a promoted model roll back.

Bounds left out of ``[models]`` are derived from the designed false-alarm rate of the model judged
(its artifact's calibration report, else its spec's `target_far`):

- max_alarm_rate = 2 x target_far: the challenger's rate of alarm rises per row must be shown below
  it (its one-sided 95 % Clopper-Pearson upper bound at most this);
- min_rows = ceil(ln 20 / max_alarm_rate): the fewest rows in which a challenger without a single
  rise can show that (with fewer, no result can);
- rollback_alarm_rate = 10 x target_far (never below max_alarm_rate): a promoted model whose rises
  per row reject "at most this"
  in a one-sided binomial test at ROLLBACK_ALPHA is rolled back; so is one whose line alarm stays on
  for stuck_rows rows in a row (a stuck alarm rises once, so the rate alone would not see it):
  min_rows, and never fewer than ceil(ln 1000 / rollback_alarm_rate), the rows in which the rate test
  itself could reject (a small configured min_rows must not roll back every alarm that lasts).

>>> p = Policy.derive(ModelsSection(), 0.001)
>>> p.max_alarm_rate, p.min_rows, p.rollback_alarm_rate
(0.002, 1498, 0.01)
>>> promotion_verdict(p, rows=2000, rises=0, agreement=1.0, elapsed_s=3600.0)
'within bounds'
>>> rollback_verdict(p, rows=2000, rises=60, on_run=0)
'rises 60 in 2000 rows (0.03 a row) above the bound 0.01 (binomial test, alpha 0.001)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from controller.config.models import ModelsSection
from controller.lifecycle.stats import above, below

PROMOTION_ALPHA = 0.05  # the alarm-rate bound must hold at 95 % confidence
ROLLBACK_ALPHA = 0.001  # a rollback needs strong evidence: a good model is rarely thrown out
MAX_RATE_FACTOR = 2.0
ROLLBACK_RATE_FACTOR = 10.0
DEFAULT_TARGET_FAR = 0.001  # models.spec's default, for a model that records none


@dataclass(frozen=True)
class Policy:
    """The bounds in force for one model (the config's, else derived from its target_far)."""

    mode: str
    challenge_s: float
    min_rows: int
    stuck_rows: int
    max_alarm_rate: float
    min_agreement: float
    watch_s: float
    rollback_alarm_rate: float
    target_far: float

    @classmethod
    def derive(cls, cfg: ModelsSection, target_far: float) -> Policy:
        far = target_far if 0.0 < target_far < 1.0 else DEFAULT_TARGET_FAR
        max_rate = cfg.max_alarm_rate or min(0.5, MAX_RATE_FACTOR * far)
        # never a promotion bound above the rollback bound (a model promoted within its bounds would be
        # rolled back for them): a derived one is raised to it, both given are checked by the config
        rollback = cfg.rollback_alarm_rate or max(min(0.5, ROLLBACK_RATE_FACTOR * far), max_rate)
        if max_rate > rollback:
            max_rate = rollback  # rollback_alarm_rate given below a derived max_alarm_rate
        min_rows = cfg.min_rows or math.ceil(math.log(1.0 / PROMOTION_ALPHA) / max_rate)
        return cls(mode=cfg.promotion, challenge_s=cfg.challenge_s, min_rows=min_rows,
                   stuck_rows=max(min_rows, math.ceil(math.log(1.0 / ROLLBACK_ALPHA) / rollback)),
                   max_alarm_rate=max_rate, min_agreement=cfg.min_agreement, watch_s=cfg.watch_s,
                   rollback_alarm_rate=rollback, target_far=far)


def target_far(metadata: dict[str, Any], spec: Any) -> float:
    """The designed false-alarm rate of a model: its calibration report's, else its spec's."""
    cal = (metadata.get("summary") or {}).get("calibration") or {}
    far = cal.get("designed_far")
    if isinstance(far, int | float) and 0.0 < far < 1.0:
        return float(far)
    return float(getattr(spec, "target_far", DEFAULT_TARGET_FAR))


def promotion_verdict(p: Policy, *, rows: int, rises: int, agreement: float, elapsed_s: float) -> str:
    """"collecting ..." until challenge_s and min_rows, then "within bounds" or "outside bounds: why".
    A rate below the bound that the rows cannot show yet (its 95 % upper bound still above) keeps
    collecting; a rate at or above it, or too little agreement, is outside."""
    if elapsed_s < p.challenge_s or rows < p.min_rows:
        return f"collecting: {rows} of {p.min_rows} rows, {elapsed_s:.0f} of {p.challenge_s:g} s"
    why = []
    if agreement < p.min_agreement:
        why.append(f"agreement {agreement:.4f} below {p.min_agreement:g}")
    shown = below(rises, rows, p.max_alarm_rate, PROMOTION_ALPHA)
    if not shown and rises >= p.max_alarm_rate * rows:
        why.append(f"rises {rises} in {rows} rows ({rises / rows:.3g} a row) not below {p.max_alarm_rate:g}")
    if why:
        return "outside bounds: " + "; ".join(why)
    if not shown:
        return f"collecting: rises {rises} in {rows} rows not shown below {p.max_alarm_rate:g} a row (95 %)"
    return "within bounds"


def rollback_verdict(p: Policy, *, rows: int, rises: int, on_run: int) -> str:
    """"" while the watched model behaves, else why it must be rolled back."""
    if on_run >= p.stuck_rows:
        return f"line alarm on for {on_run} rows in a row (at least {p.stuck_rows})"
    if above(rises, rows, p.rollback_alarm_rate, ROLLBACK_ALPHA):
        return (f"rises {rises} in {rows} rows ({rises / rows:.3g} a row) above the bound "
                f"{p.rollback_alarm_rate:g} (binomial test, alpha {ROLLBACK_ALPHA:g})")
    return ""

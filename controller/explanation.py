"""Why a line alarm fired, as one line an operator reads and as the API's `explanation` dict.

    line_anomaly: hydraulic_pressure −89 % (SPE 3.1× limit)

The tags are the driving component's top contributors (models.attribution), each with how far
it is from what the component expected: in percent of that level, or in its units when the level
is near zero or unknown (rules-only detector), on/off for a bit. The component is named as an
engineer knows it (SPE, T², iforest, or the per-tag detector that flagged), with its statistic as
a multiple of its own limit; a rule finding (hard limit, flatline) is a fact, not a statistic, so
it has no ratio. Built once when a line alarm fires, never per step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.attribution import Attribution

COMPONENT_LABELS = {"pca_spe": "SPE", "pca_t2": "T²", "iforest": "iforest", "tags": "baseline"}
FLAG_LABELS = {"invalid": "bad value", "limit": "hard limit", "rate_of_change": "rate of change",
               "flatline": "flatline", "ewma_z": "EWMA z-score", "cusum": "CUSUM"}
RULE_FLAGS = ("invalid", "limit", "flatline")  # findings graded as facts (models.kernels.BINARY_SCORE)
MAX_TAGS = 3  # at most this many tags in the text (the dict keeps every top tag)
MIN_SHARE = 0.15  # a tag with a smaller part of the component's statistic is left out of the text
PERCENT_MAX = 1000.0  # past this the level is too close to zero for a percentage: units instead
MINUS = "\u2212"


def signed(x: float, digits: str) -> str:
    """`x` with an explicit sign, the minus a real minus sign (as the contract's example)."""
    return ("+" if x >= 0 else MINUS) + format(abs(x), digits)


def number(x: float) -> str:
    """A measured value, 4 significant digits, no trailing zeros (never `1.000` for a 1)."""
    return format(x, ".4g")


def with_unit(text: str, unit: str) -> str:
    return f"{text} {unit}" if unit else text


def tag_text(tag: dict, unit: str, bit: bool, rule: bool) -> str:
    """One contributing tag: name and how far it is from what the component expected (for a rule
    finding, its value: a hard limit is about the value, not about the expected level).

    The models see a tag's last usable value; a tag whose reading they refused is told by its
    reading: `bad value` (bad quality, NaN, inf, comm loss), or the reading itself when it is out
    of the usable range (a hard limit: `c 1e+300 bar`, not the 114.3 the models still hold)."""
    value, percent, deviation, reading = tag["value"], tag["percent"], tag["deviation"], tag["reading"]
    if "invalid" in tag["flags"]:
        return f"{tag['tag']} bad value"
    if reading is not None and reading != value:  # refused: out of range; the held value is not it
        return f"{tag['tag']} {with_unit(number(reading), unit)}"
    if bit and value is not None:
        return f"{tag['tag']} {'on' if value else 'off'}"
    if not rule and percent is not None and abs(percent) < PERCENT_MAX:
        return f"{tag['tag']} {signed(percent, '.0f' if abs(percent) >= 10 else '.1f')} %"
    if not rule and deviation is not None:
        return f"{tag['tag']} {with_unit(signed(deviation, '.3g'), unit)}"
    return f"{tag['tag']} {'-' if value is None else with_unit(number(value), unit)}"


def component_text(component: str, ratio: float, rule: bool, flags: tuple[str, ...]) -> str:
    """'SPE 3.1× limit'; for the per-tag detectors the flag that fired ('EWMA z-score 2.4× limit');
    a rule finding without a ratio ('hard limit')."""
    label = COMPONENT_LABELS.get(component, component)
    shown = [f for f in flags if f in RULE_FLAGS] if rule else flags  # the rule, not its side effects
    if component == "tags" and shown:
        label = "/".join(FLAG_LABELS.get(f, f) for f in shown)
    if rule:
        return label
    return f"{label} {format(ratio, '.0f' if ratio >= 100 else '.1f')}× limit"


def for_alarm(explained: dict, alarm: str) -> dict:
    """The same explanation, its text naming `alarm` (a line with several line alarms)."""
    return {**explained, "text": f"{alarm}: {explained['why']}"}


def explanation(alarm: str, attribution: Attribution, units: Mapping[str, str],
                bits: Collection[str] = (), at: float | None = None,
                readings: Mapping[str, float] | None = None) -> dict:
    """The contract's dict: {"text", "component", "ratio", "top": [{"tag", "share", "deviation",
    "reading", ...}]}, JSON-ready (no NaN); `why` is the text without the alarm's name, `at` the
    wall time, `readings` the latest reading of the top tags (what the PLC says now)."""
    a = attribution.to_dict()
    readings = readings or {}
    top = [{**t, "unit": units.get(t["tag"], ""), "reading": reading if math.isfinite(reading) else None}
           for t in a["top"] for reading in [readings.get(t["tag"], math.nan)]]
    if attribution.component is None:  # nothing scored: only flags (e.g. a bad value) explain it
        flagged = [f"{t} {'/'.join(FLAG_LABELS.get(f, f) for f in fl)}"
                   for t, fl in list(attribution.flagged.items())[:MAX_TAGS]]
        more = len(attribution.flagged) - MAX_TAGS  # a whole PLC's tags bad: the text stays one line
        why = ", ".join(flagged) + (f" and {more} more" if more > 0 else "") or "no component over its limit"
    else:
        shown = [t for t in top if t["share"] >= MIN_SHARE][:MAX_TAGS] or top[:1]
        flags = tuple(top[0]["flags"]) if top else ()
        # A statistical score saturates at the rules' grade (kernels.SCORE_CAP = BINARY_SCORE): a
        # rule finding only when the driving tag has a rule's flag ('b +25 % (EWMA z-score 10000×
        # limit)', not 'b 25 (baseline)' for a tag that was constant in training).
        rule = attribution.rule_finding and any(f in RULE_FLAGS for f in flags)
        parts = ", ".join(tag_text(t, t["unit"], t["tag"] in bits, rule) for t in shown) or "no tag"
        why = f"{parts} ({component_text(attribution.component, attribution.ratio, rule, flags)})"
    ratio = attribution.ratio if math.isfinite(attribution.ratio) else None
    return {"text": f"{alarm}: {why}", "why": why, "component": attribution.component, "ratio": ratio,
            "top": top, "components": a["components"], "flagged": a["flagged"], "at": at}


def unexplained(alarm: str, reason: str, at: float | None = None) -> dict:
    """The dict when the detector could not say why (a fault in the attribution): the alarm stands,
    its text says the explanation failed and why, so the event and the log show it."""
    why = f"why unknown (the explanation failed: {reason})"
    return {"text": f"{alarm}: {why}", "why": why, "component": None, "ratio": None, "top": [],
            "components": {}, "flagged": {}, "at": at}

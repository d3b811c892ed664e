"""Scores of one alarm sequence against labelled faults: pure functions over boolean arrays.

- per fault: the share of its rows flagged, whether it was flagged at all, and the
  delay from its first row to the first alarm on or after it (rows and seconds);
- realised false-alarm rate: the share of scored normal rows that alarm;
- SKAB outlier scores on pooled counts (F1, FAR, MAR as benchmarks.skab defines them);
- a NAB-style score (standard profile): windows of 10 % of the stream divided by its
  number of faults, centred on each fault's start; the first alarmed row inside a window
  earns a scaled sigmoid of its position, every alarmed row outside windows costs
  A_FP (less when it trails a window closely), every missed window costs A_FN.
  Normalised over a set, 0 is a detector that never alarms and 100 a perfect one.
"""

import math
from dataclasses import dataclass

import numpy as np

from benchmarks import skab
from benchmarks.detection.datasets import Fault

NAB_A_TP, NAB_A_FP, NAB_A_FN = 1.0, 0.11, 1.0  # NAB's "standard" application profile
NAB_WINDOW_SHARE = 0.1


@dataclass(frozen=True)
class FaultScore:
    kind: str
    rows: int  # faulty rows scored
    flagged: int  # of which alarmed
    delay_rows: int | None  # None when never flagged
    delay_s: float | None

    @property
    def detected(self) -> bool:
        return self.flagged > 0

    @property
    def rate(self) -> float:
        return self.flagged / self.rows if self.rows else 0.0


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """TP, FP, FN, TN counts of boolean predictions against boolean labels."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    return {"tp": int(np.sum(pred & truth)), "fp": int(np.sum(pred & ~truth)),
            "fn": int(np.sum(~pred & truth)), "tn": int(np.sum(~pred & ~truth))}


def outlier_scores(counts: dict[str, int]) -> dict[str, float]:
    """SKAB's F1, FAR and MAR from pooled counts."""
    return skab.metrics(counts["tp"], counts["fp"], counts["fn"], counts["tn"])


def fault_score(pred: np.ndarray, times: np.ndarray, fault: Fault) -> FaultScore:
    """How much of one fault was flagged and how soon after it began."""
    span = np.asarray(pred[fault.start:fault.end], bool)
    hits = np.flatnonzero(span)
    if hits.size == 0:
        return FaultScore(fault.kind, span.size, 0, None, None)
    first = int(hits[0])
    return FaultScore(fault.kind, span.size, int(hits.size), first,
                      float(times[fault.start + first] - times[fault.start]))


def false_alarm_rate(pred: np.ndarray, normal: np.ndarray) -> float:
    """Share of normal rows that alarm (0 when there are none)."""
    normal = np.asarray(normal, bool)
    return float(np.mean(np.asarray(pred, bool)[normal])) if normal.any() else 0.0


def median_or_none(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


# ----------------------------------------------------------------- NAB-style score
def nab_windows(rows: int, faults: list[Fault]) -> list[tuple[int, int]]:
    """[lo, hi) windows of NAB_WINDOW_SHARE x rows / faults centred on each fault's start, overlaps merged."""
    if not faults:
        return []
    width = max(1, int(NAB_WINDOW_SHARE * rows / len(faults)))
    windows: list[tuple[int, int]] = []
    for f in sorted(faults, key=lambda f: f.start):
        lo, hi = max(0, f.start - width // 2), min(rows, f.start - width // 2 + width)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    return windows


def _sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: ~1 at a window's start, 0 at its end, towards -1 long after it."""
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def nab_raw(pred: np.ndarray, windows: list[tuple[int, int]], scored_from: int) -> float:
    """Raw NAB score of alarms on rows >= scored_from (the probationary rows are not scored)."""
    score, detected = 0.0, set()
    for i in np.flatnonzero(np.asarray(pred, bool)[scored_from:]) + scored_from:
        inside = [w for w in windows if w[0] <= i < w[1]]
        if inside:
            lo, hi = inside[0]
            if (lo, hi) not in detected:
                detected.add((lo, hi))
                score += NAB_A_TP * _sigmoid((i - (hi - 1)) / (hi - lo))
            continue
        before = [w for w in windows if w[1] <= i]
        if before:
            lo, hi = before[-1]
            score += NAB_A_FP * _sigmoid((i - (hi - 1)) / (hi - lo))
        else:
            score -= NAB_A_FP
    return score - NAB_A_FN * (len(windows) - len(detected))


def nab_perfect(rows: int, windows: list[tuple[int, int]], scored_from: int) -> float:
    """The raw score of a detector alarming exactly at each window's first scored row."""
    pred = np.zeros(rows, dtype=bool)
    for lo, _ in windows:
        pred[max(lo, scored_from)] = True
    return nab_raw(pred, windows, scored_from)


def nab_normalised(raw: float, perfect: float, never: float) -> float:
    """100 x (raw - never) / (perfect - never): 0 = never alarms, 100 = perfect."""
    return 100.0 * (raw - never) / (perfect - never) if perfect != never else 0.0


def alarm_onsets(pred: np.ndarray) -> np.ndarray:
    """Rows where an alarm begins."""
    pred = np.asarray(pred, bool)
    return np.flatnonzero(pred & ~np.concatenate([[False], pred[:-1]]))

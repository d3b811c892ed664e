"""Threshold calibration on normal data for a target false-alarm rate.

Two estimators of the (1 - far) quantile of the score distribution:
- ``quantile``: the empirical quantile. Honest when there are many more samples
  than 1 / far.
- ``pot``: Peaks-Over-Threshold (Siffer et al., KDD 2017): fit a generalised
  Pareto distribution to the excesses over a high initial quantile and
  extrapolate into the tail. Use it when the target rate is so small that few
  or no training samples lie beyond the wanted threshold.
"""

import warnings

import numpy as np
from scipy import stats

from models.names import CALIBRATION_METHODS as METHODS


def calibrate_threshold(scores: np.ndarray, target_far: float, method: str = "pot",
                        tail_fraction: float = 0.05) -> float:
    """Return the score threshold whose exceedance rate on `scores` is about `target_far`."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size < 10:
        raise ValueError(f"need at least 10 finite calibration scores, got {scores.size}")
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target_far must be in (0, 1), got {target_far}")
    if method == "quantile":
        return float(np.quantile(scores, 1.0 - target_far))
    if method != "pot":
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    return _pot_threshold(scores, target_far, tail_fraction)


def _pot_threshold(scores: np.ndarray, target_far: float, tail_fraction: float) -> float:
    if target_far >= tail_fraction:
        return float(np.quantile(scores, 1.0 - target_far))
    u = float(np.quantile(scores, 1.0 - tail_fraction))
    excess = scores[scores > u] - u
    if excess.size < 5 or np.ptp(excess) <= 0.0:
        return float(np.quantile(scores, 1.0 - target_far))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    ratio = target_far * scores.size / excess.size
    if abs(shape) < 1e-6:
        threshold = u - scale * np.log(ratio)
    else:
        threshold = u + scale / shape * (ratio ** (-shape) - 1.0)
    if not np.isfinite(threshold):
        return float(np.quantile(scores, 1.0 - target_far))
    # Never below the empirical quantile at the same rate: the tail fit extrapolates, it must not undercut.
    return float(max(threshold, np.quantile(scores, 1.0 - target_far)))

"""Fusion and calibration: component thresholds, the line threshold, and the truth about both.

Every component score is normalised so 1.0 is its own threshold (the
`component_far` quantile of its scores on the held-out tail of the training
window); the line score is the weighted max of the components, so its
threshold is never below 1.0 (the line never alarms on a component below its
own threshold: a flat stream whose holdout scores are all 0 calibrates 1.0,
not 0.0). Limit and flatline hits are certain facts with their own learned
limits, not statistics: holdout rows where one fires are left out of the
line's quantile and reported (which tag, which rows), so they cannot pin the
threshold at the cap.

Two estimators of the (1 - far) quantile of the score distribution:
- ``quantile``: the empirical quantile. Honest when there are many more samples
  than 1 / far.
- ``pot``: Peaks-Over-Threshold (Siffer et al., KDD 2017): fit a generalised
  Pareto distribution to the excesses over a high initial quantile and
  extrapolate into the tail. Use it when the target rate is so small that few
  or no training samples lie beyond the wanted threshold. With fewer than 50
  clusters of excesses (a training window of a few hundred rows) the tail is
  exponential and the threshold is the predictive one: its *expected*
  exceedance on new data is the target, counting the error of a scale
  estimated from a handful of excesses (the plug-in threshold's is 2-3x it).

The realised holdout exceedance rate is reported with a one-sided 95 %
Clopper-Pearson upper bound computed on the effective sample size
n (1 - r) / (1 + r), r the lag-1 autocorrelation of the exceedances (or of the
scores when none exceed): autocorrelated rows carry less evidence than
independent ones.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> thr = calibrate_threshold(rng.exponential(size=5000), 0.01, "quantile")
>>> round(thr, 1)
4.7
>>> bound = exceedance_bound(np.r_[np.zeros(990), np.ones(10)] > 0.5, np.zeros(1000))
>>> bound["count"], round(bound["rate"], 3), bound["upper_95"] > bound["rate"]
(10, 0.01, True)
"""

import math
import warnings

import numpy as np

from models import kernels as K
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


# Below this many independent excesses the tail is taken as exponential (generalised Pareto shape 0)
# instead of fitting the shape: from the 5-7 excesses of a 125-row block, maximum likelihood put the
# shape at -1.3 (median over the process set's fits), a tail that ends at the largest score seen.
MIN_EXCESSES_FOR_SHAPE = 50


def _pot_threshold(scores: np.ndarray, target_far: float, tail_fraction: float) -> float:
    from scipy import stats

    if target_far >= tail_fraction:
        return float(np.quantile(scores, 1.0 - target_far))
    # u is the (k + 1)-th largest score, so that the k excesses over it are what the tail holds
    # (Renyi: exponential ones are i.i.d. and independent of u) and P(X > u) has mean (k + 1) / (n + 1).
    n, k = scores.size, math.ceil(tail_fraction * scores.size)
    u = float(np.partition(scores, n - k - 1)[n - k - 1])
    over = scores > u
    excess = scores[over] - u
    if excess.size < 5 or np.ptp(excess) <= 0.0:
        return float(np.quantile(scores, 1.0 - target_far))
    ratio = target_far * n / excess.size
    clusters = int(over[0]) + int(np.count_nonzero(over[1:] & ~over[:-1]))  # runs of exceedances
    if clusters < MIN_EXCESSES_FOR_SHAPE:
        p = target_far * (n + 1) / (excess.size + 1)
        threshold = u + predictive_exponential_quantile(float(excess.mean()), clusters, p)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
        if abs(shape) < 1e-6:
            threshold = u - scale * np.log(ratio)
        else:
            threshold = u + scale / shape * (ratio ** (-shape) - 1.0)
    if not np.isfinite(threshold):
        return float(np.quantile(scores, 1.0 - target_far))
    # Never below the empirical quantile at the same rate: the tail fit extrapolates, it must not undercut.
    return float(max(threshold, np.quantile(scores, 1.0 - target_far)))


def predictive_exponential_quantile(mean_excess: float, k: float, p: float) -> float:
    """The excess over which a new sample falls with probability `p`, averaged over the estimate's error.

    For an exponential tail of scale s estimated by the mean m of k excesses, m / s is Gamma(k, 1/k),
    so the plug-in excess -m ln p is exceeded with probability (1 - ln p / k)**-k on average, more than
    p (from 6 excesses and p = 0.02: 0.049). Solving (1 + c / k)**-k = p gives c = k (p**(-1/k) - 1),
    whose expected exceedance is exactly p; it tends to the plug-in -ln p as k grows. k counts runs
    of consecutive exceedances once (runs declustering): the excesses of one run share their cause.

    >>> round(predictive_exponential_quantile(1.0, 6, 0.02) / -math.log(0.02), 2)
    1.41
    """
    return mean_excess * k * (p ** (-1.0 / k) - 1.0)


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of a series, clipped to [0, 0.999] (0 for a constant series)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 3:
        return 0.0
    a, b = x[:-1] - x[:-1].mean(), x[1:] - x[1:].mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return min(max(float(a @ b) / denom, 0.0), 0.999) if denom > 0 else 0.0


def exceedance_bound(exceed: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> dict:
    """Exceedance count and rate on the holdout, with a Clopper-Pearson upper bound at the effective size."""
    from scipy import stats

    exceed = np.asarray(exceed, dtype=bool)
    n, count = int(exceed.size), int(exceed.sum())
    r = lag1_autocorrelation(exceed if 0 < count < n else scores)
    n_eff = max(1.0, n * (1.0 - r) / (1.0 + r))
    k_eff = count * n_eff / n if n else 0.0
    upper = 1.0 if k_eff >= n_eff else float(stats.beta.ppf(confidence, k_eff + 1.0, n_eff - k_eff))
    return {"count": count, "rows": n, "rate": count / n if n else 0.0, "lag1_autocorrelation": r,
            "effective_rows": n_eff, "upper_95": upper}


def decision_params(spec, norm: tuple[np.ndarray, np.ndarray], threshold_on: float,
                    forest_shape: tuple[float, int] = (0.0, 0), training_rows: int = 0) -> np.ndarray:
    """The fusion/decision parameter vector (kernels.D_*): weights, normalisation, threshold, debounce,
    and the adaptive baselines' rate (half-life `drift_half_life`, by default
    kernels.DRIFT_HALF_LIFE_WINDOWS x the training rows;
    0 training rows, as for a rules-only detector, keeps the baselines fixed)."""
    dp = np.zeros(K.D_SIZE)
    dp[K.D_SMOOTH_ALPHA] = spec.smooth_alpha
    dp[K.D_THRESHOLD_ON] = threshold_on
    dp[K.D_THRESHOLD_OFF] = threshold_on * spec.hysteresis
    dp[K.D_K], dp[K.D_N], dp[K.D_CLEAR_N] = spec.debounce_k, spec.debounce_n, spec.clear_n
    dp[K.D_W_TAGS:K.D_W_TAGS + K.C_SIZE] = spec.weights
    dp[K.D_INPUT_ALPHA] = spec.input_alpha
    dp[K.D_COMP_LOC:K.D_COMP_LOC + K.C_SIZE], dp[K.D_COMP_THR:K.D_COMP_THR + K.C_SIZE] = norm
    dp[K.D_F_DENOMINATOR], dp[K.D_F_DEPTH] = forest_shape
    half_life = (spec.drift_half_life if spec.drift_half_life is not None
                 else K.DRIFT_HALF_LIFE_WINDOWS * training_rows)
    dp[K.D_ADAPT_RATE], dp[K.D_ADAPT_RESUME] = K.adaptation_params(float(half_life), spec.target_far)
    return dp


def blockwise_threshold(scores: np.ndarray, blocks: list[slice] | None, far: float, method: str) -> float:
    """The largest of the blocks' calibrated thresholds: the rate must hold in every block.

    Blocks are the cross-fitting folds (consecutive stretches of the training window,
    each scored by models that never saw it). Taking the worst block instead of the
    pooled quantile accounts for a process that moves within the window: new data
    is at least as different from the models as the most different training block.
    """
    parts = [scores[b] for b in blocks or []]
    parts = [p for p in parts if np.isfinite(p).sum() >= 10]
    if not parts:
        return calibrate_threshold(scores, far, method)
    return max(calibrate_threshold(p, far, method) for p in parts)


# The smallest span between a component's typical score and its threshold (tags, T², SPE, forest).
# T² is in component sigmas squared: a threshold below one sigma along one component is no threshold
# (chi² with 1 degree of freedom has its 99th percentile at 6.6). SPE is in squared robust scales:
# 1e-6 is a deviation of a thousandth of a scale, which no statistic can tell from rounding (a tag
# constant in training has a scale at its precision floor: a wiggle in the 9th digit is not a fault).
MIN_COMPONENT_SPAN = np.array([0.0, 1.0, 1e-6, 1e-6])


def component_normalisation(raw: np.ndarray, spec, pca, forest,
                            blocks: list[slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per component (loc, threshold) so that (raw - loc) / (threshold - loc) is 1.0 at threshold."""
    loc, thr = np.zeros(K.C_SIZE), np.ones(K.C_SIZE)
    if pca is not None:
        if spec.pca_limits == "theoretical":
            thr[K.C_T2], thr[K.C_SPE] = pca.t2_limit, pca.spe_limit
        else:
            for c in (K.C_T2, K.C_SPE):
                thr[c] = blockwise_threshold(raw[:, c], blocks, spec.component_far, spec.calibration)
        if not pca.has_residual:
            thr[K.C_SPE] = np.inf  # every component kept: SPE is identically zero
    if forest is not None:
        loc[K.C_IFOREST] = float(np.median(raw[:, K.C_IFOREST]))
        thr[K.C_IFOREST] = blockwise_threshold(raw[:, K.C_IFOREST], blocks, spec.component_far,
                                               spec.calibration)
    return loc, np.maximum(thr, loc + MIN_COMPONENT_SPAN)


# The most holdout rows the calibration report lists by index (the counts are always complete).
REPORT_ROWS = 20


def calibrate_line(spec, result, tags: list[str], first_row: int,
                   blocks: list[slice] | None = None) -> tuple[float, dict]:
    """Line threshold from a holdout replay (`result`, rows from training row `first_row`), and its report.

    The fused score's `target_far` quantile over the holdout rows without a limit
    or flatline hit, times `threshold_margin`, never below 1.0 (one component at
    its own threshold) nor above the cap. The report says which component decided
    it, which tags and rows, what was left out or saturated, and the realised
    holdout exceedance with its confidence bound.
    """
    weights = np.asarray(spec.weights)
    line = result.score
    fused = line / (1.0 - line)  # undo the [0, 1) squashing
    line_mask = sum(K.FLAG_BITS[name] for name in spec.line_flags)
    binary_bits = line_mask & (K.FLAG_LIMIT | K.FLAG_FLAT)
    binary = (result.tag_flags & binary_bits) != 0  # (rows, tags)
    binary_rows = binary.any(axis=1) if weights[K.C_TAGS] > 0 else np.zeros(line.size, bool)
    statistical = np.where(binary_rows, np.nan, fused)
    report: dict = {"holdout_rows": int(line.size), "first_row": int(first_row), "warnings": []}
    warn = report["warnings"].append
    if binary_rows.any():
        hit = {tags[i]: _rows(np.flatnonzero(binary[:, i]), first_row)
               for i in np.flatnonzero(binary.any(axis=0))}
        report["left_out"] = {"rows": int(binary_rows.sum()), "tags": hit}
        warn(f"limit/flatline hits on {int(binary_rows.sum())} of {line.size} holdout rows (tags "
             f"{', '.join(hit)}) left out of the line threshold: they alarm on their own")
    if np.isfinite(statistical).sum() < 10:
        statistical = fused
    q = blockwise_threshold(statistical, blocks, spec.target_far, spec.calibration)
    wanted = spec.threshold_margin * q
    fused_thr = min(max(wanted, 1.0), K.MAX_LINE_THRESHOLD / (1.0 - K.MAX_LINE_THRESHOLD))
    threshold = fused_thr / (1.0 + fused_thr)
    report["fused_quantile"] = float(q)
    report["floored"] = bool(wanted < 1.0)
    report["pinned_at_cap"] = bool(wanted > fused_thr)

    weighted = result.components * weights
    # The rows that decide the quantile: the highest ones, as many as the designed rate allows (>= 3),
    # among the rows the quantile was taken over (the blocks: not the filters' start-up rows).
    ranked = np.flatnonzero(~binary_rows & _in_blocks(line.size, blocks))
    k = max(3, math.ceil(spec.target_far * ranked.size))
    top = ranked[np.argsort(-fused[ranked], kind="stable")[:k]]
    top = np.sort(top[fused[top] > 0])
    decider = np.argmax(weighted[top], axis=1) if top.size else np.zeros(0, int)
    counts = {K.COMPONENT_NAMES[c]: int(np.sum(decider == c))
              for c in range(K.C_SIZE) if np.any(decider == c)}
    report["decided_by"] = counts
    tag_rows = top[decider == K.C_TAGS]
    if tag_rows.size:
        top_tags = np.argmax(result.tag_scores[tag_rows], axis=1)
        report["decided_by_tags"] = {tags[i]: int(np.sum(top_tags == i)) for i in np.unique(top_tags)}
    report["decided_rows"] = _rows(top, first_row)
    saturated = {K.COMPONENT_NAMES[c]: _rows(np.flatnonzero(weighted[:, c] >= K.SCORE_CAP * weights[c]),
                                             first_row)
                 for c in range(K.C_SIZE) if weights[c] > 0 and c != K.C_TAGS
                 and np.any(result.components[:, c] >= K.SCORE_CAP)}
    if saturated:
        report["saturated"] = saturated
        warn(f"component(s) {', '.join(saturated)} saturate (score cap) on holdout rows: a tag is far "
             "outside its training spread there; check the training window")
    if report["pinned_at_cap"]:
        warn(f"line threshold pinned at the cap {K.MAX_LINE_THRESHOLD}: decided by "
             f"{_decider_text(report)} on training rows {report['decided_rows'][:5]}")
    elif len(counts) == 1 and top.size > 1 and np.count_nonzero(weights * weighted.any(axis=0)) > 1:
        report["single_component"] = next(iter(counts))
        warn(f"line threshold decided by {_decider_text(report)} alone, on training rows "
             f"{report['decided_rows'][:5]}")
    report["designed_far"] = spec.target_far
    report["holdout_exceedance"] = exceedance_bound(line > threshold, fused)
    return float(threshold), report


def _in_blocks(rows: int, blocks: list[slice] | None) -> np.ndarray:
    """Mask of the rows the blocks cover (every row without blocks)."""
    if not blocks:
        return np.ones(rows, dtype=bool)
    mask = np.zeros(rows, dtype=bool)
    for b in blocks:
        mask[b] = True
    return mask


def _decider_text(report: dict) -> str:
    parts = [f"{name} ({n} rows)" for name, n in report["decided_by"].items()]
    if "decided_by_tags" in report:
        parts.append("tags " + ", ".join(report["decided_by_tags"]))
    return "; ".join(parts) or "no component"


def _rows(index: np.ndarray, first_row: int) -> list[int]:
    return [int(first_row + i) for i in index[:REPORT_ROWS]]

"""Per-tag rules and baselines, learned from the training window's own statistics.

Each tag gets its rate-of-change limit, flatline time, EWMA z-score and CUSUM
parameters and its robust centre/scale from the training rows alone (numpy and
the kernels, no scipy: the rules-only detector of a running service uses it too). The
rules, fixed before any evaluation:

- sampling interval: the median of the positive time steps (duplicate and
  backward times contribute no time, see `monotone_times`);
- resolution: the smallest step between distinct training values of the tag;
  a quantised signal repeats its value by chance, so the flatline time covers
  the run of repeats that chance explains at the designed false-alarm rate
  (p ** m <= target_far, p = the fraction of steps that repeat), at least
  `flat_factor` x the longest flat run seen and `flat_min_seconds`;
- rate of change: `roc_factor` x the largest |dx/dt| over positive time steps;
- robust scale: IQR/1.349, falling back to the std, never below the
  quantisation noise (resolution / sqrt(12)).

>>> import numpy as np
>>> from models.spec import DetectorSpec
>>> t = np.arange(0.0, 600.0, 60.0)  # one sample a minute, a value stored in steps of 0.5
>>> x = np.round(np.sin(t / 300.0) * 4) / 2
>>> rules = fit_tag_rules(x[:, None], t, DetectorSpec())
>>> rules.interval_s, float(rules.resolution[0])
(60.0, 0.5)
>>> bool(rules.flat_seconds[0] > rules.longest_flat_s[0])  # a repeat or two of a step is normal
True
"""

import math
from dataclasses import dataclass

import numpy as np

from models import kernels as K
from models.spec import DetectorSpec, TagLimits

# A flatline needs at least this many repeats beyond what chance explains (a floor for
# tags that never repeated in training: one repeat of a continuous value is not stuck).
MIN_FLAT_REPEATS = 2


def monotone_times(times: np.ndarray, last: float = -math.inf, last_raw: float = -math.inf,
                   offset: float = 0.0) -> tuple[np.ndarray, int, int, float]:
    """The detector's time rule: the clock only moves forward, by each forward step between frames.

    A frame at the same time as the frame before it (a duplicate) or before it (backward)
    is processed at the latest time: it adds no time to a flat run and gives no rate
    (dt = 0); its values are still used. A step back also re-bases the clock by the step
    (`offset`), so the frames after it advance from the latest time at once: a clock set
    back by a day is one held frame, not a day of held frames in which flatline and rate
    are blind. Without a step back the effective times are the frames' own, bit for bit.
    The same rule runs in fit, step and run_batch, so all three see the same clock.

    `last` is the latest effective time, `last_raw` the previous frame's own time and
    `offset` the re-basing so far (all three carried by the detector between calls).
    Returns (effective times, duplicates, backward, offset after the last frame).

    >>> monotone_times(np.array([0.0, 1.0, 1.0, 0.5, 2.0]))
    (array([0. , 1. , 1. , 1. , 2.5]), 1, 1, 0.5)
    """
    prev = np.concatenate([[last_raw], times[:-1]])
    back = np.maximum(prev - times, 0.0)  # 0 after a reset (prev -inf)
    offsets = np.cumsum(np.concatenate([[offset], back]))[1:]  # summed in frame order, as step does
    effective = np.maximum.accumulate(np.concatenate([[last], times + offsets]))[1:]
    last_offset = float(offsets[-1]) if times.size else float(offset)
    return effective, int(np.sum(times == prev)), int(np.sum(times < prev)), last_offset


def robust_scale(x: np.ndarray, resolution: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust standard deviation per column (IQR/1.349, then std, then floors).

    A quantised column's spread is never taken below its quantisation noise
    (resolution / sqrt(12)), so a tag stored in whole degrees that rarely moves is
    not scaled as if it were exact.
    """
    center = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, std)
    floor = np.maximum(np.abs(center) * 1e-6, 1e-9)
    if resolution is not None:
        floor = np.maximum(floor, np.where(np.isfinite(resolution), resolution, 0.0) / math.sqrt(12.0))
    return center, np.maximum(scale, floor)


def resolution(x: np.ndarray) -> np.ndarray:
    """Smallest step between distinct values per column (inf for a constant column)."""
    out = np.full(x.shape[1], np.inf)
    for i in range(x.shape[1]):
        steps = np.diff(np.unique(x[:, i]))
        if steps.size:
            out[i] = float(steps.min())
    return out


def longest_flat_run(values: np.ndarray, times: np.ndarray, eps: float) -> float:
    """Longest time (s) the series stayed within eps of a run's first value; used to fit flatline."""
    longest = 0.0
    anchor_x, anchor_t = values[0], times[0]
    for v, t in zip(values[1:], times[1:], strict=True):
        if abs(v - anchor_x) > eps:
            anchor_x, anchor_t = v, t
        longest = max(longest, t - anchor_t)
    return float(longest)


def shifted_tags(x: np.ndarray, tags: list[str], sigmas: float = 3.0) -> list[str]:
    """Tags whose median moved more than `sigmas` robust sigmas between the window's halves.

    A training window with a level shift inside it (a fault or a change of operating
    point) makes a poor baseline; this is a label-free warning for it.
    """
    half = x.shape[0] // 2
    center_a, scale_a = robust_scale(x[:half])
    center_b, scale_b = robust_scale(x[half:])
    shift = np.abs(center_a - center_b) / np.maximum(scale_a, scale_b)
    return [t for t, s in zip(tags, shift > sigmas, strict=True) if s]


@dataclass(frozen=True)
class TagRules:
    """What the per-tag family learned, and the parameter table the kernel runs on."""

    params: np.ndarray  # (tags, K.TP_SIZE) kernel parameters
    interval_s: float  # median positive sampling interval
    resolution: np.ndarray  # (tags,) smallest step between distinct values
    repeat_fraction: np.ndarray  # (tags,) fraction of steps whose value stayed within flat_eps
    longest_flat_s: np.ndarray  # (tags,) longest flat run in training (s)
    flat_seconds: np.ndarray  # (tags,) learned flatline time (0 = off)
    max_rate: np.ndarray  # (tags,) largest |dx/dt| in training

    def describe(self, tags: list[str]) -> dict:
        """JSON-ready per-tag record for the fit summary and the artifact."""
        return {"interval_s": self.interval_s, "tags": {
            tag: {"resolution": _finite(self.resolution[i]),
                  "repeat_fraction": float(self.repeat_fraction[i]),
                  "longest_flat_s": float(self.longest_flat_s[i]), "flatline_s": float(self.flat_seconds[i]),
                  "max_rate": float(self.max_rate[i]),
                  "rate_limit": _finite(self.params[i, K.TP_ROC_MAX])}
            for i, tag in enumerate(tags)}}


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def flat_seconds(run_s: float, repeat_fraction: float, interval_s: float, spec: DetectorSpec) -> float:
    """Flatline time of one tag: past chance repeats at the designed rate and past the longest run seen."""
    if spec.flat_factor <= 0:
        return 0.0
    p = min(repeat_fraction, 1.0 - 1e-12)
    chance = math.ceil(math.log(spec.target_far) / math.log(p)) if p > 0 else 0
    repeats = max(MIN_FLAT_REPEATS, chance + 1)
    return max(spec.flat_min_seconds, spec.flat_factor * run_s, repeats * interval_s)


def fit_tag_rules(x: np.ndarray, times: np.ndarray, spec: DetectorSpec,
                  limits: dict[str, TagLimits] | None = None, tags: list[str] | None = None) -> TagRules:
    """Learn every tag's rules from normal rows x (rows x tags) at monotone `times`."""
    n = x.shape[1]
    tp = np.zeros((n, K.TP_SIZE))
    dt = np.diff(times)
    moving = dt > 0
    interval = float(np.median(dt[moving]))
    res = resolution(x)
    line_mask = sum(K.FLAG_BITS[name] for name in spec.line_flags)
    innovations = K.ewma_innovations(x, spec.ewma_alpha)
    _, innovation_sigma = robust_scale(innovations, res)
    # Real signals are autocorrelated, so their CUSUM wanders further than i.i.d. theory
    # says: the decision interval is at least a margin over the largest excursion seen
    # on normal data.
    cusum_h = np.maximum(spec.cusum_h, spec.cusum_margin * K.cusum_peaks(
        innovations, innovation_sigma, spec.cusum_k))
    set_limits(tp, limits or {}, tags or [])
    # Usable range: very wide around the robust centre, always holding every training value.
    center, scale = robust_scale(x, res)
    tp[:, K.TP_RANGE_LO] = np.maximum(np.minimum(center - K.RANGE_SCALES * scale, x.min(axis=0)),
                                      -K.VALUE_ABS_MAX)
    tp[:, K.TP_RANGE_HI] = np.minimum(np.maximum(center + K.RANGE_SCALES * scale, x.max(axis=0)),
                                      K.VALUE_ABS_MAX)
    steps = np.abs(np.diff(x, axis=0))
    max_rate = (steps[moving] / dt[moving, None]).max(axis=0)
    repeat = (steps <= spec.flat_eps).mean(axis=0)
    runs = np.array([longest_flat_run(x[:, i], times, spec.flat_eps) for i in range(n)])
    flat = np.zeros(n)
    for i in range(n):
        tp[i, K.TP_ROC_MAX] = spec.roc_factor * max_rate[i] if max_rate[i] > 0 else np.inf
        if runs[i] < times[-1] - times[0]:  # a tag constant throughout has no flatline
            flat[i] = flat_seconds(runs[i], repeat[i], interval, spec)
    tp[:, K.TP_FLAT_SECONDS] = flat
    tp[:, K.TP_FLAT_EPS] = spec.flat_eps
    tp[:, K.TP_EWMA_ALPHA] = spec.ewma_alpha
    tp[:, K.TP_Z_MAX] = spec.z_max
    tp[:, K.TP_STD0] = innovation_sigma
    tp[:, K.TP_CUSUM_K] = spec.cusum_k
    tp[:, K.TP_CUSUM_H] = cusum_h
    tp[:, K.TP_WARMUP] = spec.warmup
    tp[:, K.TP_LINE_MASK] = line_mask
    # Where the adaptive baselines start (kernels.start_baselines): the fitted level, and the
    # spread of the EWMA innovation (not of x: a slow ramp must never be learnt as a wider spread).
    tp[:, K.TP_BASE_MEAN] = x.mean(axis=0)
    tp[:, K.TP_BASE_VAR] = np.mean(innovations ** 2, axis=0)
    return TagRules(params=tp, interval_s=interval, resolution=res, repeat_fraction=repeat,
                    longest_flat_s=runs, flat_seconds=flat, max_rate=max_rate)


def rules_only_params(tags: list[str], limits: dict[str, TagLimits],
                      flatline_s: dict[str, float]) -> np.ndarray:
    """Parameter table of a detector without training data: validity, hard limits and flatline only."""
    tp = np.zeros((len(tags), K.TP_SIZE))
    set_limits(tp, limits, tags)
    tp[:, K.TP_FLAT_SECONDS] = [flatline_s.get(tag, 0.0) for tag in tags]
    tp[:, K.TP_ROC_MAX] = tp[:, K.TP_Z_MAX] = tp[:, K.TP_CUSUM_H] = np.inf
    tp[:, K.TP_EWMA_ALPHA] = tp[:, K.TP_STD0] = tp[:, K.TP_WARMUP] = tp[:, K.TP_INV_SCALE] = 1.0
    tp[:, K.TP_LINE_MASK] = K.FLAG_LIMIT | K.FLAG_FLAT
    tp[:, K.TP_RANGE_LO], tp[:, K.TP_RANGE_HI] = -K.VALUE_ABS_MAX, K.VALUE_ABS_MAX
    return tp


def set_limits(tp: np.ndarray, limits: dict[str, TagLimits], tags: list[str]) -> None:
    """Write the engineering hard limits (config, never fitted) into the parameter table."""
    for i, tag in enumerate(tags):
        lim = limits.get(tag, TagLimits())
        tp[i, K.TP_LO], tp[i, K.TP_HI] = lim.lo, lim.hi

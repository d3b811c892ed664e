"""Statistics of a training window that the detector's fit is built from.

Plain numpy/scipy helpers, separate from the detector so each can be tested
and reused (the replay and fit commands report them too).
"""

import numpy as np
from scipy import signal


def robust_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust standard deviation per column (IQR/1.349, then std, then a floor)."""
    center = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, std)
    floor = np.maximum(np.abs(center) * 1e-6, 1e-9)
    return center, np.maximum(scale, floor)


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    """Causal EWMA down the rows, started at the first row: what the kernel's input smoothing does."""
    if alpha >= 1.0:
        return x
    zi = (1.0 - alpha) * x[:1]
    return signal.lfilter([alpha], [1.0, alpha - 1.0], x, axis=0, zi=zi)[0]


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

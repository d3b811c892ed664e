"""Per-tag window summaries for the cloud: what the line did in each 10 s, not every sample.

`WindowSummarizer.update` receives, on every detector step, the same arrays the detector gets
(`t`, `values` float64[N], `fresh` uint8[N], `quality` uint8[N]) plus the line score, the line
alarm flag and the per-tag scores. It keeps running statistics in preallocated numpy arrays and
returns a `WindowSummary` when a step lands in a later window than the open one.

Per tag and window:

- ``count``, ``mean``, ``min``, ``max``, ``std`` (population, ddof=0), ``last`` over *usable*
  samples: fresh and quality GOOD (also UNCERTAIN with ``include_uncertain=True``) and finite.
  Held (not fresh) values are not samples: the driver did not deliver them again.
- ``bad_count``: fresh samples with quality BAD, STALE or COMM_LOST.
- ``max_score``: the largest per-tag anomaly score of any step (NaN scores ignored).
- ``alarm_seconds``: seconds the alarm was active (the line flag, or a per-tag flag when given);
  a flag holds from its step until the next step, split at window boundaries.

Windows are aligned to wall-clock multiples of the window length and stamped with their END
(integer ns), so a restart, or a second controller, produces the same timestamps and a resend
overwrites instead of duplicating. Hence a window is committed once: at shutdown the open window
is saved (`snapshot`), not committed, and the next start continues it or commits it whole
(`restore`); committing a partial window would have the later, fuller one overwrite it. Time
spent in windows with no step at all (the controller was down or nothing arrived) is not
attributed anywhere; those windows produce no rows.

Cost: one step is a fixed sequence of ~20 in-place numpy ufunc calls on N-element arrays
(Welford's update, masked min/max/last, integer counters), no Python objects per sample and no
allocation after construction. Measured about 14 µs per step at N=32 and 21 µs at N=1000 on the
development machine (numpy call overhead dominates below a few hundred tags). Closing a window
copies ~10 arrays.

Example:

>>> import numpy as np
>>> s = WindowSummarizer(2, window_s=10.0)
>>> q = np.zeros(2, np.uint8); f = np.ones(2, np.uint8); sc = np.zeros(2)
>>> s.update(1.0, np.array([1.0, 5.0]), f, q, 0.1, False, sc) is None
True
>>> w = s.update(12.0, np.array([2.0, 6.0]), f, q, 0.2, False, sc)
>>> w.end_ns, w.count.tolist(), w.mean.tolist()
(10000000000, [1, 1], [1.0, 5.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GOOD, UNCERTAIN, BAD = 0, 1, 2  # quality codes as in drivers.base.Quality (STALE=3, COMM_LOST=4)
NS = 1_000_000_000


@dataclass(frozen=True)
class WindowSummary:
    """One closed window: per-tag arrays (index = tag position) plus line-level figures."""

    end_ns: int  # window end, wall-clock ns since the epoch; the point timestamp
    window_s: float
    count: np.ndarray  # int64[N]
    mean: np.ndarray  # float64[N], NaN where count == 0
    min: np.ndarray
    max: np.ndarray
    std: np.ndarray
    last: np.ndarray
    bad_count: np.ndarray  # int64[N]
    max_score: np.ndarray  # float64[N], NaN when no finite score was seen
    alarm_seconds: np.ndarray  # float64[N]
    steps: int  # detector steps in the window
    line_score_max: float
    line_score_mean: float
    line_alarm_seconds: float


class WindowSummarizer:
    """Incremental per-tag window statistics over wall-clock aligned windows (O(1) per sample)."""

    def __init__(self, n_tags: int, window_s: float = 10.0, include_uncertain: bool = False) -> None:
        if n_tags < 1:
            raise ValueError(f"n_tags must be >= 1, got {n_tags}")
        window_ns = round(window_s * NS)
        if not np.isfinite(window_s) or window_ns < 1_000_000:
            raise ValueError(f"window_s must be >= 0.001 s, got {window_s!r}")
        self.n_tags = n_tags
        self.window_s = float(window_s)
        self.window_ns = window_ns
        self._max_quality = UNCERTAIN if include_uncertain else GOOD
        n = n_tags
        self._n = np.zeros(n, np.int64)
        self._mean = np.zeros(n)
        self._m2 = np.zeros(n)
        self._min = np.full(n, np.inf)
        self._max = np.full(n, -np.inf)
        self._last = np.full(n, np.nan)
        self._bad = np.zeros(n, np.int64)
        self._score = np.full(n, np.nan)
        self._alarm_s = np.zeros(n)
        self._tag_alarm = np.zeros(n, np.bool_)  # flags held since the previous step
        # scratch buffers: a step allocates nothing
        self._use = np.zeros(n, np.bool_)
        self._tmp = np.zeros(n, np.bool_)
        self._fresh = np.zeros(n, np.bool_)
        self._x = np.zeros(n)
        self._delta = np.zeros(n)
        self._div = np.zeros(n)
        self._window: int | None = None  # index k of the open window [k*W, (k+1)*W)
        self._prev_t = 0.0
        self._line_alarm = False
        self._steps = 0
        self._score_sum = 0.0
        self._score_n = 0
        self._score_max = float("nan")
        self._line_alarm_s = 0.0

    def update(self, t: float, values: np.ndarray, fresh: np.ndarray, quality: np.ndarray,
               line_score: float, alarm: bool, tag_scores: np.ndarray,
               tag_alarm: np.ndarray | None = None) -> WindowSummary | None:
        """Fold one detector step in; return the previous window's summary if this step closed it.

        `t` is wall-clock seconds since the epoch. A step earlier than the open window (clock
        stepped back) is counted in the open window rather than reopening a closed one.
        """
        k = int(t * NS) // self.window_ns
        closed = None
        if self._window is None:
            self._window = k
            self._prev_t = t
        elif k > self._window:
            end = (self._window + 1) * self.window_ns / NS
            self._accrue_alarm(max(end - self._prev_t, 0.0))
            closed = self._close()
            self._window = k
            self._prev_t = max(self._prev_t, k * self.window_ns / NS)
        self._accrue_alarm(max(t - self._prev_t, 0.0))
        self._prev_t = max(self._prev_t, t)
        self._line_alarm = bool(alarm)
        if tag_alarm is None:
            self._tag_alarm.fill(self._line_alarm)
        else:
            np.not_equal(tag_alarm, 0, out=self._tag_alarm)
        self._fold(values, fresh, quality, tag_scores)
        self._steps += 1
        if line_score == line_score:  # not NaN
            self._score_sum += line_score
            self._score_n += 1
            if not (line_score <= self._score_max):  # also true while the max is still NaN
                self._score_max = float(line_score)
        return closed

    _ARRAYS = ("_n", "_mean", "_m2", "_min", "_max", "_last", "_bad", "_score", "_alarm_s")
    _SCALARS = ("_prev_t", "_steps", "_score_sum", "_score_n", "_score_max", "_line_alarm_s")

    def snapshot(self, t: float) -> dict | None:
        """The open window's accumulators (JSON-serialisable: lists, NaN/inf allowed) at shutdown
        time `t`, for `restore` in the next process; None when no window is open."""
        if self._window is None or self._steps == 0:
            return None
        end = (self._window + 1) * self.window_ns / NS
        self._accrue_alarm(max(min(end, t) - self._prev_t, 0.0))
        self._prev_t = max(self._prev_t, min(end, t))
        snap: dict = {"window": self._window, "window_ns": self.window_ns, "n_tags": self.n_tags}
        snap.update({k: getattr(self, k).tolist() for k in self._ARRAYS})
        snap.update({k: getattr(self, k) for k in self._SCALARS})
        return snap

    def restore(self, snap: dict, t: float) -> WindowSummary | None:
        """Take over a saved open window at wall time `t`: if `t` is still inside it, later steps
        continue it (one summary for the whole window, across the restart); if it has closed
        meanwhile, it is returned closed, on its own. The downtime counts as no alarm time.
        ValueError when the snapshot does not fit this summarizer (other window or tag count)."""
        if snap["window_ns"] != self.window_ns or snap["n_tags"] != self.n_tags:
            raise ValueError(f"saved window of {snap['window_ns'] / NS:g} s over {snap['n_tags']} tags, "
                             f"now {self.window_s:g} s over {self.n_tags}")
        for k in self._ARRAYS:
            getattr(self, k)[:] = np.asarray(snap[k], dtype=getattr(self, k).dtype)
        for k in self._SCALARS:
            setattr(self, k, type(getattr(self, k))(snap[k]))
        self._window = int(snap["window"])
        self._line_alarm = False
        self._tag_alarm.fill(False)
        if int(t * NS) // self.window_ns == self._window:
            return None
        closed = self._close()
        self._window = None
        return closed

    def _fold(self, values: np.ndarray, fresh: np.ndarray, quality: np.ndarray,
              tag_scores: np.ndarray) -> None:
        use, tmp, x, delta, div = self._use, self._tmp, self._x, self._delta, self._div
        np.not_equal(fresh, 0, out=self._fresh)
        # bad_count: fresh and quality >= BAD
        np.greater_equal(quality, BAD, out=tmp)
        np.logical_and(tmp, self._fresh, out=tmp)
        self._bad += tmp
        # usable: fresh, quality good enough, finite
        np.less_equal(quality, self._max_quality, out=use)
        np.logical_and(use, self._fresh, out=use)
        np.isfinite(values, out=tmp)
        np.logical_and(use, tmp, out=use)
        # Welford, masked: x = value where usable, else the current mean (delta 0, no change)
        np.copyto(x, self._mean)
        np.copyto(x, values, where=use)
        self._n += use
        np.subtract(x, self._mean, out=delta)
        np.maximum(self._n, 1, out=div)
        np.divide(delta, div, out=div)
        self._mean += div
        np.subtract(x, self._mean, out=x)
        x *= delta
        self._m2 += x
        np.minimum(self._min, values, out=self._min, where=use)
        np.maximum(self._max, values, out=self._max, where=use)
        np.copyto(self._last, values, where=use)
        np.fmax(self._score, tag_scores, out=self._score)

    def _accrue_alarm(self, dt: float) -> None:
        if dt > 0.0:
            np.add(self._alarm_s, dt, out=self._alarm_s, where=self._tag_alarm)
            if self._line_alarm:
                self._line_alarm_s += dt

    def _close(self) -> WindowSummary:
        assert self._window is not None
        n = self._n.copy()
        empty = n == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(np.maximum(self._m2, 0.0) / n)
        mean = self._mean.copy()
        mn, mx = self._min.copy(), self._max.copy()
        for a in (mean, mn, mx, std):
            a[empty] = np.nan
        summary = WindowSummary(
            end_ns=(self._window + 1) * self.window_ns, window_s=self.window_s, count=n,
            mean=mean, min=mn, max=mx, std=std, last=self._last.copy(), bad_count=self._bad.copy(),
            max_score=self._score.copy(), alarm_seconds=self._alarm_s.copy(), steps=self._steps,
            line_score_max=self._score_max,
            line_score_mean=self._score_sum / self._score_n if self._score_n else float("nan"),
            line_alarm_seconds=self._line_alarm_s)
        self._reset()
        return summary

    def _reset(self) -> None:
        self._n.fill(0)
        self._mean.fill(0.0)
        self._m2.fill(0.0)
        self._min.fill(np.inf)
        self._max.fill(-np.inf)
        self._last.fill(np.nan)
        self._bad.fill(0)
        self._score.fill(np.nan)
        self._alarm_s.fill(0.0)
        self._steps = 0
        self._score_sum = 0.0
        self._score_n = 0
        self._score_max = float("nan")
        self._line_alarm_s = 0.0

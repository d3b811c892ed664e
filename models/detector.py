"""StreamingDetector: fit on normal data, then step live or replay in batch through one kernel.

>>> import numpy as np
>>> from models import StreamingDetector, DetectorSpec
>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(600, 3)) @ np.array([[1, .8, 0], [0, .6, .5], [0, 0, .7]])
>>> det = StreamingDetector(["a", "b", "c"], DetectorSpec(iforest_trees=20)).fit(normal)
>>> fresh = good = np.ones(3, dtype=np.uint8)
>>> det.step(0.0, normal[0], fresh, good)
False
>>> det.step(1.0, np.array([0.0, 9.0, -9.0]), fresh, good)
True

Without training data, `StreamingDetector.rules_only(tags, limits=...)` runs the
rule-based part alone (validity, hard limits, flatline).

Scikit-learn's rules: the constructor only stores its arguments; the fitted
attributes (`model`, `summary`, `fitted`, the output arrays) are set by `fit`,
`rules_only` and `load` alone. Fitting imports scipy and scikit-learn inside
`fit`: loading a model and stepping it needs numpy and numba only.

Time rule (the same in fit, step and run_batch, see models.baseline.monotone_times):
a frame whose time equals the previous frame's (a duplicate), or lies before it
(backward), is processed at the latest time: its values update the held values
and the baselines, but it adds no time to a flat run and gives no rate
(dt = 0). A step back re-bases the clock, so the frames after it advance at once.
Both are counted in `time_duplicates` and `time_backward`.
"""

import math
from dataclasses import replace

import numpy as np

from models import artifact, attribution, kernels
from models.baseline import monotone_times, rules_only_params, set_limits
from models.calibration import decision_params
from models.errors import ModelError, NotFittedError
from models.kernels import (
    C_SIZE,
    D_THRESHOLD_ON,
    DS_ADAPT_FROZEN,
    DS_ADAPT_STEPS,
    O_ALARM,
    O_SCORE,
    O_SIZE,
    STEP_BAD_LENGTH,
    TP_BASE_MEAN,
    TP_CENTER,
    TP_HI,
    TP_LO,
    TP_SIZE,
    TS_BASE_GAIN,
    TS_BASE_MEAN,
    VALUE_ABS_MAX,
)
from models.runner import MODEL_ARRAYS, BatchResult, kernel_args, model_arrays, new_state, replay
from models.spec import DetectorSpec, TagLimits

__all__ = ["MODEL_ARRAYS", "BatchResult", "StreamingDetector", "load_model", "save_model"]

MIN_FIT_ROWS = 50
RULES_ONLY_THRESHOLD = 0.5  # line threshold without a model: only limit/flatline (10^4) feed it


class StreamingDetector:
    """Per-tag detectors + PCA T²/SPE + IsolationForest, fused into one debounced line alarm."""

    def __init__(self, tags: list[str], spec: DetectorSpec | None = None,
                 units: dict[str, str] | None = None) -> None:
        self.tags = tags
        self.spec = spec
        self.units = units

    # ----------------------------------------------------------------- fitting
    def fit(self, x: np.ndarray, times: np.ndarray | None = None) -> "StreamingDetector":
        """Fit baselines and models on normal data x (rows x tags), then calibrate thresholds.

        Models are fitted on the first rows and thresholds calibrated on the held-out
        tail (`holdout_fraction`), replaying the whole window so stateful detectors are
        warm when the tail begins; with `refit` the models are then refitted on all rows.
        The summary's `calibration` record says what decided the threshold; a cap,
        a floor or a left-out limit/flatline hit also raises a CalibrationWarning.
        """
        from models.fitting import fit_model

        tags, spec, units = self._checked_params()
        x, times = _check_training(x, times, tags)
        fitted = fit_model(tags, spec, x, times)
        self._install(tags, spec, units, fitted.arrays, fitted.summary, fitted=True)
        return self

    @classmethod
    def rules_only(cls, tags: list[str], limits: dict | None = None,
                   flatline_s: dict[str, float] | None = None,
                   units: dict[str, str] | None = None) -> "StreamingDetector":
        """A detector that needs no training data: validity, hard limits and flatline only.

        For commissioning, before there is normal data to fit on. `limits` maps a tag to
        (lo, hi) or TagLimits; `flatline_s` maps a tag to the seconds its value may stay
        unchanged (other tags have no flatline). Every statistical detector and model is
        off; a limit breach or a flatline raises the line alarm as in a fitted detector,
        and the outputs (tag_flags, tag_scores, out, threshold) mean the same.
        """
        _check_tags(tags)
        spec = DetectorSpec(limits=_limits(tags, limits or {}), pca=False, iforest=False,
                            weights=(1.0, 0.0, 0.0, 0.0), line_flags=("limit", "flatline"))
        flat = {tag: float(seconds) for tag, seconds in (flatline_s or {}).items()}
        unknown = sorted(set(flat) - set(tags))
        if unknown:
            raise ValueError(f"flatline_s given for unknown tag(s): {', '.join(unknown)}")
        for tag, seconds in flat.items():
            if not 0 < seconds < math.inf:
                raise ValueError(f"flatline_s[{tag!r}] = {seconds:g}: expected seconds > 0")
        model = model_arrays(rules_only_params(list(tags), spec.limits, flat))
        model["decision_params"] = decision_params(spec, (np.zeros(C_SIZE), np.ones(C_SIZE)),
                                                   RULES_ONLY_THRESHOLD)
        det = cls(tags, spec, units)
        det._install(list(tags), spec, dict(units or {}), model,
                     {"rules_only": True, "threshold_on": RULES_ONLY_THRESHOLD}, fitted=False)
        return det

    def _checked_params(self) -> tuple[list[str], DetectorSpec, dict[str, str]]:
        """The constructor's arguments, validated (at fit time, as scikit-learn does)."""
        tags = list(self.tags)
        _check_tags(tags)
        spec = self.spec if self.spec is not None else DetectorSpec()
        unknown = set(spec.limits) - set(tags)
        if unknown:
            raise ValueError(f"limits given for unknown tag(s): {', '.join(sorted(unknown))}")
        return tags, spec, dict(self.units or {})

    def _install(self, tags, spec, units, model: dict[str, np.ndarray], summary: dict, fitted: bool,
                 metadata: dict | None = None) -> None:
        """Set every fitted attribute at once (fit, rules_only and load), then start from a fresh state."""
        self.tags, self.spec, self.units = tags, spec, units
        self.n = len(tags)
        self.model = model
        self.summary = summary
        self.fitted = fitted  # True once fit (or loaded from an artifact); False for rules_only
        self.metadata = metadata or {}
        # Outputs of the latest live step (preallocated, overwritten every step).
        self.tag_flags = np.zeros(self.n, dtype=np.int32)
        self.tag_scores = np.zeros(self.n)
        self.out = np.zeros(O_SIZE)  # components, line score, alarm (kernels.O_*)
        self.reset()

    def set_limits(self, limits: dict) -> list[str]:
        """Override the hard limits of the tags in `limits` (tag -> (lo, hi) or TagLimits).

        The config wins over the model. Tags not in `limits` keep theirs; (-inf, inf)
        removes a tag's limits. Returns one line per tag whose limits changed
        ("motor_current: hi 30 -> 15 (config)"). Applies from the next step, also to a
        value held since an earlier one.
        """
        self._require_model()
        new = _limits(self.tags, limits)
        tp = self.model["tag_params"]
        changes = []
        for i, tag in enumerate(self.tags):
            if tag in new:
                lim = new[tag]
                parts = [f"{name} {tp[i, col]:g} -> {value:g}" for name, col, value in
                         (("lo", TP_LO, lim.lo), ("hi", TP_HI, lim.hi)) if tp[i, col] != value]
                if parts:
                    changes.append(f"{tag}: {', '.join(parts)} (config)")
        merged = {**self.spec.limits, **new}
        self.spec = replace(self.spec, limits={t: v for t, v in merged.items() if v != TagLimits()})
        set_limits(tp, self.spec.limits, self.tags)
        return changes

    # ------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything seen since fit (baselines and thresholds stay)."""
        self._require_model()
        self.state = new_state(self.model)
        self._args = kernel_args(self.model, self.state)
        for output in (self.tag_flags, self.tag_scores, self.out):  # no latest step to explain
            output[...] = 0
        self._last_t = -math.inf  # latest effective time (the clock the kernel sees)
        self._last_raw = -math.inf  # the previous frame's own time
        self._clock_offset = 0.0  # how far steps back have re-based the clock
        self.time_duplicates = 0  # frames at the latest time seen (time rule: module docstring)
        self.time_backward = 0  # frames before it

    def checkpoint(self) -> dict[str, np.ndarray]:
        """A copy of the running state; `restore` continues exactly where this left off."""
        self._require_model()
        saved = {k: v.copy() for k, v in self.state.items()}
        saved["clock"] = np.array([self._last_t, self.time_duplicates, self.time_backward, self._last_raw,
                                   self._clock_offset], dtype=np.float64)
        return saved

    def restore(self, checkpoint: dict[str, np.ndarray]) -> None:
        self._require_model()
        clock = np.zeros(5)
        for name, current in (*self.state.items(), ("clock", clock)):
            saved = checkpoint.get(name)
            if saved is None or saved.shape != current.shape or saved.dtype != current.dtype:
                raise ValueError(f"checkpoint does not fit this detector: {name} has the wrong shape")
        for name, current in self.state.items():
            current[...] = checkpoint[name]
        last, duplicates, backward, last_raw, offset = checkpoint["clock"]
        self._last_t, self.time_duplicates, self.time_backward = float(last), int(duplicates), int(backward)
        self._last_raw, self._clock_offset = float(last_raw), float(offset)

    def _require_model(self) -> None:
        if getattr(self, "model", None) is None:
            raise NotFittedError("detector is not fitted: call fit() or load a model artifact")

    @property
    def adaptation(self) -> dict:
        """How far the adaptive baselines moved since reset, and how often learning was frozen."""
        self._require_model()
        ds, ts, tp = self.state["decision_state"], self.state["tag_state"], self.model["tag_params"]
        return {"learnt_frames": int(ds[DS_ADAPT_STEPS]), "frozen_frames": int(ds[DS_ADAPT_FROZEN]),
                "level_shift": dict(zip(self.tags, (ts[:, TS_BASE_MEAN] - tp[:, TP_BASE_MEAN]).tolist(),
                                        strict=True)),
                "spread_gain": dict(zip(self.tags, ts[:, TS_BASE_GAIN].tolist(), strict=True))}

    def explain(self, top_k: int = 3, component: str | None = None) -> attribution.Attribution:
        """Why the latest step scored what it did: driving component, its ratio to its limit, top tags.

        Computed on demand from the latest step's outputs and state (nothing is added to step).
        """
        self._require_model()
        return attribution.explain(self.tags, self.model, self.state, self.out, self.tag_flags,
                                   self.tag_scores, top_k=top_k, component=component, fitted=self.fitted)

    @property
    def threshold(self) -> float:
        self._require_model()
        return float(self.model["decision_params"][D_THRESHOLD_ON])

    # ------------------------------------------------------------- scoring
    def step(self, t: float, x: np.ndarray, fresh: np.ndarray, good: np.ndarray) -> bool:
        """Score one frame (float64 values, uint8 fresh and good masks); True while alarming.

        Per-tag flags/scores, component scores and the line score are left in
        `tag_flags`, `tag_scores`, `components` and `score`. A frame of the wrong
        length, dtype or layout, or a non-finite t, raises ValueError and changes nothing;
        the checks cost nothing on a good frame (numba's dispatch and the kernel do them).
        A duplicate or backward t is held at the latest time (the time rule) and counted; a step
        back re-bases the clock, so later frames advance from the latest time at once.
        """
        try:
            args = self._args
        except AttributeError:
            raise NotFittedError("detector is not fitted: call fit() or load a model artifact") from None
        t = float(t)
        offset = self._clock_offset
        if t < self._last_raw:  # a step back re-bases the clock (NaN and inf are refused by the kernel)
            offset += self._last_raw - t
        effective = t + offset  # then at least the latest time: the same operations as monotone_times
        if effective < self._last_t:
            effective = self._last_t
        try:
            status = kernels.step(effective, x, fresh, good, *args, self.tag_flags,
                                  self.tag_scores, self.out)
        except TypeError:  # no compiled version for these argument types
            raise ValueError(self._frame_problem(x, fresh, good)) from None
        if status:
            raise ValueError(self._frame_problem(x, fresh, good) if status == STEP_BAD_LENGTH
                             else f"step: t must be finite, got {t}")
        if t == self._last_raw:
            self.time_duplicates += 1
        elif t < self._last_raw:
            self.time_backward += 1
        self._last_t, self._last_raw, self._clock_offset = effective, t, offset
        return bool(self.out[O_ALARM] != 0.0)

    def _frame_problem(self, x, fresh, good) -> str:
        """The slow path of step's checks: say which array is wrong and how."""
        for name, arr, dtype in (("x", x, np.float64), ("fresh", fresh, np.uint8), ("good", good, np.uint8)):
            want = f"a writable C-contiguous {np.dtype(dtype).name} array of shape ({self.n},)"
            if not isinstance(arr, np.ndarray):
                return f"step: {name} must be {want} (one entry per tag), got {type(arr).__name__}"
            if (arr.dtype != dtype or arr.shape != (self.n,) or not arr.flags.c_contiguous
                    or not arr.flags.writeable):
                layout = "" if arr.flags.c_contiguous else ", not C-contiguous"
                layout += "" if arr.flags.writeable else ", read-only"
                return (f"step: {name} must be {want} (one entry per tag), got {arr.dtype} "
                        f"shape {arr.shape}{layout}")
        return "step: the detector's own arrays do not have the types step was compiled for"

    @property
    def score(self) -> float:
        return float(self.out[O_SCORE])

    @property
    def components(self) -> np.ndarray:
        """Normalised component scores of the latest step (tags, T², SPE, IsolationForest)."""
        return self.out[:C_SIZE]

    def run_batch(self, x: np.ndarray, times: np.ndarray | None = None,
                  fresh: np.ndarray | None = None, good: np.ndarray | None = None) -> BatchResult:
        """Replay rows through the live kernel, continuing from the current state (and clock)."""
        self._require_model()
        x = np.ascontiguousarray(x, dtype=np.float64)
        rows = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"data must have shape (rows, {self.n}), got {x.shape}")
        times = np.arange(rows, dtype=np.float64) if times is None else np.ascontiguousarray(
            times, dtype=np.float64)
        fresh = np.ones((rows, self.n), np.uint8) if fresh is None else np.ascontiguousarray(
            fresh, dtype=np.uint8)
        good = np.ones((rows, self.n), np.uint8) if good is None else np.ascontiguousarray(
            good, dtype=np.uint8)
        # The kernel does not bounds-check: a short array would be read past its end.
        for name, arr, shape in (("times", times, (rows,)), ("fresh", fresh, x.shape),
                                 ("good", good, x.shape)):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if not np.isfinite(times).all():
            raise ValueError("times must be finite")
        held, duplicates, backward, offset = monotone_times(times, self._last_t, self._last_raw,
                                                            self._clock_offset)
        result = replay(self.model, self.state, held, x, fresh, good)
        if rows:
            self._last_t, self._last_raw, self._clock_offset = float(held[-1]), float(times[-1]), offset
        self.time_duplicates += duplicates
        self.time_backward += backward
        return result

    def warm_up(self) -> None:
        """Compile (or load from cache) both kernels now, without touching the running state."""
        saved = self.checkpoint()
        saved_outputs = (self.tag_flags.copy(), self.tag_scores.copy(), self.out.copy())
        frame = self.model["tag_params"][:, TP_CENTER].copy()
        ones = np.ones(self.n, dtype=np.uint8)
        self.step(0.0, frame, ones, ones)
        self.run_batch(frame[None, :])
        self.restore(saved)
        for current, before in zip((self.tag_flags, self.tag_scores, self.out), saved_outputs,
                                   strict=True):
            current[...] = before

    # ------------------------------------------------------------ artifacts
    def save(self, path) -> None:
        """Write the fitted model as a versioned artifact (models.artifact), atomically."""
        self._require_model()
        if not self.fitted:
            raise ValueError("a rules-only detector has nothing fitted to save")
        artifact.write(path, {k: self.model[k] for k in MODEL_ARRAYS},
                       {"tags": self.tags, "units": self.units, "spec": self.spec.to_dict(),
                        "summary": self.summary})

    @classmethod
    def load(cls, path, expected_tags: list[str] | None = None) -> "StreamingDetector":
        """Load and verify a model; refuse a corrupt file, an old format or one fitted for other tags."""
        arrays, meta = artifact.read(path, MODEL_ARRAYS)
        tags = meta["tags"]
        if arrays["tag_params"].shape != (len(tags), TP_SIZE):
            raise ModelError(f"model file {path} has tag parameters of shape {arrays['tag_params'].shape}, "
                             f"expected ({len(tags)}, {TP_SIZE}): {artifact.REFIT}")
        if expected_tags is not None and list(expected_tags) != tags:
            raise ModelError(artifact.tag_mismatch(path, tags, list(expected_tags)))
        try:
            spec = DetectorSpec.from_dict(meta["spec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model file {path} has detector settings this linesentry cannot use "
                             f"({exc}): {artifact.REFIT}") from None
        det = cls(tags, spec, meta.get("units"))
        det._install(list(tags), spec, dict(meta.get("units") or {}), arrays, meta.get("summary", {}),
                     fitted=True, metadata=meta)
        return det


def save_model(det: StreamingDetector, path) -> None:
    """Write `det` atomically (temp file + rename), so a crash never leaves half a model behind."""
    det.save(path)


def load_model(path, expected_tags: list[str] | None = None) -> StreamingDetector:
    """Load and verify a model; refuse a corrupt file or one fitted for other tags."""
    return StreamingDetector.load(path, expected_tags)


def _check_tags(tags) -> None:
    if not tags or len(set(tags)) != len(tags):
        raise ValueError("tags must be a non-empty list of unique names")


def _check_training(x, times, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = len(tags)
    if x.ndim != 2 or x.shape[1] != n:
        raise ModelError(f"training data must have shape (rows, {n}), got {x.shape}")
    if x.shape[0] < MIN_FIT_ROWS:
        raise ModelError(f"need at least {MIN_FIT_ROWS} training rows, got {x.shape[0]}")
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        names = ", ".join(t for t, b in zip(tags, bad, strict=True) if b)
        raise ModelError(f"training data has NaN/inf in tag(s) {names}: drop those rows first")
    huge = (np.abs(x) > VALUE_ABS_MAX).any(axis=0)
    if huge.any():
        names = ", ".join(t for t, b in zip(tags, huge, strict=True) if b)
        raise ModelError(f"training data has values beyond ±{VALUE_ABS_MAX:g} in tag(s) {names}: "
                         "drop those rows first")
    return x, _check_times(times, x.shape[0])


def _check_times(times, rows: int) -> np.ndarray:
    """Training times: finite, one per row (duplicates and backward steps follow the time rule)."""
    if times is None:
        return np.arange(rows, dtype=np.float64)
    times = np.ascontiguousarray(times, dtype=np.float64)
    if times.shape != (rows,) or not np.isfinite(times).all():
        raise ModelError(f"times must be finite, one per training row ({rows}), got shape {times.shape}")
    if times.max() <= times[0]:  # held at the latest time, every row would be at the first one
        raise ModelError("times never advance: give one increasing time stamp per training row")
    return times


def _limits(tags: list[str], limits: dict) -> dict[str, TagLimits]:
    """Validate tag -> (lo, hi) or TagLimits: known tags, numbers, lo < hi."""
    unknown = sorted(set(limits) - set(tags))
    if unknown:
        raise ValueError(f"limits given for unknown tag(s): {', '.join(unknown)}")
    out = {}
    for tag, lim in limits.items():
        lo, hi = (lim.lo, lim.hi) if isinstance(lim, TagLimits) else lim
        lo, hi = float(lo), float(hi)
        if not lo < hi:
            raise ValueError(f"limits for {tag}: lo={lo:g} must be < hi={hi:g}")
        out[tag] = TagLimits(lo, hi)
    return out

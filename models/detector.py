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
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from models import kernels
from models.baseline import ewma, longest_flat_run, robust_scale, shifted_tags
from models.calibration import calibrate_threshold
from models.errors import NotFittedError
from models.iforest import ForestArrays, fit_iforest, flatten_iforest
from models.kernels import (
    C_IFOREST,
    C_SIZE,
    C_SPE,
    C_T2,
    D_CLEAR_N,
    D_COMP_LOC,
    D_COMP_THR,
    D_F_DENOMINATOR,
    D_F_DEPTH,
    D_INPUT_ALPHA,
    D_K,
    D_N,
    D_SIZE,
    D_SMOOTH_ALPHA,
    D_THRESHOLD_OFF,
    D_THRESHOLD_ON,
    D_W_TAGS,
    DS_SIZE,
    FLAG_BITS,
    FLAG_FLAT,
    FLAG_LIMIT,
    MAX_LINE_THRESHOLD,
    O_ALARM,
    O_SCORE,
    O_SIZE,
    RANGE_SCALES,
    STEP_BAD_LENGTH,
    TP_CENTER,
    TP_CUSUM_H,
    TP_CUSUM_K,
    TP_EWMA_ALPHA,
    TP_FLAT_EPS,
    TP_FLAT_SECONDS,
    TP_HI,
    TP_INV_SCALE,
    TP_LINE_MASK,
    TP_LO,
    TP_PCA_MEAN,
    TP_RANGE_HI,
    TP_RANGE_LO,
    TP_ROC_MAX,
    TP_SIZE,
    TP_STD0,
    TP_WARMUP,
    TP_Z_MAX,
    TS_SIZE,
    VALUE_ABS_MAX,
    cusum_peaks,
    ewma_innovations,
)
from models.pca import PCAModel, fit_pca
from models.spec import DetectorSpec, TagLimits

MIN_FIT_ROWS = 50
RULES_ONLY_THRESHOLD = 0.5  # line threshold without a model: only limit/flatline (10^4) feed it
# The fitted arrays (what a model artifact holds).
MODEL_ARRAYS = ("tag_params", "pca_components", "pca_inv_eig", "f_nodes", "f_leaf_depth",
                "f_roots", "decision_params")


@dataclass
class BatchResult:
    """Per-row outputs of a replay: line score and alarm, component scores, per-tag flags and scores."""

    score: np.ndarray  # (rows,) float64 in [0, 1)
    alarm: np.ndarray  # (rows,) bool
    components: np.ndarray  # (rows, 4) normalised component scores
    tag_flags: np.ndarray  # (rows, tags) int32 bitmask (models.kernels.FLAG_*)
    tag_scores: np.ndarray  # (rows, tags) float64


class StreamingDetector:
    """Per-tag detectors + PCA T²/SPE + IsolationForest, fused into one debounced line alarm."""

    def __init__(self, tags: list[str], spec: DetectorSpec | None = None,
                 units: dict[str, str] | None = None) -> None:
        if not tags or len(set(tags)) != len(tags):
            raise ValueError("tags must be a non-empty list of unique names")
        unknown = set((spec or DetectorSpec()).limits) - set(tags)
        if unknown:
            raise ValueError(f"limits given for unknown tag(s): {', '.join(sorted(unknown))}")
        self.tags = list(tags)
        self.spec = spec or DetectorSpec()
        self.units = dict(units or {})
        self.n = len(tags)
        self.model: dict[str, np.ndarray] | None = None
        self.fitted = False  # True once fit (or loaded from an artifact); False for rules_only
        self.summary: dict = {}
        # Outputs of the latest live step (preallocated, overwritten every step).
        self.tag_flags = np.zeros(self.n, dtype=np.int32)
        self.tag_scores = np.zeros(self.n)
        self.out = np.zeros(O_SIZE)  # components, line score, alarm (kernels.O_*)
        self._args: tuple | None = None
        self._forest_shape = (0.0, 0)  # IsolationForest denominator and depth

    # ----------------------------------------------------------------- fitting
    def fit(self, x: np.ndarray, times: np.ndarray | None = None) -> "StreamingDetector":
        """Fit baselines and models on normal data x (rows x tags), then calibrate thresholds.

        Models are fitted on the first rows and thresholds calibrated on the held-out
        tail (`holdout_fraction`), replaying the whole window so stateful detectors are
        warm when the tail begins; with `refit` the models are then refitted on all rows.
        """
        x, times = self._check_training(x, times)
        spec = self.spec
        rows = x.shape[0]
        n_fit = rows - int(rows * spec.holdout_fraction)
        cal = slice(n_fit if n_fit < rows else 0, None)
        identity = (np.zeros(C_SIZE), np.ones(C_SIZE))
        pca, forest = self._fit_models(x[:n_fit], times[:n_fit], identity, np.inf)

        self.reset()
        raw = self.run_batch(x, times).components[cal]
        norm = self._component_normalisation(raw, pca, forest)
        self._set_normalisation(norm, np.inf)
        self.reset()
        line = self.run_batch(x, times).score[cal]
        fused = line / (1.0 - line)  # undo the [0, 1) squashing
        margin_fused = spec.threshold_margin * calibrate_threshold(fused, spec.target_far, spec.calibration)
        threshold = min(margin_fused / (1.0 + margin_fused), MAX_LINE_THRESHOLD)

        if spec.refit and n_fit < rows:
            pca, forest = self._fit_models(x, times, norm, threshold)
        else:
            self._set_normalisation(norm, threshold)
        self.reset()
        self.summary = self._summary(x, times, n_fit, line, threshold, norm, pca)
        self.fitted = True
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
        spec = DetectorSpec(limits=_limits(tags, limits or {}), pca=False, iforest=False,
                            weights=(1.0, 0.0, 0.0, 0.0), line_flags=("limit", "flatline"))
        det = cls(tags, spec, units)
        flat = {tag: float(seconds) for tag, seconds in (flatline_s or {}).items()}
        unknown = sorted(set(flat) - set(det.tags))
        if unknown:
            raise ValueError(f"flatline_s given for unknown tag(s): {', '.join(unknown)}")
        for tag, seconds in flat.items():
            if not 0 < seconds < math.inf:
                raise ValueError(f"flatline_s[{tag!r}] = {seconds:g}: expected seconds > 0")
        tp = np.zeros((det.n, TP_SIZE))
        det._set_tag_limits(tp)
        tp[:, TP_FLAT_SECONDS] = [flat.get(tag, 0.0) for tag in det.tags]
        tp[:, TP_ROC_MAX] = tp[:, TP_Z_MAX] = tp[:, TP_CUSUM_H] = np.inf
        tp[:, TP_EWMA_ALPHA] = tp[:, TP_STD0] = tp[:, TP_WARMUP] = tp[:, TP_INV_SCALE] = 1.0
        tp[:, TP_LINE_MASK] = FLAG_LIMIT | FLAG_FLAT
        tp[:, TP_RANGE_LO], tp[:, TP_RANGE_HI] = -VALUE_ABS_MAX, VALUE_ABS_MAX
        det._forest_shape = (0.0, 0)
        det.model = det._model_arrays(tp)
        det._set_normalisation((np.zeros(C_SIZE), np.ones(C_SIZE)), RULES_ONLY_THRESHOLD)
        det.summary = {"rules_only": True, "threshold_on": RULES_ONLY_THRESHOLD}
        det.reset()
        return det

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
        self._set_tag_limits(tp)
        return changes

    def _set_tag_limits(self, tp: np.ndarray) -> None:
        for i, tag in enumerate(self.tags):
            lim = self.spec.limits.get(tag, TagLimits())
            tp[i, TP_LO], tp[i, TP_HI] = lim.lo, lim.hi

    def _check_training(self, x, times) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"training data must have shape (rows, {self.n}), got {x.shape}")
        if x.shape[0] < MIN_FIT_ROWS:
            raise ValueError(f"need at least {MIN_FIT_ROWS} training rows, got {x.shape[0]}")
        bad = ~np.isfinite(x).all(axis=0)
        if bad.any():
            names = ", ".join(t for t, b in zip(self.tags, bad, strict=True) if b)
            raise ValueError(f"training data has NaN/inf in tag(s) {names}: drop those rows first")
        huge = (np.abs(x) > VALUE_ABS_MAX).any(axis=0)
        if huge.any():
            names = ", ".join(t for t, b in zip(self.tags, huge, strict=True) if b)
            raise ValueError(f"training data has values beyond ±{VALUE_ABS_MAX:g} in tag(s) {names}: "
                             "drop those rows first")
        if times is None:
            times = np.arange(x.shape[0], dtype=np.float64)
        times = np.ascontiguousarray(times, dtype=np.float64)
        if (times.shape != (x.shape[0],) or not np.isfinite(times).all()
                or np.any(np.diff(times) <= 0)):
            raise ValueError("times must be finite and strictly increasing, one per training row")
        return x, times

    def _fit_models(self, x, times, norm, threshold) -> tuple[PCAModel | None, ForestArrays | None]:
        """Fit per-tag baselines, scaler, PCA and forest on x; install them with the given thresholds."""
        spec = self.spec
        smoothed = ewma(x, spec.input_alpha)
        center, scale = robust_scale(smoothed)
        z = (smoothed - center) / scale
        tp = self._fit_tag_params(x, times)
        tp[:, TP_CENTER], tp[:, TP_INV_SCALE] = center, 1.0 / scale
        pca = forest = None
        if spec.pca and self.n >= 2:
            pca = fit_pca(z, spec.pca_variance, spec.pca_max_components)
            tp[:, TP_PCA_MEAN] = pca.mean
        if spec.iforest:
            forest = flatten_iforest(fit_iforest(z, spec.iforest_trees,
                                                 min(spec.iforest_max_samples, x.shape[0]), spec.seed))
        self._forest_shape = (forest.denominator, forest.max_depth) if forest else (0.0, 0)
        self.model = self._model_arrays(tp, pca, forest)
        self._set_normalisation(norm, threshold)
        return pca, forest

    def _model_arrays(self, tp, pca: PCAModel | None = None,
                      forest: ForestArrays | None = None) -> dict[str, np.ndarray]:
        """The arrays `step` takes, C-contiguous (the only layout it is compiled for)."""
        model = {"tag_params": tp, "pca_components": np.zeros((0, self.n)),
                 "pca_inv_eig": np.zeros(0), "f_nodes": np.zeros((0, 3), dtype=np.int32),
                 "f_leaf_depth": np.zeros(0), "f_roots": np.zeros(0, dtype=np.int32)}
        if pca is not None:
            model.update(pca_components=pca.components, pca_inv_eig=pca.inv_eigenvalues)
        if forest is not None:
            model.update(f_nodes=forest.nodes, f_leaf_depth=forest.leaf_depth, f_roots=forest.roots)
        return {k: np.ascontiguousarray(v) for k, v in model.items()}

    def _component_normalisation(self, raw, pca, forest) -> tuple[np.ndarray, np.ndarray]:
        """Per component (loc, threshold) so that (raw - loc) / (threshold - loc) is 1.0 at threshold."""
        spec = self.spec
        loc, thr = np.zeros(C_SIZE), np.ones(C_SIZE)
        if pca is not None:
            if spec.pca_limits == "theoretical":
                thr[C_T2], thr[C_SPE] = pca.t2_limit, pca.spe_limit
            else:
                thr[C_T2] = calibrate_threshold(raw[:, C_T2], spec.component_far, spec.calibration)
                thr[C_SPE] = calibrate_threshold(raw[:, C_SPE], spec.component_far, spec.calibration)
            if not pca.has_residual:
                thr[C_SPE] = np.inf  # every component kept: SPE is identically zero
        if forest is not None:
            loc[C_IFOREST] = float(np.median(raw[:, C_IFOREST]))
            thr[C_IFOREST] = calibrate_threshold(raw[:, C_IFOREST], spec.component_far,
                                                 spec.calibration)
        return loc, np.maximum(thr, loc + 1e-12)

    def _set_normalisation(self, norm, threshold: float) -> None:
        self.model["decision_params"] = self._decision_params(norm, threshold)

    def _summary(self, x, times, n_fit, line, threshold, norm, pca) -> dict:
        spec = self.spec
        summary = {
            "rows": int(x.shape[0]),
            "fit_rows": int(n_fit),
            "calibration_rows": int(line.shape[0]),
            "time_start": float(times[0]),
            "time_end": float(times[-1]),
            "constant_tags": [t for t, c in zip(self.tags, np.ptp(x, axis=0) == 0, strict=True) if c],
            "shifted_tags": shifted_tags(x, self.tags),
            "threshold_on": float(threshold),
            "threshold_off": float(threshold * spec.hysteresis),
            "component_thresholds": {name: float(norm[1][c]) for c, name in
                                     ((C_T2, "pca_t2"), (C_SPE, "pca_spe"), (C_IFOREST, "iforest"))},
            "calibration_exceedance": float(np.mean(line > threshold)),
        }
        if pca is not None:
            summary["pca"] = {
                "components": int(pca.components.shape[0]),
                "explained_variance": pca.explained_variance_ratio,
                "t2_limit_theoretical": pca.t2_limit,
                "spe_limit_theoretical": pca.spe_limit,
            }
        return summary

    def _fit_tag_params(self, x, times) -> np.ndarray:
        spec = self.spec
        tp = np.zeros((self.n, TP_SIZE))
        dt = np.diff(times)
        line_mask = sum(FLAG_BITS[name] for name in spec.line_flags)
        innovations = ewma_innovations(x, spec.ewma_alpha)
        _, innovation_sigma = robust_scale(innovations)
        # Real signals are autocorrelated, so their CUSUM wanders further than i.i.d. theory
        # says: the decision interval is at least a margin over the largest excursion seen
        # on normal data.
        cusum_h = np.maximum(spec.cusum_h, spec.cusum_margin * cusum_peaks(
            innovations, innovation_sigma, spec.cusum_k))
        self._set_tag_limits(tp)
        # Usable range: very wide around the robust centre, always holding every training value.
        center, scale = robust_scale(x)
        tp[:, TP_RANGE_LO] = np.maximum(np.minimum(center - RANGE_SCALES * scale, x.min(axis=0)),
                                        -VALUE_ABS_MAX)
        tp[:, TP_RANGE_HI] = np.minimum(np.maximum(center + RANGE_SCALES * scale, x.max(axis=0)),
                                        VALUE_ABS_MAX)
        for i in range(self.n):
            max_rate = float(np.max(np.abs(np.diff(x[:, i])) / dt))
            tp[i, TP_ROC_MAX] = spec.roc_factor * max_rate if max_rate > 0 else np.inf
            run = longest_flat_run(x[:, i], times, spec.flat_eps)
            constant_throughout = run >= times[-1] - times[0]
            if spec.flat_factor > 0 and not constant_throughout:
                tp[i, TP_FLAT_SECONDS] = max(spec.flat_min_seconds, spec.flat_factor * run)
            tp[i, TP_FLAT_EPS] = spec.flat_eps
            tp[i, TP_EWMA_ALPHA] = spec.ewma_alpha
            tp[i, TP_Z_MAX] = spec.z_max
            tp[i, TP_STD0] = innovation_sigma[i]
            tp[i, TP_CUSUM_K] = spec.cusum_k
            tp[i, TP_CUSUM_H] = cusum_h[i]
            tp[i, TP_WARMUP] = spec.warmup
            tp[i, TP_LINE_MASK] = line_mask
        return tp

    def _decision_params(self, norm, threshold_on: float) -> np.ndarray:
        s = self.spec
        dp = np.zeros(D_SIZE)
        dp[D_SMOOTH_ALPHA] = s.smooth_alpha
        dp[D_THRESHOLD_ON] = threshold_on
        dp[D_THRESHOLD_OFF] = threshold_on * s.hysteresis
        dp[D_K], dp[D_N], dp[D_CLEAR_N] = s.debounce_k, s.debounce_n, s.clear_n
        dp[D_W_TAGS:D_W_TAGS + C_SIZE] = s.weights
        dp[D_INPUT_ALPHA] = s.input_alpha
        dp[D_COMP_LOC:D_COMP_LOC + C_SIZE], dp[D_COMP_THR:D_COMP_THR + C_SIZE] = norm
        dp[D_F_DENOMINATOR], dp[D_F_DEPTH] = self._forest_shape
        return dp

    # ------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything seen since fit (baselines and thresholds stay)."""
        self._require_model()
        self.state = {
            "tag_state": np.zeros((self.n, TS_SIZE)),
            "decision_state": np.zeros(DS_SIZE + int(self.model["decision_params"][D_N])),
        }
        self._bind()

    def checkpoint(self) -> dict[str, np.ndarray]:
        """A copy of the running state; `restore` continues exactly where this left off."""
        self._require_model()
        return {k: v.copy() for k, v in self.state.items()}

    def restore(self, checkpoint: dict[str, np.ndarray]) -> None:
        self._require_model()
        for name, current in self.state.items():
            saved = checkpoint.get(name)
            if saved is None or saved.shape != current.shape or saved.dtype != current.dtype:
                raise ValueError(f"checkpoint does not fit this detector: {name} has the wrong shape")
        for name, current in self.state.items():
            current[...] = checkpoint[name]

    def _bind(self) -> None:
        m, s = self.model, self.state
        # Kernel arguments after (t, x, fresh, good), in the kernels' order.
        self._args = (m["tag_params"], s["tag_state"], m["pca_components"], m["pca_inv_eig"],
                      m["f_nodes"], m["f_leaf_depth"], m["f_roots"], m["decision_params"],
                      s["decision_state"])

    def _require_model(self) -> None:
        if self.model is None:
            raise NotFittedError("detector is not fitted: call fit() or load a model artifact")

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
        """
        if self._args is None:
            raise NotFittedError("detector is not fitted: call fit() or load a model artifact")
        t = float(t)
        try:
            status = kernels.step(t, x, fresh, good, *self._args, self.tag_flags, self.tag_scores,
                                  self.out)
        except TypeError:  # no compiled version for these argument types
            raise ValueError(self._frame_problem(x, fresh, good)) from None
        if status:
            raise ValueError(self._frame_problem(x, fresh, good) if status == STEP_BAD_LENGTH
                             else f"step: t must be finite, got {t}")
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
        """Replay rows through the live kernel, continuing from the current state."""
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
        if not np.isfinite(times).all():
            raise ValueError("times must be finite")
        # The kernel does not bounds-check: a short array would be read past its end.
        for name, arr, shape in (("times", times, (rows,)), ("fresh", fresh, x.shape),
                                 ("good", good, x.shape)):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        flags = np.zeros((rows, self.n), dtype=np.int32)
        tag_scores = np.zeros((rows, self.n))
        out = np.zeros((rows, O_SIZE))
        kernels.run_batch(times, x, fresh, good, *self._args, flags, tag_scores, out)
        return BatchResult(score=out[:, O_SCORE], alarm=out[:, O_ALARM] != 0.0,
                           components=out[:, :C_SIZE], tag_flags=flags, tag_scores=tag_scores)

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
        from models.artifact import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path, expected_tags: list[str] | None = None) -> "StreamingDetector":
        from models.artifact import load_model

        return load_model(path, expected_tags)


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

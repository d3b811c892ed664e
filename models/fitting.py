"""Fitting a whole detector: each family on the first rows, calibration on the held-out tail.

Imported by `StreamingDetector.fit` only, so a running service that loads a
model never imports scipy or scikit-learn. The families: per-tag rules
(models.baseline), PCA T²/SPE (models.pca), IsolationForest (models.iforest),
fusion and calibration (models.calibration). The window is replayed through
the live kernel from a fresh state, so stateful detectors are warm when the
tail begins and the calibration sees exactly what `step` would.

>>> import numpy as np
>>> from models.spec import DetectorSpec
>>> x = np.random.default_rng(0).normal(size=(400, 2))
>>> fitted = fit_model(["a", "b"], DetectorSpec(iforest_trees=10), x, np.arange(400.0))
>>> sorted(fitted.arrays)[:3], 0.5 <= fitted.summary["threshold_on"] < 1.0
(['decision_params', 'f_leaf_depth', 'f_nodes'], True)
"""

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy import signal

from models import kernels as K
from models.baseline import TagRules, fit_tag_rules, monotone_times, robust_scale, shifted_tags
from models.calibration import calibrate_line, component_normalisation, decision_params
from models.errors import CalibrationWarning
from models.iforest import ForestArrays, fit_iforest, flatten_iforest
from models.pca import PCAModel, fit_pca
from models.runner import model_arrays, new_state, replay
from models.spec import DetectorSpec


@dataclass(frozen=True)
class FittedModel:
    arrays: dict[str, np.ndarray]  # runner.MODEL_ARRAYS
    summary: dict  # JSON-ready: what was fitted on what, and the calibration report


@dataclass(frozen=True)
class _Families:
    rules: TagRules
    pca: PCAModel | None
    forest: ForestArrays | None

    training_rows: int  # rows of the whole fit window: the adaptive baselines' default half-life

    def arrays(self, spec: DetectorSpec, norm, threshold: float) -> dict[str, np.ndarray]:
        arrays = model_arrays(self.rules.params, self.pca, self.forest)
        shape = (self.forest.denominator, self.forest.max_depth) if self.forest else (0.0, 0)
        arrays["decision_params"] = decision_params(spec, norm, threshold, shape, self.training_rows)
        return arrays


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    """Causal EWMA down the rows, started at the first row: what the kernel's input smoothing does."""
    if alpha >= 1.0:
        return x
    zi = (1.0 - alpha) * x[:1]
    return signal.lfilter([alpha], [1.0, alpha - 1.0], x, axis=0, zi=zi)[0]


def fit_model(tags: list[str], spec: DetectorSpec, x: np.ndarray, times: np.ndarray) -> FittedModel:
    """Fit every family on normal rows x (checked, finite) at `times`, calibrate, and describe the fit."""
    times, duplicates, backward, _ = monotone_times(times)
    if times[-1] <= times[0]:
        raise ValueError("times never advance: give one increasing time stamp per training row")
    rows = x.shape[0]
    n_fit = rows - int(rows * spec.holdout_fraction)
    if spec.holdout_fraction == 0 or n_fit == rows:
        final, folds, first = _fit_families(tags, spec, x, times), [], 0  # calibrated in-sample
    elif spec.refit:
        final, first = _fit_families(tags, spec, x, times), 0
        folds = _cross_fit(tags, spec, x, times, final.rules)
    else:  # the models fitted on the first rows run as they are, calibrated on the tail
        final, first = _fit_families(tags, spec, x[:n_fit], times[:n_fit], training_rows=rows), n_fit
        folds = [(n_fit, rows, final)]
    folds = folds or [(0, rows, final)]

    identity = (np.zeros(K.C_SIZE), np.ones(K.C_SIZE))
    raw = _out_of_fold(spec, folds, times, x, identity, np.inf).components[first:]
    warm = warm_up_rows(spec)
    blocks = [slice(max(start, warm) - first, end - first) for start, end, _ in folds]
    norm = component_normalisation(raw, spec, final.pca, final.forest, blocks)
    holdout = _rows_from(_out_of_fold(spec, folds, times, x, norm, np.inf), first)
    threshold, report = calibrate_line(spec, holdout, tags, first, blocks)
    report["folds"] = len(folds) if folds[0][2] is not final else 0
    for line in report["warnings"]:
        warnings.warn(line, CalibrationWarning, stacklevel=3)
    families = final
    arrays = families.arrays(spec, norm, threshold)
    summary = {
        "rows": int(rows),
        "fit_rows": int(n_fit if first else rows),
        "calibration_rows": int(rows - first),
        "time_start": float(times[0]),
        "time_end": float(times[-1]),
        "time_duplicates": duplicates,
        "time_backward": backward,
        "constant_tags": [t for t, c in zip(tags, np.ptp(x, axis=0) == 0, strict=True) if c],
        "shifted_tags": shifted_tags(x, tags),
        "threshold_on": float(threshold),
        "threshold_off": float(threshold * spec.hysteresis),
        "component_thresholds": {K.COMPONENT_NAMES[c]: float(norm[1][c])
                                 for c in (K.C_T2, K.C_SPE, K.C_IFOREST)},
        "calibration_exceedance": float(np.mean(holdout.score > threshold)),
        "calibration": report,
        "tag_rules": families.rules.describe(tags),
    }
    if families.pca is not None:
        summary["pca"] = {
            "components": int(families.pca.components.shape[0]),
            "explained_variance": families.pca.explained_variance_ratio,
            "t2_limit_theoretical": families.pca.t2_limit,
            "spe_limit_theoretical": families.pca.spe_limit,
        }
    return FittedModel(arrays=arrays, summary=summary)


# The input smoothing has settled once its start value weighs less than this.
SETTLED_WEIGHT = 0.01


def warm_up_rows(spec: DetectorSpec) -> int:
    """Rows a fresh state needs before its scores are what `step` gives once running.

    The replay that scores the first cross-fitting block starts from a fresh state: the
    EWMA z waits `warmup` samples, and the input EWMA starts at the first row, so its
    output has the raw spread (not the smoothed one) until the start value's weight
    (1 - input_alpha)^n falls below SETTLED_WEIGHT. Those rows are left out of every
    threshold: they are the filters' start-up, not the process.

    >>> warm_up_rows(DetectorSpec()), warm_up_rows(DetectorSpec(input_alpha=0.1))
    (30, 44)
    """
    if spec.input_alpha >= 1.0:
        return spec.warmup
    return max(spec.warmup, math.ceil(math.log(SETTLED_WEIGHT) / math.log(1.0 - spec.input_alpha)))


def _rows_from(result, first: int):
    return type(result)(score=result.score[first:], alarm=result.alarm[first:],
                        components=result.components[first:], tag_flags=result.tag_flags[first:],
                        tag_scores=result.tag_scores[first:])


def _cross_fit(tags, spec: DetectorSpec, x: np.ndarray, times: np.ndarray, rules: TagRules) -> list:
    """Blocked cross-fitting: round(1 / holdout_fraction) consecutive blocks, each scored by the
    scaler, PCA and forest fitted on the other blocks, so every training row gets an
    out-of-sample score and the calibration sees the whole window, not just its tail.
    The per-tag rules are the final ones (learned on every row)."""
    rows = x.shape[0]
    k = max(2, round(1.0 / spec.holdout_fraction))
    edges = np.linspace(0, rows, k + 1).astype(int)
    folds = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        keep = np.r_[0:start, end:rows]
        folds.append((int(start), int(end), _fit_families(tags, spec, x[keep], times[keep], rules, rows)))
    return folds


def _out_of_fold(spec: DetectorSpec, folds: list, times, x, norm, threshold: float):
    """Replay the whole window through each fold's models; keep each fold's own rows."""
    pooled = None
    for start, end, families in folds:
        arrays = families.arrays(spec, norm, threshold)
        result = replay(arrays, new_state(arrays), times, x)
        if pooled is None:
            pooled = result
        else:
            for name in ("score", "alarm", "components", "tag_flags", "tag_scores"):
                getattr(pooled, name)[start:end] = getattr(result, name)[start:end]
    return pooled


def _fit_families(tags: list[str], spec: DetectorSpec, x: np.ndarray, times: np.ndarray,
                  rules: TagRules | None = None, training_rows: int | None = None) -> _Families:
    """Per-tag rules (learned here unless given), scaler, PCA and forest fitted on x."""
    training_rows = x.shape[0] if training_rows is None else training_rows
    if rules is None:
        rules = fit_tag_rules(x, times, spec, spec.limits, tags)
    else:
        rules = replace(rules, params=rules.params.copy())
    smoothed = ewma(x, spec.input_alpha)
    center, scale = robust_scale(smoothed, rules.resolution)
    z = (smoothed - center) / scale
    rules.params[:, K.TP_CENTER], rules.params[:, K.TP_INV_SCALE] = center, 1.0 / scale
    pca = forest = None
    if spec.pca and len(tags) >= 2:
        pca = fit_pca(z, spec.pca_variance, spec.pca_max_components)
        rules.params[:, K.TP_PCA_MEAN] = pca.mean
    # Like PCA, the forest is a multivariate model: on one tag it is only a density of that tag's
    # values, which the per-tag rules judge already, and which a drifting or seasonal tag leaves.
    if spec.iforest and len(tags) >= 2:
        forest = flatten_iforest(fit_iforest(z, spec.iforest_trees,
                                             min(spec.iforest_max_samples, x.shape[0]), spec.seed))
    return _Families(rules, pca, forest, training_rows)

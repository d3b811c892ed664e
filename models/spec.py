"""DetectorSpec: every knob of the streaming detector, with validation and defaults.

Plain dataclasses (not pydantic) keep models/ free of the controller's config
layer; the controller maps its validated TOML onto this.
"""

import math
from dataclasses import asdict, dataclass, field, fields

from models.names import CALIBRATION_METHODS, LINE_FLAG_NAMES


@dataclass(frozen=True)
class TagLimits:
    """Engineering hard limits of one tag (from the config, never fitted)."""

    lo: float = -math.inf
    hi: float = math.inf


@dataclass(frozen=True)
class DetectorSpec:
    # per-tag detectors
    ewma_alpha: float = 0.05
    z_max: float = 6.0  # EWMA |z| threshold; inf disables
    warmup: int = 30
    cusum_k: float = 0.5  # allowance, innovation sigmas
    cusum_h: float = 8.0  # minimum decision interval, innovation sigmas; inf disables
    cusum_margin: float = 1.5  # decision interval >= margin x largest CUSUM seen in training
    roc_factor: float = 3.0  # rate limit = factor x max |dx/dt| seen in training; inf disables
    flat_factor: float = 3.0  # stuck after factor x longest flat run in training; 0 disables
    flat_min_seconds: float = 10.0
    flat_eps: float = 0.0
    limits: dict[str, TagLimits] = field(default_factory=dict)
    # Per-tag detectors whose scores feed the line score (all of them always set their
    # flags). CUSUM is left out by default: it flags every change of operating point,
    # and the return to normal after a fault, which suits an advisory alarm better
    # than a line stop.
    line_flags: tuple[str, ...] = ("limit", "rate_of_change", "flatline", "ewma_z")
    # multivariate models
    pca: bool = True
    pca_variance: float = 0.9
    pca_max_components: int | None = None
    pca_limits: str = "empirical"  # or "theoretical" (F / Jackson-Mudholkar limits)
    iforest: bool = True
    iforest_trees: int = 100
    iforest_max_samples: int = 256
    input_alpha: float = 1.0  # EWMA on scaled inputs before PCA/IForest (1 = none)
    seed: int = 0
    # calibration
    component_far: float = 0.01  # each component's threshold (normalises it to 1.0)
    target_far: float = 0.001  # line threshold
    calibration: str = "pot"  # or "quantile"
    holdout_fraction: float = 0.25  # calibrate on the last part, fit models on the rest
    refit: bool = True  # after calibration, refit the models on all rows (thresholds kept)
    threshold_margin: float = 1.0  # line threshold = margin x calibrated fused-score quantile
    # decision
    smooth_alpha: float = 1.0  # EWMA on the fused score (1 = none)
    debounce_k: int = 1
    debounce_n: int = 1
    clear_n: int = 1
    hysteresis: float = 0.9  # off-threshold = hysteresis x on-threshold
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # tags, T², SPE, iforest
    # drift adaptation: half-life of the adaptive baselines in samples of each tag. None =
    # kernels.DRIFT_HALF_LIFE_WINDOWS x the training window's rows; 0 or inf = fixed baselines.
    drift_half_life: float | None = None

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, name: str, expect: str) -> None:
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r} ({expect})")

        # Types and sane upper bounds first: `debounce_n = inf` or `iforest_trees = 1e9` must be a
        # one-line error here, not an OverflowError or a 7 GiB allocation in fit.
        ints = {"warmup": 1_000_000, "iforest_trees": 10_000, "iforest_max_samples": 1_000_000,
                "seed": 2**32 - 1, "debounce_k": 10_000, "debounce_n": 10_000, "clear_n": 10_000,
                "pca_max_components": 100_000}
        floats = ("ewma_alpha", "z_max", "cusum_k", "cusum_h", "cusum_margin", "roc_factor", "flat_factor",
                  "flat_min_seconds", "flat_eps", "pca_variance", "input_alpha", "component_far",
                  "target_far", "holdout_fraction", "threshold_margin", "smooth_alpha", "hysteresis")
        may_be_inf = {"z_max", "cusum_h", "roc_factor"}  # inf disables these detectors
        for name, hi in ints.items():
            v = getattr(self, name)
            if v is None and name == "pca_max_components":
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                problems.append(f"{name}={v!r} (expected a whole number)")
            elif v > hi:
                problems.append(f"{name}={v!r} (expected at most {hi})")
        for name in floats:
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool):
                problems.append(f"{name}={v!r} (expected a number)")
            elif (math.isnan(v) or (math.isinf(v) and name not in may_be_inf)
                  or (math.isfinite(v) and abs(v) > 1e12)):
                problems.append(f"{name}={v!r} (expected a finite number"
                                + (" or inf to disable)" if name in may_be_inf else ")"))
        for name in ("pca", "iforest", "refit"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} (expected true or false)")
        if not all(isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
                   for w in self.weights):
            problems.append(f"weights={self.weights!r} (expected four finite numbers)")
        h = self.drift_half_life
        if h is not None and (not isinstance(h, int | float) or isinstance(h, bool) or math.isnan(h)
                              or not (h == 0 or math.isinf(h) and h > 0 or 1 <= h <= 1e12)):
            problems.append(f"drift_half_life={h!r} (expected None, 0, inf or 1 <= value <= 1e12)")
        if problems:
            raise ValueError("invalid detector spec: " + "; ".join(problems))

        need(0.0 < self.ewma_alpha <= 1.0, "ewma_alpha", "expected 0 < value <= 1")
        need(0.0 < self.input_alpha <= 1.0, "input_alpha", "expected 0 < value <= 1")
        need(0.0 < self.smooth_alpha <= 1.0, "smooth_alpha", "expected 0 < value <= 1")
        for name in ("z_max", "cusum_h", "roc_factor"):
            need(getattr(self, name) > 0, name, "expected > 0 (inf disables)")
        need(self.cusum_k >= 0, "cusum_k", "expected >= 0")
        need(self.cusum_margin >= 1, "cusum_margin", "expected >= 1")
        need(self.warmup >= 1, "warmup", "expected >= 1")
        need(self.flat_factor >= 0 and self.flat_min_seconds >= 0 and self.flat_eps >= 0,
             "flat_factor", "flat_factor, flat_min_seconds, flat_eps must be >= 0")
        need(0.0 < self.pca_variance <= 1.0, "pca_variance", "expected 0 < value <= 1")
        need(self.pca_limits in ("empirical", "theoretical"), "pca_limits",
             "expected 'empirical' or 'theoretical'")
        need(self.pca_max_components is None or self.pca_max_components >= 1,
             "pca_max_components", "expected None or >= 1")
        need(self.iforest_trees >= 1, "iforest_trees", "expected >= 1")
        need(self.iforest_max_samples >= 2, "iforest_max_samples", "expected >= 2")
        need(0.0 < self.component_far < 0.5, "component_far", "expected 0 < value < 0.5")
        need(0.0 < self.target_far < 0.5, "target_far", "expected 0 < value < 0.5")
        need(self.calibration in CALIBRATION_METHODS, "calibration", f"expected one of {CALIBRATION_METHODS}")
        need(self.threshold_margin > 0, "threshold_margin", "expected > 0")
        need(0.0 <= self.holdout_fraction < 0.9, "holdout_fraction", "expected 0 <= value < 0.9")
        need(self.debounce_n >= 1, "debounce_n", "expected >= 1")
        need(1 <= self.debounce_k <= self.debounce_n, "debounce_k", "need 1 <= debounce_k <= debounce_n")
        need(self.clear_n >= 1, "clear_n", "expected >= 1")
        need(0.0 < self.hysteresis <= 1.0, "hysteresis", "expected 0 < value <= 1")
        need(len(self.weights) == 4 and all(w >= 0 for w in self.weights), "weights",
             "expected four weights >= 0: tags, pca_t2, pca_spe, iforest")
        unknown_flags = set(self.line_flags) - set(LINE_FLAG_NAMES)
        if unknown_flags:
            problems.append(f"line_flags: unknown {sorted(unknown_flags)} (expected some of "
                            f"{list(LINE_FLAG_NAMES)})")
        for tag, lim in self.limits.items():
            if not lim.lo < lim.hi:
                problems.append(f"limits[{tag!r}]: lo={lim.lo} must be < hi={lim.hi}")
        if problems:
            raise ValueError("invalid detector spec: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["limits"] = {k: [v.lo, v.hi] for k, v in self.limits.items()}
        d["weights"] = list(self.weights)
        d["line_flags"] = list(self.line_flags)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown detector setting(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        d["limits"] = {k: TagLimits(*v) for k, v in d.get("limits", {}).items()}
        if "line_flags" in d:
            d["line_flags"] = tuple(d["line_flags"])
        if "weights" in d:
            d["weights"] = tuple(float(w) for w in d["weights"])
        return cls(**d)


def spec_differences(model_spec: DetectorSpec, config_spec: dict) -> list[str]:
    """The keys of a config's [detector.spec] that disagree with the spec a model was fitted with.

    Every spec key shapes the fitted arrays, so a disagreement is fixed only by refitting
    or by removing the key from the config. Hard limits are not compared: the config's
    apply over the model's (StreamingDetector.set_limits).
    """
    keys = [k for k in config_spec if k != "limits"]
    config = DetectorSpec.from_dict({k: config_spec[k] for k in keys})
    return [f"{k}: config {getattr(config, k)!r}, model {getattr(model_spec, k)!r}"
            for k in keys if getattr(config, k) != getattr(model_spec, k)]

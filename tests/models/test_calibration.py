"""Threshold calibration: empirical quantile and Peaks-Over-Threshold extrapolation."""

import math
import warnings

import numpy as np
import pytest

from models import DetectorSpec, StreamingDetector
from models.calibration import calibrate_threshold
from models.errors import CalibrationWarning


@pytest.mark.parametrize("target", [0.05, 0.01, 0.001])
def test_quantile_method_hits_the_target_rate(target):
    rng = np.random.default_rng(1)
    scores = rng.gamma(2.0, size=200_000)
    thr = calibrate_threshold(scores, target, "quantile")
    assert abs(np.mean(scores > thr) - target) <= 0.05 * target + 1e-5
    fresh = rng.gamma(2.0, size=200_000)  # and on new data from the same distribution
    assert abs(np.mean(fresh > thr) - target) < 4 * math.sqrt(target / 200_000) + 0.05 * target


TAILS = {
    # name: (sampler, survival function P(X > x))
    "exponential": (lambda rng, n: rng.exponential(size=n), lambda x: math.exp(-x)),
    "pareto3": (lambda rng, n: rng.pareto(3.0, size=n), lambda x: (1.0 + x) ** -3.0),
    "pareto5": (lambda rng, n: rng.pareto(5.0, size=n), lambda x: (1.0 + x) ** -5.0),
}


@pytest.mark.parametrize("tail", sorted(TAILS))
@pytest.mark.parametrize("target", [1e-4, 1e-5])
def test_pot_extrapolates_beyond_the_sample(tail, target):
    """20k samples see ~2 (1e-4) or ~0.2 (1e-5) exceedances of the wanted threshold; POT must
    still place it where the true exceedance probability is within a modest factor of target."""
    sample, survival = TAILS[tail]
    factor = 4.0 if target == 1e-4 else 8.0
    true_rates = []
    for seed in range(5):
        scores = sample(np.random.default_rng(seed), 20_000)
        thr = calibrate_threshold(scores, target, "pot")
        true_rates.append(survival(thr))
    assert all(target / factor < r < target * factor for r in true_rates), (target, true_rates)
    # Not just lucky on average: the geometric mean is close.
    assert target / 2 < math.exp(np.mean(np.log(true_rates))) < target * 2, true_rates


def test_pot_from_a_short_window_is_exceeded_at_the_target_rate_on_average():
    """125 scores (a cross-fitting block) hold ~6 excesses: the plug-in exponential threshold is
    exceeded at 2-3x the target on new data, averaged over windows; the predictive one at the target."""
    target, rates, plug_in = 1e-3, [], []
    for seed in range(4000):
        scores = np.random.default_rng(seed).exponential(size=125)
        rates.append(math.exp(-calibrate_threshold(scores, target, "pot")))
        u = np.quantile(scores, 0.95)
        excess = scores[scores > u] - u
        plug_in.append(math.exp(-(u - excess.mean() * math.log(target * 125 / excess.size))))
    assert 0.7 * target < np.mean(rates) < 1.4 * target, np.mean(rates)
    assert np.mean(plug_in) > 2 * target, np.mean(plug_in)  # what the rule corrects (fails if it is a no-op)


def test_pot_beats_the_empirical_quantile_far_out():
    rng = np.random.default_rng(7)
    scores = rng.exponential(size=20_000)
    pot = calibrate_threshold(scores, 1e-5, "pot")
    # The empirical quantile cannot go beyond the largest sample (true rate ~ 1/20k).
    assert pot > scores.max()
    assert 1e-5 / 8 < math.exp(-pot) < 8e-5


def test_pot_never_undercuts_the_empirical_quantile():
    rng = np.random.default_rng(3)
    for seed in range(5):
        scores = np.random.default_rng(seed).uniform(size=5000)  # bounded tail: negative shape
        for target in (0.02, 0.005, 0.001):
            assert calibrate_threshold(scores, target, "pot") >= np.quantile(scores, 1 - target)
    scores = rng.exponential(size=3000)
    assert calibrate_threshold(scores, 0.2, "pot") == pytest.approx(np.quantile(scores, 0.8))


def test_constant_scores_and_non_finite_values():
    assert calibrate_threshold(np.full(100, 0.3), 1e-4, "pot") == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1000)
    noisy = np.concatenate([scores, [np.nan, np.inf, -np.inf]])
    for method in ("pot", "quantile"):
        assert calibrate_threshold(noisy, 0.01, method) == calibrate_threshold(scores, 0.01, method)


@pytest.mark.parametrize("scores,target,method,match", [
    (np.arange(9.0), 0.01, "pot", "10"),
    (np.r_[np.arange(5.0), [np.nan] * 20], 0.01, "quantile", "finite"),
    (np.arange(100.0), 0.0, "pot", "target_far"),
    (np.arange(100.0), 1.0, "quantile", "target_far"),
    (np.arange(100.0), -0.1, "pot", "target_far"),
    (np.arange(100.0), math.nan, "pot", "target_far"),
    (np.arange(100.0), 0.01, "evt", "method"),
])
def test_bad_arguments_raise_value_error(scores, target, method, match):
    with pytest.raises(ValueError, match=match):
        calibrate_threshold(scores, target, method)


def test_thresholds_skip_the_filters_start_up():
    """Cross-fitting scores the first block from a fresh state: a smoothed input starts with the raw
    spread, which inflated T² there and so the threshold (half the fits then realised no alarm at a
    designed 1 %). Left out, the realised rate on new data of the same process is the designed one."""
    spec = DetectorSpec(input_alpha=0.1, pca_variance=1.0, iforest=False, calibration="quantile",
                        component_far=0.01, target_far=0.01, weights=(0.0, 1.0, 0.0, 0.0), drift_half_life=0)
    rates = []
    for seed in range(8):
        x = np.random.default_rng(seed).normal(size=(10_400, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)  # the report's warnings are not under test
            det = StreamingDetector(["a", "b", "c"], spec).fit(x[:400])
        rates.append(det.run_batch(x).alarm[400:].mean())
    assert 0.5 * spec.target_far <= float(np.median(rates)) <= 2.0 * spec.target_far, rates


def test_report_names_only_rows_the_threshold_was_taken_over():
    """The filters' start-up rows are left out of the thresholds (fitting.warm_up_rows), so the
    report must not name them as the rows that decided it (it used to: 'decided by pca_t2 alone,
    on training rows [2, 12, 17]' on SKAB, rows inside the 30-row start-up)."""
    from models.fitting import warm_up_rows

    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 3))
    x[2:6] += np.array([8.0, -8.0, 8.0])  # far off the other rows, inside the start-up
    spec = DetectorSpec(iforest=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        det = StreamingDetector(["a", "b", "c"], spec).fit(x, np.arange(400.0))
    rows = det.summary["calibration"]["decided_rows"]
    assert rows and min(rows) >= warm_up_rows(spec), rows

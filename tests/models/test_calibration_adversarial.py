"""Adversarial inputs for the POT line threshold of 9f1e90e (order-statistic u, runs declustering,
predictive exponential tail below MIN_EXCESSES_FOR_SHAPE clusters).

Plain tests are guards on behaviour that is right; strict xfails are defects, each reason says what
is wrong. Figures in the reasons are from seeded draws reproduced by the tests themselves.
"""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import DetectorSpec, StreamingDetector
from models.calibration import MIN_EXCESSES_FOR_SHAPE, calibrate_threshold
from models.synthetic import TAGS, generate

FARS = [1e-9, 1e-4, 1e-3, 0.01, 0.04]


def _thr(scores, far, tail_fraction=0.05):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return calibrate_threshold(np.asarray(scores, dtype=np.float64), far, "pot", tail_fraction)


def _empirical(scores, far):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - far))


# ------------------------------------------------------------------------------ guards that hold
@settings(max_examples=300, deadline=None, derandomize=True)
@given(hnp.arrays(np.float64, st.integers(10, 300),
                  elements=st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)),
       st.sampled_from(FARS))
def test_threshold_is_finite_and_never_below_the_empirical_quantile(scores, far):
    t = _thr(scores, far)
    assert np.isfinite(t)
    assert t >= _empirical(scores, far)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(hnp.arrays(np.float64, st.integers(10, 400), elements=st.integers(-3, 3).map(float)),
       st.sampled_from(FARS))
def test_integer_valued_scores_with_heavy_ties(scores, far):
    """Many scores equal to u: fewer than k excesses, p uses the excesses actually seen."""
    t = _thr(scores, far)
    assert np.isfinite(t) and t >= _empirical(scores, far)
    assert t <= scores.max() + 50 * max(np.ptp(scores), 1.0)


def test_quantised_ties_and_subnormals_and_equal_excesses():
    assert _thr(np.r_[np.zeros(990), np.arange(10.0)], 1e-3) >= _empirical(np.r_[np.zeros(990),
                                                                                 np.arange(10.0)], 1e-3)
    sub = np.random.default_rng(0).standard_normal(1000) * 5e-324
    assert np.isfinite(_thr(sub, 0.01)) and _thr(sub, 0.01) >= _empirical(sub, 0.01)
    # All excesses equal: ptp 0, empirical quantile.
    assert _thr(np.r_[np.zeros(950), np.ones(50)], 0.01) == 1.0


def test_exactly_five_excesses_and_n_just_above_ten():
    rng = np.random.default_rng(1)
    s = rng.standard_normal(100)  # k = ceil(0.05 * 100) = 5
    t = _thr(s, 1e-3)
    assert _empirical(s, 1e-3) <= t < 20.0
    for n in (10, 11, 12):
        s = rng.standard_normal(n)
        t = _thr(s, 0.01, 0.5)
        assert np.isfinite(t) and _empirical(s, 0.01) <= t < 20.0


def test_non_finite_scores_are_filtered_first():
    s = np.random.default_rng(2).standard_normal(500)
    dirty = np.r_[s, np.nan, np.inf, -np.inf, np.nan]
    assert _thr(dirty, 0.01) == _thr(s, 0.01)


def test_tail_fraction_edges_fall_back_to_the_quantile():
    s = np.random.default_rng(3).standard_normal(1000)
    q = _empirical(s, 0.01)
    for tf in (0.0, -0.1, 0.01, 1.0, 1.5):
        t = _thr(s, 0.01, tf)
        assert np.isfinite(t) and q <= t < 3.0


def test_independent_exceedances_of_a_normal_block_are_near_the_true_quantile():
    """The intended regime: 125-row block, scattered excesses, ~0.001 target."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal(125)
    assert 3.0 < _thr(s, 1e-3) < 6.0  # N(0, 1) has its 0.999 quantile at 3.09


def test_autocorrelated_scores_keep_the_rate_on_fresh_data():
    rng = np.random.default_rng(4)

    def ar1(n, phi=0.9):
        e, a = rng.standard_normal(n), np.zeros(n)
        for i in range(1, n):
            a[i] = phi * a[i - 1] + e[i]
        return a / np.sqrt(1.0 / (1.0 - phi**2))

    t = _thr(ar1(2000), 1e-3)
    assert np.mean(ar1(100_000) > t) < 3e-3


def test_large_gpd_branch_still_used_with_many_clusters():
    s = np.random.default_rng(5).standard_normal(5000)  # ~250 scattered excesses
    assert MIN_EXCESSES_FOR_SHAPE < 250
    assert 2.9 < _thr(s, 1e-3) < 3.6


# ------------------------------------------------------------------------------------- defects
@pytest.mark.xfail(strict=True, reason=(
    "runs declustering makes the threshold depend on the ORDER of the scores by 8x: the same 125 "
    "N(0,1) scores give 5.07 with the top 7 scattered and 40.4 with the top 7 adjacent (a drift or "
    "ramp inside a block; max score 3.32, true 0.999 quantile 3.09). One run -> clusters=1 -> "
    "predictive excess = mean*(1/p - 1), i.e. ~62x the mean excess at far=1e-3; the mean of 7 "
    "excesses is still used but credited with 1 degree of freedom"))
def test_adjacent_top_scores_do_not_blow_up_the_threshold():
    rng = np.random.default_rng(3)
    s = rng.standard_normal(125)
    top = np.argsort(s)[-7:]
    rest = np.delete(s, top)
    adjacent = np.r_[rest[:60], s[top], rest[60:]]
    assert _thr(adjacent, 1e-3) < 2.0 * _thr(s, 1e-3)


@pytest.mark.xfail(strict=True, reason=(
    "sorted (monotone ramp) scores -> all k=50 excesses in one run -> clusters=1: 1000 N(0,1) scores "
    "at far=1e-4 give a threshold of 226.9 (true quantile 3.72, max seen 3.07; pre-9f1e90e: 3.14); "
    "at far=1e-9 22.6 million. A training window with a slow drift gets a line that cannot fire"))
def test_one_giant_cluster_gives_a_usable_threshold():
    s = np.sort(np.random.default_rng(0).standard_normal(1000))
    assert _thr(s, 1e-4) < 10.0


@pytest.mark.xfail(strict=True, reason=(
    "one outlier among 1000 N(0,1) calibration scores sets the exponential mean excess: a 1e6 score "
    "gives threshold 3.3e4 and a 1e300 score 3.3e298 at far=0.01 (empirical 0.99 quantile 2.28; "
    "pre-9f1e90e GPD fit gave 1.1e10 for the 1e300 case, so not new but worse): the exponential "
    "tail has no robustness and the threshold is above every other score ever seen"))
def test_a_single_wild_score_does_not_blind_the_threshold():
    x = np.random.default_rng(0).standard_normal(1000)
    assert _thr(np.r_[x, 1e6], 0.01) < 10.0
    assert _thr(np.r_[x, 1e300], 0.01) < 10.0


@pytest.mark.xfail(strict=True, reason=(
    "finite scores [-1.7e308]*10 + [1.7e308] give a threshold of -inf (pot and quantile): k=1 excess "
    "is inf, < 5 excesses falls back to np.quantile, whose interpolation b - (b - a)*(1 - g) "
    "overflows; a -inf line threshold alarms on every frame. Pre-9f1e90e this raised ValueError"))
def test_quantile_interpolation_overflow_is_not_minus_inf():
    s = np.r_[np.full(10, -1.7e308), 1.7e308]
    assert np.isfinite(_thr(s, 0.04))


@pytest.mark.xfail(strict=True, reason=(
    "tail_fraction=NaN is not validated: math.ceil(nan) raises 'cannot convert float NaN to "
    "integer' from inside _pot_threshold instead of a message naming the parameter (and 1.5 is "
    "silently accepted); calibrate_threshold validates target_far but not tail_fraction"))
def test_nan_tail_fraction_is_rejected_by_name():
    s = np.random.default_rng(0).standard_normal(100)
    with pytest.raises(ValueError, match="tail_fraction"):
        _thr(s, 0.01, float("nan"))


@pytest.mark.xfail(strict=True, reason=(
    "tail_fraction=0.999 (a legal-looking fraction) puts u at the minimum: nearly every score "
    "exceeds, they form 1-2 runs, and 1000 N(0,1) scores at far=0.01 get threshold 65.5 "
    "(empirical 2.23, pre-9f1e90e 2.93). Not reachable from DetectorSpec (default 0.05)"))
def test_large_tail_fraction_is_not_22x_the_quantile():
    s = np.random.default_rng(0).standard_normal(1000)
    assert _thr(s, 0.01, 0.999) < 5.0


# --------------------------------------------------------------------------------- public path
@pytest.fixture(scope="module")
def fault_line():
    base = generate(1000, seed=1).values
    test = generate(600, seed=99).values.copy()
    test[300:, 0] += 20 * np.std(base[:, 0])  # a 20-sigma step on one tag
    return base, test


def _fit_and_alarm(x, test):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = StreamingDetector(TAGS, DetectorSpec(iforest_trees=20)).fit(x)
    score = np.asarray(det.run_batch(test).score)
    thr = det.threshold
    return thr, float(np.mean(score[:300] > thr)), float(np.mean(score[300:] > thr))


@pytest.mark.parametrize("case", ["normal", "step_in_middle", "quantised_tag"])
def test_public_fit_threshold_is_sane_and_a_blatant_step_alarms(fault_line, case):
    base, test = fault_line
    x = base.copy()
    if case == "step_in_middle":
        x[500:, 2] += 10 * base[:, 2].std()
    elif case == "quantised_tag":
        x[:, 5] = np.round(x[:, 5])
    thr, before, after = _fit_and_alarm(x, test)
    assert np.isfinite(thr) and 0.0 < thr <= 0.99
    assert before < 0.05 and after > 0.9


@pytest.mark.xfail(strict=True, reason=(
    "one training row with a 1e50 value on one tag (below the 1e100 refusal) leaves the line "
    "threshold at the 0.99 cap and a 20-sigma step on ANOTHER tag never alarms (0/300 rows, median "
    "score 0.22). Not the calibration's doing: the same with calibration='quantile' and with the "
    "pre-9f1e90e POT; the fitted models are contaminated by the outlier"))
def test_public_fit_with_a_huge_outlier_still_alarms(fault_line):
    base, test = fault_line
    x = base.copy()
    x[500, 3] = 1e50
    assert _fit_and_alarm(x, test)[2] > 0.9


@pytest.mark.xfail(strict=True, reason=(
    "a 20-row 30-sigma burst on tag 1 in training (an unlabelled fault) makes a later 20-sigma step "
    "on tag 0 alarm on 1 of 300 rows (threshold 0.90, median score 0.23). Same with "
    "calibration='quantile' and pre-9f1e90e POT, so a model-fit defect, not this commit's"))
def test_public_fit_with_a_training_burst_still_alarms(fault_line):
    base, test = fault_line
    x = base.copy()
    x[500:520, 1] += 30 * base[:, 1].std()
    assert _fit_and_alarm(x, test)[2] > 0.9

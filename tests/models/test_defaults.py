"""Defaults that adapt to the training data, and a calibration that tells the truth (issue 14).

One test per failure symptom the issue lists, on generated data.
"""

import warnings

import numpy as np
import pytest

from models import DetectorSpec, StreamingDetector
from models import kernels as K
from models.errors import CalibrationWarning


def ar_process(rows: int, tags: int, phi: float, seed: int) -> np.ndarray:
    """Stationary, autocorrelated, correlated normal data: AR(1) channels mixed by a fixed matrix."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(rows, tags))
    y = np.zeros((rows, tags))
    for i in range(1, rows):
        y[i] = phi * y[i - 1] + e[i]
    return y @ np.random.default_rng(99).normal(size=(tags, tags))


def fit_quietly(det, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return det.fit(*args)


def test_symptom_flat_stream_calibrates_the_floor_not_zero():
    """A flat stream's holdout scores are all 0: the line threshold is one component at its own
    threshold (fused 1.0, line 0.5), never 0.0 (which would alarm on any wiggle)."""
    det = fit_quietly(StreamingDetector(["a", "b"]), np.full((400, 2), 3.0))
    assert det.threshold == pytest.approx(0.5)
    assert det.summary["calibration"]["floored"] is True
    # Rounding noise far below the tags' precision floor (1e-6 x |value|) is no fault ...
    wiggle = np.full((200, 2), 3.0) + np.random.default_rng(0).normal(0.0, 1e-10, (200, 2))
    assert not det.run_batch(wiggle).alarm.any()
    # ... a tag that never moved in training moving is one.
    moved = np.full((100, 2), 3.0)
    moved[50:, 0] = 3.01
    det.reset()
    assert det.run_batch(moved).alarm[50:].all()


@pytest.fixture(scope="module")
def quantised_process():
    """A slow process (one sample every 3 min) whose values are stored in steps of 0.5."""
    x = np.round(ar_process(4000, 5, 0.98, 3) * 2.0) / 2.0
    return x, np.arange(4000) * 180.0


def test_symptom_repeats_of_a_quantised_value_are_not_a_flatline(quantised_process):
    """Before: a fixed 10 s flatline limit fired on single repeats 3 minutes apart and pinned the
    threshold at the cap. Now the flatline time covers the repeats chance explains."""
    x, t = quantised_process
    det = fit_quietly(StreamingDetector(list("abcde")), x[:2000], t[:2000])
    rules = det.summary["tag_rules"]
    assert rules["interval_s"] == 180.0
    for tag, r in rules["tags"].items():
        assert r["resolution"] == 0.5, tag
        assert r["flatline_s"] >= 3 * 180.0 and r["flatline_s"] >= 3 * r["longest_flat_s"], tag
    assert not det.summary["calibration"]["pinned_at_cap"]
    new = det.run_batch(x[2000:], t[2000:])
    assert not ((new.tag_flags & K.FLAG_FLAT) != 0).any()
    assert new.alarm.mean() <= 0.01
    stuck = x[2000:3000].copy()
    stuck[300:, 1] = stuck[300, 1]  # a real stuck sensor: 700 samples (35 h) at one value
    det.reset()
    flagged = (det.run_batch(stuck, t[2000:3000]).tag_flags[:, 1] & K.FLAG_FLAT) != 0
    assert flagged[-100:].all() and not flagged[:300].any()


def test_symptom_limit_hits_in_the_holdout_do_not_pin_the_threshold_and_are_reported():
    """Config limits that the training window breaches: those rows alarm on their own; they are left
    out of the line threshold, named (tag, rows) in the report, and said in a warning."""
    x = ar_process(800, 3, 0.5, 1)
    hi = float(np.quantile(x[:, 0], 0.995))
    spec = DetectorSpec(limits={"a": _limits(-1e9, hi)})
    with pytest.warns(CalibrationWarning, match=r"limit/flatline hits .*\(tags a\)"):
        det = StreamingDetector(["a", "b", "c"], spec).fit(x)
    report = det.summary["calibration"]
    assert report["left_out"]["tags"]["a"] and not report["pinned_at_cap"]
    assert set(report["left_out"]["tags"]["a"]) <= set(np.flatnonzero(x[:, 0] > hi).tolist())
    assert det.threshold < K.MAX_LINE_THRESHOLD


def test_symptom_a_saturated_component_pinning_the_cap_is_said_with_component_and_rows():
    x = np.random.default_rng(0).normal(size=(800, 3))
    x[600:, 2] += 1e5  # the last block sits where the rest of the window never was
    with pytest.warns(CalibrationWarning, match="pinned at the cap") as caught:
        det = StreamingDetector(list("abc")).fit(x)
    report = det.summary["calibration"]
    assert report["pinned_at_cap"] and report["saturated"]
    assert all(row >= 600 for rows in report["saturated"].values() for row in rows)
    assert any("saturate" in str(w.message) for w in caught)


@pytest.mark.parametrize("phi", [0.0, 0.9])
def test_symptom_components_exceed_their_own_threshold_at_about_their_designed_rate(phi):
    """Before: the IsolationForest sat over its own threshold on ~10 % of new normal rows. On new
    data from the same (autocorrelated) process each component now exceeds on about component_far,
    and the line alarms within a few times target_far, inside the reported bound's order."""
    y = ar_process(8000, 4, phi, 7)
    det = fit_quietly(StreamingDetector(list("abcd")), y[:2000])
    new = det.run_batch(y[2000:])
    over = (new.components[:, K.C_T2:] > 1.0).mean(axis=0)
    assert (over <= 3 * det.spec.component_far).all(), over
    assert new.alarm.mean() <= 5 * det.spec.target_far
    bound = det.summary["calibration"]["holdout_exceedance"]
    assert bound["rate"] <= bound["upper_95"] and bound["effective_rows"] <= bound["rows"]


def test_calibration_report_is_in_the_artifact(tmp_path):
    det = fit_quietly(StreamingDetector(list("abc")), ar_process(600, 3, 0.5, 2))
    det.save(tmp_path / "m.npz")
    loaded = StreamingDetector.load(tmp_path / "m.npz")
    assert loaded.metadata["summary"]["calibration"] == det.summary["calibration"]
    assert set(loaded.summary["calibration"]) >= {"decided_by", "decided_rows", "holdout_exceedance",
                                                  "pinned_at_cap", "designed_far", "folds"}


# ----------------------------------------------------------------- the time rule
def test_fit_accepts_duplicate_and_backward_times_and_counts_them():
    x = ar_process(400, 3, 0.5, 4)
    t = np.arange(400.0)
    t[100:111] = 99.0  # 11 duplicates
    t[200] = 150.0  # one step back
    det = fit_quietly(StreamingDetector(list("abc")), x, t)
    assert (det.summary["time_duplicates"], det.summary["time_backward"]) == (11, 1)
    assert np.isfinite(det.summary["tag_rules"]["tags"]["a"]["rate_limit"])


def test_step_and_run_batch_hold_duplicate_and_backward_times_the_same_way():
    x = ar_process(600, 3, 0.5, 5)
    det = fit_quietly(StreamingDetector(list("abc")), x[:400])
    t = np.arange(200.0)
    t[50:53] = 49.0
    t[120] = 10.0
    batch = det.run_batch(x[400:], t)
    counts = (det.time_duplicates, det.time_backward)
    det.reset()
    ones = np.ones(3, np.uint8)
    live = [det.step(t[r], np.ascontiguousarray(x[400 + r]), ones, ones) for r in range(200)]
    assert np.array_equal(np.array(live), batch.alarm)
    assert counts == (det.time_duplicates, det.time_backward) == (3, 1)


def test_no_rate_is_computed_on_a_duplicate_time():
    x = ar_process(400, 2, 0.5, 6)
    det = fit_quietly(StreamingDetector(["a", "b"]), x)
    frames = np.array([[0.0, 0.0], [0.0, 0.0], [1e3 * float(np.ptp(x[:, 0])), 0.0]])
    flags = det.run_batch(frames, np.array([0.0, 1.0, 1.0])).tag_flags  # the jump arrives at a held time
    assert not (flags[:, 0] & K.FLAG_ROC).any()
    assert det.time_duplicates == 1


def _limits(lo, hi):
    from models import TagLimits

    return TagLimits(lo, hi)


def test_symptom_no_isolation_forest_on_one_drifting_tag():
    """Before: on a univariate stream with drift and seasonality (fitted on its first 15 %) the
    IsolationForest sat over its own threshold on ~10 % of rows and raised nearly every false alarm.
    A one-tag forest is only a density of values the stream later leaves: like PCA, it needs two tags."""
    rng = np.random.default_rng(3)
    t = np.arange(4032) * 300.0  # two weeks, one sample every 5 min
    x = (np.sin(2 * np.pi * t / 86400.0) + t / t[-1] * 2.0 + rng.normal(0.0, 0.2, t.size))[:, None]
    fit = int(0.15 * t.size)
    det = fit_quietly(StreamingDetector(["level"]), x[:fit], t[:fit])
    assert det.model["f_roots"].size == 0 and det.model["pca_components"].size == 0
    assert det.run_batch(x[fit:], t[fit:]).alarm.mean() <= 0.01
    two = fit_quietly(StreamingDetector(["a", "b"]), np.hstack([x, x + rng.normal(0, 0.2, x.shape)])[:fit])
    assert two.model["f_roots"].size > 0


def test_symptom_limit_hits_rank_by_how_bad_they_are_instead_of_tying():
    """Before: every limit and flatline hit scored exactly 0.9999 and tied at the top of the ranking."""
    x = ar_process(600, 2, 0.5, 8)
    det = fit_quietly(StreamingDetector(["a", "b"], DetectorSpec(limits={"a": _limits(-50.0, 50.0)})), x)
    frames = np.array([[51.0, 0.0], [0.0, 0.0], [80.0, 0.0]])
    scores = det.run_batch(frames, np.array([0.0, 1.0, 2.0])).score
    assert scores[0] > det.threshold and scores[2] > scores[0]

"""StreamingDetector: live == batch, checkpoint/restore, input hygiene, fitting and detection."""

import copy
from dataclasses import replace

import numpy as np
import pytest

from models import DetectorSpec, NotFittedError, StreamingDetector
from models import kernels as K
from models.synthetic import FAULTS, TAGS, generate

DETECTORS = ["fitted", "fitted_stateful"]


def messy_inputs(line, seed, nan_rate=0.02, bad_rate=0.02, stale_rate=0.1):
    """Values/fresh/good of a synthetic line with random NaN, inf, bad quality and stale cells."""
    rng = np.random.default_rng(seed)
    x = line.values.copy()
    shape = x.shape
    x[rng.random(shape) < nan_rate] = np.nan
    x[rng.random(shape) < nan_rate / 4] = np.inf
    good = line.good.copy()
    good[rng.random(shape) < bad_rate] = 0
    fresh = (rng.random(shape) >= stale_rate).astype(np.uint8)
    # Non-fresh cells carry garbage: it must be ignored.
    x[(fresh == 0) & (rng.random(shape) < 0.5)] = 1e300
    return x, fresh, good


def batch_arrays(r):
    return {"score": r.score, "alarm": r.alarm, "components": r.components,
            "tag_flags": r.tag_flags, "tag_scores": r.tag_scores}


def assert_same_batch(a, b):
    for name, arr in batch_arrays(a).items():
        other = batch_arrays(b)[name]
        assert arr.dtype == other.dtype and np.array_equal(arr, other), name


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def live(det, x, times, fresh, good):
    """Step row by row, collecting the same outputs run_batch returns."""
    rows = x.shape[0]
    out = {"score": np.zeros(rows), "alarm": np.zeros(rows, dtype=bool),
           "components": np.zeros((rows, K.C_SIZE)),
           "tag_flags": np.zeros((rows, det.n), dtype=np.int32), "tag_scores": np.zeros((rows, det.n))}
    for r in range(rows):
        alarm = det.step(times[r], np.ascontiguousarray(x[r]), np.ascontiguousarray(fresh[r]),
                         np.ascontiguousarray(good[r]))
        out["alarm"][r] = alarm
        out["score"][r] = det.score
        out["components"][r] = det.components
        out["tag_flags"][r] = det.tag_flags
        out["tag_scores"][r] = det.tag_scores
    return out


@pytest.fixture(scope="module")
def messy():
    line = generate(1500, seed=21, faults=[("jam", 600, 700), ("sensor_spike", 1000, 1010),
                                           ("dropout", 1200, 1300)])
    x, fresh, good = messy_inputs(line, seed=5)
    return line.times, x, fresh, good


# ----------------------------------------------------------------- live vs batch
@pytest.mark.parametrize("which", DETECTORS)
def test_live_steps_equal_batch_replay_bit_for_bit(which, request, messy):
    det = request.getfixturevalue(which)
    times, x, fresh, good = messy
    det.reset()
    batch = det.run_batch(x, times, fresh, good)
    batch_state = det.checkpoint()
    det.reset()
    stepped = live(det, x, times, fresh, good)
    for name, arr in batch_arrays(batch).items():
        assert np.array_equal(stepped[name], arr), name
    assert_same_state(det.checkpoint(), batch_state)
    # The data really exercised the hard parts.
    flags = batch.tag_flags
    assert (flags & K.FLAG_INVALID).any() and batch.alarm.any() and not batch.alarm.all()


@pytest.mark.parametrize("which", DETECTORS)
def test_batch_in_chunks_equals_one_batch(which, request, messy):
    det = request.getfixturevalue(which)
    times, x, fresh, good = messy
    det.reset()
    whole = det.run_batch(x, times, fresh, good)
    det.reset()
    parts = [det.run_batch(x[a:b], times[a:b], fresh[a:b], good[a:b])
             for a, b in ((0, 1), (1, 700), (700, 701), (701, x.shape[0]))]
    for name, arr in batch_arrays(whole).items():
        assert np.array_equal(np.concatenate([batch_arrays(p)[name] for p in parts]), arr), name


# ----------------------------------------------------------------- checkpoint / restore
@pytest.mark.parametrize("which", DETECTORS)
def test_checkpoint_restore_continues_exactly(which, request, messy):
    det = request.getfixturevalue(which)
    times, x, fresh, good = messy
    half = x.shape[0] // 2
    det.reset()
    det.run_batch(x[:half], times[:half], fresh[:half], good[:half])
    cp = det.checkpoint()
    cp_copy = {k: v.copy() for k, v in cp.items()}
    first = det.run_batch(x[half:], times[half:], fresh[half:], good[half:])
    end_state = det.checkpoint()
    assert_same_state(cp, cp_copy)  # the checkpoint is a copy, not a view of live state

    det.reset()
    det.restore(cp)
    again = det.run_batch(x[half:], times[half:], fresh[half:], good[half:])
    assert_same_batch(first, again)
    assert_same_state(det.checkpoint(), end_state)

    # Restoring into a *different* detector object with the same model continues the same way.
    twin = copy.deepcopy(det)
    twin.reset()
    twin.restore(cp)
    assert_same_batch(first, twin.run_batch(x[half:], times[half:], fresh[half:], good[half:]))


def test_restore_rejects_a_checkpoint_that_does_not_fit(fitted, fitted_stateful):
    fitted.reset()
    good_cp = fitted.checkpoint()
    # From a detector whose decision ring has another length (debounce_n differs).
    with pytest.raises(ValueError):
        fitted.restore(fitted_stateful.checkpoint())
    for name in good_cp:
        wrong = dict(good_cp)
        wrong[name] = np.zeros(good_cp[name].shape + (1,))
        with pytest.raises(ValueError, match=name):
            fitted.restore(wrong)
        missing = {k: v for k, v in good_cp.items() if k != name}
        with pytest.raises(ValueError, match=name):
            fitted.restore(missing)
    # A detector for fewer tags.
    small = StreamingDetector(TAGS[:3], DetectorSpec(iforest_trees=5)).fit(
        generate(300, seed=2).values[:, :3])
    with pytest.raises(ValueError):
        fitted.restore(small.checkpoint())
    # A failed restore leaves the running state untouched.
    assert_same_state(fitted.checkpoint(), good_cp)


# ----------------------------------------------------------------- bad inputs never reach models
@pytest.mark.parametrize("which", DETECTORS)
def test_invalid_samples_are_held_at_the_last_good_value(which, request, train_line):
    """With fixed baselines an invalid sample is exactly a stale one. (With adaptation on, an
    invalid sample also freezes the baselines' learning for that frame: tests/models/test_drift.py.)"""
    fixture = request.getfixturevalue(which)
    rows = fixture.summary["rows"]
    det = StreamingDetector(TAGS, replace(fixture.spec, drift_half_life=0)).fit(
        train_line.values[:rows], train_line.times[:rows])
    line = generate(900, seed=33)
    times, x = line.times, line.values.copy()
    fresh = np.ones_like(line.good)
    good = line.good.copy()
    rng = np.random.default_rng(8)
    cells = [(int(r), int(c)) for r, c in zip(rng.integers(50, 900, 80), rng.integers(0, 8, 80),
                                                strict=True)]
    bad_x, bad_good = x.copy(), good.copy()
    held_x, held_fresh = x.copy(), fresh.copy()
    for i, (r, c) in enumerate(cells):
        kind = i % 4
        if kind == 0:
            bad_x[r, c] = np.nan
        elif kind == 1:
            bad_x[r, c] = np.inf if i % 8 == 1 else -np.inf
        else:
            bad_good[r, c] = 0  # bad quality, value a wild but finite number
            bad_x[r, c] = 1e6 * (1 if kind == 2 else -1)
        held_fresh[r, c] = 0
        held_x[r, c] = -7.0  # ignored anyway: not fresh
    det.reset()
    a = det.run_batch(bad_x, times, fresh, bad_good)
    det.reset()
    b = det.run_batch(held_x, times, held_fresh, good)
    # The multivariate components (and everything else downstream) are identical ...
    assert np.array_equal(a.components[:, K.C_T2:], b.components[:, K.C_T2:])
    assert np.array_equal(a.components, b.components)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.alarm, b.alarm)
    assert np.array_equal(a.tag_scores, b.tag_scores)
    # ... and the only difference is the INVALID flag on exactly the bad cells.
    invalid = (a.tag_flags & K.FLAG_INVALID) != 0
    expect = np.zeros_like(invalid)
    for r, c in cells:
        expect[r, c] = True
    assert np.array_equal(invalid, expect)
    assert np.array_equal(a.tag_flags & ~K.FLAG_INVALID, b.tag_flags)
    assert not (b.tag_flags & K.FLAG_INVALID).any()


def test_multivariate_models_wait_until_every_tag_has_a_good_value(fitted):
    line = generate(20, seed=4)
    good = line.good.copy()
    good[:10, 3] = 0  # bearing_temp has no good sample for 10 rows
    fitted.reset()
    r = fitted.run_batch(line.values, line.times, None, good)
    assert np.all(r.components[:10, K.C_T2:] == 0.0)
    assert np.any(r.components[10:, K.C_T2:] > 0.0)


# ----------------------------------------------------------------- fitting and detection
@pytest.fixture(scope="module")
def normal_rate(fitted):
    rates = []
    for seed in (101, 102, 103):
        line = generate(3600, seed=seed)
        fitted.reset()
        rates.append(float(fitted.run_batch(line.values, line.times, None, line.good).alarm.mean()))
    return rates


def test_false_alarm_rate_on_fresh_normal_data_is_low(normal_rate, record_property, capsys):
    record_property("normal_alarm_rates", normal_rate)
    with capsys.disabled():
        print(f"\n[alarm rate on unseen normal data, 3 x 1 h: {normal_rate}]")
    assert max(normal_rate) < 0.02, normal_rate


@pytest.mark.parametrize("kind", FAULTS)
def test_each_fault_kind_is_detected_inside_its_window(kind, fitted, normal_rate):
    start, end = 1500, 1800
    line = generate(2400, seed=77, faults=[(kind, start, end)])
    fitted.reset()
    r = fitted.run_batch(line.values, line.times, None, line.good)
    window = slice(start, end)
    col = TAGS.index("pump_flow" if kind == "dropout" else "vibration_rms")
    relevant = {  # the per-tag evidence each fault must leave on its sensor
        "sensor_stuck": K.FLAG_FLAT,
        "sensor_spike": K.FLAG_ROC | K.FLAG_EWMA | K.FLAG_LIMIT,
        "dropout": K.FLAG_INVALID,
    }
    alarmed = r.alarm[window].any()
    flagged = bool((r.tag_flags[window, col] & relevant.get(kind, 0)).any())
    if kind in ("jam", "bearing_wear", "leak"):  # process faults: the line alarm must go off
        assert alarmed, kind
    else:
        assert alarmed or flagged, kind
    # The evidence is specific to the window: much rarer before the fault.
    assert r.alarm[:start].mean() < 0.02
    if kind in relevant:
        assert flagged
    assert not (r.tag_flags[:start] & K.FLAG_INVALID).any()


def test_a_stuck_sensor_or_a_hard_limit_breach_alone_raises_the_line_alarm(fitted):
    """Binary findings score BINARY_SCORE ("well above the 1.0 threshold") and feed the line by
    default (line_flags include limit and flatline): on their own they must alarm."""
    det = copy.deepcopy(fitted)
    det.reset()
    line = generate(1200, seed=55, faults=[("sensor_stuck", 600, 900)])
    r = det.run_batch(line.values, line.times, None, line.good)
    stuck = (r.tag_flags[:, TAGS.index("vibration_rms")] & K.FLAG_FLAT) != 0
    assert stuck.any()
    assert r.alarm[stuck].all(), (f"flatline flagged on {stuck.sum()} rows but the line alarmed on "
                                  f"{r.alarm[stuck].sum()} (threshold {det.threshold:.4f} vs binary "
                                  f"line score {K.BINARY_SCORE / (1 + K.BINARY_SCORE):.4f})")

    # Hard limit: put oil_temp's high limit below its whole normal range.
    det.model["tag_params"][TAGS.index("oil_temp"), K.TP_HI] = 0.0
    det.reset()
    line = generate(300, seed=56)
    r = det.run_batch(line.values, line.times, None, line.good)
    assert (r.tag_flags[:, TAGS.index("oil_temp")] & K.FLAG_LIMIT).all()
    assert r.alarm.all(), r.alarm.mean()


def test_fit_is_deterministic(train_line):
    a = StreamingDetector(TAGS, DetectorSpec(iforest_trees=20)).fit(train_line.values[:800])
    b = StreamingDetector(TAGS, DetectorSpec(iforest_trees=20)).fit(train_line.values[:800])
    line = generate(300, seed=9)
    assert_same_batch(a.run_batch(line.values), b.run_batch(line.values))
    assert 0.0 < a.threshold < 1.0


def test_fit_summary_describes_the_fit(fitted, train_line):
    s = fitted.summary
    assert s["rows"] == train_line.values.shape[0]
    # Blocked cross-fitting: every row is scored out of sample, the final models see every row.
    assert s["fit_rows"] == s["calibration_rows"] == s["rows"] and s["calibration"]["folds"] == 4
    assert s["time_duplicates"] == s["time_backward"] == 0
    assert s["threshold_off"] <= s["threshold_on"] == pytest.approx(fitted.threshold)


@pytest.mark.parametrize("x,match", [
    (np.zeros((49, 8)), "50"),
    (np.zeros(400), "shape"),
    (np.zeros((400, 7)), "shape"),
    (np.zeros((400, 8, 1)), "shape"),
])
def test_fit_rejects_bad_training_data(x, match):
    rng = np.random.default_rng(0)
    x = x + rng.normal(size=x.shape)
    with pytest.raises(ValueError, match=match):
        StreamingDetector(TAGS, DetectorSpec(iforest_trees=5)).fit(x)


def test_fit_rejects_non_finite_training_data_naming_the_tags():
    x = np.random.default_rng(0).normal(size=(200, 8))
    x[10, 2] = np.nan
    x[20, 5] = np.inf
    with pytest.raises(ValueError) as err:
        StreamingDetector(TAGS, DetectorSpec(iforest_trees=5)).fit(x)
    msg = str(err.value)
    assert TAGS[2] in msg and TAGS[5] in msg and TAGS[0] not in msg


@pytest.mark.parametrize("times", [
    np.arange(150.0),  # wrong length
    np.r_[np.arange(100.0), np.nan, np.arange(101.0, 200.0)],  # NaN
    np.zeros(200),  # never advances
])
def test_fit_rejects_bad_times(times):
    x = np.random.default_rng(0).normal(size=(200, 8))
    with pytest.raises(ValueError, match="times"):
        StreamingDetector(TAGS, DetectorSpec(iforest_trees=5)).fit(x, times)


def test_constructor_stores_and_fit_validates_and_unfitted_errors():
    """scikit-learn's rule: the constructor only stores its arguments; fit validates them."""
    x = np.random.default_rng(0).normal(size=(100, 1))
    with pytest.raises(ValueError):
        StreamingDetector([]).fit(x)
    with pytest.raises(ValueError):
        StreamingDetector(["a", "a"]).fit(x)
    from models import TagLimits
    with pytest.raises(ValueError, match="zz"):
        StreamingDetector(["a"], DetectorSpec(limits={"zz": TagLimits(0, 1)})).fit(x)
    spec = DetectorSpec()
    det = StreamingDetector(["a"], spec)
    assert vars(det) == {"tags": ["a"], "spec": spec, "units": None}
    det = StreamingDetector(["a", "b"])
    ones = np.ones(2, np.uint8)
    with pytest.raises(NotFittedError):
        det.run_batch(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        det.step(0.0, np.zeros(2), ones, ones)
    with pytest.raises(NotFittedError):
        det.checkpoint()


def test_run_batch_rejects_mismatched_input_shapes(fitted):
    """Shapes are not checked inside numba (no bounds checks): wrong ones must be refused up front."""
    x = generate(50, seed=3).values
    ones = np.ones((50, 8), np.uint8)
    bad = [
        dict(times=np.arange(49.0)),
        dict(fresh=np.ones((50, 7), np.uint8)),
        dict(good=np.ones((49, 8), np.uint8)),
    ]
    for kwargs in bad:
        fitted.reset()
        args = {"times": np.arange(50.0), "fresh": ones, "good": ones, **kwargs}
        with pytest.raises(ValueError):
            fitted.run_batch(x, **args)
    with pytest.raises(ValueError, match="shape"):
        fitted.run_batch(x[:, :7])


def test_warm_up_does_not_disturb_the_running_state(fitted, messy):
    times, x, fresh, good = messy
    fitted.reset()
    fitted.run_batch(x[:300], times[:300], fresh[:300], good[:300])
    before = fitted.checkpoint()
    fitted.warm_up()
    assert_same_state(fitted.checkpoint(), before)

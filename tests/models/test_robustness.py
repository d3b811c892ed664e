"""Hostile inputs: any finite value, persistent per-tag conditions, wrong frames, bad time stamps."""

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import StreamingDetector
from models import kernels as K
from models.synthetic import TAGS, generate

MAX = 1.7976931348623157e308
CURRENT = TAGS.index("motor_current")
RULES_LIMITS = {"motor_current": (5.0, 40.0), "oil_temp": (30.0, 80.0)}


@pytest.fixture(scope="module")
def detectors(fitted, fitted_stateful, train_line):
    """The session's detectors refitted with fixed baselines (drift_half_life=0): these tests compare
    unusable values with stale ones bit for bit, and an unusable value also (rightly) freezes the
    adaptive baselines' learning (tests/models/test_drift.py)."""
    rules = StreamingDetector.rules_only(TAGS, limits=RULES_LIMITS, flatline_s={"vibration_rms": 30.0})
    fixed = {}
    for name, det in (("fitted", fitted), ("fitted_stateful", fitted_stateful)):
        rows = det.summary["rows"]
        fixed[name] = StreamingDetector(TAGS, replace(det.spec, drift_half_life=0)).fit(
            train_line.values[:rows], train_line.times[:rows])
    return {**fixed, "rules_only": rules}


@pytest.fixture(scope="module")
def jam_line():
    """Normal until a jam (a level shift on current, speed, vibration, flow) at rows 600-700."""
    return generate(900, seed=41, faults=[("jam", 600, 700)])


def assert_finite_everywhere(det, r):
    for name, arr in (("score", r.score), ("components", r.components), ("tag_scores", r.tag_scores)):
        assert np.isfinite(arr).all(), name
    assert ((r.score >= 0.0) & (r.score <= 1.0)).all()
    for name, arr in det.checkpoint().items():
        assert np.isfinite(arr).all(), name


# ----------------------------------------------------------------- every finite input stays finite
any_finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # the whole range, subnormals included
    st.sampled_from([MAX, -MAX, 1e155, -1e155, 5e-324, -5e-324, 2.2250738585072014e-308]),
)


@st.composite
def poisoned_frames(draw, rows=120):
    line = generate(rows, seed=draw(st.integers(0, 3)))
    x = line.values.copy()
    fresh = np.ones_like(line.good)
    for _ in range(draw(st.integers(1, 40))):
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, len(TAGS) - 1))
        x[r, c] = draw(any_finite)
        fresh[r, c] = draw(st.sampled_from([1, 1, 1, 0]))
    if draw(st.booleans()):  # one tag alternating between the two ends of the range
        c = draw(st.integers(0, len(TAGS) - 1))
        x[::2, c], x[1::2, c] = MAX, -MAX
    # Duplicate, backward and tiny time steps (near 0 a subnormal step makes any rate overflow).
    dts = draw(st.lists(st.sampled_from([1.0, 1.0, 1.0, 0.0, -2.0, 1e-12, 1e-300, 5e-324]),
                        min_size=rows, max_size=rows))
    times = draw(st.sampled_from([0.0, 1e6])) + np.cumsum(dts)
    return times, x, fresh, line.good


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=poisoned_frames(), which=st.sampled_from(["fitted", "fitted_stateful", "rules_only"]))
def test_outputs_and_state_stay_finite_for_every_finite_input(detectors, frames, which):
    det = detectors[which]
    det.reset()
    times, x, fresh, good = frames
    r = det.run_batch(x, times, fresh, good)
    assert_finite_everywhere(det, r)
    # A value beyond +-VALUE_ABS_MAX is always outside the usable range: flagged LIMIT, alarmed.
    huge = (fresh == 1) & (good == 1) & (np.abs(x) > K.VALUE_ABS_MAX)
    assert ((r.tag_flags[huge] & K.FLAG_LIMIT) != 0).all()
    rows_with_huge = huge.any(axis=1)
    if which != "fitted_stateful":  # no debounce: the alarm is on at that very frame
        assert r.alarm[rows_with_huge].all()


def test_a_subnormal_time_step_gives_a_capped_rate_not_an_infinite_one(fitted):
    x = generate(2, seed=3).values
    fitted.reset()
    r = fitted.run_batch(x, np.array([0.0, 5e-324]))
    assert_finite_everywhere(fitted, r)
    assert r.tag_scores[1].max() == K.SCORE_CAP and r.alarm[1]


# ----------------------------------------------------------------- poison, then a real fault
def outside_range(det, draw):
    """A finite value the detector cannot use for one of its tags."""
    tp = det.model["tag_params"]
    c = draw(st.integers(0, len(TAGS) - 1))
    v = draw(st.one_of(
        st.floats(min_value=1.0000001 * K.VALUE_ABS_MAX, allow_infinity=False),
        st.floats(max_value=-1.0000001 * K.VALUE_ABS_MAX, allow_infinity=False),
        st.sampled_from([MAX, -MAX, 1e155, -1e155,
                         float(np.nextafter(tp[c, K.TP_RANGE_HI], math.inf)),
                         float(np.nextafter(tp[c, K.TP_RANGE_LO], -math.inf))]),
    ))
    return c, v


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(["fitted", "fitted_stateful", "rules_only"]))
def test_after_unusable_values_a_fault_is_detected_exactly_as_without_them(detectors, jam_line,
                                                                           data, which):
    """A sees unusable values on rows 100-400; B saw those cells as not fresh (never saw them).
    Once every tag has had a good value again the per-tag state is bit-identical, and so is
    everything downstream (with a memoryless decision), including the jam's detection."""
    det = detectors[which]
    x_a, x_b = jam_line.values.copy(), jam_line.values.copy()
    fresh_a, fresh_b = np.ones_like(jam_line.good), np.ones_like(jam_line.good)
    alternate = data.draw(st.booleans())
    for k in range(data.draw(st.integers(1, 30))):
        r = data.draw(st.integers(100, 399))
        c, v = outside_range(det, data.draw)
        x_a[r, c] = -v if alternate and k % 2 and abs(v) > K.VALUE_ABS_MAX else v
        fresh_b[r, c] = 0
    x_b[fresh_b == 0] = 0.0  # whatever: not fresh
    times, good = jam_line.times, jam_line.good
    runs = []
    for x, fresh in ((x_a, fresh_a), (x_b, fresh_b)):
        det.reset()
        head = det.run_batch(x[:450], times[:450], fresh[:450], good[:450])
        state = det.checkpoint()["tag_state"]
        tail = det.run_batch(x[450:], times[450:], fresh[450:], good[450:])
        runs.append((head, state, tail))
    (head_a, state_a, tail_a), (_, state_b, tail_b) = runs
    poisoned = (fresh_b[:450] == 0)
    assert ((head_a.tag_flags[poisoned] & K.FLAG_LIMIT) != 0).all()
    assert head_a.alarm[poisoned.any(axis=1)].all() or which == "fitted_stateful"
    assert np.array_equal(state_a, state_b)
    assert tail_a.alarm[600 - 450:700 - 450].any()  # the jam still stops the line
    if which != "fitted_stateful":  # its score smoothing remembers the poison a while
        for name in ("score", "alarm", "components", "tag_flags", "tag_scores"):
            assert np.array_equal(getattr(tail_a, name), getattr(tail_b, name)), name


def test_one_huge_value_no_longer_blinds_the_detector(fitted, jam_line):
    """The reported failure: one GOOD 1e155 made the score NaN for ever and a jam went unseen."""
    x = jam_line.values.copy()
    x[300, TAGS.index("discharge_pressure")] = 1e155
    fitted.reset()
    r = fitted.run_batch(x, jam_line.times, None, jam_line.good)
    assert np.isfinite(r.score).all()
    assert r.alarm[300] and (r.tag_flags[300, TAGS.index("discharge_pressure")] & K.FLAG_LIMIT)
    assert r.alarm[600:700].mean() > 0.5
    assert r.alarm[320:600].mean() < 0.02


# ----------------------------------------------------------------- conditions persist between batches
def frames_where_only_others_are_fresh(det, tag, value, good_q, rows):
    """Row 0: every tag fresh (tag gets value/good_q); then `rows` frames where only the other tags are."""
    i = det.tags.index(tag)
    base = generate(rows + 1, seed=9).values
    base[0, i] = value
    fresh = np.ones((rows + 1, det.n), np.uint8)
    fresh[1:, i] = 0
    good = np.ones_like(fresh)
    good[0, i] = good_q
    return base, np.arange(rows + 1) * 0.1, fresh, good


@pytest.mark.parametrize("which", ["fitted", "rules_only"])
@pytest.mark.parametrize("case", ["bad_quality", "nan", "over_limit", "outside_usable_range"])
def test_a_tag_condition_persists_while_only_other_tags_are_fresh(detectors, which, case):
    det = detectors[which]
    det.set_limits({"oil_temp": (30.0, 80.0)})
    value, good_q, flag = {"bad_quality": (50.0, 0, K.FLAG_INVALID),
                           "nan": (math.nan, 1, K.FLAG_INVALID),
                           "over_limit": (95.0, 1, K.FLAG_LIMIT),
                           "outside_usable_range": (1e200, 1, K.FLAG_LIMIT)}[case]
    x, times, fresh, good = frames_where_only_others_are_fresh(det, "oil_temp", value, good_q, 100)
    i = det.tags.index("oil_temp")
    det.reset()
    for r in range(x.shape[0]):  # live, frame by frame, as another PLC's batches arrive
        det.step(times[r], x[r], fresh[r], good[r])
        assert det.tag_flags[i] & flag, r
        if flag == K.FLAG_LIMIT:
            assert det.tag_scores[i] >= K.BINARY_SCORE and det.out[K.O_ALARM] == 1.0
    # Cleared by the next good, in-range value of that tag.
    ones = np.ones(det.n, np.uint8)
    det.step(times[-1] + 0.1, np.ascontiguousarray(x[-1]), ones, ones)
    assert not det.tag_flags[i] & (K.FLAG_INVALID | K.FLAG_LIMIT)
    # Replay gives the same, row for row.
    det.reset()
    r = det.run_batch(x, times, fresh, good)
    assert ((r.tag_flags[:, i] & flag) != 0).all()


# ----------------------------------------------------------------- rules-only detector
def test_rules_only_runs_validity_limits_and_flatline_without_training_data():
    tags = ["motor_current", "vibration_rms", "oil_temp"]
    det = StreamingDetector.rules_only(tags, limits={"motor_current": (0.0, 30.0)},
                                       flatline_s={"vibration_rms": 5.0}, units={"motor_current": "A"})
    assert not det.fitted and det.units == {"motor_current": "A"}
    assert det.threshold == pytest.approx(0.5)
    ones = np.ones(3, np.uint8)

    def step(t, values, fresh=ones, good=ones):
        alarm = det.step(t, np.array(values, dtype=np.float64), np.asarray(fresh, np.uint8),
                         np.asarray(good, np.uint8))
        return alarm, det.tag_flags.tolist()

    assert step(0.0, [20.0, 1.0, 50.0]) == (False, [0, 0, 0])
    # Statistics are off: a 1000-fold jump within the limits is no finding.
    assert step(1.0, [20.0, 1.1, 50000.0]) == (False, [0, 0, 0])
    assert step(2.0, [81.0, 1.2, 50.0]) == (True, [K.FLAG_LIMIT, 0, 0])  # the reported 81 A vs 30 A
    assert det.tag_scores[0] >= K.BINARY_SCORE and det.out[K.O_SCORE] > det.threshold
    assert step(3.0, [20.0, 1.2, math.nan]) == (False, [0, 0, K.FLAG_INVALID])
    assert step(4.0, [20.0, 1.2, 50.0], good=[1, 1, 0]) == (False, [0, 0, K.FLAG_INVALID])
    # vibration_rms unchanged since t=2 (not fresh from t=5 on): flat after 5 s, line alarm.
    assert step(6.9, [20.0, 0.0, 50.0], fresh=[1, 0, 1]) == (False, [0, 0, 0])
    assert step(7.0, [20.0, 0.0, 50.0], fresh=[1, 0, 1]) == (True, [0, K.FLAG_FLAT, 0])
    assert step(8.0, [20.0, 1.3, 50.0]) == (False, [0, 0, 0])
    # oil_temp has no flatline configured: constant for ever is fine.
    for t in range(9, 40):
        assert step(float(t), [20.0 + t % 2, 1.3 + t % 2, 50.0])[0] is False
    # Replay through the same kernel.
    det.reset()
    r = det.run_batch(np.array([[20.0, 1.0, 50.0], [81.0, 1.0, 50.0]]))
    assert r.alarm.tolist() == [False, True]


def test_rules_only_refuses_unknown_tags_and_bad_settings():
    with pytest.raises(ValueError, match="zz"):
        StreamingDetector.rules_only(["a"], limits={"zz": (0, 1)})
    with pytest.raises(ValueError, match="zz"):
        StreamingDetector.rules_only(["a"], flatline_s={"zz": 3.0})
    with pytest.raises(ValueError, match="lo=2 must be < hi=1"):
        StreamingDetector.rules_only(["a"], limits={"a": (2.0, 1.0)})
    for seconds in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="flatline_s"):
            StreamingDetector.rules_only(["a"], flatline_s={"a": seconds})
    with pytest.raises(ValueError, match="rules-only"):
        StreamingDetector.rules_only(["a"]).save("/nonexistent/never-written.npz")


# ----------------------------------------------------------------- limits from the config
def test_set_limits_overrides_the_model_and_says_what_changed(fitted):
    det = StreamingDetector.rules_only(TAGS, limits={"motor_current": (0.0, 30.0)})
    assert det.set_limits({"motor_current": (0.0, 15.0), "oil_temp": (-10, 90)}) == [
        "motor_current: hi 30 -> 15 (config)", "oil_temp: lo -inf -> -10, hi inf -> 90 (config)"]
    assert det.set_limits({"motor_current": (0.0, 15.0)}) == []  # nothing changed, oil_temp kept
    assert det.spec.limits["oil_temp"].hi == 90.0
    # The held value is judged against the new limits at once: the reported 18.8 A vs 15 A.
    ones = np.ones(det.n, np.uint8)
    x = generate(1, seed=2).values[0].copy()
    x[CURRENT] = 18.8
    assert det.step(0.0, x, ones, ones)
    assert det.set_limits({"motor_current": (-math.inf, math.inf)}) == [
        "motor_current: lo 0 -> -inf, hi 15 -> inf (config)"]
    assert "motor_current" not in det.spec.limits
    assert not det.step(1.0, x, np.zeros(det.n, np.uint8), ones)
    for bad, match in (({"nope": (0, 1)}, "nope"), ({"oil_temp": (5, 5)}, "oil_temp"),
                       ({"oil_temp": (math.nan, 5)}, "oil_temp")):
        with pytest.raises(ValueError, match=match):
            det.set_limits(bad)
    assert det.spec.limits["oil_temp"].hi == 90.0  # a refused call changes nothing


def test_set_limits_on_a_fitted_detector_survives_save_and_load(fitted, tmp_path):
    from models import load_model

    det = load_model(_save(fitted, tmp_path))
    assert det.set_limits({"oil_temp": (40.0, 58.0)}) == ["oil_temp: lo -inf -> 40, hi inf -> 58 (config)"]
    det.save(tmp_path / "b.npz")
    again = load_model(tmp_path / "b.npz")
    i = TAGS.index("oil_temp")
    assert again.model["tag_params"][i, K.TP_HI] == 58.0 and again.spec.limits == det.spec.limits


def _save(det, tmp_path):
    path = tmp_path / "a.npz"
    det.save(path)
    return path


def test_spec_differences_lists_the_keys_a_config_disagrees_on(fitted):
    from models import spec_differences

    assert spec_differences(fitted.spec, {}) == []
    assert spec_differences(fitted.spec, {"ewma_alpha": 0.05, "weights": [1, 1, 1, 1]}) == []
    assert spec_differences(fitted.spec, {"ewma_alpha": 0.1, "z_max": 6, "debounce_n": 3}) == [
        "ewma_alpha: config 0.1, model 0.05", "debounce_n: config 3, model 1"]


# ----------------------------------------------------------------- wrong frames and times
def test_step_refuses_a_wrong_frame_clearly_and_changes_nothing(fitted):
    n = fitted.n
    ok_x, ok_u8 = np.zeros(n), np.ones(n, np.uint8)
    ro = np.zeros(n)
    ro.flags.writeable = False
    bad = {
        "short x": ((np.zeros(n - 1), ok_u8, ok_u8), "x", f"shape ({n - 1},)"),
        "long x": ((np.zeros(n + 5), ok_u8, ok_u8), "x", f"shape ({n + 5},)"),
        "float32 x": ((np.zeros(n, np.float32), ok_u8, ok_u8), "x", "float32"),
        "int x": ((np.zeros(n, np.int64), ok_u8, ok_u8), "x", "int64"),
        "2-D x": ((np.zeros((1, n)), ok_u8, ok_u8), "x", f"shape (1, {n})"),
        "strided x": ((np.zeros(2 * n)[::2], ok_u8, ok_u8), "x", "not C-contiguous"),
        "read-only x": ((ro, ok_u8, ok_u8), "x", "read-only"),
        "list x": (([0.0] * n, ok_u8, ok_u8), "x", "list"),
        "bool fresh": ((ok_x, np.ones(n, bool), ok_u8), "fresh", "bool"),
        "short good": ((ok_x, ok_u8, np.ones(n - 1, np.uint8)), "good", f"shape ({n - 1},)"),
    }
    fitted.reset()
    fitted.step(0.0, generate(1, seed=1).values[0], ok_u8, ok_u8)
    before = fitted.checkpoint(), fitted.tag_flags.copy(), fitted.out.copy()
    for label, (args, name, got) in bad.items():
        with pytest.raises(ValueError) as err:
            fitted.step(1.0, *args)
        msg = str(err.value)
        assert f"step: {name} must be" in msg and f"({n},)" in msg and got in msg, (label, msg)
    for t in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="t must be finite"):
            fitted.step(t, ok_x, ok_u8, ok_u8)
    state, flags, out = before
    for k, v in fitted.checkpoint().items():
        assert np.array_equal(v, state[k]), k
    assert np.array_equal(fitted.tag_flags, flags) and np.array_equal(fitted.out, out)
    # Refused by dispatch: no new specialisation was compiled for any of those types.
    assert len(K.step.signatures) == 1


def test_run_batch_refuses_non_finite_times(fitted):
    x = generate(3, seed=1).values
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            fitted.run_batch(x, np.array([0.0, bad, 2.0]))


def test_replay_with_duplicate_and_backward_stamps_equals_live(fitted, jam_line):
    times = jam_line.times.copy()
    times[200:210] = times[200]  # duplicates
    times[400:] -= 50.0  # a step back
    fitted.reset()
    batch = fitted.run_batch(jam_line.values, times, None, jam_line.good)
    fitted.reset()
    ones = np.ones(fitted.n, np.uint8)
    for r in range(jam_line.values.shape[0]):
        fitted.step(times[r], jam_line.values[r], ones, jam_line.good[r])
        assert fitted.tag_flags.tolist() == batch.tag_flags[r].tolist()
    flags = batch.tag_flags
    assert not (flags[201:210] & K.FLAG_ROC).any()  # no rate across a duplicate stamp
    assert not (flags[400] & K.FLAG_ROC).any()  # nor across a backward one
    assert not (flags & K.FLAG_FLAT).any()  # nothing is stuck, whatever the clock did
    assert batch.alarm[:600].mean() < 0.02 and batch.alarm[600:700].any()


def test_fit_refuses_values_beyond_the_absolute_bound(train_line):
    x = train_line.values[:200].copy()
    x[10, 2] = 1e101
    with pytest.raises(ValueError, match="vibration_rms"):
        StreamingDetector(TAGS).fit(x)

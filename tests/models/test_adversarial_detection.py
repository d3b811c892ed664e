"""The detector under attack: poisoned values, adaptation as an attack surface, hostile time, hostile
training data, damaged artifacts, explain() on odd states. Each test names what it breaks."""

import json
import math
import warnings

import numpy as np
import pytest

from models import DetectorSpec, ModelError, StreamingDetector
from models import kernels as K

TAGS = ["a", "b", "c"]
MIX = np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.5], [0.0, 0.0, 0.7]])
ONES = np.ones(3, dtype=np.uint8)


def normal(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 3)) @ MIX + 10.0


@pytest.fixture(scope="module")
def det():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StreamingDetector(TAGS, DetectorSpec(iforest_trees=20, drift_half_life=200)).fit(
            normal(400, 0))


def finite_state(d: StreamingDetector) -> bool:
    return all(np.isfinite(v).all() for v in d.state.values())


# ------------------------------------------------------------------ poison
@pytest.mark.parametrize("poison", [1e300, -1e300, math.nan, math.inf, -math.inf, 1e100, -1e100])
def test_a_poisoned_sample_is_not_learnt_and_poison_then_fault_still_alarms(det, poison):
    rows = normal(300, 1)
    det.reset()
    det.run_batch(rows[:100])
    frame = rows[100].copy()
    frame[0] = poison
    det.step(100.0, frame, ONES, ONES)
    assert det.tag_flags[0] & (K.FLAG_INVALID | K.FLAG_LIMIT)
    assert finite_state(det)
    assert abs(det.adaptation["level_shift"]["a"]) < 1.0  # the poison never reached the baseline
    fault = rows[101:].copy()
    fault[:, 0] += 8.0  # breaks a's correlation with b
    result = det.run_batch(fault, np.arange(101.0, 300.0))
    assert result.alarm[-100:].all()
    assert finite_state(det)
    assert json.dumps(det.explain().to_dict(), allow_nan=False)


def test_alternating_huge_and_subnormal_values_leave_a_finite_state(det):
    x = normal(200, 2)
    x[::2, 1] = 9e99
    x[1::2, 1] = 5e-324
    det.reset()
    result = det.run_batch(x)
    assert finite_state(det) and np.isfinite(result.score).all()
    assert json.dumps(det.explain().to_dict(), allow_nan=False)


# -------------------------------------------------------------- adaptation
def test_a_boiling_frog_ramp_slower_than_the_half_life_is_not_learnt_forever(det):
    """A ramp on one tag of 0.1 sigma per half-life: each step far below any threshold, so the baseline
    followed it without bound (30 sigma of a tag correlated with another, learnt as normal). The level
    may now drift at most kernels.ADAPT_SHIFT_MAX robust scales; beyond that the fault alarms."""
    rows = 60_000
    x = normal(rows, 3)
    x[:, 0] += 0.1 * np.arange(rows) / 200.0  # 30 sigma at the end
    det.reset()
    result = det.run_batch(x)
    assert result.alarm[-rows // 10:].mean() > 0.9
    shift = det.adaptation["level_shift"]["a"]
    assert shift <= K.ADAPT_SHIFT_MAX / det.model["tag_params"][0, K.TP_INV_SCALE] + 1e-9


def test_normal_drift_within_the_bound_is_still_followed(det):
    rows = 20_000
    x = normal(rows, 4)
    x += 2.0 * np.arange(rows)[:, None] / rows  # every tag together: 2 sigma over 100 half-lives
    det.reset()
    result = det.run_batch(x)
    assert result.alarm.mean() < 0.01


def test_the_freeze_after_an_alarm_ends_and_learning_resumes(det):
    x = normal(3000, 5)
    x[500:520, 0] += 10.0
    det.reset()
    result = det.run_batch(x[:2000])
    assert result.alarm[500:520].any()
    before = det.adaptation["learnt_frames"]
    det.run_batch(x[2000:], np.arange(2000.0, 3000.0))
    assert det.adaptation["learnt_frames"] - before > 900  # normal data learns again (~90 % or more)


# ------------------------------------------------------------------- time
def test_live_equals_replay_bit_for_bit_with_duplicate_backward_and_jumping_times(det):
    x = normal(400, 7)
    times = np.arange(400.0)
    times[50:60] = 49.0
    times[100:110] = 20.0 - 86400.0
    times[200:] += 3.15e7  # a wall-clock step of a year
    det.reset()
    live = []
    for t, row in zip(times, x, strict=True):
        det.step(t, row.copy(), ONES, ONES)
        live.append(det.score)
    state, counts = det.checkpoint(), (det.time_duplicates, det.time_backward)
    det.reset()
    result = det.run_batch(x, times)
    # 50-59 repeat frame 49's time; 100 steps back a day and 101-109 repeat it: one step back
    assert (det.time_duplicates, det.time_backward) == counts == (19, 1)
    assert np.array_equal(result.score, np.array(live))
    assert all(np.array_equal(state[k], det.checkpoint()[k]) for k in state)


def test_a_million_duplicate_times_give_no_rate_no_flatline_and_exact_counts(det):
    det.reset()
    rows = 1_000_000
    x = np.repeat(normal(1, 8), rows, axis=0)
    result = det.run_batch(x, np.full(rows, 5.0))
    assert det.time_duplicates == rows - 1 and det.time_backward == 0
    assert not (result.tag_flags & (K.FLAG_ROC | K.FLAG_FLAT)).any()
    assert finite_state(det)


def test_a_stuck_tag_after_the_clock_steps_back_a_day_still_flatlines(det):
    """A step back re-bases the clock (was a strict xfail: every frame after it was held at the
    latest time, so flatline and rate were blind until the clock caught up, a day here)."""
    x = normal(400, 15)
    x[100:, 0] = x[99, 0]  # a sticks just as the clock is corrected back by a day
    times = np.arange(400.0)
    times[:100] += 86400.0
    det.reset()
    result = det.run_batch(x, times)
    assert (result.tag_flags[-100:, 0] & K.FLAG_FLAT).any()


# -------------------------------------------------------------------- fit
@pytest.mark.parametrize("case", ["constant", "one_tag", "identical", "quantised_huge", "duplicate_times"])
def test_hostile_training_data_fits_with_a_finite_report_and_threshold(case):
    x = normal(400, 9)
    tags, times = TAGS, None
    if case == "constant":
        x[:] = 5.0
    elif case == "one_tag":
        tags, x = ["a"], x[:, :1]
    elif case == "identical":
        tags, x = ["a", "b"], np.c_[x[:, 0], x[:, 0]]
    elif case == "quantised_huge":
        x = np.round(x * 0.3) * 1e6
    else:
        times = np.repeat(np.arange(100.0), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = StreamingDetector(tags, DetectorSpec(iforest_trees=20)).fit(x, times)
    assert 0.0 < d.threshold < 1.0
    assert json.dumps(d.summary["calibration"], allow_nan=False)
    assert math.isfinite(d.summary["calibration"]["holdout_exceedance"]["upper_95"])


@pytest.mark.parametrize("case", ["few_rows", "all_nan", "beyond_range", "times_never_advance"])
def test_unusable_training_data_is_one_model_error_line(case):
    x = normal(400, 10)
    times = None
    if case == "few_rows":
        x = x[:3]
    elif case == "all_nan":
        x[:, 1] = np.nan
    elif case == "beyond_range":
        x[:, 2] *= 1e99
    else:
        times = np.zeros(400)
    with pytest.raises(ModelError) as info:
        StreamingDetector(TAGS, DetectorSpec(iforest_trees=20)).fit(x, times)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------- artifacts
def test_save_load_replays_bit_identically_from_a_reset_adaptation_state(det, tmp_path):
    path = tmp_path / "m.npz"
    det.save(path)
    x = normal(500, 11)
    x[300:, 0] += 0.01 * np.arange(200)
    det.reset()
    det.run_batch(normal(300, 12))  # adaptation state moved; a loaded model starts fresh
    det.reset()
    want = det.run_batch(x)
    loaded = StreamingDetector.load(path, TAGS)
    assert loaded.adaptation["learnt_frames"] == 0
    got = loaded.run_batch(x)
    assert np.array_equal(got.score, want.score) and np.array_equal(got.tag_flags, want.tag_flags)


@pytest.mark.parametrize("damage", ["truncated", "checksum", "old_format", "other_tags"])
def test_a_damaged_or_foreign_artifact_is_one_model_error_line(det, tmp_path, damage):
    path = tmp_path / "m.npz"
    det.save(path)
    expected = TAGS
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage in ("checksum", "old_format"):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays["__meta__"].tobytes())
        if damage == "checksum":
            meta["checksum"] = "0" * 64
        else:
            meta["format_version"] = 4
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:
        expected = ["a", "b", "d"]
    with pytest.raises(ModelError) as info:
        StreamingDetector.load(path, expected)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------- explain
def explained(d: StreamingDetector) -> dict:
    out = d.explain().to_dict()
    json.dumps(out, allow_nan=False)
    return out


def test_explain_before_any_step_rules_only_all_invalid_and_nan_state(det):
    det.step(0.0, np.array([30.0, 10.0, 10.0]), ONES, ONES)
    det.reset()  # reset used to keep the latest outputs: explain() described a frame from before it
    assert det.score == 0.0 and not det.tag_flags.any()
    assert explained(det)["component"] is None
    rules = StreamingDetector.rules_only(TAGS, limits={"a": (0.0, 1.0)})
    assert explained(rules)["component"] is None
    rules.step(0.0, np.array([5.0, 0.5, 0.5]), ONES, ONES)
    assert explained(rules)["top"][0]["tag"] == "a"
    det.step(0.0, np.full(3, np.nan), ONES, ONES)
    assert set(explained(det)["flagged"]) == set(TAGS)
    det.state["tag_state"][:, K.TS_U] = np.nan  # a state nobody should have: explain still answers
    det.out[:] = np.nan
    for component in (None, *K.COMPONENT_NAMES):
        json.dumps(det.explain(component=component).to_dict(), allow_nan=False)
    det.reset()


def test_explain_names_a_tag_that_never_arrived_and_keeps_the_models_off(det):
    """A tag that never sends a value keeps PCA and the forest off for the whole line, with no flag:
    explain() now says which tags the line is waiting for."""
    det.reset()
    fresh = ONES.copy()
    fresh[2] = 0
    for i, row in enumerate(normal(50, 13)):
        det.step(float(i), row, fresh, ONES)
    assert det.explain().waiting == ("c",)
    assert explained(det)["waiting"] == ["c"]
    det.step(50.0, normal(1, 14)[0], ONES, ONES)
    assert det.explain().waiting == ()

"""Per-tag kernel `kernels.tag_step` against a plain-Python reference of the documented semantics."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import kernels as K

INF = math.inf


class RefTag:
    """One tag's detectors, written from the documented semantics with plain floats."""

    def __init__(self, lo, hi, roc_max, flat_s, flat_eps, alpha, z_max, std0, k, h, warmup, mask,
                 range_lo=-K.VALUE_ABS_MAX, range_hi=K.VALUE_ABS_MAX, gain=1.0, inv_scale=1.0):
        self.p = dict(lo=lo, hi=hi, roc_max=roc_max, flat_s=flat_s, flat_eps=flat_eps, alpha=alpha,
                      z_max=z_max, std0=std0, k=k, h=h, warmup=warmup, mask=mask,
                      range_lo=range_lo, range_hi=range_hi, gain=gain, inv_scale=inv_scale)
        self.innov = 0.0  # the latest EWMA innovation
        self.unusable = 0  # INVALID / LIMIT while the latest fresh sample was unusable (stale, not flat)
        self.last_good = None  # (value, time) of the last good sample
        self.anchor = None  # (value, time) where the current flat run started
        self.mean = self.var = None
        self.n = 0
        self.pos = self.neg = 0.0

    def update(self, t, v, fresh, good):
        """Returns (flags, the tag's max score, the max over the detectors in its line mask)."""
        p = self.p
        found = {}  # flag bit -> normalised score of that detector (when it was evaluated)
        flags = 0
        cap = K.SCORE_CAP
        if fresh:
            if not good or math.isnan(v) or math.isinf(v):
                self.unusable = K.FLAG_INVALID
            elif not p["range_lo"] <= v <= p["range_hi"]:
                self.unusable = K.FLAG_LIMIT
            else:
                self.unusable = 0
                if self.last_good is not None:
                    prev, prev_t = self.last_good
                    dt = t - prev_t
                    if dt > 0 and p["roc_max"] < INF:
                        # The adaptive baseline's gain (1 / today's spread ratio) scales the rate.
                        rate = min(abs(v - prev) / dt / p["roc_max"] * p["gain"], cap)
                        if rate > 1.0:
                            flags |= K.FLAG_ROC
                        found[K.FLAG_ROC] = rate
                if self.anchor is None or abs(v - self.anchor[0]) > p["flat_eps"]:
                    self.anchor = (v, t)
                if self.n == 0:
                    self.mean, self.var = v, p["std0"] ** 2
                else:
                    innov = v - self.mean  # against the EWMA *before* this sample
                    self.innov = innov
                    if self.n >= p["warmup"] and self.var > 0:
                        z = min(abs(innov) / math.sqrt(self.var) / p["z_max"], cap)
                        if z > 1.0:
                            flags |= K.FLAG_EWMA
                        found[K.FLAG_EWMA] = z
                    zb = innov / p["std0"] * p["gain"]  # CUSUM sigmas follow the adapted spread
                    cusum_cap = 2.0 * p["h"]
                    self.pos = min(cusum_cap, max(0.0, self.pos + zb - p["k"]))
                    self.neg = min(cusum_cap, max(0.0, self.neg - zb - p["k"]))
                    c = max(self.pos, self.neg) / p["h"]
                    if c > 1.0:
                        flags |= K.FLAG_CUSUM
                    found[K.FLAG_CUSUM] = c
                    a = p["alpha"]
                    self.mean += a * innov
                    self.var = (1.0 - a) * (self.var + a * innov * innov)
                self.n += 1
                self.last_good = (v, t)
        # Conditions persist until the next fresh sample; the hard limits judge the held value.
        cond = self.unusable
        if self.last_good is not None:
            held = self.last_good[0]
            if not cond and not p["lo"] <= held <= p["hi"]:
                cond = K.FLAG_LIMIT
            if t < self.anchor[1]:  # time went backwards: the flat run restarts now
                self.anchor = (self.anchor[0], t)
        flags |= cond
        # Binary findings are graded: a hard-limit breach by 1 + its excess in robust scales, an
        # unusable value at the top grade, a flatline by its length in flatline limits.
        if cond & K.FLAG_LIMIT:
            grade = K.BINARY_GRADES
            if not self.unusable:
                held = self.last_good[0]
                excess = max(held - p["hi"], p["lo"] - held) * p["inv_scale"]
                grade = 1.0 + min(excess, K.BINARY_GRADES - 1.0)
            found[K.FLAG_LIMIT] = K.BINARY_SCORE * grade
        if (p["flat_s"] > 0 and self.last_good is not None and not self.unusable
                and t - self.anchor[1] >= p["flat_s"]):
            flags |= K.FLAG_FLAT
            found[K.FLAG_FLAT] = K.BINARY_SCORE * min((t - self.anchor[1]) / p["flat_s"], K.BINARY_GRADES)
        score = max(found.values(), default=0.0)
        line = max((s for bit, s in found.items() if bit & int(p["mask"])), default=0.0)
        return flags, score, line

    def state_row(self):
        row = np.zeros(K.TS_SIZE)
        if self.last_good is not None:
            row[K.TS_HELD], row[K.TS_LAST_T] = self.last_good
            row[K.TS_HAVE] = 1.0
            row[K.TS_ANCHOR_X], row[K.TS_ANCHOR_T] = self.anchor
        if self.n:
            row[K.TS_EW_MEAN], row[K.TS_EW_VAR] = self.mean, self.var
        row[K.TS_EW_N] = self.n
        row[K.TS_CUSUM_POS], row[K.TS_CUSUM_NEG] = self.pos, self.neg
        row[K.TS_COND] = float(self.unusable)
        row[K.TS_BASE_GAIN] = self.p["gain"]
        row[K.TS_INNOV] = self.innov
        return row


def tag_param_rows(refs):
    tp = np.zeros((len(refs), K.TP_SIZE))
    for i, r in enumerate(refs):
        p = r.p
        tp[i, K.TP_LO], tp[i, K.TP_HI] = p["lo"], p["hi"]
        tp[i, K.TP_ROC_MAX] = p["roc_max"]
        tp[i, K.TP_FLAT_SECONDS], tp[i, K.TP_FLAT_EPS] = p["flat_s"], p["flat_eps"]
        tp[i, K.TP_EWMA_ALPHA], tp[i, K.TP_Z_MAX] = p["alpha"], p["z_max"]
        tp[i, K.TP_STD0], tp[i, K.TP_CUSUM_K], tp[i, K.TP_CUSUM_H] = p["std0"], p["k"], p["h"]
        tp[i, K.TP_WARMUP] = p["warmup"]
        tp[i, K.TP_LINE_MASK] = p["mask"]
        tp[i, K.TP_RANGE_LO], tp[i, K.TP_RANGE_HI] = p["range_lo"], p["range_hi"]
        tp[i, K.TP_INV_SCALE] = p["inv_scale"]
    return tp


# A small value alphabet so flat runs, limit hits and exact repeats actually happen, plus
# values outside the usable range (some tags get a narrow one).
values = st.one_of(
    st.sampled_from([0.0, 1.0, 1.0, 1.5, -2.0, 10.0, 1e-9]),
    st.floats(-20, 20, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from([1e155, -1.7976931348623157e308, 30.0, 5e-324]),
)


@st.composite
def tag_params(draw):
    lo = draw(st.sampled_from([-INF, -5.0, -1.0]))
    hi = draw(st.sampled_from([INF, 5.0, 12.0]))
    return dict(
        lo=lo, hi=hi,
        roc_max=draw(st.sampled_from([INF, 0.5, 2.0, 10.0])),
        flat_s=draw(st.sampled_from([0.0, 1.0, 3.0, 7.5])),
        flat_eps=draw(st.sampled_from([0.0, 0.1, 1.0])),
        alpha=draw(st.sampled_from([1.0, 0.05, 0.3, 0.7])),
        z_max=draw(st.sampled_from([INF, 1.0, 3.0])),
        std0=draw(st.sampled_from([1e-9, 0.2, 1.0, 4.0])),
        k=draw(st.sampled_from([0.0, 0.5, 1.0])),
        h=draw(st.sampled_from([INF, 1.0, 4.0])),
        warmup=float(draw(st.integers(1, 5))),
        mask=float(draw(st.integers(0, 63))),
        range_lo=draw(st.sampled_from([-K.VALUE_ABS_MAX, -15.0])),
        range_hi=draw(st.sampled_from([K.VALUE_ABS_MAX, 15.0])),
        gain=draw(st.sampled_from([1.0, 1.0, 0.25, 3.0])),
        inv_scale=draw(st.sampled_from([1.0, 0.5, 40.0])),
    )


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 4))
    params = [draw(tag_params()) for _ in range(n)]
    rows = draw(st.integers(1, 40))
    # Duplicate (0), backward (-3) and tiny (1e-300: the rate must not overflow) time steps too.
    dts = draw(st.lists(st.sampled_from([1.0, 1.0, 0.5, 2.5, 0.0, -3.0, 1e-300]), min_size=rows,
                        max_size=rows))
    times = np.cumsum(dts) + draw(st.sampled_from([0.0, 1000.0]))
    frames = []
    for _ in range(rows):
        x = [draw(values) for _ in range(n)]
        fresh = [draw(st.sampled_from([1, 1, 1, 0])) for _ in range(n)]
        good = [draw(st.sampled_from([1, 1, 1, 1, 0])) for _ in range(n)]
        frames.append((x, fresh, good))
    return params, times, frames


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_tag_step_matches_reference(scenario):
    params, times, frames = scenario
    refs = [RefTag(**p) for p in params]
    n = len(refs)
    tp = tag_param_rows(refs)
    ts = np.zeros((n, K.TS_SIZE))
    ts[:, K.TS_BASE_GAIN] = [r.p["gain"] for r in refs]  # tag_step reads it, never writes it
    flags = np.zeros(n, dtype=np.int32)
    scores = np.zeros(n)
    for t, (x, fresh, good) in zip(times, frames, strict=True):
        best = K.tag_step(float(t), np.array(x, dtype=np.float64), np.array(fresh, dtype=np.uint8),
                          np.array(good, dtype=np.uint8), tp, ts, flags, scores)
        expect = [r.update(float(t), v, f, g) for r, v, f, g in zip(refs, x, fresh, good, strict=True)]
        assert flags.tolist() == [e[0] for e in expect]
        np.testing.assert_allclose(scores, [e[1] for e in expect], rtol=1e-12, atol=1e-300)
        assert math.isclose(best, max(e[2] for e in expect), rel_tol=1e-12, abs_tol=1e-300)
        np.testing.assert_allclose(ts, np.array([r.state_row() for r in refs]), rtol=1e-12,
                                   atol=1e-300)


def _one_tag(**overrides):
    p = dict(lo=-INF, hi=INF, roc_max=INF, flat_s=0.0, flat_eps=0.0, alpha=0.1, z_max=INF,
             std0=1.0, k=0.5, h=INF, warmup=1.0, mask=63.0, range_lo=-K.VALUE_ABS_MAX,
             range_hi=K.VALUE_ABS_MAX)
    p.update(overrides)
    ref = RefTag(**p)
    ts = np.zeros((1, K.TS_SIZE))
    ts[:, K.TS_BASE_GAIN] = 1.0  # the fitted spread (step starts every baseline there)
    return tag_param_rows([ref]), ts


def _feed(tp, ts, t, v, fresh=1, good=1):
    flags = np.zeros(1, dtype=np.int32)
    scores = np.zeros(1)
    K.tag_step(float(t), np.array([v], dtype=np.float64), np.array([fresh], np.uint8),
               np.array([good], np.uint8), tp, ts, flags, scores)
    return int(flags[0]), float(scores[0])


def test_unusable_samples_flag_and_never_touch_state():
    tp, ts = _one_tag(roc_max=1.0, z_max=3.0, h=4.0, flat_s=100.0, range_lo=-50.0, range_hi=50.0)
    for t, v in enumerate([1.0, 1.2, 0.9, 1.1]):
        _feed(tp, ts, t, v)
    stats = [c for c in range(K.TS_SIZE) if c != K.TS_COND]  # everything but the condition
    before = ts.copy()
    for t, (v, good, flag, score) in enumerate([
            (math.nan, 1, K.FLAG_INVALID, 0.0), (math.inf, 1, K.FLAG_INVALID, 0.0),
            (-math.inf, 1, K.FLAG_INVALID, 0.0), (1.0, 0, K.FLAG_INVALID, 0.0),
            (1e9, 0, K.FLAG_INVALID, 0.0), (50.5, 1, K.FLAG_LIMIT, K.BINARY_CAP),  # unusable: top grade
            (-1.7976931348623157e308, 1, K.FLAG_LIMIT, K.BINARY_CAP),
            (1e155, 1, K.FLAG_LIMIT, K.BINARY_CAP)], start=10):
        assert _feed(tp, ts, t, v, good=good) == (flag, score)
        np.testing.assert_array_equal(ts[:, stats], before[:, stats])
        # Not fresh: the condition persists, and nothing is used whatever the value.
        assert _feed(tp, ts, t + 0.5, 7.0, fresh=0, good=1) == (flag, score)
        np.testing.assert_array_equal(ts[:, stats], before[:, stats])
    assert _feed(tp, ts, 30, 1.0)[0] == 0  # the next good, in-range sample clears it


def test_a_held_value_beyond_the_hard_limits_stays_flagged_until_a_new_value():
    tp, ts = _one_tag(hi=90.0, mask=float(K.FLAG_LIMIT))
    _feed(tp, ts, 0.0, 80.0)
    # Graded by the excess: 5 robust scales (inv_scale 1) above the limit is grade 1 + 5.
    assert _feed(tp, ts, 1.0, 95.0) == (K.FLAG_LIMIT, 6 * K.BINARY_SCORE)
    for t in np.arange(1.5, 12.0, 0.5):  # only other tags' batches: this one is not fresh
        assert _feed(tp, ts, t, 0.0, fresh=0) == (K.FLAG_LIMIT, 6 * K.BINARY_SCORE)
    assert _feed(tp, ts, 12.0, 89.0) == (0, 0.0)
    # Limits are judged on the held value every step, so new limits apply without a new sample.
    tp[0, K.TP_HI] = 85.0
    assert _feed(tp, ts, 13.0, 0.0, fresh=0) == (K.FLAG_LIMIT, 5 * K.BINARY_SCORE)
    tp[0, K.TP_HI] = -1e9  # far beyond: the grade stops at the top
    assert _feed(tp, ts, 14.0, 0.0, fresh=0) == (K.FLAG_LIMIT, K.BINARY_CAP)


def test_backward_or_duplicate_time_never_gives_a_rate_and_never_fires_flatline_early():
    tp, ts = _one_tag(roc_max=1.0, flat_s=10.0)
    _feed(tp, ts, 100.0, 1.0)
    assert _feed(tp, ts, 100.0, 50.0)[0] == 0  # duplicate stamp: a jump in no time is not a rate
    assert _feed(tp, ts, 90.0, 70.0)[0] == 0  # backward stamp: no rate either
    assert ts[0, K.TS_LAST_T] == 90.0  # the time base follows the latest sample
    assert _feed(tp, ts, 91.0, 75.0) == (K.FLAG_ROC, 5.0)  # rates resume against it
    # A flat run that began at 91 when the clock steps back to 50: the run restarts at 50,
    # so it fires after flat_s on the new time base, neither at once nor 41 s late.
    assert _feed(tp, ts, 50.0, 0.0, fresh=0)[0] == 0
    assert ts[0, K.TS_ANCHOR_T] == 50.0
    assert _feed(tp, ts, 59.9, 0.0, fresh=0)[0] == 0
    assert _feed(tp, ts, 60.0, 0.0, fresh=0)[0] == K.FLAG_FLAT


def test_flatline_is_not_reported_while_the_tag_is_invalid():
    tp, ts = _one_tag(flat_s=5.0)
    _feed(tp, ts, 0.0, 1.0)
    assert _feed(tp, ts, 2.0, math.nan)[0] == K.FLAG_INVALID
    assert _feed(tp, ts, 30.0, 0.0, fresh=0)[0] == K.FLAG_INVALID  # still invalid: stale, not flat
    assert _feed(tp, ts, 31.0, 1.0)[0] & K.FLAG_FLAT  # good again, and unchanged for 31 s


def test_line_mask_selects_which_detectors_feed_the_returned_score():
    flags = np.zeros(2, dtype=np.int32)
    scores = np.zeros(2)
    ones = np.ones(2, np.uint8)
    results = {}
    for mask in (0, K.FLAG_LIMIT, K.FLAG_ROC, K.FLAG_LIMIT | K.FLAG_ROC):
        tp = np.vstack([_one_tag(hi=5.0, roc_max=1.0, mask=float(mask))[0]] * 2)
        ts = np.zeros((2, K.TS_SIZE))
        ts[:, K.TS_BASE_GAIN] = 1.0
        K.tag_step(0.0, np.array([0.0, 0.0]), ones, ones, tp, ts, flags, scores)
        best = K.tag_step(1.0, np.array([6.0, 3.0]), ones, ones, tp, ts, flags, scores)
        assert flags.tolist() == [K.FLAG_LIMIT | K.FLAG_ROC, K.FLAG_ROC]
        assert scores.tolist() == [2 * K.BINARY_SCORE, 3.0]  # per-tag scores ignore the mask
        results[mask] = best
    assert results == {0: 0.0, K.FLAG_LIMIT: 2 * K.BINARY_SCORE, K.FLAG_ROC: 6.0,
                       K.FLAG_LIMIT | K.FLAG_ROC: 2 * K.BINARY_SCORE}


def test_rate_of_change_uses_last_good_value_across_invalid_samples():
    tp, ts = _one_tag(roc_max=1.0)
    _feed(tp, ts, 0.0, 0.0)
    _feed(tp, ts, 1.0, math.nan)  # ignored
    flags, score = _feed(tp, ts, 4.0, 3.0)  # 3 units over 4 s since the last good sample
    assert not flags & K.FLAG_ROC
    assert math.isclose(score, 0.75)
    flags, score = _feed(tp, ts, 5.0, 5.0)
    assert flags & K.FLAG_ROC and math.isclose(score, 2.0)


def test_flatline_is_judged_on_time_even_without_fresh_samples():
    tp, ts = _one_tag(flat_s=5.0, flat_eps=0.1)
    _feed(tp, ts, 0.0, 1.0)
    assert _feed(tp, ts, 3.0, 1.05)[0] == 0  # moved less than eps: run continues
    assert _feed(tp, ts, 4.9, 0.0, fresh=0)[0] == 0
    flags, score = _feed(tp, ts, 5.0, 0.0, fresh=0)  # no sample at all, 5 s since the run began
    assert flags & K.FLAG_FLAT and score == K.BINARY_SCORE
    assert _feed(tp, ts, 12.5, 0.0, fresh=0)[1] == 2.5 * K.BINARY_SCORE  # graded by its length
    assert _feed(tp, ts, 6.0, 1.5)[0] == 0  # moved: a new run starts


def test_ewma_z_respects_warmup_and_uses_the_mean_before_the_sample():
    tp, ts = _one_tag(alpha=0.5, z_max=2.0, std0=1.0, warmup=3.0)
    _feed(tp, ts, 0, 0.0)
    _feed(tp, ts, 1, 0.0)
    # Two samples seen (< warmup 3): even a huge jump is not judged by the z-score.
    flags, _ = _feed(tp, ts, 2, 50.0)
    assert not flags & K.FLAG_EWMA
    mean, var = ts[0, K.TS_EW_MEAN], ts[0, K.TS_EW_VAR]
    flags, score = _feed(tp, ts, 3, mean + 1.5 * math.sqrt(var))
    assert not flags & K.FLAG_EWMA and math.isclose(score, 0.75, rel_tol=1e-12)


def test_cusum_accumulates_a_small_shift_and_is_capped_at_2h():
    tp, ts = _one_tag(alpha=1e-6, std0=1.0, k=0.5, h=4.0)
    _feed(tp, ts, 0, 0.0)
    flagged_at = None
    for t in range(1, 60):
        flags, _ = _feed(tp, ts, t, 1.0)  # +1 sigma shift, well below any single-sample test
        if flags & K.FLAG_CUSUM and flagged_at is None:
            flagged_at = t
        assert ts[0, K.TS_CUSUM_POS] <= 8.0
    # Each sample adds (1 - 0.5) = 0.5: 4.0 is passed on the 9th sample.
    assert flagged_at == 9
    assert ts[0, K.TS_CUSUM_POS] == 8.0
    # Once the shift ends the statistic decays at k per sample from the cap.
    for t in range(60, 80):
        _feed(tp, ts, t, ts[0, K.TS_EW_MEAN])
    assert ts[0, K.TS_CUSUM_POS] == 0.0

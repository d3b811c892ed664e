"""Fusion (`kernels.fuse`) and the alarm decision (`kernels.decide`) against Python references."""

from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models import kernels as K


def make_params(threshold_on, hysteresis, k, n, clear_n, alpha=1.0, weights=(1, 1, 1, 1)):
    dp = np.zeros(K.D_SIZE)
    dp[K.D_SMOOTH_ALPHA] = alpha
    dp[K.D_THRESHOLD_ON] = threshold_on
    dp[K.D_THRESHOLD_OFF] = threshold_on * hysteresis
    dp[K.D_K], dp[K.D_N], dp[K.D_CLEAR_N] = k, n, clear_n
    dp[K.D_W_TAGS:K.D_W_TAGS + K.C_SIZE] = weights
    return dp, np.zeros(K.DS_SIZE + n)


def run_decide(scores, dp, ds):
    return [K.decide(float(s), dp, ds) for s in scores]


class RefDecision:
    """k-of-n debounce to raise, `clear_n` consecutive steps below the off threshold to clear."""

    def __init__(self, on, off, k, n, clear_n):
        self.on, self.off, self.k, self.clear_n = on, off, k, clear_n
        self.window = deque(maxlen=n)
        self.quiet = 0
        self.alarm = 0

    def step(self, score):
        self.window.append(score > self.on)
        self.quiet = self.quiet + 1 if score < self.off else 0
        if not self.alarm and sum(self.window) >= self.k:
            self.alarm = 1
        elif self.alarm and self.quiet >= self.clear_n:
            self.alarm = 0
        return self.alarm


# Scores on a coarse grid so exact ties with the thresholds happen too.
score_seqs = st.lists(st.sampled_from([0.0, 0.2, 0.35, 0.4, 0.5, 0.6, 0.7, 0.9]), min_size=1,
                      max_size=60)


@st.composite
def decision_cases(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, n))
    clear_n = draw(st.integers(1, 5))
    on = draw(st.sampled_from([0.4, 0.5, 0.6]))
    hysteresis = draw(st.sampled_from([1.0, 0.7, 0.5]))
    return on, hysteresis, k, n, clear_n, draw(score_seqs)


@settings(max_examples=300, deadline=None)
@given(decision_cases())
def test_decide_matches_reference_up_to_the_first_clear(case):
    on, hysteresis, k, n, clear_n, scores = case
    dp, ds = make_params(on, hysteresis, k, n, clear_n)
    got = run_decide(scores, dp, ds)
    ref = RefDecision(on, on * hysteresis, k, n, clear_n)
    for i, s in enumerate(scores):
        want = ref.step(s)
        assert got[i] == want, (i, scores[: i + 1])
        if i and got[i - 1] == 1 and want == 0:
            break  # what follows a clear is checked by the invariants below


@settings(max_examples=300, deadline=None)
@given(decision_cases())
def test_decide_invariants_over_whole_sequences(case):
    """Whatever happens after a clear, each transition must be justified by its own rule."""
    on, hysteresis, k, n, clear_n, scores = case
    off = on * hysteresis
    dp, ds = make_params(on, hysteresis, k, n, clear_n)
    got = run_decide(scores, dp, ds)
    prev = 0
    for i, a in enumerate(got):
        window = scores[max(0, i - n + 1): i + 1]
        recent = scores[max(0, i - clear_n + 1): i + 1]
        quiet = len(recent) == clear_n and all(s < off for s in recent)
        if prev == 0 and a == 1:
            assert sum(s > on for s in window) >= k, (i, scores[: i + 1])
        if prev == 1:
            # Stays on unless clear_n consecutive steps were below the off threshold; then clears.
            assert a == (0 if quiet else 1), (i, scores[: i + 1])
        prev = a


@settings(max_examples=300, deadline=None)
@given(decision_cases())
def test_alarm_is_never_raised_on_a_step_below_the_on_threshold(case):
    """A rising edge needs an exceedance *now*: old exceedances left in the k-of-n window
    must not re-raise an alarm that has just been cleared while the score stays low."""
    on, hysteresis, k, n, clear_n, scores = case
    dp, ds = make_params(on, hysteresis, k, n, clear_n)
    got = run_decide(scores, dp, ds)
    for i in range(1, len(got)):
        if got[i - 1] == 0 and got[i] == 1:
            assert scores[i] > on, (i, scores[: i + 1], got[: i + 1])


def test_alarm_does_not_flap_after_clearing_with_k_of_n_debounce():
    # k=2 of n=5, clear after one quiet step: two exceedances raise, one quiet step clears.
    dp, ds = make_params(0.5, 0.9, k=2, n=5, clear_n=1)
    alarms = run_decide([0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0], dp, ds)
    assert alarms[:3] == [0, 1, 0]
    # The line is quiet from step 2 on, so the alarm must stay cleared.
    assert alarms[3:] == [0, 0, 0, 0], alarms


# ----------------------------------------------------------------- fusion
def ref_fuse(components, weights, alpha, prev_smoothed, first):
    fused = max(0.0, *(w * c for w, c in zip(weights, components, strict=True)))
    smoothed = fused if first else alpha * fused + (1.0 - alpha) * prev_smoothed
    return smoothed, smoothed / (1.0 + smoothed)


comp_rows = st.lists(st.tuples(*[st.floats(0, 50, allow_nan=False)] * 4), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(rows=comp_rows,
       weights=st.tuples(*[st.sampled_from([0.0, 0.5, 1.0, 2.0])] * 4),
       alpha=st.sampled_from([1.0, 0.5, 0.1]))
def test_fuse_matches_reference(rows, weights, alpha):
    dp, ds = make_params(0.5, 1.0, 1, 1, 1, alpha=alpha, weights=weights)
    smoothed = 0.0
    for i, row in enumerate(rows):
        got = K.fuse(np.array(row, dtype=np.float64), dp, ds)
        smoothed, want = ref_fuse(row, weights, alpha, smoothed, i == 0)
        assert abs(got - want) <= 1e-12
        assert 0.0 <= got < 1.0
    assert ds[K.DS_STEPS] == len(rows)


def test_zero_weight_disables_a_component():
    dp, ds = make_params(0.5, 1.0, 1, 1, 1, weights=(1.0, 0.0, 1.0, 1.0))
    assert K.fuse(np.array([0.0, 1e6, 0.0, 0.0]), dp, ds) == 0.0

"""WindowSummarizer against a plain numpy reference, and wall-clock window alignment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.summaries import NS, WindowSummarizer

T0 = 1_700_000_000.0  # a multiple of 10 s


def steps_strategy(n_tags: int):
    step = st.tuples(
        st.floats(0.0, 4.0),  # dt to the previous step
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n_tags, max_size=n_tags),
        st.lists(st.integers(0, 1), min_size=n_tags, max_size=n_tags),  # fresh
        st.lists(st.integers(0, 4), min_size=n_tags, max_size=n_tags),  # quality
        st.floats(0.0, 10.0),  # line score
        st.booleans(),  # alarm
        st.lists(st.one_of(st.floats(0.0, 10.0), st.just(float("nan"))), min_size=n_tags, max_size=n_tags),
    )
    return st.lists(step, min_size=1, max_size=60)


def reference(steps, window_s: float, n_tags: int) -> dict[int, dict]:
    """Group steps by window and compute every statistic the slow, obvious way."""
    out: dict[int, dict] = {}
    t = T0
    rows = []
    for dt, v, f, q, ls, al, sc in steps:
        t += dt
        rows.append((t, np.array(v), np.array(f), np.array(q), ls, al, np.array(sc)))
    for i, (t, v, f, q, ls, al, sc) in enumerate(rows):
        k = int(t * NS) // int(window_s * NS)
        w = out.setdefault(k, {"vals": [[] for _ in range(n_tags)], "bad": np.zeros(n_tags, int),
                               "score": np.full(n_tags, np.nan), "ls": [], "alarm": 0.0})
        for j in range(n_tags):
            if f[j] and q[j] == 0:
                w["vals"][j].append(v[j])
        w["bad"] += (f == 1) & (q >= 2)
        w["score"] = np.fmax(w["score"], sc)
        w["ls"].append(ls)
        if al and i + 1 < len(rows):  # alarm holds until the next step, split at window ends
            t_next = rows[i + 1][0]
            end = (k + 1) * window_s
            k_next = int(t_next * NS) // int(window_s * NS)
            w["alarm"] += min(t_next, end) - t
            if k_next > k and k_next in (k + 1,):
                nxt = out.setdefault(k_next, {"vals": [[] for _ in range(n_tags)],
                                              "bad": np.zeros(n_tags, int),
                                              "score": np.full(n_tags, np.nan), "ls": [], "alarm": 0.0})
                nxt["alarm"] += t_next - k_next * window_s
    return out


@settings(max_examples=150, deadline=None)
@given(steps=steps_strategy(3))
def test_matches_numpy_reference(steps):
    n, window_s = 3, 10.0
    s = WindowSummarizer(n, window_s)
    closed = []
    t = T0
    for dt, v, f, q, ls, al, sc in steps:
        t += dt
        w = s.update(t, np.array(v), np.array(f, np.uint8), np.array(q, np.uint8), ls, al, np.array(sc))
        if w is not None:
            closed.append(w)
    ref = reference(steps, window_s, n)
    # every window but the open one closed, in order, stamped with its aligned end
    assert [w.end_ns for w in closed] == [(k + 1) * int(window_s * NS) for k in sorted(ref)[:-1]]
    for w in closed:
        r = ref[w.end_ns // int(window_s * NS) - 1]
        for j in range(n):
            vals = np.array(r["vals"][j])
            assert w.count[j] == len(vals)
            if len(vals):
                assert w.mean[j] == pytest.approx(vals.mean(), rel=1e-9, abs=1e-6)
                assert w.std[j] == pytest.approx(vals.std(), rel=1e-6, abs=1e-4)
                assert w.min[j] == vals.min() and w.max[j] == vals.max() and w.last[j] == vals[-1]
            else:
                assert np.isnan(w.mean[j]) and np.isnan(w.std[j]) and np.isnan(w.min[j])
        np.testing.assert_array_equal(w.bad_count, r["bad"])
        np.testing.assert_array_equal(w.max_score, r["score"])
        assert w.steps == len(r["ls"])
        assert w.line_score_max == max(r["ls"])
        assert w.line_score_mean == pytest.approx(np.mean(r["ls"]))
        assert w.line_alarm_seconds == pytest.approx(r["alarm"], abs=1e-6)
        np.testing.assert_allclose(w.alarm_seconds, r["alarm"], atol=1e-6)


def test_std_is_stable_for_large_offsets():
    """Welford keeps the spread of values near 1e9 that sum/sumsq would cancel away."""
    s = WindowSummarizer(1, 10.0)
    one, good, zero = np.ones(1, np.uint8), np.zeros(1, np.uint8), np.zeros(1)
    vals = 1e9 + np.array([0.1, 0.2, 0.3, 0.4])
    for i, v in enumerate(vals):
        s.update(T0 + i, np.array([v]), one, good, 0.0, False, zero)
    w = s.update(T0 + 10, np.array([0.0]), one, good, 0.0, False, zero)
    assert w.std[0] == pytest.approx(np.std(vals), rel=1e-6)


def test_window_ends_are_wall_clock_aligned_and_survive_a_restart():
    one, good, zero = np.ones(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2)
    times = T0 + 3.7 + np.arange(0, 45, 0.5)

    def ends(ts):
        s = WindowSummarizer(2, 5.0)
        return [w.end_ns for t in ts if (w := s.update(t, np.ones(2), one, good, 0, False, zero))]

    full = ends(times)
    assert all(e % (5 * NS) == 0 for e in full)
    assert full[0] == int(T0 + 5) * NS  # first window [T0, T0+5) ends at T0+5
    # a "restart" 17 s in: the same windows get the same timestamps
    restarted = ends(times[times >= T0 + 20.7])
    assert set(restarted) <= set(full) and restarted == full[-len(restarted):]


def test_alarm_seconds_split_across_window_boundary():
    one, good, zero = np.ones(1, np.uint8), np.zeros(1, np.uint8), np.zeros(1)
    s = WindowSummarizer(1, 10.0)
    s.update(T0 + 8, np.ones(1), one, good, 1.0, True, zero)  # alarm from T0+8 ...
    w = s.update(T0 + 13, np.ones(1), one, good, 0.0, False, zero)  # ... until T0+13
    assert w.line_alarm_seconds == pytest.approx(2.0) and w.alarm_seconds[0] == pytest.approx(2.0)
    w2 = s.update(T0 + 21, np.ones(1), one, good, 0.0, False, zero)
    assert w2.line_alarm_seconds == pytest.approx(3.0)


def test_held_values_and_bad_quality_are_not_samples():
    s = WindowSummarizer(2, 10.0)
    z = np.zeros(2)
    s.update(T0, np.array([1.0, 2.0]), np.array([1, 1], np.uint8), np.array([0, 2], np.uint8), 0, False, z)
    fresh, quality = np.array([0, 1], np.uint8), np.array([0, 4], np.uint8)
    s.update(T0 + 1, np.array([1.0, 9.0]), fresh, quality, 0, False, z)
    w = s.update(T0 + 10, z, np.zeros(2, np.uint8), np.zeros(2, np.uint8), 0, False, z)
    assert w.count.tolist() == [1, 0] and w.bad_count.tolist() == [0, 2]
    assert np.isnan(w.last[1]) and w.last[0] == 1.0


@pytest.mark.parametrize("kwargs, match", [({"n_tags": 0}, "n_tags"),
                                           ({"n_tags": 1, "window_s": 0}, "window_s")])
def test_bad_arguments_give_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowSummarizer(**kwargs)

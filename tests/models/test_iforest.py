"""Flattened IsolationForest scored by `kernels.iforest_score` equals -IsolationForest.score_samples."""

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from models import kernels as K
from models.iforest import fit_iforest, flatten_iforest


def kernel_scores(flat, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    extra = (flat.max_depth,) if hasattr(flat, "max_depth") else ()
    return np.array([
        K.iforest_score(x[r], flat.nodes, flat.leaf_depth, flat.roots, flat.denominator, *extra)
        for r in range(x.shape[0])
    ])


CASES = [
    # seed, n_features, max_samples, max_features, n_estimators
    (0, 1, 64, 1.0, 30),
    (1, 3, 256, 1.0, 50),
    (2, 6, 100, 0.5, 40),
    (3, 8, 32, 0.3, 60),
    (4, 5, "auto", 0.8, 25),
    (5, 4, 2, 1.0, 20),
    (6, 7, 128, 3, 40),  # integer max_features
]


def fitted(seed, n_features, max_samples, max_features, n_estimators):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(300, n_features)) * rng.uniform(0.1, 10, n_features)
    forest = IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                             max_features=max_features, random_state=seed).fit(train)
    return rng, train, forest


@pytest.mark.parametrize("case", CASES)
def test_iforest_score_equals_sklearn(case):
    rng, train, forest = fitted(*case)
    n = train.shape[1]
    test = np.vstack([train[:50], rng.normal(size=(50, n)) * train.std(0) * 3,
                      rng.standard_cauchy(size=(20, n))])
    flat = flatten_iforest(forest)
    got = kernel_scores(flat, test)
    np.testing.assert_allclose(got, -forest.score_samples(test), rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", CASES[1:4])
def test_iforest_score_at_split_thresholds_and_float32_rounding(case):
    """Values exactly at, and one float64 ulp around, every split threshold; plus values that
    compare one way in float64 and the other once rounded to float32 (as sklearn does)."""
    rng, train, forest = fitted(*case)
    flat = flatten_iforest(forest)
    # sklearn's own float64 thresholds, tree by tree, with the column each split reads.
    splits = []
    for est, cols in zip(forest.estimators_, forest.estimators_features_, strict=True):
        tree = est.tree_
        for node in np.flatnonzero(tree.children_left != -1):
            splits.append((int(np.asarray(cols)[tree.feature[node]]), float(tree.threshold[node])))
    rows = []
    disagree_in_float64 = 0
    for idx in rng.choice(len(splits), size=min(150, len(splits)), replace=False):
        f, thr = splits[idx]
        thr32 = np.float32(thr)
        candidates = [thr, np.nextafter(thr, np.inf), np.nextafter(thr, -np.inf), float(thr32),
                      float(np.nextafter(thr32, np.float32(np.inf))),
                      float(np.nextafter(thr32, np.float32(-np.inf)))]
        # Halfway between two float32 neighbours of the threshold: rounds to one of them.
        for a, b in ((np.nextafter(thr32, np.float32(-np.inf)), thr32),
                     (thr32, np.nextafter(thr32, np.float32(np.inf)))):
            mid = (float(a) + float(b)) / 2.0
            candidates += [mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf)]
        for v in candidates:
            row = train[rng.integers(train.shape[0])].copy()
            row[f] = v
            rows.append(row)
            if (v <= thr) != (float(np.float32(v)) <= thr):
                disagree_in_float64 += 1
    x = np.array(rows)
    assert disagree_in_float64 > 0  # the cases really probe float32 rounding
    np.testing.assert_allclose(kernel_scores(flat, x), -forest.score_samples(x), rtol=0, atol=1e-9)


def test_fit_iforest_and_flat_arrays_are_consistent():
    rng = np.random.default_rng(9)
    z = rng.normal(size=(400, 4))
    forest = fit_iforest(z, n_estimators=15, max_samples=64, seed=9)
    flat = flatten_iforest(forest)
    assert flat.roots.shape == (15,)
    assert flat.leaf_depth.shape[0] == flat.nodes.shape[0] == sum(e.tree_.node_count
                                                                 for e in forest.estimators_)
    assert np.all(np.isfinite(flat.leaf_depth))
    # Ordinary points score near 0.5 and a far outlier clearly higher.
    s = kernel_scores(flat, np.vstack([z[:100], np.full((1, 4), 8.0)]))
    assert 0.35 < np.median(s[:100]) < 0.55
    assert s[-1] > 0.65
    # Same seed, same forest.
    again = flatten_iforest(fit_iforest(z, n_estimators=15, max_samples=64, seed=9))
    np.testing.assert_array_equal(again.nodes, flat.nodes)
    np.testing.assert_array_equal(again.leaf_depth, flat.leaf_depth)

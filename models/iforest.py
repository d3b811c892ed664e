"""IsolationForest: scikit-learn's fitted trees flattened into arrays for `kernels.iforest_score`.

The score equals ``-IsolationForest.score_samples`` (higher = more anomalous,
about 0.5 for ordinary points). Like sklearn, a sample is compared as float32
against the split thresholds, so both take the same path and agree to rounding.

>>> import numpy as np
>>> from models import kernels
>>> z = np.random.default_rng(0).normal(size=(300, 2))
>>> forest = fit_iforest(z, n_estimators=10, max_samples=64)
>>> arrays = flatten_iforest(forest)
>>> u = np.array([4.0, -4.0])
>>> ours = kernels.iforest_score(u, arrays.nodes, arrays.leaf_depth, arrays.roots,
...                              arrays.denominator, arrays.max_depth)
>>> bool(abs(ours + forest.score_samples(u[None, :])[0]) < 1e-9), ours > 0.6
(True, True)
"""

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length

from models.kernels import F_CHILD, F_FEATURE, F_THRESHOLD


@dataclass(frozen=True)
class ForestArrays:
    nodes: np.ndarray  # int32 (M, 3): feature, first child, float32 threshold bits (kernels.F_*)
    leaf_depth: np.ndarray  # float64 (M,): path length credited at a leaf
    roots: np.ndarray  # int32 (T,): index of each tree's root in `nodes`
    denominator: float  # trees * c(max_samples)
    max_depth: int  # deepest tree


def fit_iforest(z: np.ndarray, n_estimators: int = 100, max_samples: int | str = "auto",
                seed: int = 0) -> IsolationForest:
    return IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                           random_state=seed).fit(z)


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 threshold.

    For a float32 x, ``x <= t64`` holds exactly when ``x <= float32_floor(t64)``,
    so the kernel can compare in float32 and still decide as sklearn does.
    """
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def flatten_iforest(forest: IsolationForest) -> ForestArrays:
    """Renumber every fitted tree breadth-first (children adjacent) into one node table."""
    tables, depths, roots = [], [], []
    offset = 0
    subsample = forest._max_features != forest.n_features_in_
    for tree_idx, (est, cols) in enumerate(
        zip(forest.estimators_, forest.estimators_features_, strict=True)
    ):
        tree = est.tree_
        # The same sum sklearn makes per leaf in _compute_score_samples.
        path = (forest._decision_path_lengths[tree_idx]
                + forest._average_path_length_per_tree[tree_idx] - 1.0)
        table, leaf_depth = _tree_table(tree, np.asarray(cols) if subsample else None, path, offset)
        tables.append(table)
        depths.append(leaf_depth)
        roots.append(offset)
        offset += table.shape[0]
    return ForestArrays(
        nodes=np.ascontiguousarray(np.concatenate(tables)),
        leaf_depth=np.concatenate(depths),
        roots=np.asarray(roots, dtype=np.int32),
        denominator=float(len(forest.estimators_) * _average_path_length([forest._max_samples])[0]),
        max_depth=max(est.tree_.max_depth for est in forest.estimators_),
    )


def _tree_table(tree, columns: np.ndarray | None, path: np.ndarray, offset: int):
    """One tree's rows of the node table, breadth-first, plus the path length at each row."""
    left, right = tree.children_left, tree.children_right
    order = [0]  # old node ids in new order; children are appended in pairs
    for old in order:  # grows while iterating: a breadth-first walk
        if left[old] != -1:
            order += [left[old], right[old]]
    order = np.asarray(order)
    new_id = np.empty(tree.node_count, dtype=np.int64)
    new_id[order] = np.arange(order.size)
    is_leaf = left[order] == -1
    feature = tree.feature[order]
    if columns is not None:  # the tree was grown on a subset of columns: map back to the originals
        feature = np.where(is_leaf, 0, columns[np.maximum(feature, 0)])
    table = np.empty((order.size, 3), dtype=np.int32)
    table[:, F_FEATURE] = np.where(is_leaf, 0, feature)
    table[:, F_CHILD] = offset + np.where(is_leaf, np.arange(order.size), new_id[left[order]])
    threshold = float32_floor(tree.threshold[order])
    threshold[is_leaf] = np.inf
    table[:, F_THRESHOLD] = threshold.view(np.int32)
    return table, path[order].astype(np.float64)

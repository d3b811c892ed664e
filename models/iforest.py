"""IsolationForest: scikit-learn's fitted trees flattened into arrays for `kernels.iforest_score`.

The score equals ``-IsolationForest.score_samples`` (higher = more anomalous,
about 0.5 for ordinary points). Like sklearn, a sample is compared as float32
against float64 split thresholds, so the two agree to rounding.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length


@dataclass(frozen=True)
class ForestArrays:
    feature: np.ndarray  # int32 (M,): split feature in the original column order; -1 at leaves
    threshold: np.ndarray  # float64 (M,)
    left: np.ndarray  # int32 (M,): global index of the left child; -1 at leaves
    right: np.ndarray  # int32 (M,)
    leaf_depth: np.ndarray  # float64 (M,): path length credited at a leaf
    roots: np.ndarray  # int32 (T,)
    denominator: float  # trees * c(max_samples)


def fit_iforest(z: np.ndarray, n_estimators: int = 100, max_samples: int | str = "auto",
                seed: int = 0) -> IsolationForest:
    return IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                           random_state=seed).fit(z)


def flatten_iforest(forest: IsolationForest) -> ForestArrays:
    """Concatenate every fitted tree into flat arrays with global node indices."""
    features, thresholds, lefts, rights, depths, roots = [], [], [], [], [], []
    offset = 0
    subsample = forest._max_features != forest.n_features_in_
    for tree_idx, (est, cols) in enumerate(
        zip(forest.estimators_, forest.estimators_features_, strict=True)
    ):
        tree = est.tree_
        is_leaf = tree.children_left == -1
        feat = tree.feature.astype(np.int64)
        if subsample:
            feat = np.where(is_leaf, -1, np.asarray(cols)[np.maximum(feat, 0)])
        features.append(np.where(is_leaf, -1, feat))
        thresholds.append(tree.threshold)
        lefts.append(np.where(is_leaf, -1, tree.children_left + offset))
        rights.append(np.where(is_leaf, -1, tree.children_right + offset))
        # The same sum sklearn makes per leaf in _compute_score_samples.
        depths.append(
            forest._decision_path_lengths[tree_idx]
            + forest._average_path_length_per_tree[tree_idx]
            - 1.0
        )
        roots.append(offset)
        offset += tree.node_count
    return ForestArrays(
        feature=np.concatenate(features).astype(np.int32),
        threshold=np.concatenate(thresholds).astype(np.float64),
        left=np.concatenate(lefts).astype(np.int32),
        right=np.concatenate(rights).astype(np.int32),
        leaf_depth=np.concatenate(depths).astype(np.float64),
        roots=np.asarray(roots, dtype=np.int32),
        denominator=float(len(forest.estimators_) * _average_path_length([forest._max_samples])[0]),
    )

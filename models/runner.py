"""The kernels' arguments from a model's arrays and a running state, and replay through them.

One place knows the order `kernels.step` and `kernels.run_batch` take their arrays
in and how big the running state is; the detector (live and replay) and the
fitting (which replays its training window to calibrate) both use it, so neither
imports the other.

>>> import numpy as np
>>> from models.baseline import rules_only_params
>>> from models.calibration import decision_params
>>> from models.spec import DetectorSpec, TagLimits
>>> model = model_arrays(rules_only_params(["a"], {"a": TagLimits(0.0, 1.0)}, {}))
>>> model["decision_params"] = decision_params(DetectorSpec(), (np.zeros(4), np.ones(4)), 0.5)
>>> replay(model, new_state(model), np.arange(3.0), np.array([[0.5], [2.0], [0.5]])).alarm.tolist()
[False, True, False]
"""

from dataclasses import dataclass

import numpy as np

from models import kernels as K

# The fitted arrays (what a model artifact holds).
MODEL_ARRAYS = ("tag_params", "pca_components", "pca_inv_eig", "f_nodes", "f_leaf_depth",
                "f_roots", "decision_params")


@dataclass
class BatchResult:
    """Per-row outputs of a replay: line score and alarm, component scores, per-tag flags and scores."""

    score: np.ndarray  # (rows,) float64 in [0, 1)
    alarm: np.ndarray  # (rows,) bool
    components: np.ndarray  # (rows, 4) normalised component scores
    tag_flags: np.ndarray  # (rows, tags) int32 bitmask (models.names.FLAG_*)
    tag_scores: np.ndarray  # (rows, tags) float64


def model_arrays(tag_params: np.ndarray, pca=None, forest=None) -> dict[str, np.ndarray]:
    """The arrays `step` takes, C-contiguous (the only layout it is compiled for); no decision yet."""
    n = tag_params.shape[0]
    model = {"tag_params": tag_params, "pca_components": np.zeros((0, n)),
             "pca_inv_eig": np.zeros(0), "f_nodes": np.zeros((0, 3), dtype=np.int32),
             "f_leaf_depth": np.zeros(0), "f_roots": np.zeros(0, dtype=np.int32)}
    if pca is not None:
        model.update(pca_components=pca.components, pca_inv_eig=pca.inv_eigenvalues)
    if forest is not None:
        model.update(f_nodes=forest.nodes, f_leaf_depth=forest.leaf_depth, f_roots=forest.roots)
    return {k: np.ascontiguousarray(v) for k, v in model.items()}


def new_state(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fresh running state for `model`: nothing seen yet."""
    n = model["tag_params"].shape[0]
    return {"tag_state": np.zeros((n, K.TS_SIZE)),
            "decision_state": np.zeros(K.DS_SIZE + int(model["decision_params"][K.D_N]))}


def kernel_args(model: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> tuple:
    """Kernel arguments after (t, x, fresh, good), in the kernels' order."""
    m, s = model, state
    return (m["tag_params"], s["tag_state"], m["pca_components"], m["pca_inv_eig"],
            m["f_nodes"], m["f_leaf_depth"], m["f_roots"], m["decision_params"], s["decision_state"])


def replay(model: dict[str, np.ndarray], state: dict[str, np.ndarray], times: np.ndarray, x: np.ndarray,
           fresh: np.ndarray | None = None, good: np.ndarray | None = None) -> BatchResult:
    """Run rows through the live kernel from `state` (updated in place); inputs already checked."""
    rows, n = x.shape
    fresh = np.ones((rows, n), np.uint8) if fresh is None else fresh
    good = np.ones((rows, n), np.uint8) if good is None else good
    flags = np.zeros((rows, n), dtype=np.int32)
    tag_scores = np.zeros((rows, n))
    out = np.zeros((rows, K.O_SIZE))
    K.run_batch(times, x, fresh, good, *kernel_args(model, state), flags, tag_scores, out)
    return BatchResult(score=out[:, K.O_SCORE], alarm=out[:, K.O_ALARM] != 0.0,
                       components=out[:, :K.C_SIZE], tag_flags=flags, tag_scores=tag_scores)

"""PCA monitoring (classic multivariate SPC): Hotelling T² and squared prediction error (Q).

Fitted offline with scikit-learn on robust-scaled normal data; scored by
`models.kernels.pca_score`.
T² measures how far a sample sits inside the model plane, Q (SPE) how far it
sits off it, i.e. a broken correlation between tags. The detector calibrates
both limits on the held-out tail by default (`pca_limits="empirical"`); the
theoretical limits below assume independent Gaussian rows.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(500, 1)) @ np.ones((1, 3)) + 0.1 * rng.normal(size=(500, 3))
>>> model = fit_pca(z, variance=0.9)
>>> model.components.shape, model.has_residual
((1, 3), True)
>>> broken = np.array([1.0, -1.0, 1.0]) - model.mean  # the tags no longer move together
>>> spe = float(broken @ broken - (model.components @ broken) @ (model.components @ broken))
>>> spe > model.spe_limit
True
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.decomposition import PCA

EIGENVALUE_FLOOR = 1e-6


@dataclass(frozen=True)
class PCAModel:
    mean: np.ndarray  # (n,) PCA centre in scaled space
    components: np.ndarray  # (k, n) orthonormal loadings
    inv_eigenvalues: np.ndarray  # (k,) 1 / explained variance of each retained component
    t2_limit: float  # theoretical control limit at the fitted confidence
    spe_limit: float
    explained_variance_ratio: float

    @property
    def has_residual(self) -> bool:
        """False when every component is kept (then SPE is identically zero)."""
        return self.components.shape[0] < self.components.shape[1]


def fit_pca(z: np.ndarray, variance: float = 0.9, max_components: int | None = None,
            confidence: float = 0.99) -> PCAModel:
    """Fit PCA on scaled normal data z (rows x tags), keeping enough components for `variance`.

    variance=1.0 keeps every component: T² is then the Mahalanobis distance.

    Control limits: T² from the F distribution, Q from Jackson & Mudholkar (1979).
    """
    n_rows, n_tags = z.shape
    with np.errstate(invalid="ignore", divide="ignore"):  # no variance at all: ratios are 0/0
        full = PCA().fit(z)
    ratios = np.nan_to_num(np.cumsum(full.explained_variance_ratio_), nan=1.0)
    k = int(np.searchsorted(ratios, variance) + 1)
    k = max(1, min(k, n_tags, max_components or n_tags, n_rows - 2))
    # Directions with less than a thousandth of a robust scale of spread: rounding, not signal.
    eig = np.maximum(full.explained_variance_, EIGENVALUE_FLOOR)
    components = np.ascontiguousarray(full.components_[:k], dtype=np.float64)

    f_crit = stats.f.ppf(confidence, k, n_rows - k)
    t2_limit = k * (n_rows - 1) * (n_rows + 1) / (n_rows * (n_rows - k)) * f_crit

    residual = eig[k:]
    if residual.size == 0 or residual.sum() <= 1e-12:
        spe_limit = 1e-12
    else:
        th1, th2, th3 = (float(np.sum(residual**p)) for p in (1, 2, 3))
        h0 = 1.0 - 2.0 * th1 * th3 / (3.0 * th2 * th2)
        h0 = max(h0, 1e-3)
        c_a = stats.norm.ppf(confidence)
        spe_limit = th1 * (
            c_a * np.sqrt(2.0 * th2 * h0 * h0) / th1 + 1.0 + th2 * h0 * (h0 - 1.0) / (th1 * th1)
        ) ** (1.0 / h0)
    return PCAModel(
        mean=np.ascontiguousarray(full.mean_, dtype=np.float64),
        components=components,
        inv_eigenvalues=1.0 / eig[:k],
        t2_limit=float(t2_limit),
        spe_limit=float(spe_limit),
        explained_variance_ratio=float(ratios[k - 1]),
    )

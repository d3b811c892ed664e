"""A textbook PCA T²/Q monitor, the yardstick the detector is compared with.

Autoscaling with the training mean and standard deviation, principal components kept
up to 90 % of the variance, Hotelling T² with the F-distribution limit for new
observations and Q (SPE) with the Jackson-Mudholkar limit (both theoretical, not
empirical quantiles). A row alarms when T² or Q is over its limit; each limit is set at
half the designed false-alarm rate so that the pair's designed rate is at most the
detector's. Written here, independent of models/, so that changes to the detector
cannot move the yardstick.

`lags` > 0 gives dynamic PCA (each row augmented with the previous `lags` rows), which
is what makes a PCA monitor meaningful on a single stream.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

VARIANCE_KEPT = 0.9
UNIVARIATE_LAGS = 5  # dynamic PCA on a single stream: the value and its 5 predecessors


def lagged(x: np.ndarray, lags: int) -> np.ndarray:
    """Rows augmented with their `lags` predecessors (the first row repeated before the start)."""
    if lags == 0:
        return x
    padded = np.concatenate([np.repeat(x[:1], lags, axis=0), x])
    return np.hstack([padded[lags - k:padded.shape[0] - k] for k in range(lags + 1)])


@dataclass(frozen=True)
class PCAMonitor:
    mean: np.ndarray
    std: np.ndarray
    loadings: np.ndarray  # (vars, k)
    eigenvalues: np.ndarray  # (k,)
    t2_limit: float
    q_limit: float
    lags: int

    @classmethod
    def fit(cls, x: np.ndarray, far: float, lags: int = 0, variance: float = VARIANCE_KEPT) -> "PCAMonitor":
        """Fit on normal rows x with limits for a combined designed false-alarm rate `far`."""
        z_raw = lagged(np.asarray(x, dtype=np.float64), lags)
        n = z_raw.shape[0]
        mean, std = z_raw.mean(axis=0), z_raw.std(axis=0, ddof=1)
        std = np.where(std > 0, std, 1.0)
        z = (z_raw - mean) / std
        eig, vec = np.linalg.eigh(np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]))
        order = np.argsort(eig)[::-1]
        eig, vec = np.maximum(eig[order], 0.0), vec[:, order]
        total = eig.sum()
        if total <= 0:  # constant training data: any change is out of model
            return cls(mean, std, vec[:, :0], eig[:0], 0.0, 0.0, lags)
        k = int(np.searchsorted(np.cumsum(eig) / total, variance) + 1)
        k = min(k, int(np.sum(eig > total * 1e-12)), n - 2)
        alpha = far / 2.0  # per statistic; T² or Q
        t2_limit = k * (n - 1) * (n + 1) / (n * (n - k)) * stats.f.ppf(1 - alpha, k, n - k)
        return cls(mean, std, vec[:, :k], eig[:k], float(t2_limit), jackson_mudholkar(eig[k:], alpha), lags)

    def statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row (T², Q)."""
        z = (lagged(np.asarray(x, dtype=np.float64), self.lags) - self.mean) / self.std
        scores = z @ self.loadings
        t2 = np.sum(scores**2 / np.maximum(self.eigenvalues, 1e-300), axis=1)
        q = np.sum((z - scores @ self.loadings.T) ** 2, axis=1)
        return t2, q

    def alarms(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row (T² over its limit, Q over its limit)."""
        t2, q = self.statistics(x)
        return t2 > self.t2_limit, q > self.q_limit


def jackson_mudholkar(residual_eigenvalues: np.ndarray, alpha: float) -> float:
    """Q limit at confidence 1 - alpha from the eigenvalues left out of the model (Jackson-Mudholkar 1979)."""
    th1, th2, th3 = (float(np.sum(residual_eigenvalues**p)) for p in (1, 2, 3))
    if th1 <= 0:
        return 0.0
    h0 = max(1.0 - 2.0 * th1 * th3 / (3.0 * th2 * th2), 1e-3)
    c = stats.norm.ppf(1 - alpha)
    return float(th1 * (c * np.sqrt(2.0 * th2 * h0 * h0) / th1 + 1.0
                        + th2 * h0 * (h0 - 1.0) / (th1 * th1)) ** (1.0 / h0))

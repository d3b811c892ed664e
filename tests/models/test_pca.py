"""PCA T²/SPE kernel against scikit-learn, and the fitted control limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA

from models import kernels as K
from models.pca import fit_pca


def correlated(rng, rows, n):
    mix = rng.normal(size=(n, n)) * rng.uniform(0.1, 3.0, size=n)
    return rng.normal(size=(rows, n)) @ mix + rng.normal(size=n) * 5


def kernel_scores(x, mean, components, inv_eig):
    """T² and SPE of each row of x through kernels.pca_score (input in ts[:, TS_U], centre in
    tp[:, TP_PCA_MEAN])."""
    n = x.shape[1]
    tp = np.zeros((n, K.TP_SIZE))
    tp[:, K.TP_PCA_MEAN] = mean
    ts = np.zeros((n, K.TS_SIZE))
    components = np.ascontiguousarray(components, dtype=np.float64)
    inv_eig = np.ascontiguousarray(inv_eig, dtype=np.float64)
    t2, spe = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    for r in range(x.shape[0]):
        ts[:, K.TS_U] = x[r]
        t2[r], spe[r] = K.pca_score(tp, ts, components, inv_eig)
    return t2, spe


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), data=st.data())
def test_pca_score_matches_sklearn(seed, n, data):
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    train = correlated(rng, 300, n)
    pca = PCA(n_components=k).fit(train)
    test = np.vstack([train[:20], correlated(rng, 20, n), rng.normal(size=(10, n)) * 50])
    t2, spe = kernel_scores(test, pca.mean_.copy(), np.ascontiguousarray(pca.components_),
                            1.0 / pca.explained_variance_)
    proj = pca.transform(test)
    want_t2 = np.sum(proj**2 / pca.explained_variance_, axis=1)
    want_spe = np.sum((test - pca.inverse_transform(proj)) ** 2, axis=1)
    scale = np.sum((test - pca.mean_) ** 2, axis=1)  # SPE is a difference of sums of this size
    np.testing.assert_allclose(t2, want_t2, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(spe, want_spe, rtol=1e-7, atol=1e-10 * scale.max())
    assert np.all(spe >= 0)
    if k == n:
        assert np.all(spe <= 1e-9 * scale)


def test_fit_pca_limits_positive_and_t2_limit_grows_with_confidence():
    rng = np.random.default_rng(3)
    z = correlated(rng, 500, 6)
    z = (z - z.mean(0)) / z.std(0)
    limits = [fit_pca(z, 0.8, confidence=c) for c in (0.9, 0.95, 0.99, 0.999)]
    t2 = [m.t2_limit for m in limits]
    spe = [m.spe_limit for m in limits]
    assert all(v > 0 and np.isfinite(v) for v in t2 + spe)
    assert all(a < b for a, b in zip(t2, t2[1:], strict=False)), t2
    assert all(a < b for a, b in zip(spe, spe[1:], strict=False)), spe


def test_fit_pca_keeps_enough_orthonormal_components():
    rng = np.random.default_rng(4)
    z = correlated(rng, 400, 7)
    for variance in (0.5, 0.8, 0.95):
        m = fit_pca(z, variance)
        k = m.components.shape[0]
        ratios = np.cumsum(PCA().fit(z).explained_variance_ratio_)
        assert ratios[k - 1] >= variance - 1e-12
        assert k == 1 or ratios[k - 2] < variance  # and no more than needed
        np.testing.assert_allclose(m.components @ m.components.T, np.eye(k), atol=1e-10)
    assert fit_pca(z, 0.99, max_components=2).components.shape[0] <= 2


@pytest.mark.parametrize("n,k_var", [(5, 0.7), (8, 0.9)])
def test_theoretical_limits_hold_their_confidence_on_gaussian_data(n, k_var):
    """At 99 % confidence about 1 % of new in-control samples exceed each limit."""
    rng = np.random.default_rng(11)
    mix = rng.normal(size=(n, n))
    train = rng.normal(size=(2000, n)) @ mix
    test = rng.normal(size=(20000, n)) @ mix
    m = fit_pca(train, k_var, confidence=0.99)
    t2, spe = kernel_scores(test, m.mean, m.components, m.inv_eigenvalues)
    t2_rate = np.mean(t2 > m.t2_limit)
    spe_rate = np.mean(spe > m.spe_limit)
    assert 0.004 < t2_rate < 0.025, t2_rate
    assert 0.002 < spe_rate < 0.03, spe_rate

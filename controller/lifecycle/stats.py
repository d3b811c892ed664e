"""The statistics of the model lifecycle, pure Python (no scipy at run time: the edge loads only numba
for a fitted model): binomial tail probabilities through the regularised incomplete beta function, and
the one-sided Clopper-Pearson upper bound of a rate.

Rows are treated as independent trials. Alarm *rises* are rare and far apart, so that is close enough
for a rate of rises; consecutive alarm rows are not independent (an alarm lasts), which is why the
decisions test rises per row and judge the share of alarm rows only through the agreement.

>>> round(clopper_pearson_upper(0, 1498, 0.05), 5)  # no rise in ceil(ln 20 / 0.002) rows
0.002
>>> binomial_sf(3, 10, 0.1) > 0.05 > binomial_sf(6, 10, 0.1)
True
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300
_STIRLING_FROM = 1e6  # above this, Stirling's series to 1/z^3 is exact to double precision
_MAX_ITER = 100_000  # Lentz's continued fraction needs ~sqrt(max(a, b)) terms near the mean


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    """ln B(a, b). For a large argument lgamma(a + b) - lgamma(b) is taken from Stirling's series as one
    difference: two lgammas of ~1e12 rows would cancel away the digits (rare events in many rows)."""
    small, big = min(a, b), max(a, b)
    if big < _STIRLING_FROM:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    w = big + small
    step = ((big - 0.5) * math.log1p(small / big) + small * math.log(w) - small
            + (1.0 / w - 1.0 / big) / 12.0 - (1.0 / w**3 - 1.0 / big**3) / 360.0)
    return math.lgamma(small) - step  # lgamma(big + small) - lgamma(big) = step


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), a, b > 0, x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return 1.0 - betainc(k + 1.0, float(n - k), p)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the p-value of k events in n rows against a rate p."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(float(k), n - k + 1.0, p)


def clopper_pearson_upper(k: int, n: int, alpha: float = 0.05) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson upper bound of a rate seen k times in n rows."""
    if n <= 0 or k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(100):  # bisection on the cdf (decreasing in p): ~1e-30 wide at the end
        mid = 0.5 * (lo + hi)
        if binomial_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return hi


def below(k: int, n: int, rate: float, alpha: float = 0.05) -> bool:
    """Whether k events in n rows show, at confidence 1 - alpha, a rate below `rate` (the Clopper-Pearson
    upper bound is at most `rate`): one cdf, no bisection."""
    return n > 0 and binomial_cdf(k, n, rate) <= alpha


def above(k: int, n: int, rate: float, alpha: float) -> bool:
    """Whether k events in n rows reject "the rate is at most `rate`" (one-sided binomial test at alpha)."""
    return n > 0 and binomial_sf(k, n, rate) < alpha

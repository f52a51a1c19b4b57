"""Distribution functions of test statistics.

Student's t survival function, which every summary's coefficient table
needs, is computed here up to 1,000 df (:func:`t_sf`: the regularized
incomplete beta function by its continued fraction, in Python's ``math``), so that a fit
and its summary import no scipy (importing scipy.special takes 0.05-0.1 s
of a fresh process, on its critical path when the kernels load from disk).
The others come from scipy.special's kernels, imported at their first use;
scipy.stats computes these same functions with these same kernels
(``f.sf`` is ``fdtrc``, ``chi2.sf`` is ``chdtrc``, ...), with the same
results, and importing it costs about 0.4 s more. Statistics below a
distribution's support (a likelihood ratio a rounding error below 0) get
the survival function's value at the support's end, 1, as scipy.stats
gives them.
"""

from __future__ import annotations

import math

import numpy as np

# The continued fraction's stopping rule (relative change of the convergent) and its most terms: it
# converges in O(sqrt(df)) terms where the statistic is near the distribution's centre.
CF_EPS = 1e-16
CF_MAX_TERMS = 100_000
# df above which t_sf takes scipy's stdtr (the continued fraction: within 4e-14 of the exact value up to
# here, 1.5e-13 at df = 2,000, 2.6e-13 at 5,000)
CF_MAX_DF = 1_000.0
# a = df / 2 from which ln B(a, 1/2) comes from the asymptotic series of ln Gamma(a + 1/2) - ln Gamma(a):
# the difference of two lgamma values loses digits as they grow (a = 5e4: 4e-12 relative), the series
# is exact to rounding from a = 15 (two terms short of it, 9e-11 at a = 5)
SERIES_FROM = 15.0
LN_GAMMA_HALF = 0.5 * math.log(math.pi)


def _special():
    from scipy import special

    return special


def norm_ppf(q):
    """The standard normal quantile (``scipy.stats.norm.ppf``)."""
    return _special().ndtri(q)


def _log_beta_half(a: float) -> float:
    """ln B(a, 1/2)."""
    if a < SERIES_FROM:
        return math.lgamma(a) + LN_GAMMA_HALF - math.lgamma(a + 0.5)
    inv, inv2 = 1.0 / a, 1.0 / (a * a)
    series = inv * (-1.0 / 8 + inv2 * (1.0 / 192 + inv2 * (-1.0 / 640 + inv2 * (17.0 / 14336 - inv2 * 31.0 / 18432))))
    return LN_GAMMA_HALF - (0.5 * math.log(a) + series)


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), for x below the mean a / (a + b)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, CF_MAX_TERMS + 1):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < CF_EPS:
            break
    return h


def _t_sf(t: float, df: float) -> float:
    if math.isnan(t) or math.isnan(df) or df <= 0.0:
        return math.nan
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    if t == 0.0:
        return 0.5
    z = abs(t) / math.sqrt(df)
    r = z * z if z < 1e150 else math.inf            # t^2 / df; x = df / (df + t^2) = 1 / (1 + r)
    if math.isinf(r):
        tail = 0.0
    else:
        a = 0.5 * df
        log_x, log_y = -math.log1p(r), math.log(r) - math.log1p(r)      # ln x, ln(1 - x), to rounding
        front = math.exp(a * log_x + 0.5 * log_y - _log_beta_half(a))
        if 1.0 / (1.0 + r) < (a + 1.0) / (a + 2.5):
            tail = 0.5 * front * _beta_cf(a, 0.5, 1.0 / (1.0 + r)) / a                 # I_x(a, 1/2) / 2
        else:
            tail = 0.5 * (1.0 - front * _beta_cf(0.5, a, r / (1.0 + r)) / 0.5)         # 1 - I_{1-x}(1/2, a)
    return tail if t > 0.0 else 1.0 - tail


def t_sf(x, df):
    """Student's t survival function ``P(T > x)`` (``scipy.stats.t.sf``;
    ``df = inf``: the normal's). For ``df <= CF_MAX_DF``:
    ``I_{df / (df + x^2)}(df / 2, 1 / 2) / 2`` for x > 0 by the incomplete
    beta function's continued fraction, with ``ln B(df / 2, 1 / 2)`` from
    lgamma or its asymptotic series, within 4e-14 of the exact value
    (scipy's ``stdtr`` within 1e-14, but off by up to 1e-8 near x = 0 for
    df = 1); above it, whose continued fraction needs O(sqrt(df)) terms and
    loses digits with them (df = 1e6: 4e-11), scipy.special's ``stdtr``.
    A summary's Satterthwaite df are below it but for large data sets."""
    x, df = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(df, dtype=float))
    big = np.isfinite(df) & (df > CF_MAX_DF)
    out = np.array([math.nan if b else _t_sf(float(a), float(d)) for a, d, b in
                    zip(x.ravel(), df.ravel(), big.ravel())], dtype=float).reshape(x.shape)
    if big.any():
        out[big] = _special().stdtr(df[big], -x[big])
    return out if x.ndim else float(out)


def t_ppf(q, df):
    """Student's t quantile (``scipy.stats.t.ppf``)."""
    return _special().stdtrit(df, q)


def f_sf(x, dfn, dfd):
    """The F distribution's survival function (``scipy.stats.f.sf``)."""
    return _special().fdtrc(dfn, dfd, np.maximum(x, 0.0))


def f_cdf(x, dfn, dfd):
    """The F distribution's CDF (``scipy.stats.f.cdf``)."""
    return _special().fdtr(dfn, dfd, np.maximum(x, 0.0))


def chi2_sf(x, df):
    """The chi-squared survival function (``scipy.stats.chi2.sf``)."""
    return _special().chdtrc(df, np.maximum(x, 0.0))


def gamma_sf(x, shape, scale):
    """The gamma survival function (``scipy.stats.gamma.sf(x, shape, scale=scale)``)."""
    return _special().gammaincc(shape, np.maximum(x, 0.0) / scale)


def beta_ppf(q, a, b):
    """The beta quantile (``scipy.stats.beta.ppf``)."""
    return _special().betaincinv(a, b, q)

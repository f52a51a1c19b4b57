"""Distribution functions of test statistics, from scipy.special's kernels.

scipy.stats computes these same functions with these same kernels
(``t.sf`` is ``stdtr``, ``f.sf`` is ``fdtrc``, ``chi2.sf`` is ``chdtrc``,
...), with the same results; importing scipy.stats costs about 0.4 s, which
a process would pay at its first confidence interval, anova or
variance-component table. Statistics below a distribution's support (a
likelihood ratio a rounding error below 0) get the survival function's
value at the support's end, 1, as scipy.stats gives them.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def norm_ppf(q):
    """The standard normal quantile (``scipy.stats.norm.ppf``)."""
    return special.ndtri(q)


def t_sf(x, df):
    """Student's t survival function (``scipy.stats.t.sf``; ``df = inf``: the normal's)."""
    return special.stdtr(df, -np.asarray(x, dtype=float))


def t_ppf(q, df):
    """Student's t quantile (``scipy.stats.t.ppf``)."""
    return special.stdtrit(df, q)


def f_sf(x, dfn, dfd):
    """The F distribution's survival function (``scipy.stats.f.sf``)."""
    return special.fdtrc(dfn, dfd, np.maximum(x, 0.0))


def f_cdf(x, dfn, dfd):
    """The F distribution's CDF (``scipy.stats.f.cdf``)."""
    return special.fdtr(dfn, dfd, np.maximum(x, 0.0))


def chi2_sf(x, df):
    """The chi-squared survival function (``scipy.stats.chi2.sf``)."""
    return special.chdtrc(df, np.maximum(x, 0.0))


def gamma_sf(x, shape, scale):
    """The gamma survival function (``scipy.stats.gamma.sf(x, shape, scale=scale)``)."""
    return special.gammaincc(shape, np.maximum(x, 0.0) / scale)


def beta_ppf(q, a, b):
    """The beta quantile (``scipy.stats.beta.ppf``)."""
    return special.betaincinv(a, b, q)

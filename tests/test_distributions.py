"""lmm_jax.distributions (the tests' p-values and quantiles from scipy.special) equals scipy.stats."""

import numpy as np
from scipy import stats

from lmm_jax import distributions as D


def test_each_function_equals_scipy_stats():
    x = np.array([-0.5, 0.0, 1e-3, 0.7, 2.5, 13.0, np.inf, np.nan])   # below the support, its end, tails
    q = np.array([1e-6, 0.025, 0.5, 0.975, 1 - 1e-9])
    for df in (1.0, 3.7, 28.4, np.inf):
        np.testing.assert_array_equal(D.t_sf(x, df), stats.t.sf(x, df))
        np.testing.assert_allclose(D.t_ppf(q, df), stats.t.ppf(q, df), rtol=1e-15)
    for dfn, dfd in ((1.0, 10.0), (2.5, 13.2), (4.0, 200.0)):
        np.testing.assert_array_equal(D.f_sf(x, dfn, dfd), stats.f.sf(x, dfn, dfd))
        np.testing.assert_array_equal(D.f_cdf(x, dfn, dfd), stats.f.cdf(x, dfn, dfd))
    for df in (1.0, 2.0, 7.5):
        np.testing.assert_array_equal(D.chi2_sf(x, df), stats.chi2.sf(x, df))
    np.testing.assert_allclose(D.gamma_sf(x, 2.3, 1.7), stats.gamma.sf(x, 2.3, scale=1.7), rtol=1e-15)
    np.testing.assert_array_equal(D.norm_ppf(q), stats.norm.ppf(q))
    np.testing.assert_allclose(D.beta_ppf(q, 3.0, 5.0), stats.beta.ppf(q, 3.0, 5.0), rtol=1e-14)

"""lmm_jax.distributions equals scipy.stats: the p-values and quantiles from scipy.special to the bit, Student's
t survival function (its own continued fraction up to df = 1,000) to 1e-13 and, where scipy's is off, closer to
the exact values."""

import numpy as np
from scipy import stats

from lmm_jax import distributions as D


def test_each_function_equals_scipy_stats():
    x = np.array([-0.5, 0.0, 1e-3, 0.7, 2.5, 13.0, np.inf, np.nan])   # below the support, its end, tails
    q = np.array([1e-6, 0.025, 0.5, 0.975, 1 - 1e-9])
    for df in (1.0, 3.7, 28.4, np.inf):
        np.testing.assert_allclose(D.t_sf(x, df), stats.t.sf(x, df), rtol=1e-13)
        np.testing.assert_allclose(D.t_ppf(q, df), stats.t.ppf(q, df), rtol=1e-15)
    for dfn, dfd in ((1.0, 10.0), (2.5, 13.2), (4.0, 200.0)):
        np.testing.assert_array_equal(D.f_sf(x, dfn, dfd), stats.f.sf(x, dfn, dfd))
        np.testing.assert_array_equal(D.f_cdf(x, dfn, dfd), stats.f.cdf(x, dfn, dfd))
    for df in (1.0, 2.0, 7.5):
        np.testing.assert_array_equal(D.chi2_sf(x, df), stats.chi2.sf(x, df))
    np.testing.assert_allclose(D.gamma_sf(x, 2.3, 1.7), stats.gamma.sf(x, 2.3, scale=1.7), rtol=1e-15)
    np.testing.assert_array_equal(D.norm_ppf(q), stats.norm.ppf(q))
    np.testing.assert_allclose(D.beta_ppf(q, 3.0, 5.0), stats.beta.ppf(q, 3.0, 5.0), rtol=1e-14)


# P(T > t) at 40 digits (mpmath's regularized incomplete beta function): (df, t, value)
T_SF_EXACT = [(1.0, 1e-8, 0.49999999681690113816), (1.0, 1e-12, 0.49999999999968169011),
              (0.5, 3.0, 0.1836540779929717241), (17.0, 2.113, 0.024846082680050572551),
              (120.5, 6.0, 1.0652275168651392713e-8), (4999.0, 3.1, 0.00097298503032370451662),
              (2.0, 40.0, 0.00031220733609237031875), (30.0, 12.0, 2.7900927075996280315e-13)]


def test_t_sf_to_the_exact_value_and_to_scipy_over_df_and_tails():
    for df, t, value in T_SF_EXACT:
        assert abs(D.t_sf(t, df) - value) <= 1e-13 * value, (df, t)
        assert abs(D.t_sf(-t, df) - (1.0 - value)) <= 1e-15, (df, t)
    # scipy's stdtr is accurate away from x = 0 with df = 1: the two within 1e-13 over a grid of df, both sides of
    # the switch to it (D.CF_MAX_DF) and of ln B(df / 2, 1 / 2)'s asymptotic series (D.SERIES_FROM)
    dfs = np.array([0.2, 1.0, 2.5, 7.0, 29.99, 30.0, 30.01, 64.3, 333.3, 999.9, 1000.0, 1000.1, 1e5, 1e9])
    ts = np.array([1e-3, 0.3, 1.0, 1.96, 3.0, 6.5, 15.0, 60.0, 1e4])
    T, DF = np.meshgrid(np.concatenate([-ts, ts]), dfs)
    want = stats.t.sf(T, DF)
    got = D.t_sf(T, DF)
    ok = want > 1e-300
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-13)
    assert np.all(got[~ok] < 1e-290)
    assert isinstance(D.t_sf(1.0, 3.0), float) and D.t_sf(np.zeros((2, 3)), 4.0).shape == (2, 3)
    assert np.isnan(D.t_sf(1.0, 0.0)) and np.isnan(D.t_sf(1.0, -2.0)) and D.t_sf(np.inf, 3.0) == 0.0

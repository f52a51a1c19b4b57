"""Batched GLMMs: simulate, fit_batch against single fits, failed columns, and the parametric bootstrap
against lme4's bootMer (benchmarks/bench_glmm_r.R's run: cbpp, 1000 replicates, seed 20261122)."""

from __future__ import annotations

import threading
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.runtime.scope import float64
from lmm_jax import GLMM
from lmm_jax.core.family import make_family
from lmm_jax.glmm.batch import FIRST_ITER, failure_reasons, fit_rows_kernel, prepare_fits, response_checks

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
# lme4 1.1-31 bootMer(fit, function(x) c(fixef(x), getME(x, "theta")), nsim = 1000, seed = 20261122) of the cbpp
# fit: 2.5% and 97.5% quantiles of the replicates (theta of (1 | herd) is its SD)
BOOTMER = {"(Intercept)": (-1.88154599086577, -0.962891563977687), "period2": (-1.62402700611541, -0.44182480651886),
           "period3": (-1.84150606480782, -0.561512235992561), "period4": (-2.52862903567678, -0.944300813099882),
           "sd_(Intercept)|herd": (0.158915723797454, 0.953241146698647)}


@pytest.fixture(scope="module")
def cbpp_fit() -> lmm_jax.GLMMResult:
    return GLMM(CBPP, lmm_jax.datasets.load("cbpp")).fit()


def test_simulate_draws_proportions_of_the_trials_reproducibly(cbpp_fit):
    r = cbpp_fit
    Y = np.asarray(r.simulate(600, key=3))
    size = r.prior_weights
    assert Y.shape == (56, 600)
    k = Y * size[:, None]
    np.testing.assert_allclose(k, np.round(k), atol=1e-12)            # whole numbers of successes
    assert np.all((Y >= 0) & (Y <= 1))
    # replicate i comes from fold_in(key, i) alone: the same columns for any n; lmm_jax.simulate is the method
    np.testing.assert_array_equal(np.asarray(lmm_jax.simulate(r, 5, 3)), Y[:, :5])
    # use_u keeps the fit's modes: E[y] = fitted, Var[y] = mu (1 - mu) / size
    U = np.asarray(r.simulate(600, key=4, use_u=True))
    mu = r.fitted
    se = np.sqrt(mu * (1 - mu) / size / 600)
    assert np.all(np.abs(U.mean(axis=1) - mu) < 5 * se + 1e-12)
    # new random effects add the herd variance: ~ (mu (1 - mu) sd_herd)^2 = 0.0034 on top of the binomial 0.0100
    assert 1.2 < np.mean(Y.var(axis=1)) / np.mean(U.var(axis=1)) < 1.5
    with pytest.raises(ValueError, match="own rows"):
        lmm_jax.simulate(r, 5, 3, params={"beta": [0, 0, 0, 0]})


@pytest.fixture(scope="module")
def batch(cbpp_fit):
    """Four simulated responses and their batched fit (one compiled shape for this file's batches)."""
    Y = np.array(cbpp_fit.simulate(4, key=11))
    return Y, cbpp_fit.model.fit_batch(Y)


def test_fit_batch_equals_single_fits_and_their_wald_tests(batch):
    Y, b = batch
    d = lmm_jax.datasets.load("cbpp")
    table = b.coef_table()
    for i in range(2):
        one = GLMM("y ~ period + (1 | herd)", d.assign(y=Y[:, i]), weights=d["size"].to_numpy()).fit()
        np.testing.assert_allclose(b.theta[i], one.theta, atol=1e-6)
        np.testing.assert_allclose(b.beta[i], one.beta, atol=1e-6)
        np.testing.assert_allclose(b.objective[i], one.objective, atol=1e-6)
        rows = table[table.fit == i].set_index("term")
        np.testing.assert_allclose(rows["std_error"], one.std_errors, rtol=1e-6)
        np.testing.assert_allclose(rows["p"], one.coef_table["Pr(>|z|)"], rtol=1e-6)
        np.testing.assert_allclose(rows[["lower", "upper"]].to_numpy(), one.confint().to_numpy(), atol=1e-6)
    assert b.ok.all() and b.table["failure"].eq("").all()


def test_columns_without_a_finite_optimum_fail_with_a_reason(cbpp_fit, batch):
    Y, ok = batch
    Y = Y.copy()
    Y[:, 0], Y[:, 1], Y[0, 3] = 0.0, 1.0, np.nan
    b = cbpp_fit.model.fit_batch(Y)
    assert list(b.failed) == [True, True, False, True]
    assert "no successes" in b.failure[0] and "no failures" in b.failure[1] and "NaN" in b.failure[3]
    assert np.isnan(b.beta[[0, 1, 3]]).all() and not b.converged[[0, 1, 3]].any()
    np.testing.assert_allclose(b.beta[2], ok.beta[2], atol=1e-10)
    # poisson: all-zero counts; values the family does not allow
    Yp = jnp.asarray([[0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [1.5, 0.0, 2.0]])
    reasons = failure_reasons(response_checks(Yp, jnp.ones(3), make_family("poisson")), make_family("poisson"))
    assert "every count is 0" in reasons[0] and reasons[1] == "" and "whole numbers" in reasons[2]


def test_bootstrap_is_reproducible_and_near_bootmer(cbpp_fit):
    r = cbpp_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.ConvergenceWarning)
        boot = r.bootstrap(1000, key=20261122)
        again = r.bootstrap(1000, key=20261122)
    pd.testing.assert_frame_equal(boot.table, again.table)
    assert boot.chunk_size == 16 and len(boot) == 1000 and boot.n_failed == 0
    # replicate i is the same whatever the chunks: the first 40 in chunks of 8 (their stragglers, gathered
    # from every chunk, continue in calls of 8) equal the first 40 of the default chunks of 16
    late = np.flatnonzero(boot.replicates.iterations[:40] > FIRST_ITER)
    assert late.size, "no replicate among the first 40 needs the second pass: pick another key"
    small = r.bootstrap(40, key=20261122, chunk_size=8)
    pd.testing.assert_frame_equal(small.table, boot.table.iloc[:40], rtol=1e-9)
    # the bootstrap prepares its fits (on a second thread, beside the draws) under the key of the call it makes
    builds = fit_rows_kernel._cache_size()
    m = r.model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmm_jax.runtime.kernel, "SPARE_CORES", True)          # the suite's workers have none
        with float64():                                                   # as inside lmm_jax's calls
            prepare_fits(16, m.data, m.family, m.structure, 1, after=threading.Event())
    assert fit_rows_kernel._cache_size() == builds
    ci = boot.confint()
    assert list(ci.index) == ["sd_(Intercept)|herd", "(Intercept)", "period2", "period3", "period4"]
    # the replicates are single fits: the first equals GLMM.fit of its simulated response
    Y = np.array(r.simulate(4, key=20261122))
    np.testing.assert_allclose(r.model.fit_batch(Y).beta, boot.replicates.beta[:4], atol=1e-6)
    # percentile intervals within Monte Carlo error of bootMer's (different random streams): the 2.5% and
    # 97.5% quantiles of 1000 replicates have SE sqrt(q (1 - q) / n) / f(x_q) ~ 0.005 / f(x_q), about 0.1
    # of the replicates' SD here; two independent runs differ by at most ~4 x 0.1 x SD
    sd = boot.replicates.estimates().std()
    for name, (lo, hi) in BOOTMER.items():
        assert abs(ci.loc[name, "lower"] - lo) < 0.4 * sd[name], name
        assert abs(ci.loc[name, "upper"] - hi) < 0.4 * sd[name], name
    wald = r.confint()
    assert ((ci.loc[wald.index, "lower"] - wald.iloc[:, 0]).abs() < 0.5 * sd[wald.index]).all()


def test_power_of_a_planned_binomial_design_counts_the_batched_z_tests(cbpp_fit, batch):
    r = cbpp_fit
    design = lmm_jax.datasets.load("cbpp").drop(columns="incidence")       # the response is simulated
    params = {"beta": dict(zip(r.design.fixef_names, r.beta)), "sd_(Intercept)|herd": float(r.theta[0])}
    res = lmm_jax.power(("y ~ period + (1 | herd)", design), "period4", n=4, key=11, params=params,
                        family="binomial", weights="size")
    # the same draws as the fit's own simulate (same parameters, key and rows), the same fits and z tests
    Y, b = batch
    expected = b.coef_table().query("term == 'period4'")["p"].to_numpy()
    np.testing.assert_allclose(res.p_values, expected, rtol=1e-6)
    assert res.successes == int(np.sum(expected < 0.05)) and res.n == 4 and res.n_failed == 0
    curve = lmm_jax.power_curve(("y ~ period + (1 | herd)", design), "period4", along="herd", sizes=[15], n=4,
                                key=0, params=params, family="binomial", weights="size")
    assert curve.loc[0, "n_rows"] == 56 and 0 <= curve.loc[0, "power"] <= 1
    with pytest.raises(lmm_jax.InferenceError, match="is not one of"):
        lmm_jax.power(("y ~ period + (1 | herd)", design), "period9", n=4, params=params, family="binomial",
                      weights="size")

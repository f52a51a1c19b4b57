"""Simulation, batched fits and the parametric bootstrap.

Fast paths against slow ones: batched fits against one-at-a-time fits,
chunked against unchunked, one compilation per shape, and bootstrap
percentile intervals against lme4's ``bootMer`` (2000 replicates each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.batched.batch import _fit_stacked
from lmm_jax.batched.bootstrap import _bootstrap_chunk
from lmm_jax.errors import ConvergenceWarning

from tests.helpers import count_compilations, load_data, load_reference, run_python

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def ingot_fit():
    return lmm_jax.fit("pres ~ metal + (1|ingot)", load_data("ingot"))


# -- simulate -----------------------------------------------------------------------------------
def test_simulate_shape_key_and_chunks(ingot_fit):
    Y = np.asarray(lmm_jax.simulate(ingot_fit, 50, key=7))
    assert Y.shape == (ingot_fit.nobs, 50)
    np.testing.assert_array_equal(Y, np.asarray(lmm_jax.simulate(ingot_fit, 50, key=jax.random.PRNGKey(7))))
    assert not np.allclose(Y, np.asarray(lmm_jax.simulate(ingot_fit, 50, key=8)))
    chunks = list(lmm_jax.simulate(ingot_fit, 50, key=7, chunk_size=20))
    assert [c.shape[1] for c in chunks] == [20, 20, 10]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), Y, rtol=0, atol=1e-12)
    # replicate i does not depend on n
    np.testing.assert_allclose(np.asarray(lmm_jax.simulate(ingot_fit, 5, key=7)), Y[:, :5], rtol=0, atol=1e-12)


def test_simulate_moments_match_the_model(ingot_fit):
    """Mean X beta; covariance sigma^2 (I + Z Lambda Lambda' Z') checked
    through the within-ingot covariance and the total variance."""
    f = ingot_fit
    Y = np.asarray(lmm_jax.simulate(f, 20000, key=1))
    mean = f.design.X @ f.beta
    var_b, var_e = f.sigma ** 2 * f.theta[0] ** 2, f.sigma ** 2
    se_mean = np.sqrt((var_b + var_e) / Y.shape[1])
    assert np.max(np.abs(Y.mean(axis=1) - mean) / se_mean) < 5
    codes = f.design.terms[0].codes
    i, j = np.flatnonzero(codes == codes[0])[:2]
    C = np.cov(Y[[i, j, np.flatnonzero(codes != codes[0])[0]]])
    tol = 5 * np.sqrt(2 / Y.shape[1]) * (var_b + var_e)        # sd of a sample covariance, 5 sigma
    assert abs(C[0, 1] - var_b) < tol and abs(C[0, 0] - (var_b + var_e)) < tol and abs(C[0, 2]) < tol


def test_simulate_checks_params(ingot_fit):
    with pytest.raises(ValueError, match="beta"):
        lmm_jax.simulate(ingot_fit, 3, 0, params=dict(beta=[1.0], theta=[1.0], sigma=1.0))
    with pytest.raises(ValueError, match="missing"):
        lmm_jax.simulate(ingot_fit, 3, 0, params=dict(beta=[1.0, 2, 3]))
    with pytest.raises(ValueError, match="params"):
        lmm_jax.simulate(ingot_fit.model, 3, 0)
    with pytest.raises(TypeError, match="key"):
        lmm_jax.simulate(ingot_fit, 3, "seed")


# -- batched fits -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["newton", "bfgs"])
def test_fit_batch_equals_one_at_a_time(sleepstudy_fit, method):
    """Batching changes nothing: with ``method="newton"`` (the single fit's
    optimiser) the batched fits equal one-at-a-time fits to 1e-8. The default
    BFGS reaches the same optimum: objective to 1e-10 relative; theta to the
    precision the objective determines it (a change of 1e-6 relative moves
    the REML criterion by ~1e-11, below both optimisers' stopping rule)."""
    data = load_data("sleepstudy")
    Y = np.asarray(lmm_jax.simulate(sleepstudy_fit, 4, key=11))
    batch = sleepstudy_fit.model.fit_batch(Y, method=method)
    assert batch.converged.all()
    theta_rtol = 1e-8 if method == "newton" else 1e-5
    for i in range(Y.shape[1]):
        one = lmm_jax.fit(SLEEP, data.assign(Reaction=Y[:, i]))
        np.testing.assert_allclose(batch.theta[i], one.theta, rtol=theta_rtol, atol=1e-10)
        np.testing.assert_allclose(batch.beta[i], one.beta, rtol=1e-8)
        np.testing.assert_allclose(batch.sigma[i], one.sigma, rtol=theta_rtol)
        np.testing.assert_allclose(batch.objective[i], one.objective, rtol=1e-10)
    tab = batch.table
    assert list(tab.columns[4:11]) == ["failure", "sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject",
                                       "sigma", "(Intercept)", "Days"]
    assert (tab["failure"] == "").all() and batch.n_failed == 0
    # the model's own response gives the model's own fit (4 copies of it: the batch shape compiled above)
    own = sleepstudy_fit.model.fit_batch(np.tile(sleepstudy_fit.design.y[:, None], (1, 4)), method=method)
    np.testing.assert_allclose(own.theta, np.tile(sleepstudy_fit.theta, (4, 1)), rtol=theta_rtol)
    with pytest.raises(ValueError, match="n_obs"):
        sleepstudy_fit.model.fit_batch(Y[:-1])


def test_fit_batch_flags_responses_that_cannot_be_fitted(sleepstudy_fit):
    """A constant column (lmm_jax.fit raises DataError) and one in the column
    space of X (sigma would be 0: the fit reported 3.8e-15 and converged) are
    failed fits with their reason and NaN estimates; the other columns are
    fitted as alone. Four columns: the shape of test_fit_batch_equals_one_at_a_time."""
    data = load_data("sleepstudy")
    Y = np.array(lmm_jax.simulate(sleepstudy_fit, 4, key=11))
    Y[:, 1] = 250.0
    Y[:, 3] = 3.0 + 2.0 * data["Days"].to_numpy()
    with pytest.raises(lmm_jax.DataError, match="constant"):
        lmm_jax.fit(SLEEP, data.assign(Reaction=Y[:, 1]))
    batch = sleepstudy_fit.model.fit_batch(Y)
    assert batch.n_failed == 2 and batch.n_nonconverged == 0
    assert list(batch.failed) == [False, True, False, True]
    assert batch.failure[1].startswith("the response is constant (every value is 250.0)")
    assert batch.failure[3].startswith("the response is a linear combination of the fixed-effects columns")
    assert np.isnan(batch.sigma[[1, 3]]).all() and np.isnan(batch.theta[[1, 3]]).all()
    assert np.isnan(batch.beta[[1, 3]]).all() and np.isnan(batch.objective[[1, 3]]).all()
    assert not batch.converged[[1, 3]].any() and list(batch.ok) == [True, False, True, False]
    assert list(batch.table["failure"]) == list(batch.failure)
    coefs = batch.coef_table()
    failed = coefs["fit"].isin([1, 3])
    assert coefs.loc[failed, ["estimate", "std_error", "df", "p", "lower"]].isna().all().all()
    assert np.isfinite(coefs.loc[~failed, ["estimate", "std_error", "df", "p", "lower"]].to_numpy()).all()
    for i in (0, 2):
        one = lmm_jax.fit(SLEEP, data.assign(Reaction=Y[:, i]))
        np.testing.assert_allclose(batch.theta[i], one.theta, rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(batch.beta[i], one.beta, rtol=1e-8)
        np.testing.assert_allclose(batch.objective[i], one.objective, rtol=1e-10)
        np.testing.assert_allclose(coefs[coefs["fit"] == i]["df"], one.coefs()["df"], rtol=1e-4)
    Y[5, 2] = np.nan
    assert "1 infinite or NaN value(s)" in sleepstudy_fit.model.fit_batch(Y).failure[2]


def test_fit_many_one_compile_per_shape():
    data = load_data("sleepstudy")
    subjects = data["Subject"].astype(str).unique()
    specs, rng = [], np.random.default_rng(0)
    for n_subj in (6, 6, 9, 6, 9):
        d = data[data["Subject"].astype(str).isin(rng.choice(subjects, n_subj, replace=False))]
        specs.append(("Reaction ~ Days + (1 | Subject)", d.reset_index(drop=True)))
    lmm_jax.clear_caches()         # the compiled-code guard then cannot empty the caches while we count
    before = _fit_stacked._cache_size()
    out = lmm_jax.fit_many(specs)
    # 6 and 9 subjects (54 and 81 rows) pad to one bucket of 32 levels: one group, one compilation
    assert _fit_stacked._cache_size() - before == 1
    for (formula, d), r in zip(specs, out):
        one = lmm_jax.fit(formula, d)
        # BFGS (fit_many's default) against Newton: the same optimum (see test_fit_batch_equals_one_at_a_time)
        np.testing.assert_allclose(r.theta[0], one.theta, rtol=1e-5)
        np.testing.assert_allclose(r.beta[0], one.beta, rtol=1e-6)
        np.testing.assert_allclose(r.objective[0], one.objective, rtol=1e-10)
        # t tests from the padded, stacked products: the single fit's (Satterthwaite df of Days: 53 and 80)
        coefs, single = r.coef_table().set_index("term"), one.coefs()
        assert list(coefs["fit"]) == [0, 0] and list(coefs.index) == list(single.index)
        for c, rtol in (("std_error", 1e-6), ("df", 1e-4), ("p", 1e-3), ("lower", 1e-6), ("upper", 1e-6)):
            np.testing.assert_allclose(coefs[c], single[c], rtol=rtol, err_msg=c)
    # a response in the column space of X: a failed fit with its reason, the others unchanged (same shapes)
    formula, d = specs[2]
    specs[2] = (formula, d.assign(Reaction=3.0 + 2.0 * d["Days"]))
    again = lmm_jax.fit_many(specs)
    assert _fit_stacked._cache_size() - before == 1
    assert again[2].n_failed == 1 and np.isnan(again[2].sigma[0]) and not again[2].converged[0]
    assert again[2].failure[0].startswith("the response is a linear combination of the fixed-effects columns")
    for i in (0, 1, 3, 4):
        assert again[i].n_failed == 0
        np.testing.assert_array_equal(again[i].theta, out[i].theta)


# -- bootstrap: reproducibility, chunking, compilation --------------------------------------------
def test_bootstrap_key_chunking_and_trace_count(ingot_fit):
    b1 = ingot_fit.bootstrap(96, key=3, chunk_size=96)
    assert len(b1) == 96 and b1.chunk_size == 96
    with pytest.raises(lmm_jax.InferenceError, match="no covariance of the fixed effects"):
        b1.replicates.coef_table()       # the bootstrap's refits compute no vcov: only their estimates
    # same key -> the same replicates, bit for bit
    b1again = ingot_fit.bootstrap(96, key=jax.random.PRNGKey(3), chunk_size=96)
    np.testing.assert_array_equal(b1.replicates.theta, b1again.replicates.theta)
    # chunks of 40 (a different batch width for the products' matrix product): the same fits
    lmm_jax.clear_caches()         # the compiled-code guard then cannot empty the caches while we count
    before = _bootstrap_chunk._cache_size()
    b2 = ingot_fit.bootstrap(96, key=3, chunk_size=40)
    b3 = ingot_fit.bootstrap(40, key=3, chunk_size=40)
    b4 = ingot_fit.bootstrap(120, key=3, chunk_size=40)
    assert _bootstrap_chunk._cache_size() - before == 1          # one compile for the chunk shape 40
    ok = b1.replicates.converged & b2.replicates.converged
    assert ok.all()
    np.testing.assert_allclose(b2.replicates.objective, b1.replicates.objective, rtol=1e-12)
    # theta agrees to the optimiser's tolerance (Newton decrement 1e-11: |dtheta| ~ 1e-6)
    np.testing.assert_allclose(b2.replicates.theta, b1.replicates.theta, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b2.replicates.beta, b1.replicates.beta, rtol=1e-8)
    # replicate i is replicate i, whatever n
    np.testing.assert_array_equal(b3.replicates.objective, b2.replicates.objective[:40])
    np.testing.assert_array_equal(b4.replicates.objective[:96], b2.replicates.objective)
    assert not np.allclose(ingot_fit.bootstrap(40, key=4, chunk_size=40).replicates.objective,
                           b3.replicates.objective)


def test_default_chunks_are_powers_of_two_and_capped():
    """Chunks are powers of two, so that other numbers of replicates reuse a compiled chunk:
    the smallest >= n (at least 8), under the caps of 2,048 replicates on the CPU (XLA:CPU
    stalled on wider vmaps), none on a GPU, and 128 MB of simulated responses everywhere;
    a multiple of the device count."""
    from lmm_jax.batched.bootstrap import CHUNK_MAX, CHUNK_MAX_ENTRIES, default_chunk_size

    assert default_chunk_size(301, 180) == default_chunk_size(302, 180) == 512
    assert default_chunk_size(512, 180) == 512 and default_chunk_size(513, 180) == 1024
    assert [default_chunk_size(n, 180) for n in (1, 5, 8, 9)] == [8, 8, 8, 16]
    assert default_chunk_size(10_000, 180) == CHUNK_MAX == 2_048                    # 5 x 2,048
    assert default_chunk_size(10_000, 180, platform="gpu") == 16_384                # one chunk on a GPU
    assert CHUNK_MAX_ENTRIES // 180 == 93_206                                       # responses of 180 rows
    assert default_chunk_size(100_000, 180, platform="gpu") == 65_536               # 2 x 65,536
    assert default_chunk_size(10**6, 10**6, platform="gpu") == 16                   # 16 <= 2^24 / 10^6 < 32
    assert default_chunk_size(3, 10**9) == 1
    assert default_chunk_size(10_000, 180, n_dev=3) == 2_049
    for n in (1, 999, 2_049, 10_001, 123_457):
        c = default_chunk_size(n, 180)
        assert c <= CHUNK_MAX and c & (c - 1) == 0 and (c >= n or c == CHUNK_MAX)


def test_bootstrap_sizes_in_one_bucket_share_a_compiled_chunk(sleepstudy_fit):
    """A chunk shape compiles once per model structure (sleepstudy's chunk of 512: 30 s on the
    2-core VM), and every number of replicates in its bucket reuses it: 20 and 25 (the CLI
    test's) run the chunk of 32 and the second traces and compiles nothing. Replicate i is the
    same whatever n."""
    lmm_jax.clear_caches()         # the compiled-code guard then cannot empty the caches while we count
    b20 = sleepstudy_fit.bootstrap(20, key=5)
    with count_compilations() as compiled:
        b25 = sleepstudy_fit.bootstrap(25, key=5)
    assert compiled == {"trace": 0, "compile": 0}
    assert b20.chunk_size == b25.chunk_size == 32 and (len(b20), len(b25)) == (20, 25)
    for name in ("theta", "beta", "sigma", "objective", "iterations"):
        np.testing.assert_array_equal(getattr(b25.replicates, name)[:20], getattr(b20.replicates, name))


def test_bootstrap_replicates_are_refits(ingot_fit):
    """Each replicate equals a one-at-a-time fit of its simulated response
    (warm-started at the fitted theta, as the bootstrap is)."""
    boot = ingot_fit.bootstrap(40, key=3, chunk_size=40)
    Y = np.asarray(lmm_jax.simulate(ingot_fit, 3, key=3))
    data = ingot_fit.design.data
    for i in range(3):
        one = lmm_jax.LMM("pres ~ metal + (1|ingot)", data.assign(pres=Y[:, i])).fit(start=ingot_fit.theta)
        np.testing.assert_allclose(boot.replicates.objective[i], one.objective, rtol=1e-10)
        np.testing.assert_allclose(boot.replicates.beta[i], one.beta, rtol=1e-8)


def test_failed_and_nonconverged_replicates_are_counted(ingot_fit):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        boot = ingot_fit.bootstrap(40, key=3, chunk_size=40, max_iter=1)
    assert boot.n_nonconverged == int(np.sum(~boot.replicates.converged)) > 0
    assert len(boot.table) == 40 and (~boot.table["converged"]).sum() == boot.n_nonconverged
    p = dict(beta=[np.nan, 0.0, 0.0], theta=ingot_fit.theta, sigma=ingot_fit.sigma)
    with pytest.warns(ConvergenceWarning, match="40 of 40 bootstrap replicates failed"):
        bad = ingot_fit.bootstrap(40, key=3, chunk_size=40, params=p)
    assert bad.n_failed == 40 and len(bad.table) == 40
    with pytest.raises(ValueError, match="no usable replicates"):
        bad.confint()


# -- bootstrap statistics (bootMer(FUN=)) ----------------------------------------------------------
def days_t(e):
    """t statistic of Days from one replicate's estimates."""
    return e.beta[1] / jnp.sqrt(e.vcov[1, 1])


def days_tree(e):
    return dict(t=days_t(e), beta=e.beta, theta0=e.theta[0], positive=e.sigma > 0)


def test_bootstrap_statistic_is_the_estimates_of_each_refit(sleepstudy_fit):
    """bootstrap(statistic=f) gives f of each replicate's estimates: equal to
    make_estimates at the replicate's theta on its simulated response (the
    same draws, lmm_jax.simulate), for a scalar and for a pytree output; t0
    is f at the fit. 20 replicates: the chunk of 32 that
    test_bootstrap_sizes_in_one_bucket_share_a_compiled_chunk compiles."""
    fit, m = sleepstudy_fit, sleepstudy_fit.model
    boot = fit.bootstrap(20, key=5, statistic=days_t)
    assert boot.statistic.shape == (20,) and boot.n_failed == 0
    est = lmm_jax.make_estimates(m, reml=True, data="argument")
    Y = lmm_jax.simulate(fit, 20, key=5)
    with jax.enable_x64(True):
        one = jax.jit(lambda theta, y: days_t(est(theta, m.cross_products(y))))     # one program, not op by op
        by_hand = [float(one(jnp.asarray(boot.replicates.theta[i]), Y[:, i])) for i in range(20)]
    np.testing.assert_allclose(boot.statistic, by_hand, rtol=1e-10)
    assert float(boot.statistic_estimate) == pytest.approx(fit.coef_table.loc["Days", "t"], rel=1e-10)
    ci = boot.statistic_confint(0.9)
    assert list(ci.index) == ["statistic"]
    np.testing.assert_allclose(ci.loc["statistic"], np.quantile(boot.statistic, [0.05, 0.95]), rtol=1e-12)
    # the same function again: nothing compiles; the refits do not depend on the statistic
    with count_compilations() as compiled:
        again = fit.bootstrap(20, key=5, statistic=days_t)
    assert compiled["compile"] == 0
    np.testing.assert_array_equal(again.statistic, boot.statistic)
    np.testing.assert_array_equal(again.replicates.theta, fit.bootstrap(20, key=5).replicates.theta)

    tree = fit.bootstrap(20, key=5, statistic=days_tree)
    assert tree.statistic["beta"].shape == (20, 2) and tree.statistic["positive"].dtype == np.float64
    np.testing.assert_allclose(tree.statistic["t"], boot.statistic, rtol=1e-12)
    np.testing.assert_allclose(tree.statistic["beta"], boot.replicates.beta, rtol=1e-12)
    np.testing.assert_array_equal(tree.statistic["theta0"], boot.replicates.theta[:, 0])
    tab = tree.statistic_table
    assert list(tab.columns) == ["beta[0]", "beta[1]", "positive", "t", "theta0"]
    assert (tab["positive"] == 1.0).all()
    basic = tree.statistic_confint(method="basic")
    pct = tree.statistic_confint()
    np.testing.assert_allclose(basic.loc["beta[1]", "upper"] + pct.loc["beta[1]", "lower"], 2 * fit.beta[1],
                               rtol=1e-12)


def test_bootstrap_statistic_of_failed_replicates_is_nan(sleepstudy_fit):
    """A replicate that failed (here: NaN fixed effects to simulate at) has a
    NaN statistic, also where f would be finite (theta, sigma > 0)."""
    fit = sleepstudy_fit
    p = dict(beta=[np.nan, 0.0], theta=fit.theta, sigma=fit.sigma)
    with pytest.warns(ConvergenceWarning, match="20 of 20 bootstrap replicates failed"):
        bad = fit.bootstrap(20, key=5, params=p, statistic=days_tree)
    assert all(np.isnan(v).all() for v in bad.statistic.values())
    with pytest.raises(ValueError, match="no usable replicates"):
        bad.statistic_confint()


def test_bootstrap_statistic_is_checked_before_the_refits(sleepstudy_fit):
    with pytest.raises(TypeError, match="could not be traced on an lmm_jax.Estimates"):
        sleepstudy_fit.bootstrap(20, key=5, statistic=lambda e: float(e.sigma))
    with pytest.raises(TypeError, match="function of one replicate"):
        sleepstudy_fit.bootstrap(20, key=5, statistic="t")
    with pytest.raises(TypeError, match="returned no arrays"):
        sleepstudy_fit.bootstrap(20, key=5, statistic=lambda e: None)
    with pytest.raises(ValueError, match="has no statistic"):
        sleepstudy_fit.bootstrap(20, key=5).statistic_confint()


# -- bootstrap intervals against lme4 ------------------------------------------------------------
def _quantile_se(v: np.ndarray, prob: float) -> float:
    """Monte Carlo SE of the prob-quantile of R draws: the rank of the
    sample quantile has SD sqrt(R p (1-p)), so the SE is half the spread of
    the order statistics that many ranks either side."""
    v = np.sort(v[np.isfinite(v)])
    R = v.size
    k, h = int(round(prob * R)), int(np.ceil(np.sqrt(R * prob * (1 - prob))))
    return float((v[min(k + h, R - 1)] - v[max(k - h, 0)]) / 2)


@pytest.fixture(scope="module")
def boot2000(sleepstudy_fit, ingot_fit):
    cache = {}

    def get(case):
        if case not in cache:
            fit = sleepstudy_fit if case == "sleepstudy_reml" else ingot_fit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                # ingot in chunks of 40: the chunk shape the chunking tests compile already
                cache[case] = fit.bootstrap(2000, key=20261122, chunk_size=None if case == "sleepstudy_reml" else 40)
        return cache[case]

    return get


# lme4 endpoints we do not compare, and why: for ingot 4.2% of replicates are
# singular (exactly, see test_ingot_singular_fraction_is_exact), so the 2.5%
# quantile of the SD is 0; lme4's bootMer refits (``refit`` warm-started at the
# fitted theta) often stop at a small positive theta instead of the boundary
# optimum 0 (checked by hand: a replicate whose lmer fit is singular, REML
# criterion equal to ours, refits to theta 0.127), which moves its quantile to 0.40.
BOUNDARY_ENDPOINTS = {"sleepstudy_reml": set(), "ingot_reml": {("sd_(Intercept)|ingot", 0.025)}}


@pytest.mark.parametrize("case", ["sleepstudy_reml", "ingot_reml"])
def test_percentile_intervals_match_lme4(case, boot2000):
    """Our 2000-replicate percentile interval and lme4's (another 2000
    replicates) are two Monte Carlo estimates of the same quantiles: each
    endpoint may differ by sqrt(2) x its Monte Carlo SE (estimated from our
    replicates); we allow 4 of those (a 4-sigma band per endpoint)."""
    ref = load_reference(case)["confint_boot_perc_2000"]
    boot = boot2000(case)
    assert boot.n_failed == 0 and boot.n_nonconverged <= 2
    ci = boot.confint(0.95)
    assert list(ci.index) == ref["names"]
    est = boot.replicates.estimates()[boot.replicates.ok]
    skipped = set()
    for name, lo, hi in zip(ref["names"], ref["lower"], ref["upper"]):
        v = est[name].to_numpy()
        for ours, theirs, prob in ((ci.loc[name, "lower"], lo, 0.025), (ci.loc[name, "upper"], hi, 0.975)):
            if name.startswith("sd_") and ours == 0.0:
                skipped.add((name, prob))
                continue
            tol = 4 * np.sqrt(2) * _quantile_se(v, prob)
            assert abs(ours - theirs) < tol, (name, prob, ours, theirs, tol)
    assert skipped == BOUNDARY_ENDPOINTS[case]
    shortest, basic = boot.confint(method="shortest"), boot.confint(method="basic")
    width = ci["upper"] - ci["lower"]
    assert ((shortest["upper"] - shortest["lower"]) <= width + 1e-12).all()
    np.testing.assert_allclose(basic["upper"] + ci["lower"], 2 * boot.estimate.to_numpy(), rtol=1e-12)


def test_ingot_singular_fraction_is_exact(boot2000, ingot_fit):
    """ingot is balanced (7 ingots x 3 metals, one observation each): the
    REML fit is singular exactly when the ingot mean square is below the
    residual one, F = MS_ingot / MS_res ~ (1 + 3 theta^2) F(6, 12). The
    fraction of singular replicates must match P(F(6,12) < 1/(1 + 3 theta^2))
    within 4 binomial SEs."""
    from scipy import stats

    boot = boot2000("ingot_reml")
    p = stats.f.cdf(1.0 / (1.0 + 3.0 * ingot_fit.theta[0] ** 2), 6, 12)
    frac = float(np.mean(boot.replicates.singular))
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / len(boot)), (frac, p)


# -- a crossed design whose second block passes 64 columns --------------------------------------------
_CROSSED_SCRIPT = """
import json, numpy as np, pandas as pd, lmm_jax
lmm_jax.runtime.configure()
rng = np.random.default_rng(5)
n, n_g, n_h = 2000, 200, 100
g, h, x = rng.integers(0, n_g, n), rng.integers(0, n_h, n), rng.normal(size=n)
y = 1 + 0.5 * x + rng.normal(size=n_g)[g] + 0.7 * rng.normal(size=n_h)[h] + rng.normal(size=n)
data = pd.DataFrame(dict(y=y, x=x, g=g.astype(str), h=h.astype(str)))
formula = "y ~ x + (1 | g) + (1 | h)"
fit = lmm_jax.fit(formula, data)
boot = fit.bootstrap(8, key=3).replicates
Y = np.asarray(lmm_jax.simulate(fit, 2, key=3))
ones = [lmm_jax.LMM(formula, data.assign(y=Y[:, i])).fit(start=fit.theta) for i in range(2)]
print(json.dumps(dict(ms=fit.model.structure.ms, converged=boot.converged.tolist(),
                      boot=[dict(objective=float(boot.objective[i]), theta=boot.theta[i].tolist(),
                                 beta=boot.beta[i].tolist()) for i in range(2)],
                      one=[dict(objective=o.objective, theta=o.theta.tolist(), beta=o.beta.tolist()) for o in ones])))
"""


def test_bootstrap_of_a_crossed_design_over_64_levels_finishes():
    """200 x 100 crossed levels: the second block's Cholesky factor and solves are LAPACK's (over
    64 columns), one matrix per call (linalg.lapack_cholesky, lapack_solve). Batched LAPACK calls
    on a pool of two threads (PJRT_NPROC=2, as on a 2-core machine) deadlocked such bootstraps,
    so it runs in a fresh interpreter with a time limit. Each replicate is the single fit of its
    response (warm-started at the fitted theta, as the bootstrap is)."""
    try:
        got = run_python(_CROSSED_SCRIPT, timeout_s=300, PJRT_NPROC="2")
    except subprocess.TimeoutExpired:
        pytest.fail("the bootstrap of a crossed design with 100 levels in its second term did not finish in 300 s")
    assert got["ms"] == [200, 100] and all(got["converged"])
    for b, one in zip(got["boot"], got["one"]):
        np.testing.assert_allclose(b["objective"], one["objective"], rtol=1e-10)
        np.testing.assert_allclose(b["theta"], one["theta"], rtol=1e-6)
        np.testing.assert_allclose(b["beta"], one["beta"], rtol=1e-8)


# -- devices --------------------------------------------------------------------------------------
_SHARD_SCRIPT = """
import json, sys, jax, numpy as np, lmm_jax
assert jax.device_count() == 2, jax.devices()
fit = lmm_jax.fit("Yield ~ 1 + (1|Batch)", lmm_jax.datasets.load("Dyestuff"))
b = fit.bootstrap(64, key=5, chunk_size=32)
print(json.dumps(dict(obj=b.replicates.objective.tolist(), chunk=b.chunk_size)))
"""


def test_bootstrap_sharded_over_two_devices_matches_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    fit = lmm_jax.fit("Yield ~ 1 + (1|Batch)", lmm_jax.datasets.load("Dyestuff"))
    one = fit.bootstrap(64, key=5, chunk_size=32)
    assert got["chunk"] == 32
    np.testing.assert_allclose(got["obj"], one.replicates.objective, rtol=1e-10)

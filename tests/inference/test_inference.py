"""Inference against lme4 / lmerTest / pbkrtest: Satterthwaite and Kenward-Roger
t and F tests, type III anova, likelihood-ratio tests, profile and Wald
intervals, predictions.

References: tests/reference/*.json (make_reference.R) and
tests/reference/inference.json (make_inference_reference.R).
"""

from __future__ import annotations

import json
import warnings
from functools import partial

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lmm_jax
from lmm_jax.core.estimates import varpar_derivatives, vcov_beta
from lmm_jax.core.likelihood import deviance_at_sigma
from lmm_jax.errors import InferenceError
from lmm_jax.inference.kenward_roger import dense_products, kenward_roger_adjustment
from lmm_jax.core.parametrization import lambdas
from lmm_jax.core.theta_layout import lower_tri_indices
from lmm_jax.inference.profile import profile_zeta

from tests.helpers import REF_DIR, load_data, load_reference, rel_err

INF = json.loads((REF_DIR / "inference.json").read_text())
KR_CASES = ["ingot_reml", "sleepstudy_reml", "sleepstudy_intercept", "cake_factors"]
Z975 = float(stats.norm.ppf(0.975))


def _table(ref: dict) -> np.ndarray:
    """lmerTest table from the JSON (columns listed in ref['columns']) as rows x columns."""
    vals = [np.atleast_1d(np.asarray(v, dtype=float)) for v in ref["values"]]
    return np.column_stack(vals)


@pytest.fixture(scope="session")
def extra_fits():
    cache: dict[str, lmm_jax.LMMResult] = {}

    def get(formula: str, data: str, reml: bool = True):
        key = (formula, data, reml)
        if key not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
                cache[key] = lmm_jax.fit(formula, load_data(data), reml=reml)
        return cache[key]

    return get


# -- Kenward-Roger ----------------------------------------------------------------
@pytest.mark.parametrize("case", KR_CASES)
def test_kenward_roger_matches_pbkrtest(fits, case):
    ref = load_reference(case)
    table = fits(case).coefs(ddf="kenward-roger")
    assert rel_err(table["std_error"], ref["se_kenward_roger"]) < 1e-4
    assert rel_err(table["df"], ref["df_kenward_roger"]) < 1e-4


def _dense_kr(fit):
    """pbkrtest's vcovAdj written out with n x n matrices (the slow path)."""
    d, s = fit.design, fit.model.structure
    n = d.n
    Zs, Gs = [], []
    for t, lam in zip(d.terms, lambdas(np.asarray(fit.theta), s.ks)):
        Z = np.zeros((n, t.m * t.k))
        for c in range(t.k):
            Z[np.arange(n), t.codes * t.k + c] = t.Z[:, c]
        Zs.append((Z, fit.sigma ** 2 * np.asarray(lam) @ np.asarray(lam).T, t.m, t.k))
    V = fit.sigma ** 2 * np.eye(n)
    for Z, S, m, k in Zs:
        V += Z @ np.kron(np.eye(m), S) @ Z.T
        r, c = lower_tri_indices(k)
        for i, j in zip(r, c):
            E = np.zeros((k, k))
            E[i, j] = E[j, i] = 1.0
            Gs.append(Z @ np.kron(np.eye(m), E) @ Z.T)
    Gs.append(np.eye(n))
    Vi = np.linalg.inv(V)
    X = d.X
    Phi = np.linalg.inv(X.T @ Vi @ X)
    H = [G @ Vi for G in Gs]
    O = [h @ X for h in H]
    P = [-(o.T @ Vi @ X) for o in O]
    Q = [[O[r].T @ Vi @ O[q] for q in range(len(Gs))] for r in range(len(Gs))]
    ng = len(Gs)
    IE2 = np.array([[np.sum(H[r].T * H[q]) - 2 * np.sum(Phi * Q[r][q]) + np.sum((Phi @ P[r]) * (P[q] @ Phi))
                     for q in range(ng)] for r in range(ng)])
    W = 2 * np.linalg.inv(IE2)
    U = sum(W[r, q] * (Q[r][q] - P[r] @ Phi @ P[q]) for r in range(ng) for q in range(ng))
    return Phi, Phi + 2 * Phi @ U @ Phi


@pytest.mark.parametrize("case", ["sleepstudy_reml", "pastes_nested",
                                  pytest.param("penicillin_crossed", marks=pytest.mark.slow)])
def test_kenward_roger_structured_equals_dense(fits, case, x64):
    """No-n x n Woodbury path against pbkrtest's formulas with the n x n V (crossed and nested too)."""
    fit = fits(case)
    m = fit.model
    adj = kenward_roger_adjustment(fit.theta, fit.sigma, m.products, m.structure)
    Phi, PhiA = _dense_kr(fit)
    assert np.allclose(adj.vcov, Phi, rtol=1e-9, atol=0)
    assert np.allclose(adj.vcov_adj, PhiA, rtol=1e-8, atol=0)
    assert np.allclose(adj.vcov, fit.vcov.to_numpy(), rtol=1e-8)


def test_dense_products_match_design(fits):
    fit = fits("pastes_nested")
    d, s = fit.design, fit.model.structure
    ZtZ, ZtX, XtX = dense_products(fit.model.products, s)
    Z = np.zeros((d.n, sum(t.m * t.k for t in d.terms)))
    o = 0
    for t in d.terms:
        for c in range(t.k):
            Z[np.arange(d.n), o + t.codes * t.k + c] = t.Z[:, c]
        o += t.m * t.k
    assert np.allclose(ZtZ, Z.T @ Z) and np.allclose(ZtX, Z.T @ d.X) and np.allclose(XtX, d.X.T @ d.X)


def test_dense_products_from_sparse_coupling(fits):
    """KR's dense Z'Z from a sparse A21 (crossed factors) equals the one from the dense A21."""
    from lmm_jax.build.crossprod import design_products

    fit = fits("penicillin_crossed")
    d, s = fit.design, fit.model.structure
    dense = dense_products(design_products(d, sparse=False), s)
    sparse = dense_products(design_products(d, sparse=True), s)
    for a, b in zip(dense, sparse):
        assert np.allclose(a, b, rtol=0, atol=1e-12)


def test_kenward_roger_needs_reml(fits):
    with pytest.raises(InferenceError, match="REML"):
        fits("sleepstudy_ml").coefs(ddf="kenward-roger")


def test_per_fit_inference_is_cached_on_the_result(fits):
    fit = fits("sleepstudy_reml")
    fit.coefs(ddf="kenward-roger")
    fit.coefs()
    adj, jac = fit.kr_adjustment, fit.vcov_jacobian
    fit.contrast([[0, 1]], ddf="kenward-roger")
    fit.contrast([[1, 0], [0, 1]])
    assert fit.kr_adjustment is adj and fit.vcov_jacobian is jac


@partial(jax.jit, static_argnames=("s",))
def _separate_derivatives(vp, dp, rp, s, reml):
    """The Hessian of devfun_vp by jax.hessian, vcov(beta) and its Jacobian by jax.jacfwd."""
    H = jax.hessian(lambda v: deviance_at_sigma(v[:-1], v[-1], dp, rp, s, reml))(vp)
    return dict(H=H, C=vcov_beta(vp, dp, rp, s), dC=jax.jacfwd(lambda v: vcov_beta(v, dp, rp, s))(vp))


@pytest.mark.parametrize("case", ["sleepstudy_ml", "pastes_nested"])
def test_varpar_derivatives_equal_separate_autodiff(fits, case, x64):
    """A summary's one kernel (the Hessian of devfun_vp, vcov(beta) and its Jacobian from one forward
    pass) equals jax.hessian and jax.jacfwd taken apart, at the fit and away from it (ML, and REML with
    two terms)."""
    fit = fits(case)
    dp, rp, s = fit.model.padded
    for vp in (np.r_[fit.theta, fit.sigma], np.r_[fit.theta * 1.3 + 0.1, fit.sigma * 0.8]):
        got = varpar_derivatives(vp, dp, rp, s, fit.reml)
        want = _separate_derivatives(vp, dp, rp, s, fit.reml)
        for name in ("H", "C", "dC"):
            scale = float(np.abs(want[name]).max())
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-11 * scale, err_msg=name)
    assert fit.vcov_jacobian[0] is fit._varpar_derivatives["C"]
    np.testing.assert_allclose(fit.vcov.to_numpy(), fit.vcov_jacobian[0], rtol=1e-10)


# -- Satterthwaite and the other ddf -----------------------------------------------
@pytest.mark.parametrize("case", ["sleepstudy_reml", "cake_factors", "pastes_nested", "dyestuff2_singular"])
def test_coefs_satterthwaite_matches_lmertest(fits, case):
    ref = load_reference(case)
    table = fits(case).coefs()
    assert list(table.columns) == ["estimate", "std_error", "df", "t", "p", "lower", "upper"]
    assert rel_err(table["df"], ref["df_satterthwaite"]) < 1e-4
    assert rel_err(table["p"], ref["p_satterthwaite"]) < 1e-4
    crit = stats.t.ppf(0.975, table["df"])
    assert np.allclose(table["upper"] - table["estimate"], crit * table["std_error"])


def test_coefs_residual_and_none(fits):
    fit = fits("sleepstudy_reml")
    res = fit.coefs(ddf="residual", level=0.9)
    assert np.all(res["df"] == fit.nobs - fit.design.p)
    z = fit.coefs(ddf="none")
    assert np.all(np.isinf(z["df"]))
    assert np.allclose(z["p"], 2 * stats.norm.sf(np.abs(z["t"])))
    assert np.allclose(z["upper"], z["estimate"] + Z975 * z["std_error"])
    with pytest.raises(InferenceError, match="ddf must be"):
        fit.coefs(ddf="bogus")


# -- type III anova and contrasts ----------------------------------------------------
@pytest.mark.parametrize("model", ["cake_numeric", "cake_factorial", "sleepstudy"])
@pytest.mark.parametrize("ddf", ["satterthwaite", "kenward_roger"])
def test_anova_type3_matches_lmertest(fits, extra_fits, model, ddf):
    ref = INF["anova"][model]
    fit = {"cake_numeric": fits("cake_factors"), "sleepstudy": fits("sleepstudy_reml")}.get(model) or \
        extra_fits(ref["formula"], ref["data"])
    table = fit.anova(ddf=ddf.replace("_", "-"))
    assert list(table.index) == list(np.atleast_1d(ref[ddf]["terms"]))
    assert list(table.columns) == ref[ddf]["columns"]
    got, want = table.to_numpy(), _table(ref[ddf])
    assert rel_err(got, want) < 1e-4


def test_contrasts_match_lmertest(fits):
    ref = INF["contrast"]
    fit = fits("cake_factors")   # angle ~ recipe * temp + (1 | recipe:replicate)
    for ddf in ("satterthwaite", "kenward_roger"):
        multi = fit.contrast(ref["L_multi"], ddf=ddf.replace("_", "-"))
        assert rel_err(multi.to_numpy().ravel(), _table(ref[f"multi_{ddf}"]).ravel()) < 1e-4
        one = fit.contrast(ref["L_one"], ddf=ddf.replace("_", "-"))
        want = dict(zip(ref[f"one_{ddf}"]["columns"], _table(ref[f"one_{ddf}"]).ravel()))
        got = one.iloc[0]
        for mine, theirs in [("estimate", "Estimate"), ("std_error", "Std. Error"), ("df", "df"),
                             ("t", "t value"), ("lower", "lower"), ("upper", "upper"), ("p", "Pr(>|t|)")]:
            assert rel_err(got[mine], want[theirs]) < 1e-4, mine
    # a named contrast is the same as the matrix; one F row equals t^2
    named = fit.contrast({"recipeB": 1, "recipeC": -1, "recipeB:temp": 10, "recipeC:temp": -10})
    assert np.allclose(named.to_numpy(), fit.contrast(ref["L_one"]).to_numpy())
    f1 = fit.contrast(ref["L_one"], joint=True)
    assert np.isclose(f1["F value"].iloc[0], named["t"].iloc[0] ** 2)
    with pytest.raises(InferenceError, match="columns"):
        fit.contrast([1.0, 0.0])


def test_satterthwaite_multi_df_combines_rows(fits):
    """lmerTest's multi-df rule: F of the eigen-rotated rows, ddf = 2E/(E - q)."""
    fit = fits("cake_factors")   # angle ~ recipe * temp + (1 | recipe:replicate)
    L = np.zeros((2, 6))
    L[0, 1], L[1, 2] = 1, 1
    C = fit.vcov.to_numpy()
    d, P = np.linalg.eigh(L @ C @ L.T)
    rows = fit.contrast(P.T @ L, joint=False)
    nu = rows["df"].to_numpy()
    E = np.sum(nu / (nu - 2))
    F = fit.contrast(L)
    assert np.isclose(F["DenDF"].iloc[0], 2 * E / (E - 2), rtol=1e-10)
    assert np.isclose(F["F value"].iloc[0], np.mean(rows["t"].to_numpy() ** 2), rtol=1e-10)


# -- likelihood-ratio tests ------------------------------------------------------------
def test_lrt_matches_lme4_and_refits(fits):
    ref = INF["lrt_sleepstudy"]
    m0, m1 = fits("sleepstudy_intercept"), fits("sleepstudy_reml")
    with pytest.warns(UserWarning, match="refitting"):
        table = lmm_jax.anova(m1, m0, names=["m1", "m0"])
    assert list(table.index) == ["m0", "m1"]                   # sorted by npar, as lme4
    assert list(table.columns) == ref["table"]["columns"]
    want = np.array([[np.nan if v is None else v for v in col] for col in ref["table"]["values"]], dtype=float).T
    assert np.allclose(table.to_numpy(), want, rtol=1e-6, equal_nan=True)
    assert "ML" in table.attrs["note"]


def test_lrt_ml_fits_no_refit(fits, extra_fits):
    ref = INF["lrt_fixed_ml"]
    m2 = extra_fits("Reaction ~ 1 + (Days | Subject)", "sleepstudy", reml=False)
    m3 = fits("sleepstudy_ml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = lmm_jax.anova(m2, m3)
    want = np.array([[np.nan if v is None else v for v in col] for col in ref["table"]["values"]], dtype=float).T
    assert np.allclose(table.to_numpy(), want, rtol=1e-6, equal_nan=True)
    assert table.attrs["note"] == ""
    from lmm_jax.inference.anova import likelihood_ratio_table

    with pytest.raises(InferenceError, match="at least two"):
        likelihood_ratio_table(m2)


def test_lrt_rejects_different_data(fits):
    from lmm_jax.inference.anova import likelihood_ratio_table

    a = fits("sleepstudy_intercept")
    b = fits("cake_factors")
    with pytest.raises(InferenceError, match="same response"):
        likelihood_ratio_table(a, b)


# -- profile intervals ---------------------------------------------------------------------
def _check_profile(fit, ref, tol=1e-3):
    ci = fit.confint(method="profile")
    assert list(ci.index) == ref["names"]
    assert ci.attrs["not_converged"] == 0
    assert np.allclose(ci["lower"], ref["lower"], rtol=tol, atol=1e-9)
    assert np.allclose(ci["upper"], ref["upper"], rtol=tol, atol=0)
    return ci


def test_profile_sleepstudy_matches_lme4(fits):
    """REML fit: refitted by ML and profiled (lme4's behaviour); SDs, correlation, sigma, fixed effects."""
    ref = load_reference("sleepstudy_reml")["confint_profile"]
    ci = _check_profile(fits("sleepstudy_reml"), ref)
    assert ci.attrs["refitted_ml"]


def test_profile_zeta_pointwise_and_at_the_ends(fits):
    """zeta at lme4's own grid points equals lme4's, and our ends sit at zeta = -+1.96 exactly.

    Far in the tails (|zeta| > 4) lme4's constrained optimisation stops at a
    higher deviance than ours (ours is the lower, attainable value there)."""
    fit = fits("sleepstudy_ml")
    tab = INF["profile_sleepstudy_ml"]
    par, val, zt = np.array(tab["par"]), np.array(tab["value"]), np.array(tab["zeta"])
    ci = fit.confint(method="profile")
    for name in ci.index:
        sel = (par == name) & (np.abs(zt) < 3.9) & (np.abs(val) < 1)  if name.startswith("cor_") else \
            (par == name) & (np.abs(zt) < 3.9)
        ours = profile_zeta(fit, name, val[sel])["zeta"].to_numpy()
        assert np.allclose(ours, zt[sel], atol=2e-5), name
        ends = profile_zeta(fit, name, ci.loc[name].to_numpy())["zeta"].to_numpy()
        assert np.allclose(ends, [-Z975, Z975], atol=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dyestuff", "ingot_ml", "ingot_reml", "sleepstudy_ml", "penicillin_crossed",
                                  "pastes_nested"])
def test_profile_matches_lme4(fits, case):
    ref = dict(load_reference(case)["confint_profile"])
    if case.startswith("ingot"):
        # lme4's lower limit for the ingot SD is off its own zeta curve by its spline
        # interpolation (grid points 0.90 and 1.40 around it): checked separately below
        ref["lower"] = list(ref["lower"])
        ref["lower"][0] = np.nan
        ci = fits(case).confint(method="profile")
        assert np.allclose(ci["lower"].to_numpy()[1:], ref["lower"][1:], rtol=1e-3)
        assert np.allclose(ci["upper"], ref["upper"], rtol=1e-3)
    else:
        ci = _check_profile(fits(case), ref)
    if case == "pastes_nested":
        assert ci.loc["sd_(Intercept)|batch", "lower"] == 0.0      # deviance at 0 within the cutoff


@pytest.mark.slow
def test_profile_ingot_lme4_interpolation(fits):
    """Our zeta equals lme4's at its grid points; at lme4's interpolated lower end
    zeta is not -1.96 (lme4's spline error), at ours it is."""
    fit = fits("ingot_ml")
    tab = INF["profile_ingot_ml"]
    sel = np.array(tab["par"]) == "sd_(Intercept)|ingot"
    val, zt = np.array(tab["value"])[sel], np.array(tab["zeta"])[sel]
    ours = profile_zeta(fit, "sd_(Intercept)|ingot", val)["zeta"].to_numpy()
    assert np.allclose(ours, zt, atol=1e-5)
    lme4_lower = load_reference("ingot_ml")["confint_profile"]["lower"][0]
    ci = fit.confint(method="profile", which=["sd_(Intercept)|ingot"])
    at = profile_zeta(fit, "sd_(Intercept)|ingot", [lme4_lower, ci["lower"].iloc[0]])["zeta"].to_numpy()
    assert abs(at[0] + Z975) > 5e-4 and abs(at[1] + Z975) < 1e-6
    assert abs(ci["lower"].iloc[0] / lme4_lower - 1) < 2e-3


@pytest.mark.slow
def test_profile_singular_fit_boundary(fits):
    """Dyestuff2: SD estimated at 0, lower limit 0, the rest matches lme4 (95% and 90%)."""
    fit = fits("dyestuff2_singular")
    assert fit.singular
    for key, level in (("confint_dyestuff2", 0.95), ("confint_dyestuff2_90", 0.9)):
        ref = INF[key]
        ci = fit.confint(method="profile", level=level)
        assert list(ci.index) == ref["names"]
        assert ci.iloc[0, 0] == 0.0
        assert np.allclose(ci["upper"], ref["upper"], rtol=1e-3)
        assert np.allclose(ci["lower"].to_numpy()[1:], ref["lower"][1:], rtol=1e-3)


# -- Wald intervals and the variance-component table -------------------------------------
def test_varcorr_table_and_wald(fits):
    ref = load_reference("sleepstudy_reml")
    fit = fits("sleepstudy_reml")
    vc = fit.varcorr_table()
    assert list(vc.index) == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject",
                              "sigma"]
    assert rel_err(vc["vcov"], ref["varcomp"]) < 1e-5
    assert rel_err(vc["se_vcov"], ref["varcomp_se"]) < 1e-4
    sd = vc["sdcor"].to_numpy()
    # SD scale: delta method se(var) / (2 sd)
    for i in (0, 2, 3):
        assert np.isclose(vc["se_sdcor"].iloc[i], vc["se_vcov"].iloc[i] / (2 * sd[i]), rtol=1e-10)
    # correlation: Fisher z interval inside (-1, 1) and containing the estimate
    assert -1 < vc["lower_sdcor"].iloc[1] < sd[1] < vc["upper_sdcor"].iloc[1] < 1
    zlo = np.arctanh(sd[1]) - Z975 * vc["se_sdcor"].iloc[1] / (1 - sd[1] ** 2)
    assert np.isclose(np.tanh(zlo), vc["lower_sdcor"].iloc[1])
    w = fit.confint(method="wald")
    assert list(w.index) == list(vc.index) + ["(Intercept)", "Days"]
    se = np.asarray(ref["beta_se"])
    assert np.allclose(w.loc[["(Intercept)", "Days"], "lower"], np.asarray(ref["beta"]) - Z975 * se, rtol=1e-6)


def test_varcorr_table_singular_has_no_se(fits):
    vc = fits("dyestuff2_singular").varcorr_table()
    assert vc["sdcor"].iloc[0] == 0.0
    assert np.isnan(vc["se_vcov"].iloc[0]) and np.isnan(vc["se_sdcor"].iloc[0])
    assert np.isfinite(vc.loc["sigma", "se_vcov"])


def test_confint_unknown_method_names_it_and_the_valid_ones(fits):
    with pytest.raises(InferenceError, match=r"method must be one of \['wald', 'profile', 'boot', 'bootstrap'\], "
                                             r"got 'bayes'"):
        fits("sleepstudy_reml").confint(method="bayes")


@pytest.mark.slow
def test_confint_boot_delegates_to_the_bootstrap(fits):
    fit = fits("sleepstudy_reml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.ConvergenceWarning)
        ci = fit.confint(method="boot", n=20, seed=1)      # 20: the chunk shape of test_bootstrap's refits
        same = fit.bootstrap(20, 1).confint(0.95, method="percentile")
    pd.testing.assert_frame_equal(ci, same)
    prof = load_reference("sleepstudy_reml")["confint_boot_perc_2000"]
    assert list(ci.index) == prof["names"]


# -- predictions ------------------------------------------------------------------------------
def test_predict_sleepstudy_matches_lme4(fits):
    ref = INF["predict_sleepstudy"]
    fit = fits("sleepstudy_reml")
    nd = pd.DataFrame(ref["newdata"])
    assert np.allclose(fit.predict(nd, allow_new_levels=True), ref["conditional"], rtol=1e-7)
    assert np.allclose(fit.predict(nd, re_form="~0"), ref["population"], rtol=1e-9)
    assert np.allclose(fit.predict(nd, re_form=np.nan), ref["population"], rtol=1e-9)
    out = fit.predict(nd, se_fit=True, allow_new_levels=True)
    assert np.allclose(out["se_fit"], ref["se_fixed"], rtol=1e-5)
    # new subject 999: population prediction; an explicit re_form naming the term equals the default
    assert np.allclose(fit.predict(nd, allow_new_levels=True)[3:], ref["population"][3:])
    assert np.allclose(fit.predict(nd, re_form="~(Days | Subject)", allow_new_levels=True),
                       fit.predict(nd, allow_new_levels=True))
    assert np.allclose(fit.predict(), fit.fitted)
    with pytest.raises(lmm_jax.DataError, match="999"):
        fit.predict(nd)                               # lme4's default: new levels are an error


def test_predict_cake_factors_and_interaction_groups(fits):
    ref = INF["predict_cake"]
    fit = fits("cake_factors")   # angle ~ recipe * temp + (1 | recipe:replicate)
    nd = pd.DataFrame(ref["newdata"])      # replicate 99 is new
    assert np.allclose(fit.predict(nd, allow_new_levels=True), ref["conditional"], rtol=1e-7)
    assert np.allclose(fit.predict(nd, re_form="~0"), ref["population"], rtol=1e-9)


def test_predict_nested_and_uncorrelated(fits):
    """Nested (1|batch/cask) and split (Days||Subject) terms on the fitted rows equal fitted()."""
    for case in ("pastes_nested", "sleepstudy_zerocorr"):
        fit = fits(case)
        data = fit.design.data
        assert np.allclose(fit.predict(data), fit.fitted, rtol=1e-10)
        assert np.allclose(fit.predict(data, re_form="~0"), fit.design.X @ fit.beta)
    fit = fits("pastes_nested")
    only_batch = fit.predict(fit.design.data, re_form="~(1 | batch)")
    t = [t for t in fit.design.terms if t.group == "batch"][0]
    i = fit.design.terms.index(t)
    assert np.allclose(only_batch, fit.beta[0] + fit.b[i][t.codes, 0])

"""Hard but valid input just works, and matches lme4.

The numerically hard cases are compared with lme4 fits made by ``reference/make_robustness_reference.R``
(data and fits in ``reference/robust/``): logLik within 1e-6, fixed effects, sigma and variance components
within 1e-5 relative. Fits share shapes (80 rows, 8 groups of 10 for the synthetic frame; 120 rows, 12
groups for most lme4 cases) so that each compiled fit is reused.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax import RankDeficiencyWarning
from lmm_jax.errors import ScalingWarning
from tests.helpers import (LOGLIK_TOL, RTOL, assert_matches_lme4, assert_same_fit, load_robust, quiet_fit, robust_fit,
                           varcomp)


# == inputs that must just work =================================================
def test_missing_values_in_used_columns(frame, base_fit):
    extra = pd.DataFrame({"y": [np.nan, 1.0, 2.0, 3.0], "x": [0.1, np.nan, 0.3, 0.4], "g": ["g0", "g1", None, "g2"]})
    extra.loc[3, "y"] = np.nan
    data = pd.concat([frame, extra], ignore_index=True)
    data["unused"] = np.where(np.arange(len(data)) % 3 == 0, np.nan, 1.0)  # ignored: not in the formula
    fit = quiet_fit("y ~ x + (1 | g)", data)
    assert fit.n_dropped == 4 and fit.nobs == 80
    assert_same_fit(fit, base_fit)


@pytest.mark.parametrize("dtype", ["int", "float", "str", "category", "object"])
def test_grouping_columns_of_any_dtype(frame, base_fit, dtype):
    codes = pd.Series(frame.g.str[1:].astype(int))
    g = codes.astype(dtype) if dtype != "object" else codes.map(lambda c: c if c % 2 else f"level{c}")
    fit = quiet_fit("y ~ x + (1 | g)", frame.assign(g=g))
    assert_same_fit(fit, base_fit)
    assert fit.ngroups == {"g": 8}


def test_boolean_grouping_column(frame):
    """A boolean grouping factor has the levels False and True and gives the
    same design as the same factor written as text."""
    flag = (frame.x > 0).to_numpy()
    m_bool = lmm_jax.LMM("y ~ x + (1 | g) + (1 | flag)", frame.assign(flag=flag))
    m_text = lmm_jax.LMM("y ~ x + (1 | g) + (1 | flag)", frame.assign(flag=np.where(flag, "True", "False")))
    term = [t for t in m_bool.design.terms if t.group == "flag"][0]
    assert list(term.levels) == ["False", "True"]
    np.testing.assert_array_equal(term.codes, flag.astype(int))
    for a, b in zip(jax.tree_util.tree_leaves(m_bool.products), jax.tree_util.tree_leaves(m_text.products)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_column_names_with_spaces_or_dots(frame, base_fit):
    data = frame.rename(columns={"y": "reaction time", "x": "dose.mg", "g": "subject id"})
    for formula in ["`reaction time` ~ dose.mg + (1 | `subject id`)",
                    "`reaction time` ~ `dose.mg` + (1 | `subject id`)",
                    "Q('reaction time') ~ Q('dose.mg') + (1 | `subject id`)"]:
        fit = quiet_fit(formula, data)
        assert_same_fit(fit, base_fit)
        assert fit.ngroups == {"subject id": 8}
    dotted = frame.rename(columns={"x": "x.1", "g": "g.id"}).assign(**{"x.1.sq": frame.x ** 2})
    fit = quiet_fit("y ~ x.1 + (1 | g.id)", dotted)  # x.1.sq is not mistaken for x.1
    assert_same_fit(fit, base_fit)
    assert list(fit.fixef.index) == ["(Intercept)", "x.1"]


def test_covariates_on_very_different_scales():
    ref, fit = robust_fit("scales")
    assert_matches_lme4(fit, ref)


# x = 1e4 + N(0, 1) with y about 1e3: formed from the raw data, the cross-products X'X, X'y, y'y carry
# rounding errors of about eps * n * offset^2 and the profiled objective is noisy at 1e-6 (lme4's too).
# lmm_jax forms them in the QR basis of X, with y minus its least-squares fit (lmm_jax.build.working),
# so these fits are held to the usual tolerances.
@pytest.mark.parametrize("case", ["offsets_years", "offsets_years_ml", "offsets", "offsets_ml"])
def test_covariates_and_response_with_large_offsets(case):
    """x = 2000 + N(0, 9) (years) with y about 500, and the extreme
    x = 1e4 + N(0, 1) with y about 1e3. lme4 itself loses digits on the raw
    data, so the reference is lme4's fit of the shifted data (x - shift,
    y - shift), to which theta, sigma, the slope and the criterion are
    invariant; the intercept moves by shift_y - shift_x * slope."""
    ref, fit = robust_fit(case)
    sh = ref["shifted"]
    assert abs(fit.loglik - sh["logLik"]) < LOGLIK_TOL
    np.testing.assert_allclose(fit.sigma, sh["sigma"], rtol=RTOL)
    np.testing.assert_allclose(varcomp(fit), sh["varcomp"], rtol=RTOL)
    slope = sh["beta"][1]
    np.testing.assert_allclose(fit.beta, [sh["beta"][0] + sh["shift"]["y"] - sh["shift"]["x"] * slope, slope],
                               rtol=RTOL)


def test_far_covariates_fit_silently_and_far_random_slopes_warn():
    """Fixed effects and the response far from zero cost nothing (working
    basis); a random slope's column far from zero still loses digits in
    Z'Z and is announced, naming the term and the fix."""
    ref, data = load_robust("offsets")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalingWarning)
        lmm_jax.LMM(ref["formula"], data)
        lmm_jax.LMM("y ~ 0 + x + (1 | g)", data.assign(x=data.x + 1e6))
        lmm_jax.LMM("y ~ x + (0 + x | g)", data)                 # no intercept in the term: no correlation to move
    with pytest.warns(ScalingWarning, match=r"x in \(\(Intercept\) \+ x \| g\) \(mean 1e\+04, SD .*center"):
        lmm_jax.LMM("y ~ x + (x | g)", data)


def test_rank_deficient_X(frame, base_fit):
    data = frame.assign(x2=2.0 * frame.x - 1.0, x3=frame.x)
    with pytest.warns(RankDeficiencyWarning, match=r"dropping 2 column\(s\): \['x2', 'x3'\]"):
        fit = lmm_jax.fit("y ~ x + x2 + x3 + (1 | g)", data)
    assert fit.design.dropped_columns == ("x2", "x3")
    assert list(fit.fixef.index) == ["(Intercept)", "x"]
    assert_same_fit(fit, base_fit)


def test_perfectly_balanced_groups():
    ref, fit = robust_fit("balanced")
    assert_matches_lme4(fit, ref)


def test_very_unbalanced_groups():
    for case in ["unbalanced", "unbalanced_slope"]:
        ref, fit = robust_fit(case)
        assert_matches_lme4(fit, ref)


def test_groups_of_size_one():
    ref, fit = robust_fit("singletons")
    assert_matches_lme4(fit, ref)
    assert (fit.design.terms[0].m, fit.ngroups["g"]) == (39, 39)


def test_near_zero_variance_component():
    ref, fit = robust_fit("near_zero_var")
    assert 0 < fit.theta[0] < 0.1 and not fit.singular
    assert_matches_lme4(fit, ref)


def test_exactly_zero_variance_component():
    ref, fit = robust_fit("zero_var")
    assert fit.singular and fit.theta[0] == 0.0
    assert_matches_lme4(fit, ref)
    vc = fit.varcorr
    assert vc.loc[0, "vcov"] == 0.0 and np.isnan(vc.loc[0, "se"])  # no SE at the boundary, as lme4
    assert np.isfinite(vc.loc[1, "se"])
    assert np.all(np.isfinite(fit.ranef["g"].to_numpy())) and np.all(fit.ranef["g"].to_numpy() == 0.0)
    assert np.all(np.isfinite(fit.fitted))
    assert "boundary" not in " ".join(fit.diagnostics.messages)


def test_residual_variance_near_zero():
    """Residual SD 1e-3 of the group SD (theta about 1000)."""
    ref, fit = robust_fit("tiny_residual")
    assert fit.theta[0] > 500
    # at theta ~ 1000 pwrss is 1e-6 of y'y and the REML criterion is accurate to only ~2e-7 (its
    # scatter over theta * (1 +- 1e-9): 1.5-2.3e-7), so criteria cannot rank points closer than that.
    # Newton ends where the gradient vanishes (|g| 3e-11; at lme4's theta, 982.3469, 4e-8), with a
    # criterion within that noise of lme4's; logLik matches, and the group variance to 2e-5
    with jax.enable_x64(True):       # make_deviance's function computes in float64, as its docstring says
        grad = jax.jit(jax.grad(fit.model.deviance_function(reml=True, param="theta")))(jnp.asarray(fit.theta))
    assert abs(float(grad[0])) < 1e-9
    assert fit.objective <= ref["objective"] + 2.5e-7
    assert_matches_lme4(fit, ref, varcomp_rtol=5e-5)

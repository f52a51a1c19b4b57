"""The GLMM object and lmm_jax.fit(family=...): responses, errors, separation, the gaussian family."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lmm_jax
from lmm_jax import DataError, GLMM, SeparationWarning

CBPP = "incidence/size ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return lmm_jax.datasets.load("cbpp")


def test_cbind_is_the_proportion_with_trials_as_weights(cbpp):
    a = GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
    b = GLMM(CBPP, cbpp, weights="size")
    np.testing.assert_allclose(a.data.y, b.data.y)
    np.testing.assert_allclose(a.data.weights, cbpp["size"])
    np.testing.assert_allclose(a.data.X, b.data.X)
    assert a.design.formula.response == "`cbind(incidence, size - incidence)`"
    r = lmm_jax.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    assert isinstance(r, lmm_jax.GLMMResult)
    np.testing.assert_allclose(r.deviance, 184.052563742994, atol=1e-6)     # glmer's (reference file)


def test_factor_responses_are_coded_as_glmer_codes_them():
    rng = np.random.default_rng(1)
    g = np.repeat([f"g{i}" for i in range(5)], 8)
    y = rng.integers(0, 2, size=40)
    text = pd.DataFrame({"y": np.where(y == 1, "yes", "no"), "g": g})
    assert np.array_equal(GLMM("y ~ 1 + (1 | g)", text).design.y, y)                  # "no" sorts first: 0
    cat = text.assign(y=pd.Categorical(text.y, categories=["yes", "no"]))            # first category: 0
    assert np.array_equal(GLMM("y ~ 1 + (1 | g)", cat).design.y, 1 - y)
    flag = text.assign(y=y.astype(bool))
    assert np.array_equal(GLMM("y ~ 1 + (1 | g)", flag).design.y, y)
    three = text.assign(y=np.array(["a", "b", "c", "b"] * 10))                        # R: first level 0, others 1
    assert np.array_equal(GLMM("y ~ 1 + (1 | g)", three).design.y, np.array([0, 1, 1, 1] * 10))
    verb = GLMM("r2 ~ Anger + (1 | item)", lmm_jax.datasets.load("VerbAgg"))
    assert verb.design.y.mean() == pytest.approx(0.476134, abs=1e-6)               # R: mean(VerbAgg$r2 == "Y")


def test_an_offset_argument_is_the_formula_offset(cbpp):
    a = GLMM("incidence ~ period + offset(log(size)) + (1 | herd)", cbpp, "poisson")
    b = GLMM("incidence ~ period + (1 | herd)", cbpp, "poisson", offset=np.log(cbpp["size"].to_numpy()))
    np.testing.assert_allclose(a.data.offset, np.log(cbpp["size"]))
    np.testing.assert_allclose(a.data.offset, b.data.offset)


def test_observation_level_random_effects_are_allowed_in_a_glmm(cbpp):
    d = cbpp.assign(obs=np.arange(len(cbpp)).astype(str))
    m = GLMM("incidence ~ period + (1 | obs) + (1 | herd)", d, "poisson")
    assert m.design.terms[0].group == "obs" and m.design.terms[0].m == len(d)
    with pytest.raises(DataError, match="levels must be less than the number of observations"):
        lmm_jax.LMM("incidence ~ period + (1 | obs) + (1 | herd)", d)


@pytest.mark.parametrize("formula,kwargs,message", [
    ("incidence ~ period + (1 | herd)", {},
     r"binomial response 'incidence' has 21 value\(s\) outside \[0, 1\] \(first 2 at row 0\)"),
    ("I(incidence / size) ~ period + (1 | herd)", {"weights": np.full(56, 3.0)},
     r"non-integer numbers of successes .*weights= the number of trials"),
    ("I(incidence - 1) ~ period + (1 | herd)", {"family": "poisson"},
     r"22 value\(s\) that are not counts \(first -1 at row 3\)"),
    ("I(incidence / 2) ~ period + (1 | herd)", {"family": "poisson"}, r"not counts \(first 1.5 at row 1\): .*whole number >= 0"),
    ("cbind(incidence, incidence - size) ~ period + (1 | herd)", {}, r"negative counts"),
])
def test_responses_that_do_not_suit_the_family(cbpp, formula, kwargs, message):
    with pytest.raises(DataError, match=message):
        GLMM(formula, cbpp, **kwargs)


def test_unsupported_families_links_and_quadrature(cbpp):
    with pytest.raises(ValueError, match=r"family 'Gamma' is not supported.*binomial: logit, probit, cloglog"):
        GLMM(CBPP, cbpp, "Gamma", weights="size")
    with pytest.raises(ValueError, match=r"link 'log' is not supported for the binomial family"):
        lmm_jax.fit(CBPP, cbpp, family="binomial", link="log", weights="size")
    with pytest.raises(ValueError, match=r"link 'log' is not supported for the gaussian family"):
        lmm_jax.fit("size ~ period + (1 | herd)", cbpp, family="gaussian", link="log")
    m = GLMM("incidence/size ~ period + (1 | herd) + (1 | period)", cbpp, weights="size")
    with pytest.raises(ValueError, match=r"nAGQ > 1 .* single scalar random-effects term.*\(1 \| herd\), "
                                         r"\(\(Intercept\) \| period\)|nAGQ > 1 .* single scalar"):
        m.fit(nAGQ=5)
    with pytest.raises(ValueError, match="nAGQ must be at most 25"):
        GLMM(CBPP, cbpp, weights="size").fit(nAGQ=26)
    with pytest.raises(ValueError, match="nAGQ applies to GLMMs"):
        lmm_jax.fit("size ~ period + (1 | herd)", cbpp, nAGQ=3)


def test_separation_warns_naming_the_fixed_effect(cbpp):
    # no case in period 4: its coefficient drifts to -infinity (quasi-complete separation), the fit stays finite
    d = cbpp.assign(incidence=np.where(cbpp.period == "4", 0, cbpp.incidence))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = GLMM(CBPP, d, weights="size").fit()
    sep = [w for w in caught if issubclass(w.category, SeparationWarning)]
    assert len(sep) == 1 and "period4" in str(sep[0].message) and "period2" not in str(sep[0].message)
    assert np.all(np.isfinite(r.beta)) and np.isfinite(r.deviance) and r.beta[3] < -10


def test_gaussian_family_is_the_lmm(sleepstudy_fit):
    r = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"), family="gaussian")
    assert isinstance(r, lmm_jax.LMMResult)
    np.testing.assert_allclose(r.objective, sleepstudy_fit.objective, rtol=1e-12)
    np.testing.assert_allclose(r.beta, sleepstudy_fit.beta, rtol=1e-10)


def test_predictions_on_new_data(cbpp):
    r = GLMM(CBPP, cbpp, weights="size").fit()
    new = pd.DataFrame({"period": ["1", "4"], "herd": ["3", "99"]})
    link = r.predict(new, allow_new_levels=True)
    b3 = r.ranef["herd"].loc["3", "(Intercept)"]
    np.testing.assert_allclose(link, [r.beta[0] + b3, r.beta[0] + r.beta[3]], rtol=1e-12)
    np.testing.assert_allclose(r.predict(new, type="response", allow_new_levels=True), 1 / (1 + np.exp(-link)))
    with pytest.raises(DataError, match="99"):
        r.predict(new)
    with pytest.raises(ValueError, match="type must be one of"):
        r.predict(new, type="probability")
    assert repr(r).startswith("<GLMMResult 'incidence/size ~ period + (1 | herd)' binomial(logit), Laplace")


def test_a_boundary_fit_is_the_glm(cbpp):
    # every herd has the same proportions in each period: the herd variance's optimum is 0, where the
    # fit is the GLM without random effects (glmer stops with "pwrssUpdate did not converge" here)
    d = cbpp.assign(size=10, incidence=cbpp.period.map({"1": 3, "2": 2, "3": 1, "4": 1}).astype(int))
    with pytest.warns(lmm_jax.SingularFitWarning):
        r = GLMM(CBPP, d, weights="size").fit()
    assert r.theta[0] == 0.0 and r.singular and r.converged
    p = np.array([0.3, 0.2, 0.1, 0.1])
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(r.beta, [logit[0], *(logit[1:] - logit[0])], rtol=1e-8)
    n = d.period.value_counts().sort_index().to_numpy() * 10.0             # trials per period
    np.testing.assert_allclose(r.std_errors.iloc[0], 1 / np.sqrt(n[0] * 0.3 * 0.7), rtol=1e-6)
    assert np.isnan(r.varcorr.se.iloc[0])
    dens = stats.binom.logpmf(d.incidence, 10, p[d.period.astype(int) - 1])
    np.testing.assert_allclose(r.deviance, -2 * dens.sum(), rtol=1e-10)

"""No silent wrong answers (issue 17): inputs that fitted another model, or failed
with a message that did not say what was wrong.

Each test names the input it guards. Numbers are lme4's (1.1-31; lmerTest for the
type III table), made by ``reference/make_inputs_reference.R`` into
``reference/inputs.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax import DataError, FormulaError, InferenceError

REF = json.loads((Path(__file__).parent / "reference" / "inputs.json").read_text())
RTOL = 1e-5
LOGLIK_TOL = 1e-6


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return lmm_jax.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep) -> lmm_jax.LMMResult:
    return lmm_jax.fit("Reaction ~ Days + (1 | Subject)", sleep)


def check_against_lme4(fit: lmm_jax.LMMResult, case: str) -> None:
    ref = REF[case]
    assert fit.reml == ref["reml"]
    assert list(fit.fixef.index) == list(ref["fixef_names"])
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref["fixef"], rtol=RTOL, atol=1e-8)
    assert abs(fit.loglik - ref["loglik"]) < LOGLIK_TOL
    np.testing.assert_allclose(fit.theta, np.atleast_1d(ref["theta"]), rtol=RTOL)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=RTOL)


# -- formulas that fitted another model -------------------------------------------------------
def test_a_column_named_intercept_is_a_covariate(sleep):
    """formulaic names its intercept column 'Intercept': a data column of that name replaced it
    (the fit of 0 + Days, (Intercept) = 10.67). lme4: (Intercept) 251.41, Intercept 10.47."""
    data = sleep.assign(Intercept=sleep.Days)
    fit = lmm_jax.fit("Reaction ~ Intercept + (1 | Subject)", data)
    check_against_lme4(fit, "intercept_column")
    assert np.allclose(fit.predict(data), fit.fitted)
    assert list(fit.anova().index) == ["Intercept"]


# -- no fixed effects ----------------------------------------------------------------------------
def test_no_fixed_effects_fits_as_lme4(sleep):
    """y ~ 0 + (1 | g) failed with 'Need at least one array to stack'. lme4 fits it by ML (with
    p = 0 the REML criterion is the deviance): logLik -992.84."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", lmm_jax.ConvergenceWarning)
        fit = lmm_jax.fit("Reaction ~ 0 + (1 | Subject)", sleep)          # reml=True asked, ML given
    check_against_lme4(fit, "no_fixed")
    ref = REF["no_fixed"]
    np.testing.assert_allclose(fit.ranef["Subject"]["(Intercept)"], ref["ranef"], rtol=1e-5)
    assert np.allclose(fit.predict(sleep), fit.fitted)
    assert "No fixed effect coefficients" in fit.summary()
    assert fit.coef_table.empty and fit.coefs(ddf="kenward-roger").empty and fit.anova().empty
    with pytest.raises(InferenceError, match="no fixed effects"):
        fit.contrast([1.0])
    ci = fit.confint(method="profile")
    assert list(ci.index) == ref["confint_profile"]["names"]
    np.testing.assert_allclose(ci["lower"], ref["confint_profile"]["lower"], rtol=1e-4)
    np.testing.assert_allclose(ci["upper"], ref["confint_profile"]["upper"], rtol=1e-4)
    assert list(fit.confint(method="wald").index) == ref["confint_profile"]["names"]
    Y = lmm_jax.simulate(fit, 3, key=1)
    assert fit.model.fit_batch(Y).table["converged"].all()

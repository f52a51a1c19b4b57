"""update, refit, coef, residuals, fitted values and predict's labelled rows, against lme4.

References: tests/reference/update_coef.json (make_update_coef_reference.R): lme4 fits of sleepstudy (a
correlated random slope), Penicillin (crossed), cake (factorial) and Spruce with prior weights 1, 2, ... and an
offset; each with its coef, residuals of every type, updates of its formula, REML and weights, and the fit of a
new response (refit); and sleepstudy with missing values fitted with na.exclude.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.build.formula import parse_formula, update_formula
from lmm_jax.errors import DataError, FormulaError

from tests.helpers import REF_DIR, assert_matches_lme4, count_compilations, load_data, load_reference

REF = json.loads((REF_DIR / "update_coef.json").read_text())
CASES = REF["cases"]
TOL = 1e-6          # logLik, fixed effects, theta, coef, residuals (relative)


def _frame(name: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    if name == "spruce":
        df = pd.read_csv(REF_DIR / "weights" / "spruce.csv", dtype={"plot": str})
        return df, np.resize([1.0, 2.0], len(df))
    return load_data(name), None


@pytest.fixture(scope="module")
def case_fit():
    cache: dict[str, lmm_jax.LMMResult] = {}

    def get(case: str) -> lmm_jax.LMMResult:
        if case not in cache:
            data, weights = _frame(CASES[case]["data"])
            cache[case] = lmm_jax.LMM(CASES[case]["formula"], data, weights=weights).fit()
        return cache[case]

    return get


def _names(v) -> list[str]:
    """A list of names from R's JSON (a length-1 vector is written as a scalar)."""
    return [v] if isinstance(v, str) else list(v)


def _close(a, b, tol: float = TOL, atol: float = 1e-10) -> None:
    b = np.asarray([np.nan if v is None else v for v in np.atleast_1d(b)], dtype=float)
    np.testing.assert_allclose(np.atleast_1d(np.asarray(a, dtype=float)), b, rtol=tol, atol=atol)


def _close_values(a, b) -> None:
    """Residuals and fitted values: within TOL of the largest in size (a residual near 0 has fewer digits)."""
    want = np.asarray([np.nan if v is None else v for v in b], dtype=float)
    _close(a, want, atol=TOL * np.nanmax(np.abs(want)))


def _assert_fit(fit: lmm_jax.LMMResult, ref: dict, theta_atol: float = 1e-6) -> None:
    assert fit.reml == ref["reml"] and fit.nobs == ref["nobs"]
    assert list(fit.fixef.index) == _names(ref["fixef_names"])
    _close(fit.loglik, ref["loglik"])
    _close(fit.beta, ref["fixef"], atol=1e-8)
    _close(fit.sigma, ref["sigma"])
    _close(fit.theta, ref["theta"], atol=theta_atol)


# -- coef, residuals, fitted ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_coef_is_lme4s(case_fit, case):
    coef = case_fit(case).coef()
    ref = CASES[case]["coef"]
    assert list(coef) == list(ref)
    for group, table in coef.items():
        rows = _names(ref[group]["rows"])        # cake's recipe:replicate levels: R orders replicate as numbers
        assert sorted(table.index) == sorted(rows) and list(table.columns) == _names(ref[group]["columns"])
        _close(table.loc[rows].to_numpy().T, np.asarray(ref[group]["values"], dtype=float), atol=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_residuals_and_fitted_are_lme4s(case_fit, case):
    fit, ref = case_fit(case), CASES[case]
    n = len(ref["fitted_head"])
    _close_values(fit.fitted_values().iloc[:n], ref["fitted_head"])
    for type in ("response", "working", "pearson", "deviance"):
        _close_values(fit.resid(type).iloc[:n], ref["residuals_head"][type])
    _close_values(fit.resid(scaled=True).iloc[:n], ref["residuals_head"]["response_scaled"])
    _close_values(fit.resid("pearson", scaled=True).iloc[:n], ref["residuals_head"]["pearson_scaled"])
    # the attributes are the arrays of the default Series
    np.testing.assert_array_equal(fit.fitted, fit.fitted_values().to_numpy())
    np.testing.assert_array_equal(fit.residuals, fit.resid().to_numpy())
    assert isinstance(fit.fitted, np.ndarray) and isinstance(fit.residuals, np.ndarray)


def test_marginal_level_leaves_out_the_random_effects(case_fit):
    fit = case_fit("spruce_weighted")
    d = fit.design
    mu = d.X @ fit.beta + d.offset
    np.testing.assert_allclose(fit.fitted_values(level="marginal"), mu, rtol=1e-12)
    np.testing.assert_allclose(fit.resid("pearson", level="marginal"), np.sqrt(d.weights) * (d.y - mu), rtol=1e-12)
    with pytest.raises(ValueError, match="level must be one of"):
        fit.resid(level="population")
    with pytest.raises(ValueError, match="type must be one of"):
        fit.resid("partial")
    with pytest.raises(ValueError, match="na_action must be one of"):
        fit.fitted_values(na_action="pass")


# -- update ----------------------------------------------------------------------------------------------

UPDATES = [(case, i) for case in CASES for i in range(len(CASES[case]["updates"]))]


@pytest.mark.parametrize("case, i", UPDATES)
def test_update_formula_is_lme4s(case_fit, case, i):
    new = CASES[case]["updates"][i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        _assert_fit(case_fit(case).update(new), CASES[case]["update"][i])


# ML fits of cake and Penicillin would be shapes compiled for these tests alone: their ML references are left out
ML_CASES = ["sleep", "spruce_weighted"]


@pytest.mark.parametrize("case", ML_CASES)
def test_update_reml_and_weights_are_lme4s(case_fit, case):
    fit = case_fit(case)
    _assert_fit(fit.update(reml=False), CASES[case]["update_ml"])
    if "update_unweighted" in CASES[case]:
        _assert_fit(fit.update(weights=None), CASES[case]["update_unweighted"])


def test_update_formula_text():
    sleep = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert update_formula(sleep, ". ~ . - Days") == "Reaction ~ 1 + (Days | Subject)"
    assert update_formula(sleep, "~ . + 0") == update_formula(sleep, ". ~ . + -1") == \
        update_formula(sleep, ". ~ -1 + .") == "Reaction ~ 0 + Days + (Days | Subject)"
    assert update_formula(sleep, "log(.) ~ .") == "log(Reaction) ~ Days + (Days | Subject)"
    assert update_formula(sleep, "~ . + I(Days^2) - Days") == "Reaction ~ I(Days ** 2) + (Days | Subject)"
    assert update_formula(sleep, ". ~ . - (1 + Days | Subject) + (1 | Subject) + (1|Subject)") == \
        "Reaction ~ Days + (1 | Subject)"
    pastes = parse_formula("strength ~ 1 + (1 | batch/cask)")
    assert update_formula(pastes, ". ~ . - (1 | cask:batch)") == "strength ~ 1 + (1 | batch)"
    spruce = parse_formula("logSize ~ years + offset(base) + (1 | Tree)")
    assert update_formula(spruce, ". ~ . - offset(base) + x:years") == "logSize ~ years + x:years + (1 | Tree)"
    for bad, match in [(". ~ . - z", "z is not a fixed-effect term"), (". ~ . - (1 | h)", "no such random term"),
                       (". ~ - .", "remove the whole old"), ("Reaction", "needs one '~'"),
                       (". ~ . + + x", "two operators"), (". ~ . - + x", "two operators"), (". ~ . - offset(t)", "no such offset"),
                       (". ~ . + (1 | g", "unbalanced")]:
        with pytest.raises(FormulaError, match=re.escape(match)):
            update_formula(spruce if "offset" in bad else sleep, bad)


def test_update_rereads_every_row_and_keeps_array_weights(case_fit):
    ref = REF["sleep_na_exclude"]
    fit = _na_fit()
    _assert_fit(fit, ref["fit"])
    # Days' missing value drops a row only while Days is in the formula (R's update re-reads the data)
    _assert_fit(fit.update(". ~ 1 + (1 | Subject)"), ref["update_without_days"])
    spruce = case_fit("spruce_weighted")
    with pytest.raises(DataError, match=f"weights are an array over the {len(spruce.design.source)} rows"):
        spruce.update(data=spruce.design.data.iloc[:100])


# -- refit -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_refit_is_the_fit_of_the_new_response(case_fit, case):
    fit, ref = case_fit(case), CASES[case]
    y = np.asarray(ref["refit_response"])
    with count_compilations() as events:
        new = fit.refit(y)
    assert events["compile"] == 0                          # the fit's compiled code, on the same design
    assert new.model.design.X is fit.model.design.X and new.model.products is fit.model.products
    _assert_fit(new, ref["refit"])
    np.testing.assert_array_equal(new.design.y, y)
    if case in ML_CASES:
        _assert_fit(fit.update(reml=False).refit(y), ref["refit_ml"])


def test_refit_of_the_same_response_is_the_fit(case_fit):
    fit = case_fit("sleep")
    same = fit.refit(pd.Series(fit.design.y[::-1], index=fit.design.data.index[::-1]))   # matched by label
    assert same.iterations == 0 and same.loglik == fit.loglik
    np.testing.assert_allclose(same.theta, fit.theta, rtol=1e-13)


def test_refit_leaves_a_boundary_fit():
    """Dyestuff2's fit is singular (theta = 0, where the optimiser cannot move): its refit to Dyestuff's yields
    starts from the moment estimates and finds lme4's fit of Dyestuff."""
    with pytest.warns(lmm_jax.SingularFitWarning):
        fit2 = lmm_jax.fit("Yield ~ 1 + (1 | Batch)", load_data("Dyestuff2"))
    assert fit2.theta[0] == 0
    assert_matches_lme4(fit2.refit(load_data("Dyestuff")["Yield"].to_numpy()), load_reference("dyestuff"))


def test_refit_response_reaches_what_rereads_the_data(case_fit):
    fit = case_fit("sleep")
    logfit = fit.update("log(.) ~ .")
    y = np.asarray(CASES["sleep"]["refit_response"])
    new = logfit.refit(y)            # an expression response becomes a column of that name
    assert new.model.formula == "`log(Reaction)` ~ Days + (Days | Subject)"
    _assert_fit(new, CASES["sleep"]["refit"])
    _assert_fit(new.update(), CASES["sleep"]["refit"])            # update re-reads the new response
    plain = fit.refit(y)
    assert plain.model.formula == fit.model.formula
    np.testing.assert_array_equal(plain.design.data["Reaction"], y)


def test_refit_rejects_bad_responses(case_fit):
    fit = case_fit("sleep")
    with pytest.raises(DataError, match="one value per row: 180"):
        fit.refit(np.ones(10))
    with pytest.raises(DataError, match="missing or infinite"):
        fit.refit(np.where(np.arange(180) == 4, np.nan, fit.design.y))
    with pytest.raises(DataError, match="constant"):
        fit.refit(np.ones(180))
    with pytest.raises(DataError, match="lacks rows the fit used"):
        fit.refit(pd.Series(fit.design.y[:-1]))


# -- rows labelled by the data's index: na.omit and na.exclude ----------------------------------------

def _na_fit() -> lmm_jax.LMMResult:
    ref = REF["sleep_na_exclude"]
    data = load_data("sleepstudy")
    data.index = [f"r{i}" for i in range(len(data))]
    data.loc[data.index[np.asarray(ref["missing_reaction"]) - 1], "Reaction"] = np.nan
    data.loc[data.index[np.asarray(ref["missing_days"]) - 1], "Days"] = np.nan
    return lmm_jax.fit("Reaction ~ Days + (Days | Subject)", data)


def test_na_exclude_pads_like_lme4():
    ref = REF["sleep_na_exclude"]
    fit = _na_fit()
    index = pd.Index([f"r{i}" for i in range(180)])
    for got, want in [(fit.resid(na_action="exclude"), ref["residuals"]),
                      (fit.fitted_values(na_action="exclude"), ref["fitted"]),
                      (fit.predict(na_action="exclude"), ref["predict"]),
                      (fit.resid("pearson", scaled=True, na_action="exclude"), ref["pearson_scaled"])]:
        assert got.index.equals(index)
        _close_values(got, want)
    omitted = fit.resid()
    assert len(omitted) == 177 and omitted.index.equals(fit.design.data.index)
    assert "r2" not in omitted.index and "r6" not in omitted.index
    np.testing.assert_array_equal(fit.predict(na_action="omit"), fit.predict())
    refit = fit.refit(fit.resid(na_action="exclude") + fit.fitted_values(na_action="exclude"))   # 180 rows
    np.testing.assert_allclose(refit.loglik, fit.loglik, rtol=1e-12)


def test_predict_series_on_newdata_index(case_fit):
    fit = case_fit("sleep")
    new = pd.DataFrame({"Days": [1.0, np.nan, 3.0], "Subject": ["308", "309", "310"]}, index=[10, 20, 30])
    values = fit.predict(new)
    assert isinstance(values, np.ndarray) and np.isnan(values[1])
    kept = fit.predict(new, na_action="omit")
    assert list(kept.index) == [10, 30]
    np.testing.assert_array_equal(kept, values[[0, 2]])
    table = fit.predict(new, se_fit=True, na_action="exclude")
    assert list(table.index) == [10, 20, 30] and list(table.columns) == ["fit", "se_fit"]
    np.testing.assert_array_equal(table["fit"], values)

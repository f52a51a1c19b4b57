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


def test_in_operator_means_interaction_as_in_r(sleep):
    """R's Days %in% f is Days:f; formulaic read it as f/Days (4 coefficients, ML -896.508)."""
    data = sleep.assign(f=np.where(sleep.Days < 5, "a", "b"))
    fit = lmm_jax.fit("Reaction ~ Days %in% f + (1 | Subject)", data, reml=False)
    check_against_lme4(fit, "in_operator")


def test_functions_in_the_fixed_part_with_lme4_names(sleep):
    """abs(), sqrt(), ... were 'not a column'; lme4 names the columns by R's deparse."""
    fit = lmm_jax.fit("Reaction ~ abs(Days - 4) + sqrt(Days) + exp(Days/10) + log1p(Days * 2) + I(Days^2) + "
                      "floor(Days/3) + (1 | Subject)", sleep)
    check_against_lme4(fit, "functions")
    assert np.allclose(fit.predict(sleep), fit.fitted, rtol=1e-12)
    slope = lmm_jax.fit("Reaction ~ sqrt(Days) + (sqrt(Days) | Subject)", sleep)
    check_against_lme4(slope, "function_slope")
    assert list(slope.ranef["Subject"].columns) == ["(Intercept)", "sqrt(Days)"]
    assert np.allclose(slope.predict(sleep), slope.fitted, rtol=1e-12)
    # ^ inside a call is R's power, not Python's XOR
    power = lmm_jax.fit("Reaction ~ sqrt(Days^3) + (1 | Subject)", sleep)
    direct = lmm_jax.fit("Reaction ~ x + (1 | Subject)", sleep.assign(x=np.sqrt(sleep.Days ** 3.0)))
    assert list(power.fixef.index) == ["(Intercept)", "sqrt(Days^3)"]
    np.testing.assert_allclose(power.beta, direct.beta, rtol=1e-10)


def test_unknown_function_is_a_formula_error(sleep):
    with pytest.raises(FormulaError, match=r"sqrtt\(\) is not a function") as err:
        lmm_jax.fit("Reaction ~ sqrtt(Days) + (1 | Subject)", sleep)
    assert err.value.token == "sqrtt"
    with pytest.raises(DataError, match="'list' is not a column"):     # a builtin not called: a variable
        lmm_jax.fit("Reaction ~ Days + list + (1 | Subject)", sleep)


def test_ordered_factor_gets_polynomial_contrasts():
    """lme4 codes an ordered factor by contr.poly (temperature.L, .Q, .C, ^4, ^5); lmm_jax used
    treatment contrasts. lmerTest's type III table is the same in either coding."""
    cake = lmm_jax.datasets.load("cake")
    levels = sorted(cake.temperature.unique(), key=int)
    cake["temperature"] = pd.Categorical(cake.temperature, categories=levels, ordered=True)
    fit = lmm_jax.fit("angle ~ recipe * temperature + (1 | recipe:replicate)", cake)
    check_against_lme4(fit, "ordered_factor")
    ref = REF["ordered_factor"]["anova"]
    table = fit.anova()
    assert list(table.index) == ref["terms"]
    np.testing.assert_allclose(table["F value"], ref["F"], rtol=1e-5)
    np.testing.assert_allclose(table["NumDF"], ref["NumDF"])
    np.testing.assert_allclose(table["DenDF"], ref["DenDF"], rtol=1e-5)
    assert np.allclose(fit.predict(cake), fit.fitted, rtol=1e-12)
    # text labels in new data are coded with the fitted polynomial contrasts
    new = cake.head(6).assign(temperature=cake.temperature.head(6).astype(str))
    assert np.allclose(fit.predict(new), fit.fitted[:6], rtol=1e-12)


def test_dot_is_rejected_with_a_formula_error(sleep):
    with pytest.raises(FormulaError, match=r"'\.' \(every other column\) is not supported") as err:
        lmm_jax.fit("Reaction ~ . + (1 | Subject)", sleep)
    assert err.value.token == "." and err.value.position == 11
    lmm_jax.parse_formula("y ~ x.1 + I(x - .5) + np.log(z) + (1 | g)")     # dots inside names and numbers


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


# -- booleans and counts ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, [True]])
def test_reml_must_be_a_bool(sleep, value):
    """bool('no') is True: reml='no' fitted REML."""
    with pytest.raises(TypeError, match="reml must be True or False"):
        lmm_jax.fit("Reaction ~ Days + (1 | Subject)", sleep, reml=value)


def test_boolean_arguments_are_checked(sleep, sleep_fit):
    model = sleep_fit.model
    checks = {
        "reml": lambda: model.fit(reml="False"),
        "throw": lambda: model.fit(throw="yes"),
        "se_fit": lambda: sleep_fit.predict(sleep, se_fit="yes"),
        "allow_new_levels": lambda: sleep_fit.predict(sleep, allow_new_levels=1),
        "progress": lambda: sleep_fit.bootstrap(5, progress="no"),
        "refit": lambda: lmm_jax.anova(sleep_fit, sleep_fit, refit="no"),
        "joint": lambda: sleep_fit.contrast(np.eye(2), joint="yes"),
    }
    for name, call in checks.items():
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            call()
    with pytest.raises(TypeError, match="reml must be True or False"):
        lmm_jax.make_deviance(model, reml="no")
    with pytest.raises(TypeError, match="reml must be True or False"):
        model.fit_batch(np.asarray(sleep.Reaction), reml="no")
    with pytest.raises(TypeError, match="reml must be True or False"):
        lmm_jax.fit_many([model], reml="no")
    # numpy's bools are bools
    assert model.fit(reml=np.False_).loglik == pytest.approx(model.fit(reml=False).loglik, abs=1e-10)


@pytest.mark.parametrize("n, error", [(10.7, TypeError), ("100", TypeError), (1e4, TypeError), (True, TypeError),
                                      (0, ValueError)])
def test_bootstrap_count_must_be_an_integer(sleep_fit, n, error):
    """bootstrap(10.7) ran 10 replicates; bootstrap('100') was accepted."""
    with pytest.raises(error, match="n must be an integer"):
        sleep_fit.bootstrap(n)


def test_counts_are_checked(sleep_fit):
    with pytest.raises(TypeError, match="chunk_size must be an integer"):
        sleep_fit.bootstrap(10, chunk_size=2.5)
    with pytest.raises(TypeError, match="max_iter must be an integer"):
        sleep_fit.model.fit(max_iter=10.5)
    with pytest.raises(TypeError, match="n must be an integer"):
        lmm_jax.simulate(sleep_fit, 2.0, key=0)
    with pytest.raises(TypeError, match="chunk_size must be an integer"):
        lmm_jax.simulate(sleep_fit, 2, key=0, chunk_size="1")
    assert lmm_jax.simulate(sleep_fit, np.int64(3), key=0).shape == (180, 3)     # numpy integers are integers


def test_start_must_be_finite(sleep_fit):
    """A NaN start gave an all-NaN fit with a warning."""
    with pytest.raises(ValueError, match="start must be finite"):
        sleep_fit.model.fit(start=[np.nan])
    with pytest.raises(ValueError, match="start must be finite"):
        sleep_fit.model.fit_batch(np.asarray(sleep_fit.design.y), start=[np.inf])


def test_anova_takes_fits(sleep_fit):
    with pytest.raises(TypeError, match="anova takes fitted models .* 'x' \\(str\\) as argument 2"):
        lmm_jax.anova(sleep_fit, "x")


# -- grouping levels ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["datetime", "float32", "category"])
def test_predict_matches_grouping_levels_by_value(sleep, kind):
    """Datetime and float32 labels did not round-trip through text: predict on the training rows
    dropped the random effects (251.405 instead of the fitted 253.664)."""
    codes = sleep.Subject.astype("category").cat.codes
    group = {"datetime": pd.Timestamp("2024-01-01") + pd.to_timedelta(codes, unit="D"),
             "float32": (codes / 10 + 0.1).astype(np.float32),
             "category": sleep.Subject.astype("category")}[kind]
    data = sleep.assign(G=group)
    fit = lmm_jax.fit("Reaction ~ Days + (Days | G)", data)
    pred = fit.predict(data)
    assert pred[0] == pytest.approx(253.6637, abs=1e-3)
    np.testing.assert_allclose(pred, fit.fitted, rtol=1e-12)


def test_predict_new_levels_follow_lme4(sleep, sleep_fit):
    """lme4's default is an error for new levels: a typo was silently a population prediction."""
    new = pd.DataFrame({"Days": [1, 1, 1], "Subject": ["308", "3O9", "309"]})
    with pytest.raises(DataError, match=r"\['3O9'\] of 'Subject' not seen in the fit"):
        sleep_fit.predict(new)
    pop = sleep_fit.predict(new, re_form="~0")
    assert sleep_fit.predict(new, allow_new_levels=True)[1] == pytest.approx(pop[1])
    # a missing group: a DataError naming the column (was 'TypeError: sequence item 0')
    gap = new.assign(Subject=["308", None, "309"])
    with pytest.raises(DataError, match=r"missing values in the grouping factor column\(s\) \['Subject'\]"):
        sleep_fit.predict(gap)
    assert sleep_fit.predict(gap, allow_new_levels=True)[1] == pytest.approx(pop[1])
    # integer levels: 1.5 is a new level, not level 1
    data = sleep.assign(G=sleep.Subject.astype(int))
    fit = lmm_jax.fit("Reaction ~ Days + (1 | G)", data)
    with pytest.raises(DataError, match=r"\['309.5'\]"):
        fit.predict(pd.DataFrame({"Days": [1.0], "G": [309.5]}))
    assert fit.predict(pd.DataFrame({"Days": [1.0], "G": [309.0]}))[0] == pytest.approx(fit.fitted[11])


def test_labels_that_print_alike_are_a_data_error(sleep):
    """1 and '1' in one column gave two random-effect rows labelled '1'. R would merge them (its
    factor() codes text); lmm_jax asks instead of guessing."""
    mixed = pd.Series([i % 6 if (i // 6) % 2 else str(i % 6) for i in range(len(sleep))], dtype=object)
    with pytest.raises(DataError, match=r"grouping factor 'g' .* 1 \(int\) and '1' \(str\)") as err:
        lmm_jax.fit("Reaction ~ Days + (1 | g)", sleep.assign(g=mixed))
    assert "astype(str)" in str(err.value)


# -- data containers ------------------------------------------------------------------------------
def test_dict_of_series_with_different_indexes(sleep):
    """pandas aligned them by label: 'all 360 rows have a missing value'."""
    data = {"Reaction": sleep.Reaction, "Days": sleep.Days.set_axis(sleep.index + 1000), "Subject": sleep.Subject}
    with pytest.raises(DataError, match="indexes differ"):
        lmm_jax.fit("Reaction ~ Days + (1 | Subject)", data)


def test_multiindex_columns(sleep):
    data = sleep.copy()
    data.columns = pd.MultiIndex.from_tuples([("a", c) for c in sleep.columns])
    with pytest.raises(DataError, match="MultiIndex columns .* flatten"):
        lmm_jax.fit("Reaction ~ Days + (1 | Subject)", data)


# -- command line and processes -------------------------------------------------------------------
def test_cli_checks_the_json_path_before_fitting(tmp_path, capsys):
    from lmm_jax.report.cli import main

    rc = main(["example", "--json", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2
    assert "is a folder" in captured.err and "unexpected" not in captured.err
    assert "Random effects" not in captured.out        # nothing was fitted


def _fit_loglik(data: pd.DataFrame) -> float:
    return float(lmm_jax.fit("Reaction ~ Days + (1 | Subject)", data).loglik)


@pytest.mark.filterwarnings("ignore:os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_raises_instead_of_hanging(sleep, sleep_fit):
    """Pool().map(fit, ...) with fork after a fit in the parent hung forever (JAX is not
    fork-safe): the child now raises ForkError at once."""
    assert sleep_fit.converged                         # JAX has run in this process
    with multiprocessing.get_context("fork").Pool(1) as pool:
        with pytest.raises(lmm_jax.ForkError, match="'spawn' or 'forkserver'"):
            pool.apply_async(_fit_loglik, (sleep,)).get(timeout=120)

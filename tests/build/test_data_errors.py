"""Bad input gets a clear, typed error: a FormulaError or DataError whose message names the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax import ConvergenceError, DataError, FormulaError, LMMError
from tests.helpers import assert_same_fit, quiet_fit


# == inputs that must give a clear error ========================================
def test_unknown_column(frame):
    with pytest.raises(DataError, match=r"'xx' is not a column of the data; did you mean 'x'"):
        lmm_jax.LMM("y ~ xx + (1 | g)", frame)
    with pytest.raises(DataError, match=r"grouping factor .*'G' is not a column.*did you mean 'g'"):
        lmm_jax.LMM("y ~ x + (1 | G)", frame)
    with pytest.raises(DataError, match=r"the response 'yy' is not a column.*did you mean 'y'"):
        lmm_jax.LMM("yy ~ x + (1 | g)", frame)


@pytest.mark.parametrize("column, dtype", [(["a", "b"] * 40, "str"), (["a", "b"] * 40, "category"),
                                           (np.arange(80.0), "category"), (np.arange(80.0), "object")])
def test_response_not_numeric(frame, column, dtype):
    data = frame.assign(y=pd.Series(column).astype(dtype))
    with pytest.raises(DataError, match=r"the response 'y' is not numeric \(dtype .*\).*numeric response"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


def test_response_constant(frame):
    with pytest.raises(DataError, match=r"the response 'y' is constant"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(y=3.5))


def test_empty_data(frame):
    with pytest.raises(DataError, match="no rows"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.iloc[:0])
    with pytest.raises(DataError, match="no rows"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": [], "x": [], "g": []})


def test_all_rows_dropped_by_missing_values(frame):
    data = frame.assign(x=np.where(np.arange(80) % 2 == 0, np.nan, frame.x),
                        y=np.where(np.arange(80) % 2 == 1, np.nan, frame.y))
    with pytest.raises(DataError, match=r"all 80 rows have a missing value.*'x': 40.*'y': 40"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


def test_inf_in_response(frame):
    y = frame.y.to_numpy().copy()
    y[5] = np.inf
    with pytest.raises(DataError, match=r"the response 'y' has 1 infinite"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(y=y))


def test_inf_in_covariates(frame):
    x = frame.x.to_numpy().copy()
    x[7] = -np.inf
    with pytest.raises(DataError, match=r"fixed-effects column\(s\) \['x'\] have infinite"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(x=x))
    with pytest.raises(DataError, match=r"random-effects term \(0 \+ x \| g\) has infinite.*\['x'\]"):
        lmm_jax.LMM("y ~ 1 + (0 + x | g)", frame.assign(x=x))
    with pytest.raises(DataError, match=r"infinite or NaN values \(after transforms"), np.errstate(divide="ignore"):
        lmm_jax.LMM("y ~ np.log(x) + (1 | g)", frame.assign(x=frame.x.abs().where(frame.index != 3, 0.0)))


def test_grouping_factor_with_one_level(frame):
    with pytest.raises(DataError, match=r"grouping factor 'g' has 1 level\(s\).*at least 2 levels"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(g="only"))


def test_term_with_as_many_levels_as_observations(frame):
    with pytest.raises(DataError, match=r"grouping factor 'id' has 80 levels for 80 observations"):
        lmm_jax.LMM("y ~ x + (1 | id)", frame.assign(id=np.arange(80)))


def test_more_random_effects_than_data_can_identify(frame):
    # 40 levels x 2 columns = 80 random effects for 80 observations (lme4: nobs > nRE)
    with pytest.raises(DataError, match=r"term \(x \| h\) has 80 random effects \(40 levels x 2 columns\)"):
        lmm_jax.LMM("y ~ x + (x | h)", frame.assign(h=np.arange(80) // 2))
    with pytest.raises(DataError, match=r"80 fixed-effects columns for 80 observations"):
        lmm_jax.LMM("y ~ label + (1 | g)", frame.assign(label=[f"r{i}" for i in range(80)]))


def test_random_slope_variable_not_in_the_data(frame):
    with pytest.raises(DataError, match=r"variable of the random-effects term \(z \| g\): 'z' is not a column"):
        lmm_jax.LMM("y ~ x + (z | g)", frame)


@pytest.mark.parametrize("formula, message", [
    ("y ~ x + (x | )", "no grouping factor after '|'"),
    ("y ~ x + ( | g)", "nothing before '|'"),
    ("y ~ x + (x | g", r"unbalanced parentheses: '\(' is never closed"),
    ("y ~ x + x | g)", r"unbalanced parentheses: '\)' without a matching"),
    ("y ~ x + (x ||| g)", "more than one bar"),
    ("y ~ x + (x || g || h)", "more than one bar"),
    ("y ~ x || g", "'|' outside parentheses"),
])
def test_malformed_bars(frame, formula, message):
    with pytest.raises(FormulaError, match=message) as info:
        lmm_jax.LMM(formula, frame)
    assert info.value.formula == formula and info.value.position is not None
    assert "^" in str(info.value)  # points at the token


def test_formula_without_tilde(frame):
    with pytest.raises(FormulaError, match="formula has no '~'"):
        lmm_jax.LMM("y x + (1 | g)", frame)
    with pytest.raises(FormulaError, match="more than one '~'"):
        lmm_jax.LMM("y ~ x ~ (1 | g)", frame)


def test_duplicated_column_names(frame):
    data = pd.concat([frame, frame[["x"]]], axis=1)
    with pytest.raises(DataError, match=r"duplicated column names \['x'\]"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


@pytest.mark.parametrize("bad", [[1, 2, 3], np.zeros((80, 3)), "data.csv", 42, None])
def test_non_dataframe_data(frame, base_fit, bad):
    with pytest.raises(DataError, match="must be a pandas DataFrame or a dict of equal-length arrays"):
        lmm_jax.LMM("y ~ x + (1 | g)", bad)
    with pytest.raises(DataError, match="equal length"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": frame.y.to_numpy(), "x": frame.x.to_numpy()[:5], "g": frame.g})
    with pytest.raises(DataError, match="1-dimensional"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": np.zeros((80, 2)), "x": frame.x.to_numpy(), "g": frame.g})
    as_dict = {c: frame[c].to_numpy() for c in frame.columns}
    assert_same_fit(quiet_fit("y ~ x + (1 | g)", as_dict), base_fit)


def test_errors_are_lmm_errors():
    assert issubclass(FormulaError, LMMError) and issubclass(DataError, LMMError)
    assert issubclass(ConvergenceError, LMMError)
    assert issubclass(FormulaError, ValueError) and issubclass(DataError, ValueError)

"""polars DataFrames go in directly, without pyarrow: fits and predictions equal the pandas ones,
an Enum's declared order of levels sets the reference level, nulls are missing values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.build.design import as_frame
from tests.conftest import load_reference

pl = pytest.importorskip("polars")


def test_columns_convert_with_their_nulls_and_category_order():
    df = pl.DataFrame({"n": [1, 2, None], "x": [1.5, None, 3.0], "s": ["b", None, "a"], "k": [4, 5, 6],
                       "c": pl.Series(["z", "y", None], dtype=pl.Categorical),
                       "e": pl.Series(["lo", "hi", "lo"], dtype=pl.Enum(["lo", "mid", "hi"]))})
    f = as_frame(df)
    assert list(f.columns) == ["n", "x", "s", "k", "c", "e"] and f.index.equals(pd.RangeIndex(3))
    np.testing.assert_array_equal(f.n, [1.0, 2.0, np.nan])
    np.testing.assert_array_equal(f.x, [1.5, np.nan, 3.0])
    assert f.k.dtype == np.int64 and f.s.isna().tolist() == [False, True, False]
    assert list(f.c.cat.categories) == ["y", "z"] and f.c.isna().tolist() == [False, False, True]
    assert list(f.e.cat.categories) == ["lo", "mid", "hi"] and list(f.e) == ["lo", "hi", "lo"]
    with pytest.raises(lmm_jax.DataError, match=r"polars LazyFrame; .*data\.collect\(\)"):
        as_frame(df.lazy())


def test_fit_and_predict_on_polars_equal_pandas(sleepstudy_fit):
    sleep = lmm_jax.datasets.load("sleepstudy")
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", pl.from_dict(sleep.to_dict(orient="list")))
    np.testing.assert_allclose(fit.theta, sleepstudy_fit.theta, rtol=1e-10)
    np.testing.assert_allclose(fit.beta, sleepstudy_fit.beta, rtol=1e-10)
    assert fit.loglik == pytest.approx(sleepstudy_fit.loglik, rel=1e-12)
    new = pd.DataFrame({"Days": [0.0, 3.5, 9.0], "Subject": ["308", "335", "999"]})
    got = sleepstudy_fit.predict(pl.DataFrame(new.to_dict(orient="list")), allow_new_levels=True)
    np.testing.assert_allclose(got, sleepstudy_fit.predict(new, allow_new_levels=True), rtol=1e-12)


def test_enum_levels_set_the_reference_level():
    """ingot's metal as Enum(n, c, i): n is the reference level. lme4's fit with levels c, i, n
    reparametrised: (Intercept) = 70.186 + 0.914, metalc = -0.914, metali = 5.714 - 0.914,
    and the same REML log-likelihood."""
    ref = load_reference("ingot_reml")
    ingot = lmm_jax.datasets.load("ingot")
    cols = ingot.to_dict(orient="list")
    enum = pl.DataFrame({**cols, "metal": pl.Series(cols["metal"], dtype=pl.Enum(["n", "c", "i"]))})
    fit = lmm_jax.fit(ref["formula"], enum)
    b0, b_i, b_n = ref["beta"]
    assert list(fit.design.fixef_names) == ["(Intercept)", "metalc", "metali"]
    np.testing.assert_allclose(fit.beta, [b0 + b_n, -b_n, b_i - b_n], rtol=1e-6)
    assert fit.loglik == pytest.approx(ref["logLik"], rel=1e-8)
    # a Categorical keeps polars' (lexical) order: lme4's c, i, n
    cat = pl.DataFrame({**cols, "metal": pl.Series(cols["metal"], dtype=pl.Categorical)})
    assert list(lmm_jax.fit(ref["formula"], cat).design.fixef_names) == ["(Intercept)", "metali", "metaln"]

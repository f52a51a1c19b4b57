"""t tests carried by batched fits: each row of ``BatchResult.coef_table()``
equals the single fit's ``LMMResult.coefs()`` of that response.

The sleepstudy batches have the shape (4 columns, default options) that
tests/batched/test_bootstrap.py compiles too. BFGS (the batch default) and
Newton (the single fit) stop within ~3e-7 of each other in theta, which
moves the SEs by as much; the df, a ratio of derivatives, by up to ~3e-6.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.errors import InferenceError

from tests.helpers import REF_DIR, load_data

SLEEP = "Reaction ~ Days + (Days | Subject)"
SPRUCE = "logSize ~ years + offset(base) + (1 | Tree)"
COLUMNS = ["estimate", "std_error", "df", "t", "p", "lower", "upper"]
RTOL = {"estimate": 1e-8, "std_error": 1e-6, "df": 1e-4, "t": 1e-6, "p": 1e-3, "lower": 1e-6, "upper": 1e-6}


def quiet(formula, data, **kwargs) -> lmm_jax.LMMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        return lmm_jax.fit(formula, data, **kwargs)


def assert_rows_equal(table: pd.DataFrame, fit: int, one: pd.DataFrame) -> None:
    rows = table[table["fit"] == fit].set_index("term")
    assert list(rows.index) == list(one.index)
    for c in COLUMNS:
        np.testing.assert_allclose(rows[c], one[c], rtol=RTOL[c], atol=1e-12, err_msg=f"fit {fit}, {c}")


@pytest.mark.parametrize("theta", [None, [0.9, 0.0, 0.05]], ids=["fitted", "no_slope_variance"])
def test_batch_coef_table_equals_single_fits(sleepstudy_fit, theta):
    """Regular fits, and responses simulated without slope variance: three of
    these four fits are singular (theta_3 = 0), where the variance
    parameters' covariance 2 H^{-1} is a pseudo-inverse in both."""
    data = load_data("sleepstudy")
    params = None if theta is None else dict(beta=sleepstudy_fit.beta, theta=theta, sigma=sleepstudy_fit.sigma)
    Y = np.asarray(lmm_jax.simulate(sleepstudy_fit, 4, key=11 if theta is None else 2, params=params))
    batch = sleepstudy_fit.model.fit_batch(Y)
    table = batch.coef_table()
    assert list(table.columns) == ["fit", "term"] + COLUMNS + ["converged", "singular"]
    assert len(table) == 8 and batch.ddf == "satterthwaite" and table.attrs["level"] == 0.95
    assert batch.vcov.shape == (4, 2, 2) and batch.df.shape == (4, 2)
    assert list(batch.singular) == ([False] * 4 if theta is None else [True, False, True, True])
    narrow = batch.coef_table(level=0.9)
    sdcor = batch.sdcor_table()
    assert list(sdcor.columns) == ["fit", "component", "estimate", "converged", "singular"]
    for i in range(4):
        one = quiet(SLEEP, data.assign(Reaction=Y[:, i]))
        assert one.singular == batch.singular[i]
        assert_rows_equal(table, i, one.coefs())
        assert_rows_equal(narrow, i, one.coefs(level=0.9))
        vc = one.varcorr_table()["sdcor"]
        rows = sdcor[sdcor["fit"] == i].set_index("component")["estimate"]
        assert list(rows.index) == list(vc.index)
        np.testing.assert_allclose(rows, vc, rtol=1e-5, atol=1e-8)
    # the balanced design's Satterthwaite df of Days: the 17 of 18 subjects (summary of sleepstudy)
    if theta is None:
        np.testing.assert_allclose(batch.df[:, 1], 17.0, rtol=1e-6)


def _spruce() -> pd.DataFrame:
    return pd.read_csv(REF_DIR / "weights" / "spruce.csv", dtype={"Tree": str})


def test_weighted_batch_coef_table_equals_single_fits():
    """Prior weights and an offset pass through the batch's working response:
    every ddf method's rows equal the weighted single fit's."""
    data = _spruce()
    w = np.tile([1.0, 2.0], len(data) // 2 + 1)[:len(data)]
    fit = quiet(SPRUCE, data, weights=w)
    Y = np.asarray(lmm_jax.simulate(fit, 3, key=4))
    n, p = fit.nobs, fit.design.p
    singles = [quiet(SPRUCE, data.assign(logSize=Y[:, i]), weights=w) for i in range(3)]
    batch = fit.model.fit_batch(Y)
    for ddf in ("satterthwaite", "residual", "none"):
        table = batch.coef_table() if ddf == "satterthwaite" else fit.model.fit_batch(Y, ddf=ddf).coef_table()
        for i, one in enumerate(singles):
            assert_rows_equal(table, i, one.coefs(ddf))
    # df: lmerTest's per fit, n - p, infinite (z tests)
    assert np.all((batch.df > 1) & (batch.df < n - p))
    residual = fit.model.fit_batch(Y, ddf="Residual")
    assert residual.ddf == "residual" and np.all(residual.df == n - p)
    np.testing.assert_allclose(residual.vcov, batch.vcov, rtol=1e-12)


def test_batch_ddf_is_checked(sleepstudy_fit):
    Y = np.tile(np.asarray(sleepstudy_fit.design.y)[:, None], (1, 4))   # 4 columns: the batch shape compiled above
    with pytest.raises(InferenceError, match="not available for batched fits"):
        sleepstudy_fit.model.fit_batch(Y, ddf="kr")
    with pytest.raises(InferenceError, match="ddf must be one of"):
        lmm_jax.fit_many([sleepstudy_fit.model], ddf="wald")
    with pytest.raises(InferenceError, match="level must be in"):
        sleepstudy_fit.model.fit_batch(Y).coef_table(level=95)

"""Simulation from planned designs and fits, power and power curves (lmm_jax.planning)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lmm_jax
from lmm_jax.runtime.scope import float64
from lmm_jax.batched.batch import _fit_responses, prepare_fit_batch
from lmm_jax.batched.params import theta_from_sd_cor
from lmm_jax.errors import DataError

FORMULA = "Reaction ~ Days + (Days | Subject)"
PARAMS = {"beta": {"(Intercept)": 250.0, "Days": 3.0}, "sd_(Intercept)|Subject": 25.0, "sd_Days|Subject": 6.0,
          "cor_Days.(Intercept)|Subject": 0.1, "sigma": 25.0}


def planned_design(subjects: int = 20, days: int = 10) -> pd.DataFrame:
    """simr's makeLmer data: covariates and groups, no response."""
    return pd.DataFrame({"Subject": np.repeat([f"s{i}" for i in range(subjects)], days),
                         "Days": np.tile(np.arange(days), subjects)})


def test_params_by_name_give_lme4s_theta():
    m = lmm_jax.LMM(FORMULA, planned_design(), planned=True)
    theta = theta_from_sd_cor(PARAMS, m.design.theta_layout, PARAMS["sigma"])
    L = np.array([[theta[0], 0.0], [theta[1], theta[2]]]) * PARAMS["sigma"]
    S = L @ L.T
    np.testing.assert_allclose(np.sqrt(np.diag(S)), [25.0, 6.0], rtol=1e-12)
    assert S[0, 1] / (25.0 * 6.0) == pytest.approx(0.1, rel=1e-12)
    zero = theta_from_sd_cor({**PARAMS, "sd_Days|Subject": 0.0}, m.design.theta_layout, 25.0)
    np.testing.assert_allclose(zero, [1.0, 0.0, 0.0], atol=1e-15)
    for bad, match in (({**PARAMS, "sd_Days|Subject": -1.0}, "non-negative SD"),
                       ({**PARAMS, "cor_Days.(Intercept)|Subject": 1.5}, r"correlation in \[-1, 1\]"),
                       ({k: v for k, v in PARAMS.items() if k != "sd_Days|Subject"}, "missing the SD"),
                       ({**PARAMS, "sd_Day|Subject": 1.0}, "unknown entries"),
                       ({**PARAMS, "beta": {"(Intercept)": 1.0}}, "missing")):
        with pytest.raises(ValueError, match=match):
            lmm_jax.simulate((FORMULA, planned_design()), 2, key=0, params=bad)


def test_a_planned_design_simulates_its_parameters_and_cannot_be_fitted():
    """256 replicates of 20 subjects x 10 days (every batch in this module has
    256 columns: one compiled fit per model): the batched refits recover the
    parameters (means within 4 Monte Carlo SEs)."""
    m = lmm_jax.LMM(FORMULA, planned_design(), planned=True)
    with pytest.raises(DataError, match="planned model has no response"):
        m.fit()
    Y = lmm_jax.simulate((FORMULA, planned_design()), 256, key=0, params=PARAMS)
    assert Y.shape == (200, 256)
    fits = m.fit_batch(Y)
    assert fits.n_failed == 0
    beta = fits.beta
    se = beta.std(axis=0) / np.sqrt(len(beta))
    np.testing.assert_array_less(np.abs(beta.mean(axis=0) - [250.0, 3.0]), 4 * se)
    assert np.mean(fits.sigma) == pytest.approx(25.0, rel=0.02)


def test_power_of_a_planned_design_matches_the_closed_form():
    """Balanced 20 x 10 design, slope 3: the slope's SE is
    sqrt(sd_Days^2 / 20 + sigma^2 / (20 sum (d - 4.5)^2)) = 1.4757, so the LRT's
    power is that of a z test with mean 3 / 1.4757 (known variances; the
    estimated ones add little at 20 subjects): within 4 Monte Carlo SEs."""
    se = np.sqrt(6.0 ** 2 / 20 + 25.0 ** 2 / (20 * np.sum((np.arange(10) - 4.5) ** 2)))
    z = 3.0 / se
    expected = stats.norm.sf(1.959964 - z) + stats.norm.cdf(-1.959964 - z)
    res = lmm_jax.power((FORMULA, planned_design()), "Reaction ~ 1 + (Days | Subject)", n=256, key=1,
                        params=PARAMS)
    assert res.n == 256 and res.n_failed == 0
    assert abs(res.power - expected) < 4 * np.sqrt(expected * (1 - expected) / res.n)
    lo, hi = res.interval
    assert lo < res.power < hi and hi - lo < 0.14
    assert "LRT" in repr(res) and "%" in repr(res)


def test_conditional_and_new_data_simulation(sleepstudy_fit):
    fit = sleepstudy_fit
    Yu = np.asarray(lmm_jax.simulate(fit, 400, key=2, use_u=True))
    resid = Yu - fit.fitted[:, None]
    assert abs(resid.mean()) < 4 * fit.sigma / np.sqrt(resid.size)
    assert resid.std() == pytest.approx(fit.sigma, rel=0.02)
    data = lmm_jax.datasets.load("sleepstudy")
    more = lmm_jax.extend(data, "Subject", 25)
    assert more["Subject"].nunique() == 25 and len(more) == 250
    assert lmm_jax.extend(data, "Subject", 5)["Subject"].nunique() == 5
    Yn = np.asarray(lmm_jax.simulate(fit, 400, key=0, newdata=more.drop(columns="Reaction")))
    assert Yn.shape == (250, 400)
    mean = fit.beta[0] + fit.beta[1] * more["Days"].to_numpy()
    assert np.abs(Yn.mean(axis=1) - mean).max() < 5 * 60 / np.sqrt(400)     # sd of y at Days 9 < 60
    with pytest.raises(DataError, match="not seen in the fit"):
        lmm_jax.simulate(fit, 3, key=0, newdata=more.drop(columns="Reaction"), use_u=True)


def test_t_test_power_and_a_power_curve():
    """The t test of the slope (Satterthwaite df, 19 for this balanced
    design) has the power of a noncentral t: within 4 Monte Carlo SEs; a
    power curve over numbers of subjects rises with them, each size one
    batched fit, reproducible from its key. Its sizes are 10 subjects (a cut
    of the design) and the design's own 20, whose batch the power test
    compiled."""
    se = np.sqrt(6.0 ** 2 / 20 + 25.0 ** 2 / (20 * np.sum((np.arange(10) - 4.5) ** 2)))
    crit = stats.t.ppf(0.975, 19)
    expected = stats.nct.sf(crit, 19, 3.0 / se) + stats.nct.cdf(-crit, 19, 3.0 / se)
    res = lmm_jax.power((FORMULA, planned_design()), "Days", n=256, key=3, params=PARAMS)
    assert res.n_failed == 0
    assert abs(res.power - expected) < 4 * np.sqrt(expected * (1 - expected) / res.n)
    # a power curve prepares its other size buckets' fits (on a second thread) under the key of the call it
    # then makes: preparing the power test's call again builds nothing new
    builds = _fit_responses._cache_size()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmm_jax.runtime.kernel, "SPARE_CORES", True)          # the suite's workers have none
        with float64():                                                   # as inside lmm_jax's calls
            prepare_fit_batch(lmm_jax.LMM(FORMULA, planned_design(), planned=True), 256, pad_levels=True)
    assert _fit_responses._cache_size() == builds
    curve = lmm_jax.power_curve((FORMULA, planned_design()), "Days", along="Subject", sizes=[10, 20], n=256,
                                key=4, params=PARAMS)
    assert _fit_responses._cache_size() == builds            # 10 and 20 subjects: one size bucket
    assert list(curve["size"]) == [10, 20] and list(curve["n_rows"]) == [100, 200]
    assert curve["power"].iloc[0] < curve["power"].iloc[1]
    again = lmm_jax.power_curve((FORMULA, planned_design()), "Days", along="Subject", sizes=[10], n=256, key=4,
                                params=PARAMS)
    assert again["power"].iloc[0] == curve["power"].iloc[0]
    with pytest.raises(DataError, match="neither a fixed effect"):
        lmm_jax.power((FORMULA, planned_design()), "Day", n=8, params=PARAMS)

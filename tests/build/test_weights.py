"""Prior weights, offsets and the working basis (lmm_jax.build.working) against lme4.

References: tests/reference/make_weights_reference.R (lme4 1.1-31, lmerTest 3.1-3): school means of
mlmRev's Chem97 and school x intake x sex cell means of Exam, weighted by their counts; nlme's Spruce
with each tree's first log size as an offset (formula and argument forms, and with weights).
"""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.errors import DataError, ScalingWarning

from ..helpers import REF_DIR

WEIGHTS_DIR = REF_DIR / "weights"
REF = json.loads((WEIGHTS_DIR / "weights.json").read_text())
LOGLIK_TOL, RTOL, DF_RTOL = 1e-6, 1e-5, 1e-4


def _data(name: str) -> pd.DataFrame:
    dtypes = {"chem97_schools": {"school": str, "lea": str}, "exam_cells": {"school": str},
              "spruce": {"Tree": str}}[name]
    return pd.read_csv(WEIGHTS_DIR / f"{name}.csv", dtype=dtypes)


def _alternate(n: int) -> np.ndarray:
    return np.tile([1.0, 2.0], n // 2 + 1)[:n]


CASES = {
    "chem97_reml": lambda: lmm_jax.fit("score ~ gcsescore + (1 | lea)", _data("chem97_schools"), weights="n"),
    "chem97_ml": lambda: lmm_jax.fit("score ~ gcsescore + (1 | lea)", _data("chem97_schools"), reml=False,
                                     weights="n"),
    "exam_reml": lambda: lmm_jax.fit("normexam ~ standLRT + sex + intake + (standLRT | school)",
                                     _data("exam_cells"), weights="n"),
    "exam_ml": lambda: lmm_jax.fit("normexam ~ standLRT + sex + intake + (standLRT | school)", _data("exam_cells"),
                                   reml=False, weights=_data("exam_cells")["n"].to_numpy()),
    "spruce_offset": lambda: lmm_jax.fit("logSize ~ years + offset(base) + (years | Tree)", _data("spruce")),
    "spruce_offset_argument": lambda: lmm_jax.fit("logSize ~ years + (years | Tree)", _data("spruce"),
                                                  offset="base"),
    "spruce_offset_weighted": lambda: lmm_jax.fit("logSize ~ years + offset(base) + (1 | Tree)", _data("spruce"),
                                                  weights=_alternate(len(_data("spruce")))),
}
_fits: dict[str, lmm_jax.LMMResult] = {}


def _fit(case: str) -> lmm_jax.LMMResult:
    if case not in _fits:
        _fits[case] = CASES[case]()
    return _fits[case]


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_and_offset_fits_equal_lme4(case):
    fit, ref = _fit(case), REF[case]
    assert list(fit.fixef.index) == ref["fixef_names"]
    assert abs(fit.loglik - ref["loglik"]) < LOGLIK_TOL
    assert fit.objective == pytest.approx(ref["criterion"], abs=2 * LOGLIK_TOL)
    np.testing.assert_allclose(fit.beta, ref["fixef"], rtol=RTOL)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov.to_numpy())), ref["se"], rtol=RTOL)
    np.testing.assert_allclose(fit.sigma, ref["sigma"], rtol=RTOL)
    np.testing.assert_allclose(fit.varcorr["sdcor"].to_numpy(), ref["varcorr_sdcor"], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(fit.fitted[:10], ref["fitted_head"], rtol=RTOL)
    np.testing.assert_allclose(fit.residuals[:10], ref["residuals_head"], rtol=RTOL, atol=1e-6)
    if "df_satterthwaite" in ref:
        np.testing.assert_allclose(fit.coef_table["df"].to_numpy(), ref["df_satterthwaite"], rtol=DF_RTOL)


def test_weighted_deviance_function_is_lme4s(x64):
    """lme4's devFunOnly of a weighted REML fit includes -sum(log w)."""
    fit = _fit("chem97_reml")
    f = jax.jit(lmm_jax.make_deviance(fit.model, reml=True, param="theta"))     # one program, not op by op
    assert float(f(np.array([1.0]))) == pytest.approx(REF["chem97_reml"]["devfun_at_1"], abs=1e-7)


def test_offset_predictions_on_new_data_equal_lme4():
    ref = REF["spruce_offset"]
    nd = pd.DataFrame({"years": [0.6, 0.7], "base": [4.0, 5.0], "Tree": ref["predict_newdata_trees"]})
    np.testing.assert_allclose(_fit("spruce_offset").predict(nd, allow_new_levels=True), ref["predict_newdata"],
                               rtol=1e-8)
    np.testing.assert_allclose(_fit("spruce_offset_argument").predict(nd, allow_new_levels=True),
                               ref["predict_newdata"], rtol=1e-8)
    sp = _data("spruce")
    arr = lmm_jax.fit("logSize ~ years + (years | Tree)", sp, offset=sp["base"].to_numpy())
    with pytest.raises(DataError, match="fitted with an offset array: pass offset="):
        arr.predict(nd, allow_new_levels=True)
    np.testing.assert_allclose(arr.predict(nd, allow_new_levels=True, offset=nd["base"].to_numpy()),
                               ref["predict_newdata"], rtol=1e-8)


def test_simulation_and_bootstrap_honour_the_weights():
    """Simulated residual variances are sigma^2 / w_i, and the bootstrap's
    refits recover sigma: ignoring the weights in either would give
    sigma * sqrt(mean(w)) = 1.22 sigma here (w alternates 1, 2)."""
    fit = _fit("spruce_offset_weighted")
    d = fit.design
    Y = np.asarray(lmm_jax.simulate(fit, 400, key=3, params=dict(beta=fit.beta, theta=[0.0], sigma=fit.sigma)))
    resid = Y - (d.X @ fit.beta + d.offset)[:, None]
    for w in (1.0, 2.0):
        var = resid[d.weights == w].var()
        assert var == pytest.approx(fit.sigma ** 2 / w, rel=0.03)
    boot = fit.bootstrap(64, key=5)
    assert boot.n_failed == 0
    assert np.median(boot.replicates.sigma) == pytest.approx(fit.sigma, rel=0.03)


def test_profile_intervals_of_a_weighted_fit():
    """Variance components' profile bounds equal lme4's; for the fixed
    effects lme4's profile fails here (non-monotonic, spline fallback: years
    (1.02014, 1.02171) beside a Wald interval of (0.98985, 1.05057)), and the
    bounds are checked by refitting with the effect moved into the offset:
    zeta = sqrt(deviance - deviance_hat) = 1.95996 at both ends."""
    sp = _data("spruce")
    w = _alternate(len(sp))
    fit = lmm_jax.fit("logSize ~ years + offset(base) + (1 | Tree)", sp, weights=w, reml=False)
    ci = fit.confint(method="profile")
    np.testing.assert_allclose(ci.loc["sd_(Intercept)|Tree"], [0.2889112218, 0.3998386923], rtol=1e-5)
    np.testing.assert_allclose(ci.loc["sigma"], [0.2699633220, 0.2965857732], rtol=1e-5)
    for c in ci.loc["years"]:
        refit = lmm_jax.fit("logSize ~ 1 + (1 | Tree)", sp, weights=w, reml=False, offset=sp.base + c * sp.years)
        assert np.sqrt(refit.objective - fit.objective) == pytest.approx(1.959964, abs=1e-4)


def test_zero_weights_drop_rows_and_bad_weights_are_named():
    data = _data("spruce")
    w = _alternate(len(data))
    w[:13] = 0.0
    fit = lmm_jax.fit("logSize ~ years + (1 | Tree)", data, weights=w)
    ref = lmm_jax.fit("logSize ~ years + (1 | Tree)", data.iloc[13:], weights=w[13:])
    assert fit.design.n_zero_weight_rows == 13 and fit.nobs == len(data) - 13
    assert fit.loglik == pytest.approx(ref.loglik, abs=1e-9)
    for bad, kind in ((-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")):
        w2 = _alternate(len(data))
        w2[5] = bad
        with pytest.raises(DataError, match=rf"weights column 'w' has 1 {kind} value"):
            lmm_jax.LMM("logSize ~ years + (1 | Tree)", data.assign(w=w2), weights="w")
    with pytest.raises(DataError, match="'wt' is not a column"):
        lmm_jax.LMM("logSize ~ years + (1 | Tree)", data, weights="wt")
    with pytest.raises(DataError, match="one entry per row"):
        lmm_jax.LMM("logSize ~ years + (1 | Tree)", data, weights=np.ones(3))


@pytest.fixture(scope="module")
def sleep():
    return lmm_jax.datasets.load("sleepstudy")


def test_covariates_and_response_far_from_zero_fit_exactly(sleep, sleepstudy_fit):
    """Days + 1e6 in the fixed part, a 1e4 + N(0, 1) covariate beside Days,
    and the response + 1e8 (issue 17: lme4 -122.86 / NaN here for raw products):
    the unshifted log-likelihood to 1e-8, the slope to 1e-8 relative, no warning."""
    base = sleepstudy_fit
    rng = np.random.default_rng(0)
    noise = rng.normal(size=len(sleep))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shifted = lmm_jax.fit("Reaction ~ D + (Days | Subject)", sleep.assign(D=sleep.Days + 1e6))
        with_n = lmm_jax.fit("Reaction ~ Days + N + (Days | Subject)", sleep.assign(N=1e4 + noise))
        centred = lmm_jax.fit("Reaction ~ Days + N + (Days | Subject)", sleep.assign(N=noise))
        high = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", sleep.assign(Reaction=sleep.Reaction + 1e8))
    assert shifted.loglik == pytest.approx(base.loglik, abs=1e-8)
    assert shifted.beta[1] == pytest.approx(base.beta[1], rel=1e-8)
    assert shifted.beta[0] == pytest.approx(base.beta[0] - 1e6 * base.beta[1], rel=1e-8)
    np.testing.assert_allclose(shifted.theta, base.theta, rtol=1e-7)
    assert with_n.loglik == pytest.approx(centred.loglik, abs=1e-8)
    np.testing.assert_allclose(with_n.beta[1:], centred.beta[1:], rtol=1e-7)
    assert high.loglik == pytest.approx(base.loglik, abs=1e-8)
    assert high.sigma == pytest.approx(base.sigma, rel=1e-8)
    assert high.beta[0] - 1e8 == pytest.approx(base.beta[0], rel=1e-7)


@pytest.mark.parametrize("shift_sds, scale", [(1e2, 1.0), (1e5, 1e-3), (1e8, 1e3)])
def test_shifting_and_scaling_a_covariate_changes_only_what_it_must(base_fit, frame, shift_sds, scale):
    """x -> scale * (x + shift): the log-likelihood (REML: its criterion
    moves by exactly 2 log|scale|, log det(X'V^-1 X) of the new basis),
    theta and sigma stay; the slope divides by scale; only the intercept
    absorbs the shift. Shifts up to 1e8 of x's SDs."""
    x = frame["x"]
    c = shift_sds * x.std()
    fit = lmm_jax.fit("y ~ x + (1 | g)", frame.assign(x=scale * (x + c)))
    assert fit.objective == pytest.approx(base_fit.objective + 2 * np.log(scale), abs=1e-7)
    np.testing.assert_allclose(fit.theta, base_fit.theta, rtol=1e-6)
    assert fit.sigma == pytest.approx(base_fit.sigma, rel=1e-8)
    assert fit.beta[1] * scale == pytest.approx(base_fit.beta[1], rel=1e-7)
    assert fit.beta[0] + fit.beta[1] * scale * c == pytest.approx(base_fit.beta[0], rel=1e-7, abs=1e-7)
    np.testing.assert_allclose(fit.coef_table["df"].to_numpy()[1], base_fit.coef_table["df"].to_numpy()[1],
                               rtol=1e-6)


def test_a_random_slope_far_from_zero_still_warns(sleep):
    with pytest.warns(ScalingWarning, match=r"D in \(\(Intercept\) \+ D \| Subject\)"):
        lmm_jax.LMM("Reaction ~ D + (D | Subject)", sleep.assign(D=sleep.Days + 1e6))

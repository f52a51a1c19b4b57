"""Profile intervals whose constrained optima lie on the boundary, against an
independent profile (tests/reference/profile_boundary.json, made by
make_profile_reference.R: L-BFGS-B over a box that includes an SD of 0 and a
correlation of -+1), and the profile's budget.

Where the independent end is a root of zeta, ours must lie where the
independent zeta is -+1.95996 to within 1e-3 (the root's distance times the
independent slope d zeta / d value); where it is the boundary, ours is that
boundary, flagged so.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.inference.profile import BOUNDARY, BUDGET, ESTIMATE, ROOT, ProfileParameter, _End, profile_zeta

from tests.helpers import REF_DIR

IND = json.loads((REF_DIR / "profile_boundary.json").read_text())
ZETA_TOL = 1e-3


def _fit(formula: str, data: pd.DataFrame) -> lmm_jax.LMMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        return lmm_jax.fit(formula, data, reml=False)


@pytest.fixture(scope="module")
def orthodont():
    # ML: the fit lme4's profile (and ours) uses for the issue's REML fit, without compiling the REML one
    return _fit("distance ~ age * Sex + (age | Subject)", pd.read_csv(REF_DIR / "orthodont.csv", dtype=str)
                .astype({"distance": float, "age": float}))


@pytest.fixture(scope="module")
def singular():
    data = pd.read_csv(REF_DIR / "slope_singular.csv", dtype={"g": str})
    return {s: _fit("y ~ x + (x | g)", data[data.set == s]) for s in ("a", "b")}


def _check_against_independent(ci: pd.DataFrame, ref: dict) -> None:
    assert np.all(np.isfinite(ci.to_numpy()))
    for name, ends in ref["independent"].items():
        for col, k in (("lower", 0), ("upper", 1)):
            ours, ind = ci.loc[name, col], ends[col]
            if ind["kind"] == "root":
                assert ci.attrs["status"][name][k] == ROOT, (name, col)
                assert abs(ind["slope"] * (ours - ind["value"])) < ZETA_TOL, (name, col, ours, ind["value"])
            else:
                assert ours == ind["value"], (name, col, ours)
                assert ci.attrs["status"][name][k] == {"boundary": BOUNDARY, "estimate": ESTIMATE}[ind["kind"]]


@pytest.mark.slow
def test_orthodont_profile_at_the_boundary(orthodont):
    """Orthodont (lme4: sigma's upper end NA, correlation -1 and 1). The sigma upper end 1.58839 has the
    age SD at exactly 0; the independent ML profile puts zeta = 1.95996 there. (The issue's 1.598 is the
    root of the REML criterion's profile, which lme4 does not profile.) The correlation's profile is
    capped at |zeta| = 0.913 (the age SD at 0), so its ends are -1 and 1, not the interior branch's
    -0.914."""
    ref = IND["orthodont"]
    ci = orthodont.confint(method="profile")
    assert list(ci.index) == ref["lme4_confint"]["names"]
    _check_against_independent(ci, ref)
    assert abs(ci.loc["sigma", "upper"] - 1.588388) < 2e-6
    assert abs(ref["sigma_upper_reml_criterion"] - 1.5978) < 1e-4
    cor = "cor_age.(Intercept)|Subject"
    assert "sd_age|Subject can be 0" in ci.attrs["notes"][cor]
    lme4 = ref["lme4_confint"]
    assert lme4["upper"][3] is None
    assert np.allclose(ci["lower"].to_numpy()[4:], lme4["lower"][4:], rtol=1e-4)
    assert np.allclose(ci["upper"].to_numpy()[4:], lme4["upper"][4:], rtol=1e-4)


def test_correlation_estimated_at_one(singular):
    """ML fits with a correlation of +1 (theta_3 = 0): the upper end is the estimate, the lower one a
    root of the profile (set a: -0.3304; lme4: -1) or, where the slope SD's 0 is within the cutoff
    (set b: zeta -1.789 there), -1. Set a's slope SD lower end is the independent 0.035271 (lme4's
    spline gives 0.034702)."""
    for s in ("a", "b"):
        ref = IND[f"slope_singular_{s}"]
        fit = singular[s]
        assert fit.theta[2] == 0.0
        ci = fit.confint(method="profile")
        assert ci.attrs["not_converged"] == 0
        _check_against_independent(ci, ref)
        assert ci.loc["cor_x.(Intercept)|g", "upper"] == 1.0
    ci_a = singular["a"].confint(method="profile", which=["cor_x.(Intercept)|g"])
    root = IND["slope_singular_a"]["independent"]["cor_x.(Intercept)|g"]["lower"]["value"]
    assert abs(ci_a.iloc[0, 0] - root) < 1e-4
    # profile_zeta follows the same branch of constrained optima as the search
    zeta = profile_zeta(singular["a"], "cor_x.(Intercept)|g", [0.5, 0.0, root, -0.9])["zeta"].to_numpy()
    assert abs(zeta[2] + 1.959964) < ZETA_TOL
    assert zeta[3] == pytest.approx(IND["slope_singular_a"]["zeta_sd_zero"][1], abs=1e-6)   # the cap


def test_correlation_of_a_zero_sd_is_not_identified():
    """A correlation whose term has an SD estimated at 0 (estimate NaN) gets -1 and 1, never NaN."""
    p = ProfileParameter("cor_x.(Intercept)|g", "cor", float("nan"), (0, 1, 0))
    ends = [_End(p, side, 1.96, 0.3, 1.0, 1e-7) for side in (-1, 1)]
    assert [(e.done, e.value, e.status) for e in ends] == [(True, -1.0, BOUNDARY), (True, 1.0, BOUNDARY)]


def test_profile_budget_reports_unreached_ends(fits):
    """Two root-search steps per end: no end is NaN; each one the budget did not reach is its
    bracket's secant root or the range's end, flagged, with a warning; progress=True shows a bar."""
    fit = fits("sleepstudy_ml")
    with pytest.warns(lmm_jax.ConvergenceWarning, match="raise max_iter"):
        ci = fit.confint(method="profile", max_iter=2, progress=True)
    assert not ci.isna().to_numpy().any()
    status = ci.attrs["status"]
    short = [(n, k) for n in ci.index for k in (0, 1) if status[n][k] == BUDGET]
    assert len(short) > 4
    for n, k in short:
        assert "steps" in ci.attrs["notes"][n]
    full = fits("sleepstudy_ml").confint(method="profile")
    assert all(s == (ROOT, ROOT) for s in full.attrs["status"].values())
    for n, k in short:
        v, exact = ci.loc[n].iloc[k], full.loc[n].iloc[k]
        assert np.isinf(v) or v in (-1.0, 0.0, 1.0) or abs(v - exact) < 0.5 * abs(exact)

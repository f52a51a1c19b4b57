"""Profile-likelihood intervals of a GLMM against lme4's confint(profile(glmer(cbpp)))
(tests/reference/glmm/cbpp_binomial.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lmm_jax
from lmm_jax import GLMM

REF = json.loads((Path(__file__).parents[1] / "reference" / "glmm" / "cbpp_binomial.json").read_text())


@pytest.fixture(scope="module")
def cbpp_fit() -> lmm_jax.GLMMResult:
    return GLMM("cbind(incidence, size - incidence) ~ period + (1 | herd)", lmm_jax.datasets.load("cbpp")).fit()


def test_profile_intervals_are_lme4s(cbpp_fit):
    ci = cbpp_fit.confint("profile")
    ref = REF["confint_profile"]
    assert list(ci.index) == ref["names"] and list(ci.columns) == ["2.5 %", "97.5 %"]
    # lme4 inverts a spline through its profile points; the roots here are the profile's own: they differ by
    # that interpolation error, at most 1.6e-4 (period4's lower end)
    np.testing.assert_allclose(ci.to_numpy(), np.column_stack([ref["lower"], ref["upper"]]), atol=3e-4)
    # the fixed effects' profile intervals are near their Wald intervals on cbpp (lme4: within 0.09)
    wald = cbpp_fit.confint()
    assert (np.abs(ci.loc[wald.index].to_numpy() - wald.to_numpy()) < 0.1).all()


def test_profile_names_what_it_can_profile(cbpp_fit):
    one = cbpp_fit.confint("profile", which=["period2"], level=0.9)
    assert list(one.index) == ["period2"] and list(one.columns) == ["5.0 %", "95.0 %"]
    with pytest.raises(lmm_jax.InferenceError, match="cannot profile"):
        cbpp_fit.confint("profile", which=["sd_x|herd"])
    with pytest.raises(lmm_jax.InferenceError, match="'Wald', 'profile' or 'boot'"):
        cbpp_fit.confint("likelihood")

"""The parametric-bootstrap likelihood-ratio test (pb_modcomp) against pbkrtest's PBmodcomp.

The reference (tests/reference/make_pbmodcomp_reference.R, 1000 simulations) is ingot's metal effect:
21 rows, where the reference distribution is wider than chi^2(2) (pbkrtest's mean 2.33) and the PB
p-value (0.017) is more than twice the chi^2 one (0.0064). 256 simulations here: one unstaged batch.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import lmm_jax
from lmm_jax.batched.modcomp import check_nested

from tests.helpers import REF_DIR, load_data

N = 256
LARGE, SMALL = "pres ~ metal + (1 | ingot)", "pres ~ 1 + (1 | ingot)"


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((REF_DIR / "pbmodcomp.json").read_text())["ingot_metal"]


@pytest.fixture(scope="module")
def fits():
    data = load_data("ingot")
    return lmm_jax.fit(LARGE, data, reml=False), lmm_jax.fit(SMALL, data, reml=False)


@pytest.fixture(scope="module")
def pb(fits):
    return lmm_jax.pb_modcomp(*fits, n=N, key=20261122)


def test_matches_pbkrtest(pb, ref):
    """The observed LRT is pbkrtest's (to 1e-6, the fits' log-likelihoods
    agree to 1e-10); the PB p-value and the mean of the positive simulated
    statistics agree with pbkrtest's within 4 Monte Carlo SEs of their
    difference (our 256 simulations and pbkrtest's 1000)."""
    assert ref["large"] == LARGE and ref["small"] == SMALL
    assert pb.statistic == pytest.approx(ref["lrt"], abs=1e-6) and pb.df == ref["df"] == 2
    assert pb.p_chisq == pytest.approx(ref["p_chisq"], rel=1e-6)
    assert pb.large.loglik == pytest.approx(ref["loglik_large"], abs=1e-8)
    assert len(pb.reference) == N and np.isfinite(pb.reference).all() and pb.n_positive == N
    p = ref["p_pb"]
    assert abs(pb.p_value - p) < 4 * np.sqrt(p * (1 - p) * (1 / N + 1 / ref["nsim"])), (pb.p_value, p)
    summary = pb.summary()
    mean = summary.attrs["mean"]
    assert abs(mean - ref["ref_mean"]) < 4 * np.sqrt(ref["ref_var"] * (1 / N + 1 / ref["nsim"])), mean
    assert list(summary.index) == ["LRT", "PBtest", "Gamma", "Bartlett", "F"]
    assert list(pb.test.columns) == ["stat", "df", "p.value"]
    # pbkrtest's formulas, from the moments of the positive simulated statistics
    pos = pb.reference[pb.reference > 0]
    assert pb.p_value == (1 + np.sum(pos > pb.statistic)) / (1 + pos.size)
    assert summary.loc["Bartlett", "stat"] == pytest.approx(2 * pb.statistic / pos.mean(), rel=1e-12)
    assert summary.loc["F", "ddf"] == pytest.approx(2 * pos.mean() / (pos.mean() - 1), rel=1e-12)


def test_simulated_statistics_are_refits_of_the_null_models_draws(pb, fits):
    """Replicate i is lmm_jax.simulate(small, n, key)[:, i], refitted by ML
    with both models one at a time."""
    large, small = fits
    Y = np.asarray(lmm_jax.simulate(small, 3, key=20261122))
    data = load_data("ingot")
    for i in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
            lg = lmm_jax.fit(LARGE, data.assign(pres=Y[:, i]), reml=False)
            sm = lmm_jax.fit(SMALL, data.assign(pres=Y[:, i]), reml=False)
        assert pb.reference[i] == pytest.approx(sm.objective - lg.objective, rel=1e-8, abs=1e-9)
        np.testing.assert_allclose(pb.large_refits.beta[i], lg.beta, rtol=1e-7)


def test_reml_fits_are_refitted_by_ml(fits, pb):
    """pbkrtest refits REML fits by ML (the LRT and the simulation model);
    the same simulations then give the same test."""
    large, small = fits
    reml_large = large.model.fit(reml=True)
    again = lmm_jax.pb_modcomp(reml_large, small, n=N, key=20261122)
    assert not again.large.reml and again.statistic == pytest.approx(pb.statistic, rel=1e-10)
    np.testing.assert_allclose(again.reference, pb.reference, rtol=1e-8, atol=1e-9)


def test_models_that_are_not_nested_are_refused(fits):
    large, small = fits
    data = load_data("ingot")
    with pytest.raises(lmm_jax.InferenceError, match="first argument must be the model with more parameters"):
        check_nested(small, large)
    other = lmm_jax.fit(SMALL, data.assign(pres=data["pres"] + 1.0), reml=False)
    with pytest.raises(lmm_jax.InferenceError, match="same response on the same rows"):
        check_nested(large, other)
    by_metal = lmm_jax.fit("pres ~ 1 + (1 | metal)", data, reml=False)
    with pytest.raises(lmm_jax.InferenceError, match=r"random effect '\(Intercept\) \| metal' is not a random"):
        check_nested(large, by_metal)
    weighted = lmm_jax.fit(SMALL, data, reml=False, weights=np.linspace(1.0, 2.0, len(data)))
    with pytest.raises(lmm_jax.InferenceError, match="different weights"):
        check_nested(large, weighted)
    with pytest.raises(TypeError, match="two fitted models"):
        lmm_jax.pb_modcomp(large, "pres ~ 1 + (1 | ingot)")

"""Batched fits in the padded layout (``fit_batch(..., pad_levels=True)``, what
power simulations use): the same fits as at the exact sizes, and one compiled
fit for designs of other sizes in the same level buckets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmm_jax
from lmm_jax.batched.batch import _batch_products, _fit_responses
from lmm_jax.planning import fitted_params

from tests.helpers import load_data

SLEEP = "Reaction ~ Days + (Days | Subject)"


def _equal_fits(padded, exact):
    np.testing.assert_allclose(padded.objective, exact.objective, rtol=1e-10)
    np.testing.assert_allclose(padded.theta, exact.theta, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(padded.beta, exact.beta, rtol=1e-7)
    np.testing.assert_allclose(padded.sigma, exact.sigma, rtol=1e-7)
    if exact.vcov is not None:
        np.testing.assert_allclose(padded.vcov, exact.vcov, rtol=1e-6)
    if exact.ddf == "satterthwaite":
        np.testing.assert_allclose(padded.df, exact.df, rtol=1e-6)


def test_padded_batch_equals_exact_batch(sleepstudy_fit):
    # 18 subjects fitted as 32 (14 padded levels); four columns and BFGS: test_bootstrap's shape of the exact fit
    m = sleepstudy_fit.model
    assert m.padded.structure.ms == (32,) and m.structure.ms == (18,)
    Y = np.asarray(lmm_jax.simulate(sleepstudy_fit, 4, key=11))
    _equal_fits(m.fit_batch(Y, pad_levels=True), m.fit_batch(Y))


def test_padded_crossed_batch_equals_exact_batch():
    # Penicillin: 24 plates and 6 samples padded to 32 each, the coupling block dense
    fit = lmm_jax.fit("diameter ~ 1 + (1 | plate) + (1 | sample)", load_data("Penicillin"))
    m = fit.model
    assert m.padded.structure.ms == (32, 32) and m.structure.ms == (24, 6)
    Y = np.asarray(lmm_jax.simulate(fit, 4, key=3))
    _equal_fits(m.fit_batch(Y, pad_levels=True, ddf="none"), m.fit_batch(Y, ddf="none"))


def test_another_size_in_the_same_bucket_reuses_the_compiled_fit(sleepstudy_fit):
    # a 14-subject, 8-day subset (112 rows) is padded to sleepstudy's 32 levels: its responses' products
    # are a kernel of their own (other rows), the fit is the one compiled for the full data
    data = load_data("sleepstudy")
    subset = data[(data.Subject.astype(int).rank(method="dense") <= 14) & (data.Days < 8)]
    params = fitted_params(sleepstudy_fit)
    small = lmm_jax.LMM(SLEEP, subset)
    assert small.design.n == 112 and small.padded.structure == sleepstudy_fit.model.padded.structure
    Y_full = np.asarray(lmm_jax.simulate(sleepstudy_fit, 4, key=11))
    Y_small = np.asarray(lmm_jax.simulate((SLEEP, subset), 4, key=11, params=params))
    sleepstudy_fit.model.fit_batch(Y_full, pad_levels=True)
    fits, products = set(_fit_responses._calls), set(_batch_products._calls)
    got = small.fit_batch(Y_small, pad_levels=True)
    assert set(_fit_responses._calls) == fits                    # no new fit kernel
    assert len(set(_batch_products._calls) - products) == 1       # the subset's products
    _equal_fits(got, small.fit_batch(Y_small))
    # ML fits of the same responses: the same kernel too (reml is an argument), and the criterion is ML's
    fits = set(_fit_responses._calls)
    ml = small.fit_batch(Y_small, pad_levels=True, reml=False)
    assert set(_fit_responses._calls) == fits and not ml.reml
    with warnings.catch_warnings():                               # this replicate's ML fit is singular
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        one = lmm_jax.LMM(SLEEP, subset.assign(Reaction=Y_small[:, 0])).fit(reml=False)
    np.testing.assert_allclose(ml.objective[0], one.objective, rtol=1e-10)
    np.testing.assert_allclose(ml.sigma[0], one.sigma, rtol=1e-7)

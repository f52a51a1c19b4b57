"""MIVQUE(0) starting values (lmm_jax/core/start.py): the sparse moment equations
against the dense formula, the balanced-data identity with REML, and the
same optimum as lme4's theta = 1 start."""

import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.core.parametrization import theta_start
from lmm_jax.core.start import THETA_MIN, default_start, moment_equations, moment_estimates, moment_theta

pytestmark = pytest.mark.usefixtures("x64")   # lmm_jax's internals, called outside its entry points


def unbalanced_crossed(seed=3):
    """Crossed (1|a) + (1|b) and a scalar slope term (0 + x|c), unbalanced, two covariates."""
    rng = np.random.default_rng(seed)
    n = 300
    a, b, c = rng.integers(0, 12, n), rng.integers(0, 7, n), rng.integers(0, 5, n)
    x, w = rng.normal(size=n), rng.uniform(-1, 1, n)
    y = (1.0 + 0.3 * x - 0.2 * w + rng.normal(0, 0.9, 12)[a] + rng.normal(0, 0.5, 7)[b]
         + rng.normal(0, 0.4, 5)[c] * x + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "w": w, "a": a, "b": b, "c": c})


def dense_mivque0(design):
    """MIVQUE(0) with dense n x n basis matrices D_i and M = I - X (X'X)^{-1} X'."""
    X, y = design.X, design.y
    n, p = X.shape
    M = np.eye(n) - X @ np.linalg.solve(X.T @ X, X.T)
    D = []
    for t in design.terms:
        Zc = []
        for a in range(t.k):
            Z = np.zeros((n, t.m))
            Z[np.arange(n), t.codes] = t.Z[:, a]
            Zc.append(Z)
        for a, c in [(i, j) for j in range(t.k) for i in range(j, t.k)]:          # lme4's theta order
            D.append(Zc[a] @ Zc[c].T + (Zc[c] @ Zc[a].T if a != c else 0))
    D.append(np.eye(n))
    r = M @ y
    S = np.array([[np.trace(M @ Di @ M @ Dj) for Dj in D] for Di in D])
    q = np.array([r @ Di @ r for Di in D])
    return np.linalg.solve(S, q)


@pytest.mark.parametrize("formula", ["y ~ x + w + (1 | a) + (1 | b) + (0 + x | c)",
                                     "y ~ x + (x | a) + (1 | b)", "y ~ w + (x + w | a)"])
def test_sparse_moments_equal_dense_formula(formula):
    m = lmm_jax.LMM(formula, unbalanced_crossed())
    est = moment_estimates(moment_equations(m.design), m.response, m.structure)
    np.testing.assert_allclose(est, dense_mivque0(m.design), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, formula", [("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
                                           ("Pastes", "strength ~ 1 + (1 | batch/cask)"),
                                           ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                                           ("Dyestuff", "Yield ~ 1 + (1 | Batch)")])
def test_balanced_data_start_at_the_reml_optimum(name, formula):
    # for balanced data MIVQUE(0) is the ANOVA estimator, equal to REML when positive: no step left
    fit = lmm_jax.fit(formula, lmm_jax.datasets.load(name))
    assert fit.iterations == 0
    np.testing.assert_allclose(default_start(fit.model), fit.theta, rtol=1e-6)


@pytest.mark.parametrize("name, formula", [("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
                                           (None, "y ~ x + w + (1 | a) + (1 | b) + (0 + x | c)"),
                                           (None, "y ~ x + (x | a) + (1 | b)")])
@pytest.mark.parametrize("reml", [True, False])
def test_same_optimum_as_identity_start(name, formula, reml):
    data = lmm_jax.datasets.load(name) if name else unbalanced_crossed()
    m = lmm_jax.LMM(formula, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # Dyestuff2 is a singular fit
        a = m.fit(reml=reml)
        b = m.fit(reml=reml, start=theta_start(m.structure.ks))
    assert a.objective == pytest.approx(b.objective, abs=1e-9)
    np.testing.assert_allclose(a.theta, b.theta, atol=2e-6)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name, formula", [("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                                           ("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
                                           (None, "y ~ x + w + (1 | a) + (1 | b) + (0 + x | c)"),
                                           (None, "y ~ 0 + (x + w | a)")])
def test_numpy_start_equals_the_compiled_kernel(name, formula):
    # a single fit's start is evaluated by numpy; the batched fits vmap the compiled moment_theta
    m = lmm_jax.LMM(formula, lmm_jax.datasets.load(name) if name else unbalanced_crossed())
    pad = m.padded
    compiled = np.asarray(moment_theta(m.padded_moment_equations, pad.response, pad.structure))
    host = default_start(m)
    assert host.dtype == np.float64 and host.shape == (m.n_theta,)
    np.testing.assert_allclose(host, compiled, rtol=1e-12, atol=1e-14)
    assert not np.allclose(host, theta_start(m.structure.ks))      # the moments, not lme4's identity


def test_moment_equations_are_cached_on_the_model():
    m = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    eq, padded = m.moment_equations, m.padded_moment_equations
    assert m.moment_equations is eq and m.padded_moment_equations is padded
    np.testing.assert_array_equal(np.asarray(padded.BK[0])[:m.structure.ms[0]], np.asarray(eq.BK[0]))
    assert m.response_map is m.response_map


def test_zero_component_starts_small():
    # Dyestuff2's batch variance is 0 at the optimum; its moment estimate is negative
    d2 = lmm_jax.LMM("Yield ~ 1 + (1 | Batch)", lmm_jax.datasets.load("Dyestuff2"))
    assert moment_estimates(moment_equations(d2.design), d2.response, d2.structure)[0] < 0
    assert default_start(d2)[0] == THETA_MIN


def test_bootstrap_replicates_start_from_their_moments():
    # sleepstudy is balanced: most replicates start at their REML optimum (0 iterations), and every one
    # equals its own single fit (20 replicates and batches of 4: the shapes test_bootstrap compiles)
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    boot = fit.bootstrap(20, key=5)
    assert np.median(boot.replicates.iterations) == 0
    Y = np.asarray(lmm_jax.simulate(fit, 20, key=5))
    for cols in (slice(0, 4), slice(4, 8)):
        one = fit.model.fit_batch(Y[:, cols], method="newton")
        np.testing.assert_allclose(boot.replicates.objective[cols], one.objective, rtol=1e-11)

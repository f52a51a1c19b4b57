"""The Laplace and AGQ deviances (lmm_jax/core/laplace.py): the blocked PIRLS against a dense
slow path, the implicit derivatives against finite differences, AGQ against the Laplace identity,
and a vmapped batch of fits against single fits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import lmm_jax
from lmm_jax.core import laplace as L
from lmm_jax.core.glmm_fit import fit, fit_glmm
from lmm_jax.core.parametrization import lambdas_host
from lmm_jax.glmm.model import GLMM
from lmm_jax.runtime.scope import float64


def _crossed(family: str, seed: int = 3) -> pd.DataFrame:
    """72 rows: a factor g of 6 levels with a random slope in x, crossed with h of 4 levels."""
    rng = np.random.default_rng(seed)
    g, h = np.repeat(np.arange(6), 12), np.tile(np.arange(4), 18)
    x = rng.normal(size=72)
    eta = -0.3 + 0.5 * x + rng.normal(scale=0.8, size=6)[g] + 0.4 * rng.normal(size=6)[g] * x \
        + rng.normal(scale=0.5, size=4)[h]
    n = rng.integers(1, 8, size=72).astype(float)
    y = rng.binomial(n.astype(int), special.expit(eta)) / n if family == "binomial" else rng.poisson(np.exp(eta))
    return pd.DataFrame({"y": y, "x": x, "n": n, "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})


def _dense_laplace(theta, beta, m: GLMM) -> float:
    """The Laplace deviance from dense matrices and scipy's densities: Z (n x q), Lambda (q x q), Newton's
    method on the penalised deviance with the observed information, log det by slogdet."""
    d, s, fam = m.data, m.structure, m.family
    y, w, off, X = (np.asarray(a) for a in (d.y, d.weights, d.offset, d.X))
    n = y.shape[0]
    blocks, lams = [], lambdas_host(np.asarray(theta), s.ks)
    for codes, Z, lam, mt in zip(d.codes, d.Z, lams, s.ms):
        k = Z.shape[1]
        Zt = np.zeros((n, mt * k))
        for c in range(k):
            Zt[np.arange(n), np.asarray(codes) * k + c] = np.asarray(Z)[:, c]
        blocks.append((Zt, np.kron(np.eye(mt), lam)))
    Z = np.hstack([b[0] for b in blocks])
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    o = 0
    for Zt, Lt in blocks:
        Lam[o:o + Lt.shape[0], o:o + Lt.shape[0]] = Lt
        o += Lt.shape[0]
    ZL = Z @ Lam

    def pieces(u):
        eta = off + X @ np.asarray(beta) + ZL @ u
        if fam.link == "logit":
            mu = special.expit(eta)
            return eta, w * (y - mu), w * mu * (1 - mu), w * mu * (1 - mu)
        if fam.link == "probit":
            P, Q, phi = special.ndtr(eta), special.ndtr(-eta), stats.norm.pdf(eta)
            r1, r0 = phi / P, phi / Q
            score = w * (y * r1 - (1 - y) * r0)
            info = w * (y * (eta * r1 + r1 ** 2) + (1 - y) * (-eta * r0 + r0 ** 2))
            return eta, score, info, w * phi ** 2 / (P * Q)
        mu = np.exp(eta)
        return eta, w * (y - mu), w * mu, w * mu

    u = np.zeros(q)
    for _ in range(50):
        _, score, info, _ = pieces(u)
        g = ZL.T @ score - u
        u = u + np.linalg.solve(ZL.T @ (info[:, None] * ZL) + np.eye(q), g)
        if np.max(np.abs(g)) < 1e-13:
            break
    eta, _, _, fisher = pieces(u)
    if fam.name == "binomial":
        dens = stats.binom.logpmf(np.round(w * y), np.round(w), np.asarray(lmm_jax.core.family.linkinv(fam, eta)))
    else:
        dens = w * stats.poisson.logpmf(y, np.exp(eta))
    return float(-2 * dens.sum() + u @ u + np.linalg.slogdet(ZL.T @ (fisher[:, None] * ZL) + np.eye(q))[1])


@pytest.fixture(scope="module")
def probit_model():
    return GLMM("y ~ x + (1 + x | g) + (1 | h)", _crossed("binomial"), "binomial", "probit", weights="n")


@pytest.mark.parametrize("family,link", [("binomial", "logit"), ("binomial", "probit"), ("poisson", "log")])
def test_blocked_laplace_equals_the_dense_one(family, link, x64):
    m = GLMM("y ~ x + (1 + x | g) + (1 | h)", _crossed(family), family, link,
             weights="n" if family == "binomial" else None)
    f = jax.jit(lambda t, b: L.laplace_deviance(t, b, m.data, m.family, m.structure))
    for theta, beta in (([0.8, 0.1, 0.5, 0.6], [-0.2, 0.4]), ([1.3, -0.4, 0.2, 0.0], [0.3, -0.1])):
        theta, beta = np.asarray(theta), np.asarray(beta)
        np.testing.assert_allclose(float(f(jnp.asarray(theta), jnp.asarray(beta))), _dense_laplace(theta, beta, m),
                                   rtol=1e-11)


def test_pirls_finds_the_mode(probit_model, x64):
    m = probit_model
    theta, beta = jnp.asarray([0.8, 0.1, 0.5, 0.6]), jnp.asarray([-0.2, 0.4])
    @jax.jit                                            # compiled, not op by op
    def mode_and_gradient(theta, beta):
        st = L.pirls(theta, beta, jnp.zeros(L.n_random(m.structure)), m.data, m.family, m.structure)
        return st, jax.grad(lambda u: L.penalized_deviance(u, theta, beta, m.data, m.family, m.structure))(st.u)

    st, g = mode_and_gradient(theta, beta)
    assert not bool(st.failed) and int(st.iterations) < 10
    assert float(jnp.max(jnp.abs(g))) < 1e-8


def test_implicit_derivatives_match_finite_differences(probit_model, x64):
    # a non-canonical link: the mode's Jacobian is the observed information, the log-determinant's
    # weights the expected one; gradient and Hessian must be those of the deviance all the same
    m = probit_model
    nt = m.n_theta
    f = lambda x: L.laplace_deviance(x[:nt], x[nt:], m.data, m.family, m.structure)
    x = jnp.asarray([0.8, 0.1, 0.5, 0.6, -0.2, 0.4])
    derivs = jax.jit(lambda x: (f(x), jax.grad(f)(x), jax.hessian(f)(x)))      # one compilation
    _, g, h = (np.asarray(a) for a in derivs(x))
    eps = 1e-5
    E = np.eye(x.shape[0]) * eps
    up, down = [derivs(x + e) for e in E], [derivs(x - e) for e in E]
    fd_g = np.array([(float(a[0]) - float(b[0])) / (2 * eps) for a, b in zip(up, down)])
    fd_h = np.array([(np.asarray(a[1]) - np.asarray(b[1])) / (2 * eps) for a, b in zip(up, down)])
    np.testing.assert_allclose(g, fd_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, fd_h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h, h.T, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def cbpp_model():
    return GLMM("incidence/size ~ period + (1 | herd)", lmm_jax.datasets.load("cbpp"), "binomial", weights="size")


def test_one_node_agq_is_laplace_without_the_saturated_constant(cbpp_model, x64):
    # with one node (z = 0, weight 1) the AGQ deviance is sum d_i + |u|^2 + log|L|^2: the Laplace
    # deviance less -2 log p(y | mu = y), lme4's "saturated_aic" (83.9567 for cbpp)
    m = cbpp_model
    theta = jnp.asarray([0.6])
    beta = jnp.linalg.solve(jnp.asarray(m.basis), jnp.asarray([-1.0, -0.9, -1.1, -1.5]))   # the fit's basis
    lap, one = jax.jit(lambda th, b: (L.laplace_deviance(th, b, m.data, m.family, m.structure),
                                      L.agq_deviance(th, b, m.data, m.family, m.structure, 1)))(theta, beta)
    saturated = -2 * stats.binom.logpmf(np.round(np.asarray(m.data.y * m.data.weights)),
                                        np.asarray(m.data.weights), np.asarray(m.data.y)).sum()
    np.testing.assert_allclose(float(lap - one), saturated, rtol=1e-12)
    np.testing.assert_allclose(saturated, 83.9567075378711, rtol=1e-12)        # the reference file's


def test_a_vmapped_batch_of_fits_equals_the_single_fits(cbpp_model):
    m = cbpp_model
    with float64():
        r = m.fit()
        eta = jnp.asarray(r.eta)
        keys = jax.random.split(jax.random.PRNGKey(7), 3)
        Y = jnp.stack([lmm_jax.core.family.simulate(m.family, k, eta, m.data.weights) for k in keys])
        phi0, active0 = jnp.zeros(1), jnp.ones(1, dtype=bool)
        batch = jax.jit(jax.vmap(lambda y: fit(m.data._replace(y=y), phi0, active0, m.family, m.structure)))(Y)
        for i in range(Y.shape[0]):
            one, est = fit_glmm(m.data._replace(y=Y[i]), phi0, active0, m.family, m.structure, 1, 200)
            np.testing.assert_allclose(batch[0].theta[i], one.theta, rtol=1e-8, atol=1e-8)
            np.testing.assert_allclose(batch[1]["deviance"][i], est["deviance"], rtol=1e-10)
            assert bool(batch[0].converged[i]) and bool(one.converged)

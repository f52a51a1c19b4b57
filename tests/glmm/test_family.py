"""The families and links (lmm_jax/core/family.py) against R's formulas, scipy's densities and autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from lmm_jax.core import family as F
from lmm_jax.core.family import Family, make_family

LINKS = [Family("binomial", "logit"), Family("binomial", "probit"), Family("binomial", "cloglog"),
         Family("poisson", "log")]
ETA = np.array([-6.0, -1.3, 0.0, 0.4, 2.5, 3.0])   # cloglog: 1 - mu = exp(-e^eta) is 2e-9 at 3


def _exact(fam: Family, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, 1 - mu, mu_eta) in numpy/scipy, each from its own closed form (no 1 - mu cancellation)."""
    if fam.link == "logit":
        return special.expit(eta), special.expit(-eta), special.expit(eta) * special.expit(-eta)
    if fam.link == "probit":
        return special.ndtr(eta), special.ndtr(-eta), stats.norm.pdf(eta)
    if fam.link == "cloglog":
        return -np.expm1(-np.exp(eta)), np.exp(-np.exp(eta)), np.exp(eta) * np.exp(-np.exp(eta))
    return np.exp(eta), None, np.exp(eta)


def _data(fam: Family):
    if fam.name == "binomial":
        w = np.array([1.0, 5.0, 3.0, 1.0, 10.0, 4.0])
        y = np.array([0.0, 0.4, 1 / 3, 1.0, 0.7, 1.0])
    else:
        w = np.array([1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
        y = np.array([0.0, 3.0, 1.0, 0.0, 12.0, 150.0])
    return jnp.asarray(y), jnp.asarray(ETA), jnp.asarray(w)


@pytest.mark.parametrize("fam", LINKS, ids=lambda f: f.link)
def test_link_inverse_and_derivative(fam, x64):
    eta = jnp.asarray(ETA)
    mu, one_minus, dmu = _exact(fam, ETA)
    np.testing.assert_allclose(F.linkinv(fam, eta), mu, rtol=1e-13)
    np.testing.assert_allclose(F.linkfun(fam, F.linkinv(fam, eta)), eta, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(F.mu_eta(fam, eta), dmu, rtol=1e-12)
    np.testing.assert_allclose(jnp.exp(F.log_mu(fam, eta)), mu, rtol=1e-12)
    if fam.name == "binomial":
        np.testing.assert_allclose(jnp.exp(F.log1m_mu(fam, eta)), one_minus, rtol=1e-12)


@pytest.mark.parametrize("fam", LINKS, ids=lambda f: f.link)
def test_score_information_and_fisher_weights(fam, x64):
    y, eta, w = _data(fam)
    score, info = F.score_and_information(fam, y, eta, w)
    ll = lambda e: jnp.sum(F.log_likelihood(fam, y, e, w))
    np.testing.assert_allclose(score, jax.grad(ll)(eta), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(info, -jnp.diagonal(jax.hessian(ll)(eta)), rtol=1e-9, atol=1e-12)
    mu, one_minus, dmu = _exact(fam, ETA)
    V = mu if fam.name == "poisson" else mu * one_minus
    np.testing.assert_allclose(F.fisher_weights(fam, eta, w), w * dmu ** 2 / V, rtol=1e-11)
    np.testing.assert_allclose(F.variance(fam, jnp.asarray(mu)), mu * (1 - mu) if fam.name == "binomial" else mu)
    # the score is R's w (y - mu) mu_eta / V(mu)
    np.testing.assert_allclose(score, w * (y - mu) * dmu / V, rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(info) >= 0)            # log-concave: PIRLS's Newton steps descend


@pytest.mark.parametrize("fam", LINKS, ids=lambda f: f.link)
def test_deviance_residuals_and_log_density_are_Rs(fam, x64):
    y, eta, w = _data(fam)
    yn, wn = np.asarray(y), np.asarray(w)
    mu = np.asarray(F.linkinv(fam, eta))
    if fam.name == "binomial":
        # R's binomial()$dev.resids and log dbinom(round(w y), round(w), mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 2 * wn * (np.where(yn > 0, yn * np.log(yn / mu), 0)
                          + np.where(yn < 1, (1 - yn) * np.log((1 - yn) / (1 - mu)), 0))
        dens = stats.binom.logpmf(np.round(wn * yn), np.round(wn), mu)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 2 * wn * (np.where(yn > 0, yn * np.log(yn / mu), 0) - (yn - mu))
        dens = wn * stats.poisson.logpmf(yn, mu)
    np.testing.assert_allclose(F.deviance_residuals(fam, y, eta, w), r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F.log_density(fam, y, eta, w), dens, rtol=1e-10, atol=1e-12)


def test_tails_keep_their_digits(x64):
    # a probit or logit linear predictor far out: log mu and the weights stay finite and accurate, where
    # mu_eta^2 / (mu (1 - mu)) from rounded probabilities would be 0/0
    eta = jnp.array([-40.0, 40.0])
    probit, logit = Family("binomial", "probit"), Family("binomial", "logit")
    np.testing.assert_allclose(F.log_mu(probit, eta)[0], stats.norm.logcdf(-40.0), rtol=1e-12)
    np.testing.assert_allclose(F.log1m_mu(logit, eta)[1], -40.0, rtol=1e-12)
    w = F.fisher_weights(probit, eta / 2, jnp.ones(2))
    exact = stats.norm.pdf(20.0) ** 2 / (stats.norm.cdf(-20.0) * stats.norm.cdf(20.0))     # 1.1e-86
    np.testing.assert_allclose(w, [exact, exact], rtol=1e-8)
    r = F.deviance_residuals(logit, jnp.array([1.0, 0.0]), eta, jnp.ones(2))
    np.testing.assert_allclose(r, [80.0, 80.0], rtol=1e-12)


def test_make_family_names_the_supported_ones():
    assert make_family("Binomial") == Family("binomial", "logit")
    assert make_family("poisson") == Family("poisson", "log")
    assert make_family("binomial", "cloglog").link == "cloglog"
    with pytest.raises(ValueError, match=r"family 'gamma' is not supported.*binomial: logit, probit, cloglog; "
                                         r"poisson: log"):
        make_family("gamma")
    with pytest.raises(ValueError, match=r"link 'probit' is not supported for the poisson family.*poisson: log"):
        make_family("poisson", "probit")


def test_simulate_draws_counts_and_proportions(x64):
    key = jax.random.PRNGKey(0)
    w = jnp.array([1.0, 7.0, 0.0, 20.0])
    y = F.simulate(Family("binomial", "logit"), key, jnp.zeros(4), w)
    k = np.asarray(y * w)
    np.testing.assert_allclose(k, np.round(k))
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1)) and float(y[2]) == 0.0
    c = F.simulate(Family("poisson", "log"), key, jnp.full(2000, np.log(3.0)), jnp.ones(2000))
    assert abs(float(jnp.mean(c)) - 3.0) < 0.15


def test_log_ndtr_pair_values_and_derivatives_of_every_order(x64):
    """log Phi(x) and log Phi(-x) from one erfc (the probit's log mu and log(1 - mu)) equal scipy's
    to 1e-13 across both tails, and their derivatives (by the inverse Mills ratio's rules) those of
    jax.scipy's log_ndtr, differentiated as written, in every order and mode the Laplace fit uses:
    nested forward (score, information), forward-over-reverse (the Newton Hessian) and products of
    the pair (the Fisher weights), whose cross terms need the primal's own derivative."""
    x = np.concatenate([np.linspace(-38.0, 38.0, 3041), [-20.0, -19.999, 20.0, 0.0]])
    lp, lq = jax.jit(F.log_ndtr_pair)(jnp.asarray(x))
    np.testing.assert_allclose(lp, special.log_ndtr(x), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(lq, special.log_ndtr(-x), rtol=1e-13, atol=1e-300)

    ref = lambda t: (jax.scipy.special.log_ndtr(t), jax.scipy.special.log_ndtr(-t))
    functions = {"log Phi(x)": lambda p, t: p(t)[0], "log Phi(-x)": lambda p, t: p(t)[1],
                 "their product": lambda p, t: p(t)[0] * p(t)[1],
                 "fisher weight": lambda p, t: jnp.exp(-t ** 2 - p(t)[0] - p(t)[1])}
    orders = {"d3 forward": lambda f: jax.jacfwd(jax.jacfwd(jax.jacfwd(f))),
              "d3 reverse": lambda f: jax.grad(jax.grad(jax.grad(f))),
              "hessian": lambda f: jax.hessian(f)}
    t = jnp.asarray([-6.5, -1.3, -0.2, 0.0, 0.4, 2.5, 5.0])      # where jax.scipy's own digits hold
    for fname, fun in functions.items():
        for oname, order in orders.items():
            got = jax.jit(jax.vmap(order(lambda s: fun(F.log_ndtr_pair, s))))(t)
            want = jax.jit(jax.vmap(order(lambda s: fun(ref, s))))(t)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=f"{oname} of {fname}")
    # the far lower tail: d log Phi = lambda = phi / Phi and d lambda = -lambda (x + lambda), from scipy's
    # logarithms (whose difference near 700 holds about 1e-13, and x + lambda, about -1/x, loses 1/x^2 more)
    far = np.array([-37.0, -25.0, -20.5, -15.0])
    lam = np.exp(stats.norm.logpdf(far) - special.log_ndtr(far))
    d1, d2 = (jax.jit(jax.vmap(g))(jnp.asarray(far)) for g in
              (jax.grad(lambda s: F.log_ndtr_pair(s)[0]), jax.grad(jax.grad(lambda s: F.log_ndtr_pair(s)[0]))))
    np.testing.assert_allclose(d1, lam, rtol=1e-12)
    np.testing.assert_allclose(d2, -lam * (far + lam), rtol=1e-9)

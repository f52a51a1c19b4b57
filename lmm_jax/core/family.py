r"""Response distributions of generalized linear mixed models: the family and its link.

A GLMM's response has, given the random effects, independent components
from an exponential family with mean ``mu = g^{-1}(eta)``, linear predictor
``eta = offset + X beta + Z b`` and prior weights ``w`` (McCullagh & Nelder
1989, ch. 2; R's ``family`` objects, lme4's ``glmFamily``):

=========  =============================  ==========  ===========================
family     response                       variance    links
=========  =============================  ==========  ===========================
binomial   proportion y in [0, 1] of w    mu (1 - mu) logit (canonical), probit,
           trials (w = 1: 0/1)                         cloglog
poisson    count y = 0, 1, 2, ...         mu          log (canonical)
=========  =============================  ==========  ===========================

Everything here is elementwise pure JAX, written on the linear predictor so
that tails keep their digits: ``log mu`` and ``log(1 - mu)`` come from
``eta`` directly (``-softplus(-eta)`` for the logit, ``log Phi(eta)`` for the
probit, ``-exp(eta)`` for the cloglog's ``log(1 - mu)``), never as the
logarithm of a rounded probability.

The functions of the Laplace approximation (:mod:`lmm_jax.core.laplace`):

* :func:`log_likelihood`: ``l_i(eta)``, the log-density up to a constant in
  eta; its derivatives in eta are the score and the observed information
  (:func:`score_and_information`);
* :func:`fisher_weights`: ``w mu_eta^2 / V(mu)``, the IRLS weights (lme4's
  ``sqrtXwt^2``), which enter lme4's log-determinant;
* :func:`deviance_residuals`: R's ``dev.resids`` (the penalised deviance of
  PIRLS and the AGQ terms);
* :func:`log_density`: the full log-density with its constants, R's
  ``family$aic(...) / -2`` (binomial: ``log dbinom(round(w y), round(w), mu)``,
  poisson: ``w log dpois(y, mu)``), so that the Laplace deviance is glmer's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import gammaln, ndtr, ndtri, xlogy

LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}
CANONICAL = {"binomial": "logit", "poisson": "log"}
LOG_SQRT_2PI = 0.9189385332046727


class Family(NamedTuple):
    """A response family and its link (static: hashable, a compile-time constant).

    Attributes:
        name: ``"binomial"`` or ``"poisson"``.
        link: ``"logit"``, ``"probit"``, ``"cloglog"`` (binomial) or ``"log"`` (poisson).
    """

    name: str
    link: str

    @property
    def canonical(self) -> bool:
        """The canonical link: observed and expected (Fisher) information coincide."""
        return CANONICAL[self.name] == self.link


def supported() -> str:
    """The families and links lmm_jax fits, as text for messages."""
    return "; ".join(f"{f}: {', '.join(links)}" for f, links in LINKS.items())


def make_family(name: str, link: str | None = None) -> Family:
    """The :class:`Family` of a family name and an optional link (default: the canonical one).

    Raises:
        ValueError: an unsupported family or link (the message lists the supported ones).
    """
    key = str(name).lower()
    if key not in LINKS:
        raise ValueError(f"family {name!r} is not supported for GLMMs; supported families and links: {supported()} "
                         "(family='gaussian' with the identity link fits a linear mixed model)")
    link = CANONICAL[key] if link is None else str(link).lower()
    if link not in LINKS[key]:
        raise ValueError(f"link {link!r} is not supported for the {key} family; supported families and links: "
                         f"{supported()}")
    return Family(key, link)


# -- the probit's log Phi, with derivatives by the inverse Mills ratio ------------------------------
# The Laplace deviance of a probit model differentiates log Phi(eta) up to four times (the score and
# information of PIRLS, then the Newton loop's gradient and Hessian through the mode's implicit
# derivatives), at every place the fit evaluates the likelihood. jax.scipy's log_ndtr costs two erfc,
# an erf and an asymptotic series per evaluation, and log mu and log(1 - mu) each made one: cbpp's
# probit fit kernel held 75 of them. Here log Phi(x) and log Phi(-x) come together from one erfc
# (39 evaluations in that kernel), as constants to autodiff, and every derivative is a polynomial in x
# and the inverse Mills ratio lambda(x) = phi(x) / Phi(x) = exp(log phi(x) - log Phi(x)), from those
# values, so no derivative differentiates the erfc or the series:
#     d log Phi(x) / dx = lambda(x),     d lambda(x) / dx = -lambda(x) (x + lambda(x)).
SERIES_BELOW = -20.0    # log Phi(x) by its asymptotic series below this (jax.scipy's float64 lower segment)
SERIES_TERMS = 8        # terms of that series: the first left out, 17!! / 20^18, is 1e-16 of the sum


def log_ndtr_pair(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(log Phi(x), log Phi(-x))``, accurate in both tails, from one ``erfc``.

    With ``t = Phi(-|x|) = erfc(|x| / sqrt 2) / 2`` the pair is ``log t`` and
    ``log1p(-t)``, in the order of x's sign. Where ``|x| > 20``, ``log t`` is
    the asymptotic series ``log Phi(-z) = -z^2/2 - log z - log sqrt(2 pi) +
    log(1 + S)``, ``S = sum_n (-1)^n (2n - 1)!! / z^(2n)``, and the inverse
    Mills ratio there is ``z / (1 + S)``. Their derivatives of every order
    are polynomials in x and the ratio (comment above)."""
    x = jnp.asarray(x)
    a = lax.stop_gradient(jnp.abs(x))
    t = 0.5 * lax.erfc(a * 0.7071067811865476)
    log_phi = -0.5 * a * a - LOG_SQRT_2PI                            # log phi(|x|)
    z = jnp.maximum(a, -SERIES_BELOW)
    r = 1.0 / (z * z)
    S, term = jnp.zeros_like(r), jnp.ones_like(r)
    for n in range(1, SERIES_TERMS + 1):
        term = -term * (2 * n - 1) * r
        S = S + term
    series = a > -SERIES_BELOW
    tail = jnp.where(series, -0.5 * z * z - jnp.log(z) - LOG_SQRT_2PI + jnp.log1p(S), jnp.log(t))   # log Phi(-|x|)
    tail_mills = jnp.where(series, z / (1.0 + S), jnp.exp(log_phi - tail))                       # phi / Phi(-|x|)
    bulk = jnp.log1p(-t)                                                                            # log Phi(|x|)
    bulk_mills = jnp.exp(log_phi - bulk)
    negative = x < 0
    return (_log_ndtr_at(x, jnp.where(negative, tail, bulk), jnp.where(negative, tail_mills, bulk_mills)),
            _log_ndtr_at(-x, jnp.where(negative, bulk, tail), jnp.where(negative, bulk_mills, tail_mills)))


@jax.custom_jvp
def _log_ndtr_at(x: jnp.ndarray, value: jnp.ndarray, mills: jnp.ndarray) -> jnp.ndarray:
    """``value`` = log Phi(x) with log Phi's derivatives in x; ``mills`` = lambda(x).
    Both are constants to autodiff (computed under ``stop_gradient``)."""
    return value


@_log_ndtr_at.defjvp
def _log_ndtr_at_jvp(primals, tangents):
    (x, value, mills), (dx, _, _) = primals, tangents
    # the primal output as a call, not ``value``: differentiated again (this rule traced inside a
    # derivative, as forward-over-reverse does), it must carry log Phi's derivative, not value's zero
    return _log_ndtr_at(x, value, mills), _inverse_mills_at(x, mills) * dx


@jax.custom_jvp
def _inverse_mills_at(x: jnp.ndarray, mills: jnp.ndarray) -> jnp.ndarray:
    """``mills`` = lambda(x) = phi(x) / Phi(x), with its derivatives in x."""
    return mills


@_inverse_mills_at.defjvp
def _inverse_mills_at_jvp(primals, tangents):
    (x, mills), (dx, _) = primals, tangents
    lam = _inverse_mills_at(x, mills)
    return lam, -lam * (x + lam) * dx


# -- the link ---------------------------------------------------------------------------------------
def linkfun(fam: Family, mu: jnp.ndarray) -> jnp.ndarray:
    """``eta = g(mu)``."""
    if fam.link == "logit":
        return jnp.log(mu) - jnp.log1p(-mu)
    if fam.link == "probit":
        return ndtri(mu)
    if fam.link == "cloglog":
        return jnp.log(-jnp.log1p(-mu))
    return jnp.log(mu)


def linkinv(fam: Family, eta: jnp.ndarray) -> jnp.ndarray:
    """``mu = g^{-1}(eta)``."""
    if fam.link == "logit":
        return jax.nn.sigmoid(eta)
    if fam.link == "probit":
        return ndtr(eta)
    if fam.link == "cloglog":
        return -jnp.expm1(-jnp.exp(eta))
    return jnp.exp(eta)


def log_mu(fam: Family, eta: jnp.ndarray) -> jnp.ndarray:
    """``log mu`` from eta, accurate in the tails."""
    if fam.link == "logit":
        return -jax.nn.softplus(-eta)
    if fam.link == "probit":
        return log_ndtr_pair(eta)[0]
    if fam.link == "cloglog":
        return jnp.log(-jnp.expm1(-jnp.exp(eta)))
    return eta


def log1m_mu(fam: Family, eta: jnp.ndarray) -> jnp.ndarray:
    """``log(1 - mu)`` from eta (binomial links), accurate in the tails."""
    if fam.link == "logit":
        return -jax.nn.softplus(-eta) - eta
    if fam.link == "probit":
        return log_ndtr_pair(eta)[1]
    if fam.link == "cloglog":
        return -jnp.exp(eta)
    raise ValueError(f"log(1 - mu) is defined for binomial links, not {fam.link!r}")


def log_mu_pair(fam: Family, eta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(log mu, log(1 - mu))`` (binomial links): the probit's from one :func:`log_ndtr_pair`."""
    if fam.link == "probit":
        return log_ndtr_pair(eta)
    return log_mu(fam, eta), log1m_mu(fam, eta)


def mu_eta(fam: Family, eta: jnp.ndarray) -> jnp.ndarray:
    """``d mu / d eta``."""
    if fam.link == "logit":
        return jax.nn.sigmoid(eta) * jax.nn.sigmoid(-eta)
    if fam.link == "probit":
        return jnp.exp(-0.5 * eta ** 2 - LOG_SQRT_2PI)
    if fam.link == "cloglog":
        return jnp.exp(eta - jnp.exp(eta))
    return jnp.exp(eta)


def variance(fam: Family, mu: jnp.ndarray) -> jnp.ndarray:
    """The variance function ``V(mu)``."""
    return mu * (1.0 - mu) if fam.name == "binomial" else mu


# -- the likelihood ------------------------------------------------------------------------------------
def log_likelihood(fam: Family, y: jnp.ndarray, eta: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """``l_i(eta_i)``: each observation's log-likelihood up to a term free of eta.

    binomial: ``w (y log mu + (1 - y) log(1 - mu))``; poisson: ``w (y log mu - mu)``.
    """
    if fam.name == "binomial":
        log_p, log_q = log_mu_pair(fam, eta)
        return w * (y * log_p + (1.0 - y) * log_q)
    return w * (y * log_mu(fam, eta) - linkinv(fam, eta))


def _logistic(eta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(mu, mu (1 - mu))`` of the logit link (``1 - mu = sigmoid(-eta)``: no cancellation for large eta)."""
    mu = jax.nn.sigmoid(eta)
    return mu, mu * jax.nn.sigmoid(-eta)


def score_and_information(fam: Family, y: jnp.ndarray, eta: jnp.ndarray, w: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """``(l', -l'')`` elementwise in eta: the score ``w (y - mu) mu_eta / V(mu)``
    and the observed information. For the canonical links they are
    ``w (y - mu)`` and the Fisher weights ``w mu_eta``, written out; for the
    others they come from forward-mode autodiff of :func:`log_likelihood`
    (each term depends on its own eta only)."""
    if fam.link == "logit":
        mu, v = _logistic(eta)
        return w * (y - mu), w * v
    if fam.link == "log":
        mu = jnp.exp(eta)
        return w * (y - mu), w * mu

    def score(e):
        return jax.jvp(lambda x: log_likelihood(fam, y, x, w), (e,), (jnp.ones_like(e),))[1]

    s, ds = jax.jvp(score, (eta,), (jnp.ones_like(eta),))
    return s, -ds


def fisher_weights(fam: Family, eta: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """The IRLS weights ``w mu_eta^2 / V(mu)`` (lme4's squared ``sqrtXwt``), in
    forms that keep their digits where mu is near 0 or 1."""
    if fam.link == "logit":
        return w * _logistic(eta)[1]
    if fam.link == "probit":
        log_p, log_q = log_ndtr_pair(eta)
        return w * jnp.exp(-eta ** 2 - 2 * LOG_SQRT_2PI - log_p - log_q)
    if fam.link == "cloglog":
        # mu_eta^2 / (mu (1 - mu)) = exp(2 eta - 2 e^eta) / ((1 - exp(-e^eta)) exp(-e^eta)) = exp(2 eta) / expm1(e^eta)
        e = jnp.exp(eta)
        return w * jnp.exp(2 * eta) / jnp.expm1(e)
    return w * jnp.exp(eta)


def deviance_residuals(fam: Family, y: jnp.ndarray, eta: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """R's ``family$dev.resids(y, mu, w)``: ``2 (l_i(saturated) - l_i(eta))``, >= 0."""
    if fam.name == "binomial":
        sat = xlogy(y, y) + xlogy(1.0 - y, 1.0 - y)
        log_p, log_q = log_mu_pair(fam, eta)
        return 2.0 * w * (sat - y * log_p - (1.0 - y) * log_q)
    mu = linkinv(fam, eta)
    return 2.0 * w * (xlogy(y, y) - y * log_mu(fam, eta) - (y - mu))


def log_density(fam: Family, y: jnp.ndarray, eta: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """Each observation's full log-density, as R's ``family$aic`` sums it
    (``aic = -2 sum``): binomial ``log dbinom(round(w y), round(w), mu)`` (0 for
    w = 0), poisson ``w log dpois(y, mu)``."""
    if fam.name == "binomial":
        m = jnp.round(w)
        k = jnp.round(w * y)
        lchoose = gammaln(m + 1.0) - gammaln(k + 1.0) - gammaln(m - k + 1.0)
        # k log mu + (m - k) log(1 - mu), with 0 log 0 = 0 at a fitted 0 or 1
        log_p, log_q = log_mu_pair(fam, eta)
        ll = lchoose + jnp.where(k > 0, k * log_p, 0.0) + jnp.where(m - k > 0, (m - k) * log_q, 0.0)
        return jnp.where(w > 0, ll, 0.0)
    return w * (y * log_mu(fam, eta) - linkinv(fam, eta) - gammaln(y + 1.0))


def start_mu(fam: Family, y: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """R's ``family$initialize`` mean: ``(w y + 1/2) / (w + 1)`` (binomial), ``y + 0.1`` (poisson)."""
    if fam.name == "binomial":
        return (w * y + 0.5) / (w + 1.0)
    return y + 0.1


def simulate(fam: Family, key: jax.Array, eta: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """Draw responses at the linear predictor ``eta`` (R's ``simulate`` of the
    family): binomial proportions ``Binomial(w, mu) / w`` (w a whole number of
    trials, 0 where w = 0), poisson counts ``Poisson(mu)``."""
    mu = linkinv(fam, eta)
    if fam.name == "binomial":
        n = jnp.round(w)
        k = jax.random.binomial(key, n, mu)
        return jnp.where(n > 0, k / jnp.where(n > 0, n, 1.0), 0.0)
    return jax.random.poisson(key, mu).astype(eta.dtype)

r"""The compiled kernels of a GLMM fit: the optimum of the Laplace (or AGQ)
deviance over (theta, beta) jointly, and what results need there.

lme4's ``glmer`` optimises theta with beta profiled by PIRLS (``nAGQ = 0``)
and then (theta, beta) jointly on the Laplace deviance. Here the joint stage
starts from the GLM fit without random effects (beta) and lme4's theta = 1,
and runs the LMM's Newton loop (:func:`~lmm_jax.core.optimize.newton_minimize`,
exact Hessian, the boundary rule on theta's diagonal entries) over
``(phi, beta)``, the fixed effects as free trailing parameters: the exact
gradient and Hessian come from autodiff through the conditional mode's
implicit derivatives (:mod:`lmm_jax.core.laplace`). Everything is one
function of the :class:`~lmm_jax.core.laplace.GLMMData` arrays, so
``jax.vmap`` over responses fits a batch in one call.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..runtime.kernel import kernel
from .family import Family, deviance_residuals, fisher_weights, linkinv, mu_eta
from .laplace import (GLMMData, conditional_mode, deviance, glm_fit, linear_predictor, n_random, random_effects,
                      weighted_products)
from .likelihood import conditional_covariances, random_factor
from .optimize import NewtonResult, newton_minimize
from .types import Structure


def estimates(theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family, s: Structure, n_agq: int,
              objective: jnp.ndarray | None = None) -> dict:
    """What a result needs at (theta, beta): the deviance (``objective`` if
    given: the optimiser's, within its tolerance of the value here), the
    spherical modes ``u``, the random effects ``b`` (one (m_t, k_t) array per
    term), the linear predictor ``eta``, row by row the fitted mean ``mu``, ``d mu / d eta``
    (``mu_eta``) and the deviance residuals' squares ``dev_resid`` (R's ``dev.resids``),
    and the conditional covariances of b (``Lambda (L L')^{-1} Lambda'`` with L at the
    mode's Fisher weights, lme4's ``condVar``), one (m_t, k_t, k_t) array per term."""
    u = conditional_mode(theta, beta, jnp.zeros(n_random(s), dtype=beta.dtype), data, fam, s)
    eta = linear_predictor(u, theta, beta, data, s)
    F = random_factor(theta, weighted_products(fisher_weights(fam, eta, data.weights), data, s), s)
    dev = deviance(theta, beta, data, fam, s, n_agq) if objective is None else objective
    return {"deviance": dev, "u": u, "b": tuple(random_effects(u, theta, s)), "eta": eta,
            "mu": linkinv(fam, eta), "mu_eta": mu_eta(fam, eta),
            "dev_resid": deviance_residuals(fam, data.y, eta, data.weights),
            "condcov": conditional_covariances(theta, F, s)}


def fit(data: GLMMData, phi0: jnp.ndarray, active0: jnp.ndarray, fam: Family, s: Structure, n_agq: int = 1,
        max_iter: int = 200, beta0: jnp.ndarray | None = None) -> tuple[NewtonResult, dict]:
    """Minimise the deviance over (theta, beta) from ``phi0`` (theta's
    log-Cholesky start) and ``beta0`` (default: the GLM fit), then
    :func:`estimates` at the optimum. Plain JAX (vmappable); :func:`fit_glmm`
    is its compiled kernel.

    Returns:
        ``(opt, est)``: the :class:`~lmm_jax.core.optimize.NewtonResult` over
        ``(phi, beta)`` (its ``theta``: theta then beta) and :func:`estimates`.
    """
    nt = phi0.shape[0]
    beta0 = glm_fit(data, fam) if beta0 is None else beta0

    def f(x):
        return deviance(x[:nt], x[nt:], data, fam, s, n_agq)

    active = jnp.concatenate([jnp.asarray(active0, dtype=bool), jnp.ones(beta0.shape[0], dtype=bool)])
    opt = newton_minimize(f, jnp.concatenate([phi0, beta0]), active, s.ks, max_iter=max_iter, free=beta0.shape[0])
    # the optimum's deviance is the loop's (at the last evaluated point: the polish step moves it by less than tol)
    return opt, estimates(opt.theta[:nt], opt.theta[nt:], data, fam, s, n_agq, opt.objective)


@kernel(static_argnames=("fam", "s", "n_agq", "max_iter"), quick=True)
def fit_glmm(data: GLMMData, phi0: jnp.ndarray, active0: jnp.ndarray, fam: Family, s: Structure, n_agq: int = 1,
             max_iter: int = 200) -> tuple[NewtonResult, dict]:
    """:func:`fit` from the GLM start, compiled as one function."""
    return fit(data, phi0, active0, fam, s, n_agq, max_iter)


@kernel(static_argnames=("fam", "s", "n_agq"), quick=True)
def estimates_at(theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family, s: Structure,
                 n_agq: int = 1) -> dict:
    """:func:`estimates` at a given (theta, beta), compiled."""
    return estimates(theta, beta, data, fam, s, n_agq)

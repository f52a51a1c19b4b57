"""The compiled kernels of a single fit: the optimum, and what results need at theta.

Each is a function of (theta or start, cross-products, static structure), so
every model of one padded structure shares one compilation
(:func:`~lmm_jax.build.crossprod.pad_products`), and the bootstrap vmaps the
very same optimiser over simulated responses.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..runtime.kernel import kernel
from .likelihood import (conditional_covariances, conditional_modes, deviance_at_sigma, factorize, fixed_effects,
                         profiled_deviance, sigma_hat, unscaled_vcov_beta, user_fixed_effects, user_vcov)
from .optimize import NewtonResult, newton_minimize
from .parametrization import diagonal_mask
from .types import DesignProducts, ResponseProducts, Structure

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on the diagonal of Lambda


def theta_optimum(dp: DesignProducts, rp: ResponseProducts, phi0: jnp.ndarray, active0: jnp.ndarray, s: Structure,
                  reml, max_iter: int = 200) -> NewtonResult:
    """Minimise the profiled deviance over theta by Newton's method: plain
    traceable JAX (``reml`` a Python bool or a traced boolean scalar)."""
    return newton_minimize(lambda th: profiled_deviance(th, dp, rp, s, reml), phi0, active0, s.ks,
                           max_iter=max_iter)


@partial(jax.jit, static_argnames=("s", "reml", "max_iter"))
def fit_theta(dp: DesignProducts, rp: ResponseProducts, phi0: jnp.ndarray, active0: jnp.ndarray, s: Structure,
              reml: bool, max_iter: int = 200) -> NewtonResult:
    """:func:`theta_optimum` jit-compiled once per structure (vmap over ``rp``
    for many responses on one design)."""
    return theta_optimum(dp, rp, phi0, active0, s, reml, max_iter)


class Estimates(NamedTuple):
    """The estimates at one theta, as a pytree (what :func:`lmm_jax.make_estimates` returns).

    Attributes:
        theta: lme4's relative covariance parameters the estimates are at.
        beta: (p,) fixed effects, the GLS estimate at theta, ``L_X'^{-1} r``.
        sigma: residual SD, ``sqrt(pwrss / (n - p))`` (REML) or ``sqrt(pwrss / n)`` (ML).
        vcov: (p, p) covariance of beta, ``sigma^2 (L_X L_X')^{-1}`` (lme4's ``vcov``).
        b: conditional modes, one (m_t, k_t) array per random-effects term, in
            the order of ``model.design.terms`` (largest number of levels first).
        deviance: the profiled REML criterion or ML deviance at theta.
    """

    theta: jnp.ndarray
    beta: jnp.ndarray
    sigma: jnp.ndarray
    vcov: jnp.ndarray
    b: tuple[jnp.ndarray, ...]
    deviance: jnp.ndarray


def estimates(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure, reml: bool) -> Estimates:
    """:class:`Estimates` at theta: plain traceable JAX (no kernel), for code
    that jit/vmap/grad compiles itself (:func:`lmm_jax.make_estimates`)."""
    e = _estimates(theta, dp, rp, s, reml)
    return Estimates(theta=theta, beta=e["beta"], sigma=e["sigma"], vcov=e["sigma"] ** 2 * e["unscaled_vcov"], b=e["b"],
                     deviance=e["deviance"])


def _estimates(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure, reml: bool) -> dict:
    F = factorize(theta, dp, rp, s)
    beta = fixed_effects(F)
    return dict(beta=user_fixed_effects(beta, dp, rp), sigma=sigma_hat(F, dp, reml),
                unscaled_vcov=user_vcov(unscaled_vcov_beta(F), dp), b=conditional_modes(theta, F, beta, s),
                deviance=profiled_deviance(theta, dp, rp, s, reml))


@kernel(static_argnames=("s",), quick=True)
def estimates_at(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure, reml: bool) -> dict:
    """beta, sigma, unscaled vcov(beta), conditional modes b and the
    deviance at a given theta (in the products' layout: padded products
    give the padded levels' modes too, see :func:`unpad_estimates`)."""
    return _estimates(theta, dp, rp, s, reml)


@kernel(static_argnames=("s", "max_iter"), quick=True)
def fit_and_estimate(dp: DesignProducts, rp: ResponseProducts, phi0: jnp.ndarray, active0: jnp.ndarray,
                     s: Structure, reml: bool, max_iter: int = 200) -> tuple[NewtonResult, dict]:
    """:func:`theta_optimum` and :func:`estimates_at` at its optimum, compiled as
    one function: a single fit's one compilation and one dispatch (``reml``
    an argument, not a static: ML and REML fits share it)."""
    opt = theta_optimum(dp, rp, phi0, active0, s, reml, max_iter)
    return opt, _estimates(opt.theta, dp, rp, s, reml)


def unpad_estimates(est: dict, design) -> dict:
    """:func:`estimates_at` output as numpy arrays in the model's own sizes
    (the padded levels' modes removed, :func:`~lmm_jax.build.crossprod.pad_products`)."""
    return dict(beta=np.asarray(est["beta"]), sigma=float(est["sigma"]), unscaled_vcov=np.asarray(est["unscaled_vcov"]),
                b=tuple(np.asarray(b)[:t.m] for b, t in zip(est["b"], design.terms)), deviance=float(est["deviance"]))


@kernel(static_argnames=("s",), quick=True)
def conditional_covariances_at(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure):
    """Per-term (m_t, k_t, k_t) blocks of Var(b | y) / sigma^2 at theta, compiled
    as one function (op-by-op dispatch cost seconds on crossed designs)."""
    return conditional_covariances(theta, factorize(theta, dp, rp, s), s)


@kernel(static_argnames=("s",), quick=True)
def deviance_at(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure, reml: bool):
    """The profiled ML deviance or REML criterion at theta, compiled."""
    return profiled_deviance(theta, dp, rp, s, reml)


def vcov_beta(varpar: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure) -> jnp.ndarray:
    """``C(varpar) = sigma^2 S (L_X L_X')^{-1} S'``: the covariance of beta-hat
    in the user's basis at varpar = (theta, sigma)."""
    return varpar[-1] ** 2 * user_vcov(unscaled_vcov_beta(factorize(varpar[:-1], dp, rp, s)), dp)


def varpar_derivatives_of(varpar: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure,
                          reml) -> dict:
    """What inference at varpar = (theta, sigma) needs, from one forward-mode
    pass: plain traceable JAX (:func:`varpar_derivatives` compiles it).

    The pass differentiates the gradient of lmerTest's ``devfun_vp``
    (:func:`~lmm_jax.core.likelihood.deviance_at_sigma`) and :func:`vcov_beta`
    together, so the Hessian and the Jacobian share the factorisation's tangents.

    Returns:
        ``dict(H=(n, n), C=(p, p), dC=(p, p, n))`` with n = len(varpar): H the
        Hessian of ``devfun_vp`` in varpar, C = vcov(beta) and dC its Jacobian.
    """
    def gradient_and_vcov(vp):
        return jax.grad(lambda v: deviance_at_sigma(v[:-1], v[-1], dp, rp, s, reml))(vp), vcov_beta(vp, dp, rp, s)

    def column(v):
        return jax.jvp(gradient_and_vcov, (varpar,), (v,))

    # the tangents' axis last, as jax.jacfwd: H[i, j] = d g_i / d varpar_j
    (_, C), (H, dC) = jax.vmap(column, out_axes=((None, None), (-1, -1)))(jnp.eye(varpar.shape[0], dtype=varpar.dtype))
    return dict(H=H, C=C, dC=dC)


@kernel(static_argnames=("s",), quick=True)
def varpar_derivatives(varpar: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure,
                       reml: bool) -> dict:
    """:func:`varpar_derivatives_of` compiled: a summary's one kernel (the
    Hessian behind the variance components' SEs and Satterthwaite's df, and
    vcov(beta) with its Jacobian)."""
    return varpar_derivatives_of(varpar, dp, rp, s, reml)


PINV_RCOND = 1e-15   # eigenvalues of H below this fraction of the largest are dropped (numpy's pinv default)


def varpar_covariance_of(H: jnp.ndarray) -> jnp.ndarray:
    """``2 H^{-1}``, the asymptotic covariance of (theta, sigma), as a
    pseudo-inverse: eigenvalues of the symmetrised H below ``PINV_RCOND``
    times the largest in absolute value are dropped (a boundary fit's H can
    be singular). The same matrix as ``2 numpy.linalg.pinv(H, PINV_RCOND,
    hermitian=True)`` (:func:`lmm_jax.inference.satterthwaite.varpar_covariance`)."""
    w, V = jnp.linalg.eigh(0.5 * (H + H.T))
    a = jnp.abs(w)
    keep = a > PINV_RCOND * jnp.max(a)
    return 2.0 * (V * jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)) @ V.T


def coefficient_inference(theta: jnp.ndarray, sigma: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts,
                          s: Structure, reml: bool, satterthwaite: bool) -> dict:
    """vcov(beta) at (theta, sigma) and, if ``satterthwaite``, lmerTest's
    Satterthwaite df of each coefficient: plain traceable JAX, for batched fits.

    With ``C(varpar)`` = :func:`vcov_beta`, ``A = 2 H^{-1}``
    (:func:`varpar_covariance_of` of H, the Hessian of
    :func:`~lmm_jax.core.likelihood.deviance_at_sigma`, from :func:`varpar_derivatives_of`) and
    ``g_j = d C_jj / d varpar``, coefficient j has ``df_j = 2 C_jj^2 / (g_j' A g_j)``
    (:func:`lmm_jax.inference.satterthwaite.satterthwaite_df` for unit contrasts).

    Returns:
        ``dict(vcov=(p, p))``, with ``df=(p,)`` when ``satterthwaite``.
    """
    varpar = jnp.concatenate([theta, sigma[None]])
    if not satterthwaite:
        return dict(vcov=vcov_beta(varpar, dp, rp, s))
    d = varpar_derivatives_of(varpar, dp, rp, s, reml)
    C, A = d["C"], varpar_covariance_of(d["H"])
    g = jnp.diagonal(d["dC"], axis1=0, axis2=1).T                          # (p, n_varpar): d C_jj / d varpar
    var = jnp.diagonal(C)
    return dict(vcov=C, df=2.0 * var ** 2 / jnp.einsum("jk,kl,jl->j", g, A, g))


def is_singular(theta: np.ndarray, ks: tuple[int, ...], tol: float = SINGULAR_TOL) -> bool:
    """lme4's ``isSingular``: a diagonal entry of some Lambda_t below tol."""
    diag = diagonal_mask(ks)
    return bool(np.any(np.abs(np.asarray(theta)[diag]) < tol))

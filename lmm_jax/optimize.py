"""A vmappable Newton optimiser with the exact Hessian and a boundary rule.

Minimises ``f(theta_from_phi(phi, active))`` over the unconstrained log-Cholesky
parameters phi. Each iteration (Nocedal & Wright 2006, secs. 3.1 and 3.4):

1. gradient g and Hessian H of f by autodiff;
2. a modified-Newton direction ``d = -|H|^{-1} g``, the eigenvalues of H
   replaced by their absolute values (floored), so d is a descent direction
   even where H is indefinite; d is capped at ``max_step`` in the infinity norm
   (a trust region in all but name);
3. a backtracking line search on the Armijo condition;
4. the boundary rule: a diagonal entry of Lambda whose theta has fallen below
   ``zero_tol`` is set to exactly 0 (made inactive) when that does not raise
   f. In the log parametrisation a zero variance sits at -infinity, which
   Newton approaches by only ~0.5 in phi per step; the rule reaches lme4's
   boundary optimum in a few steps and without NaN. An inactive entry is
   re-activated if moving it off zero lowers f.

Converged when the Newton decrement ``g'|H|^{-1}g / 2`` (the predicted
decrease of f) is below ``tol``. Everything is inside ``lax.while_loop`` with
fixed shapes, so ``jax.vmap`` over data (bootstrap replicates) works: under
vmap the loop runs until every replicate has stopped.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .parametrization import diagonal_mask, theta_from_phi


class NewtonResult(NamedTuple):
    """What the optimiser returns (arrays, so it can be vmapped).

    Attributes:
        theta: lme4's theta at the optimum (boundary entries exactly 0).
        phi: the log-Cholesky parameters (inactive entries hold their last value).
        active: False for diagonal entries fixed at 0.
        objective: f at the optimum.
        gradient_norm: infinity norm of the gradient over active entries.
        decrement: the last Newton decrement.
        iterations: Newton iterations taken.
        converged: the decrement criterion was met before ``max_iter``.
        gradient: gradient of f in phi at the optimum (0 for inactive entries).
        hessian: Hessian of f in phi at the optimum (identity rows/columns
            for inactive entries); :mod:`lmm_jax.diagnostics` maps both to theta.
    """

    theta: jnp.ndarray
    phi: jnp.ndarray
    active: jnp.ndarray
    objective: jnp.ndarray
    gradient_norm: jnp.ndarray
    decrement: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray
    gradient: jnp.ndarray
    hessian: jnp.ndarray


class _State(NamedTuple):
    phi: jnp.ndarray
    active: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    H: jnp.ndarray
    dec: jnp.ndarray
    it: jnp.ndarray
    done: jnp.ndarray
    stalled: jnp.ndarray


def newton_minimize(f_theta: Callable[[jnp.ndarray], jnp.ndarray], phi0: jnp.ndarray, active0: jnp.ndarray,
                    ks: tuple[int, ...], *, max_iter: int = 200, tol: float = 1e-11, max_step: float = 2.0,
                    zero_tol: float = 1e-3, reactivate_at: float = 1e-2) -> NewtonResult:
    """Minimise ``f_theta`` over theta = theta_from_phi(phi, active).

    Args:
        f_theta: objective as a function of lme4's theta (pure JAX).
        phi0: starting log-Cholesky parameters.
        active0: starting active mask (all True to start in the interior).
        ks: columns per term (for the layout of theta).
        max_iter: iteration limit.
        tol: stop when the Newton decrement is below this (deviance units).
        max_step: cap on the infinity norm of a step in phi.
        zero_tol: theta below which a diagonal entry is tried at exactly 0.
        reactivate_at: theta at which a zeroed entry is tried again.

    Returns:
        A :class:`NewtonResult`.
    """
    diag = jnp.asarray(diagonal_mask(ks))
    dtype = phi0.dtype
    n = phi0.shape[0]
    log_zero_tol = jnp.log(zero_tol)

    def f_phi(phi, active):
        return f_theta(theta_from_phi(phi, ks, active))

    grad = jax.grad(f_phi)
    hess = jax.jacfwd(grad)

    def derivatives(phi, active):
        g = grad(phi, active)
        H = hess(phi, active)
        act = active.astype(dtype)
        g = g * act
        H = H * act[:, None] * act[None, :] + jnp.diag(1.0 - act)
        return g, H

    def direction(g, H):
        lam, Q = jnp.linalg.eigh(H)
        floor = 1e-8 * jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
        lam = jnp.maximum(jnp.abs(lam), floor)
        d = -Q @ ((Q.T @ g) / lam)
        dec = -(g @ d) / 2.0
        scale = jnp.minimum(1.0, max_step / jnp.maximum(jnp.max(jnp.abs(d)), 1e-300))
        return d * scale, dec

    def line_search(phi, active, f0, g, d):
        slope = g @ d

        def cond(c):
            alpha, fa, k = c
            return (~(fa <= f0 + 1e-4 * alpha * slope)) & (k < 40)

        def body(c):
            alpha, _, k = c
            alpha = alpha * 0.5
            return alpha, f_phi(phi + alpha * d, active), k + 1

        fa0 = f_phi(phi + d, active)
        alpha, fa, k = lax.while_loop(cond, body, (jnp.asarray(1.0, dtype), fa0, jnp.asarray(0)))
        ok = jnp.isfinite(fa) & (fa <= f0 + 1e-4 * alpha * slope)
        return alpha, fa, ok

    def boundary(phi, active, f):
        # zero diagonal entries that have become tiny, when that does not raise f
        cand = diag & active & (phi < log_zero_tol)
        f_zero = f_phi(phi, active & ~cand)
        take = jnp.any(cand) & (f_zero <= f)
        active = jnp.where(take, active & ~cand, active)
        f = jnp.where(take, f_zero, f)
        # try zeroed entries slightly off zero: keep them off if f drops
        off = diag & ~active
        phi_try = jnp.where(off, jnp.log(reactivate_at), phi)
        f_off = f_phi(phi_try, active | off)
        back = jnp.any(off) & (f_off < f)
        phi = jnp.where(back, phi_try, phi)
        active = jnp.where(back, active | off, active)
        f = jnp.where(back, f_off, f)
        return phi, active, f, take | back

    def cond(st: _State):
        return (~st.done) & (st.it < max_iter)

    def body(st: _State):
        d, dec = direction(st.g, st.H)
        alpha, f_new, ok = line_search(st.phi, st.active, st.f, st.g, d)
        phi_new = jnp.where(ok, st.phi + alpha * d, st.phi)
        f_new = jnp.where(ok, f_new, st.f)
        phi_new, active_new, f_new, changed = boundary(phi_new, st.active, f_new)
        g, H = derivatives(phi_new, active_new)
        _, dec_new = direction(g, H)
        # two stalled line searches in a row with a tiny decrement: nothing more to gain
        stalled = (~ok) & (~changed)
        done = ((dec_new < tol) & ~changed) | (stalled & st.stalled)
        return _State(phi_new, active_new, f_new, g, H, dec_new, st.it + 1, done, stalled)

    active0 = jnp.asarray(active0, dtype=bool)
    f0 = f_phi(phi0, active0)
    g0, H0 = derivatives(phi0, active0)
    _, dec0 = direction(g0, H0)
    st = _State(phi0, active0, f0, g0, H0, dec0, jnp.asarray(0), dec0 < tol, jnp.asarray(False))
    st = lax.while_loop(cond, body, st)
    converged = (st.dec < tol) | (st.stalled & (st.dec < 1e-6))
    return NewtonResult(theta=theta_from_phi(st.phi, ks, st.active), phi=st.phi, active=st.active,
                        objective=st.f, gradient_norm=jnp.max(jnp.abs(st.g)) if n else jnp.asarray(0.0, dtype),
                        decrement=st.dec, iterations=st.it, converged=converged, gradient=st.g, hessian=st.H)

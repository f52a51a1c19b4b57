r"""The Laplace and adaptive Gauss-Hermite deviance of a GLMM, in pure JAX.

Model (Bates et al. 2015, JSS 67(1), sec. 5; lme4's ``glmer``): given the
spherical random effects ``u ~ N(0, I)`` and ``b = Lambda u``, the responses
are independent with linear predictor ``eta = offset + X beta + Z Lambda u``
and log-likelihood ``sum_i l_i(eta_i)`` (:mod:`lmm_jax.core.family`). The
conditional mode ``u*(theta, beta)`` minimises the penalised deviance

    pdev(u) = sum_i d_i(y_i, mu_i; w_i) + |u|^2          (d_i: R's dev.resids)

and the Laplace approximation of -2 log-likelihood is (glmer's ``nAGQ = 1``
objective, ``devFunOnly = TRUE`` of ``c(theta, beta)``)

    D(theta, beta) = -2 sum_i log p(y_i | u*) + |u*|^2 + log|L|^2,
    L L' = Lambda'Z'W Z Lambda + I,   W = diag(w mu_eta^2 / V(mu)) at u*

(W: the Fisher weights lme4's PIRLS uses; the constants of
:func:`~lmm_jax.core.family.log_density` make -D/2 glmer's ``logLik``).

PIRLS. :func:`pirls` finds u* by Newton's method on pdev inside one
``lax.while_loop`` (vmappable): each step forms the weighted cross-products
``A11``, ``A21``, ``A22`` of the rows scaled by the observed information
(segment sums over the rows, :func:`weighted_products`), factors
``Lambda'Z'W Z Lambda + I`` with the LMM's blocked Cholesky
(:func:`~lmm_jax.core.likelihood.random_factor`: the first term's
block-diagonal factor in closed form, the remaining terms through the dense
Schur complement) and solves for the step; a step that does not lower pdev
is halved. For the supported families the log-likelihood is concave in eta
(logistic, normal and Gumbel distribution functions are log-concave), so
the observed information is non-negative and the step is a descent
direction; with it PIRLS converges quadratically also for the probit and
cloglog links, where lme4's Fisher scoring converges linearly. The loop
stops when the Newton decrement is below ``PIRLS_TOL`` relative to pdev
(the gradient of pdev then ~1e-9), which the implicit derivatives below
need. lme4 stops on a relative change of pdev below ``tolPwrss`` (1e-7) and
takes log|L|^2 at the weights of the step before: its deviance is higher by
up to 6e-4 at its default (cbpp), 8e-4 with tolPwrss = 1e-10 (VerbAgg); with
tolPwrss = 1e-13 it agrees with this one to 1e-6.

Implicit derivatives. :func:`conditional_mode` is a ``jax.custom_jvp``:
with ``g(u, p) = Lambda'Z' s(eta) - u`` (s: the score, so ``g = 0`` at the
mode, p = (theta, beta, data)) and ``J = -dg/du = Lambda'Z' W_obs Z Lambda + I``,

    du* = J^{-1} (dg/dp) dp

(implicit function theorem), one solve with J at the mode
(:func:`penalized_solve`, whose own derivative ``dx = J^{-1}(dr - dJ x)``
needs only J's matrix-vector product). The rules are plain JAX of the
primal values, so they are differentiated again for Hessians
(``jax.hessian`` of :func:`laplace_deviance` is exact); neither the loop nor
a factorisation is ever differentiated.

AGQ. For a single scalar random-effects term the integral factorises by
level and :func:`agq_deviance` replaces the Laplace step with adaptive
Gauss-Hermite quadrature around each level's mode with the conditional SD
``1 / L_jj`` (lme4's ``glmerAGQ``, ``nAGQ > 1``):

    D = sum_j devc_j(0) + log|L|^2 - 2 sum_j log sum_k w_k exp(z_k^2/2 - (devc_j(z_k) - devc_j(0)) / 2),
    devc_j(z) = (u_j + z / L_jj)^2 + sum_{i in j} d_i

(z_k, w_k: Gauss-Hermite nodes and weights of the standard normal). As in
lme4, this sums deviance residuals, not log-densities: it omits glmer's
Laplace constant ``-2 sum log p(y | mu = y)``, so AGQ and Laplace deviances
are not comparable with each other (each is lme4's).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..runtime.kernel import serializable
from .family import (Family, deviance_residuals, fisher_weights, linkfun, linkinv, log_density,
                     mu_eta, score_and_information, start_mu)
from .likelihood import random_factor, random_logdet, random_solve
from .linalg import batched_backward_solve, batched_cholesky, batched_forward_solve
from .loops import batched_like
from .parametrization import lambdas
from .types import DesignProducts, Structure

PIRLS_TOL = 1e-20       # stop when the Newton decrement of pdev is below this times (1 + pdev)
PIRLS_MAX_ITER = 60     # Newton steps of one PIRLS
PIRLS_HALVINGS = 30     # step halvings before a PIRLS step counts as failed
GLM_ITER = 30           # most IRLS steps of the fixed-effects-only start
MAX_AGQ = 25            # lme4's largest nAGQ


@serializable
class GLMMData(NamedTuple):
    """A GLMM's data row by row: what the deviance is a function of. A pytree
    of arrays: vmap over ``y`` (simulated responses) or stack datasets of one
    :class:`~lmm_jax.core.types.Structure`.

    Attributes:
        y: (n,) response: a proportion in [0, 1] (binomial) or a count (poisson).
        weights: (n,) prior weights (binomial: the number of trials).
        offset: (n,) known part of the linear predictor.
        X: (n, p) fixed-effects columns in the basis the fit uses.
        codes: per random-effects term (largest first), (n,) int32 level of each row.
        Z: per term, (n, k_t) its columns.
    """

    y: jnp.ndarray
    weights: jnp.ndarray
    offset: jnp.ndarray
    X: jnp.ndarray
    codes: tuple[jnp.ndarray, ...]
    Z: tuple[jnp.ndarray, ...]


class PirlsState(NamedTuple):
    """The PIRLS loop's state: the mode so far and its pdev, the Newton decrement there (inf before the
    first step), the steps taken and whether the last one failed to lower pdev."""

    u: jnp.ndarray
    pdev: jnp.ndarray
    decrement: jnp.ndarray
    iterations: jnp.ndarray
    failed: jnp.ndarray


# -- the random effects as a flat vector -------------------------------------------------------------
def n_random(s: Structure) -> int:
    """q = sum of m_t k_t: the length of u."""
    return s.ms[0] * s.ks[0] + s.q_rest


def split_u(u: jnp.ndarray, s: Structure) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(u_1 (m_1, k_1), u_r (q_r,))`` from the flat u (first term level-major, then the rest)."""
    q1 = s.ms[0] * s.ks[0]
    return u[:q1].reshape(s.ms[0], s.ks[0]), u[q1:]


def join_u(u1: jnp.ndarray, u2: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([u1.reshape(-1), u2])


def term_blocks(u: jnp.ndarray, s: Structure) -> list[jnp.ndarray]:
    """u split into one (m_t, k_t) block per term."""
    u1, u2 = split_u(u, s)
    out = [u1]
    for k, m, o in zip(s.ks[1:], s.ms[1:], s.rest_offsets):
        out.append(u2[o:o + m * k].reshape(m, k))
    return out


def random_effects(u: jnp.ndarray, theta: jnp.ndarray, s: Structure) -> list[jnp.ndarray]:
    """``b_t = Lambda_t u_t`` per term, (m_t, k_t) (rows: levels)."""
    return [ut @ lam.T for ut, lam in zip(term_blocks(u, s), lambdas(theta, s.ks))]


def linear_predictor(u: jnp.ndarray, theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData,
                     s: Structure) -> jnp.ndarray:
    """``eta = offset + X beta + Z Lambda u`` (n,)."""
    return data.offset + data.X @ beta + z_lambda(u, theta, data, s)


def _rest_columns(data: GLMMData, s: Structure) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each row's positions in Z_r and values there: (n, K_r) int and float, K_r = sum_{t >= 2} k_t."""
    rows, vals = [], []
    for Z, c, k, o in zip(data.Z[1:], data.codes[1:], s.ks[1:], s.rest_offsets):
        rows.append(o + c[:, None] * k + jnp.arange(k)[None, :])
        vals.append(Z)
    return jnp.concatenate(rows, axis=1), jnp.concatenate(vals, axis=1)


def lambda_t_z_t(v: jnp.ndarray, theta: jnp.ndarray, data: GLMMData, s: Structure) -> jnp.ndarray:
    """``Lambda'Z'v`` as a flat q-vector for a vector v over the rows (n,)."""
    lams = lambdas(theta, s.ks)
    parts = []
    for Z, c, m, lam in zip(data.Z, data.codes, s.ms, lams):
        parts.append((jax.ops.segment_sum(Z * v[:, None], c, num_segments=m) @ lam).reshape(-1))
    return jnp.concatenate(parts)


def weighted_products(w: jnp.ndarray, data: GLMMData, s: Structure) -> DesignProducts:
    """``Z'WZ`` in the LMM's blocked form (``A11`` (m_1, k_1, k_1), ``A21``
    dense (q_r, m_1, k_1), ``A22`` (q_r, q_r)) for row weights w (n,), by segment
    sums over the rows; the fields of the fixed effects are empty (p = 0), as
    :func:`~lmm_jax.core.likelihood.random_factor` reads only these three."""
    m1, k1, qr = s.ms[0], s.ks[0], s.q_rest
    Z1, c1 = data.Z[0], data.codes[0]
    dtype = Z1.dtype
    A11 = jax.ops.segment_sum(w[:, None, None] * Z1[:, :, None] * Z1[:, None, :], c1, num_segments=m1)
    if qr:
        R, V = _rest_columns(data, s)
        WV = w[:, None] * V
        A21 = jax.ops.segment_sum((WV[:, :, None] * Z1[:, None, :]).reshape(-1, k1),
                                  (R * m1 + c1[:, None]).reshape(-1), num_segments=qr * m1).reshape(qr, m1, k1)
        A22 = jax.ops.segment_sum((WV[:, :, None] * V[:, None, :]).reshape(-1),
                                  (R[:, :, None] * qr + R[:, None, :]).reshape(-1),
                                  num_segments=qr * qr).reshape(qr, qr)
    else:
        A21, A22 = jnp.zeros((0, m1, k1), dtype), jnp.zeros((0, 0), dtype)
    zero = jnp.zeros((), dtype)
    return DesignProducts(A11=A11, A21=A21, A22=A22, Z1X=jnp.zeros((m1, k1, 0), dtype),
                          ZrX=jnp.zeros((qr, 0), dtype), XtX=jnp.zeros((0, 0), dtype), nobs=zero, rank=zero,
                          basis=jnp.zeros((0, 0), dtype), log_det_basis=zero, log_weights=zero)


# -- PIRLS ---------------------------------------------------------------------------------------------
def penalized_deviance(u: jnp.ndarray, theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family,
                       s: Structure) -> jnp.ndarray:
    """``pdev(u) = sum_i d_i + |u|^2`` (the module docstring)."""
    eta = linear_predictor(u, theta, beta, data, s)
    return jnp.sum(deviance_residuals(fam, data.y, eta, data.weights)) + u @ u


def z_lambda(u: jnp.ndarray, theta: jnp.ndarray, data: GLMMData, s: Structure) -> jnp.ndarray:
    """``Z Lambda u`` (n,) for a flat u."""
    out = jnp.zeros(data.y.shape, dtype=u.dtype)
    for b, c, Z in zip(random_effects(u, theta, s), data.codes, data.Z):
        out = out + jnp.sum(Z * b[c], axis=1)
    return out


def _penalized_matvec(theta, w, data, x, s):
    """``(Lambda'Z' W Z Lambda + I) x`` from the rows (no factor)."""
    return lambda_t_z_t(w * z_lambda(x, theta, data, s), theta, data, s) + x


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def penalized_solve(theta: jnp.ndarray, w: jnp.ndarray, data: GLMMData, r: jnp.ndarray, s: Structure) -> jnp.ndarray:
    """``x = (Lambda'Z' W Z Lambda + I)^{-1} r`` for row weights w >= 0 (n,) and a flat r (q,), by the blocked
    Cholesky factor of the weighted products (:func:`weighted_products`,
    :func:`~lmm_jax.core.likelihood.random_factor`).

    Its derivative is the classical ``dx = J^{-1} (dr - dJ x)`` with ``dJ x`` the tangent of the
    matrix-vector product :func:`_penalized_matvec` at fixed x (Magnus & Neudecker 2019, ch. 8): the
    factorisation itself (closed forms, loops, LAPACK) is never differentiated, to any order."""
    F = random_factor(theta, weighted_products(w, data, s), s)
    return join_u(*random_solve(F, *split_u(r, s)))


def _penalized_solve_jvp(s, primals, tangents):
    theta, w, data, r = primals
    x = penalized_solve(theta, w, data, r, s)
    is_zero = lambda t: isinstance(t, SymbolicZero)
    leaves, tree = jax.tree_util.tree_flatten((theta, w, data))
    dleaves = jax.tree_util.tree_leaves(tangents[:3], is_leaf=is_zero)
    live = [i for i, t in enumerate(dleaves) if not is_zero(t)]
    rhs = jnp.zeros_like(x) if is_zero(tangents[3]) else tangents[3]
    if live:
        def matvec(*xs):
            full = list(leaves)
            for i, v in zip(live, xs):
                full[i] = v
            th, ww, da = jax.tree_util.tree_unflatten(tree, full)
            return _penalized_matvec(th, ww, da, x, s)

        rhs = rhs - jax.jvp(matvec, tuple(leaves[i] for i in live), tuple(dleaves[i] for i in live))[1]
    return x, penalized_solve(theta, w, data, rhs, s)


penalized_solve.defjvp(_penalized_solve_jvp, symbolic_zeros=True)


def _score_and_weights(u, theta, beta, data, fam, s):
    """``g = Lambda'Z' s(eta) - u`` (half the negative gradient of pdev) and the observed information
    ``W_obs`` (n,) at u: ``J = Lambda'Z' W_obs Z Lambda + I`` is pdev's Hessian / 2."""
    eta = linear_predictor(u, theta, beta, data, s)
    score, info = score_and_information(fam, data.y, eta, data.weights)
    return lambda_t_z_t(score, theta, data, s) - u, jnp.maximum(info, 0.0)


def _newton_step(u, theta, beta, data, fam, s):
    g, W = _score_and_weights(u, theta, beta, data, fam, s)
    d = penalized_solve(theta, W, data, g, s)
    return d, g @ d


def pirls(theta: jnp.ndarray, beta: jnp.ndarray, u0: jnp.ndarray, data: GLMMData, fam: Family,
          s: Structure) -> PirlsState:
    """The conditional mode of u at (theta, beta) by penalised IRLS from ``u0``
    (module docstring): Newton steps with step halving, in ``lax.while_loop``.

    Each pass takes the Newton step at the current u; it stops there if the
    decrement is below ``PIRLS_TOL (1 + pdev)`` (the step is not taken), and
    otherwise halves the step until pdev does not rise (beyond rounding). The
    step appears once in the loop's body (compile time)."""
    def f(u):
        return penalized_deviance(u, theta, beta, data, fam, s)

    def body(st: PirlsState) -> PirlsState:
        step, dec = _newton_step(st.u, theta, beta, data, fam, s)
        converged = dec <= PIRLS_TOL * (1.0 + jnp.abs(st.pdev))
        noise = 1e-15 * (1.0 + jnp.abs(st.pdev))

        def halve(c):
            alpha, _, k = c
            alpha = alpha * 0.5
            return alpha, f(st.u + alpha * step), k + 1

        def worse(c):
            _, fa, k = c
            return ~converged & ~(fa <= st.pdev + noise) & (k < PIRLS_HALVINGS)

        f_full = jnp.where(converged, st.pdev, f(st.u + step))
        start = batched_like((jnp.asarray(1.0, st.pdev.dtype), f_full, jnp.asarray(0)), f_full)
        alpha, fa, _ = lax.while_loop(worse, halve, start)
        ok = ~converged & (fa <= st.pdev + noise)
        return PirlsState(u=jnp.where(ok, st.u + alpha * step, st.u), pdev=jnp.where(ok, fa, st.pdev),
                          decrement=dec, iterations=st.iterations + ok.astype(st.iterations.dtype),
                          failed=~converged & ~ok)

    def more(st: PirlsState):
        return ~st.failed & (st.iterations < PIRLS_MAX_ITER) \
            & ~(st.decrement <= PIRLS_TOL * (1.0 + jnp.abs(st.pdev)))

    pdev0 = f(u0)
    st = PirlsState(u=u0, pdev=pdev0, decrement=jnp.asarray(jnp.inf, u0.dtype), iterations=jnp.asarray(0),
                    failed=jnp.asarray(False))
    return lax.while_loop(more, body, batched_like(st, pdev0))


@partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def conditional_mode(theta: jnp.ndarray, beta: jnp.ndarray, u0: jnp.ndarray, data: GLMMData, fam: Family,
                     s: Structure) -> jnp.ndarray:
    """The conditional mode u*(theta, beta) (flat, q) by :func:`pirls` from
    ``u0``, with exact derivatives by the implicit function theorem (module
    docstring); u* does not depend on ``u0``."""
    return pirls(theta, beta, u0, data, fam, s).u


def _conditional_mode_jvp(fam, s, primals, tangents):
    # symbolic zeros: only the inputs with a tangent are differentiated in dg (the data's arrays, n-long, carry
    # none in a fit: their jvp would be computed on materialised zeros and compiled for nothing)
    theta, beta, u0, data = primals
    u = conditional_mode(theta, beta, u0, data, fam, s)
    is_zero = lambda t: isinstance(t, SymbolicZero)
    leaves, tree = jax.tree_util.tree_flatten((theta, beta, data))
    dleaves = jax.tree_util.tree_leaves((tangents[0], tangents[1], tangents[3]), is_leaf=is_zero)
    live = [i for i, t in enumerate(dleaves) if not is_zero(t)]
    if not live:
        return u, jnp.zeros_like(u)

    def g(*xs):
        full = list(leaves)
        for i, x in zip(live, xs):
            full[i] = x
        th, be, da = jax.tree_util.tree_unflatten(tree, full)
        eta = linear_predictor(u, th, be, da, s)
        score, _ = score_and_information(fam, da.y, eta, da.weights)
        return lambda_t_z_t(score, th, da, s)

    _, dg = jax.jvp(g, tuple(leaves[i] for i in live), tuple(dleaves[i] for i in live))
    _, W = _score_and_weights(u, theta, beta, data, fam, s)
    return u, penalized_solve(theta, W, data, dg, s)


conditional_mode.defjvp(_conditional_mode_jvp, symbolic_zeros=True)


# -- the objectives ----------------------------------------------------------------------------------
def _mode(theta, beta, data, fam, s, u0):
    u0 = jnp.zeros(n_random(s), dtype=beta.dtype) if u0 is None else u0
    return conditional_mode(theta, beta, u0, data, fam, s)


def laplace_deviance(theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family, s: Structure,
                     u0: jnp.ndarray | None = None) -> jnp.ndarray:
    """glmer's Laplace deviance (``nAGQ = 1``) at (theta, beta), -2 x the
    Laplace log-likelihood (module docstring).

    Args:
        theta: lme4's covariance parameters.
        beta: fixed effects for the columns of ``data.X``.
        data: the :class:`GLMMData`.
        fam: the :class:`~lmm_jax.core.family.Family`.
        s: static structure (p: ``data.X``'s columns).
        u0: where PIRLS starts (default 0); the value does not depend on it.
    """
    u = _mode(theta, beta, data, fam, s, u0)
    eta = linear_predictor(u, theta, beta, data, s)
    W = fisher_weights(fam, eta, data.weights)
    ld = random_logdet(theta, weighted_products(W, data, s), s)
    return -2.0 * jnp.sum(log_density(fam, data.y, eta, data.weights)) + u @ u + ld


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of n-point Gauss-Hermite quadrature for the standard
    normal density (lme4's ``GHrule``: weights sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / np.sqrt(2.0 * np.pi)


def agq_deviance(theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family, s: Structure, n_agq: int,
                 u0: jnp.ndarray | None = None) -> jnp.ndarray:
    """lme4's adaptive Gauss-Hermite deviance (``nAGQ = n_agq``) for a single
    scalar random-effects term (module docstring; ``glmerAGQ``).

    Raises:
        ValueError: the model has more than one term or a term of several columns.
    """
    if len(s.ks) != 1 or s.ks[0] != 1:
        raise ValueError("adaptive Gauss-Hermite quadrature (nAGQ > 1) needs a single scalar random-effects term")
    m = s.ms[0]
    z, wk = gauss_hermite(n_agq)
    u = _mode(theta, beta, data, fam, s, u0)
    eta0 = linear_predictor(u, theta, beta, data, s)
    c, Z = data.codes[0], data.Z[0][:, 0]
    dev0 = jax.ops.segment_sum(deviance_residuals(fam, data.y, eta0, data.weights), c, num_segments=m) + u ** 2
    A11 = jax.ops.segment_sum(fisher_weights(fam, eta0, data.weights) * Z ** 2, c, num_segments=m)
    Ljj = jnp.sqrt(theta[0] ** 2 * A11 + 1.0)
    sd = 1.0 / Ljj
    zj = jnp.asarray(z, dtype=eta0.dtype)[:, None] * sd[None, :]                          # (K, m) shifts of u_j
    eta = eta0[None, :] + theta[0] * Z[None, :] * zj[:, c]
    dres = deviance_residuals(fam, data.y[None, :], eta, data.weights[None, :])
    devc = jax.vmap(lambda d: jax.ops.segment_sum(d, c, num_segments=m))(dres) + (u[None, :] + zj) ** 2
    expo = jnp.asarray(z ** 2 / 2, dtype=eta0.dtype)[:, None] - (devc - dev0[None, :]) / 2.0
    log_mult = jax.scipy.special.logsumexp(expo, axis=0, b=jnp.asarray(wk, dtype=eta0.dtype)[:, None])
    return jnp.sum(dev0) + 2.0 * jnp.sum(jnp.log(Ljj)) - 2.0 * jnp.sum(log_mult)


def deviance(theta: jnp.ndarray, beta: jnp.ndarray, data: GLMMData, fam: Family, s: Structure, n_agq: int = 1,
             u0: jnp.ndarray | None = None) -> jnp.ndarray:
    """:func:`laplace_deviance` (``n_agq = 1``) or :func:`agq_deviance`."""
    if n_agq == 1:
        return laplace_deviance(theta, beta, data, fam, s, u0)
    return agq_deviance(theta, beta, data, fam, s, n_agq, u0)


# -- the start: a GLM without random effects --------------------------------------------------------
def glm_fit(data: GLMMData, fam: Family) -> jnp.ndarray:
    """beta of the GLM without random effects (R's ``glm.fit``: IRLS from
    the family's starting mean), the fixed effects' start. At most
    ``GLM_ITER`` steps in ``lax.while_loop`` (vmappable), until beta changes
    by less than 1e-8 (relative); a step that is not finite (a separated
    design) keeps the last finite beta."""
    X, w = data.X, data.weights
    p = X.shape[1]
    mu0 = start_mu(fam, data.y, w)
    eta0 = linkfun(fam, mu0)

    def wls(W, z):
        A = X.T @ (W[:, None] * X)
        A = A + 1e-12 * jnp.max(jnp.diagonal(A)) * jnp.eye(p, dtype=A.dtype)
        L = batched_cholesky(A)
        return batched_backward_solve(L, batched_forward_solve(L, (X.T @ (W * z))[:, None]))[:, 0]

    # the first working response from the family's start: z = eta + (y - mu) / mu_eta
    beta0 = wls(fisher_weights(fam, eta0, w), eta0 - data.offset + (data.y - mu0) / mu_eta(fam, eta0))
    beta0 = jnp.where(jnp.all(jnp.isfinite(beta0)), beta0, jnp.zeros_like(beta0))

    def body(c):
        beta, _, k = c
        eta = data.offset + X @ beta
        score, _ = score_and_information(fam, data.y, eta, w)
        W = fisher_weights(fam, eta, w)
        new = wls(W, eta - data.offset + score / jnp.where(W > 0, W, 1.0))
        new = jnp.where(jnp.all(jnp.isfinite(new)), new, beta)
        return new, jnp.max(jnp.abs(new - beta) / (1.0 + jnp.abs(new))), k + 1

    def more(c):
        _, change, k = c
        return (change > 1e-8) & (k < GLM_ITER)

    start = batched_like((beta0, jnp.asarray(jnp.inf, beta0.dtype), jnp.asarray(0)), beta0)
    return lax.while_loop(more, body, start)[0]


def fitted_mean(eta: jnp.ndarray, fam: Family) -> jnp.ndarray:
    """mu at the linear predictor (the inverse link)."""
    return linkinv(fam, eta)

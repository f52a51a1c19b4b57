r"""The profiled -2 log-likelihood of a linear mixed model, in pure JAX.

Model (Bates, Maechler, Bolker & Walker 2015, JSS 67(1), sec. 3):

    y = X beta + Z b + e,   b ~ N(0, sigma^2 Lambda Lambda'),   e ~ N(0, sigma^2 I).

With ``u = Lambda^{-1} b`` the penalised least-squares system has the
Cholesky factor of

    [Lambda'Z'Z Lambda + I   Lambda'Z'X   Lambda'Z'y]       [L_Z              ]
    [X'Z Lambda              X'X          X'y       ]  = L L',  L = [L_XZ  L_X        ]
    [y'Z Lambda              y'X          y'y       ]       [c_y'  r'   sqrt(pwrss)]

and the profiled deviance (beta and sigma at their conditional optima) is

    ML:    d(theta) = log|L_Z|^2 + n      (1 + log(2 pi pwrss / n))
    REML:  d(theta) = log|L_Z|^2 + log|L_X|^2 + (n-p) (1 + log(2 pi pwrss / (n-p)))

(eqs. 34 and 41 of the paper; MixedModels.jl ``objective``/``updateL!``).

Blocked evaluation. ``L_Z`` is formed from the cross-products of
:mod:`lmm_jax.crossprod` only, never from an n x n matrix: the first term's
block ``L_1`` is block diagonal (m_1 tiny Cholesky factors, closed form), the
remaining terms are eliminated through the Schur complement

    L_21 = Lambda_r'A21 Lambda_1 L_1^{-T},
    L_22 = chol(Lambda_r'A22 Lambda_r + I - L_21 L_21'),

and ``[X y]`` through a second Schur complement onto a (p+1) x (p+1) block
whose factor holds ``L_X``, ``r`` and ``sqrt(pwrss)``. After the
cross-products, one evaluation costs nothing in n.

For crossed factors ``A21`` is kept sparse (:mod:`lmm_jax.sparse`) and
``L21 L21'`` is summed over co-occurring pairs of rows. The dense block
``M22 = L_22 L_22'`` enters the objective only through ``log det M22`` and
``R'M22^{-1}R``, computed by :func:`lmm_jax.linalg.spd_logdet_solve`, whose
derivative rules (``tr(M^{-1} dM)``, ``-M^{-1} dM M^{-1}``) spare autodiff
from differentiating the q_r x q_r Cholesky factor.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .crossprod import DesignProducts, ResponseProducts, Structure
from .linalg import batched_backward_solve, batched_cholesky, batched_forward_solve, spd_logdet_solve
from .parametrization import lambdas
from .sparse import (SparseA21, SparseL21, lambda_coupling, quadratic_blocks, schur_update, times_dense,
                     transpose_times_vector)

LOG_2PI = float(jnp.log(2 * jnp.pi))


class Factor(NamedTuple):
    """Blocked Cholesky factor of the penalised system at one theta.

    Attributes:
        L1: (m_1, k_1, k_1) diagonal blocks of L_Z for the first term.
        L21: the block below them: a dense (q_r, m_1, k_1) array, or its
            nonzero rows (:class:`~lmm_jax.sparse.SparseL21`) when ``A21``
            is stored sparse.
        L22: (q_r, q_r) dense factor of the remaining terms' Schur complement.
        C1: (m_1, k_1, p+1) ``L_1^{-1} Lambda_1'Z_1'[X y]``.
        C2: (q_r, p+1) the remaining terms' part of ``L_Z^{-1} Lambda'Z'[X y]``.
        L33: (p+1, p+1) factor of the [X y] Schur complement: ``L_X`` in the
            top-left p x p block, ``r'`` and ``sqrt(pwrss)`` in the last row.
    """

    L1: jnp.ndarray
    L21: jnp.ndarray
    L22: jnp.ndarray
    C1: jnp.ndarray
    C2: jnp.ndarray
    L33: jnp.ndarray


def _lambda_rest_t(lams: tuple[jnp.ndarray, ...], arr: jnp.ndarray, s: Structure) -> jnp.ndarray:
    """``Lambda_r' arr`` for arr with leading dimension q_r (level-major blocks)."""
    if s.q_rest == 0:
        return arr
    parts = []
    for lam, k, m, o in zip(lams[1:], s.ks[1:], s.ms[1:], s.rest_offsets):
        block = arr[o:o + m * k].reshape((m, k) + arr.shape[1:])
        block = jnp.einsum("ba,jb...->ja...", lam, block)
        parts.append(block.reshape((m * k,) + arr.shape[1:]))
    return jnp.concatenate(parts, axis=0)


class _Eliminated(NamedTuple):
    """The system after eliminating the first term: its factor ``L1``, the
    block ``L21``, ``C1``, and the dense Schur complements ``M22``, ``R`` (the
    remaining terms' right-hand side) and ``M33 = [X y]'[X y] - C1'C1``."""

    L1: jnp.ndarray
    L21: "jnp.ndarray | SparseL21"
    C1: jnp.ndarray
    M22: jnp.ndarray
    R: jnp.ndarray
    M33: jnp.ndarray


def _eliminate_first(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure) -> _Eliminated:
    """Factor the first term's block diagonal and form the Schur complements."""
    lams = lambdas(theta, s.ks)
    lam1 = lams[0]
    m1, k1, p = s.ms[0], s.ks[0], s.p
    eye1 = jnp.eye(k1, dtype=theta.dtype)
    M1 = jnp.einsum("ba,jbc,cd->jad", lam1, dp.A11, lam1) + eye1
    L1 = batched_cholesky(M1)
    Z1Xy = jnp.concatenate([dp.Z1X, rp.Z1y[..., None]], axis=-1)
    C1 = batched_forward_solve(L1, jnp.einsum("ba,jbc->jac", lam1, Z1Xy))
    C1f = C1.reshape(m1 * k1, p + 1)
    XyXy = jnp.block([[dp.XtX, rp.Xy[:, None]], [rp.Xy[None, :], rp.yy[None, None]]])
    M33 = XyXy - C1f.T @ C1f
    qr = s.q_rest
    if qr == 0:
        return _Eliminated(L1, jnp.zeros((0, m1, k1), dtype=theta.dtype), C1, jnp.zeros((0, 0), dtype=theta.dtype),
                           jnp.zeros((0, p + 1), dtype=theta.dtype), M33)
    A22 = _lambda_rest_t(lams, _lambda_rest_t(lams, dp.A22, s).T, s)
    ZrXy = _lambda_rest_t(lams, jnp.concatenate([dp.ZrX, rp.Zry[:, None]], axis=-1), s)
    if isinstance(dp.A21, SparseA21):
        idx = dp.A21.index
        B = lambda_coupling(lams, dp.A21)                                  # rows of Lambda_r'A21 Lambda_1
        L21 = SparseL21(batched_forward_solve(L1[idx.level], B[..., None])[..., 0], idx)
        update, L21C1 = schur_update(L21, qr), times_dense(L21, C1, qr)
    else:
        B = _lambda_rest_t(lams, dp.A21, s)                                # Lambda_r' A21
        B = jnp.einsum("qja,ab->qjb", B, lam1)                            # ... Lambda_1
        L21 = batched_forward_solve(L1, B.transpose(1, 2, 0)).transpose(2, 0, 1)
        L21f = L21.reshape(qr, m1 * k1)
        update, L21C1 = L21f @ L21f.T, L21f @ C1f
    M22 = A22 + jnp.eye(qr, dtype=theta.dtype) - update
    return _Eliminated(L1, L21, C1, M22, ZrXy - L21C1, M33)


def _profile(E: _Eliminated) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``log|L_Z|^2`` and ``L33`` from the eliminated system.

    The dense block enters only through ``log det M22`` and ``R'M22^{-1}R``
    (``C2'C2``), taken from :func:`~lmm_jax.linalg.spd_logdet_solve`, whose
    derivative rules avoid differentiating the q_r x q_r Cholesky factor.
    """
    ld = 2.0 * jnp.sum(jnp.log(jnp.diagonal(E.L1, axis1=-2, axis2=-1)))
    M33 = E.M33
    if E.M22.shape[0]:
        ld22, S = spd_logdet_solve(E.M22, E.R)
        ld = ld + ld22
        M33 = M33 - E.R.T @ S
    return ld, jnp.linalg.cholesky(M33)


def factorize(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure) -> Factor:
    """Blocked Cholesky factor of the penalised system (module docstring)."""
    E = _eliminate_first(theta, dp, rp, s)
    _, L33 = _profile(E)
    if s.q_rest:
        L22 = jnp.linalg.cholesky(E.M22)
        C2 = solve_triangular(L22, E.R, lower=True)
    else:
        L22, C2 = E.M22, E.R
    return Factor(L1=E.L1, L21=E.L21, L22=L22, C1=E.C1, C2=C2, L33=L33)


def _deviance_terms(theta, dp, rp, s) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``log|L_Z|^2``, ``log|L_X|^2`` and pwrss at theta (no q_r x q_r factor kept)."""
    ldz, L33 = _profile(_eliminate_first(theta, dp, rp, s))
    p = L33.shape[0] - 1
    return ldz, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L33)[:p])), L33[-1, -1] ** 2


def log_det_LZ2(F: Factor) -> jnp.ndarray:
    """``log|L_Z|^2`` = log det(Lambda'Z'Z Lambda + I)."""
    d1 = jnp.diagonal(F.L1, axis1=-2, axis2=-1)
    return 2.0 * (jnp.sum(jnp.log(d1)) + jnp.sum(jnp.log(jnp.diagonal(F.L22))))


def log_det_LX2(F: Factor) -> jnp.ndarray:
    """``log|L_X|^2`` (REML's extra term)."""
    p = F.L33.shape[0] - 1
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(F.L33)[:p]))


def pwrss(F: Factor) -> jnp.ndarray:
    """Penalised weighted residual sum of squares at the conditional optimum."""
    return F.L33[-1, -1] ** 2


def profiled_deviance(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure,
                      reml: bool) -> jnp.ndarray:
    """-2 log-likelihood (ML) or REML criterion profiled over beta and sigma.

    Args:
        theta: lme4's covariance parameters (see :mod:`lmm_jax.parametrization`).
        dp, rp: design and response cross-products.
        s: static structure.
        reml: REML criterion if True, ML deviance otherwise.
    """
    ldz, ldx, rss = _deviance_terms(theta, dp, rp, s)
    if reml:
        nu = s.n - s.p
        return ldz + ldx + nu * (1.0 + LOG_2PI + jnp.log(rss / nu))
    return ldz + s.n * (1.0 + LOG_2PI + jnp.log(rss / s.n))


def deviance_at_sigma(theta: jnp.ndarray, sigma: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts,
                      s: Structure, reml: bool) -> jnp.ndarray:
    """-2 log-likelihood with sigma free (beta profiled), lmerTest's ``devfun_vp``:

        log|L_Z|^2 + pwrss / sigma^2 + n log(2 pi sigma^2)
        [REML: + log|L_X|^2 - p log(2 pi sigma^2)]

    Its Hessian in (theta, sigma) gives the asymptotic covariance of the
    variance parameters (Satterthwaite's df, variance-component SEs).
    """
    ldz, ldx, rss = _deviance_terms(theta, dp, rp, s)
    s2 = sigma ** 2
    dev = ldz + rss / s2 + s.n * (LOG_2PI + jnp.log(s2))
    if reml:
        dev = dev + ldx - s.p * (LOG_2PI + jnp.log(s2))
    return dev


def fixed_effects(F: Factor) -> jnp.ndarray:
    """beta-hat(theta) = L_X'^{-1} r."""
    p = F.L33.shape[0] - 1
    return solve_triangular(F.L33[:p, :p], F.L33[p, :p], lower=True, trans="T")


def sigma_hat(F: Factor, s: Structure, reml: bool) -> jnp.ndarray:
    """Residual SD at the conditional optimum: sqrt(pwrss / (n - p)) for
    REML, sqrt(pwrss / n) for ML."""
    return jnp.sqrt(pwrss(F) / (s.n - s.p if reml else s.n))


def unscaled_vcov_beta(F: Factor) -> jnp.ndarray:
    """(L_X L_X')^{-1}; vcov(beta) = sigma^2 times this."""
    p = F.L33.shape[0] - 1
    LXinv = solve_triangular(F.L33[:p, :p], jnp.eye(p, dtype=F.L33.dtype), lower=True)
    return LXinv.T @ LXinv


def spherical_modes(F: Factor, beta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Conditional modes u of the spherical random effects (b = Lambda u):
    solve ``L_Z' u = c_y - C_X beta`` blockwise. Returns (u_1 (m_1, k_1), u_r (q_r,))."""
    p = beta.shape[0]
    v1 = F.C1[..., p] - F.C1[..., :p] @ beta
    v2 = F.C2[:, p] - F.C2[:, :p] @ beta
    u2 = solve_triangular(F.L22, v2, lower=True, trans="T") if v2.shape[0] else v2
    if isinstance(F.L21, SparseL21):
        rhs1 = v1 - transpose_times_vector(F.L21, u2, F.L1.shape[0])
    else:
        rhs1 = v1 - jnp.einsum("qja,q->ja", F.L21, u2)
    u1 = batched_backward_solve(F.L1, rhs1[..., None])[..., 0]
    return u1, u2


def conditional_modes(theta: jnp.ndarray, F: Factor, beta: jnp.ndarray, s: Structure) -> tuple[jnp.ndarray, ...]:
    """BLUPs b_t = Lambda_t u_t, one (m_t, k_t) array per term."""
    lams = lambdas(theta, s.ks)
    u1, u2 = spherical_modes(F, beta)
    out = [jnp.einsum("ab,jb->ja", lams[0], u1)]
    for lam, k, m, o in zip(lams[1:], s.ks[1:], s.ms[1:], s.rest_offsets):
        out.append(jnp.einsum("ab,jb->ja", lam, u2[o:o + m * k].reshape(m, k)))
    return tuple(out)


def conditional_covariances(theta: jnp.ndarray, F: Factor, s: Structure) -> tuple[jnp.ndarray, ...]:
    """Per-level blocks of Var(b | y) / sigma^2 = Lambda (L_Z L_Z')^{-1} Lambda',
    one (m_t, k_t, k_t) array per term (lme4's ``ranef(condVar = TRUE)``).

    With ``L_Z = [[L_1, 0], [L_21, L_22]]``, ``L_Z^{-1}`` has blocks
    ``L_1^{-1}``, ``-W`` with ``W = L_22^{-1} L_21 L_1^{-1}``, and ``L_22^{-1}``;
    the diagonal blocks of ``L_Z^{-T} L_Z^{-1}`` are ``L_1j^{-T} L_1j^{-1} +
    W_j'W_j`` for the first term and those of ``L_22^{-T} L_22^{-1}`` for the
    rest: no q x q inverse of the whole system.
    """
    lams = lambdas(theta, s.ks)
    m1, k1 = s.ms[0], s.ks[0]
    eye = jnp.broadcast_to(jnp.eye(k1, dtype=theta.dtype), (m1, k1, k1))
    L1inv = batched_forward_solve(F.L1, eye)                                  # (m1, k1, k1)
    P11 = jnp.einsum("jca,jcb->jab", L1inv, L1inv)
    out = []
    qr = s.q_rest
    if qr:
        L22inv = solve_triangular(F.L22, jnp.eye(qr, dtype=theta.dtype), lower=True)
        if isinstance(F.L21, SparseL21):
            # W_j'W_j = L1j^{-T} L21[:, j]' P22 L21[:, j] L1j^{-1}, P22 = (L22 L22')^{-1}, over the pairs
            S = quadratic_blocks(F.L21, L22inv.T @ L22inv, m1)
            P11 = P11 + jnp.einsum("jca,jcd,jdb->jab", L1inv, S, L1inv)
        else:
            # W_j = L22^{-1} L21_j L1j^{-1}
            T = jnp.einsum("qjc,jca->qja", F.L21, L1inv)
            W = jnp.einsum("rq,qja->rja", L22inv, T)
            P11 = P11 + jnp.einsum("rja,rjb->jab", W, W)
    out.append(jnp.einsum("ab,jbc,dc->jad", lams[0], P11, lams[0]))
    for lam, k, m, o in zip(lams[1:], s.ks[1:], s.ms[1:], s.rest_offsets):
        V = L22inv[:, o:o + m * k].reshape(qr, m, k)
        P = jnp.einsum("qja,qjb->jab", V, V)
        out.append(jnp.einsum("ab,jbc,dc->jad", lam, P, lam))
    return tuple(out)

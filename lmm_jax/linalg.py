"""Batched Cholesky factors and triangular solves for many tiny matrices.

The first term's block of ``Lambda'Z'Z Lambda + I`` is block diagonal: m
blocks of k x k with k small (1 for a random intercept, 2 for intercept and
slope). XLA's batched ``cholesky`` on (m, 2, 2) arrays is slow on CPU (about
10x the closed form on a sleepstudy bootstrap), so for k <= ``UNROLL_MAX`` the
factorisation is written out entry by entry: for k = 1 it is ``sqrt``, for k =
2 the closed form, in general the Cholesky-Banachiewicz recurrence
(Golub & Van Loan, Alg. 4.2.1) on arrays of shape (m,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

UNROLL_MAX = 6


def batched_cholesky(M: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factors of M (..., k, k), symmetric positive definite."""
    k = M.shape[-1]
    if k > UNROLL_MAX:
        return jnp.linalg.cholesky(M)
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = M[..., j, j]
        for i in range(j):
            s = s - L[j][i] ** 2
        L[j][j] = jnp.sqrt(s)
        for r in range(j + 1, k):
            t = M[..., r, j]
            for i in range(j):
                t = t - L[r][i] * L[j][i]
            L[r][j] = t / L[j][j]
    zero = jnp.zeros_like(M[..., 0, 0])
    rows = [jnp.stack([L[r][c] if c <= r else zero for c in range(k)], axis=-1) for r in range(k)]
    return jnp.stack(rows, axis=-2)


def batched_forward_solve(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Solve L X = B for lower-triangular L (..., k, k), B (..., k, c)."""
    k = L.shape[-1]
    if k > UNROLL_MAX:
        return solve_triangular(L, B, lower=True)
    X = []
    for r in range(k):
        t = B[..., r, :]
        for i in range(r):
            t = t - L[..., r, i, None] * X[i]
        X.append(t / L[..., r, r, None])
    return jnp.stack(X, axis=-2)


def batched_backward_solve(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Solve L' X = B for lower-triangular L (..., k, k), B (..., k, c)."""
    k = L.shape[-1]
    if k > UNROLL_MAX:
        return solve_triangular(L, B, lower=True, trans="T")
    X = [None] * k
    for r in reversed(range(k)):
        t = B[..., r, :]
        for i in range(r + 1, k):
            t = t - L[..., i, r, None] * X[i]
        X[r] = t / L[..., r, r, None]
    return jnp.stack(X, axis=-2)


# -- the dense block: log-determinant and solve with cheap exact derivatives ----------
#
# The remaining terms' Schur complement M (q_r x q_r) is dense. Autodiff through
# ``cholesky`` differentiates the factorisation itself: every tangent costs two
# triangular solves with q_r right-hand sides, and the Hessian (forward over
# reverse) several of those per parameter. The objective needs only
# ``log det M`` and ``S = M^{-1} R``, whose derivatives are classical
# (Magnus & Neudecker 2019, ch. 8):
#
#     d log det M = tr(M^{-1} dM),     dS = M^{-1} (dR - dM S),     d M^{-1} = -M^{-1} dM M^{-1}.
#
# With these rules a gradient costs one explicit inverse beyond the Cholesky
# factor, and each Hessian column two q_r^3 matrix products.


@jax.custom_jvp
def spd_inverse(M: jnp.ndarray) -> jnp.ndarray:
    """M^{-1} for symmetric positive definite M (..., q, q), via its Cholesky factor."""
    L = jnp.linalg.cholesky(M)
    eye = jnp.broadcast_to(jnp.eye(M.shape[-1], dtype=M.dtype), M.shape)
    Linv = solve_triangular(L, eye, lower=True)
    return jnp.swapaxes(Linv, -1, -2) @ Linv


@spd_inverse.defjvp
def _spd_inverse_jvp(primals, tangents):
    (M,), (dM,) = primals, tangents
    Minv = spd_inverse(M)
    return Minv, -Minv @ dM @ Minv


@jax.custom_jvp
def spd_logdet_solve(M: jnp.ndarray, R: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(log det M, M^{-1} R)`` for symmetric positive definite M (q, q) and R (q, c).

    Values from one Cholesky factorisation; derivatives from the rules in
    the comment above (exact, and much cheaper than differentiating the
    factorisation for large q).
    """
    L = jnp.linalg.cholesky(M)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    S = solve_triangular(L, solve_triangular(L, R, lower=True), lower=True, trans="T")
    return logdet, S


@spd_logdet_solve.defjvp
def _spd_logdet_solve_jvp(primals, tangents):
    (M, R), (dM, dR) = primals, tangents
    logdet, S = spd_logdet_solve(M, R)
    Minv = spd_inverse(M)
    return (logdet, S), (jnp.sum(Minv * dM), Minv @ (dR - dM @ S))

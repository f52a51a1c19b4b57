"""Batched Cholesky factors and triangular solves for many tiny matrices.

The first term's block of ``Lambda'Z'Z Lambda + I`` is block diagonal: m
blocks of k x k with k small (1 for a random intercept, 2 for intercept and
slope). XLA's batched ``cholesky`` on (m, 2, 2) arrays is slow on CPU (about
10x the closed form on a sleepstudy bootstrap), so for k <= ``UNROLL_MAX`` the
factorisation is written out entry by entry: for k = 1 it is ``sqrt``, for k =
2 the closed form, in general the Cholesky-Banachiewicz recurrence
(Golub & Van Loan, Alg. 4.2.1) on arrays of shape (m,).

A single matrix larger than that (a single fit's dense block of the
remaining terms, or its fixed-effects block with p >= 6) goes to LAPACK, one
call, as ``jnp.linalg.cholesky`` would: a custom call is one instruction of
the compiled program where a loop and its derivatives are hundreds (the
Newton loop of ``Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)``,
a 32-column block: 4,800 instructions and 1.4 s to compile with the loops
below, 3,200 and 1.0 s with LAPACK). Stacks of blocks up to ``LOOP_MAX``
columns, and every batched (vmapped) use, run the same recurrences as a
``lax.fori_loop`` over columns (rows for the solves) in plain elementwise
jnp, never as LAPACK custom calls. Batched (vmapped) LAPACK calls on CPU go through jaxlib's
``ParallelBatchMap``, which schedules work on XLA's intra-op pool and blocks
the calling pool thread: with two such calls running at once on a 2-thread
pool, both threads wait for work that no thread is free to run. We saw that
deadlock hang bootstraps of crossed models (gdb: both pool threads in
``TriMatrixEquationSolverKernel`` -> ``ParallelBatchMap`` ->
``BlockingCounter::Wait``, every other thread idle). Batched small dense
blocks (the remaining terms of Penicillin, 6 columns, or of a 50 x 20 crossed
design, 20) and the (p+1) x (p+1) fixed-effects block therefore never reach
LAPACK: :func:`lapack_cholesky` and :func:`lapack_solve` send them to the
loops when vmapped.

Larger blocks (a crossed design's second term with more than 64 levels),
and the Cholesky solves of the scalar terms' closed-form rules at any size,
go to LAPACK through :func:`lapack_cholesky` and :func:`lapack_solve`, which
never hand it a batch on CPU: under ``vmap`` they call it once per matrix
(``lax.map``), or, for a solve whose factor is shared by the batch, once
with the batch's right-hand sides as extra columns, as JAX's own batching
of ``triangular_solve`` does; a batch of blocks of at most ``LOOP_MAX``
columns takes the loops above. Each LAPACK call then has batch count 1,
which ``ParallelBatchMap`` runs on the calling thread (jaxlib 0.10's
``lapack_kernels.cc`` schedules on the pool only a batch it can split into
chunks). A single fit runs the same LAPACK calls as ``jnp.linalg.cholesky``
and ``jax.scipy.linalg.solve_triangular`` would.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

UNROLL_MAX = 6
LOOP_MAX = 64


def _cholesky_loop(M: jnp.ndarray) -> jnp.ndarray:
    """Column-by-column Cholesky (Golub & Van Loan, Alg. 4.2.2) in a fori_loop."""
    M = jnp.asarray(M)
    k = M.shape[-1]
    idx = jnp.arange(k)

    def column(j, L):
        s = M[..., :, j] - jnp.sum(L * L[..., j, None, :], axis=-1)       # M[:, j] - L[:, :j] L[j, :j]'
        col = jnp.where(idx >= j, s / jnp.sqrt(s[..., j, None]), 0.0)
        return jnp.where(idx == j, col[..., :, None], L)

    return lax.fori_loop(0, k, column, jnp.zeros_like(M))


def _forward_loop(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    L, B = jnp.asarray(L), jnp.asarray(B)
    k = L.shape[-1]
    idx = jnp.arange(k)

    def row(i, X):
        t = B[..., i, :] - jnp.sum(L[..., i, :, None] * X, axis=-2)       # rows >= i of X are still 0
        return jnp.where((idx == i)[:, None], (t / L[..., i, i, None])[..., None, :], X)

    return lax.fori_loop(0, k, row, jnp.zeros_like(B))


def _backward_loop(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    # L'X = B is a forward solve in reversed order: with J the reversal, J L' J is lower triangular
    Lr = jnp.flip(jnp.swapaxes(jnp.asarray(L), -1, -2), axis=(-2, -1))
    return jnp.flip(_forward_loop(Lr, jnp.flip(jnp.asarray(B), axis=-2)), axis=-2)


# -- LAPACK one matrix at a time ----------------------------------------------------------------------
def _one_matrix_per_call(op: Callable, small: Callable, shared_factor_folds: bool = False) -> Callable:
    """``op`` (matrices -> one matrix) whose ``vmap`` on CPU never passes LAPACK a batch.

    Under vmap, matrices of at most ``LOOP_MAX`` columns go to ``small``, the
    same operation in elementwise jnp (vectorised over the batch, as the
    batched likelihood's other small blocks). Larger ones, on CPU, are mapped
    over with ``lax.map``, one unbatched ``op`` per member (the map's body
    calls the wrapped ``op``, so an enclosing vmap maps again); on other
    platforms, whose solvers batch without the CPU pool's waits, ``op`` is
    vmapped as usual. With ``shared_factor_folds`` (``op(L, B)`` a left-side
    triangular solve), a batch of B with one unbatched L is one call whose
    columns are the batch's (B's batch axis moved last and merged with its
    columns, as in JAX's ``triangular_solve`` batching rule).
    """
    f = jax.custom_batching.custom_vmap(op)

    @f.def_vmap
    def rule(axis_size, in_batched, *args):
        if shared_factor_folds and not in_batched[0]:
            L, B = args
            Bt = jnp.moveaxis(B, 0, -1)                                     # (k, c, batch)
            X = f(L, Bt.reshape(Bt.shape[0], -1)).reshape(Bt.shape)
            return jnp.moveaxis(X, -1, 0), True
        if args[0].shape[-1] <= LOOP_MAX:
            return jax.vmap(small, in_axes=[0 if b else None for b in in_batched])(*args), True

        def merged(mapped):
            it = iter(mapped)
            return [next(it) if b else a for a, b in zip(args, in_batched)]

        def one_per_call(*mapped):
            return lax.map(lambda one: f(*merged(one)), list(mapped))

        def batched(*mapped):
            return jax.vmap(lambda *one: op(*merged(one)))(*mapped)

        mapped = [a for a, b in zip(args, in_batched) if b]
        return lax.platform_dependent(*mapped, cpu=one_per_call, default=batched), True

    return f


_potrf = _one_matrix_per_call(lambda M: lax.linalg.cholesky(M, symmetrize_input=False),
                              small=lambda M: _elementwise_cholesky(M))
_trsm = _one_matrix_per_call(lambda L, B: lax.linalg.triangular_solve(L, B, left_side=True, lower=True),
                             small=lambda L, B: _elementwise_forward_solve(L, B), shared_factor_folds=True)
_trsm_t = _one_matrix_per_call(lambda L, B: lax.linalg.triangular_solve(L, B, left_side=True, lower=True,
                                                                         transpose_a=True),
                               small=lambda L, B: _elementwise_backward_solve(L, B), shared_factor_folds=True)


def lapack_solve(L: jnp.ndarray, B: jnp.ndarray, transpose: bool = False) -> jnp.ndarray:
    """Solve L X = B (``transpose``: L'X = B) for lower-triangular L (..., k, k), B (..., k, c) by LAPACK.

    Differentiable to any order in L and B: a ``lax.custom_linear_solve``
    whose matrix is ``tril(L)`` (what LAPACK reads), whose solves are LAPACK
    calls of one matrix each (:func:`_one_matrix_per_call`).
    """
    if L.ndim > 2:
        return jax.vmap(partial(lapack_solve, transpose=transpose), in_axes=(0, 0 if B.ndim > 2 else None))(L, B)
    if B.ndim > 2:
        return jax.vmap(partial(lapack_solve, L, transpose=transpose))(B)
    solve, solve_t = (_trsm_t, _trsm) if transpose else (_trsm, _trsm_t)
    T = jnp.tril(L)
    matvec = (lambda X: T.T @ X) if transpose else (lambda X: T @ X)
    return lax.custom_linear_solve(matvec, B, lambda _, b: solve(L, b), lambda _, b: solve_t(L, b))


def lapack_cholesky(M: jnp.ndarray, symmetrize: bool = True) -> jnp.ndarray:
    """Lower Cholesky factor of symmetric positive definite M (..., k, k) by LAPACK.

    ``symmetrize``: factor ``(M + M')/2``, as ``jnp.linalg.cholesky`` does;
    otherwise only M's lower triangle is read (the upper may be anything).
    NaN where M is not positive definite.
    """
    if M.ndim > 2:
        return jax.vmap(partial(lapack_cholesky, symmetrize=symmetrize))(M)
    return _cholesky_lower((M + M.T) / 2 if symmetrize else M)


@jax.custom_jvp
def _cholesky_lower(M: jnp.ndarray) -> jnp.ndarray:
    return _potrf(M)


@_cholesky_lower.defjvp
def _cholesky_lower_jvp(primals, tangents):
    # dL = L Phi(L^{-1} dS L^{-T}), Phi: the lower triangle with the diagonal halved (Murray 2016);
    # dS the symmetric matrix with dM's lower triangle, the part the factorisation reads
    (M,), (dM,) = primals, tangents
    L = _cholesky_lower(M)
    dS = jnp.tril(dM) + jnp.tril(dM, -1).T
    X = lapack_solve(L, lapack_solve(L, dS).T)
    return L, L @ (jnp.tril(X) - 0.5 * jnp.diag(jnp.diagonal(X)))


def _by_lapack(A: jnp.ndarray) -> bool:
    """Whether the batched_* functions hand ``A`` (..., k, k) to LAPACK
    (module docstring): a large block, or a single matrix beyond the unrolled sizes."""
    k = A.shape[-1]
    return k > LOOP_MAX or (k > UNROLL_MAX and A.ndim == 2)


def batched_cholesky(M: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factors of M (..., k, k), symmetric positive definite;
    only M's lower triangle is read."""
    return lapack_cholesky(M, symmetrize=False) if _by_lapack(M) else _elementwise_cholesky(M)


def _elementwise_cholesky(M: jnp.ndarray) -> jnp.ndarray:
    """:func:`batched_cholesky` unrolled (k <= UNROLL_MAX) or looped, never LAPACK."""
    k = M.shape[-1]
    if k == 0:                                # no fixed effects (y ~ 0 + (1 | g)): an empty factor
        return M
    if k > UNROLL_MAX:
        return _cholesky_loop(M)
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
    return lapack_solve(L, B) if _by_lapack(L) else _elementwise_forward_solve(L, B)


def _elementwise_forward_solve(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """:func:`batched_forward_solve` unrolled or looped, never LAPACK."""
    k = L.shape[-1]
    if k == 0:
        return B
    if k > UNROLL_MAX:
        return _forward_loop(L, B)
    X = []
    for r in range(k):
        t = B[..., r, :]
        for i in range(r):
            t = t - L[..., r, i, None] * X[i]
        X.append(t / L[..., r, r, None])
    return jnp.stack(X, axis=-2)


def batched_backward_solve(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Solve L' X = B for lower-triangular L (..., k, k), B (..., k, c)."""
    return lapack_solve(L, B, transpose=True) if _by_lapack(L) else _elementwise_backward_solve(L, B)


def _elementwise_backward_solve(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """:func:`batched_backward_solve` unrolled or looped, never LAPACK."""
    k = L.shape[-1]
    if k == 0:
        return B
    if k > UNROLL_MAX:
        return _backward_loop(L, B)
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
    L = batched_cholesky(M)
    eye = jnp.broadcast_to(jnp.eye(M.shape[-1], dtype=M.dtype), M.shape)
    Linv = batched_forward_solve(L, eye)
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
    L = batched_cholesky(M)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    S = batched_backward_solve(L, batched_forward_solve(L, R))
    return logdet, S


@spd_logdet_solve.defjvp
def _spd_logdet_solve_jvp(primals, tangents):
    (M, R), (dM, dR) = primals, tangents
    logdet, S = spd_logdet_solve(M, R)
    Minv = spd_inverse(M)
    return (logdet, S), (jnp.sum(Minv * dM), Minv @ (dR - dM @ S))


# -- the dense block as a function of theta: derivatives that cost one product per parameter ----
#
# Forward-over-reverse through ``spd_logdet_solve`` forms, for each Hessian
# column, the full tangent ``-M^{-1} dM M^{-1}`` of the inverse (two q^3
# products), because the gradient's cotangent of M is the matrix M^{-1}, and
# pushes each Hessian direction through everything that builds M. When the
# partial derivatives of ``M(theta)`` are available in closed form (a
# :class:`ThetaDerivatives`), the classical rules (Magnus & Neudecker 2019,
# ch. 8; M_t, M_st: partial derivatives of M; S = M^{-1}R)
#
#     d log det M / d theta_t             = tr(M^{-1} M_t),
#     d^2 log det M / d theta_s d theta_t = -tr(P_s P_t) + tr(M^{-1} M_st),   P_t = M^{-1} M_t,
#     d (R'M^{-1}R)                        = dR'S + S'dR - sum_t dtheta_t S'M_t S,
#     dS                                   = M^{-1} (dR - sum_t dtheta_t M_t S),
#
# give the gradient for one explicit inverse and the Hessian for one q^3
# product per parameter (P_t), with traces of products taken elementwise and
# everything else O(q^2) per parameter. :func:`logdet_by_theta` and
# :func:`quadratic_by_theta` state these rules; they are exact, and
# differentiable to second order (``jax.grad``, ``jax.jacfwd`` of it,
# ``jax.hessian``).


class ThetaDerivatives(NamedTuple):
    """Closed-form partial derivatives of a symmetric ``M(theta)`` (q, q).

    Every callable is plain JAX, linear in its matrix arguments, and takes
    the arrays M is built from as ``data`` (a pytree passed through the
    functions below as an argument, never closed over: a closure over
    traced arrays would leak out of a later transformation; derivatives
    with respect to ``data`` are not taken). C is symmetric (q, q), X and Y
    are (q, c):

    Attributes:
        jacobian: (theta, data) -> (n, q, q), the M_t.
        traces: (theta, data, C) -> (n,), ``<C, M_t>``.
        second_traces: (theta, data, C) -> (n, n), ``<C, M_st>``.
        apply: (theta, data, X) -> (n, q, c), ``M_t X``.
        bilinear: (theta, data, X, Y) -> (n, c, c), ``X'M_t Y``.
        second_bilinear: (theta, data, X, Y) -> (n, n, c, c), ``X'M_st Y``.
        logdet_hessian: optional (theta, data, M^{-1}) -> (n, n), the Hessian of
            ``log det M`` when structure makes it cheaper than
            :func:`logdet_hessian_by_products`.
    """

    jacobian: Callable
    traces: Callable
    second_traces: Callable
    apply: Callable
    bilinear: Callable
    second_bilinear: Callable
    logdet_hessian: Callable | None = None


def logdet_hessian_by_products(D: ThetaDerivatives, theta: jnp.ndarray, data, Minv: jnp.ndarray) -> jnp.ndarray:
    """The Hessian of ``log det M(theta)``: ``tr(M^{-1} M_st) - tr(P_s P_t)``, ``P_t = M^{-1} M_t``."""
    P = jnp.matmul(Minv[None], D.jacobian(theta, data))
    return D.second_traces(theta, data, Minv) - jnp.einsum("sik,tki->st", P, P)


def chol_inverse(L: jnp.ndarray) -> jnp.ndarray:
    """``(L L')^{-1}`` from a lower Cholesky factor L (q, q).

    One level of 2 x 2 blocking: with ``L = [[A, 0], [B, C]]``,
    ``L^{-1} = [[A^{-1}, 0], [-C^{-1} B A^{-1}, C^{-1}]]`` and the product
    ``L^{-T} L^{-1}`` is formed by blocks, skipping the zero block (measured
    about 2x faster than a full triangular inverse and a full product on CPU).
    """
    q = L.shape[-1]
    if q < 64:
        Linv = batched_forward_solve(L, jnp.eye(q, dtype=L.dtype))
        return Linv.T @ Linv
    h = q // 2
    A, B, C = L[:h, :h], L[h:, :h], L[h:, h:]
    Ai = lapack_solve(A, jnp.eye(h, dtype=L.dtype))
    Ci = lapack_solve(C, jnp.eye(q - h, dtype=L.dtype))
    Bi = -(Ci @ (B @ Ai))
    top_left = Ai.T @ Ai + Bi.T @ Bi
    top_right = Bi.T @ Ci
    return jnp.block([[top_left, top_right], [top_right.T, Ci.T @ Ci]])


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def logdet_by_theta(theta: jnp.ndarray, L: jnp.ndarray, data, D: ThetaDerivatives) -> jnp.ndarray:
    """``log det M(theta)`` for symmetric positive definite M with lower Cholesky factor L.

    Args:
        theta: the parameters (n,).
        L: Cholesky factor of ``M(theta)``; its tangent is ignored (pass it
            through ``lax.stop_gradient``): derivatives come from ``D``.
        data: the arrays M is built from (see :class:`ThetaDerivatives`).
        D: the partial derivatives of M.
    """
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _logdet_gradient(theta, L, data, D):
    return D.traces(theta, data, chol_inverse(L))


@logdet_by_theta.defjvp
def _logdet_by_theta_jvp(D, primals, tangents):
    theta, L, data = primals
    dtheta = tangents[0]
    return logdet_by_theta(theta, L, data, D), _logdet_gradient(theta, L, data, D) @ dtheta


@_logdet_gradient.defjvp
def _logdet_gradient_jvp(D, primals, tangents):
    theta, L, data = primals
    dtheta = tangents[0]
    Minv = chol_inverse(L)
    H = (D.logdet_hessian or partial(logdet_hessian_by_products, D))(theta, data, Minv)
    return D.traces(theta, data, Minv), H @ dtheta


def _cho_solve(L: jnp.ndarray, R: jnp.ndarray) -> jnp.ndarray:
    """``(L L')^{-1} R`` (``jax.scipy.linalg.cho_solve``'s two triangular solves)."""
    return lapack_solve(L, lapack_solve(L, R), transpose=True)


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def quadratic_by_theta(theta: jnp.ndarray, R: jnp.ndarray, L: jnp.ndarray, data, D: ThetaDerivatives) -> jnp.ndarray:
    """``R'M(theta)^{-1}R`` (c, c) for M with lower Cholesky factor L (tangent
    ignored, as in :func:`logdet_by_theta`); R may depend on theta too."""
    return R.T @ _cho_solve(L, R)


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def _solve_by_theta(theta, R, L, data, D):
    return _cho_solve(L, R)


@_solve_by_theta.defjvp
def _solve_by_theta_jvp(D, primals, tangents):
    theta, R, L, data = primals
    dtheta, dR = tangents[:2]
    S = _solve_by_theta(theta, R, L, data, D)
    return S, _cho_solve(L, dR - jnp.tensordot(dtheta, D.apply(theta, data, S), axes=1))


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _bilinear_by_theta(theta, S, data, D):
    return D.bilinear(theta, data, S, S)


@_bilinear_by_theta.defjvp
def _bilinear_by_theta_jvp(D, primals, tangents):
    theta, S, data = primals
    dtheta, dS = tangents[:2]
    K = D.bilinear(theta, data, S, S)
    MS = D.apply(theta, data, S)                                        # M_t S, once for all directions
    dK = jnp.einsum("qa,tqb->tab", dS, MS) + jnp.einsum("tqa,qb->tab", MS, dS)
    return K, dK + jnp.tensordot(dtheta, D.second_bilinear(theta, data, S, S), axes=1)


@quadratic_by_theta.defjvp
def _quadratic_by_theta_jvp(D, primals, tangents):
    theta, R, L, data = primals
    dtheta, dR = tangents[:2]
    S = _solve_by_theta(theta, R, L, data, D)
    K = _bilinear_by_theta(theta, S, data, D)                           # S'M_t S
    return R.T @ S, dR.T @ S + S.T @ dR - jnp.tensordot(dtheta, K, axes=1)

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
:mod:`lmm_jax.build.crossprod` only, never from an n x n matrix: the first term's
block ``L_1`` is block diagonal (m_1 tiny Cholesky factors, closed form), the
remaining terms are eliminated through the Schur complement

    L_21 = Lambda_r'A21 Lambda_1 L_1^{-T},
    L_22 = chol(Lambda_r'A22 Lambda_r + I - L_21 L_21'),

and ``[X y]`` through a second Schur complement onto a (p+1) x (p+1) block
whose factor holds ``L_X``, ``r`` and ``sqrt(pwrss)``. After the
cross-products, one evaluation costs nothing in n.

For crossed factors ``A21`` is kept sparse (:mod:`lmm_jax.core.sparse`) and
``L21 L21'`` is summed over co-occurring pairs of rows. The dense block
``M22 = L_22 L_22'`` enters the objective only through ``log det M22`` and
``R'M22^{-1}R``, computed by :func:`lmm_jax.core.linalg.spd_logdet_solve`, whose
derivative rules (``tr(M^{-1} dM)``, ``-M^{-1} dM M^{-1}``) spare autodiff
from differentiating the q_r x q_r Cholesky factor. When every term is
scalar and A21 is sparse (crossed random intercepts, InstEval), the partial
derivatives of M22 in theta have closed forms (:func:`_scalar_derivatives`)
and :func:`lmm_jax.core.linalg.logdet_by_theta` /
:func:`lmm_jax.core.linalg.quadratic_by_theta` use them: the exact Hessian then
costs one q_r^3 product instead of two per parameter.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .types import DesignProducts, ResponseProducts, Structure
from .linalg import (LOOP_MAX, ThetaDerivatives, batched_backward_solve, batched_cholesky, batched_forward_solve,
                     lapack_cholesky, logdet_by_theta, quadratic_by_theta, spd_logdet_solve)
from .parametrization import lambdas
from .sparse import (SparseA21, SparseL21, lambda_coupling, quadratic_blocks, scalar_pair_inner, scalar_schur_update,
                     schur_update, symmetric_from_lower, times_dense, transpose_times_vector)

LOG_2PI = math.log(2 * math.pi)
SCALAR_FAST_MIN = 1e-2   # |theta_t| above which the scalar Hessian rule divides by theta_t (_scalar_derivatives)


class Factor(NamedTuple):
    """Blocked Cholesky factor of the penalised system at one theta.

    Attributes:
        L1: (m_1, k_1, k_1) diagonal blocks of L_Z for the first term.
        L21: the block below them: a dense (q_r, m_1, k_1) array, or its
            nonzero rows (:class:`~lmm_jax.core.sparse.SparseL21`) when ``A21``
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
    pair_sum: jnp.ndarray | None = None   # lower triangle of U(w) in M22, scalar terms with sparse coupling


def _scalar_weights(theta1: jnp.ndarray, a11: jnp.ndarray) -> jnp.ndarray:
    """``w_j = theta_1^2 / (1 + theta_1^2 A11_j)`` of :func:`~lmm_jax.core.sparse.scalar_schur_update`."""
    return theta1 ** 2 / (1.0 + theta1 ** 2 * a11)


def _weight_derivative(theta1: jnp.ndarray, a11: jnp.ndarray, order: int) -> jnp.ndarray:
    """The ``order``-th derivative of :func:`_scalar_weights` in theta_1 (order 0 to 3)."""
    if order == 0:
        return _scalar_weights(theta1, a11)
    t2a = theta1 ** 2 * a11
    den = 1.0 + t2a
    if order == 1:
        return 2.0 * theta1 / den ** 2
    if order == 2:
        return (2.0 - 6.0 * t2a) / den ** 3
    if order == 3:
        return 24.0 * a11 * theta1 * (t2a - 1.0) / den ** 4
    raise ValueError(f"weight derivatives of order {order} are not written out (0 to 3 are)")


JET_ORDER = 3   # G and its first three derivatives in theta_1 are formed: the deviance to order 3 in theta


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _g_derivative(order: int, theta1: jnp.ndarray, jet: tuple[jnp.ndarray, ...]) -> jnp.ndarray:
    """The ``order``-th theta_1-derivative of ``G = A22 - U(w)``: ``G`` for
    order 0, ``-U(w^(order))`` after (w^(k): k-th derivative of w), looked up
    in ``jet`` (:func:`_scalar_data`).

    U depends on theta only through theta_1 and is linear in w, so
    ``d U(w^(k)) / d theta_1 = U(w^(k+1))``: the derivatives of anything built
    from these sums are other entries of the same jet, and autodiff through
    the closed-form rules never pushes a tangent through a segment sum over
    the pairs (InstEval's Newton loop did 15 sums of its 1.8 million pairs per
    pass, where three are needed)."""
    return jet[order]


@_g_derivative.defjvp
def _g_derivative_jvp(order, primals, tangents):
    theta1, jet = primals
    if order + 1 >= len(jet):
        raise NotImplementedError(f"derivatives of the deviance beyond order {JET_ORDER} in theta are not "
                                  "available for scalar terms with sparse coupling (likelihood.JET_ORDER)")
    return jet[order], _g_derivative(order + 1, theta1, jet) * tangents[0]


def _is_scalar_sparse(dp: DesignProducts, s: Structure) -> bool:
    """Every term scalar (k_t = 1) and A21 stored sparse: the fast path of
    :func:`_scalar_derivatives`."""
    return s.q_rest > 0 and isinstance(dp.A21, SparseA21) and all(k == 1 for k in s.ks)


def _scalar_derivatives(s: Structure) -> ThetaDerivatives:
    r"""Closed-form partial derivatives of ``M22(theta)`` for scalar terms with
    sparse coupling (:class:`~lmm_jax.core.linalg.ThetaDerivatives`).

    With every term scalar, ``Lambda_r = diag(lambda)`` (lambda_i the theta
    of row i's term) and, by :func:`~lmm_jax.core.sparse.scalar_schur_update`,

        M22 = I + (lambda lambda') o G,   G = A22 - U(w),   U(w) = sum_j w_j a_j a_j',
        w_j = theta_1^2 / (1 + theta_1^2 A11_j)

    (o: elementwise product), U linear in w. With w', w'' the derivatives of
    w in theta_1 and e_t the indicator of term t's rows (t >= 2):

        M_1  = -(lambda lambda') o U(w'),     M_t  = (e_t lambda' + lambda e_t') o G,
        M_11 = -(lambda lambda') o U(w''),    M_1t = -(e_t lambda' + lambda e_t') o U(w'),
        M_tu = (e_t e_u' + e_u e_t') o G.

    Traces against these are elementwise products and matrix-vector
    products with G, U(w'), U(w''): each derivative order costs one more pair
    sum, where autodiff through the pair sums would push every Hessian
    direction through a gather, a segment sum and q_r x q_r transposes.

    The ``data`` of these functions is ``(A22, A21, A11[:, 0, 0], jet)``
    (:func:`_scalar_data`): ``jet`` holds G and its first three derivatives in
    theta_1 (-U at w's derivatives), each formed once per point (XLA drops
    the orders a computation does not use) and read through
    :func:`_g_derivative`, whose derivative is the next order's entry.
    """
    qr = s.q_rest
    rows = np.repeat(np.arange(len(s.ms) - 1), s.ms[1:])
    term_of_row = rows
    E_np = np.eye(len(s.ms) - 1)[rows].T                               # (n - 1, q_r): e_t'

    def G(theta, data):
        # G = A22 - U(w), formed once per point (_scalar_data)
        return _g_derivative(0, theta[0], data[3])

    def U(theta, data, order):
        # U(w^(order)) for order >= 1 (U(w) itself is A22 - G), symmetric, formed once per point
        assert order >= 1, order
        return -_g_derivative(order, theta[0], data[3])

    def lam(theta):
        return theta[1:][term_of_row]

    def jacobian(theta, data):
        la = lam(theta)
        E = jnp.asarray(E_np, dtype=theta.dtype)
        G_ = G(theta, data)
        J1 = -(la[:, None] * la[None, :]) * U(theta, data, 1)
        Jr = (E[:, :, None] * la[None, None, :] + la[None, :, None] * E[:, None, :]) * G_[None]
        return jnp.concatenate([J1[None], Jr], axis=0)

    def weights(theta, data, order):
        return _weight_derivative(theta[0], data[2], order)

    def pair_traces(theta, data, C):
        # <C, M_1> and <C, M_11> in one pass over the pairs (the gradient's and the Hessian's: one shared sum)
        W = jnp.stack([weights(theta, data, 1), weights(theta, data, 2)], axis=-1)
        la = lam(theta)
        return -scalar_pair_inner(data[1], W, C * (la[:, None] * la[None, :]))

    def traces(theta, data, C):
        la = lam(theta)
        E = jnp.asarray(E_np, dtype=theta.dtype)
        g1 = pair_traces(theta, data, C)[0]
        gr = 2.0 * E @ ((C * G(theta, data)) @ la)
        return jnp.concatenate([g1[None], gr])

    def second_traces(theta, data, C):
        la = lam(theta)
        E = jnp.asarray(E_np, dtype=theta.dtype)
        h11 = pair_traces(theta, data, C)[1]
        h1r = -2.0 * E @ ((C * U(theta, data, 1)) @ la)
        hrr = E @ (C * G(theta, data)) @ E.T
        return jnp.block([[h11[None, None], h1r[None, :]], [h1r[:, None], hrr + hrr.T]])

    def logdet_hessian(theta, data, Minv):
        # -tr(P_s P_t) + tr(M^{-1} M_st). For t, u >= 2 and theta_t != 0, with K = M - I = (lambda lambda') o G,
        # N = I - M^{-1} (so M^{-1} K = K M^{-1} = N): P_t = (M^{-1} E_t K + N E_t) / theta_t, whence
        #   tr(P_t P_u)  = 2 B(N o N + M^{-1} o (K - N))_tu / (theta_t theta_u),   B(X) = E X E',
        #   tr(P_1 P_t)  = 2 e_t'(diag(P_1) - rowsums(P_1 o M^{-1})) / theta_t,
        # so only P_1 = M^{-1} M_1 costs a q_r^3 product. Small theta_t lose digits to the cancellation in N:
        # below SCALAR_FAST_MIN (and at exact zeros, on the boundary) every P_t is formed instead.
        la = lam(theta)
        E = jnp.asarray(E_np, dtype=theta.dtype)
        ll = la[:, None] * la[None, :]
        G_ = G(theta, data)
        P1 = Minv @ (-ll * U(theta, data, 1))                                   # the one q_r^3 product
        t11 = jnp.sum(P1 * P1.T)

        def fast(Minv, P1, G):
            K = ll * G
            N = jnp.eye(qr, dtype=theta.dtype) - Minv
            t1r = 2.0 * (E @ (jnp.diagonal(P1) - jnp.sum(P1 * Minv, axis=1))) / theta[1:]
            Brr = E @ (N * N + Minv * (K - N)) @ E.T
            return t1r, 2.0 * Brr / (theta[1:, None] * theta[None, 1:])

        def slow(Minv, P1, G):
            Pr = jnp.matmul(Minv[None], (E[:, :, None] * la[None, None, :] + la[None, :, None] * E[:, None, :]) * G)
            return jnp.einsum("ik,tki->t", P1, Pr), jnp.einsum("sik,tki->st", Pr, Pr)

        t1r, trr = lax.cond(jnp.all(jnp.abs(theta[1:]) > SCALAR_FAST_MIN), fast, slow, Minv, P1, G_)
        T = jnp.block([[t11[None, None], t1r[None, :]], [t1r[:, None], trr]])
        return second_traces(theta, data, Minv) - T

    def apply(theta, data, X):
        la = lam(theta)[:, None]
        E = jnp.asarray(E_np, dtype=theta.dtype)
        G_ = G(theta, data)
        a1 = -la * (U(theta, data, 1) @ (la * X))
        ar = E[:, :, None] * (G_ @ (la * X))[None] + la[None] * jnp.einsum("qr,trc->tqc", G_, E[:, :, None] * X[None])
        return jnp.concatenate([a1[None], ar], axis=0)

    def bilinear(theta, data, X, Y):
        # the gradient's S'M_t S: products of G and U(w') with q_r x c blocks
        la = lam(theta)[:, None]
        E = jnp.asarray(E_np, dtype=theta.dtype)
        X1, Y1 = la * X, la * Y
        G_ = G(theta, data)
        k1 = -(X1.T @ (U(theta, data, 1) @ Y1))
        kr = jnp.einsum("ti,ia,ib->tab", E, X, G_ @ Y1) + jnp.einsum("ti,ia,ib->tab", E, G_ @ X1, Y)
        return jnp.concatenate([k1[None], kr], axis=0)

    def second_bilinear(theta, data, X, Y):
        la = lam(theta)[:, None]
        E = jnp.asarray(E_np, dtype=theta.dtype)
        G_ = G(theta, data)
        U1 = U(theta, data, 1)
        s11 = -(la * X).T @ (U(theta, data, 2) @ (la * Y))
        s1r = -(jnp.einsum("ti,ia,ib->tab", E, X, U1 @ (la * Y)) + jnp.einsum("ti,ia,ib->tab", E, U1 @ (la * X), Y))
        GEY = jnp.einsum("qr,urb->uqb", G_, E[:, :, None] * Y[None])           # G (e_u o Y)
        A = jnp.einsum("ti,ia,uib->tuab", E, X, GEY)                           # (e_t o X)' G (e_u o Y)
        srr = A + jnp.swapaxes(A, 0, 1)
        n = theta.shape[0]
        c1, c2 = X.shape[1], Y.shape[1]
        top = jnp.concatenate([s11[None, None], s1r[None]], axis=1)            # (1, n, c1, c2)
        rest = jnp.concatenate([s1r[:, None], srr], axis=1)                    # (n - 1, n, c1, c2)
        return jnp.concatenate([top, rest], axis=0).reshape(n, n, c1, c2)

    return ThetaDerivatives(jacobian, traces, second_traces, apply, bilinear, second_bilinear, logdet_hessian)


def _scalar_data(dp: DesignProducts, theta: jnp.ndarray, pair_sum: jnp.ndarray, s: Structure):
    """The ``data`` of :func:`_scalar_derivatives`: ``(A22, A21, A11[:, 0, 0], jet)``.

    ``jet = (G, -U(w'), -U(w''), -U(w'''))``, ``G = A22 - U(w)``, each entry a
    symmetric q_r x q_r matrix and the theta_1-derivative of the one before
    (:func:`_g_derivative`). ``pair_sum`` is M22's lower triangle of U(w), already
    formed; the higher orders are sums with the weights' derivatives. Each
    entry is materialised once (``optimization_barrier``): left to fusion,
    XLA recomputed ``A22 - (T + T' - diag T)``, a strided transpose, inside
    each of its five consumers (15 ms each per InstEval pass). The jet is a
    constant to autodiff; the rules' derivatives come from :func:`_g_derivative`.
    """
    a11 = dp.A11[:, 0, 0]
    t1 = lax.stop_gradient(theta[0])
    jet = [dp.A22 - symmetric_from_lower(lax.stop_gradient(pair_sum))]
    for k in range(1, JET_ORDER + 1):
        jet.append(-scalar_schur_update(dp.A21, _weight_derivative(t1, a11, k), s.q_rest))
    return dp.A22, dp.A21, a11, tuple(lax.optimization_barrier(J) for J in jet)


def _cholesky_M22(M22: jnp.ndarray, dp: DesignProducts, s: Structure) -> jnp.ndarray:
    """Cholesky factor of ``M22`` as :func:`_coupling` returns it: for scalar
    terms with sparse coupling only its lower triangle is formed (and read)."""
    if M22.shape[-1] <= LOOP_MAX:
        return batched_cholesky(M22)          # reads the lower triangle only; no LAPACK (see linalg.py)
    return lapack_cholesky(M22, symmetrize=not _is_scalar_sparse(dp, s))


def _coupling(theta: jnp.ndarray, dp: DesignProducts, s: Structure):
    """The design-only part of the elimination: Lambda blocks, ``L1``, ``L21``,
    the remaining terms' Schur complement ``M22`` (q_r x q_r; empty when
    q_r = 0) and, for scalar terms with sparse coupling, the lower triangle of
    its pair sum U(w) (else None). For scalar terms with sparse coupling only the lower triangle
    of ``M22`` is formed (factor it with :func:`_cholesky_M22`)."""
    lams = lambdas(theta, s.ks)
    lam1 = lams[0]
    m1, k1 = s.ms[0], s.ks[0]
    eye1 = jnp.eye(k1, dtype=theta.dtype)
    M1 = jnp.einsum("ba,jbc,cd->jad", lam1, dp.A11, lam1) + eye1
    L1 = batched_cholesky(M1)
    qr = s.q_rest
    if qr == 0:
        return lams, L1, jnp.zeros((0, m1, k1), dtype=theta.dtype), jnp.zeros((0, 0), dtype=theta.dtype), None
    eye = jnp.eye(qr, dtype=theta.dtype)
    scalar_rest = all(k == 1 for k in s.ks[1:])
    if scalar_rest:
        # Lambda_r is diagonal: scale rows and columns elementwise (no einsum, transpose or concatenate of q_r^2)
        lam_r = jnp.concatenate([jnp.broadcast_to(lam[0, 0], (m,)) for lam, m in zip(lams[1:], s.ms[1:])])
        scale = lam_r[:, None] * lam_r[None, :]
    if isinstance(dp.A21, SparseA21):
        idx = dp.A21.index
        B = lambda_coupling(lams, dp.A21)                                  # rows of Lambda_r'A21 Lambda_1
        L21 = SparseL21(batched_forward_solve(L1[idx.level], B[..., None])[..., 0], idx)
        if scalar_rest and k1 == 1:
            # Lambda_r (A22 - U) Lambda_r with U = sum_j w_j a_j a_j' (sparse.scalar_schur_update)
            # only the lower triangle is formed (what the Cholesky factorisation reads; see _cholesky_M22)
            w = _scalar_weights(theta[0], dp.A11[:, 0, 0])
            T = scalar_schur_update(dp.A21, w, qr, lower=True)
            return lams, L1, L21, eye + scale * (dp.A22 - T), T
        update = schur_update(L21, qr)
    else:
        B = _lambda_rest_t(lams, dp.A21, s)                                # Lambda_r' A21
        B = jnp.einsum("qja,ab->qjb", B, lam1)                            # ... Lambda_1
        L21 = batched_forward_solve(L1, B.transpose(1, 2, 0)).transpose(2, 0, 1)
        L21f = L21.reshape(qr, m1 * k1)
        update = L21f @ L21f.T
    A22 = scale * dp.A22 if scalar_rest else _lambda_rest_t(lams, _lambda_rest_t(lams, dp.A22, s).T, s)
    return lams, L1, L21, A22 + eye - update, None


def _eliminate_first(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure) -> _Eliminated:
    """Factor the first term's block diagonal and form the Schur complements."""
    lams, L1, L21, M22, pair_sum = _coupling(theta, dp, s)
    lam1 = lams[0]
    m1, k1, p = s.ms[0], s.ks[0], s.p
    Z1Xy = jnp.concatenate([dp.Z1X, rp.Z1y[..., None]], axis=-1)
    C1 = batched_forward_solve(L1, jnp.einsum("ba,jbc->jac", lam1, Z1Xy))
    C1f = C1.reshape(m1 * k1, p + 1)
    XyXy = jnp.block([[dp.XtX, rp.Xy[:, None]], [rp.Xy[None, :], rp.yy[None, None]]])
    M33 = XyXy - C1f.T @ C1f
    qr = s.q_rest
    if qr == 0:
        return _Eliminated(L1, L21, C1, M22, jnp.zeros((0, p + 1), dtype=theta.dtype), M33)
    ZrXy = _lambda_rest_t(lams, jnp.concatenate([dp.ZrX, rp.Zry[:, None]], axis=-1), s)
    if isinstance(L21, SparseL21):
        L21C1 = times_dense(L21, C1, qr)
    else:
        L21C1 = L21.reshape(qr, m1 * k1) @ C1f
    return _Eliminated(L1, L21, C1, M22, ZrXy - L21C1, M33, pair_sum)


def _profile(theta: jnp.ndarray, E: _Eliminated, dp: DesignProducts, s: Structure) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``log|L_Z|^2`` and ``L33`` from the eliminated system.

    The dense block enters only through ``log det M22`` and ``R'M22^{-1}R``
    (``C2'C2``). For scalar terms with sparse coupling they come from
    :func:`~lmm_jax.core.linalg.logdet_by_theta` and
    :func:`~lmm_jax.core.linalg.quadratic_by_theta` with the closed-form partial
    derivatives of :func:`_scalar_derivatives` (one q_r^3 product per Hessian
    column); otherwise from :func:`~lmm_jax.core.linalg.spd_logdet_solve`, whose
    rules avoid differentiating the q_r x q_r Cholesky factor.
    """
    ld = 2.0 * jnp.sum(jnp.log(jnp.diagonal(E.L1, axis1=-2, axis2=-1)))
    M33 = E.M33
    if E.M22.shape[0] and _is_scalar_sparse(dp, s):
        L22 = _cholesky_M22(lax.stop_gradient(E.M22), dp, s)
        D, data = _scalar_derivatives(s), _scalar_data(dp, theta, E.pair_sum, s)
        ld = ld + logdet_by_theta(theta, L22, data, D)
        M33 = M33 - quadratic_by_theta(theta, E.R, L22, data, D)
    elif E.M22.shape[0]:
        ld22, S = spd_logdet_solve(E.M22, E.R)
        ld = ld + ld22
        M33 = M33 - E.R.T @ S
    return ld, batched_cholesky(M33)


def factorize(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure) -> Factor:
    """Blocked Cholesky factor of the penalised system (module docstring)."""
    E = _eliminate_first(theta, dp, rp, s)
    _, L33 = _profile(theta, E, dp, s)
    if s.q_rest:
        L22 = _cholesky_M22(E.M22, dp, s)
        C2 = batched_forward_solve(L22, E.R)
    else:
        L22, C2 = E.M22, E.R
    return Factor(L1=E.L1, L21=E.L21, L22=L22, C1=E.C1, C2=C2, L33=L33)


def _deviance_terms(theta, dp, rp, s) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``log|L_Z|^2``, ``log|L_X|^2`` and pwrss at theta (no q_r x q_r factor kept)."""
    ldz, L33 = _profile(theta, _eliminate_first(theta, dp, rp, s), dp, s)
    p = L33.shape[0] - 1
    return ldz, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L33)[:p])), L33[-1, -1] ** 2


def random_factor(theta: jnp.ndarray, dp: DesignProducts, s: Structure) -> Factor:
    """The blocked factor ``L_Z`` of ``Lambda'Z'Z Lambda + I`` alone, from the
    products ``A11``, ``A21``, ``A22`` of ``dp`` (the other fields are not read):
    the system of the random effects at fixed beta, as the PIRLS of a
    generalized linear mixed model forms it from products of weighted rows
    (:mod:`lmm_jax.core.laplace`). ``C1``, ``C2`` and ``L33`` are empty
    (no right-hand side is eliminated); solve with :func:`random_solve`."""
    _, L1, L21, M22, _ = _coupling(theta, dp, s)
    L22 = _cholesky_M22(M22, dp, s) if s.q_rest else M22
    m1, k1 = s.ms[0], s.ks[0]
    return Factor(L1=L1, L21=L21, L22=L22, C1=jnp.zeros((m1, k1, 0), dtype=L1.dtype),
                  C2=jnp.zeros((s.q_rest, 0), dtype=L1.dtype), L33=jnp.zeros((0, 0), dtype=L1.dtype))


def random_solve(F: Factor, r1: jnp.ndarray, r2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(L_Z L_Z')^{-1} r`` blockwise for ``r = (r1 (m_1, k_1), r2 (q_r,))``: the
    forward solve ``L_Z v = r`` (``v1 = L_1^{-1} r1``, ``v2 = L_22^{-1}(r2 - L21 v1)``)
    and the backward solve of :func:`spherical_modes`. Returns ``(u1, u2)``."""
    v1 = batched_forward_solve(F.L1, r1[..., None])[..., 0]
    qr = r2.shape[0]
    if qr:
        if isinstance(F.L21, SparseL21):
            Lv = times_dense(F.L21, v1[..., None], qr)[:, 0]
        else:
            Lv = jnp.einsum("qja,ja->q", F.L21, v1)
        v2 = batched_forward_solve(F.L22, (r2 - Lv)[:, None])[:, 0]
    else:
        v2 = r2
    return spherical_modes(F._replace(C1=v1[..., None], C2=v2[:, None]), jnp.zeros((0,), dtype=v1.dtype))


def random_logdet(theta: jnp.ndarray, dp: DesignProducts, s: Structure) -> jnp.ndarray:
    """``log|L_Z|^2 = log det(Lambda'Z'Z Lambda + I)`` from the products
    ``A11``, ``A21`` (dense), ``A22`` of ``dp``, differentiable in theta and in
    the products (the dense block through :func:`spd_logdet_solve`'s rules):
    the log-determinant of the Laplace approximation, whose products depend
    on the conditional modes."""
    _, L1, _, M22, _ = _coupling(theta, dp, s)
    ld = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L1, axis1=-2, axis2=-1)))
    if s.q_rest:
        ld = ld + spd_logdet_solve(M22, jnp.zeros((s.q_rest, 0), dtype=M22.dtype))[0]
    return ld


def log_det_LZ2(F: Factor) -> jnp.ndarray:
    """``log|L_Z|^2`` = log det(Lambda'Z'Z Lambda + I)."""
    d1 = jnp.diagonal(F.L1, axis1=-2, axis2=-1)
    return 2.0 * (jnp.sum(jnp.log(d1)) + jnp.sum(jnp.log(jnp.diagonal(F.L22))))


def pwrss(F: Factor) -> jnp.ndarray:
    """Penalised weighted residual sum of squares at the conditional optimum."""
    return F.L33[-1, -1] ** 2


def profiled_deviance(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure,
                      reml: bool) -> jnp.ndarray:
    """-2 log-likelihood (ML) or REML criterion profiled over beta and sigma.

    Args:
        theta: lme4's covariance parameters (see :mod:`lmm_jax.core.parametrization`).
        dp, rp: design and response cross-products.
        s: static structure.
        reml: REML criterion if True, ML deviance otherwise: a Python bool, or a
            traced boolean scalar (the kernels take it so, so that ML and REML
            fits of one structure share their compiled code).
    """
    ldz, ldx, rss = _deviance_terms(theta, dp, rp, s)
    n = dp.nobs
    nu = n - jnp.where(reml, dp.rank, 0.0)
    return (ldz + jnp.where(reml, ldx, 0.0) + nu * (1.0 + LOG_2PI + jnp.log(rss / nu)) - dp.log_weights
            - jnp.where(reml, 2.0 * dp.log_det_basis, 0.0))


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
    dev = ldz + rss / s2 + dp.nobs * (LOG_2PI + jnp.log(s2)) - dp.log_weights
    return (dev + jnp.where(reml, ldx, 0.0) - jnp.where(reml, dp.rank * (LOG_2PI + jnp.log(s2)), 0.0)
            - jnp.where(reml, 2.0 * dp.log_det_basis, 0.0))


def fixed_effects(F: Factor) -> jnp.ndarray:
    """beta-hat(theta) = L_X'^{-1} r, in the working basis of the products
    (the conditional modes need this one; :func:`user_fixed_effects` maps it)."""
    p = F.L33.shape[0] - 1
    return batched_backward_solve(F.L33[:p, :p], F.L33[p, :p, None])[:, 0]


def user_fixed_effects(beta_w: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts) -> jnp.ndarray:
    """The user's beta from the working one: ``S (beta_w + shift)``
    (:class:`~lmm_jax.core.types.DesignProducts`, :class:`~lmm_jax.core.types.ResponseProducts`)."""
    return dp.basis @ (beta_w + rp.shift)


def user_vcov(V_w: jnp.ndarray, dp: DesignProducts) -> jnp.ndarray:
    """A covariance of the working fixed effects in the user's basis: ``S V S'``."""
    return dp.basis @ V_w @ dp.basis.T


def sigma_hat(F: Factor, dp: DesignProducts, reml: bool) -> jnp.ndarray:
    """Residual SD at the conditional optimum: sqrt(pwrss / (n - p)) for
    REML, sqrt(pwrss / n) for ML (n and p: ``dp.nobs``, ``dp.rank``)."""
    return jnp.sqrt(pwrss(F) / (dp.nobs - jnp.where(reml, dp.rank, 0.0)))


def unscaled_vcov_beta(F: Factor) -> jnp.ndarray:
    """(L_X L_X')^{-1}; vcov(beta) = sigma^2 times this."""
    p = F.L33.shape[0] - 1
    LXinv = batched_forward_solve(F.L33[:p, :p], jnp.eye(p, dtype=F.L33.dtype))
    return LXinv.T @ LXinv


def spherical_modes(F: Factor, beta: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Conditional modes u of the spherical random effects (b = Lambda u):
    solve ``L_Z' u = c_y - C_X beta`` blockwise. Returns (u_1 (m_1, k_1), u_r (q_r,))."""
    p = beta.shape[0]
    v1 = F.C1[..., p] - F.C1[..., :p] @ beta
    v2 = F.C2[:, p] - F.C2[:, :p] @ beta
    u2 = batched_backward_solve(F.L22, v2[:, None])[:, 0] if v2.shape[0] else v2
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
        L22inv = batched_forward_solve(F.L22, jnp.eye(qr, dtype=theta.dtype))
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

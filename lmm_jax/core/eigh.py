"""Eigendecomposition of the optimisers' small symmetric Hessians by Jacobi rotations.

Newton's direction (:func:`lmm_jax.core.optimize.floored_eigh`) needs the
eigenvalues and eigenvectors of the Hessian over the variance parameters
(and a GLMM's fixed effects): an n x n matrix with n a handful (sleepstudy's
3, cbpp's GLMM 5). On CPU ``jnp.linalg.eigh`` is a LAPACK custom call
(``dsyevd``), and a program that holds one needs jaxlib's LAPACK kernels,
whose initialization imports scipy.linalg (0.1-0.2 s of a fresh process
that loads its kernels from disk, jaxlib's ``_lapack.initialize``); under
``vmap`` it is a batched LAPACK call (see :mod:`lmm_jax.core.linalg` on
those). Up to ``JACOBI_MAX`` rows the decomposition is the cyclic Jacobi
method in plain jnp instead (Golub & Van Loan 2013, Alg. 8.5.3):
``JACOBI_SWEEPS`` sweeps of rotations, each zeroing one off-diagonal pair,
the rotations of a sweep written out and the sweeps a ``lax.fori_loop``.
Each sweep squares the off-diagonal norm's ratio to the gaps once it is
small (quadratic convergence), so the fixed count leaves it at rounding
level for these sizes; eigenvalues agree with LAPACK's to rounding and the
eigenvectors are orthogonal to rounding (tests/core/test_eigh.py).

Under ``jax.vmap`` (the batched fits: a bootstrap's refits, a GLMM batch's
Newton loops) :func:`symmetric_eigh` is LAPACK's batched call again
(``jax.custom_batching.custom_vmap``): one call for the batch, where the
rotations are about 40 small XLA operations each, in every iteration of
every fit (cbpp's 1,000-replicate bootstrap: 1.00 s warm with the
rotations, 0.59 s with LAPACK). Batched kernels are not the ones a fresh
process loads for its first fit.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

JACOBI_MAX = 8
JACOBI_SWEEPS = 10


def _rotate(A: jnp.ndarray, V: jnp.ndarray, p: int, q: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``J' A J`` and ``V J`` for the rotation J in the (p, q) plane that zeroes ``A[p, q]``."""
    apq = A[p, q]
    zero = apq == 0.0
    tau = (A[q, q] - A[p, p]) / (2.0 * jnp.where(zero, 1.0, apq))
    big = jnp.abs(tau) > 1e150                       # tau^2 would overflow: t = 1 / (2 tau) to rounding
    t = jnp.where(big, 0.5 / jnp.where(big, tau, 1.0),
                  jnp.sign(tau) / (jnp.abs(tau) + jnp.sqrt(1.0 + jnp.where(big, 0.0, tau) ** 2)))
    t = jnp.where(tau == 0.0, 1.0, t)                # equal diagonal entries: a 45-degree rotation
    t = jnp.where(zero, 0.0, t)
    c = 1.0 / jnp.sqrt(1.0 + t * t)
    s = t * c
    n = A.shape[0]
    J = jnp.eye(n, dtype=A.dtype)
    J = J.at[p, p].set(c).at[q, q].set(c).at[p, q].set(s).at[q, p].set(-s)
    A = J.T @ A @ J
    return A.at[p, q].set(0.0).at[q, p].set(0.0), V @ J


def jacobi_eigh(H: jnp.ndarray, sweeps: int = JACOBI_SWEEPS) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(lambda, Q)`` of symmetric H (n, n) with ``H = Q diag(lambda) Q'``,
    by cyclic Jacobi rotations (module docstring); eigenvalues in no
    particular order. Reads H's symmetric part."""
    n = H.shape[0]
    A = 0.5 * (H + H.T)
    V = jnp.eye(n, dtype=H.dtype)
    if n < 2:
        return jnp.diagonal(A), V
    pairs = [(p, q) for p in range(n - 1) for q in range(p + 1, n)]

    def sweep(_, AV):
        A, V = AV
        for p, q in pairs:
            A, V = _rotate(A, V, p, q)
        return A, V

    A, V = lax.fori_loop(0, sweeps, sweep, (A, V))
    return jnp.diagonal(A), V


@custom_vmap
def _single_eigh(H: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    return jacobi_eigh(H)


@_single_eigh.def_vmap
def _batched_eigh(axis_size: int, in_batched: list, H: jnp.ndarray):
    if not in_batched[0]:
        return _single_eigh(H), (False, False)
    lam, Q = jnp.linalg.eigh(H)
    return (lam, Q), (True, True)


def symmetric_eigh(H: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(lambda, Q)`` of symmetric H (n, n): :func:`jacobi_eigh` up to
    ``JACOBI_MAX`` rows, ``jnp.linalg.eigh`` (ascending eigenvalues) beyond
    it and under ``jax.vmap`` (module docstring)."""
    if H.shape[-1] <= JACOBI_MAX:
        return _single_eigh(H)
    return jnp.linalg.eigh(H)

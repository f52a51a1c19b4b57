"""lmm_jax.core.eigh: the Jacobi eigendecomposition of small symmetric matrices against LAPACK's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax.core.eigh import JACOBI_MAX, jacobi_eigh, symmetric_eigh
from lmm_jax.core.optimize import floored_eigh
from lmm_jax.runtime.scope import float64


def matrices(n: int, rng: np.random.Generator) -> np.ndarray:
    """(40, n, n) symmetric matrices of every kind the Newton loop meets: indefinite, positive definite
    over 16 orders of magnitude, repeated eigenvalues, graded spectra with both signs, and singular."""
    out = []
    for i in range(40):
        B = rng.normal(size=(n, n))
        Q, _ = np.linalg.qr(B)
        kind = i % 5
        if kind == 0:
            H = B + B.T
        elif kind == 1:
            H = B @ B.T * 10.0 ** rng.uniform(-8, 8)
        elif kind == 2:
            H = Q @ np.diag(np.round(rng.normal(size=n))) @ Q.T
        elif kind == 3:
            H = Q @ np.diag(10.0 ** rng.uniform(-12, 4, n) * rng.choice([-1.0, 1.0], n)) @ Q.T
        else:
            H = Q @ np.diag(np.r_[np.zeros(1), rng.normal(size=n - 1)]) @ Q.T
        out.append((H + H.T) / 2)
    return np.asarray(out)


def test_jacobi_matches_lapack_to_rounding_at_every_size():
    rng = np.random.default_rng(20261205)
    with float64():
        for n in range(1, JACOBI_MAX + 1):
            H = matrices(n, rng)
            lam, V = (np.asarray(a) for a in jax.jit(jax.vmap(jacobi_eigh))(jnp.asarray(H)))
            scale = np.abs(np.linalg.eigvalsh(H)).max(axis=1)[:, None]
            assert np.all(np.abs(np.sort(lam, axis=1) - np.linalg.eigvalsh(H)) <= 1e-14 * scale), n
            assert np.all(np.abs(V.transpose(0, 2, 1) @ V - np.eye(n)) <= 1e-14), n
            assert np.all(np.abs(H @ V - V * lam[:, None, :]) <= 1e-14 * scale[:, :, None]), n


def test_symmetric_eigh_goes_to_lapack_beyond_jacobi_max_and_floors_alike():
    rng = np.random.default_rng(5)
    with float64():
        H = jnp.asarray(matrices(JACOBI_MAX + 1, rng)[0])
        lam, _ = symmetric_eigh(H)
        np.testing.assert_array_equal(np.asarray(lam), np.asarray(jnp.linalg.eigh(H)[0]))     # LAPACK's, ascending
        # vmapped (the batched fits): LAPACK's batched call, one for the batch
        batch = jnp.asarray(matrices(5, rng))
        lam, Q = jax.jit(jax.vmap(symmetric_eigh))(batch)
        want_lam, want_Q = jax.jit(jax.vmap(jnp.linalg.eigh))(batch)
        np.testing.assert_array_equal(np.asarray(lam), np.asarray(want_lam))
        np.testing.assert_array_equal(np.asarray(Q), np.asarray(want_Q))
        assert "lapack" in jax.jit(jax.vmap(symmetric_eigh)).lower(batch).as_text()
        assert "lapack" not in jax.jit(symmetric_eigh).lower(batch[0]).as_text()
        small = jnp.asarray(matrices(4, rng)[3])                                               # graded, both signs
        lam, Q = floored_eigh(small, 1e-8)
        ref = np.abs(np.linalg.eigvalsh(np.asarray(small)))
        np.testing.assert_allclose(np.sort(np.asarray(lam)), np.sort(np.maximum(ref, 1e-8 * max(ref.max(), 1.0))),
                                   rtol=0, atol=1e-14 * ref.max())

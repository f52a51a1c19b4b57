"""Covariance parameters: lme4's theta, the log-Cholesky phi, and Lambda.

Each random-effects term t with k_t columns has a k_t x k_t lower-triangular
relative covariance factor Lambda_t, so that the term's random effects have
covariance ``sigma^2 Lambda_t Lambda_t'``. ``theta`` stacks the lower
triangles column by column, term by term (lme4's ``getME(fit, "theta")``;
positions and names: :class:`~lmm_jax.core.theta_layout.ThetaLayout`).

The optimiser works on ``phi``: the same vector with each diagonal entry
replaced by its logarithm, so phi is unconstrained. A diagonal entry that
reaches the boundary (a zero variance, or a correlation of +-1) is held at
exactly 0 through the ``active`` mask (see :mod:`lmm_jax.core.optimize`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .theta_layout import ThetaLayout


def n_theta(ks: tuple[int, ...]) -> int:
    return ThetaLayout.of(ks).n_theta


def diagonal_mask(ks: tuple[int, ...]) -> np.ndarray:
    """Boolean mask over theta: True where the entry is a diagonal of Lambda
    (read-only; :attr:`ThetaLayout.diagonal`)."""
    return ThetaLayout.of(ks).diagonal


def theta_start(ks: tuple[int, ...]) -> np.ndarray:
    """lme4's starting value: every Lambda_t the identity."""
    return diagonal_mask(ks).astype(float)


def lambdas(theta: jnp.ndarray, ks: tuple[int, ...]) -> tuple[jnp.ndarray, ...]:
    """Split theta into the per-term lower-triangular factors Lambda_t: a gather of theta's entries (and a
    zero) by a static index, no scatter (a scalar term's factor is its entry)."""
    lay = ThetaLayout.of(ks)
    padded = jnp.concatenate([theta, jnp.zeros((1,), dtype=theta.dtype)])
    out = []
    for t, k in enumerate(ks):
        if k == 1:
            out.append(theta[lay.slices[t]].reshape(1, 1))
            continue
        index = np.full((k, k), theta.shape[0])                      # the appended zero above the diagonal
        index[lay.tri(t)] = np.arange(lay.slices[t].start, lay.slices[t].stop)
        out.append(padded[index])
    return tuple(out)


def lambdas_host(theta: np.ndarray, ks: tuple[int, ...]) -> list[np.ndarray]:
    """:func:`lambdas` in numpy, for host-side tables (no device work)."""
    theta = np.asarray(theta, dtype=float)
    lay = ThetaLayout.of(ks)
    out = []
    for t, k in enumerate(ks):
        L = np.zeros((k, k))
        L[lay.tri(t)] = theta[lay.slices[t]]
        out.append(L)
    return out


def theta_from_phi(phi: jnp.ndarray, ks: tuple[int, ...], active: jnp.ndarray | None = None) -> jnp.ndarray:
    """theta = exp(phi) on the diagonal entries, phi elsewhere; diagonal
    entries with ``active`` False are exactly 0."""
    diag = jnp.asarray(diagonal_mask(ks))
    theta = jnp.where(diag, jnp.exp(phi), phi)
    if active is not None:
        theta = jnp.where(diag & ~active, 0.0, theta)
    return theta


def phi_from_theta(theta: np.ndarray, ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`theta_from_phi`: (phi, active). Diagonal entries
    must be >= 0 (lme4's convention); zeros become inactive."""
    theta = np.asarray(theta, dtype=float)
    diag = diagonal_mask(ks)
    if np.any(theta[diag] < 0):
        raise ValueError(f"diagonal entries of theta must be >= 0, got {theta[diag]}")
    active = ~(diag & (theta == 0))
    phi = np.where(diag, np.log(np.where(diag & active, np.abs(theta), 1.0)), theta)
    return phi, active

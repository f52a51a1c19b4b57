"""The working data: the response and design the likelihood sees.

A model with prior weights w_i (residual variance sigma^2 / w_i, lme4's
``weights``) and an offset o (lme4's ``offset``) is an unweighted model of

    y_w = sqrt(W) (y - o),   X_w = sqrt(W) X S,   Z_w = sqrt(W) Z,

whose log-likelihood is the working one plus ``sum(log w_i) / 2``. The
fixed effects are fitted in the basis ``S = R^{-1}`` of the thin QR
factorisation ``sqrt(W) X = Q R``, so ``X_w = Q`` has orthonormal columns
and the user's ``beta = S beta_w``. The REML criterion of the user's X is
the working one minus ``2 log|det S|``: the same number for any basis of the
same column space. The model's own response is moreover taken as its
least-squares residual ``y_w - X_w beta_0`` (``beta_0 = X_w' y_w``), and
``beta_0`` is added back to the fitted fixed effects
(:class:`~lmm_jax.core.types.ResponseProducts`' ``shift``).

Why. The likelihood works on the cross-products of ``[Z X y]``; a covariate
or a response far from zero makes them large (``x'x ~ n mean^2``) while the
information is in their spread, and the Cholesky factors lose about
``2 log10(mean / SD)`` digits: sleepstudy with ``Days + 1e6`` loses all of
them. In the orthonormal basis ``X_w'X_w = I`` and the residuals' products are
of the spread's size, so fits do not depend on where the covariates or the
response sit, nor on their units; every estimate and covariance is mapped
back exactly (``S`` is applied in the compiled code,
:func:`lmm_jax.core.likelihood.user_fixed_effects`).

The random-effects columns are not reparametrised: a covariate far from zero
in a random slope still loses digits (:func:`lmm_jax.build.design.build_design`
warns, naming it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


CHUNK_ROWS = 1 << 16    # rows per block of the QR and of X_w (temporaries O(CHUNK_ROWS p))


@dataclass(frozen=True, eq=False)
class Working:
    """The working data of a design (module docstring).

    Attributes:
        y: (n,) the model's working response, ``sqrt(W) (y - o) - X_w shift``.
        shift: (p,) ``beta_0``, the working fixed effects taken out of ``y``.
        basis: (p, p) S, upper triangular: ``beta = S beta_w``.
        log_det_basis: ``log|det S|``.
        sqrt_w: (n,) square roots of the prior weights, or None (all 1).
        offset: (n,) the offset, or None (all 0).
        log_weights: ``sum(log w_i)`` (0 without weights).
        X_user: (n, p) the user's X; ``Zs_user``: each term's Z.
    """

    y: np.ndarray
    shift: np.ndarray
    basis: np.ndarray
    log_det_basis: float
    sqrt_w: np.ndarray | None
    offset: np.ndarray | None
    log_weights: float
    X_user: np.ndarray = field(repr=False)
    Zs_user: tuple[np.ndarray, ...] = field(repr=False)

    def X_rows(self, rows: slice) -> np.ndarray:
        """Rows of ``X_w`` (formed per block, without the whole matrix)."""
        X = self.X_user[rows]
        if self.sqrt_w is not None:
            X = X * self.sqrt_w[rows, None]
        return X @ self.basis

    @cached_property
    def X(self) -> np.ndarray:
        """(n, p) ``X_w = sqrt(W) X S`` (nearly orthonormal columns), formed on first use."""
        n, p = self.X_user.shape
        out = np.empty((n, p))
        for lo in range(0, n, CHUNK_ROWS):
            out[lo:lo + CHUNK_ROWS] = self.X_rows(slice(lo, lo + CHUNK_ROWS))
        return out

    @cached_property
    def Z(self) -> tuple[np.ndarray, ...]:
        """Each term's ``sqrt(W) Z_t`` (the design's own arrays without weights)."""
        if self.sqrt_w is None:
            return self.Zs_user
        return tuple(Z * self.sqrt_w[:, None] for Z in self.Zs_user)

    def response(self, y):
        """A response on this design (n,) or a batch (n, B), numpy or JAX, on
        the working scale ``sqrt(W) (y - o)`` (no shift)."""
        if self.offset is not None:
            y = y - (self.offset if y.ndim == 1 else self.offset[:, None])
        if self.sqrt_w is not None:
            y = y * (self.sqrt_w if y.ndim == 1 else self.sqrt_w[:, None])
        return y

    def with_response(self, y: np.ndarray) -> "Working":
        """The working data of another response (n,) on the same design: its
        working response and ``shift`` (:func:`working_data`'s), the basis
        and the arrays kept (no new QR)."""
        yw = np.array(self.response(np.asarray(y, dtype=float)), dtype=float)
        yw, shift = _least_squares_residual(self, yw)
        return dataclasses.replace(self, y=yw, shift=shift)



def user_response(y_w, mean, sqrt_w):
    """The inverse of :meth:`Working.response` for a draw ``y_w`` (n,) or (n, B)
    of the working model's random part, added to the user's mean ``mean`` (n,)
    (X beta + o); ``sqrt_w``: the working data's (None: all 1). Plain array
    arithmetic, numpy or JAX (traced inside the simulation's kernel)."""
    if sqrt_w is not None:
        y_w = y_w / (sqrt_w if y_w.ndim == 1 else sqrt_w[:, None])
    return y_w + (mean if y_w.ndim == 1 else mean[:, None])


def working_data(X: np.ndarray, Zs: tuple[np.ndarray, ...], y: np.ndarray, weights: np.ndarray | None,
                 offset: np.ndarray | None) -> Working:
    """:class:`Working` of a design's user-scale arrays.

    The QR factor R comes from row blocks (``R = qr([R_prev; block])``) and
    ``X_w`` is formed on first use, block by block: building it costs
    O(CHUNK_ROWS p) temporaries beyond ``y_w``.

    Args:
        X: (n, p) fixed-effects matrix, full column rank.
        Zs: each term's (n, k_t) columns.
        y: (n,) response.
        weights: (n,) positive prior weights, or None.
        offset: (n,) offset, or None.
    """
    n, p = X.shape
    sqrt_w = None if weights is None else np.sqrt(weights)
    yw = np.array(y, dtype=float) if offset is None else y - offset
    if sqrt_w is not None:
        yw *= sqrt_w
    R = np.zeros((0, p))
    for lo in range(0, n if p else 0, CHUNK_ROWS):
        block = X[lo:lo + CHUNK_ROWS] if sqrt_w is None else X[lo:lo + CHUNK_ROWS] * sqrt_w[lo:lo + CHUNK_ROWS, None]
        R = np.linalg.qr(np.vstack([R, block]), mode="r")
    R = R * np.where(np.diagonal(R) < 0, -1.0, 1.0)[:, None]      # a positive diagonal: S's too
    basis = _upper_inverse(R)
    wk = Working(y=yw, shift=np.zeros(p), basis=basis, log_det_basis=-float(np.sum(np.log(np.diagonal(R)))),
                 sqrt_w=sqrt_w, offset=offset, log_weights=0.0 if weights is None else float(np.sum(np.log(weights))),
                 X_user=X, Zs_user=tuple(Zs))
    yw, shift = _least_squares_residual(wk, yw)
    return dataclasses.replace(wk, y=yw, shift=shift)


def _least_squares_residual(wk: Working, yw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y_w - X_w beta_0, beta_0)`` for the least-squares ``beta_0 = X_w' y_w``
    (``yw`` is overwritten with the residual)."""
    n, p = wk.X_user.shape
    shift = np.zeros(p)
    for _ in range(2):                   # least squares, then one step of refinement (X_w is orthonormal to ~eps cond)
        step = np.zeros(p)
        for lo in range(0, n if p else 0, CHUNK_ROWS):
            step += wk.X_rows(slice(lo, lo + CHUNK_ROWS)).T @ yw[lo:lo + CHUNK_ROWS]
        for lo in range(0, n if p else 0, CHUNK_ROWS):
            yw[lo:lo + CHUNK_ROWS] -= wk.X_rows(slice(lo, lo + CHUNK_ROWS)) @ step
        shift += step
    return yw, shift


def _upper_inverse(R: np.ndarray) -> np.ndarray:
    """R^{-1} of an upper-triangular R by back substitution (exactly upper
    triangular; p is small)."""
    p = R.shape[0]
    S = np.zeros_like(R)
    for i in range(p - 1, -1, -1):
        S[i, i] = 1.0 / R[i, i]
        if i + 1 < p:
            S[i, i + 1:] = -(R[i, i + 1:] @ S[i + 1:, i + 1:]) / R[i, i]
    return S

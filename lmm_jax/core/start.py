r"""Starting values for theta: MIVQUE(0) moment estimates.

lme4 starts every fit at ``Lambda_t = I`` (theta = 1). Newton from there
needs several long steps before it is near the optimum, and on a big model
each step costs one exact Hessian of a q_r x q_r block (InstEval: 6 passes
from theta = 1, 3 from the start below). SAS PROC MIXED starts from MIVQUE(0)
(Rao 1971; LaMotte 1973; Searle, Casella & McCulloch 1992, sec. 11.3): a
quadratic unbiased estimator that costs one pass over the data and, for
balanced designs, equals REML whenever it lies inside the parameter space
(Penicillin, Pastes, sleepstudy start at their optimum).

Write the covariance of y as ``V = sigma^2 I + sum_i s_i D_i`` with one
symmetric basis matrix per variance parameter: for term t and its columns
(a, c), ``D = Z_ta Z_tc' + Z_tc Z_ta'`` (once when a = c), where ``Z_ta`` is
the n x m_t indicator matrix of term t scaled by its column a, and ``s`` is
the entry (a, c) of the term's covariance ``Sigma_t = sigma^2 Lambda_t
Lambda_t'``. With the OLS residuals ``r = M y``, ``M = I - X K X'``, ``K =
(X'X)^{-1}``, MIVQUE(0) solves

    sum_j tr(M D_i M D_j) s_j + tr(M D_i) sigma^2 = r'D_i r,
    sum_j tr(M D_j)       s_j + (n - p)  sigma^2 = r'r.

Every trace is an inner product of the matrices ``W(ta, ub) = Z_ta' M Z_ub``
(m_t x m_u): ``tr(M Z_x Z_y' M Z_v Z_w') = <W(y, v), W(x, w)>_F``, and
``W = A - B_ta K B_ub'`` with ``A = Z_ta'Z_ub`` sparse (one entry per
co-occurring pair of levels) and ``B_ta = Z_ta'X`` (m_t x p), so

    <A1 - B1 K B2', A3 - B3 K B4'> = <A1, A3> - <A1, B3 K B4'> - <A3, B1 K B2'> + tr(K B1'B3 K B4'B2)

costs O(nnz p): no n x n or q x q matrix. The design's part (the matrix of
the system) is computed once in numpy (:func:`moment_equations`); the
response's part, the quadratic forms, comes from the cross-products Z'y, X'y
and y'y (:func:`moment_estimates`, written once for JAX and numpy): the
bootstrap starts every replicate from its own moment estimates in the same
compiled call (:func:`moment_theta`), and a single fit evaluates its start
in numpy (:func:`default_start`).

The estimates become a start by :func:`theta_from_moments`: each term's
``Sigma_t / sigma^2`` with variances clipped to [``THETA_MIN^2``,
``THETA_MAX^2``] and correlations to ``+-CORR_MAX / (k_t - 1)`` (a matrix with
unit diagonal and smaller off-diagonal entries is positive definite), then
its Cholesky factor. When the moment estimate of sigma^2 is not positive,
lme4's identity. Only the start changes: the optimum, and every result, is
the same as from theta = 1 (the tests hold them to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..runtime.kernel import kernel, serializable
from .linalg import batched_cholesky
from .parametrization import theta_start
from .theta_layout import ThetaLayout

if TYPE_CHECKING:
    from .types import ResponseProducts, Structure
    from ..build.design import Design

THETA_MIN = 0.1    # smallest starting SD ratio (a component the moments put at or below zero)
THETA_MAX = 100.0
CORR_MAX = 0.9


@serializable
class MomentEquations(NamedTuple):
    """The design's part of MIVQUE(0) (arrays, so it can enter a compiled call).

    Attributes:
        S_inv: inverse of the system's matrix, ``(n_theta + 1)`` square: the
            variance parameters in lme4's theta order, then sigma^2.
        BK: per term, ``B_t K`` (m_t, k_t, p): ``Z_t'r = Z_t'y - B_t K X'y``.
        K: ``(X'X)^{-1}`` (p, p).
    """

    S_inv: jnp.ndarray
    BK: tuple[jnp.ndarray, ...]
    K: jnp.ndarray


def _pairs(ct: np.ndarray, Zt: np.ndarray, mt: int, cu: np.ndarray, Zu: np.ndarray, mu: int, same: bool):
    """Nonzeros of ``Z_t'Z_u`` for every pair of columns: (row levels, column levels, values (nnz, k_t, k_u))."""
    if same:
        rows = np.arange(mt)
        inv, nnz = ct, mt
    else:
        uniq, inv = np.unique(ct.astype(np.int64) * mu + cu, return_inverse=True)
        rows, nnz = uniq // mu, uniq.size
    # one n-vector of weights at a time (an (n, k_t, k_u) product would be 1x the data for a slope term)
    vals = np.stack([np.stack([np.bincount(inv, weights=Zt[:, x] * Zu[:, y], minlength=nnz)
                               for y in range(Zu.shape[1])], axis=-1) for x in range(Zt.shape[1])], axis=1)
    return rows, (rows if same else uniq % mu), vals


def _sym(a: int, c: int) -> list[tuple[int, int]]:
    return [(a, c)] if a == c else [(a, c), (c, a)]


def moment_equations(design: "Design") -> MomentEquations | None:
    """The design's part of MIVQUE(0) (module docstring); None when the
    system is singular (a variance parameter the design cannot separate)."""
    terms = design.terms
    X = np.asarray(design.working.X, dtype=float)        # the working design (lmm_jax.build.working)
    n, p = X.shape
    try:
        K = np.linalg.inv(X.T @ X) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        return None
    codes = [np.asarray(t.codes) for t in terms]
    Zs = [np.asarray(Z, dtype=float) for Z in design.working.Z]
    # B_t (m_t, k_t, p) and its Gram blocks G_t[x, y] = B_tx'B_ty (k_t, k_t, p, p)
    Bs = [np.stack([np.stack([np.bincount(c, weights=Z[:, x] * X[:, j], minlength=t.m) for j in range(p)], axis=-1)
                    for x in range(t.k)], axis=1) if p else np.zeros((t.m, t.k, 0))
          for t, c, Z in zip(terms, codes, Zs)]
    Gs = [np.einsum("mxp,myq->xypq", B, B) for B in Bs]
    params = design.theta_layout.entries
    P = len(params)
    S = np.zeros((P + 1, P + 1))

    def last(ti, x, y, ui, v, w):
        # tr(K B_ty'B_tx K B_uw'B_uv)
        return np.sum((K @ Gs[ti][y, x]) * (K @ Gs[ui][w, v]).T)

    for ti in range(len(terms)):
        for ui in range(ti, len(terms)):
            rows, cols, V = _pairs(codes[ti], Zs[ti], terms[ti].m, codes[ui], Zs[ui], terms[ui].m, ti == ui)
            BKr = Bs[ti][rows] @ K                                        # (nnz, k_t, p)
            Pv = np.einsum("nxp,nwp->nxw", BKr, Bs[ui][cols])             # entries of B_t K B_u' at the nonzeros
            for i, (tt, a, c) in enumerate(params):
                if tt != ti:
                    continue
                for j, (uu, b, d) in enumerate(params):
                    if uu != ui or (ti == ui and j < i):
                        continue
                    total = 0.0
                    for x, y in _sym(a, c):
                        for v, w in _sym(b, d):
                            # tr(M Z_tx Z_ty' M Z_uv Z_uw') = <W(ty, uv), W(tx, uw)>
                            total += (V[:, y, v] @ V[:, x, w] - V[:, y, v] @ Pv[:, x, w] - V[:, x, w] @ Pv[:, y, v]
                                      + last(ti, x, y, ui, v, w))
                    S[i, j] = S[j, i] = total
    for i, (ti, a, c) in enumerate(params):
        # tr(M D_i) = sum over the symmetrised pair of tr(Z_ty' M Z_tx)
        S[i, P] = S[P, i] = sum(np.sum(Zs[ti][:, x] * Zs[ti][:, y]) - np.sum(K * Gs[ti][y, x]) for x, y in _sym(a, c))
    S[P, P] = n - p
    try:
        S_inv = np.linalg.inv(S)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(S_inv)):
        return None
    return MomentEquations(S_inv=jax.device_put(S_inv), BK=tuple(jax.device_put(B @ K) for B in Bs),
                           K=jax.device_put(K))


def _term_products(rp: "ResponseProducts", s: "Structure") -> list[jnp.ndarray]:
    """``Z_t'y`` per term as (m_t, k_t) arrays."""
    out = [rp.Z1y]
    for k, m, o in zip(s.ks[1:], s.ms[1:], s.rest_offsets):
        out.append(rp.Zry[o:o + m * k].reshape(m, k))
    return out


def moment_estimates(eq: MomentEquations, rp: "ResponseProducts", s: "Structure", xp: Any = jnp) -> jnp.ndarray:
    """MIVQUE(0) estimates (variance parameters in theta order, then sigma^2)
    from one response's cross-products: pure JAX (vmap over ``rp``) with
    ``xp=jnp``, numpy arrays with ``xp=np``."""
    beta = eq.K @ rp.Xy
    r = [u - BK @ rp.Xy for u, BK in zip(_term_products(rp, s), eq.BK)]     # Z_t'r (m_t, k_t)
    q = [xp.sum(r[t][:, a] * r[t][:, c]) * (1.0 if a == c else 2.0) for t, a, c in ThetaLayout.of(s.ks).entries]
    q.append(rp.yy - rp.Xy @ beta)                                           # r'r
    return eq.S_inv @ xp.stack(q)


def theta_from_moments(est: jnp.ndarray, ks: tuple[int, ...], xp: Any = jnp) -> jnp.ndarray:
    """A starting theta from moment estimates ``est`` (module docstring):
    lme4's identity where the residual variance estimate is not positive.
    Traced by JAX with ``xp=jnp``, evaluated by numpy with ``xp=np``."""
    cholesky = batched_cholesky if xp is jnp else np.linalg.cholesky
    sigma2 = est[-1]
    safe = xp.where(sigma2 > 0, sigma2, 1.0)
    rel = est[:-1] / safe
    lay = ThetaLayout.of(ks)
    out = []
    for t, k in enumerate(ks):
        r, c = lay.tri(t)
        var = xp.stack([xp.clip(rel[lay.position(t, i, i)], THETA_MIN ** 2, THETA_MAX ** 2) for i in range(k)])
        sd = xp.sqrt(var)
        rho = CORR_MAX / max(k - 1, 1)
        rows = []
        for i in range(k):
            row = []
            for j in range(k):
                if i == j:
                    row.append(var[i])
                else:
                    cov = rel[lay.position(t, i, j)]
                    row.append(xp.clip(cov / (sd[i] * sd[j]), -rho, rho) * sd[i] * sd[j])
            rows.append(xp.stack(row))
        L = cholesky(xp.stack(rows))
        out.append(xp.stack([L[i, j] for i, j in zip(r, c)]))
    theta = xp.concatenate(out)
    return xp.where(sigma2 > 0, theta, xp.asarray(theta_start(ks), dtype=theta.dtype))


@kernel(static_argnames=("s",), quick=True)
def moment_theta(eq: MomentEquations, rp: "ResponseProducts", s: "Structure") -> jnp.ndarray:
    """A starting theta from one response's moment estimates
    (:func:`theta_from_moments` of :func:`moment_estimates`), compiled: the
    batched fits vmap it over their responses."""
    return theta_from_moments(moment_estimates(eq, rp, s), s.ks)


def pad_moment_equations(eq: MomentEquations, s: "Structure", padded: "Structure") -> MomentEquations:
    """``eq`` in the padded layout of :func:`lmm_jax.build.crossprod.pad_products`:
    zero rows of ``B_t K`` for the padded levels, so the moment estimates
    are unchanged."""
    if padded == s:
        return eq
    BK = []
    for B, m, M in zip(eq.BK, s.ms, padded.ms):
        out = np.zeros((M,) + B.shape[1:])
        out[:m] = np.asarray(B)
        BK.append(jax.device_put(out))
    return eq._replace(BK=tuple(BK))


def default_start(model) -> np.ndarray:
    """The fit's starting theta: the moment start of the model's own
    response (:func:`theta_from_moments`), or lme4's identity when the moment
    equations are singular.

    One response's start costs a few small products, so numpy evaluates it
    where :func:`moment_theta` would trace and compile a kernel (0.15 s of
    a fresh process's first fit); the tests hold the two to each other.

    Args:
        model: an :class:`~lmm_jax.model.LMM` (its ``padded`` products and
            ``padded_moment_equations``).
    """
    eq = model.padded_moment_equations
    if eq is None:
        return theta_start(model.structure.ks)
    pad = model.padded
    host = jax.tree_util.tree_map(np.asarray, (eq, pad.response))
    return np.asarray(theta_from_moments(moment_estimates(*host, pad.structure, np), pad.structure.ks, np),
                      dtype=float)

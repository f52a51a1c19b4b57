r"""Kenward-Roger adjusted covariance of beta-hat and denominator df.

Follows pbkrtest (Halekoh & Hojsgaard 2014, JSS 59(9); Kenward & Roger 1997,
Biometrics 53) entry by entry, with the same parametrisation: the variance
components gamma = (vech(Sigma_t) for each term, column-major lower triangle,
then the residual variance sigma^2), so that

    V(gamma) = sum_t Z_t (I_{m_t} (x) Sigma_t) Z_t' + sigma^2 I,
    G_r = dV/dgamma_r = Z_t (I (x) E_ij) Z_t'   (E_ij = e_i e_j' + e_j e_i', or e_i e_i'),
    G_sigma2 = I,

exact derivatives because V is linear in gamma. pbkrtest needs

    Phi = (X'V^{-1}X)^{-1},  P_r = -X'V^{-1}G_r V^{-1}X,
    Q_rs = X'V^{-1}G_r V^{-1}G_s V^{-1}X,  K_rs = tr(V^{-1}G_r V^{-1}G_s),
    IE2 = K - 2 tr(Phi Q) + tr(Phi P_r Phi P_s)   (twice the expected REML information),
    W = 2 IE2^{-1},   U = sum_rs W_rs (Q_rs - P_r Phi P_s),
    Phi_A = Phi + 2 Phi U Phi.

pbkrtest forms the n x n ``V^{-1}``. Here nothing n x n is formed: with
``W = Z Lambda``, ``M = Lambda'Z'Z Lambda + I`` (the penalised system's
matrix) and ``S = W M^{-1} W'``, ``V = sigma^2 (I + W W')`` and

    V^{-k} = sigma^{-2k} (I - S)^k = sigma^{-2k} (I - W (M^{-1} + ... + M^{-k}) W'),
    tr(V^{-2}) = sigma^{-4} (n - q + tr(M^{-2})),

(because ``(I - S) W = W M^{-1}``), so every quantity above is a product of
the cross-products Z'Z, Z'X, X'X with q x q matrices. The cost is dense in q
(O(q^3) once, O(q^2 p) per variance parameter), independent of n; for the
reference data q <= 45, for InstEval-sized models (q ~ 4100) a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

from ..build.crossprod import user_basis_design
from ..core.types import DesignProducts, Structure
from ..core.parametrization import lambdas
from ..core.theta_layout import ThetaLayout
from ..core.sparse import SparseA21


@dataclass(frozen=True)
class KRAdjustment:
    """pbkrtest's ``vcovAdj`` with its attributes.

    Attributes:
        vcov_adj: Phi_A, the adjusted covariance of beta-hat (p x p).
        vcov: Phi, the unadjusted covariance (X'V^{-1}X)^{-1}.
        P: (n_gamma, p, p) the P_r matrices.
        W: (n_gamma, n_gamma) covariance of gamma-hat, 2 IE2^{-1}.
        condition: smallest |eigenvalue| of IE2 (pbkrtest's ``condi``).
    """

    vcov_adj: np.ndarray
    vcov: np.ndarray
    P: np.ndarray
    W: np.ndarray
    condition: float


def dense_products(dp: DesignProducts, s: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense Z'Z (q x q), Z'X (q x p) and X'X from the blocked cross-products
    (columns of Z in the structure's order: first term level-major, then the
    rest), X in the user's basis (``X_w S^{-1}``, :mod:`lmm_jax.build.working`):
    the adjustment is of the user's beta."""
    m1, k1 = s.ms[0], s.ks[0]
    q1 = m1 * k1
    qr = s.q_rest
    A11 = np.asarray(dp.A11)
    ZtZ = np.zeros((q1 + qr, q1 + qr))
    idx = np.arange(m1)
    blocks = ZtZ[:q1, :q1].reshape(m1, k1, m1, k1)
    blocks[idx, :, idx, :] = A11
    ZtZ[:q1, :q1] = blocks.reshape(q1, q1)
    if qr:
        if isinstance(dp.A21, SparseA21):           # nonzero blocks only: scatter them
            vals = np.concatenate([np.asarray(b).reshape(-1, k1) for b in dp.A21.blocks], axis=0)
            A21 = np.zeros((qr, m1, k1))
            A21[np.asarray(dp.A21.index.row), np.asarray(dp.A21.index.level)] = vals
            A21 = A21.reshape(qr, q1)
        else:
            A21 = np.asarray(dp.A21).reshape(qr, q1)
        ZtZ[q1:, :q1] = A21
        ZtZ[:q1, q1:] = A21.T
        ZtZ[q1:, q1:] = np.asarray(dp.A22)
    du = user_basis_design(dp)
    ZtX = np.concatenate([np.asarray(du.Z1X).reshape(q1, s.p), np.asarray(du.ZrX)], axis=0)
    return ZtZ, ZtX, np.asarray(du.XtX)


def lambda_dense(theta: np.ndarray, s: Structure) -> np.ndarray:
    """Block-diagonal Lambda (q x q) in the structure's column order."""
    blocks = []
    for lam, m in zip(lambdas(np.asarray(theta, dtype=float), s.ks), s.ms):
        blocks.append(np.kron(np.eye(m), np.asarray(lam)))
    return sla.block_diag(*blocks)


def _term_slices(s: Structure) -> list[slice]:
    out, o = [], 0
    for k, m in zip(s.ks, s.ms):
        out.append(slice(o, o + k * m))
        o += k * m
    return out


def _gamma_patterns(s: Structure) -> list[tuple[int, np.ndarray]]:
    """(term index, k x k pattern E) for each variance component of a term."""
    out = []
    for t, i, j in ThetaLayout.of(s.ks).entries:
        E = np.zeros((s.ks[t], s.ks[t]))
        E[i, j] = E[j, i] = 1.0
        out.append((t, E))
    return out


def _apply_pattern(E: np.ndarray, A: np.ndarray, sl: slice, k: int) -> np.ndarray:
    """Rows ``sl`` of (I (x) E) A for a term's block: shape (m k, c)."""
    block = A[sl].reshape(-1, k, A.shape[1])
    return np.einsum("ij,ajc->aic", E, block).reshape(-1, A.shape[1])


def kenward_roger_adjustment(theta: np.ndarray, sigma: float, dp: DesignProducts, s: Structure) -> KRAdjustment:
    """pbkrtest's ``vcovAdj`` for a REML fit at (theta, sigma), without n x n matrices.

    Args:
        theta: lme4's theta at the REML estimate.
        sigma: residual SD at the REML estimate.
        dp: design cross-products.
        s: static structure.

    Returns:
        The :class:`KRAdjustment` (adjusted and unadjusted covariance of beta-hat, P_r and W).
    """
    ZtZ, ZtX, XtX = dense_products(dp, s)
    q, n = ZtZ.shape[0], float(dp.nobs)
    Lam = lambda_dense(theta, s)
    ZW = ZtZ @ Lam                      # Z'W,  W = Z Lambda
    XW = ZtX.T @ Lam                    # X'W
    M = Lam.T @ ZW + np.eye(q)
    cM = sla.cho_factor(M, lower=True)
    Minv = sla.cho_solve(cM, np.eye(q))
    Minv2 = Minv @ Minv
    S1, S2, S3 = Minv, Minv + Minv2, Minv + Minv2 + Minv2 @ Minv
    s2 = sigma ** 2

    def sandwich(AtW, BtW, AtB, Sk, k):
        """A'V^{-k}B = (A'B - A'W S_k W'B) / sigma^{2k}, S_k = M^{-1} + ... + M^{-k}."""
        return (AtB - AtW @ Sk @ BtW.T) / s2 ** k

    K = sandwich(ZW, ZW, ZtZ, S1, 1)          # Z'V^-1 Z
    K2 = sandwich(ZW, ZW, ZtZ, S2, 2)         # Z'V^-2 Z
    B = sandwich(ZW, XW, ZtX, S1, 1)          # Z'V^-1 X
    B2 = sandwich(ZW, XW, ZtX, S2, 2)         # Z'V^-2 X
    XV1X = sandwich(XW, XW, XtX, S1, 1)
    XV2X = sandwich(XW, XW, XtX, S2, 2)
    XV3X = sandwich(XW, XW, XtX, S3, 3)
    trV2 = (n - q + np.sum(Minv * Minv)) / s2 ** 2

    Phi = np.linalg.inv(XV1X)
    Phi = 0.5 * (Phi + Phi.T)
    slices = _term_slices(s)
    pats = _gamma_patterns(s)
    ng = len(pats) + 1
    p = s.p
    EB, EK, diagK2 = [], [], []
    for t, E in pats:
        sl, k = slices[t], s.ks[t]
        EB.append(np.zeros((q, p)))
        EB[-1][sl] = _apply_pattern(E, B, sl, k)                    # E_r Z'V^-1 X
        EK.append((sl, _apply_pattern(E, K, sl, k)))                # rows sl of E_r K
        blocks = K2[sl, sl].reshape(s.ms[t], k, s.ms[t], k)
        idx = np.arange(s.ms[t])
        diagK2.append(float(np.einsum("ij,aji->", E, blocks[idx, :, idx, :])))  # tr(E_r Z'V^-2 Z)
    P = np.empty((ng, p, p))
    Q = np.empty((ng, ng, p, p))
    Ktr = np.empty((ng, ng))
    nv = ng - 1
    for r in range(nv):
        P[r] = -B.T @ EB[r]
        KEB = K @ EB[r]
        for s_ in range(nv):
            Q[s_, r] = EB[s_].T @ KEB                               # X'V^-1 G_s V^-1 G_r V^-1 X
            sl_r, R_r = EK[r]
            sl_s, R_s = EK[s_]
            Ktr[r, s_] = np.sum(R_r[:, sl_s] * R_s[:, sl_r].T)      # tr(E_r K E_s K)
        Q[nv, r] = B2.T @ EB[r]
        Q[r, nv] = Q[nv, r].T
        Ktr[r, nv] = Ktr[nv, r] = diagK2[r]
    P[nv] = -XV2X
    Q[nv, nv] = XV3X
    Ktr[nv, nv] = trV2
    P = 0.5 * (P + P.transpose(0, 2, 1))

    PPhi = np.einsum("rij,jk->rik", P, Phi)                          # P_r Phi
    IE2 = (Ktr - 2.0 * np.einsum("ij,rsij->rs", Phi, Q)
           + np.einsum("rij,sji->rs", PPhi, PPhi))
    IE2 = 0.5 * (IE2 + IE2.T)
    condition = float(np.min(np.abs(np.linalg.eigvalsh(IE2))))
    W = 2.0 * (np.linalg.inv(IE2) if condition > 1e-10 else np.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    PPhiP = np.einsum("rij,sjk->rsik", PPhi, P)                      # P_r Phi P_s
    U = np.einsum("rs,rsij->ij", W, Q - PPhiP)
    U = 0.5 * (U + U.T)
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    return KRAdjustment(vcov_adj=0.5 * (PhiA + PhiA.T), vcov=Phi, P=P, W=W, condition=condition)


def kenward_roger_ddf(L: np.ndarray, adj: KRAdjustment) -> tuple[float, float, int]:
    """Denominator df and F scaling of the test of ``L beta = 0`` (pbkrtest's
    ``.KR_adjust`` / ``Lb_ddf``).

    Args:
        L: (q, p) contrast matrix of full row rank.
        adj: the :class:`KRAdjustment`.

    Returns:
        (ddf, F scaling, rank of L).
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    Phi = adj.vcov
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    TP = Theta @ Phi
    u = np.einsum("ij,rjk,kl->ril", TP, adj.P, Phi)                  # Theta Phi P_r Phi
    tr_u = np.einsum("rii->r", u)
    A1 = float(np.einsum("rs,r,s->", adj.W, tr_u, tr_u))
    A2 = float(np.einsum("rs,rij,sji->", adj.W, u, u))
    q = int(np.linalg.matrix_rank(L))
    Bq = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    V0 = 1 + c1 * Bq
    V1 = 1 - c2 * Bq
    V2 = 1 - c3 * Bq
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    ratio = (1 - A2 / q) / V1 if V1 != 0 else 0.0   # pbkrtest's .divZero
    rho = ratio ** 2 * V0 / (q * V2)
    ddf = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(ddf - 2) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
    return float(ddf), float(scaling), q

r"""Variance-parameter covariance and Satterthwaite's degrees of freedom.

Following lmerTest (Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13),
sec. 3), with exact derivatives where lmerTest uses numDeriv:

* varpar = (theta, sigma); its asymptotic covariance is ``A = 2 H^{-1}``,
  H the Hessian of ``devfun_vp`` (:func:`lmm_jax.core.likelihood.deviance_at_sigma`).
* For a contrast l, with ``C(varpar) = sigma^2 (L_X L_X')^{-1}`` the
  covariance of beta-hat and ``g = d(l'Cl)/d varpar``,

      df = 2 (l'Cl)^2 / (g' A g),     t = l'beta / sqrt(l'Cl).

* The variance components v = (vech(sigma^2 Lambda_t Lambda_t')..., sigma^2)
  get ``J A J'`` with J the Jacobian of v(varpar) (delta method).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.estimates import PINV_RCOND
from ..core.parametrization import lambdas_host
from ..core.theta_layout import ThetaLayout
from ..distributions import t_sf


def varpar_covariance(H: np.ndarray) -> np.ndarray:
    """``2 H^{-1}``: asymptotic covariance of (theta, sigma), a pseudo-inverse
    with the cutoff of batched fits' :func:`~lmm_jax.core.estimates.varpar_covariance_of`."""
    H = np.asarray(H)
    H = 0.5 * (H + H.T)
    return 2.0 * np.linalg.pinv(H, rcond=PINV_RCOND, hermitian=True)


def varcomp_of(varpar: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """(theta, sigma) -> variance/covariance components in theta's order
    (:class:`~lmm_jax.core.theta_layout.ThetaLayout`), then sigma^2."""
    varpar = np.asarray(varpar, dtype=float)
    theta, sigma = varpar[:-1], varpar[-1]
    lay = ThetaLayout.of(ks)
    out = [(sigma ** 2 * lam @ lam.T)[lay.tri(t)] for t, lam in enumerate(lambdas_host(theta, ks))]
    out.append(np.atleast_1d(sigma ** 2))
    return np.concatenate(out)


def varcomp_jacobian(varpar: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """d varcomp / d varpar, in closed form. Per term, with ``S = sigma^2
    Lambda Lambda'``: ``dS/dLambda_ab = sigma^2 (E_ab Lambda' + Lambda E_ba)``
    and ``dS/dsigma = 2 sigma Lambda Lambda'``; the residual variance's row is
    ``(0, ..., 0, 2 sigma)``."""
    varpar = np.asarray(varpar, dtype=float)
    theta, sigma = varpar[:-1], varpar[-1]
    J = np.zeros((varpar.size, varpar.size))
    lay = ThetaLayout.of(ks)
    for t, (lam, k) in enumerate(zip(lambdas_host(theta, ks), ks)):
        sl, tri = lay.slices[t], lay.tri(t)
        for n, a, b in zip(range(sl.start, sl.stop), *tri):
            dS = np.zeros((k, k))
            dS[a, :] += lam[:, b]              # E_ab Lambda'
            dS[:, a] += lam[:, b]              # Lambda E_ba
            J[sl, n] = sigma ** 2 * dS[tri]
        J[sl, -1] = 2.0 * sigma * (lam @ lam.T)[tri]
    J[-1, -1] = 2.0 * sigma
    return J


def varcomp_covariance(varpar: np.ndarray, A: np.ndarray, ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Variance components and their delta-method covariance ``J A J'``."""
    J = varcomp_jacobian(varpar, ks)
    return varcomp_of(varpar, ks), J @ np.asarray(A) @ J.T


def sdcor_of(v: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """Variance components v (:func:`varcomp_of`'s layout: theta's order,
    then sigma^2) -> the SDs and correlations in the same layout, then sigma."""
    v = np.asarray(v, dtype=float)
    lay = ThetaLayout.of(ks)
    out = np.empty_like(v)
    with np.errstate(invalid="ignore", divide="ignore"):    # a zero variance: its correlations are NaN
        for n, (t, i, j) in enumerate(lay.entries):
            if i == j:
                out[n] = np.sqrt(max(v[n], 0.0))
            else:
                out[n] = v[n] / np.sqrt(v[lay.position(t, i, i)] * v[lay.position(t, j, j)])
    out[-1] = np.sqrt(v[-1])
    return out


def sdcor_jacobian(v: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """d sdcor / d v (:func:`sdcor_of`), in closed form: ``d sd_i = dv_ii / (2 sd_i)``
    (infinite at a zero variance); for ``rho = v_ij / sqrt(v_ii v_jj)``,
    ``d rho / d v_ij = 1 / sqrt(v_ii v_jj)`` and ``d rho / d v_ii = -rho / (2 v_ii)``."""
    v = np.asarray(v, dtype=float)
    lay = ThetaLayout.of(ks)
    J = np.zeros((v.size, v.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        for n, (t, i, j) in enumerate(lay.entries):
            if i == j:
                J[n, n] = 0.5 / np.sqrt(v[n]) if v[n] >= 0 else 0.0
            else:
                a, b = lay.position(t, i, i), lay.position(t, j, j)
                root = np.sqrt(v[a] * v[b])
                rho = v[n] / root
                J[n, n] = 1.0 / root
                J[n, a] = -0.5 * rho / v[a]
                J[n, b] = -0.5 * rho / v[b]
        J[-1, -1] = 0.5 / np.sqrt(v[-1])
    return J


def satterthwaite_df(L: np.ndarray, C: np.ndarray, dC: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance ``l'Cl`` and Satterthwaite df for each row l of L."""
    L = np.atleast_2d(L)
    var = np.einsum("ri,ij,rj->r", L, C, L)
    g = np.einsum("ri,ijk,rj->rk", L, dC, L)
    denom = np.einsum("rk,kl,rl->r", g, A, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * var ** 2 / denom
    return var, df


def satterthwaite_table(L: np.ndarray, beta: np.ndarray, C: np.ndarray, dC: np.ndarray, A: np.ndarray,
                        names: list[str]) -> pd.DataFrame:
    """t-tests of the contrasts L beta with Satterthwaite df (lmerTest's
    ``contest1D``): columns ``estimate, std_error, df, t, p``, from C =
    vcov(beta), its Jacobian dC and A = 2 H^{-1}
    (:func:`~lmm_jax.core.estimates.varpar_derivatives`)."""
    var, df = satterthwaite_df(L, np.asarray(C), np.asarray(dC), np.asarray(A))
    est = np.atleast_2d(L) @ beta
    se = np.sqrt(var)
    t = est / se
    p = 2.0 * t_sf(np.abs(t), df)
    return pd.DataFrame({"estimate": est, "std_error": se, "df": df, "t": t, "p": p}, index=names)

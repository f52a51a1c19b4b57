r"""t and F tests of fixed-effect contrasts, coefficient tables, Wald intervals.

Denominator degrees of freedom (``ddf``):

* ``"satterthwaite"``: lmerTest's method (Kuznetsova et al. 2017, JSS 82(13)).
  One row l: ``df = 2 (l'Cl)^2 / (g'Ag)``, g = d(l'Cl)/d varpar by autodiff
  (:mod:`lmm_jax.inference.satterthwaite`). Several rows (lmerTest's ``contestMD``):
  eigen-decompose ``L C L' = P diag(d) P'``, take the rank-q part, give each
  ``P_m'L`` its own df nu_m, and combine them as
  ``ddf = 2E / (E - q)``, ``E = sum nu_m / (nu_m - 2)`` (2 if some nu_m <= 2).
* ``"kenward-roger"``: pbkrtest's adjusted covariance and df
  (:mod:`lmm_jax.inference.kenward_roger`); REML fits only, like lmerTest.
* ``"residual"``: n - p, the df of a linear model.
* ``"none"``: infinite df (z and chi-square/q tests).

Per-fit quantities are cached on the result: vcov(beta) with its Jacobian
(:attr:`LMMResult.vcov_jacobian <lmm_jax.results.LMMResult.vcov_jacobian>`, from
the kernel that also gives the varpar Hessian) and the KR adjustment, computed
here (:attr:`LMMResult.kr_adjustment <lmm_jax.results.LMMResult.kr_adjustment>`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..distributions import f_sf, norm_ppf, t_ppf, t_sf
from ..runtime.scope import entry_point
from ..errors import InferenceError, check_bool, normalize_ddf
from .kenward_roger import KRAdjustment, kenward_roger_adjustment, kenward_roger_ddf
from .profile import profile_confint
from .satterthwaite import satterthwaite_df, sdcor_jacobian, sdcor_of

if TYPE_CHECKING:
    from ..results import LMMResult

F_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def kr_adjustment(result: "LMMResult") -> KRAdjustment:
    """pbkrtest's adjusted covariance of beta for a REML fit (cached as
    :attr:`LMMResult.kr_adjustment <lmm_jax.results.LMMResult.kr_adjustment>`)."""
    if not result.reml:
        raise InferenceError("Kenward-Roger's method is only available for REML fits (as in lmerTest and "
                             "pbkrtest); refit with reml=True or use ddf='satterthwaite'")
    m = result.model
    return kenward_roger_adjustment(result.theta, result.sigma, m.products, m.structure)


def as_contrast(result: "LMMResult", L: Any) -> np.ndarray:
    """A contrast matrix (r, p): accepts a vector, a matrix, or a DataFrame /
    Series / dict keyed by coefficient names (missing names are 0)."""
    names = list(result.design.fixef_names)
    p = len(names)
    if p == 0:
        raise InferenceError("the model has no fixed effects (its formula has '0 +' and no covariates); there is "
                             "no contrast to test")
    if isinstance(L, dict):
        L = pd.Series(L)
    if isinstance(L, (pd.Series, pd.DataFrame)):
        frame = L.to_frame().T if isinstance(L, pd.Series) else L
        unknown = [c for c in frame.columns if c not in names]
        if unknown:
            raise InferenceError(f"contrast names {unknown} are not coefficients; coefficients are {names}")
        L = frame.reindex(columns=names, fill_value=0.0).to_numpy(dtype=float)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.ndim != 2 or L.shape[1] != p:
        raise InferenceError(f"contrast has shape {L.shape}; it needs {p} columns, one per fixed effect {names}")
    if not np.isfinite(L).all():
        raise InferenceError("contrast matrix has non-finite entries")
    return L


@entry_point
def t_tests(result: "LMMResult", L: np.ndarray, ddf: str = "satterthwaite", level: float = 0.95,
            names: list[str] | None = None) -> pd.DataFrame:
    """t tests of each row l of L: ``l'beta = 0`` (lmerTest's ``contest1D``).

    Returns:
        DataFrame with columns ``estimate, std_error, df, t, p, lower, upper``
        (the confidence interval at ``level`` uses the same df).
    """
    ddf = normalize_ddf(ddf)
    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level}")
    L = np.atleast_2d(L)
    if L.shape[0] == 0:           # no fixed effects (y ~ 0 + (1 | g)): an empty table
        return pd.DataFrame({c: np.zeros(0) for c in ("estimate", "std_error", "df", "t", "p", "lower", "upper")},
                            index=names if names is not None else [])
    est = L @ result.beta
    if ddf == "kenward-roger":
        adj = result.kr_adjustment
        var = np.einsum("ri,ij,rj->r", L, adj.vcov_adj, L)
        df = np.array([kenward_roger_ddf(l[None, :], adj)[0] for l in L])
    else:
        C, dC = result.vcov_jacobian
        if ddf == "satterthwaite":
            var, df = satterthwaite_df(L, C, dC, result.varpar_cov)
        else:
            var = np.einsum("ri,ij,rj->r", L, C, L)
            df = np.full(len(L), float(result.nobs - result.design.p) if ddf == "residual" else np.inf)
    se = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = est / se
    p = 2.0 * t_sf(np.abs(t), df)
    crit = t_ppf(0.5 + level / 2.0, df)
    return pd.DataFrame({"estimate": est, "std_error": se, "df": df, "t": t, "p": p,
                         "lower": est - crit * se, "upper": est + crit * se},
                        index=names if names is not None else [f"L{i + 1}" for i in range(len(L))])


def _combined_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2.0))
    return float(2.0 * E / (E - len(nu)))


@entry_point
def f_test(result: "LMMResult", L: np.ndarray, ddf: str = "satterthwaite",
           eps: float = float(np.sqrt(np.finfo(float).eps))) -> dict[str, float]:
    """F test of ``L beta = 0`` (lmerTest's ``contestMD``): a dict with the
    columns of lmerTest's anova table (``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``)."""
    ddf = normalize_ddf(ddf)
    L = np.atleast_2d(L)
    sigma2 = result.sigma ** 2
    beta = result.beta

    def row(F, ndf, den, scale=1.0):
        ms = F * sigma2
        Fs = F * scale
        return {"Sum Sq": ms * ndf, "Mean Sq": ms, "NumDF": float(ndf), "DenDF": float(den), "F value": Fs,
                "Pr(>F)": float(f_sf(Fs, ndf, den))}

    if L.shape[0] == 0:
        raise InferenceError("contrast matrix has no rows")
    if ddf == "kenward-roger":
        adj = result.kr_adjustment
        den, scale, q = kenward_roger_ddf(L, adj)
        Lb = L @ beta
        wald = float(Lb @ np.linalg.solve(L @ adj.vcov_adj @ L.T, Lb))
        return row(wald / q, q, den, scale)
    C, dC = result.vcov_jacobian
    if L.shape[0] == 1:
        tt = t_tests(result, L, ddf)
        return row(float(tt["t"].iloc[0] ** 2), 1, float(tt["df"].iloc[0]))
    d, P = np.linalg.eigh(L @ C @ L.T)
    d, P = d[::-1], P[:, ::-1]
    tol = max(eps * d[0], 0.0)
    q = int(np.sum(d > tol))
    if q == 0:
        raise InferenceError("contrast matrix has rank 0 in the covariance of beta: nothing to test")
    PtL = (P.T @ L)[:q]
    if q == 1:
        tt = t_tests(result, PtL, ddf)
        return row(float(tt["t"].iloc[0] ** 2), 1, float(tt["df"].iloc[0]))
    F = float(np.sum((PtL @ beta) ** 2 / d[:q]) / q)
    if ddf == "satterthwaite":
        _, nu = satterthwaite_df(PtL, C, dC, result.varpar_cov)
        den = _combined_ddf(nu)
    elif ddf == "residual":
        den = float(result.nobs - result.design.p)
    else:
        den = np.inf
    return row(F, q, den)


@entry_point
def contrast(result: "LMMResult", L: Any, ddf: str = "satterthwaite", level: float = 0.95,
             joint: bool | None = None) -> pd.DataFrame:
    """Test a contrast matrix (lmerTest's ``contest``): one row -> t test,
    several rows -> joint F test (``joint=False`` gives a t test per row)."""
    L = as_contrast(result, L)
    if joint is not None:
        check_bool(joint, "joint")
    if joint is None:
        joint = L.shape[0] > 1
    if not joint:
        return t_tests(result, L, ddf, level)
    return pd.DataFrame([f_test(result, L, ddf)], columns=F_COLUMNS, index=["L"])


@entry_point
def coefs(result: "LMMResult", ddf: str = "satterthwaite", level: float = 0.95) -> pd.DataFrame:
    """Fixed-effects table: ``estimate, std_error, df, t, p, lower, upper``."""
    names = list(result.design.fixef_names)
    return t_tests(result, np.eye(len(names)), ddf, level, names=names)


@entry_point
def varcorr_table(result: "LMMResult", level: float = 0.95) -> pd.DataFrame:
    """Variance components with Hessian-based SEs and Wald intervals.

    One row per parameter in lme4's naming and order (``sd_(Intercept)|Subject``,
    ``cor_Days.(Intercept)|Subject``, ..., ``sigma``;
    :attr:`~lmm_jax.core.theta_layout.ThetaLayout.parameter_names`). Columns:

    * ``vcov, se_vcov, lower_vcov, upper_vcov``: the variance / covariance
      (sigma^2 for ``sigma``), its SE from the exact Hessian of the deviance in
      (theta, sigma) by the delta method, and the Wald interval on that scale;
    * ``sdcor, se_sdcor, lower_sdcor, upper_sdcor``: the SD (or correlation),
      its delta-method SE, and the Wald interval on the SD scale (lower end
      clipped at 0) or, for correlations, on Fisher's z = atanh(rho) scale
      mapped back with tanh.

    SEs are NaN for components of a term estimated at the boundary (as lme4 /
    lmerTest give none there).
    """
    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level}")
    ks = result.model.structure.ks
    v = np.asarray(result.varcomp)
    Vv = np.asarray(result.varcomp_cov)
    se_v = np.asarray(result.varcomp_se)
    J = sdcor_jacobian(v, ks)
    sdcor = sdcor_of(v, ks)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):   # boundary: infinite d sd / d var
        se_s = np.sqrt(np.clip(np.diag(J @ Vv @ J.T), 0, None))
    se_s[~np.isfinite(se_v)] = np.nan
    z = float(norm_ppf(0.5 + level / 2.0))
    lay = result.design.theta_layout
    names = list(lay.parameter_names)
    is_cor = np.append(~lay.diagonal, False)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo_s, hi_s = _wald_sdcor(sdcor, se_s, is_cor, z)
    table = pd.DataFrame({"vcov": v, "se_vcov": se_v, "lower_vcov": v - z * se_v, "upper_vcov": v + z * se_v,
                          "sdcor": sdcor, "se_sdcor": se_s, "lower_sdcor": lo_s, "upper_sdcor": hi_s}, index=names)
    table.attrs["level"] = level
    return table


def _wald_sdcor(sdcor, se_s, is_cor, z):
    """Wald limits: SD scale (clipped at 0), correlations on Fisher's z scale."""
    lo_s = np.where(is_cor, np.tanh(np.arctanh(np.clip(sdcor, -1 + 1e-15, 1 - 1e-15))
                                    - z * se_s / np.maximum(1 - sdcor ** 2, 1e-300)),
                    np.maximum(sdcor - z * se_s, 0.0))
    hi_s = np.where(is_cor, np.tanh(np.arctanh(np.clip(sdcor, -1 + 1e-15, 1 - 1e-15))
                                    + z * se_s / np.maximum(1 - sdcor ** 2, 1e-300)),
                    sdcor + z * se_s)
    return lo_s, hi_s


@entry_point
def wald_confint(result: "LMMResult", level: float = 0.95) -> pd.DataFrame:
    """Wald intervals in lme4's naming and order: variance parameters on the
    SD / correlation scale from :func:`varcorr_table`, then the fixed effects
    as ``beta +- z se`` (lme4's ``confint(method = "Wald")`` gives the same for
    the fixed effects and NA for the variance parameters)."""
    vc = varcorr_table(result, level)
    z = float(norm_ppf(0.5 + level / 2.0))
    se = result.std_errors.to_numpy()
    fixed = pd.DataFrame({"lower": result.beta - z * se, "upper": result.beta + z * se},
                         index=list(result.design.fixef_names))
    out = pd.concat([vc[["lower_sdcor", "upper_sdcor"]].set_axis(["lower", "upper"], axis=1), fixed])
    out.attrs.update(level=level, method="wald")
    return out


@entry_point
def boot_confint(result: "LMMResult", level: float = 0.95, n: int = 1000, key: Any = None, seed: int = 0,
                 **kwargs) -> pd.DataFrame:
    """Parametric bootstrap percentile intervals (lme4's ``confint(method = "boot")``):
    ``result.bootstrap(n, key, **kwargs).confint(level, method="percentile")``,
    with ``key`` defaulting to the int ``seed``."""
    boot = result.bootstrap(n, int(seed) if key is None else key, **kwargs)     # n: an integer, checked there
    return boot.confint(level, method="percentile")


CONFINT_METHODS = {"wald": wald_confint, "profile": profile_confint, "boot": boot_confint,
                   "bootstrap": boot_confint}


@entry_point
def confint(result: "LMMResult", method: str = "profile", level: float = 0.95, **kwargs) -> pd.DataFrame:
    """Confidence intervals for SDs, correlations, sigma and fixed effects
    (lme4's ``confint``).

    Args:
        result: a fit.
        method: a key of :data:`CONFINT_METHODS`, any case: ``"wald"``
            (:func:`wald_confint`), ``"profile"``
            (:func:`~lmm_jax.inference.profile.profile_confint`) or ``"boot"``
            / ``"bootstrap"`` (:func:`boot_confint`).
        level: confidence level.
        **kwargs: passed to the method's function (``which``, ``tol`` for
            profile; ``n``, ``key``, ``seed`` and :meth:`LMMResult.bootstrap
            <lmm_jax.results.LMMResult.bootstrap>`'s options for boot).

    Raises:
        InferenceError: ``method`` is not one of :data:`CONFINT_METHODS`.
    """
    interval = CONFINT_METHODS.get(str(method).lower())
    if interval is None:
        raise InferenceError(f"method must be one of {list(CONFINT_METHODS)}, got {method!r}")
    return interval(result, level, **kwargs)

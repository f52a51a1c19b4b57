"""The immutable result of a GLMM fit: estimates, tables and glmer's summary.

Names follow lme4 (``fixef``, ``ranef``, ``varcorr``, ``loglik``, ``fitted``,
``resid``, ``predict``). The covariance of the estimates comes from the exact
Hessian H of the deviance in (theta, beta) at the optimum (the Newton loop's
own, mapped from its parameters): ``vcov(beta)`` is the beta block of
``2 H^{-1}``, lme4's ``vcov(use.hessian = TRUE)``, and the variance
components' SEs are the delta method's from the theta block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from ..core.estimates import SINGULAR_TOL, is_singular
from ..core.family import linkinv, variance
from ..core.parametrization import diagonal_mask, lambdas_host
from ..errors import InferenceError
from ..inference.fitted import check_na_action, on_rows
from ..inference.satterthwaite import sdcor_jacobian, sdcor_of, varcomp_jacobian, varcomp_of
from ..runtime.scope import entry_point, float64

if TYPE_CHECKING:
    from ..core.diagnostics import ConvergenceDiagnostics
    from ..core.optimize import NewtonResult
    from .model import GLMM
    from .summary import GLMMSummary

RESIDUAL_TYPES = ("deviance", "pearson", "response", "working")
PREDICT_TYPES = ("link", "response")


def parameter_derivatives(opt: "NewtonResult", ks: tuple[int, ...], basis: np.ndarray) -> tuple[np.ndarray, ...]:
    """The optimiser's gradient and Hessian in ``(phi, beta_w)`` mapped to
    lme4's ``(theta, beta)``: theta = exp(phi) on the diagonal entries (the
    chain rule of :func:`~lmm_jax.core.diagnostics.theta_derivatives_from_phi`),
    ``beta = S beta_w`` (``S = basis``). Entries at the boundary (theta exactly 0)
    get zero rows and columns. Returns ``(g, H, boundary)``."""
    x = np.asarray(opt.theta, dtype=float)
    nt = len(diagonal_mask(ks))
    p = x.shape[0] - nt
    diag = np.concatenate([diagonal_mask(ks), np.zeros(p, dtype=bool)])
    boundary = diag & (x == 0.0)
    c = np.where(diag & ~boundary, x, 1.0)
    g_phi = np.where(boundary, 0.0, np.asarray(opt.gradient, dtype=float))
    H = (np.asarray(opt.hessian, dtype=float) - np.diag(np.where(diag & ~boundary, g_phi, 0.0))) / np.outer(c, c)
    g = g_phi / c
    T = np.eye(nt + p)
    if p:
        T[nt:, nt:] = np.linalg.inv(basis)             # d beta_w / d beta
    g, H = T.T @ g, T.T @ H @ T
    H[boundary, :] = 0.0
    H[:, boundary] = 0.0
    return g, (H + H.T) / 2.0, boundary


@entry_point
@dataclass(frozen=True, eq=False)
class GLMMResult:
    """A fitted generalized linear mixed model: what :meth:`GLMM.fit
    <lmm_jax.glmm.model.GLMM.fit>` and ``lmm_jax.fit(..., family=...)`` return.

    Attributes:
        model: the :class:`~lmm_jax.glmm.model.GLMM` that was fitted.
        n_agq: 1 (Laplace) or the number of quadrature points.
        theta: lme4's covariance parameters at the optimum (boundary entries exactly 0).
        beta: fixed effects (array; :attr:`fixef` labels them).
        objective: the deviance, -2 log-likelihood of the approximation
            (glmer's ``-2 logLik``; for nAGQ > 1 lme4's AGQ deviance, which
            leaves out the saturated model's constant).
        b: conditional modes of the random effects, one (levels, columns)
            array per term.
        u: the spherical modes (``b = Lambda u``), flat.
        eta: the linear predictor at the modes (offset included).
        mu: the fitted means at the modes, ``g^{-1}(eta)`` (lme4's ``fitted``).
        mu_eta: ``d mu / d eta`` at the modes.
        dev_resid: each row's deviance contribution (R's ``family$dev.resids``),
            the squares of the deviance residuals.
        condcov: conditional covariances of b, one (levels, k, k) array per term.
        gradient, hessian: derivatives of the deviance in (theta, beta) at the
            optimum (zero rows for theta entries at the boundary).
        boundary: True for theta entries held at exactly 0 (then False for each beta).
        converged, iterations, gradient_norm, decrement: the Newton loop's record.
        diagnostics: lme4's ``checkConv`` on (theta, beta)
            (:class:`~lmm_jax.core.diagnostics.ConvergenceDiagnostics`).
    """

    model: "GLMM"
    n_agq: int
    theta: np.ndarray
    beta: np.ndarray
    objective: float
    b: tuple[np.ndarray, ...]
    u: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    mu_eta: np.ndarray
    dev_resid: np.ndarray
    condcov: tuple[np.ndarray, ...]
    gradient: np.ndarray
    hessian: np.ndarray
    boundary: np.ndarray
    converged: bool
    iterations: int
    gradient_norm: float
    decrement: float
    diagnostics: "ConvergenceDiagnostics | None" = None

    @classmethod
    def from_fit(cls, model: "GLMM", opt: "NewtonResult", est: dict, n_agq: int) -> "GLMMResult":
        """The result from the kernel's optimum and estimates (numpy arrays)."""
        nt = model.n_theta
        x = np.asarray(opt.theta, dtype=float)
        g, H, boundary = parameter_derivatives(opt, model.structure.ks, model.basis)
        return cls(model=model, n_agq=n_agq, theta=x[:nt], beta=model.basis @ x[nt:],
                   objective=float(est["deviance"]), b=tuple(np.asarray(b) for b in est["b"]),
                   u=np.asarray(est["u"]), eta=np.asarray(est["eta"]), mu=np.asarray(est["mu"]),
                   mu_eta=np.asarray(est["mu_eta"]), dev_resid=np.asarray(est["dev_resid"]),
                   condcov=tuple(np.asarray(c) for c in est["condcov"]), gradient=g, hessian=H, boundary=boundary,
                   converged=bool(opt.converged), iterations=int(opt.iterations),
                   gradient_norm=float(opt.gradient_norm), decrement=float(opt.decrement))

    # -- basic quantities ----------------------------------------------------
    @property
    def design(self):
        """The model's :class:`~lmm_jax.build.design.Design`."""
        return self.model.design

    @property
    def family(self):
        """The :class:`~lmm_jax.core.family.Family` (name and link)."""
        return self.model.family

    @property
    def reml(self) -> bool:
        """False: GLMMs are fitted by maximum likelihood (so ``lmm_jax.anova(m0, m1)`` compares them as they are)."""
        return False

    @property
    def nobs(self) -> int:
        """Rows used in the fit."""
        return self.design.n

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels per grouping factor (lme4's ``ngrps``)."""
        return self.design.ngroups

    @property
    def npar(self) -> int:
        """Parameters counted by AIC: fixed effects and theta (no residual scale)."""
        return self.design.p + len(self.theta)

    @property
    def loglik(self) -> float:
        """Log-likelihood of the approximation, ``-objective / 2`` (glmer's ``logLik``)."""
        return -self.objective / 2.0

    @property
    def deviance(self) -> float:
        """-2 log-likelihood (the ``deviance`` of glmer's summary and ``anova``;
        lme4's ``deviance()`` of a GLMM is :attr:`deviance_residual_sum`)."""
        return self.objective

    @property
    def deviance_residual_sum(self) -> float:
        """The sum of squared deviance residuals at the modes (lme4's ``deviance(fit)`` of a GLMM)."""
        return float(np.sum(self.resid("deviance").to_numpy() ** 2))

    @property
    def aic(self) -> float:
        """objective + 2 npar (glmer's ``AIC``)."""
        return self.objective + 2 * self.npar

    @property
    def bic(self) -> float:
        """objective + npar log(nobs) (glmer's ``BIC``)."""
        return self.objective + self.npar * np.log(self.nobs)

    @property
    def df_resid(self) -> int:
        """nobs - npar (glmer's ``df.residual``)."""
        return self.nobs - self.npar

    @property
    def singular(self) -> bool:
        """lme4's ``isSingular``: some diagonal of Lambda below 1e-4."""
        return is_singular(self.theta, self.model.structure.ks, SINGULAR_TOL)

    # -- fixed effects -------------------------------------------------------
    @property
    def fixef(self) -> pd.Series:
        """Fixed-effect estimates, indexed by the columns of X."""
        return pd.Series(self.beta, index=list(self.design.fixef_names), name="estimate")

    @cached_property
    def parameter_cov(self) -> np.ndarray:
        """Asymptotic covariance of (theta, beta): ``2 H^{-1}`` over the entries
        not at the boundary (NaN rows and columns for those)."""
        free = ~self.boundary
        out = np.full(self.hessian.shape, np.nan)
        try:
            out[np.ix_(free, free)] = 2.0 * np.linalg.inv(self.hessian[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            pass
        return (out + out.T) / 2.0

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance of the fixed effects: the beta block of ``2 H^{-1}``
        (lme4's ``vcov`` of a glmer fit, from the Hessian in (theta, beta))."""
        names = list(self.design.fixef_names)
        nt = len(self.theta)
        return pd.DataFrame(self.parameter_cov[nt:, nt:], index=names, columns=names)

    @property
    def std_errors(self) -> pd.Series:
        """Standard errors of the fixed effects."""
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=list(self.design.fixef_names))

    @property
    def coef_table(self) -> pd.DataFrame:
        """glmer's coefficient table: ``Estimate, Std. Error, z value, Pr(>|z|)`` (Wald z tests)."""
        se = self.std_errors.to_numpy()
        z = self.beta / se
        return pd.DataFrame({"Estimate": self.beta, "Std. Error": se, "z value": z,
                             "Pr(>|z|)": 2.0 * ndtr(-np.abs(z))}, index=list(self.design.fixef_names))

    def confint(self, method: str = "Wald", level: float = 0.95, **kwargs) -> pd.DataFrame:
        """Wald intervals of the fixed effects, ``estimate -+ z_{(1+level)/2} SE`` (lme4's
        ``confint(method = "Wald")``, whose rows for the variance components are NA);
        ``method="profile"``: profile-likelihood intervals of the fixed effects and the SDs of
        scalar terms (``kwargs``: ``which``; :mod:`lmm_jax.glmm.profile`);
        ``method="boot"``: percentile intervals of a parametric bootstrap of the SDs,
        correlations and fixed effects (``kwargs``: :meth:`bootstrap`'s ``n``, ``key``, ...;
        :mod:`lmm_jax.glmm.bootstrap`).

        Raises:
            InferenceError: another method.
        """
        if str(method).lower() == "boot":
            return self.bootstrap(**kwargs).confint(level)
        if str(method).lower() == "profile":
            from .profile import profile_confint

            return profile_confint(self, level, **kwargs)
        if str(method).lower() != "wald":
            raise InferenceError(f"confint of a GLMM supports method='Wald', 'profile' or 'boot', got {method!r}")
        if not 0 < level < 1:
            raise InferenceError(f"level must be in (0, 1), got {level!r}")
        z = ndtri((1 + level) / 2)
        se = self.std_errors.to_numpy()
        lo, hi = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
        return pd.DataFrame({lo: self.beta - z * se, hi: self.beta + z * se}, index=list(self.design.fixef_names))

    # -- variance components -------------------------------------------------
    @cached_property
    def covariances(self) -> list[np.ndarray]:
        """Per term: the k x k covariance of its random effects, Lambda_t Lambda_t'."""
        return [L @ L.T for L in lambdas_host(self.theta, self.model.structure.ks)]

    @cached_property
    def _varcomp(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(vcov, sdcor) of every theta entry (lme4's layout) and the delta
        method's SEs of both from ``2 H^{-1}``."""
        ks = self.model.structure.ks
        lay = self.design.theta_layout
        nt = len(self.theta)
        varpar = np.append(self.theta, 1.0)             # sigma = 1: Lambda_t Lambda_t' is the covariance
        vc, Jv = varcomp_of(varpar, ks)[:nt], varcomp_jacobian(varpar, ks)[:nt, :nt]
        v = np.append(vc, 1.0)
        V = self.parameter_cov[:nt, :nt]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):   # boundary: infinite d sd / d var
            sc, Js = sdcor_of(v, ks)[:nt], sdcor_jacobian(v, ks)[:nt, :nt] @ Jv
            se_v = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", Jv, V, Jv), 0, None))
            se_s = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", Js, V, Js), 0, None))
        for sl in lay.slices:
            if np.any(np.abs(self.theta[sl][lay.diagonal[sl]]) < SINGULAR_TOL):
                se_v[sl] = np.nan
                se_s[sl] = np.nan
        return vc, sc, se_v, se_s

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))`` of a GLMM (no residual row)
        with the delta-method SEs of ``vcov`` and ``sdcor`` from the Hessian.

        Columns ``grp, var1, var2, vcov, sdcor, se, se_sdcor``: for a variance
        row sdcor is the SD, for a covariance row the correlation."""
        lay = self.design.theta_layout
        vc, sc, se_v, se_s = self._varcomp
        rows = []
        for n in lay.varcorr_order:
            t, i, j = lay.entries[n]
            cols = lay.columns[t]
            v1, v2 = (cols[i], "") if i == j else (cols[j], cols[i])
            rows.append((lay.group_names[t], v1, v2, vc[n], sc[n], se_v[n], se_s[n]))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor", "se", "se_sdcor"])

    # -- random effects ------------------------------------------------------
    def _ranef_tables(self, values) -> dict[str, pd.DataFrame]:
        out: dict[str, pd.DataFrame] = {}
        for t, v in zip(self.design.terms, values):
            df = pd.DataFrame(np.asarray(v), index=pd.Index(t.levels, name=t.group), columns=list(t.columns))
            out[t.group] = df if t.group not in out else out[t.group].join(df, how="outer")
        return out

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes per grouping factor: levels x columns."""
        return self._ranef_tables(self.b)

    @cached_property
    def ranef_sd(self) -> dict[str, pd.DataFrame]:
        """Conditional SDs of the random effects (lme4's ``condVar``: from
        ``Lambda (L L')^{-1} Lambda'`` with L at the modes' Fisher weights)."""
        return self._ranef_tables([np.sqrt(np.diagonal(c, axis1=1, axis2=2)) for c in self.condcov])

    # -- fitted values, residuals, predictions -------------------------------
    @property
    def fitted(self) -> np.ndarray:
        """The fitted means mu at the modes (lme4's ``fitted``), in the model's row order."""
        return self.mu

    def fitted_values(self, na_action: str = "omit") -> pd.Series:
        """:attr:`fitted` as a Series on the data's index (``"exclude"``: NaN on rows not used)."""
        return on_rows(self.fitted, self.design, check_na_action(na_action), "fitted")

    @property
    def prior_weights(self) -> np.ndarray:
        """The prior weights (binomial: trials), 1 where none were given."""
        w = self.design.weights
        return np.ones(self.nobs) if w is None else w

    def resid(self, type: str = "deviance", na_action: str = "omit") -> pd.Series:
        """Residuals at the modes (lme4's ``residuals`` of a GLMM; default deviance).

        Args:
            type: ``"deviance"`` (``sign(y - mu) sqrt(d_i)``), ``"pearson"``
                (``(y - mu) sqrt(w / V(mu))``), ``"response"`` (``y - mu``) or
                ``"working"`` (``(y - mu) / mu_eta``).
            na_action: ``"omit"`` or ``"exclude"``.
        """
        if type not in RESIDUAL_TYPES:
            raise ValueError(f"type must be one of {list(RESIDUAL_TYPES)}, got {type!r}")
        y, w, mu = self.design.y, self.prior_weights, self.mu
        if type == "deviance":
            r = np.sign(y - mu) * np.sqrt(np.clip(self.dev_resid, 0, None))
        elif type == "pearson":
            r = (y - mu) * np.sqrt(w / variance(self.family, mu))
        elif type == "response":
            r = y - mu
        else:
            r = (y - mu) / self.mu_eta
        return on_rows(r, self.design, check_na_action(na_action), type)

    @property
    def residuals(self) -> np.ndarray:
        """Deviance residuals (lme4's default for GLMMs), an array in the model's row order."""
        return self.resid("deviance").to_numpy()

    def predict(self, newdata: Any = None, type: str = "link", re_form: Any = None,
                allow_new_levels: bool = False, offset: Any = None, na_action: str | None = None):
        """Predictions on the link scale (``type="link"``) or of the mean
        (``"response"``), with the random effects of ``re_form`` (None: all,
        ``"~0"``: none), on the fitted rows or on ``newdata`` (lme4's
        ``predict.merMod``; new levels as :func:`lmm_jax.inference.predict.predict`).

        Returns:
            An array, or with ``na_action`` a Series on the rows' index.
        """
        from ..inference.predict import predict

        if type not in PREDICT_TYPES:
            raise ValueError(f"type must be one of {list(PREDICT_TYPES)}, got {type!r}")
        out = predict(self, newdata, re_form, allow_new_levels, False, offset, na_action)
        if type == "link":
            return out
        with float64():
            values = np.asarray(linkinv(self.family, jnp.asarray(np.asarray(out, dtype=float))))
        return pd.Series(values, index=out.index, name=out.name) if isinstance(out, pd.Series) else values

    # -- printing ------------------------------------------------------------
    def summary(self) -> "GLMMSummary":
        """glmer's ``summary``: family and link, AIC BIC logLik deviance
        df.resid, scaled (Pearson) residuals, random effects, fixed effects
        with Wald z tests and their correlation."""
        from .summary import summarize

        return summarize(self)

    def anova(self, *others: "GLMMResult") -> pd.DataFrame:
        """Likelihood-ratio tests of this fit against nested others (lme4's ``anova(m0, m1)``)."""
        from .summary import anova

        return anova(self, *others)

    def __repr__(self) -> str:
        fam = self.family
        return (f"<GLMMResult {self.model.formula!r} {fam.name}({fam.link}), "
                f"{'Laplace' if self.n_agq == 1 else f'nAGQ={self.n_agq}'}: deviance {self.objective:.4f}, "
                f"{self.nobs} obs{', singular' if self.singular else ''}"
                f"{', NOT converged' if not self.converged else ''}>")

    # -- simulation and the bootstrap (lmm_jax.glmm.simulate, lmm_jax.glmm.bootstrap) --------
    def simulate(self, n: int, key: Any = 0, *, use_u: bool = False):
        """``n`` responses drawn from this fit (lme4's ``simulate``), an (n_obs, n)
        array: new random effects, or with ``use_u`` the fit's modes
        (:func:`lmm_jax.glmm.simulate.simulate`)."""
        from .simulate import simulate

        return simulate(self, n, key, use_u=use_u)

    def bootstrap(self, n: int = 1000, key: Any = 0, *, chunk_size: int | None = None, max_iter: int = 200):
        """Parametric bootstrap (lme4's ``bootMer``): ``n`` responses simulated at
        the estimates and refitted in compiled, vmapped chunks
        (:func:`lmm_jax.glmm.bootstrap.run_bootstrap`)."""
        from .bootstrap import run_bootstrap

        return run_bootstrap(self, n, key, chunk_size=chunk_size, max_iter=max_iter)

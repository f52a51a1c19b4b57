"""The immutable result of a fit: estimates, tables and lme4's summary.

Everything is derived from the fitted theta on first access and cached;
nothing mutates the model. Names follow lme4 (``fixef``, ``ranef``,
``varcorr``, ``sigma``, ``loglik``) and its tables' layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .runtime.scope import entry_point
from .build.design import UNCHANGED
from .core.estimates import (SINGULAR_TOL, conditional_covariances_at, deviance_at, estimates_at, is_singular,
                             unpad_estimates, varpar_derivatives)
from .core.parametrization import diagonal_mask, lambdas_host

if TYPE_CHECKING:
    from .inference.kenward_roger import KRAdjustment
    from .model import LMM
    from .core.optimize import NewtonResult
    from .report.summary import Summary


@entry_point
@dataclass(frozen=True, eq=False)
class LMMResult:
    """A fitted linear mixed model: what :meth:`LMM.fit <lmm_jax.model.LMM.fit>` and
    :func:`lmm_jax.fit` return.

    Attributes:
        model: the :class:`~lmm_jax.model.LMM` that was fitted.
        reml: True for a REML fit, False for ML.
        theta: lme4's covariance parameters at the optimum.
        beta: fixed effects (array; :attr:`fixef` is the labelled Series).
        sigma: residual standard deviation.
        objective: REML criterion (REML) or deviance (ML) at the optimum.
        unscaled_vcov: (X' V^{-1} X)^{-1} / sigma^2 = (L_X L_X')^{-1}, shape (p, p):
            :attr:`vcov` is ``sigma**2`` times it.
        b: the conditional modes of the random effects, one array
            (levels, columns) per random-effects term (:attr:`ranef` labels them).
        converged: the optimiser met its criterion.
        iterations: Newton iterations.
        gradient_norm: infinity norm of the final gradient (in phi).
        decrement: the last Newton decrement (NaN for a result built at a given theta).
        diagnostics: lme4-style gradient and Hessian checks at the optimum
            (:class:`~lmm_jax.core.diagnostics.ConvergenceDiagnostics`; None for a
            result built at a given theta).

    Example:
        >>> import lmm_jax
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> round(fit.objective, 2), fit.fixef.round(3).tolist()
        (1743.63, [251.405, 10.467])
        >>> fit.coefs()[["estimate", "df", "p"]]  # doctest: +SKIP
    """

    model: "LMM"
    reml: bool
    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    objective: float
    unscaled_vcov: np.ndarray
    b: tuple[np.ndarray, ...]
    converged: bool
    iterations: int
    gradient_norm: float
    decrement: float
    diagnostics: Any = None

    @classmethod
    def from_theta(cls, model: "LMM", theta: Any, reml: bool, optimizer: "NewtonResult | None" = None) -> "LMMResult":
        """Build the result at a given theta (the optimum, or any value).

        Args:
            model: the :class:`~lmm_jax.model.LMM`.
            theta: lme4's covariance parameters (``model.n_theta`` values).
            reml: the estimates and objective by REML (True) or ML (False).
            optimizer: the optimiser's result whose convergence record to keep;
                None for a result at a given theta (converged, 0 iterations).

        Returns:
            An :class:`LMMResult` with beta, sigma and b profiled at theta.
        """
        pad = model.padded
        est = estimates_at(np.asarray(theta, dtype=np.float64), pad.products, pad.response, pad.structure, reml)
        return cls.from_estimates(model, theta, unpad_estimates(est, model.design), reml, optimizer)

    @classmethod
    def from_estimates(cls, model: "LMM", theta: Any, est: dict, reml: bool,
                       optimizer: "NewtonResult | None" = None) -> "LMMResult":
        """Build the result from :func:`~lmm_jax.core.estimates.unpad_estimates` at theta.

        Args:
            model: the :class:`~lmm_jax.model.LMM`.
            theta: lme4's covariance parameters the estimates were computed at.
            est: the unpadded estimates at theta: a dict with ``beta``, ``sigma``,
                ``deviance``, ``unscaled_vcov`` and ``b``.
            reml: whether ``est`` is by REML (True) or ML (False).
            optimizer: as for :meth:`from_theta`.

        Returns:
            An :class:`LMMResult`.
        """
        if optimizer is None:
            conv, it, gn, dec = True, 0, float("nan"), float("nan")
        else:
            conv, it = bool(optimizer.converged), int(optimizer.iterations)
            gn, dec = float(optimizer.gradient_norm), float(optimizer.decrement)
        return cls(model=model, reml=reml, theta=np.asarray(theta, dtype=np.float64), beta=est["beta"],
                   sigma=est["sigma"], objective=est["deviance"], unscaled_vcov=est["unscaled_vcov"], b=est["b"],
                   converged=conv, iterations=it, gradient_norm=gn, decrement=dec)

    # -- basic quantities ----------------------------------------------------
    @property
    def design(self):
        """The model's :class:`~lmm_jax.build.design.Design` (X, Z's terms, y, names, dropped rows)."""
        return self.model.design

    @property
    def nobs(self) -> int:
        """Rows used in the fit (lme4's ``nobs``): the data's rows less those dropped."""
        return self.design.n

    @property
    def n_dropped(self) -> int:
        """Rows dropped for missing values in used columns."""
        return self.design.n_dropped_rows

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels per grouping factor (lme4's ``ngrps``)."""
        return self.design.ngroups

    @property
    def npar(self) -> int:
        """Parameters counted by AIC: fixed effects, theta and sigma."""
        return self.design.p + len(self.theta) + 1

    @property
    def fixef(self) -> pd.Series:
        """Fixed-effect estimates (lme4's ``fixef``): :attr:`beta` as a Series
        named ``estimate``, indexed by the columns of X."""
        return pd.Series(self.beta, index=list(self.design.fixef_names), name="estimate")

    @property
    def vcov(self) -> pd.DataFrame:
        """Covariance of the fixed effects, sigma^2 (L_X L_X')^{-1}."""
        names = list(self.design.fixef_names)
        return pd.DataFrame(self.sigma ** 2 * self.unscaled_vcov, index=names, columns=names)

    @property
    def std_errors(self) -> pd.Series:
        """Standard errors of the fixed effects: the square roots of the diagonal
        of :attr:`vcov`, a Series indexed by the columns of X."""
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=list(self.design.fixef_names))

    @property
    def loglik(self) -> float:
        """Log-likelihood (the REML log-likelihood for REML fits, as lme4)."""
        return -self.objective / 2.0

    @property
    def reml_criterion(self) -> float | None:
        """The REML criterion at the optimum (lme4's ``REMLcrit``) for a REML fit;
        None for an ML fit (see :attr:`deviance`)."""
        return self.objective if self.reml else None

    @cached_property
    def deviance(self) -> float:
        """-2 log-likelihood (ML) profiled at the fitted theta; for REML fits
        this is lme4's ``devcomp$cmp["dev"]`` (the ML deviance at the REML theta)."""
        if not self.reml:
            return self.objective
        pad = self.model.padded
        return float(deviance_at(self.theta, pad.products, pad.response, pad.structure, False))

    @property
    def aic(self) -> float:
        """Akaike's information criterion, :attr:`objective` + 2 :attr:`npar`
        (lme4's ``AIC``; from the REML criterion for a REML fit, as lme4)."""
        return self.objective + 2 * self.npar

    @property
    def bic(self) -> float:
        """Bayesian information criterion, :attr:`objective` + :attr:`npar`
        log(:attr:`nobs`) (lme4's ``BIC``; REML criterion for a REML fit)."""
        return self.objective + self.npar * np.log(self.nobs)

    @property
    def df_resid(self) -> int:
        """Residual degrees of freedom, :attr:`nobs` - :attr:`npar` (lme4's
        ``df.residual``; the ``"residual"`` ddf of the t and F tests)."""
        return self.nobs - self.npar

    @property
    def singular(self) -> bool:
        """lme4's ``isSingular``: some diagonal of Lambda below 1e-4."""
        return is_singular(self.theta, self.model.structure.ks, SINGULAR_TOL)

    # -- variance components -------------------------------------------------
    @cached_property
    def covariances(self) -> list[np.ndarray]:
        """Per term: the k x k covariance sigma^2 Lambda_t Lambda_t'."""
        return [self.sigma ** 2 * (L @ L.T) for L in lambdas_host(self.theta, self.model.structure.ks)]

    @cached_property
    def _varpar_derivatives(self) -> dict[str, np.ndarray]:
        """H, C and dC at the fit (:func:`~lmm_jax.core.estimates.varpar_derivatives`):
        what :attr:`varpar_cov`, :attr:`vcov_jacobian` and the t tests read."""
        pad = self.model.padded
        vp = np.concatenate([self.theta, [self.sigma]])
        d = varpar_derivatives(vp, pad.products, pad.response, pad.structure, self.reml)
        return {k: np.asarray(v) for k, v in d.items()}

    @cached_property
    def varpar_cov(self) -> np.ndarray:
        """Asymptotic covariance of varpar = (theta, sigma): 2 H^{-1} of
        lmerTest's ``devfun_vp`` (exact autodiff Hessian)."""
        from .inference.satterthwaite import varpar_covariance

        return varpar_covariance(self._varpar_derivatives["H"])

    @cached_property
    def _varcomp(self) -> tuple[np.ndarray, np.ndarray]:
        from .inference.satterthwaite import varcomp_covariance

        vp = np.concatenate([self.theta, [self.sigma]])
        return varcomp_covariance(vp, self.varpar_cov, self.model.structure.ks)

    @property
    def varcomp(self) -> np.ndarray:
        """Variance/covariance components (lower triangle per term, column
        major) then the residual variance: the order of lme4 references."""
        return self._varcomp[0]

    @property
    def varcomp_cov(self) -> np.ndarray:
        """Delta-method covariance of :attr:`varcomp` from the exact Hessian."""
        return self._varcomp[1]

    @property
    def varcomp_se(self) -> np.ndarray:
        """SEs of :attr:`varcomp`; NaN for components of a term at the boundary."""
        se = np.sqrt(np.clip(np.diag(self.varcomp_cov), 0, None))
        lay = self.design.theta_layout
        for sl in lay.slices:
            if np.any(np.abs(self.theta[sl][lay.diagonal[sl]]) < SINGULAR_TOL):
                se[sl] = np.nan
        return se

    @cached_property
    def varcorr(self) -> pd.DataFrame:
        """lme4's ``as.data.frame(VarCorr(fit))`` with the Hessian SE of vcov.

        Columns ``grp, var1, var2, vcov, sdcor, se``: for a variance row sdcor
        is the SD, for a covariance row the correlation. ``grp`` is the
        grouping factor, with ``.1``, ``.2``, ... on the second and later
        terms of a repeated factor, as in lme4 and in the parameter names of
        :meth:`confint` (:mod:`lmm_jax.core.theta_layout`).
        """
        lay = self.design.theta_layout
        se = self.varcomp_se
        rows = []
        for n in lay.varcorr_order:
            t, i, j = lay.entries[n]
            S, cols = self.covariances[t], lay.columns[t]
            if i == j:
                rows.append((lay.group_names[t], cols[i], "", S[i, i], np.sqrt(S[i, i]), se[n]))
            else:
                sd_i, sd_j = np.sqrt(S[i, i]), np.sqrt(S[j, j])
                cor = S[i, j] / (sd_i * sd_j) if sd_i * sd_j > 0 else np.nan
                rows.append((lay.group_names[t], cols[j], cols[i], S[i, j], cor, se[n]))
        rows.append(("Residual", "", "", self.sigma ** 2, self.sigma, se[-1]))
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor", "se"])

    # -- random effects, fitted values ------------------------------------------
    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes (BLUPs) per grouping factor: levels x terms
        (terms of the same factor, e.g. from ``||``, side by side)."""
        return self._ranef_tables(self.b)

    @cached_property
    def ranef_sd(self) -> dict[str, pd.DataFrame]:
        """Conditional SDs of the random effects (lme4's ``condsd``)."""
        pad = self.model.padded
        cov = conditional_covariances_at(self.theta, pad.products, pad.response, pad.structure)
        sds = [self.sigma * np.sqrt(np.diagonal(np.asarray(c)[:t.m], axis1=1, axis2=2))
               for c, t in zip(cov, self.design.terms)]
        return self._ranef_tables(sds)

    def _ranef_tables(self, values) -> dict[str, pd.DataFrame]:
        out: dict[str, pd.DataFrame] = {}
        for t, v in zip(self.design.terms, values):
            df = pd.DataFrame(np.asarray(v), index=pd.Index(t.levels, name=t.group), columns=list(t.columns))
            out[t.group] = df if t.group not in out else out[t.group].join(df, how="outer")
        return out

    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef``: per grouping factor, a table of levels x every
        fixed effect, each the fixed effect plus the level's random effect
        where the factor's terms have that column; a random-effects column
        that is not a fixed effect comes first, its fixed part 0
        (:func:`lmm_jax.inference.fitted.coef_tables`)."""
        from .inference.fitted import coef_tables

        return coef_tables(self)

    @cached_property
    def fitted(self) -> np.ndarray:
        """X beta + Z b (+ the offset) for the rows used (lme4's ``fitted``),
        an array in the model's row order: :meth:`fitted_values` labels it
        by the data's index."""
        from .inference.fitted import linear_predictor

        return linear_predictor(self, "conditional")

    @property
    def residuals(self) -> np.ndarray:
        """y - :attr:`fitted` for the rows used, an array (lme4's
        ``residuals``): :meth:`resid` gives the other types and scales,
        labelled by the data's index."""
        return self.design.y - self.fitted

    def fitted_values(self, level: str = "conditional", na_action: str = "omit") -> pd.Series:
        """Fitted values as a Series on the data's index (lme4's ``fitted``).

        Args:
            level: ``"conditional"`` (X beta + Z b + offset, the values of
                :attr:`fitted`) or ``"marginal"`` (X beta + offset).
            na_action: ``"omit"``: the rows used; ``"exclude"``: every row
                of the data, NaN on those dropped for missing values or a
                zero weight (lme4's ``na.exclude``).
        """
        from .inference.fitted import fitted_values

        return fitted_values(self, level, na_action)

    def resid(self, type: str = "response", scaled: bool = False, level: str = "conditional",
              na_action: str = "omit") -> pd.Series:
        """Residuals as a Series on the data's index (lme4's ``residuals``).

        Args:
            type: ``"response"`` (y - mu, the values of :attr:`residuals`),
                ``"working"`` (the same), ``"pearson"`` or ``"deviance"``
                (``sqrt(w) (y - mu)`` with prior weights w; the same as
                ``"response"`` without).
            scaled: divided by sigma.
            level: mu is ``"conditional"`` (X beta + Z b + offset) or
                ``"marginal"`` (X beta + offset).
            na_action: ``"omit"`` or ``"exclude"``, as for :meth:`fitted_values`.
        """
        from .inference.fitted import residual_values

        return residual_values(self, type, scaled, level, na_action)

    # -- refits ----------------------------------------------------------------
    def update(self, formula: str | None = None, data: Any = None, *, reml: bool | None = None,
               weights: Any = UNCHANGED, offset: Any = UNCHANGED, **fit_kwargs) -> "LMMResult":
        """Fit another formula or data (R's ``update``).

        Args:
            formula: the new formula, ``.`` standing for the old formula's
                side: ``". ~ . - Days"`` removes a fixed term, ``". ~ . - 1"``
                the intercept, ``". ~ . + (1 | h)"`` adds a random term,
                ``". ~ . - (1 | g)"`` removes one, ``"log(.) ~ ."`` transforms
                the response (:func:`lmm_jax.build.formula.update_formula`);
                None keeps it.
            data: new data; None re-reads the fit's data (every row, as R).
            reml: REML or ML; None keeps the fit's.
            weights, offset: by default the fit's; None for none.
            fit_kwargs: ``start``, ``max_iter``, ``throw`` of :meth:`LMM.fit`.

        Returns:
            The new fit (this one is unchanged).
        """
        model = self.model.update(formula, data, weights=weights, offset=offset)
        return model.fit(reml=self.reml if reml is None else reml, **fit_kwargs)

    def refit(self, y: Any, *, start: Any = None, max_iter: int = 200, throw: bool = False) -> "LMMResult":
        """Fit another response on the same design (lme4's ``refit``).

        The formula is not parsed again and X, Z and their products are
        reused (:meth:`LMM.with_response`): the new response's products are
        formed and the same compiled fit runs, by REML or ML as this fit.

        Args:
            y: one value per row used (``nobs``) or per row of the data (the
                rows the fit dropped are left out); a Series is matched by
                index labels.
            start: starting theta; by default this fit's theta (as lme4),
                or the new response's moment estimates where a component of
                this fit is 0 (a boundary the optimiser does not leave).
            max_iter, throw: as for :meth:`LMM.fit`.

        Returns:
            A full :class:`LMMResult` of the new response.
        """
        model = self.model.with_response(y)
        if start is None and not np.any(self.theta[diagonal_mask(self.model.structure.ks)] == 0):
            start = self.theta
        return model.fit(reml=self.reml, start=start, max_iter=max_iter, throw=throw)

    # -- inference -------------------------------------------------------------
    @cached_property
    def _satterthwaite(self) -> pd.DataFrame:
        from .inference.satterthwaite import satterthwaite_table

        C, dC = self.vcov_jacobian
        return satterthwaite_table(np.eye(self.design.p), self.beta, C, dC, self.varpar_cov,
                                   list(self.design.fixef_names))

    @cached_property
    def vcov_jacobian(self) -> tuple[np.ndarray, np.ndarray]:
        """vcov(beta) and its exact Jacobian in (theta, sigma), shape (p, p,
        n_theta + 1): what Satterthwaite's df of any contrast needs
        (:func:`~lmm_jax.core.estimates.varpar_derivatives`)."""
        return self._varpar_derivatives["C"], self._varpar_derivatives["dC"]

    @cached_property
    def kr_adjustment(self) -> "KRAdjustment":
        """pbkrtest's Kenward-Roger adjusted covariance of beta and what its df
        need, for a REML fit (:func:`lmm_jax.inference.tests.kr_adjustment`)."""
        from .inference.tests import kr_adjustment

        return kr_adjustment(self)

    @property
    def coef_table(self) -> pd.DataFrame:
        """Fixed effects with Satterthwaite df and t-test p-values (lmerTest's
        ``summary``): columns ``estimate, std_error, df, t, p``."""
        return self._satterthwaite.copy()

    def coefs(self, ddf: str = "satterthwaite", level: float = 0.95) -> pd.DataFrame:
        """Fixed effects with t tests and confidence intervals
        (:func:`lmm_jax.inference.tests.coefs`).

        Args:
            ddf: the denominator df: ``"satterthwaite"``, ``"kenward-roger"``
                (REML fits), ``"residual"`` or ``"none"`` (normal; see
                :mod:`lmm_jax.inference.tests`).
            level: confidence level of ``lower, upper``.

        Returns:
            DataFrame indexed by the fixed effects, columns ``estimate,
            std_error, df, t, p, lower, upper``.

        Raises:
            InferenceError: an unknown ``ddf``, or Kenward-Roger on an ML fit.

        Example:
            >>> fit.coefs("kenward-roger", level=0.9)  # doctest: +SKIP
        """
        from .inference.tests import coefs

        return coefs(self, ddf, level)

    def contrast(self, L: Any, ddf: str = "satterthwaite", level: float = 0.95,
                 joint: bool | None = None) -> pd.DataFrame:
        """Test ``L beta = 0`` (lmerTest's ``contest``;
        :func:`lmm_jax.inference.tests.contrast`).

        Args:
            L: the contrast: a vector or matrix with one column per fixed effect
                (rows are hypotheses).
            ddf: ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"`` or ``"none"``.
            level: confidence level of the t tests' intervals.
            joint: True: one F test of all rows; False: a t test per row; None
                (default): a t test for one row, an F test for several.

        Returns:
            DataFrame: t tests (``estimate, std_error, df, t, p, lower, upper``)
            or one F test (``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``).

        Example:
            >>> fit.contrast([0, 1])  # the Days slope  # doctest: +SKIP
        """
        from .inference.tests import contrast

        return contrast(self, L, ddf, level, joint)

    def anova(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """Type III F test per fixed-effect term (lmerTest's ``anova``;
        :func:`lmm_jax.inference.anova.anova_table`). To compare fits by
        likelihood ratio use :func:`lmm_jax.anova` with several fits.

        Args:
            ddf: ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"`` or ``"none"``.

        Returns:
            DataFrame, one row per term, columns ``Sum Sq, Mean Sq, NumDF,
            DenDF, F value, Pr(>F)``.
        """
        from .inference.anova import anova_table

        return anova_table(self, ddf)

    def drop1(self, ddf: str = "satterthwaite") -> pd.DataFrame:
        """F tests of the fixed-effect terms that can be dropped respecting
        marginality (lmerTest's ``drop1``; :func:`lmm_jax.inference.ranova.drop1`).

        Args:
            ddf: ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"`` or ``"none"``.

        Returns:
            DataFrame with lmerTest's columns ``Sum Sq, Mean Sq, NumDF, DenDF,
            F value, Pr(>F)``, one row per marginal term.
        """
        from .inference.ranova import drop1

        return drop1(self, ddf)

    def ranova(self, reduce_terms: bool = True) -> pd.DataFrame:
        """Likelihood-ratio tests of the random-effects terms, each reduced or
        removed and the model refitted (lmerTest's ``ranova``;
        :func:`lmm_jax.inference.ranova.ranova`).

        Args:
            reduce_terms: reduce terms with slopes to simpler ones first
                (lmerTest's default); False removes every term whole.

        Returns:
            DataFrame with columns ``npar, logLik, AIC, LRT, Df, Pr(>Chisq)``,
            the first row ``<none>`` this fit, then one row per reduced model.
        """
        from .inference.ranova import ranova

        return ranova(self, reduce_terms)

    def r2(self, by_group: bool = False, tolerance: float = 1e-5) -> pd.Series | pd.DataFrame:
        """Nakagawa's marginal and conditional R-squared, random slopes by
        Johnson's extension (performance's ``r2_nakagawa``;
        :func:`lmm_jax.inference.r2.r2`).

        Args:
            by_group: explained variance by level instead (``Level 1`` and one
                row per grouping factor, against the null model refitted).
            tolerance: a diagonal of theta below it makes the fit singular.

        Returns:
            Series ``R2_conditional, R2_marginal``; with ``by_group``, a
            DataFrame with columns ``Level, R2``.
        """
        from .inference.r2 import r2

        return r2(self, by_group, tolerance)

    def icc(self, by_group: bool = False, tolerance: float = 1e-5) -> pd.Series | pd.DataFrame:
        """Adjusted and unadjusted intraclass correlation (performance's
        ``icc``; :func:`lmm_jax.inference.r2.icc`).

        Args:
            by_group: one ICC per term with an intercept instead.
            tolerance: a diagonal of theta below it makes the fit singular
                (all NaN).

        Returns:
            Series ``ICC_adjusted, ICC_unadjusted``; with ``by_group``, a
            DataFrame with columns ``Group, ICC``.
        """
        from .inference.r2 import icc

        return icc(self, by_group, tolerance)

    def emmeans(self, specs: Any, by: Any = None, at: dict | None = None, weights: str = "equal",
                ddf: str = "satterthwaite", level: float = 0.95):
        """Estimated marginal means over the reference grid (R's ``emmeans``): an
        :class:`~lmm_jax.inference.emmeans.EMMeans` with ``.table`` and
        ``.contrast(method, adjust)``; see :func:`lmm_jax.inference.emmeans.emmeans`.

        Args:
            specs: the variables whose means are wanted: a name, several
                (a list or ``"a * b"``), ``"a | b"`` (a within each b) or
                ``"1"`` for the grand mean.
            by: more grouping variables (as after ``|``).
            at: values of grid variables: a covariate's values (default its
                mean), a subset of a factor's levels.
            weights: how to average over the other factors: ``"equal"``,
                ``"proportional"``, ``"outer"``, ``"cells"`` or ``"flat"``.
            ddf: ``"satterthwaite"``, ``"kenward-roger"``, ``"residual"`` or ``"none"``.
            level: confidence level of the intervals.

        Returns:
            An :class:`~lmm_jax.inference.emmeans.EMMeans`.
        """
        from .inference.emmeans import emmeans

        return emmeans(self, specs, by, at, weights, ddf, level)

    def confint(self, method: str = "profile", level: float = 0.95, **kwargs) -> pd.DataFrame:
        """Intervals for SDs, correlations, sigma and fixed effects in lme4's
        naming: ``method`` ``"profile"``, ``"wald"`` or ``"boot"``
        (:func:`lmm_jax.inference.tests.confint`).

        Args:
            method: ``"profile"`` (likelihood profile, lme4's default),
                ``"wald"`` or ``"boot"`` (parametric bootstrap).
            level: confidence level.
            **kwargs: passed to the method's function (``which``, ``tol`` for
                profile; ``n``, ``key`` and :meth:`bootstrap`'s options for boot).

        Returns:
            DataFrame indexed by lme4's parameter names (``sd_(Intercept)|Subject``,
            ..., ``sigma``, fixed effects), columns ``lower, upper``.

        Raises:
            InferenceError: an unknown ``method``.

        Example:
            >>> fit.confint("wald", level=0.9)  # doctest: +SKIP
        """
        from .inference.tests import confint

        return confint(self, method, level, **kwargs)

    def varcorr_table(self, level: float = 0.95) -> pd.DataFrame:
        """Variance components with Hessian SEs and Wald intervals (variance,
        SD and Fisher-z correlation scales;
        :func:`lmm_jax.inference.tests.varcorr_table`).

        Args:
            level: confidence level of the Wald intervals.

        Returns:
            DataFrame, one row per parameter in lme4's naming, columns ``vcov,
            se_vcov, lower_vcov, upper_vcov, sdcor, se_sdcor, lower_sdcor,
            upper_sdcor``.
        """
        from .inference.tests import varcorr_table

        return varcorr_table(self, level)

    def predict(self, newdata: Any = None, re_form: Any = None, allow_new_levels: bool = False,
                se_fit: bool = False, offset: Any = None, na_action: str | None = None):
        """Predictions with (``re_form=None``) or without (``"~0"``) random
        effects, on the fitted rows or ``newdata``: an array, or with
        ``na_action`` (``"omit"``, ``"exclude"``) a Series on the rows' index;
        see :func:`lmm_jax.inference.predict.predict` for the details.

        Args:
            newdata: a DataFrame (or dict of columns) to predict on; None for
                the fitted rows.
            re_form: None for all random terms, ``"~0"`` for the population
                level, or a formula of bars such as ``"~(1 | Subject)"``.
            allow_new_levels: give unseen levels of a grouping factor the
                population prediction instead of raising DataError.
            se_fit: also return the SEs of the fixed part.
            offset: with ``newdata``, its rows' offset (a column name or an
                array) where the model was fitted with an ``offset=`` array.
            na_action: None: an array; ``"omit"`` or ``"exclude"``: a Series
                on the rows' index (lme4's ``na.action``).

        Returns:
            The predictions, or with ``se_fit`` a DataFrame with columns
            ``fit, se_fit``.

        Raises:
            DataError: unseen levels without ``allow_new_levels``, or
                ``newdata`` missing a column.

        Example:
            >>> fit.predict(pd.DataFrame({"Days": [0, 5], "Subject": ["308", "309"]}))  # doctest: +SKIP
        """
        from .inference.predict import predict

        return predict(self, newdata, re_form, allow_new_levels, se_fit, offset, na_action)

    def bootstrap(self, n: int = 1000, key: Any = 0, *, chunk_size: int | None = None, progress: bool = False,
                  params: dict | None = None, max_iter: int = 200, method: str = "bfgs",
                  statistic: Any = None):
        """Parametric bootstrap (lme4 ``bootMer``): ``n`` responses simulated
        at the estimates, all refitted by one compiled, vmapped optimiser.

        Args:
            n: replicates. key: int seed or ``jax.random`` key (replicate i
            uses ``fold_in(key, i)``). chunk_size: replicates per compiled
            call (default: bounded by memory). progress: tqdm bar over chunks.
            params: optional ``dict(beta, theta, sigma)`` to simulate at.
            max_iter: iteration limit per replicate.
            method: ``"bfgs"`` (default: quasi-Newton started from this
            fit's exact Hessian, one gradient per iteration) or ``"newton"``
            (exact Hessian every iteration, as :meth:`LMM.fit`; slower).
            statistic: optional JAX function of one replicate's
            :class:`~lmm_jax.core.estimates.Estimates` (``theta``, ``beta``,
            ``sigma``, ``vcov``, ``b``, ``deviance`` at its refit, by this
            fit's REML or ML) returning an array or a pytree of arrays
            (lme4 ``bootMer(FUN=)``), e.g. ``lambda e: e.beta[1] /
            jnp.sqrt(e.vcov[1, 1])``. It is vmapped over each chunk's
            replicates in one compiled call, keyed on the function object:
            the same function again reuses the compiled code, a new
            ``lambda`` per call compiles again (2-5 s for sleepstudy on
            2 cores; the refits' compiled chunk is reused either way).

        Returns:
            A :class:`~lmm_jax.batched.bootstrap.BootstrapResult` (``.table``,
            ``.confint(level, method)``; with a statistic, ``.statistic``,
            ``.statistic_estimate``, ``.statistic_confint(level, method)``).
        """
        from .batched.bootstrap import run_bootstrap

        return run_bootstrap(self, n, key, chunk_size=chunk_size, progress=progress, params=params,
                             max_iter=max_iter, method=method, statistic=statistic)

    # -- printing --------------------------------------------------------------
    def summary(self, ddf: str = "satterthwaite") -> "Summary":
        """lme4's ``summary(lmer(...))``, with lmerTest's df and p-values.

        Args:
            ddf: the df of the coefficients' t tests: ``"satterthwaite"``,
                ``"kenward-roger"``, ``"residual"`` or ``"none"``.

        Returns:
            A :class:`~lmm_jax.report.summary.Summary`, a ``str`` holding the
            text (``print`` shows it, notebooks render its HTML) with the
            tables ``.coefficients``, ``.random_effects`` and
            ``.fit_statistics`` as DataFrames.

        Example:
            >>> print(fit.summary())  # doctest: +SKIP
        """
        from .report.summary import summarize

        return summarize(self, ddf)

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        crit = "REML criterion" if self.reml else "deviance"
        return (f"<LMMResult {self.model.formula!r} by {kind}: {crit} {self.objective:.4f}, "
                f"{self.nobs} obs{', singular' if self.singular else ''}"
                f"{', NOT converged' if not self.converged else ''}>")

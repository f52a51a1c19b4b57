"""glmer's ``summary`` text and ``anova`` likelihood-ratio table for GLMM fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import chdtrc

from ..errors import InferenceError
from ..report.summary import _fmt_p, _random_effects_rows, _stars, _table, correlation_lines

if TYPE_CHECKING:
    from .results import GLMMResult


class GLMMSummary(str):
    """glmer's ``summary`` of a fit: a ``str`` holding the text (``print``
    shows it), with the tables ``coefficients`` (Estimate, Std. Error,
    z value, Pr(>|z|)) and ``random_effects`` (:attr:`GLMMResult.varcorr
    <lmm_jax.glmm.results.GLMMResult.varcorr>`) as DataFrames."""

    coefficients: pd.DataFrame
    random_effects: pd.DataFrame

    def __new__(cls, text: str, coefficients: pd.DataFrame, random_effects: pd.DataFrame) -> "GLMMSummary":
        self = super().__new__(cls, text)
        self.coefficients = coefficients
        self.random_effects = random_effects
        return self

    def __repr__(self) -> str:
        return str(self)


def _method_line(fit: "GLMMResult") -> str:
    how = ("Laplace Approximation" if fit.n_agq == 1
           else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {fit.n_agq}")
    return f"Generalized linear mixed model fit by maximum likelihood ({how}) [lmm_jax]"


def summarize(fit: "GLMMResult") -> GLMMSummary:
    """The :class:`GLMMSummary` of a fit, in glmer's layout."""
    d = fit.design
    fam = fit.family
    lines = [_method_line(fit), f" Family: {fam.name}  ( {fam.link} )", f"Formula: {fit.model.formula}"]
    if d.n_dropped_rows:
        lines.append(f"  ({d.n_dropped_rows} observation(s) deleted due to missingness)")
    lines.append("")
    head = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
    vals = [f"{fit.aic:.1f}", f"{fit.bic:.1f}", f"{fit.loglik:.1f}", f"{fit.deviance:.1f}", f"{fit.df_resid}"]
    lines += _table([head, vals], ["r"] * 5)
    lines.append("")
    q = np.quantile(fit.resid("pearson").to_numpy(), [0, 0.25, 0.5, 0.75, 1.0])
    lines.append("Scaled residuals:")
    lines += _table([["Min", "1Q", "Median", "3Q", "Max"], [f"{v:.4f}" for v in q]], ["r"] * 5)
    lines.append("")
    lines.append("Random effects:")
    vc = fit.varcorr
    records = [(g, v1, v2, vcov, np.nan if v2 else sdcor, sdcor if v2 else np.nan)
               for g, v1, v2, vcov, sdcor in zip(vc.grp, vc.var1, vc.var2, vc.vcov, vc.sdcor)]
    lines += [" " + s for s in _table(_random_effects_rows(records), ["l", "l", "r", "r", "l"])]
    groups = ", ".join(f"{g}, {m}" for g, m in fit.ngroups.items())
    lines.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    lines.append("")
    ct = fit.coef_table
    if ct.empty:
        lines.append("No fixed effect coefficients")
    else:
        lines.append("Fixed effects:")
        rows = [["", "Estimate", "Std. Error", "z value", "Pr(>|z|)", ""]]
        for name, (est, se, z, p) in zip(ct.index, ct.to_numpy()):
            rows.append([str(name), f"{est:.4g}", f"{se:.4g}", f"{z:.3f}", _fmt_p(p), _stars(p)])
        lines += _table(rows, ["l", "r", "r", "r", "r", "l"])
        lines.append("---")
        lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
        lines += correlation_lines(fit.vcov.to_numpy(), list(d.fixef_names))
    if not fit.converged:
        lines.append(f"convergence warning: not converged after {fit.iterations} iterations "
                     f"(|grad| {fit.gradient_norm:.2g})")
    if fit.singular:
        lines.append("boundary (singular) fit: see help('lmm_jax.GLMMResult.singular')")
    return GLMMSummary("\n".join(lines), ct, vc)


def anova(*fits: "GLMMResult") -> pd.DataFrame:
    """Likelihood-ratio tests of nested GLMM fits (lme4's ``anova(m0, m1, ...)``):
    the fits ordered by their number of parameters, each row with ``npar, AIC,
    BIC, logLik, deviance`` and, from the second on, ``Chisq`` (the drop in
    deviance from the row before), ``Df`` and ``Pr(>Chisq)``.

    Raises:
        InferenceError: fewer than two fits, fits on different rows or
            responses, of different families, or by different nAGQ.
    """
    if len(fits) < 2:
        raise InferenceError("anova of GLMMs compares two or more nested fits: anova(m0, m1)")
    first = fits[0]
    for f in fits[1:]:
        same = (f.nobs == first.nobs and np.array_equal(f.design.y, first.design.y)
                and f.family == first.family and f.n_agq == first.n_agq)
        if not same:
            raise InferenceError("anova compares fits of one response on the same rows with the same family and "
                                 "nAGQ; these differ")
    order = sorted(range(len(fits)), key=lambda i: fits[i].npar)
    rows, names = [], []
    prev = None
    for i in order:
        f = fits[i]
        row = {"npar": f.npar, "AIC": f.aic, "BIC": f.bic, "logLik": f.loglik, "deviance": f.deviance,
               "Chisq": np.nan, "Df": np.nan, "Pr(>Chisq)": np.nan}
        if prev is not None:
            chisq = max(prev.deviance - f.deviance, 0.0)
            df = f.npar - prev.npar
            row.update({"Chisq": chisq, "Df": df, "Pr(>Chisq)": chdtrc(df, chisq) if df > 0 else np.nan})
        rows.append(row)
        names.append(f"m{i}")
        prev = f
    out = pd.DataFrame(rows, index=names)
    out["Df"] = out["Df"].astype("Int64")
    return out

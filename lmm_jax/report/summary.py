"""lme4's ``summary(lmer(...))`` text, with lmerTest's df and p-values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..results import LMMResult


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "NA"
    return "< 2e-16" if p < 2e-16 else f"{p:.3g}"


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _table(rows: list[list[str]], align: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        out.append(" ".join(cells).rstrip())
    return out


def format_summary(fit: "LMMResult") -> str:
    """The summary text of a fit (see :meth:`LMMResult.summary`)."""
    d = fit.design
    lines = []
    method = "REML" if fit.reml else "maximum likelihood"
    lines.append(f"Linear mixed model fit by {method} [lmm_jax]")
    lines.append(f"Formula: {d.formula.text}")
    if d.n_dropped_rows:
        lines.append(f"  ({d.n_dropped_rows} observation(s) deleted due to missingness)")
    lines.append("")
    if fit.reml:
        lines.append(f"REML criterion at convergence: {fit.objective:.4f}")
    else:
        head = ["AIC", "BIC", "logLik", "deviance", "df.resid"]
        vals = [f"{fit.aic:.1f}", f"{fit.bic:.1f}", f"{fit.loglik:.1f}", f"{fit.objective:.1f}", f"{fit.df_resid}"]
        lines += _table([head, vals], ["r"] * 5)
    lines.append("")
    r = fit.residuals / fit.sigma
    q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])
    lines.append("Scaled residuals:")
    lines += _table([["Min", "1Q", "Median", "3Q", "Max"], [f"{v:.4f}" for v in q]], ["r"] * 5)
    lines.append("")
    lines.append("Random effects:")
    vc = fit.varcorr
    rows = [["Groups", "Name", "Variance", "Std.Dev.", "Corr"]]
    records = list(zip(vc.grp, vc.var1, vc.var2, vc.vcov, vc.sdcor))     # plain tuples: no frame filtering
    for grp in dict.fromkeys(vc.grp):
        var = [r for r in records if r[0] == grp and r[2] == ""]
        cor = {(r[1], r[2]): r[4] for r in records if r[0] == grp and r[2] != ""}
        names = [r[1] for r in var]
        for i, (_, var1, _, vcov, sd) in enumerate(var):
            cors = [f"{cor[(names[j], names[i])]:.2f}" if (names[j], names[i]) in cor else "" for j in range(i)]
            rows.append([grp if i == 0 else "", var1, f"{vcov:.4g}", f"{sd:.4g}", " ".join(cors)])
    lines += [" " + s for s in _table(rows, ["l", "l", "r", "r", "l"])]
    groups = ", ".join(f"{g}, {m}" for g, m in fit.ngroups.items())
    lines.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    lines.append("")
    ct = fit.coef_table
    if ct.empty:              # lme4's words for y ~ 0 + (1 | g)
        lines.append("No fixed effect coefficients")
    else:
        lines += _fixed_effects_lines(fit, ct)
    if d.dropped_columns:
        lines.append(f"fixed-effect model matrix is rank deficient so dropping {len(d.dropped_columns)} "
                     f"column(s): {', '.join(d.dropped_columns)}")
    if not fit.converged:
        lines.append(f"convergence warning: not converged after {fit.iterations} iterations "
                     f"(|grad| {fit.gradient_norm:.2g})")
    if fit.singular:
        lines.append("boundary (singular) fit: see help('lmm_jax.LMMResult.singular')")
    return "\n".join(lines)


def _fixed_effects_lines(fit: "LMMResult", ct) -> list[str]:
    """The fixed-effects table, lmerTest's columns, and the correlation of the estimates."""
    d = fit.design
    lines = []
    lines.append("Fixed effects:")
    rows = [["", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)", ""]]
    for name, est, se, df, t, p in zip(ct.index, ct.estimate, ct.std_error, ct.df, ct.t, ct.p):
        rows.append([str(name), f"{est:.4g}", f"{se:.4g}", f"{df:.2f}", f"{t:.3f}", _fmt_p(p), _stars(p)])
    lines += _table(rows, ["l", "r", "r", "r", "r", "r", "l"])
    lines.append("---")
    lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    lines.append("Degrees of freedom: Satterthwaite's method (exact derivatives)")
    p = d.p
    if 1 < p <= 12:
        lines.append("")
        lines.append("Correlation of Fixed Effects:")
        V = fit.vcov.to_numpy()
        sd = np.sqrt(np.diag(V))
        R = V / np.outer(sd, sd)
        abbrev = [n[:6] if n != "(Intercept)" else "(Intr)" for n in d.fixef_names]
        rows = [[""] + abbrev[:-1]]
        for i in range(1, p):
            rows.append([d.fixef_names[i]] + [f"{R[i, j]:.3f}" for j in range(i)] + [""] * (p - 1 - i))
        lines += _table(rows, ["l"] + ["r"] * (p - 1))
    return lines

"""lme4's ``summary(lmer(...))`` text, with lmerTest's df and p-values, and
its tables as DataFrames (:class:`Summary`)."""

from __future__ import annotations

import html
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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


COEFFICIENT_COLUMNS = ["estimate", "std_error", "df", "t", "p"]
RANDOM_EFFECT_COLUMNS = ["group", "name", "name2", "parameter", "variance", "std_dev", "correlation", "n_groups"]
FIT_STATISTIC_COLUMNS = ["method", "nobs", "df_resid", "sigma", "loglik", "aic", "bic", "deviance",
                         "reml_criterion"]
DDF_LINES = {
    "satterthwaite": "Satterthwaite's method (exact derivatives)",
    "kenward-roger": "Kenward-Roger's method (standard errors from the adjusted covariance)",
    "residual": "residual, n - p = {df}",
    "none": "none (z tests)",
}


class Summary(str):
    """The summary of a fit: lme4's ``summary(lmer(...))`` text, with
    lmerTest's df and p-values, and its tables as DataFrames.

    A ``Summary`` is a ``str`` whose value is the text, so ``print(s)``,
    ``str(s)``, ``s + "..."``, ``"REML" in s``, ``s.splitlines()`` and
    ``json.dumps(s)`` act on the text; ``repr(s)`` is the text too (an
    interactive prompt shows the layout, not a quoted string) and
    ``_repr_html_`` renders it in notebooks. Its tables (``random_effects``
    and ``fit_statistics`` are built from the fit on first access):

    ``coefficients``
        One row per fixed effect (index: the coefficient names), columns
        ``estimate, std_error, df, t, p``: the t tests under :attr:`ddf`
        (as :meth:`LMMResult.coefs <lmm_jax.results.LMMResult.coefs>`,
        without the intervals).
    ``random_effects``
        One row per variance, covariance and the residual, in lme4's
        ``as.data.frame(VarCorr(fit))`` order. Columns: ``group`` (the
        grouping factor, ``.1``, ``.2``, ... on later terms of a repeated
        factor; ``"Residual"``), ``name`` (the random-effect column; ``""``
        for the residual), ``name2`` (the second column of a correlation
        row, ``""`` elsewhere), ``parameter`` (lme4's parameter name, as
        in :meth:`confint <lmm_jax.results.LMMResult.confint>`:
        ``sd_Days|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``),
        ``variance`` (the variance; the covariance on a correlation row),
        ``std_dev`` (the SD; NaN on a correlation row), ``correlation``
        (NaN elsewhere), ``n_groups`` (levels of the grouping
        factor, nullable integer, <NA> for the residual).
    ``fit_statistics``
        One row, columns ``method`` (``"REML"`` or ``"ML"``), ``nobs``,
        ``df_resid``, ``sigma``, ``loglik`` (the REML log-likelihood for a
        REML fit, as lme4), ``aic``, ``bic``, ``deviance`` (ML fits; NaN
        for REML fits, whose ML deviance at the REML estimates is
        :attr:`LMMResult.deviance <lmm_jax.results.LMMResult.deviance>`),
        ``reml_criterion`` (REML fits; NaN for ML fits). The levels of each
        grouping factor are ``random_effects.n_groups``.
    ``ddf``
        The df method of the t tests: ``"satterthwaite"``,
        ``"kenward-roger"``, ``"residual"`` or ``"none"``.
    """

    coefficients: pd.DataFrame
    ddf: str

    def __new__(cls, text: str, ddf: str, coefficients: pd.DataFrame, fit: "LMMResult | None" = None,
                title: tuple[str, ...] = (), notes: tuple[str, ...] = (),
                groups: tuple[tuple[str, int], ...] = ()) -> "Summary":
        self = super().__new__(cls, text)
        self.ddf = ddf
        self.coefficients = coefficients
        self._fit = fit             # random_effects and fit_statistics are built from it on first use
        self._title = tuple(title)
        self._notes = tuple(notes)
        self._groups = tuple(groups)
        return self

    @cached_property
    def random_effects(self) -> pd.DataFrame:
        """The variance components table, one row per variance, covariance and
        the residual (columns in the class docstring), built on first access."""
        return random_effects_table(self._fit)

    @cached_property
    def fit_statistics(self) -> pd.DataFrame:
        """The one-row table of fit statistics (``method, nobs, df_resid, sigma,
        loglik, aic, bic, deviance, reml_criterion``), built on first access."""
        return fit_statistics_table(self._fit)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles the text and the tables, not the fit."""
        return (_restore, (str(self), self.ddf, self.coefficients, self.random_effects, self.fit_statistics,
                           self._title, self._notes, self._groups))

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return summary_html(self)


def _restore(text: str, ddf: str, coefficients: pd.DataFrame, random_effects: pd.DataFrame,
             fit_statistics: pd.DataFrame, title: tuple[str, ...], notes: tuple[str, ...],
             groups: tuple[tuple[str, int], ...]) -> Summary:
    s = Summary(text, ddf, coefficients, None, title, notes, groups)
    s.__dict__.update(random_effects=random_effects, fit_statistics=fit_statistics)
    return s


def summarize(fit: "LMMResult", ddf: str = "satterthwaite") -> Summary:
    """The :class:`Summary` of a fit (see :meth:`LMMResult.summary
    <lmm_jax.results.LMMResult.summary>`), its t tests with ``ddf``
    (``"satterthwaite"``, ``"kenward-roger"``, ``"residual"``, ``"none"``
    and lmerTest's spellings)."""
    if ddf == "satterthwaite":                 # no scipy.stats: Satterthwaite's table comes with the fit
        coefficients = fit.coef_table
    else:
        from ..inference.tests import normalize_ddf

        ddf = normalize_ddf(ddf)
        coefficients = fit.coef_table if ddf == "satterthwaite" else fit.coefs(ddf)[COEFFICIENT_COLUMNS]
    d = fit.design
    method = "REML" if fit.reml else "maximum likelihood"
    title = [f"Linear mixed model fit by {method} [lmm_jax]", f"Formula: {d.formula.text}"]
    if d.n_dropped_rows:
        title.append(f"  ({d.n_dropped_rows} observation(s) deleted due to missingness)")
    notes = []
    if d.dropped_columns:
        notes.append(f"fixed-effect model matrix is rank deficient so dropping {len(d.dropped_columns)} "
                     f"column(s): {', '.join(d.dropped_columns)}")
    if not fit.converged:
        notes.append(f"convergence warning: not converged after {fit.iterations} iterations "
                     f"(|grad| {fit.gradient_norm:.2g})")
    if fit.singular:
        notes.append("boundary (singular) fit: see help('lmm_jax.LMMResult.singular')")
    ddf_line = "Degrees of freedom: " + DDF_LINES[ddf].format(df=fit.nobs - d.p)

    lines = list(title)
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
    vc = fit.varcorr                    # plain tuples, not frame filtering: the text stays cheap
    records = [(g, v1, v2, vcov, np.nan if v2 else sdcor, sdcor if v2 else np.nan)
               for g, v1, v2, vcov, sdcor in zip(vc.grp, vc.var1, vc.var2, vc.vcov, vc.sdcor)]
    lines += [" " + s for s in _table(_random_effects_rows(records), ["l", "l", "r", "r", "l"])]
    groups = ", ".join(f"{g}, {m}" for g, m in fit.ngroups.items())
    lines.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    lines.append("")
    if coefficients.empty:              # lme4's words for y ~ 0 + (1 | g)
        lines.append("No fixed effect coefficients")
    else:
        lines += _fixed_effects_lines(fit, coefficients, ddf_line)
    lines += notes
    if not coefficients.empty:
        notes.insert(0, ddf_line)
    return Summary("\n".join(lines), ddf, coefficients, fit, tuple(title), tuple(notes), tuple(fit.ngroups.items()))


def random_effects_table(fit: "LMMResult") -> pd.DataFrame:
    """:attr:`Summary.random_effects`: lme4's ``VarCorr`` rows, one column per quantity."""
    vc = fit.varcorr
    lay = fit.design.theta_layout
    terms = fit.design.terms
    order = list(lay.varcorr_order)
    is_cor = vc.var2.to_numpy() != ""
    sdcor = vc.sdcor.to_numpy(dtype=float)
    n_groups = [terms[lay.entries[n][0]].m for n in order] + [pd.NA]
    return pd.DataFrame({
        "group": vc.grp.to_numpy(dtype=object), "name": vc.var1.to_numpy(dtype=object),
        "name2": vc.var2.to_numpy(dtype=object),
        "parameter": [lay.names[n] for n in order] + ["sigma"],
        "variance": vc.vcov.to_numpy(dtype=float),
        "std_dev": np.where(is_cor, np.nan, sdcor), "correlation": np.where(is_cor, sdcor, np.nan),
        "n_groups": pd.array(n_groups, dtype="Int64")}, columns=RANDOM_EFFECT_COLUMNS)


def fit_statistics_table(fit: "LMMResult") -> pd.DataFrame:
    """:attr:`Summary.fit_statistics`: one row of the fit's criteria."""
    return pd.DataFrame({
        "method": ["REML" if fit.reml else "ML"], "nobs": [fit.nobs], "df_resid": [fit.df_resid],
        "sigma": [fit.sigma], "loglik": [fit.loglik], "aic": [fit.aic], "bic": [fit.bic],
        "deviance": [np.nan if fit.reml else fit.objective],
        "reml_criterion": [fit.objective if fit.reml else np.nan]}, columns=FIT_STATISTIC_COLUMNS)


def _random_effects_rows(records: list[tuple]) -> list[list[str]]:
    """lme4's random-effects block: a row per variance, correlations beside them, from the records
    (group, name, name2, variance, std_dev, correlation) of :attr:`Summary.random_effects`."""
    rows = [["Groups", "Name", "Variance", "Std.Dev.", "Corr"]]
    for grp in dict.fromkeys(r[0] for r in records):
        var = [r for r in records if r[0] == grp and r[2] == ""]
        cor = {(r[1], r[2]): r[5] for r in records if r[0] == grp and r[2] != ""}
        names = [r[1] for r in var]
        for i, (_, name, _, variance, sd, _) in enumerate(var):
            cors = [f"{cor[(names[j], names[i])]:.2f}" if (names[j], names[i]) in cor else "" for j in range(i)]
            rows.append([grp if i == 0 else "", name, f"{variance:.4g}", f"{sd:.4g}", " ".join(cors)])
    return rows


def _fixed_effects_rows(ct: pd.DataFrame) -> list[list[str]]:
    rows = [["", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)", ""]]
    for name, est, se, df, t, p in zip(ct.index, ct.estimate, ct.std_error, ct.df, ct.t, ct.p):
        rows.append([str(name), f"{est:.4g}", f"{se:.4g}", f"{df:.2f}", f"{t:.3f}", _fmt_p(p), _stars(p)])
    return rows


def _fixed_effects_lines(fit: "LMMResult", ct: pd.DataFrame, ddf_line: str) -> list[str]:
    """The fixed-effects table, lmerTest's columns, and the correlation of the estimates."""
    d = fit.design
    lines = []
    lines.append("Fixed effects:")
    lines += _table(_fixed_effects_rows(ct), ["l", "r", "r", "r", "r", "r", "l"])
    lines.append("---")
    lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    lines.append(ddf_line)
    return lines + correlation_lines(fit.vcov.to_numpy(), d.fixef_names)


def correlation_lines(V: np.ndarray, names: list[str]) -> list[str]:
    """lme4's "Correlation of Fixed Effects" block for the covariance ``V`` of
    the fixed effects ``names`` (none for one, or more than 12, effects)."""
    p = len(names)
    if not 1 < p <= 12:
        return []
    sd = np.sqrt(np.diag(V))
    R = V / np.outer(sd, sd)
    abbrev = [n[:6] if n != "(Intercept)" else "(Intr)" for n in names]
    rows = [[""] + abbrev[:-1]]
    for i in range(1, p):
        rows.append([names[i]] + [f"{R[i, j]:.3f}" for j in range(i)] + [""] * (p - 1 - i))
    return ["", "Correlation of Fixed Effects:"] + _table(rows, ["l"] + ["r"] * (p - 1))


# -- HTML ---------------------------------------------------------------------------------

_CELL = "padding:1px 8px;text-align:{align}"


def _html_table(rows: list[list[str]], align: list[str]) -> str:
    """A table whose first row is the header; ``align`` "l" or "r" per column."""
    def cells(row: list[str], tag: str) -> str:
        return "".join(f'<{tag} style="{_CELL.format(align="left" if a == "l" else "right")}">'
                       f"{html.escape(c)}</{tag}>" for c, a in zip(row, align))

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows[1:])
    return (f'<table style="border-collapse:collapse;margin:2px 0 8px 0">'
            f"<thead><tr>{cells(rows[0], 'th')}</tr></thead><tbody>{body}</tbody></table>")


def summary_html(s: Summary) -> str:
    """A compact HTML rendering of a :class:`Summary` for notebooks: the title,
    the fit statistics, the random effects and the fixed effects."""
    parts = ['<div class="lmm-jax-summary">']
    title = [html.escape(line.strip()) for line in s._title]
    parts.append(f"<p><b>{title[0]}</b><br>" + "<br>".join(title[1:]) + "</p>" if title else "")
    fs = s.fit_statistics.iloc[0]
    if fs.method == "REML":
        head, vals = ["REML criterion"], [f"{fs.reml_criterion:.4f}"]
    else:
        head = ["AIC", "BIC", "logLik", "deviance"]
        vals = [f"{fs.aic:.1f}", f"{fs.bic:.1f}", f"{fs.loglik:.1f}", f"{fs.deviance:.1f}"]
    head += ["df.resid", "obs"]
    vals += [f"{fs.df_resid}", f"{fs.nobs}"]
    for factor, n in s._groups:
        head.append(f"groups: {factor}")
        vals.append(f"{n}")
    parts.append(_html_table([head, vals], ["r"] * len(head)))
    parts.append("<b>Random effects</b>")
    re = s.random_effects
    records = list(zip(*(re[c] for c in ("group", "name", "name2", "variance", "std_dev", "correlation"))))
    parts.append(_html_table(_random_effects_rows(records), ["l", "l", "r", "r", "l"]))
    parts.append("<b>Fixed effects</b>")
    if s.coefficients.empty:
        parts.append("<p>No fixed effect coefficients</p>")
    else:
        parts.append(_html_table(_fixed_effects_rows(s.coefficients), ["l", "r", "r", "r", "r", "r", "l"]))
    if s._notes:
        parts.append('<p style="font-size:smaller">' + "<br>".join(html.escape(n) for n in s._notes) + "</p>")
    parts.append("</div>")
    return "".join(parts)

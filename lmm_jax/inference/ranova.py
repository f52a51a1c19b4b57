r"""Single-term deletions: likelihood-ratio tests of the random effects
(lmerTest's ``ranova``) and F tests of the marginal fixed-effect terms
(lmerTest's ``drop1``).

``ranova`` follows lmerTest 3.1: the random-effects terms are taken as lme4's
``findbars`` lists them (``(1 | a/b)`` is ``(1 | b:a)`` then ``(1 | a)``;
``(x || g)`` is ``(1 | g)`` and ``(0 + x | g)``). With ``reduce_terms=True``
(lmerTest's default) a term whose left side has terms is reduced, once per
marginal term t of that side, to the term without t, or to ``(1 | g)`` when t
is the side's only term (so ``(Days | Subject)`` is tested against
``(1 | Subject)``, and ``(0 + x | g)`` too, with 0 df when the parameter
counts agree); a term with an intercept only is removed. Each reduced model
is refitted on the fit's rows, with its weights and offset and by the same
criterion (REML or ML); a model with no random effects left is the linear
model, whose (REML) log-likelihood is R's ``logLik.lm``:

    l = (sum log w - N (log 2 pi + 1 - log N + log sum w r^2)) / 2  [- log|R_X|, REML],

N = n (ML) or n - p (REML), R_X the triangular factor of W^{1/2} X.
``LRT = 2 (l_full - l_reduced)`` on ``npar_full - npar_reduced`` df.

``drop1`` tests each fixed-effect term that can be dropped respecting
marginality (R's ``drop.scope``: no other term contains all its variables)
by the F test of its coefficients being zero (identity rows of those
coefficients; lmerTest's type I contrasts when X has one column or the model
one term), or, when lme4 dropped columns of a rank-deficient X, by the
contrasts that span the difference between X and the model matrix without
the term (lmerTest's ``get_Ldiffmat2``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from formulaic import Formula

from ..build.design import R_FUNCTIONS, r_name
from ..build.formula import RandomTerm
from ..distributions import chi2_sf
from ..errors import SingularFitWarning, check_bool
from ..runtime.scope import entry_point
from .anova import doolittle_contrasts, zapsmall
from .tests import F_COLUMNS, f_test, normalize_ddf

if TYPE_CHECKING:
    from ..results import LMMResult

RANOVA_COLUMNS = ["npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)"]


@dataclass(frozen=True)
class Bar:
    """One random-effects term as lme4's ``findbars`` gives it: ``(expr | group)``."""

    expr: str
    factors: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"({self.expr} | {':'.join(self.factors)})"

    @property
    def label(self) -> str:
        """The term as lmerTest names it (calls as R deparses them, grouping factor without backticks)."""
        return f"({r_name(self.expr)} | {':'.join(f.strip('`') for f in self.factors)})"


def _tidy(expr: str) -> str:
    """Spaces as R deparses a formula side: ``1+Days`` -> ``1 + Days``."""
    return re.sub(r"\s+", " ", re.sub(r"\s*([+|])\s*", r" \1 ", expr)).strip()


def _side(expr: str) -> tuple[bool, list]:
    """(has an intercept, formulaic terms without the intercept) of a term's left side."""
    terms = list(Formula(expr))
    intercept = any(str(t) == "1" for t in terms)
    return intercept, [t for t in terms if str(t) != "1"]


def findbars(random: tuple[RandomTerm, ...]) -> list[Bar]:
    """The parsed random terms in lme4's ``findbars`` order and expansion:
    a nested run ``(1 | a), (1 | b:a)`` (the parser's order) is listed
    innermost first, and ``||`` is split into ``(1 | g)`` and ``(0 + t | g)``
    per term t of its left side."""
    runs: list[list[RandomTerm]] = []
    for t in random:
        prev = runs[-1][-1] if runs else None
        nested = (prev is not None and t.expr == prev.expr and t.uncorrelated == prev.uncorrelated
                  and len(t.factors) > len(prev.factors) and t.factors[len(t.factors) - len(prev.factors):]
                  == prev.factors)
        if nested:
            runs[-1].append(t)
        else:
            runs.append([t])
    bars: list[Bar] = []
    for run in runs:
        for t in reversed(run):
            if not t.uncorrelated:
                bars.append(Bar(_tidy(t.expr), t.factors))
                continue
            intercept, terms = _side(t.expr)
            bars += [Bar("1", t.factors)] if intercept else []
            bars += [Bar(f"0 + {term}", t.factors) for term in terms]
    return bars


def marginal_terms(terms: list) -> list:
    """R's ``drop.scope``: the terms whose variables no other term contains."""
    variables = [{str(f) for f in t.factors} for t in terms]
    return [t for i, t in enumerate(terms)
            if not any(j != i and variables[i] <= variables[j] for j in range(len(terms)))]


def reduced_bars(bar: Bar, reduce_terms: bool) -> list[tuple[str, Bar | None]]:
    """lmerTest's ``get_newforms``: (row name, the term that replaces ``bar``, or None to drop it)."""
    intercept, terms = _side(bar.expr)
    scope = marginal_terms(terms) if reduce_terms else []
    if not scope:
        return [(bar.label, None)]
    out = []
    for t in scope:
        rest = [str(u) for u in terms if u is not t]
        expr = "1" if not rest else " + ".join(rest) if intercept else "0 + " + " + ".join(rest)
        out.append((f"{r_name(str(t))} in {bar.label}", Bar(expr, bar.factors)))
    return out


def formula_text(result: "LMMResult", fixed: str | None = None, bars: list[Bar] | None = None) -> str:
    """The fit's formula without its ``offset()`` terms (the refit gets the
    fit's total offset as an array), with another fixed part or other terms."""
    pf = result.design.formula
    fixed = pf.fixed if fixed is None else fixed
    bars = findbars(pf.random) if bars is None else bars
    return " + ".join([f"{pf.response} ~ {fixed}"] + [b.text for b in bars])


def refit(result: "LMMResult", fixed: str | None = None, bars: list[Bar] | None = None) -> "LMMResult":
    """Fit another formula (:func:`formula_text`) to the fit's rows with its
    weights, offset and criterion; a boundary fit of the new model is no
    warning (a reduced model often is one)."""
    d = result.design
    model = type(result.model)(formula_text(result, fixed, bars), d.data, weights=d.weights, offset=d.offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return model.fit(reml=result.reml)


def linear_model_loglik(result: "LMMResult") -> tuple[float, int]:
    """(log-likelihood, df) of the fit's fixed part as a linear model by the
    fit's criterion: R's ``logLik(lm(...), REML = )`` (module docstring)."""
    d = result.design
    n, p = d.X.shape
    w = np.ones(n) if d.weights is None else np.asarray(d.weights, dtype=float)
    y = d.y if d.offset is None else d.y - d.offset
    sw = np.sqrt(w)
    Q, R = np.linalg.qr(sw[:, None] * d.X)
    r = sw * y - Q @ (Q.T @ (sw * y))
    N = n - p if result.reml else n
    val = 0.5 * (np.sum(np.log(w)) - N * (np.log(2 * np.pi) + 1 - np.log(N) + np.log(np.sum(r ** 2))))
    if result.reml:
        val -= np.sum(np.log(np.abs(np.diag(R))))
    return float(val), p + 1


@entry_point
def ranova(result: "LMMResult", reduce_terms: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests of the random effects (lmerTest's ``ranova``).

    Args:
        result: a fit.
        reduce_terms: reduce terms with slopes to simpler ones first
            (lmerTest's default; module docstring); False removes every term
            whole.

    Returns:
        DataFrame with lmerTest's columns ``npar, logLik, AIC, LRT, Df,
        Pr(>Chisq)``: the first row ``<none>`` is the fit, then one row per
        reduced model. ``attrs["formulae"]`` maps each row to the formula
        refitted (without the fit's offset, which is passed as an array).
    """
    reduce_terms = check_bool(reduce_terms, "reduce_terms")
    bars = findbars(result.design.formula.random)
    rows = [("<none>", result.loglik, result.npar)]
    formulae: dict[str, str] = {}
    for i, bar in enumerate(bars):
        for name, new in reduced_bars(bar, reduce_terms):
            kept = bars[:i] + bars[i + 1:] + ([new] if new is not None else [])
            kept = list({(b.expr, b.factors): b for b in kept}.values())   # a duplicate term counts once (R)
            formulae[name] = formula_text(result, bars=kept)
            if kept:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fit = refit(result, bars=kept)
                for w in caught:
                    warnings.warn(f"refitting without {name}: {w.message}", w.category, stacklevel=3)
                rows.append((name, fit.loglik, fit.npar))
            else:
                rows.append((name, *linear_model_loglik(result)))
    ll = np.array([r[1] for r in rows])
    npar = np.array([r[2] for r in rows], dtype=float)
    lrt = 2.0 * (ll[0] - ll)
    df = npar[0] - npar
    p = np.where(df > 0, chi2_sf(lrt, np.where(df > 0, df, 1.0)), np.nan)
    table = pd.DataFrame({"npar": npar.astype(int), "logLik": ll, "AIC": -2.0 * ll + 2.0 * npar, "LRT": lrt,
                          "Df": df, "Pr(>Chisq)": p}, index=[r[0] for r in rows], columns=RANOVA_COLUMNS)
    table.iloc[0, 3:] = np.nan
    table.attrs["heading"] = ("ANOVA-like table for random-effects: Single term deletions\n\nModel:\n"
                              + formula_text(result))
    table.attrs["formulae"] = formulae
    return table


def _full_model_matrix(result: "LMMResult") -> np.ndarray:
    d = result.design
    mm = d.fixed_spec.get_model_matrix(d.data, context=R_FUNCTIONS)
    return np.asarray(mm, dtype=float)


def difference_contrasts(X0: np.ndarray, X: np.ndarray) -> np.ndarray:
    """lmerTest's ``get_Ldiffmat2``: contrasts of X's coefficients spanning
    what X adds to X0 (empty when nothing)."""
    R = X - X0 @ np.linalg.lstsq(X0, X, rcond=None)[0] if X0.shape[1] else X.copy()
    R = R[:, np.sum(np.abs(R), axis=0) > 1e-8]
    if R.shape[1] == 0:
        return np.zeros((0, X.shape[1]))
    Q, _ = np.linalg.qr(X.T @ R)
    return zapsmall(Q).T


@entry_point
def drop1(result: "LMMResult", ddf: str = "satterthwaite") -> pd.DataFrame:
    """F tests of the fixed-effect terms that can be dropped (lmerTest's ``drop1``).

    Args:
        result: a fit.
        ddf: ``"satterthwaite"`` (default), ``"kenward-roger"`` (REML fits),
            ``"residual"`` or ``"none"``.

    Returns:
        DataFrame with lmerTest's columns ``Sum Sq, Mean Sq, NumDF, DenDF,
        F value, Pr(>F)``, one row per marginal term (module docstring); a
        term with nothing left to test (rank deficiency) has a row of NaN.
        ``attrs["hypotheses"]`` holds each term's contrast matrix.
    """
    ddf = normalize_ddf(ddf)
    d = result.design
    pos = {full: i for i, full in enumerate(d.kept_columns)}
    terms = [t for t in d.fixed_spec.term_indices if str(t) != "1"]
    cols = {t: [pos[c] for c in d.fixed_spec.term_indices[t] if c in pos] for t in terms}
    scope = marginal_terms(terms)
    p = d.p
    if d.dropped_columns:
        X_full = _full_model_matrix(result)
        hypotheses = {}
        for t in scope:
            others = [c for u, cs in d.fixed_spec.term_indices.items() if u is not t for c in cs]
            hypotheses[t] = difference_contrasts(X_full[:, sorted(others)], d.X)
    elif p <= 1 or len(terms) <= 1:
        L = doolittle_contrasts(d.X.T @ d.X) if p > 1 else np.ones((p, p))
        hypotheses = {t: L[cols[t]] for t in scope}
    else:
        hypotheses = {t: np.eye(p)[cols[t]] for t in scope}
    rows = [f_test(result, L, ddf) if L.shape[0] else {c: np.nan for c in F_COLUMNS} for L in hypotheses.values()]
    index = [r_name(str(t)) for t in hypotheses]
    table = pd.DataFrame(rows, index=index, columns=F_COLUMNS)
    title = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's", "residual": "residual",
             "none": "asymptotic (infinite)"}[ddf]
    table.attrs["heading"] = (f"Single term deletions using {title} method:\n\nModel:\n"
                              f"{result.model.formula}")
    table.attrs["hypotheses"] = {name: pd.DataFrame(L, columns=list(d.fixef_names))
                                 for name, L in zip(index, hypotheses.values())}
    return table

r"""Variance decomposition, R-squared and intraclass correlation of a fit, as
R's performance (``r2_nakagawa``, ``icc``) and insight (``get_variance``)
compute them for ``lmer`` fits.

Nakagawa & Schielzeth (2013, Methods Ecol. Evol. 4:133) with Johnson's
(2014, Methods Ecol. Evol. 5:944) extension to random slopes:

    var_fixed    = var(X beta)                  (sample variance, divisor n - 1; the offset is left out)
    var_random   = sum_g mean_i z_i' Sigma_g z_i
    var_residual = sigma^2
    R2_marginal    = var_fixed / (var_fixed + var_random + var_residual)
    R2_conditional = (var_fixed + var_random) / (var_fixed + var_random + var_residual)
    ICC_adjusted   = var_random / (var_random + var_residual)
    ICC_unadjusted = var_random / (var_fixed + var_random + var_residual)

As insight 0.19 computes ``var_random``: z_i holds the term's columns taken
from the fixed-effects model matrix X by name (a column of ones stands in for
``(Intercept)`` when X has none; a random-effects column that is not a column
of X is left out, with its rows and columns of Sigma_g), and the sum runs over
the grouping factors, one term each: the first term of a factor in lme4's
``VarCorr`` order. With ``(x || g)``, which lme4 splits into ``(1 | g)`` and
``(0 + x | g)``, the slope's variance is therefore not counted, exactly as in
performance. A fit with a relative SD (a diagonal of theta) below
``tolerance`` has no ``var_random``: R2_conditional and both ICCs are NaN and
R2_marginal leaves the random effects out (performance's behaviour, with a
:class:`~lmm_jax.errors.SingularFitWarning`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from formulaic import Formula

from ..errors import InferenceError, SingularFitWarning, check_bool
from ..runtime.scope import entry_point
from .ranova import refit

if TYPE_CHECKING:
    from ..results import LMMResult

TOLERANCE = 1e-5     # insight's tolerance on theta's diagonal for a singular fit


@dataclass(frozen=True)
class VarianceComponents:
    """insight's ``get_variance`` of a linear mixed model.

    Attributes:
        var_fixed: variance of the fixed-effects predictions X beta.
        var_random: mean variance of the random effects (module docstring);
            NaN for a singular fit.
        var_residual: sigma^2.
        var_intercept: per term with an intercept, the intercept's variance,
            keyed by lme4's group name (``g``, ``g.1`` for a second term of g).
        singular: a diagonal of theta is below the tolerance.
    """

    var_fixed: float
    var_random: float
    var_residual: float
    var_intercept: dict[str, float]
    singular: bool


def _variables(expr: str) -> set[str]:
    return {v.strip("`") for v in Formula(expr).required_variables}


def random_slopes_in_fixed(result: "LMMResult") -> bool:
    """insight's ``.random_slopes_in_fixed``: every variable of a random-effects
    term's expression is a variable of the fixed part."""
    pf = result.design.formula
    slopes = set().union(*(_variables(t.expr) for t in pf.random))
    return slopes <= _variables(pf.fixed)


def variance_components(result: "LMMResult", tolerance: float = TOLERANCE) -> VarianceComponents:
    """The variance decomposition of ``result`` (insight's ``get_variance``; module docstring)."""
    d = result.design
    lay = d.theta_layout
    theta = np.asarray(result.theta)
    singular = bool(np.any(np.abs(theta[np.flatnonzero(lay.diagonal)]) < tolerance))
    X = d.X
    eta = X @ result.beta
    var_fixed = float(np.var(eta - eta[0], ddof=1))     # shifted: exactly 0 for a constant X beta
    columns = {name: X[:, j] for j, name in enumerate(d.fixef_names)}
    if not any(name.startswith("(Intercept)") for name in columns):
        columns["(Intercept)"] = np.ones(d.n)
    names = lay.group_names
    var_intercept = {names[t]: float(result.covariances[t][0, 0])
                     for t, term in enumerate(d.terms) if term.columns[0].startswith("(Intercept)")}
    var_random = float("nan")
    if not singular:
        var_random = 0.0
        for t, term in enumerate(d.terms):
            if names[t] != term.group:       # a second or later term of its grouping factor
                continue
            keep = [j for j, c in enumerate(term.columns) if c in columns]
            if not keep:
                continue
            Z = np.column_stack([columns[term.columns[j]] for j in keep])
            Sigma = result.covariances[t][np.ix_(keep, keep)]
            var_random += float(np.sum((Z @ Sigma) * Z)) / d.n
    return VarianceComponents(var_fixed, var_random, float(result.sigma ** 2), var_intercept, singular)


def _check(result: "LMMResult", what: str, tolerance: float) -> VarianceComponents:
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise InferenceError(f"tolerance must be a number >= 0, got {tolerance!r}")
    v = variance_components(result, tolerance)
    if v.singular:
        warnings.warn(f"can't compute the {what} with the random effects: some variance components are (nearly) "
                      f"zero, theta's diagonal below tolerance={tolerance:g} (a singular fit); respecify the random "
                      "effects, or lower tolerance to force the calculation", SingularFitWarning, stacklevel=3)
    if not random_slopes_in_fixed(result):
        warnings.warn(f"random slopes are not present as fixed effects; this inflates the conditional {what} "
                      "(add the slopes' variables to the fixed part)", UserWarning, stacklevel=3)
    return v


def _has_slopes(result: "LMMResult") -> bool:
    return any(_variables(t.expr) for t in result.design.formula.random)


@entry_point
def r2(result: "LMMResult", by_group: bool = False, tolerance: float = TOLERANCE) -> pd.Series | pd.DataFrame:
    """Nakagawa's marginal and conditional R-squared (performance's ``r2_nakagawa``).

    Args:
        result: a fit.
        by_group: explained variance by level instead (performance's
            ``by_group = TRUE``): ``Level 1`` is ``1 - sigma^2 / sigma0^2`` and
            each grouping factor's ``1 - var_intercept / var_intercept0``, where
            0 marks the null model (the same random effects, fixed part ``1``,
            refitted on the same rows with the same weights, offset and
            criterion). Grouping factors that are interactions or nested
            (``a:b``) have no such row, and then raise (performance fails too).
        tolerance: a diagonal of theta below it makes the fit singular.

    Returns:
        Series ``R2_conditional, R2_marginal`` (``attrs["variances"]``: the
        :class:`VarianceComponents`); with ``by_group``, a DataFrame with
        columns ``Level, R2``.
    """
    by_group = check_bool(by_group, "by_group")
    v = _check(result, "R-squared", tolerance)
    if by_group:
        if _has_slopes(result):
            warnings.warn("the model contains random slopes: the explained variance by level is not accurate",
                          UserWarning, stacklevel=2)
        groups = list(dict.fromkeys(f.strip("`") for t in result.design.formula.random for f in t.factors))
        missing = [g for g in groups if g not in v.var_intercept]
        if missing:
            raise InferenceError(f"no random intercept of its own for grouping factor(s) {missing} (nested or "
                                 "interaction factors such as (1 | a/b)): the explained variance by level is only "
                                 "defined for plain grouping factors with an intercept; use r2() without by_group")
        null = refit(result, fixed="1")
        v0 = variance_components(null, tolerance)
        rows = [("Level 1", 1.0 - v.var_residual / v0.var_residual)]
        rows += [(g, 1.0 - v.var_intercept[g] / v0.var_intercept[g]) for g in groups]
        out = pd.DataFrame(rows, columns=["Level", "R2"])
        out.attrs["variances"] = v
        out.attrs["null_variances"] = v0
        return out
    total = v.var_fixed + v.var_random + v.var_residual
    if v.singular:
        values = [float("nan"), v.var_fixed / (v.var_fixed + v.var_residual)]
    else:
        values = [(v.var_fixed + v.var_random) / total, v.var_fixed / total]
    out = pd.Series(values, index=["R2_conditional", "R2_marginal"], name="R2")
    out.attrs["variances"] = v
    return out


@entry_point
def icc(result: "LMMResult", by_group: bool = False, tolerance: float = TOLERANCE) -> pd.Series | pd.DataFrame:
    """Intraclass correlation, adjusted and unadjusted (performance's ``icc``).

    Args:
        result: a fit.
        by_group: one ICC per term with an intercept instead,
            ``var_intercept / (var_random + var_residual)`` (performance's
            ``by_group = TRUE``; inaccurate with random slopes, with a warning).
        tolerance: a diagonal of theta below it makes the fit singular (all NaN).

    Returns:
        Series ``ICC_adjusted, ICC_unadjusted`` (``attrs["variances"]``: the
        :class:`VarianceComponents`); with ``by_group``, a DataFrame with
        columns ``Group, ICC``.
    """
    by_group = check_bool(by_group, "by_group")
    v = _check(result, "ICC", tolerance)
    if by_group:
        if _has_slopes(result):
            warnings.warn("the model contains random slopes: the ICCs by grouping factor are not accurate",
                          UserWarning, stacklevel=2)
        out = pd.DataFrame({"Group": list(v.var_intercept),
                            "ICC": [vi / (v.var_random + v.var_residual) for vi in v.var_intercept.values()]})
    else:
        out = pd.Series([v.var_random / (v.var_random + v.var_residual),
                         v.var_random / (v.var_fixed + v.var_random + v.var_residual)],
                        index=["ICC_adjusted", "ICC_unadjusted"], name="ICC")
    out.attrs["variances"] = v
    return out

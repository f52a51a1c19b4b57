r"""Predictions from a fit, on the model's rows or on new data (lme4's ``predict``).

    yhat = X_new beta + sum over the included terms t of Z_t,new b_t[level]

The fixed part's model matrix for new data comes from the fitted formulaic
``ModelSpec`` (same factor levels and contrasts), restricted to the columns
kept after the rank check; each random term's columns come from re-evaluating
its expression with the spec learned on the fitting data. Rows whose level of
a grouping factor was not seen in the fit get that term's population value
(b = 0) when ``allow_new_levels`` is True, as lme4 does. ``se_fit`` gives the
standard errors of the fixed part, ``sqrt(diag(X_new vcov(beta) X_new'))``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..build.design import as_frame, quote_names
from ..errors import DataError, FormulaError, check_bool
from ..build.formula import parse_formula

if TYPE_CHECKING:
    from ..build.design import TermDesign
    from ..results import LMMResult

_SPLIT = re.compile(r"^(.*)\[(\d+)\]$")   # a column of a split (||) term: "expr[c]"


def _included_terms(result: "LMMResult", re_form: Any) -> list[int]:
    """Indices of the design's random terms that ``re_form`` keeps."""
    terms = result.design.terms
    if re_form is None:
        return list(range(len(terms)))
    if re_form is np.nan or (isinstance(re_form, float) and np.isnan(re_form)):
        return []
    text = str(re_form).strip()
    if text.replace(" ", "") in ("~0", "NA", "0", "~1", ""):
        return []
    if "|" not in text:
        raise FormulaError(f"re_form {re_form!r} names no random-effects term; use None (all terms), '~0' (none) "
                           "or e.g. '~(1 | Subject)'")
    pf = parse_formula(("y " + text) if text.startswith("~") else text)
    wanted = {(t.group, t.expr.replace(" ", "")) for t in pf.random}
    groups = {g for g, _ in wanted}
    keep = []
    for i, t in enumerate(terms):
        m = _SPLIT.match(t.expr)
        expr = (m.group(1) if m else t.expr).replace(" ", "")
        if (t.group, expr) in wanted or (t.group in groups and not any(e for g, e in wanted if g == t.group)):
            keep.append(i)
    unknown = groups - {terms[i].group for i in keep}
    if unknown:
        raise FormulaError(f"re_form {re_form!r} has terms for {sorted(unknown)} that are not in the model; the "
                           f"model's random terms are {[f'({t.expr} | {t.group})' for t in terms]}")
    return keep


def _term_columns(result: "LMMResult", t: "TermDesign", data: pd.DataFrame) -> np.ndarray:
    m = _SPLIT.match(t.expr)
    expr, col = (m.group(1), int(m.group(2))) if m else (t.expr, None)
    spec = model_matrix(quote_names(expr, list(result.design.data.columns)), result.design.data,
                        na_action="ignore").model_spec
    Z = np.asarray(spec.get_model_matrix(data, na_action="ignore"), dtype=float)
    return Z[:, [col]] if col is not None else Z


def _level_codes(result: "LMMResult", t: "TermDesign", data: pd.DataFrame) -> np.ndarray:
    """Index of each row's level in the fitted levels (-1 for a new level)."""
    parts = []
    for f in t.factors:
        if f not in data.columns:
            raise DataError(f"newdata has no column {f!r} (grouping factor of ({t.expr} | {t.group})); add it, or "
                            "leave this term out with re_form")
        col = data[f]
        orig = result.design.data[f]
        if pd.api.types.is_numeric_dtype(orig.dtype) and not isinstance(orig.dtype, pd.CategoricalDtype):
            try:
                col = col.astype(orig.dtype)
            except (TypeError, ValueError):
                pass
        parts.append(col.astype(str).to_numpy())
    labels = parts[0] if len(parts) == 1 else np.array([":".join(v) for v in zip(*parts)], dtype=object)
    index = {str(lv): i for i, lv in enumerate(t.levels)}
    return np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)


def fixed_matrix(result: "LMMResult", newdata: Any) -> np.ndarray:
    """X for new data: the fitted ModelSpec's columns kept after the rank check."""
    d = result.design
    data = as_frame(newdata)
    try:
        X = np.asarray(d.fixed_spec.get_model_matrix(data, na_action="ignore"), dtype=float)
    except Exception as e:  # formulaic: missing columns, unseen factor levels
        raise DataError(f"cannot build the fixed-effects columns for newdata: {e}") from None
    return X[:, list(d.kept_columns)] if d.kept_columns else X


def predict(result: "LMMResult", newdata: Any = None, re_form: Any = None, allow_new_levels: bool = True,
            se_fit: bool = False) -> "np.ndarray | pd.DataFrame":
    """Predicted responses (see the module docstring).

    Args:
        result: the fit.
        newdata: a DataFrame (or dict of columns); None for the fitted rows.
        re_form: None for all random terms, ``"~0"`` (or ``np.nan``) for the
            population level, or a formula of bars such as ``"~(1 | Subject)"``.
        allow_new_levels: give unseen levels the population prediction; if
            False they raise :class:`~lmm_jax.errors.DataError`.
        se_fit: also return the SEs of the fixed part.

    Returns:
        The predictions (n_new,), or with ``se_fit`` a DataFrame with
        columns ``fit, se_fit``.
    """
    allow_new_levels, se_fit = check_bool(allow_new_levels, "allow_new_levels"), check_bool(se_fit, "se_fit")
    d = result.design
    keep = _included_terms(result, re_form)
    if newdata is None:
        X = d.X
        out = X @ result.beta
        for i in keep:
            t = d.terms[i]
            out = out + np.sum(t.Z * result.b[i][t.codes], axis=1)
    else:
        data = as_frame(newdata)
        X = fixed_matrix(result, data)
        out = X @ result.beta
        for i in keep:
            t = d.terms[i]
            codes = _level_codes(result, t, data)
            new = codes < 0
            if new.any() and not allow_new_levels:
                bad = sorted(set(map(str, data.loc[new, list(t.factors)].astype(str).agg(":".join, axis=1))))
                raise DataError(f"newdata has level(s) {bad[:10]} of {t.group!r} not seen in the fit; pass "
                                "allow_new_levels=True for population-level predictions on them")
            Z = _term_columns(result, t, data)
            b = np.where(new[:, None], 0.0, result.b[i][np.where(new, 0, codes)])
            out = out + np.sum(Z * b, axis=1)
    if not se_fit:
        return out
    V = result.vcov.to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    return pd.DataFrame({"fit": out, "se_fit": se})

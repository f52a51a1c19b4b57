r"""Predictions from a fit, on the model's rows or on new data (lme4's ``predict``).

    yhat = X_new beta + sum over the included terms t of Z_t,new b_t[level]

The fixed part's model matrix for new data comes from the fitted formulaic
``ModelSpec`` (same factor levels and contrasts), restricted to the columns
kept after the rank check; each random term's columns come from re-evaluating
its expression with the spec learned on the fitting data. Grouping levels are
matched by value, whatever the column's dtype. A level not seen in the fit (or
a missing value) raises :class:`~lmm_jax.errors.DataError` by default, as in
lme4; with ``allow_new_levels=True`` such rows get that term's population value
(b = 0), lme4's ``allow.new.levels = TRUE``. ``se_fit`` gives the
standard errors of the fixed part, ``sqrt(diag(X_new vcov(beta) X_new'))``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..runtime.scope import entry_point
from ..build.design import R_FUNCTIONS, as_frame, formulaic_text, level_codes, new_offset
from ..errors import DataError, FormulaError, check_bool
from ..build.formula import parse_formula
from .fitted import check_na_action, on_rows

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
    spec = model_matrix(formulaic_text(expr, result.design.data), result.design.data, na_action="ignore",
                        context=R_FUNCTIONS).model_spec
    Z = np.asarray(spec.get_model_matrix(data, na_action="ignore", context=R_FUNCTIONS), dtype=float)
    return Z[:, [col]] if col is not None else Z


def _factor_labels(orig: pd.Series, new: pd.Series) -> np.ndarray:
    """The fitted level label of each value of ``new`` (None where the value
    was not in the fit, or is missing), matched by value first: pandas and
    the design write datetimes and float32 numbers differently ("2024-01-01"
    vs "2024-01-01 00:00:00"), so labels do not round-trip through text.
    Values of another type (the number 1 for the text level "1") are then
    matched by their text, as R matches a factor's levels."""
    labels, codes = level_codes(orig)                 # the design's own coding of this column
    _, first = np.unique(pd.factorize(orig)[0], return_index=True)   # a row of each distinct fitted value
    known, label_of = orig.iloc[first].to_numpy(), labels[codes[first]]
    values = new.to_numpy()
    kind = orig.dtype.kind if isinstance(orig.dtype, np.dtype) else ""
    if kind and new.dtype != orig.dtype and pd.api.types.is_numeric_dtype(new.dtype) and kind in "iufb":
        # numbers: float32 levels match at float32 precision, integer levels only equal numbers (1.5 is new)
        known, values = (known, values.astype(orig.dtype)) if kind == "f" else (known.astype(float),
                                                                                 values.astype(float))
    elif kind in ("m", "M") and new.dtype != orig.dtype:
        try:
            values = new.astype(orig.dtype).to_numpy()
        except (TypeError, ValueError):
            pass
    pos = pd.Index(known).get_indexer(values)
    out = np.where(pos >= 0, label_of[np.maximum(pos, 0)], None)
    unmatched = (pos < 0) & new.notna().to_numpy()
    if unmatched.any():   # other types: by text, as R matches factor levels (1 in new data is level "1")
        text = set(labels.tolist())
        out[unmatched] = [str(v) if str(v) in text else None for v in values[unmatched]]
    return out


def _level_codes(result: "LMMResult", t: "TermDesign", data: pd.DataFrame) -> np.ndarray:
    """Index of each row's level in the fitted levels (-1 for a new level or a missing value)."""
    parts = []
    for f in t.factors:
        if f not in data.columns:
            raise DataError(f"newdata has no column {f!r} (grouping factor of ({t.expr} | {t.group})); add it, or "
                            "leave this term out with re_form")
        parts.append(_factor_labels(result.design.data[f], data[f]))
    index = {str(lv): i for i, lv in enumerate(t.levels)}
    if len(parts) == 1:
        return np.array([index.get(v, -1) if v is not None else -1 for v in parts[0]], dtype=np.int64)
    return np.array([-1 if any(v is None for v in vs) else index.get(":".join(vs), -1) for vs in zip(*parts)],
                    dtype=np.int64)


def _raise_new_levels(t: "TermDesign", data: pd.DataFrame, new: np.ndarray) -> None:
    """lme4's error for levels (or missing values) of a grouping factor not seen in the fit."""
    cols = data.loc[new, list(t.factors)]
    missing = [f for f in t.factors if cols[f].isna().any()]
    if missing:
        rows = list(cols.index[cols[missing].isna().any(axis=1)][:5])
        raise DataError(f"newdata has missing values in the grouping factor column(s) {missing} (rows {rows}); "
                        "drop those rows, or pass allow_new_levels=True for population-level predictions on them "
                        "(as lme4's allow.new.levels does for NA)")
    bad = sorted(set(cols.astype(str).agg(":".join, axis=1)))
    raise DataError(f"newdata has level(s) {bad[:10]} of {t.group!r} not seen in the fit; check them for typos, "
                    "or pass allow_new_levels=True for population-level predictions (b = 0) on them")


_CATEGORICAL_CALL = re.compile(r"^C\(\s*`?([^`,]+?)`?\s*(,.*)?\)$")


def check_fixed_columns(result: "LMMResult", data: pd.DataFrame) -> None:
    """New data for the fixed part must have the fitted columns, with the
    fitted kinds, and only the fitted levels of its factors (formulaic would
    turn an unseen level into a row of zeros: the reference level's
    prediction).

    Raises:
        DataError: naming the column and the offending values or types.
    """
    d = result.design
    spec = d.fixed_spec
    response = d.formula.response.strip("`")
    missing = sorted(v for v in spec.required_variables if v not in data.columns and v != response)
    if missing:
        raise DataError(f"newdata has no column(s) {missing}, which the fixed part "
                        f"{d.formula.fixed!r} uses; add them")
    for name, (kind, state) in spec.encoder_state.items():
        m = _CATEGORICAL_CALL.match(name)
        col = m.group(1).strip() if m else name
        if col not in data.columns or col not in d.data.columns:
            continue                          # an expression of several columns: formulaic checks it
        new = data[col]
        if getattr(kind, "value", kind) == "categorical":
            levels = list(state.get("categories", []))
            present = new.dropna()
            unseen = sorted({str(v) for v, ok in zip(present, present.isin(levels)) if not ok})
            if unseen:
                fitted_type = type(levels[0]).__name__ if levels else "?"
                typed = {type(v).__name__ for v in present} - {fitted_type}
                hint = (f" (newdata's values are {sorted(typed)}, the fitted levels {fitted_type}: convert the "
                        "column to the fitted type)" if typed else "")
                raise DataError(f"newdata column {col!r} has level(s) {unseen[:10]} not seen in the fit (levels "
                                f"{[str(v) for v in levels][:10]}){hint}; a fixed-effect factor has no estimate for "
                                "a new level: remove those rows or recode them")
        elif name == col and not (pd.api.types.is_numeric_dtype(new) or pd.api.types.is_bool_dtype(new)):
            raise DataError(f"newdata column {col!r} has dtype {new.dtype} (e.g. {new.dropna().iloc[0]!r}) but was "
                            f"numeric in the fit ({d.data[col].dtype}); convert it with pd.to_numeric")


def fixed_matrix(result: "LMMResult", newdata: Any) -> np.ndarray:
    """X for new data: the fitted ModelSpec's columns kept after the rank check."""
    d = result.design
    data = as_frame(newdata)
    check_fixed_columns(result, data)
    try:
        X = np.asarray(d.fixed_spec.get_model_matrix(data, na_action="ignore", context=R_FUNCTIONS), dtype=float)
    except Exception as e:  # formulaic: missing columns, unseen factor levels
        raise DataError(f"cannot build the fixed-effects columns for newdata: {e}") from None
    return X[:, list(d.kept_columns)] if d.kept_columns else X


@entry_point
def predict(result: "LMMResult", newdata: Any = None, re_form: Any = None, allow_new_levels: bool = False,
            se_fit: bool = False, offset: Any = None,
            na_action: str | None = None) -> "np.ndarray | pd.Series | pd.DataFrame":
    """Predicted responses (see the module docstring).

    Args:
        result: the fit.
        newdata: a pandas or polars DataFrame (or dict of columns); None for the fitted rows.
        re_form: None for all random terms, ``"~0"`` (or ``np.nan``) for the
            population level, or a formula of bars such as ``"~(1 | Subject)"``.
        allow_new_levels: give unseen levels (and missing values) of a
            grouping factor the population prediction; if False (the
            default, lme4's) they raise :class:`~lmm_jax.errors.DataError`
            naming them, so a typo in a label is not silently a population
            prediction.
        se_fit: also return the SEs of the fixed part.
        offset: with ``newdata``, the offset of its rows (a column name or an
            array) where the model was fitted with an ``offset=`` array; an
            ``offset=`` column and the formula's ``offset()`` terms are
            evaluated on ``newdata`` (lme4's ``predict`` does the same).
        na_action: None (default): an array, one prediction per fitted row
            or per row of ``newdata`` (NaN where a covariate is missing).
            ``"omit"`` or ``"exclude"``: a Series labelled by the rows'
            index (lme4's ``na.action``). On the fitted rows, ``"omit"`` gives
            the rows used and ``"exclude"`` every row of the data, NaN on
            those dropped for missing values; on ``newdata``, ``"exclude"``
            gives every row and ``"omit"`` drops those predicted NaN.

    Returns:
        The predictions (n_new,), or with ``se_fit`` a DataFrame with
        columns ``fit, se_fit`` (indexed like the Series with ``na_action``).
    """
    allow_new_levels, se_fit = check_bool(allow_new_levels, "allow_new_levels"), check_bool(se_fit, "se_fit")
    if na_action is not None:
        check_na_action(na_action)
    d = result.design
    keep = _included_terms(result, re_form)
    if newdata is None:
        X = d.X
        out = X @ result.beta if d.offset is None else X @ result.beta + d.offset
        for i in keep:
            t = d.terms[i]
            out = out + np.sum(t.Z * result.b[i][t.codes], axis=1)
    else:
        data = as_frame(newdata)
        X = fixed_matrix(result, data)
        out = X @ result.beta + new_offset(d, data, offset)
        for i in keep:
            t = d.terms[i]
            codes = _level_codes(result, t, data)
            new = codes < 0
            if new.any() and not allow_new_levels:
                _raise_new_levels(t, data, new)
            Z = _term_columns(result, t, data)
            b = np.where(new[:, None], 0.0, result.b[i][np.where(new, 0, codes)])
            out = out + np.sum(Z * b, axis=1)
    se = None
    if se_fit:
        V = result.vcov.to_numpy()
        se = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    if na_action is None:
        return out if se is None else pd.DataFrame({"fit": out, "se_fit": se})
    if newdata is None:
        fit = on_rows(out, d, na_action, "fit")
        if se is None:
            return fit
        return pd.DataFrame({"fit": fit.to_numpy(), "se_fit": on_rows(se, d, na_action).to_numpy()}, index=fit.index)
    rows = ~np.isnan(out) if na_action == "omit" else np.ones(len(out), dtype=bool)
    if se is None:
        return pd.Series(out[rows], index=data.index[rows], name="fit")
    return pd.DataFrame({"fit": out[rows], "se_fit": se[rows]}, index=data.index[rows])

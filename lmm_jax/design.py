"""Model design built eagerly from a formula and a data frame.

Everything here is numpy/pandas/formulaic, run once per model: the response
``y``, the fixed-effects matrix ``X`` (rank-deficient columns dropped, as lme4
does), and for each random-effects term its grouping levels, the level code of
every row and the term's columns of Z (``Z_t`` is never formed as an n x q
matrix: row i of term t holds ``Z_t[i]`` in block ``codes_t[i]``).

Terms are ordered by number of levels, largest first (lme4's order, and the
one the blocked Cholesky in :mod:`lmm_jax.likelihood` wants).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from .errors import DataError, FormulaError, RankDeficiencyWarning
from .formula import ParsedFormula, RandomTerm, parse_formula

_RANK_TOL = 1e-7  # lme4's rankMatrix / qr tolerance


@dataclass(frozen=True, eq=False)
class TermDesign:
    """One random-effects term evaluated on the data.

    Attributes:
        group: grouping factor name as lme4 prints it (``Subject``,
            ``cask:batch``).
        columns: names of the term's columns (``("(Intercept)", "Days")``).
        levels: the m level labels (strings).
        codes: (n,) int32, level index of each row.
        Z: (n, k) float64, the term's model-matrix columns.
        expr: the formulaic expression for the columns (for new data).
    """

    group: str
    columns: tuple[str, ...]
    levels: np.ndarray
    codes: np.ndarray
    Z: np.ndarray
    expr: str
    factors: tuple[str, ...]

    @property
    def k(self) -> int:
        return self.Z.shape[1]

    @property
    def m(self) -> int:
        return len(self.levels)


@dataclass(frozen=True, eq=False)
class Design:
    """The model's data, ready for cross-products.

    Attributes:
        formula: the parsed formula.
        y: (n,) response.
        X: (n, p) fixed-effects matrix.
        fixef_names: the p column names in lme4 style (``(Intercept)``,
            ``recipeB:temp``).
        terms: random-effects terms, largest number of levels first.
        dropped_columns: names of X columns dropped for rank deficiency.
        n_dropped_rows: rows dropped for missing values (lme4's na.omit).
        data: the rows used (index kept from the input).
    """

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixef_names: tuple[str, ...]
    terms: tuple[TermDesign, ...]
    dropped_columns: tuple[str, ...]
    n_dropped_rows: int
    data: pd.DataFrame
    fixed_spec: Any = field(repr=False)
    kept_columns: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(t.k for t in self.terms)

    @property
    def ms(self) -> tuple[int, ...]:
        return tuple(t.m for t in self.terms)


def r_name(name: str) -> str:
    """Turn a formulaic column name into R's: ``recipe[T.B]:temp`` ->
    ``recipeB:temp``, ``Intercept`` -> ``(Intercept)``."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[(?:T\.)?([^\]]*)\]", r"\1", name)


def as_frame(data: Any) -> pd.DataFrame:
    """Accept a DataFrame or a mapping of equal-length arrays."""
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, Mapping):
        try:
            df = pd.DataFrame({k: np.asarray(v) if not isinstance(v, pd.Series) else v for k, v in data.items()})
        except ValueError as e:
            raise DataError(f"data is a mapping whose columns could not form a table ({e}); give columns of "
                            "equal length") from None
    else:
        raise DataError(f"data must be a pandas DataFrame or a dict of equal-length arrays, got "
                        f"{type(data).__name__}; convert it with pandas.DataFrame(...)")
    if df.columns.duplicated().any():
        dup = sorted(set(map(str, df.columns[df.columns.duplicated()])))
        raise DataError(f"data has duplicated column names {dup}; rename them so each name is unique")
    if len(df) == 0:
        raise DataError("data has no rows; there is nothing to fit")
    return df


def _grouping_codes(df: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Level labels and integer codes of the interaction of ``factors``.

    Every grouping variable is categorical, whatever its dtype: numbers are
    ordered numerically, text alphabetically, pandas categoricals by their
    categories; only levels present in the data are kept (lme4 drops unused
    levels)."""
    parts = []
    for f in factors:
        name = f.strip("`")
        s = df[name]
        cat = s.astype("category") if not isinstance(s.dtype, pd.CategoricalDtype) else s
        cat = cat.cat.remove_unused_categories()
        labels = np.asarray([str(c) for c in cat.cat.categories], dtype=object)
        parts.append((np.asarray(cat.cat.codes, dtype=np.int64), labels))
    if len(parts) == 1:
        codes, labels = parts[0]
        return labels, codes.astype(np.int32)
    # interaction: combine codes, keep observed combinations, ordered by the factors in turn
    combined = np.zeros(len(df), dtype=np.int64)
    for codes, labels in parts:
        combined = combined * len(labels) + codes
    uniq, inv = np.unique(combined, return_inverse=True)
    level_labels = []
    for u in uniq:
        idx = []
        for codes, labels in reversed(parts):
            idx.append(labels[u % len(labels)])
            u //= len(labels)
        level_labels.append(":".join(reversed(idx)))
    return np.asarray(level_labels, dtype=object), inv.astype(np.int32)


def _required(expr: str, formula_text: str) -> set[str]:
    try:
        return set(Formula(expr).required_variables)
    except Exception as e:  # formulaic's own parse errors
        raise FormulaError(f"cannot parse {expr!r}: {e}", formula_text, expr, formula_text.find(expr)) from None


def _check_columns(names: set[str], df: pd.DataFrame, formula_text: str) -> None:
    cols = set(map(str, df.columns))
    missing = sorted(v for v in names if v not in cols)
    if missing:
        close = {m: [c for c in cols if c.lower() == m.lower()] for m in missing}
        hint = "; ".join(f"did you mean {close[m][0]!r} for {m!r}?" for m in missing if close[m])
        raise DataError(f"column(s) {missing} used in the formula are not in the data (columns: "
                        f"{sorted(cols)[:20]}{'...' if len(cols) > 20 else ''}){'; ' + hint if hint else ''}")


def _independent_columns(X: np.ndarray) -> list[int]:
    """Indices of a maximal set of linearly independent columns, keeping
    earlier columns first (R's pivoting QR keeps the same set)."""
    keep: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    scale = np.linalg.norm(X, axis=0)
    for j in range(X.shape[1]):
        v = X[:, j].astype(float)
        if scale[j] == 0:
            continue
        r = v - Q @ (Q.T @ v)
        r = r - Q @ (Q.T @ r)
        nr = np.linalg.norm(r)
        if nr > _RANK_TOL * scale[j]:
            keep.append(j)
            Q = np.column_stack([Q, r / nr])
    return keep


def build_design(formula: str | ParsedFormula, data: Any) -> Design:
    """Evaluate a formula on data.

    Args:
        formula: lme4 formula text or a :class:`ParsedFormula`.
        data: a DataFrame or a dict of equal-length arrays.

    Returns:
        The :class:`Design`.

    Raises:
        FormulaError: the formula cannot be parsed.
        DataError: the data cannot be used (see messages).
    """
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    df = as_frame(data)
    df.columns = [str(c) for c in df.columns]

    # -- which columns are used, and missing values ------------------------
    fixed_vars = _required(pf.fixed_formula, pf.text)
    random_vars: set[str] = set()
    group_vars: set[str] = set()
    for term in pf.random:
        random_vars |= _required(term.expr, pf.text)
        group_vars |= {f.strip("`") for f in term.factors}
    used = fixed_vars | random_vars | group_vars
    _check_columns(used, df, pf.text)
    sub = df[sorted(used)]
    complete = sub.notna().all(axis=1).to_numpy()
    n_dropped = int((~complete).sum())
    if not complete.any():
        raise DataError(f"all {len(df)} rows have a missing value in a used column ({sorted(used)}); "
                        "nothing is left to fit")
    df_used = df.loc[complete]

    # -- fixed part --------------------------------------------------------
    try:
        mm = model_matrix(pf.fixed_formula, df_used, na_action="ignore")
    except Exception as e:
        raise FormulaError(f"cannot evaluate the fixed part {pf.fixed_formula!r}: {e}", pf.text,
                           pf.fixed, pf.text.find(pf.fixed)) from None
    lhs = mm.lhs
    if lhs.shape[1] != 1:
        raise DataError(f"the response {pf.response!r} gives {lhs.shape[1]} columns "
                        f"({list(lhs.columns)}); it must be one numeric column")
    y = np.asarray(lhs, dtype=float).ravel() if _is_numeric(lhs) else None
    if y is None:
        raise DataError(f"the response {pf.response!r} is not numeric (dtype {df_used[pf.response].dtype if pf.response in df_used else 'object'}); "
                        "linear mixed models need a numeric response: convert it, e.g. with pd.to_numeric")
    rhs = mm.rhs
    X_full = np.asarray(rhs, dtype=float)
    names_full = [r_name(c) for c in rhs.columns]
    for arr, what in ((y, f"response {pf.response!r}"),):
        if not np.isfinite(arr).all():
            raise DataError(f"the {what} has {int((~np.isfinite(arr)).sum())} infinite value(s); "
                            "remove those rows or replace them with NaN (rows with NaN are dropped)")
    bad = ~np.isfinite(X_full).all(axis=0)
    if bad.any():
        raise DataError(f"fixed-effects column(s) {[names_full[i] for i in np.flatnonzero(bad)]} have infinite "
                        "values; remove those rows or replace them with NaN")
    keep = _independent_columns(X_full)
    dropped = tuple(names_full[j] for j in range(X_full.shape[1]) if j not in keep)
    if dropped:
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s): "
                      f"{list(dropped)}", RankDeficiencyWarning, stacklevel=3)
    X = X_full[:, keep]
    fixef_names = tuple(names_full[j] for j in keep)

    # -- random terms ------------------------------------------------------
    n = len(y)
    expanded: list[tuple[RandomTerm, str, np.ndarray, tuple[str, ...]]] = []
    for term in pf.random:
        try:
            Zm = model_matrix(term.expr, df_used, na_action="ignore")
        except Exception as e:
            raise FormulaError(f"cannot evaluate the random-effects expression {term.expr!r}: {e}", pf.text,
                               term.expr, pf.text.find(term.expr)) from None
        Z = np.asarray(Zm, dtype=float)
        cols = tuple(r_name(c) for c in Zm.columns)
        if Z.shape[1] == 0:
            raise FormulaError(f"random-effects term {term} has no columns; use (1 | g) for an intercept",
                               pf.text, term.expr, pf.text.find(term.expr))
        if not np.isfinite(Z).all():
            raise DataError(f"random-effects term {term} has infinite values in its columns {list(cols)}")
        if term.uncorrelated and Z.shape[1] > 1:
            for c in range(Z.shape[1]):
                expanded.append((term, f"{term.expr}[{c}]", Z[:, [c]], (cols[c],)))
        else:
            expanded.append((term, term.expr, Z, cols))

    terms: list[TermDesign] = []
    for term, expr, Z, cols in expanded:
        labels, codes = _grouping_codes(df_used, term.factors)
        m = len(labels)
        if m < 2:
            raise DataError(f"grouping factor {term.group!r} has {m} level(s) in the data used; a random effect "
                            "needs at least 2 levels: drop the term or fit a fixed effect instead")
        if m >= n:
            raise DataError(f"grouping factor {term.group!r} has {m} levels for {n} observations; the number of "
                            "levels must be less than the number of observations (lme4's check), or the random "
                            "effect cannot be told from the residual: drop the term")
        if m * Z.shape[1] > n:
            raise DataError(f"term {term} has {m * Z.shape[1]} random effects ({m} levels x {Z.shape[1]} columns) "
                            f"for {n} observations; the model is not identifiable: simplify the term, e.g. to "
                            f"(1 | {term.group})")
        terms.append(TermDesign(group=term.group, columns=cols, levels=labels, codes=codes, Z=Z,
                                expr=expr, factors=tuple(f.strip("`") for f in term.factors)))
    order = sorted(range(len(terms)), key=lambda i: -terms[i].m)  # stable: formula order among ties
    terms = [terms[i] for i in order]
    return Design(formula=pf, y=y, X=X, fixef_names=fixef_names, terms=tuple(terms), dropped_columns=dropped,
                  n_dropped_rows=n_dropped, data=df_used, fixed_spec=mm.rhs.model_spec,
                  kept_columns=tuple(keep))


def _is_numeric(frame: pd.DataFrame) -> bool:
    try:
        np.asarray(frame, dtype=float)
        return True
    except (TypeError, ValueError):
        return False

r"""Estimated marginal means and their contrasts (R's ``emmeans``).

The reference grid holds every combination of the fixed part's factor levels
and of its numeric covariates' values: each covariate at its mean over the rows
used in the fit (emmeans' ``cov.reduce = mean``) unless ``at`` gives values,
and ``at`` may also restrict a factor to some of its levels. Logical columns
are factors with levels False, True (as R's logicals). Each grid row x gives
the fitted-model prediction ``x'beta`` (the fitted ModelSpec evaluated on the
grid: same contrasts, transforms of covariates evaluated at the reference
value). The EMM of one combination of the ``specs`` (and ``by``) variables is
the weighted mean of the rows over the other variables,

    L_c = sum_a w_a x_(c, a) / sum_a w_a,

with weights (emmeans' ``weights``): ``"equal"`` (w = 1, the default),
``"proportional"`` (the data's frequency of each combination a of the
averaged-over factors, the same for every c), ``"outer"`` (products of the
averaged-over factors' one-way frequencies), ``"cells"`` (the frequency of the
cell (c, a) itself, which gives the raw cell-weighted means) or ``"flat"`` (1
for cells with data, 0 for empty ones). Frequencies count the rows used in
the fit.

Each EMM or contrast is a linear function ``l'beta``, tested by
:func:`lmm_jax.inference.tests.t_tests`: the same SE and df as
``result.contrast(l)``, Satterthwaite's (lmerTest's ``calcSatterth``, what
``emmeans(..., lmer.df = "satterthwaite")`` gives) or Kenward-Roger's
(pbkrtest's adjusted covariance and ``Lb_ddf``, emmeans' own default for an
lmerMod fit), and t intervals at ``level``. In rank-deficient fits a linear
function outside the row space of the full model matrix (a mean involving an
empty cell) is not estimable: its row is NaN, as emmeans' NA
(estimability's test, tolerance 1e-8).

Contrasts (``EMMeans.contrast``) are taken within each ``by`` group:
``"pairwise"`` (``A - B, A - C, B - C``), ``"revpairwise"`` (``B - A, C - A,
C - B``), ``"trt.vs.ctrl"`` (each level minus the reference level),
``"consec"`` (``B - A, C - B``) or a dict of named weight vectors. Their names
follow emmeans: the levels of several variables joined by a space,
numeric-looking levels prefixed with the variable's name
(``temperature175``) and levels containing ``-``, ``+``, ``/`` or ``*`` in
parentheses. P-values are adjusted within each ``by`` group, emmeans' default
per method when ``adjust`` is None:

* ``"tukey"`` (pairwise, revpairwise): ``P(Q_{k, df} > sqrt(2) |t|)``, the
  studentized range of the k compared means (R's ``ptukey``, with emmeans'
  ``zapsmall`` of the df); for a family that is not one set of pairwise
  comparisons emmeans changes it to ``"sidak"``, and so does this module
  (with a warning);
* ``"dunnettx"`` (trt.vs.ctrl): emmeans' approximation to Dunnett's test,
  ``1 - [(m-1)/m ptukey(sqrt(2)|t|, (1 + sqrt(1 + 8m))/2, df) + 1/m
  pf(t^2, 1, df)^m]`` for m contrasts;
* ``"sidak"`` ``1 - (1 - p)^m``; ``"scheffe"`` ``pf(t^2 / r, r, df)`` with
  r the rank of the contrasts' linear functions; ``"holm"``,
  ``"hochberg"``, ``"bonferroni"``, ``"BH"`` (``"fdr"``), ``"BY"`` as R's
  ``p.adjust``; ``"none"`` (custom contrasts' default).

A family of one contrast is not adjusted (except by Scheffe's method), as in
emmeans. emmeans' default for ``"consec"`` is ``"mvt"``, a multivariate-t
integral computed by Monte Carlo in R; it is not implemented here, so
``"consec"`` needs an explicit ``adjust``.
"""

from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..build.design import R_FUNCTIONS
from ..distributions import f_cdf, f_sf, t_sf
from ..errors import DataError, InferenceError
from ..runtime.scope import entry_point
from .anova import zapsmall
from .predict import _CATEGORICAL_CALL
from .tests import normalize_ddf, t_tests

if TYPE_CHECKING:
    from ..results import LMMResult

WEIGHTS = ("equal", "proportional", "outer", "cells", "flat")
METHODS = ("pairwise", "revpairwise", "trt.vs.ctrl", "consec")
P_ADJUST = ("holm", "hochberg", "bonferroni", "BH", "BY", "fdr", "none")
ADJUST = ("tukey", "sidak", "scheffe", "dunnettx") + P_ADJUST
DEFAULT_ADJUST = {"pairwise": "tukey", "revpairwise": "tukey", "trt.vs.ctrl": "dunnettx", "consec": "mvt"}
ESTIMABLE_TOL = 1e-8     # estimability::is.estble
_PARENS = re.compile(r"-|\+|/|\*")   # emmeans' option parens: labels wrapped in ( ) in contrast names


@dataclass(frozen=True)
class GridVariable:
    """One dimension of the reference grid: a factor's levels or a covariate's values."""

    name: str
    values: tuple
    factor: bool


# -- the reference grid -------------------------------------------------------------
def _grid_variables(result: "LMMResult") -> list[GridVariable]:
    """The fixed part's variables: factors with their fitted levels, covariates at their means."""
    d = result.design
    spec = d.fixed_spec
    response = d.formula.response.strip("`")
    out: dict[str, GridVariable] = {}
    for name, (kind, state) in spec.encoder_state.items():
        if getattr(kind, "value", kind) != "categorical":
            continue
        m = _CATEGORICAL_CALL.match(name)
        col = name if name in d.data.columns else (m.group(1).strip() if m else None)
        if col is None or col not in d.data.columns or col in out:
            continue
        out[col] = GridVariable(col, tuple(state.get("categories", ())), True)
    for col in [c for c in d.data.columns if c in spec.required_variables and c != response and c not in out]:
        x = d.data[col]
        if pd.api.types.is_bool_dtype(x):
            out[col] = GridVariable(col, (False, True), True)
        elif pd.api.types.is_numeric_dtype(x):
            out[col] = GridVariable(col, (float(np.mean(x.to_numpy(dtype=float))),), False)
        else:
            out[col] = GridVariable(col, tuple(sorted(pd.unique(x.dropna()))), True)
    return list(out.values())


def _apply_at(variables: list[GridVariable], at: Any) -> list[GridVariable]:
    """The grid's variables with ``at``'s values: a subset of a factor's levels, or a covariate's values."""
    if at is None:
        return variables
    if not isinstance(at, dict):
        raise InferenceError(f"at must be a dict of variable -> value(s), e.g. {{'x': 0.5}}, got {type(at).__name__}")
    known = {v.name: v for v in variables}
    unknown = [k for k in at if k not in known]
    if unknown:
        raise InferenceError(f"at names {unknown}, which are not variables of the fixed part; the reference grid's "
                             f"variables are {list(known)}")
    out = []
    for v in variables:
        if v.name not in at:
            out.append(v)
            continue
        raw = at[v.name]
        values = list(raw) if isinstance(raw, (list, tuple, np.ndarray, pd.Series, pd.Index)) else [raw]
        if not values:
            raise InferenceError(f"at[{v.name!r}] has no values")
        if v.factor:
            text = {str(lv): lv for lv in v.values}
            chosen = []
            for x in values:
                if x in v.values:
                    chosen.append(v.values[v.values.index(x)])
                elif str(x) in text:
                    chosen.append(text[str(x)])
                else:
                    raise DataError(f"at[{v.name!r}] has {x!r}, which is not a level of {v.name!r} in the fit "
                                    f"(levels {[str(lv) for lv in v.values][:10]})")
            out.append(GridVariable(v.name, tuple(chosen), True))
        else:
            try:
                nums = np.asarray(values, dtype=float)
            except (TypeError, ValueError):
                raise InferenceError(f"at[{v.name!r}] must be numbers for the covariate {v.name!r}, got "
                                     f"{values!r}") from None
            if not np.isfinite(nums).all():
                raise InferenceError(f"at[{v.name!r}] has non-finite values {values!r}")
            out.append(GridVariable(v.name, tuple(float(x) for x in nums), False))
    return out


def _grid_frame(result: "LMMResult", variables: list[GridVariable]) -> pd.DataFrame:
    """Every combination of the variables' values, the last variable fastest."""
    data = result.design.data
    combos = list(itertools.product(*(v.values for v in variables))) or [()]
    grid = pd.DataFrame(combos, columns=[v.name for v in variables])
    for v in variables:
        col = data[v.name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            grid[v.name] = pd.Categorical(grid[v.name], categories=col.cat.categories, ordered=col.cat.ordered)
        elif v.factor and pd.api.types.is_bool_dtype(col):
            grid[v.name] = grid[v.name].astype(bool)
    return grid


def _cell_counts(result: "LMMResult", variables: list[GridVariable]) -> np.ndarray:
    """Rows of the fit in each grid cell (by the factors; repeated across a covariate's values)."""
    data = result.design.data
    dims = [len(v.values) for v in variables]
    counts = np.zeros(dims)
    factors = [i for i, v in enumerate(variables) if v.factor]
    codes = [pd.Index(variables[i].values).get_indexer(data[variables[i].name]) for i in factors]
    ok = np.all([c >= 0 for c in codes], axis=0) if codes else np.ones(len(data), dtype=bool)
    fshape = [dims[i] for i in factors]
    flat = np.ravel_multi_index([c[ok] for c in codes], fshape) if codes else np.zeros(int(ok.sum()), dtype=int)
    table = np.bincount(flat, minlength=int(np.prod(fshape))).reshape(fshape).astype(float)
    index = tuple(slice(None) if v.factor else np.newaxis for v in variables)
    counts[...] = table[index] if factors else table.reshape([1] * len(dims))
    return counts


def _nonestimable_basis(result: "LMMResult") -> np.ndarray | None:
    """Orthonormal basis of the null space of the full (rank-deficient) model matrix; None when full rank."""
    d = result.design
    if not d.dropped_columns:
        return None
    X = np.asarray(d.fixed_spec.get_model_matrix(d.data, na_action="ignore", context=R_FUNCTIONS), dtype=float)
    R = np.linalg.qr(X, mode="r")
    _, s, Vt = np.linalg.svd(R)
    rank = len(d.kept_columns)
    return Vt[rank:].T if s.size else None


def _parse_specs(specs: Any, by: Any) -> tuple[list[str], list[str]]:
    def names(part: Any) -> list[str]:
        if part is None:
            return []
        if isinstance(part, str):
            text = part.strip().lstrip("~").strip()
            if text in ("", "1"):
                return []
            return [n.strip().strip("`") for n in re.split(r"[*:+]", text) if n.strip()]
        if isinstance(part, (list, tuple)):
            return [str(n).strip().strip("`") for n in part]
        raise InferenceError(f"specs and by must be variable names (a string such as 'recipe' or "
                             f"'temperature | recipe', or a list of names), got {type(part).__name__}")

    if isinstance(specs, str) and "|" in specs:
        left, right = specs.split("|", 1)
        return names(left), names(right) + names(by)
    return names(specs), names(by)


def _weights(kind: str, counts: np.ndarray, n_keys: int) -> np.ndarray:
    """(n_rows, n_avg) weights for counts shaped (rows..., averaged...) with n_keys leading axes."""
    key_shape, avg_shape = counts.shape[:n_keys], counts.shape[n_keys:]
    rows, n_avg = int(np.prod(key_shape)), int(np.prod(avg_shape))
    if kind == "equal" or n_avg == 1:
        return np.ones((rows, n_avg))
    if kind in ("cells", "flat"):
        cells = counts.reshape(rows, n_avg)
        return cells if kind == "cells" else (cells > 0).astype(float)
    margin = counts.sum(axis=tuple(range(n_keys)))
    if np.all(zapsmall(margin) == 0):
        margin = margin + 1.0
    if kind == "outer":
        N = margin.sum()
        w = np.array(N)
        for ax in range(margin.ndim):
            w = np.multiply.outer(w, margin.sum(axis=tuple(a for a in range(margin.ndim) if a != ax)) / N)
        margin = w
    return np.broadcast_to(margin.reshape(1, n_avg), (rows, n_avg))


# -- labels and contrast families -------------------------------------------------------------
def _r_text(x: Any) -> str:
    """R's as.character of one value."""
    if isinstance(x, (bool, np.bool_)):
        return "TRUE" if x else "FALSE"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.15g}"
    return str(x)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "+nan", "-nan")


def _labels(grid: pd.DataFrame, names: list[str]) -> list[str]:
    """emmeans' level labels of the rows: the variables' values joined by a space, numeric-looking
    values prefixed with the variable's name, labels with - + / * in parentheses."""
    if not names:
        return ["overall"] * len(grid)
    parts = []
    for n in names:
        text = [_r_text(x) for x in grid[n]]
        parts.append([n + t for t in text] if all(_looks_numeric(t) for t in text) else text)
    raw = [" ".join(p) for p in zip(*parts)]
    return [f"({s})" if _PARENS.search(s) else s for s in raw]


def _family(method: Any, levs: list[str], ref: Any) -> tuple[np.ndarray, list[str], str, str | None]:
    """(coefficients (n_contrasts, k), names, estimate type, default adjustment) of a contrast family."""
    k = len(levs)
    if isinstance(method, dict):
        rows, names = [], []
        for name, w in method.items():
            w = np.asarray(w, dtype=float).ravel()
            if w.shape != (k,) or not np.isfinite(w).all():
                raise InferenceError(f"contrast {name!r} has {w.size} weight(s); it needs {k} finite ones, one per "
                                     f"estimated marginal mean {levs}")
            rows.append(w)
            names.append(str(name))
        if not rows:
            raise InferenceError("method is an empty dict; give at least one named weight vector")
        K = np.array(rows)
        return K, names, "contrast" if np.all(np.abs(K.sum(axis=1)) < 1e-3) else "prediction", None
    if method not in METHODS:
        raise InferenceError(f"method must be one of {list(METHODS)} or a dict of name -> weights, got {method!r}")
    rows, names = [], []

    def add(i: int, j: int) -> None:
        c = np.zeros(k)
        c[i], c[j] = 1.0, -1.0
        rows.append(c)
        names.append(f"{levs[i]} - {levs[j]}")

    if method == "pairwise":
        for i in range(k - 1):
            for j in range(i + 1, k):
                add(i, j)
    elif method == "revpairwise":
        for i in range(1, k):
            for j in range(i):
                add(i, j)
    elif method == "consec":
        for i in range(k - 1):
            add(i + 1, i)
    else:
        r = _reference_level(ref, levs)
        for i in range(k):
            if i != r:
                add(i, r)
    K = np.array(rows).reshape(len(rows), k)
    return K, names, "pairs" if method in ("pairwise", "revpairwise") else "contrast", DEFAULT_ADJUST[method]


def _reference_level(ref: Any, levs: list[str]) -> int:
    if ref is None:
        return 0
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        if not 0 <= ref < len(levs):
            raise InferenceError(f"ref={ref} is out of range: there are {len(levs)} levels {levs} (0-based)")
        return int(ref)
    text = str(ref)
    for i, lv in enumerate(levs):
        if text in (lv, lv.strip("()")):
            return i
    raise InferenceError(f"ref={ref!r} is not one of the levels {levs}")


# -- p-value adjustment ------------------------------------------------------------------
def p_adjust(p: np.ndarray, method: str) -> np.ndarray:
    """R's ``p.adjust`` for ``holm, hochberg, bonferroni, BH (fdr), BY, none``."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if method == "none" or n <= 1:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, n * p)
    i = np.arange(1, n + 1)
    if method == "holm":
        o = np.argsort(p, kind="stable")
        out = np.minimum(1.0, np.maximum.accumulate((n - i + 1) * p[o]))
    else:
        o = np.argsort(-p, kind="stable")
        i = i[::-1]
        factor = {"hochberg": n + 1 - i, "BH": n / i, "fdr": n / i,
                  "BY": np.sum(1.0 / np.arange(1, n + 1)) * n / i}[method]
        out = np.minimum(1.0, np.minimum.accumulate(factor * p[o]))
    res = np.empty(n)
    res[o] = out
    return res


def _ptukey_upper(q: np.ndarray, nmeans: float, df: np.ndarray) -> np.ndarray:
    """R's ``ptukey(q, nmeans, df, lower.tail = FALSE)`` by scipy's studentized range (a numerical
    integral per value, about 10 ms: a family of 153 pairs takes 1.5 s). scipy.stats is imported
    here, by the Tukey adjustment alone (its import takes about 0.4 s)."""
    from scipy import stats

    return np.array([stats.studentized_range.sf(qi, nmeans, di) if np.isfinite(qi) else np.nan
                     for qi, di in zip(q, df)])


def adjusted_p(t: np.ndarray, df: np.ndarray, adjust: str, family_size: int, scheffe_rank: int = 1) -> np.ndarray:
    """Two-sided p-values of one family (one ``by`` group) of t ratios, emmeans' ``.adj.p.value``."""
    t, df = np.asarray(t, dtype=float), np.where(np.isnan(df), np.inf, np.asarray(df, dtype=float))
    m = len(t)
    p = 2.0 * t_sf(np.abs(t), df)
    if adjust in P_ADJUST:
        return p_adjust(p, adjust)
    if adjust == "sidak":
        return 1.0 - (1.0 - p) ** m
    if adjust == "tukey":
        return _ptukey_upper(np.sqrt(2.0) * np.abs(t), family_size, df)
    if adjust == "scheffe":
        r = scheffe_rank
        return f_sf(t ** 2 / r, r, df)
    if adjust == "dunnettx":
        x = np.abs(t)
        tukey = 1.0 - _ptukey_upper(np.sqrt(2.0) * x, (1.0 + np.sqrt(1.0 + 8.0 * m)) / 2.0, df)
        sidak = f_cdf(x ** 2, 1, df) ** m
        w = (m - 1.0) / m
        return 1.0 - (w * tukey + (1.0 - w) * sidak)
    raise InferenceError(f"adjust must be one of {list(ADJUST)}, got {adjust!r}")


def _normalize_adjust(adjust: str) -> str:
    key = str(adjust)
    if key.lower() == "mvt":
        raise InferenceError("adjust='mvt' (emmeans' default for 'consec', a multivariate-t integral) is not "
                             "implemented; pass adjust='holm', 'sidak', 'bonferroni', 'scheffe' or 'none'")
    match = {a.lower(): a for a in ADJUST}.get(key.lower())
    if match is None:
        raise InferenceError(f"adjust must be one of {list(ADJUST)}, got {adjust!r}")
    return match


# -- the EMMs ------------------------------------------------------------------------
@entry_point
@dataclass(frozen=True, eq=False)
class EMMeans:
    """Estimated marginal means of a fit (R's ``emmGrid`` from ``emmeans``).

    Attributes:
        result: the :class:`~lmm_jax.results.LMMResult`.
        specs: the variables whose levels the means are of.
        by: variables whose levels group the means (contrasts are taken within each group).
        averaged_over: the grid's other variables, averaged over with ``weights``.
        weights: ``"equal"``, ``"proportional"``, ``"outer"``, ``"cells"`` or ``"flat"``.
        ddf: the df method of the SEs, dfs and intervals (``"satterthwaite"``, ``"kenward-roger"``, ...).
        level: confidence level of the intervals.
        grid: one row per mean: the values of ``specs`` and ``by``.
        linfct: (n_means, p) the means' linear functions of the fixed effects (NaN rows: not estimable).
        table: ``specs..., by..., emmean, SE, df, lower, upper``.
    """

    result: "LMMResult"
    specs: tuple[str, ...]
    by: tuple[str, ...]
    averaged_over: tuple[str, ...]
    weights: str
    ddf: str
    level: float
    grid: pd.DataFrame = field(repr=False)
    linfct: np.ndarray = field(repr=False)
    table: pd.DataFrame = field(repr=False)

    def _groups(self) -> list[np.ndarray]:
        """Row indices of each ``by`` group, in the table's order (the ``by`` variables vary slowest)."""
        n_by = int(np.prod([self.grid[b].nunique() for b in self.by]))
        size = len(self.grid) // n_by
        return [np.arange(j * size, (j + 1) * size) for j in range(n_by)]

    def contrast(self, method: Any = "pairwise", adjust: str | None = None, ref: Any = None,
                 ddf: str | None = None) -> pd.DataFrame:
        """Contrasts of the means within each ``by`` group (R's ``contrast(emm, method, adjust)``).

        Args:
            method: ``"pairwise"``, ``"revpairwise"``, ``"trt.vs.ctrl"``, ``"consec"``, or a dict of
                name -> weights (one per mean of a group, in the table's order).
            adjust: the p-value adjustment within each group (see the module docstring); None for
                emmeans' default of the method (tukey, tukey, dunnettx, mvt (not implemented), none).
            ref: the reference level of ``"trt.vs.ctrl"``: a label of the table's levels or a 0-based
                position (default: the first).
            ddf: the df method; None for the EMMs' own.

        Returns:
            DataFrame ``contrast, by..., estimate, SE, df, t.ratio, p.value``; ``attrs`` hold
            ``adjust`` (the adjustment applied), ``family_size``, ``ddf``.
        """
        ddf = self.ddf if ddf is None else normalize_ddf(ddf)
        groups = self._groups()
        levs = _labels(self.grid.iloc[groups[0]], list(self.specs))
        K, names, est_type, default = _family(method, levs, ref)
        if adjust is None:
            adjust = default or "none"
        adjust = _normalize_adjust(adjust)
        if adjust == "tukey" and est_type != "pairs":
            warnings.warn("adjust='tukey' is only for one set of pairwise comparisons; the sidak adjustment is "
                          "used instead (as emmeans does)", UserWarning, stacklevel=2)
            adjust = "sidak"
        m = K.shape[0]
        family_size = len(levs)
        if m == 1 and adjust != "scheffe":
            adjust = "none"
        L_rows, blocks = [], []
        for g in groups:
            emm_L = self.linfct[g]
            bad = np.isnan(emm_L).any(axis=1)
            Lg = K @ np.where(bad[:, None], 0.0, emm_L)
            Lg[(np.abs(K[:, bad]) > 0).any(axis=1)] = np.nan
            L_rows.append(Lg)
            block = pd.DataFrame({"contrast": names})
            for b in self.by:
                block[b] = [self.grid[b].iloc[g[0]]] * m
            blocks.append(block)
        L = np.vstack(L_rows)
        tt = _tests(self.result, L, ddf, self.level)
        out = pd.concat(blocks, ignore_index=True)
        out["estimate"], out["SE"], out["df"] = tt["estimate"], tt["std_error"], tt["df"]
        out["t.ratio"] = tt["t"]
        df_all = zapsmall(np.where(np.isnan(tt["df"]), np.inf, tt["df"])) if adjust == "tukey" else tt["df"]
        p = np.full(len(L), np.nan)
        for j, Lg in enumerate(L_rows):
            ok = ~np.isnan(tt["t"][j * m:(j + 1) * m])
            rows = j * m + np.flatnonzero(ok)
            if rows.size:
                rank = int(np.linalg.matrix_rank(zapsmall(Lg[ok]))) if adjust == "scheffe" else 1
                p[rows] = adjusted_p(tt["t"][rows], df_all[rows], adjust, family_size, rank)
        out["p.value"] = p
        out.attrs.update(adjust=adjust, family_size=family_size, ddf=ddf)
        return out

    def pairs(self, adjust: str | None = None) -> pd.DataFrame:
        """Pairwise differences, ``contrast("pairwise", adjust)`` (R's ``pairs``).

        Args:
            adjust: the p-value adjustment within each group; None for
                Tukey's (see :meth:`contrast`).

        Returns:
            DataFrame ``contrast, by..., estimate, SE, df, t.ratio, p.value``.
        """
        return self.contrast("pairwise", adjust)

    def __repr__(self) -> str:
        notes = [f"Degrees-of-freedom method: {self.ddf}; confidence level {self.level}"]
        if self.averaged_over:
            notes.insert(0, f"Averaged over the levels of {', '.join(self.averaged_over)} ({self.weights} weights)")
        return self.table.to_string(index=False) + "\n\n" + "\n".join(notes)


def _tests(result: "LMMResult", L: np.ndarray, ddf: str, level: float) -> dict[str, np.ndarray]:
    """t_tests of the estimable rows of L; NaN in every column of the others."""
    ok = ~np.isnan(L).any(axis=1)
    cols = ("estimate", "std_error", "df", "t", "p", "lower", "upper")
    out = {c: np.full(len(L), np.nan) for c in cols}
    if ok.any():
        tt = t_tests(result, L[ok], ddf, level)
        for c in cols:
            out[c][ok] = tt[c].to_numpy()
    return out


@entry_point
def emmeans(result: "LMMResult", specs: Any, by: Any = None, at: dict | None = None, weights: str = "equal",
            ddf: str = "satterthwaite", level: float = 0.95) -> EMMeans:
    """Estimated marginal means over the reference grid (R's ``emmeans``; see the module docstring).

    Args:
        result: the fit.
        specs: the variables whose means are wanted: a name (``"recipe"``), several
            (``["recipe", "temperature"]`` or ``"recipe * temperature"``), ``"temperature | recipe"``
            (means of temperature within each recipe), or ``"1"`` for the grand mean.
        by: more grouping variables (as after ``|``).
        at: values of grid variables: ``{"nitro": 0.6}`` or ``{"nitro": [0, 0.3, 0.6]}`` for a
            covariate (default its mean), a subset of levels for a factor.
        weights: ``"equal"`` (default), ``"proportional"``, ``"outer"``, ``"cells"`` or ``"flat"``.
        ddf: ``"satterthwaite"`` (default), ``"kenward-roger"`` (R emmeans' default for lmer fits),
            ``"residual"`` or ``"none"``.
        level: confidence level of the t intervals.

    Returns:
        An :class:`EMMeans` (``.table``, ``.contrast(method, adjust)``, ``.pairs()``).

    Raises:
        InferenceError: unknown variables, weights or ddf; a model with an offset.
        DataError: an ``at`` level that is not in the fit.

    Example:
        >>> fit = lmm_jax.fit("angle ~ recipe * temperature + (1 | recipe:replicate)",
        ...                   lmm_jax.datasets.load("cake"))
        >>> emm = lmm_jax.emmeans(fit, "recipe")
        >>> emm.pairs()  # doctest: +SKIP
    """
    ddf = normalize_ddf(ddf)
    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level}")
    if weights not in WEIGHTS:
        raise InferenceError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    d = result.design
    if d.offset is not None:
        raise InferenceError("emmeans of a model with an offset is not implemented (the offset would need a "
                             "reference value); refit with the offset as a covariate, or compute the means with "
                             "result.contrast on rows of result.predict's model matrix")
    spec_names, by_names = _parse_specs(specs, by)
    variables = _apply_at(_grid_variables(result), at)
    names = [v.name for v in variables]
    keys = spec_names + by_names
    unknown = [n for n in keys if n not in names]
    if unknown:
        raise InferenceError(f"specs/by name {unknown}, which are not variables of the fixed part "
                             f"{d.formula.fixed!r}; the reference grid's variables are {names}")
    if len(set(keys)) != len(keys):
        raise InferenceError(f"specs and by repeat a variable: {keys}")
    grid = _grid_frame(result, variables)
    try:
        X_full = np.asarray(d.fixed_spec.get_model_matrix(grid, na_action="ignore", context=R_FUNCTIONS),
                            dtype=float)
    except Exception as e:  # formulaic: a transform that fails on the grid's values
        raise DataError(f"cannot evaluate the fixed part on the reference grid: {e}") from None
    dims = [len(v.values) for v in variables]
    pos = {n: i for i, n in enumerate(names)}
    avg = [i for i, n in enumerate(names) if n not in keys]
    axes = [pos[n] for n in reversed(keys)] + avg            # the first spec varies fastest, as in emmeans
    n_rows = int(np.prod([dims[pos[n]] for n in keys]))
    Xc = np.transpose(X_full.reshape(dims + [X_full.shape[1]]), axes + [len(dims)]).reshape(n_rows, -1,
                                                                                             X_full.shape[1])
    counts = np.transpose(_cell_counts(result, variables), axes)
    w = _weights(weights, counts, len(keys))
    with np.errstate(invalid="ignore", divide="ignore"):
        L_full = np.einsum("ra,rap->rp", w, Xc) / w.sum(axis=1, keepdims=True)
    nbasis = _nonestimable_basis(result)
    if nbasis is not None:
        chk = np.nan_to_num(L_full) @ nbasis
        ssq = np.nansum(L_full ** 2, axis=1)
        bad = np.sum(chk ** 2, axis=1) >= ESTIMABLE_TOL * np.where(ssq < ESTIMABLE_TOL, 1.0, ssq)
        L_full[bad] = np.nan
    L = L_full[:, list(d.kept_columns)] if d.kept_columns else L_full
    key_vars = [variables[pos[n]] for n in keys]
    combos = list(itertools.product(*(v.values for v in reversed(key_vars)))) or [()]
    emm_grid = pd.DataFrame([c[::-1] for c in combos], columns=keys)
    tt = _tests(result, L, ddf, level)
    table = emm_grid.copy() if keys else pd.DataFrame({"1": ["overall"]})
    table["emmean"], table["SE"], table["df"] = tt["estimate"], tt["std_error"], tt["df"]
    table["lower"], table["upper"] = tt["lower"], tt["upper"]
    averaged = tuple(names[i] for i in avg if dims[i] > 1 or variables[i].factor)
    table.attrs.update(ddf=ddf, level=level, weights=weights, averaged_over=list(averaged))
    return EMMeans(result=result, specs=tuple(spec_names), by=tuple(by_names), averaged_over=averaged,
                   weights=weights, ddf=ddf, level=level, grid=emm_grid, linfct=L, table=table)

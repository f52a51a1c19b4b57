"""Model design built eagerly from a formula and a data frame.

Everything here is numpy/pandas/formulaic, run once per model: the response
``y``, the fixed-effects matrix ``X`` (rank-deficient columns dropped, as lme4
does), and for each random-effects term its grouping levels, the level code of
every row and the term's columns of Z (``Z_t`` is never formed as an n x q
matrix: row i of term t holds ``Z_t[i]`` in block ``codes_t[i]``).

formulaic evaluates every expression but the plainest: a sum of numeric
columns named plainly and the intercept's markers (``Days``, ``0 + x + w``),
which is read here (:func:`_plain_terms`). A model of such expressions
(sleepstudy's) never imports formulaic, 0.14 s of a fresh process; the
fixed part's formulaic spec, which new data needs (predict, emmeans, anova),
is then built on first use (:attr:`Design.fixed_spec`).

Terms are ordered by number of levels, largest first (lme4's order, and the
one the blocked Cholesky in :mod:`lmm_jax.core.likelihood` wants).
"""

from __future__ import annotations

import builtins
import dataclasses
import difflib
import functools
import keyword
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..core.theta_layout import ThetaLayout
from ..errors import DataError, FormulaError, RankDeficiencyWarning, ScalingWarning
from .formula import ParsedFormula, RandomTerm, parse_formula
from .working import Working, working_data

_RANK_TOL = 1e-7  # lme4's rankMatrix / qr tolerance
# Names a formula may call besides formulaic's transforms (log, log10, log2, exp, center, scale, poly, C, I, np)
# and Python's builtins (abs, round, pow): R's elementwise math, so that lme4's sqrt(x) or floor(x/2) work.
# Every model matrix of a design (fitting, predict, anova) is evaluated with this context.
R_FUNCTIONS: dict[str, Any] = {
    "sqrt": np.sqrt, "log1p": np.log1p, "expm1": np.expm1, "sign": np.sign, "floor": np.floor, "ceiling": np.ceil,
    "trunc": np.trunc, "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
}
OFFSET_WARN_RATIO = 1e3  # |mean| / SD above which a variable's cross-products lose digits


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
        weights: (n,) prior weights (lme4's ``weights``: residual variance
            sigma^2 / w_i), or None.
        offset: (n,) the offset (the ``offset()`` terms and the ``offset``
            argument, summed), or None.
        n_zero_weight_rows: rows dropped for a zero weight.
        offset_column: the column named by the ``offset`` argument, if it named one.
        has_response: False for a planned design (``y`` is zeros; see :func:`build_design`).
        source: every row of the input, used or not (the same frame as
            ``data`` when none was dropped): what a refit of another formula
            re-reads (:meth:`lmm_jax.model.LMM.update`, as R's ``update``).
        used: (len(source),) bool, the rows of ``source`` in ``data``.
        fixed_text: the fixed part's right side as formulaic reads it
            (:func:`formulaic_text`), from which :attr:`fixed_spec` is built.
    """

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixef_names: tuple[str, ...]
    terms: tuple[TermDesign, ...]
    dropped_columns: tuple[str, ...]
    n_dropped_rows: int
    data: pd.DataFrame
    fixed_text: str
    kept_columns: tuple[int, ...] = ()
    weights: np.ndarray | None = field(default=None, repr=False)
    offset: np.ndarray | None = field(default=None, repr=False)
    n_zero_weight_rows: int = 0
    offset_column: str | None = None
    has_response: bool = True
    source: pd.DataFrame | None = field(default=None, repr=False)
    used: np.ndarray | None = field(default=None, repr=False)

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

    @property
    def ngroups(self) -> dict[str, int]:
        """Levels per grouping factor (lme4's ``ngrps``), each factor once."""
        out: dict[str, int] = {}
        for t in self.terms:
            out.setdefault(t.group, t.m)
        return out

    @functools.cached_property
    def working(self) -> Working:
        """The working data the likelihood sees (:mod:`lmm_jax.build.working`):
        weights and offset applied, fixed effects in an orthonormal basis."""
        return working_data(self.X, tuple(t.Z for t in self.terms), self.y, self.weights, self.offset)

    @functools.cached_property
    def fixed_spec(self) -> Any:
        """formulaic's model spec of the fixed part (the columns of new data
        for predict, emmeans, anova and ranova): the one that built ``X``, or,
        for a design of plain columns (:func:`_plain_terms`), built from
        ``fixed_text`` on ``data`` when first asked for."""
        return _model_matrix(self.fixed_text, self.data).model_spec

    @functools.cached_property
    def theta_layout(self) -> ThetaLayout:
        """Positions and lme4 names of theta's entries for these terms, built once."""
        return ThetaLayout(self.ks, tuple(t.columns for t in self.terms), tuple(t.group for t in self.terms))


def r_name(name: str) -> str:
    """Turn a formulaic column name into R's: ``recipe[T.B]:temp`` ->
    ``recipeB:temp``, ``Intercept`` -> ``(Intercept)``."""
    if name == "Intercept":
        return "(Intercept)"
    name = name.replace(_INTERCEPT_COLUMN, "Intercept")   # a data column named Intercept (quote_names)
    name = _POLY.sub(lambda m: m.group(1).strip("`"), name)    # an ordered factor (code_ordered): x[.L] -> x.L
    # calls as R deparses them: formulaic prints I(x**2) as 'I(x ** 2)' and exp(x/10) as 'exp(x / 10)', lme4
    # names them 'I(x^2)' and 'exp(x/10)' (no spaces around ^ and /); level labels in [...] are left alone
    name = "".join(part if part.startswith("[") else _CALL.sub(_r_call, part)
                   for part in re.split(r"(\[[^\]]*\])", name))
    return re.sub(r"\[(?:T\.)?([^\]]*)\]", r"\1", name)


_POLY = re.compile(r"C\(((?:`[^`]*`|[^,()])+), contr\.poly\)")
_CALL = re.compile(r"(?<![\w.])[A-Za-z_][\w.]*\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")   # 2 levels of nesting


def _r_call(m: re.Match) -> str:
    return m.group(0).replace(" ** ", "^").replace("**", "^").replace(" / ", "/")


def _from_polars(data: Any) -> pd.DataFrame:
    """A polars DataFrame column by column, without pyarrow: numbers and dates
    as numpy arrays (integer columns with nulls as float with NaN), text as
    objects (None for null), Categorical and Enum as pandas Categorical with
    polars' order of the categories (an Enum's declared categories; a
    Categorical's values present, as polars sorts them)."""
    import polars as pl

    if not hasattr(data, "get_columns"):
        raise DataError(f"data is a polars {type(data).__name__}; pass a polars DataFrame (a LazyFrame: "
                        "data.collect())")
    cols: dict[str, Any] = {}
    for s in data.get_columns():
        if isinstance(s.dtype, pl.Enum):
            cols[s.name] = pd.Categorical(s.to_numpy(), categories=s.dtype.categories.to_list())
        elif isinstance(s.dtype, pl.Categorical):
            cols[s.name] = pd.Categorical(s.to_numpy(), categories=s.drop_nulls().unique().sort().to_list())
        else:
            cols[s.name] = s.to_numpy()
    return pd.DataFrame(cols, index=pd.RangeIndex(data.height))


def as_frame(data: Any) -> pd.DataFrame:
    """Accept a pandas DataFrame, a mapping of equal-length 1-d arrays, a
    polars DataFrame (converted column by column, :func:`_from_polars`; no
    pyarrow needed), or a table with a ``to_pandas()`` method (pyarrow).

    Raises:
        DataError: anything else, duplicated column names, or no rows.
    """
    if isinstance(data, pd.DataFrame):
        df = data
    elif type(data).__module__.split(".")[0] == "polars":
        df = _from_polars(data)
    elif isinstance(data, Mapping):
        cols = {}
        for k, v in data.items():
            arr = v if isinstance(v, pd.Series) else np.asarray(v)
            if np.ndim(arr) != 1:
                raise DataError(f"data[{k!r}] has shape {np.shape(arr)}; every column of a dict of arrays must be "
                                "1-dimensional with one entry per observation")
            cols[k] = arr
        series = {k: v.index for k, v in cols.items() if isinstance(v, pd.Series)}
        if len(series) > 1:
            (k0, i0), *rest = series.items()
            differ = [k for k, i in rest if not i.equals(i0)]
            if differ:
                raise DataError(f"data is a dict of Series whose indexes differ ({differ[0]!r} vs {k0!r}); pandas "
                                "would pair their rows by index label (filling the gaps with missing values), not "
                                "by position: pass each Series' .to_numpy() to pair rows by position, or build the "
                                "DataFrame yourself if pairing by label is meant")
        try:
            df = pd.DataFrame(cols)
        except ValueError as e:
            lengths = {str(k): len(v) for k, v in cols.items()}
            raise DataError(f"data is a mapping whose columns could not form a table ({e}); column lengths "
                            f"{lengths}: give columns of equal length") from None
    elif hasattr(data, "to_pandas") and callable(data.to_pandas) and not isinstance(data, (str, bytes)):
        try:
            df = data.to_pandas()
        except Exception as e:
            raise DataError(f"could not convert data of type {type(data).__name__} with .to_pandas() ({e}); "
                            "pass a pandas DataFrame") from None
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"data.to_pandas() of a {type(data).__name__} gave a {type(df).__name__}, not a "
                            "DataFrame; pass a pandas DataFrame")
    else:
        raise DataError(f"data must be a pandas DataFrame or a dict of equal-length arrays, got "
                        f"{type(data).__name__}; convert it with pandas.DataFrame(...)")
    if isinstance(df.columns, pd.MultiIndex):
        raise DataError(f"data has MultiIndex columns (e.g. {df.columns[0]!r}); formulas name single columns: "
                        "flatten them first, e.g. data.columns = ['_'.join(map(str, c)) for c in data.columns]")
    if df.columns.duplicated().any():
        dup = sorted(set(map(str, df.columns[df.columns.duplicated()])))
        raise DataError(f"data has duplicated column names {dup}; rename them so each name is unique")
    if len(set(map(str, df.columns))) != df.shape[1]:
        raise DataError("data has column names that coincide once written as text (e.g. 1 and '1'); "
                        "rename them so each name is unique")
    if len(df) == 0:
        raise DataError("data has no rows; there is nothing to fit")
    return df


_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3 or pd.options.mode.copy_on_write is True


def level_codes(s: pd.Series, chunk_rows: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Labels (sorted levels present, as text) and int32 codes of one factor.

    Plain numeric columns are coded by row blocks (unique values per block,
    then ``searchsorted``): O(levels + chunk_rows) temporaries, where pandas'
    categorical coding of a million int64 rows peaks at 40 MB. Text and
    categorical columns go through pandas (categories' order, unused ones
    dropped)."""
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufb":
        values = s.to_numpy()
        n = len(values)
        levels = np.unique(np.concatenate([np.unique(values[lo:lo + chunk_rows]) for lo in range(0, n, chunk_rows)]))
        codes = np.empty(n, dtype=np.int32)
        for lo in range(0, n, chunk_rows):
            codes[lo:lo + chunk_rows] = np.searchsorted(levels, values[lo:lo + chunk_rows])
        return np.asarray([str(v) for v in levels.tolist()], dtype=object), codes
    cat = s.astype("category") if not isinstance(s.dtype, pd.CategoricalDtype) else s
    cat = cat.cat.remove_unused_categories()
    labels = [str(c) for c in cat.cat.categories]
    if len(set(labels)) < len(labels):
        _raise_label_clash(s.name, list(cat.cat.categories), labels)
    return np.asarray(labels, dtype=object), cat.cat.codes.to_numpy().astype(np.int32)


def _raise_label_clash(name: Any, values: list, labels: list[str]) -> None:
    """Distinct values of a grouping factor whose labels coincide (1 and "1"):
    lme4 would see one level (R's factor() codes the text), Python sees two,
    and their random effects would be two rows with one name. Ask the user."""
    by_label: dict[str, list] = {}
    for v, lab in zip(values, labels):
        by_label.setdefault(lab, []).append(v)
    groups = [" and ".join(f"{v!r} ({type(v).__name__})" for v in vs) for vs in by_label.values() if len(vs) > 1]
    clashes = "; ".join(groups[:5]) + (f"; ... ({len(groups)} in all)" if len(groups) > 5 else "")
    raise DataError(f"grouping factor {name!r} has distinct values that read as the same level: {clashes}. R (lme4) "
                    f"would make them one level; to do that, convert the column to text (data[{name!r}]."
                    "astype(str)); to keep them apart, recode them with distinct labels")


def _grouping_codes(df: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Level labels and integer codes of the interaction of ``factors``.

    Every grouping variable is categorical, whatever its dtype: numbers are
    ordered numerically, text alphabetically, pandas categoricals by their
    categories; only levels present in the data are kept (lme4 drops unused
    levels)."""
    parts = []
    for f in factors:
        labels, codes = level_codes(df[f.strip("`")])
        parts.append((codes, labels))
    if len(parts) == 1:
        codes, labels = parts[0]
        return labels, codes                  # int32 already
    # interaction: combine codes, keep observed combinations, ordered by the factors in turn
    combined = np.zeros(len(df), dtype=np.int64)
    for codes, labels in parts:
        combined = combined * len(labels) + codes.astype(np.int64)
    uniq, inv = np.unique(combined, return_inverse=True)
    level_labels = []
    for u in uniq:
        idx = []
        for codes, labels in reversed(parts):
            idx.append(labels[u % len(labels)])
            u //= len(labels)
        level_labels.append(":".join(reversed(idx)))
    return np.asarray(level_labels, dtype=object), inv.astype(np.int32)


_IDENT_CHARS = "A-Za-z0-9_."


def _token_pattern(name: str) -> re.Pattern:
    """A column name as a whole token (not part of a longer name, not a
    function being called)."""
    return re.compile(rf"(?<![{_IDENT_CHARS}]){re.escape(name)}(?![{_IDENT_CHARS}])(?!\s*\()")


def _split_quoted(text: str) -> list[tuple[str, bool]]:
    """Split text into (piece, quoted) where quoted pieces are `...`, '...'
    or "..." spans."""
    out, i, last = [], 0, 0
    while i < len(text):
        c = text[i]
        if c in "`'\"":
            j = text.find(c, i + 1)
            if j < 0:
                break
            out.append((text[last:i], False))
            out.append((text[i:j + 1], True))
            i = last = j + 1
            continue
        i += 1
    out.append((text[last:], False))
    return out


# formulaic names the intercept column "Intercept": a data column of that name would overwrite it in the model
# matrix (y ~ Intercept fitted y ~ 0 + Intercept). quote_names reads such a column through Q(), whose column name
# differs, and r_name turns it back into "Intercept", lme4's name for it.
_INTERCEPT_COLUMN = "Q('Intercept')"


def quote_names(expr: str, columns: list[str]) -> str:
    """Quote column names that formulaic would misread.

    R formulas allow dots in names (``x.1``, ``log.dose``); formulaic reads
    ``x.1`` as Python attribute access. Every unquoted whole-token occurrence
    of such a column name is wrapped in backticks, longest names first. A
    column named ``Intercept`` is read as ``Q('Intercept')`` (see
    ``_INTERCEPT_COLUMN``).
    """
    odd = sorted((c for c in columns if re.fullmatch(r"[A-Za-z.][A-Za-z0-9_.]*", c) and "." in c),
                 key=len, reverse=True)
    if "Intercept" in columns:
        odd.append("Intercept")
    if not odd:
        return expr
    pieces = []
    for piece, quoted in _split_quoted(expr):
        if not quoted:
            for c in odd:  # longest first; a quoted name is not matched again (backtick boundary)
                quote = _INTERCEPT_COLUMN if c == "Intercept" else f"`{c}`"
                piece = _token_pattern(c).sub(lambda _m, q=quote: q, piece)
        elif piece == "`Intercept`" and "Intercept" in columns:
            piece = _INTERCEPT_COLUMN
        pieces.append(piece)
    return "".join(pieces)


def ordered_columns(df: pd.DataFrame) -> frozenset[str]:
    """Columns that are ordered pandas categoricals (R's ordered factors)."""
    return frozenset(c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype) and df[c].cat.ordered)


def code_ordered(expr: str, ordered: frozenset[str]) -> str:
    """R codes an ordered factor by orthogonal polynomial contrasts (``contr.poly``:
    columns ``x.L, x.Q, x.C, x^4, ...``), formulaic by treatment contrasts:
    wrap each ordered column that ``expr`` (after :func:`quote_names`) uses
    directly, not inside a call such as ``C(x)`` or ``I(x)``, in
    ``C(x, contr.poly)``; :func:`r_name` gives the columns R's names."""
    if not ordered:
        return expr
    out: list[str] = []
    calls: list[bool] = []                    # per open parenthesis: is it a call's?
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "`'\"":
            j = expr.find(c, i + 1)
            j = len(expr) - 1 if j < 0 else j
            token = expr[i:j + 1]
            if c == "`" and token[1:-1] in ordered and not any(calls):
                token = f"C({token}, contr.poly)"
            out.append(token)
            i = j + 1
            continue
        word = re.match(r"[A-Za-z0-9_.]+", expr[i:])
        if word:
            name = word.group(0)
            called = expr[i + len(name):].lstrip().startswith("(")
            out.append(f"C({name}, contr.poly)" if name in ordered and not any(calls) and not called else name)
            i += len(name)
            continue
        if c == "(":
            before = "".join(out).rstrip()
            calls.append(bool(before) and (before[-1].isalnum() or before[-1] in "_."))
        elif c == ")" and calls:
            calls.pop()
        out.append(c)
        i += 1
    return "".join(out)


def formulaic_text(expr: str, df: pd.DataFrame) -> str:
    """A formula (or a random term's expression) as handed to formulaic for
    the columns of ``df``: odd names quoted, ordered factors polynomial-coded."""
    return code_ordered(quote_names(expr, list(df.columns)), ordered_columns(df))


def _mentioned(expr: str, columns: list[str]) -> set[str]:
    """Columns named in expr as whole tokens, quoted (`a b`, Q('a b')) or not."""
    out = set()
    for c in columns:
        if f"`{c}`" in expr or f"'{c}'" in expr or f'"{c}"' in expr:
            out.add(c)
            continue
        for piece, quoted in _split_quoted(expr):
            if not quoted and _token_pattern(c).search(piece):
                out.add(c)
                break
    return out


def _required(expr: str, formula_text: str, columns: list[str]) -> tuple[set[str], set[str]]:
    """(columns the expression uses, names it uses that are not columns)."""
    from formulaic import Formula           # on first use (module docstring)
    try:
        req = set(Formula(quote_names(expr, columns)).required_variables)
    except Exception as e:  # formulaic's own parse errors
        raise FormulaError(f"cannot parse {expr!r}: {e}", formula_text, expr, formula_text.find(expr)) from None
    mentioned = _mentioned(expr, columns)
    cols = set(columns)
    # a name that is called is a function (R's sqrt, a builtin such as abs), not a variable
    called = {v for v in req - cols if re.search(rf"(?<![\w.]){re.escape(v)}\s*\(", expr)}
    for v in sorted(called):
        if v not in R_FUNCTIONS and not callable(getattr(builtins, v, None)):
            raise FormulaError(f"{v}() is not a function a formula can call: use R's math functions ("
                               f"{', '.join(sorted(set(R_FUNCTIONS) | {'log', 'exp', 'abs'}))}), numpy's (np.{v}(x) "
                               "if numpy has it), or I(...) for arithmetic", formula_text, v, formula_text.find(v))
    # formulaic reports `x.1` as 'x': a name that prefixes a mentioned dotted column is not unknown
    unknown = {v for v in req - cols - called if not any(m.startswith(v + ".") for m in mentioned)}
    return mentioned | (req & cols), unknown


def _close(name: str, columns: list[str]) -> list[str]:
    lower = {c.lower(): c for c in columns}
    hits = [lower[name.lower()]] if name.lower() in lower else []
    hits += [c for c in difflib.get_close_matches(name, columns, n=3, cutoff=0.6) if c not in hits]
    return hits[:3]


def _missing_message(name: str, where: str, columns: list[str]) -> str:
    close = _close(name, columns)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = columns[:20]
    more = f" ... ({len(columns)} in all)" if len(columns) > 20 else ""
    return f"{where} {name!r} is not a column of the data{hint} (columns: {shown}{more})"


def _independent_columns(X: np.ndarray, chunk_rows: int = 1 << 16) -> list[int]:
    """Indices of a maximal set of linearly independent columns, keeping
    earlier columns first (R's pivoting QR keeps the same set).

    Column j is kept when its distance from the span of the columns before it,
    ``|R_jj|`` of the unpivoted QR ``X = QR``, exceeds ``_RANK_TOL`` times its
    norm, or, when X has a constant column, the norm of its deviations from
    its mean: a covariate's location is then irrelevant (x + 1e8 SD is x),
    where R's relative test on the raw norm would drop it. R comes from a QR
    by row blocks (TSQR: ``R = qr([R_prev; X_block])``), so the memory is
    O(chunk_rows p), not a copy of X."""
    n, p = X.shape
    R = np.zeros((0, p))
    for lo in range(0, n, chunk_rows):
        R = np.linalg.qr(np.vstack([R, X[lo:lo + chunk_rows]]), mode="r")
    scale = np.linalg.norm(X, axis=0)
    mean = X.mean(axis=0)
    spread = np.sqrt(sum(np.sum((X[lo:lo + chunk_rows] - mean) ** 2, axis=0) for lo in range(0, n, chunk_rows)))
    constant = (spread == 0) & (scale > 0)
    if constant.any():
        scale = np.where(constant, scale, spread)
    diag = np.zeros(p)                        # R has min(n, p) rows
    diag[:R.shape[0]] = np.abs(np.diagonal(R))
    return [j for j in range(p) if scale[j] > 0 and diag[j] > _RANK_TOL * scale[j]]


@functools.lru_cache(maxsize=256)
def _formulaic(text: str) -> Any:
    """formulaic's parsed formula for a formula text, parsed once per text
    (a Formula is immutable; parsing costs more than a small model matrix)."""
    from formulaic import Formula           # on first use (module docstring)
    return Formula(text)


def _model_matrix(text: str, data: pd.DataFrame) -> Any:
    """formulaic's model matrix (or matrices, for a formula with a response)
    of a formula text on ``data``, with R's functions and missing values kept."""
    from formulaic import model_matrix
    return model_matrix(_formulaic(text), data, na_action="ignore", context=R_FUNCTIONS)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _plain_column(name: str, df: pd.DataFrame) -> bool:
    """``name`` is a plainly named numeric column of ``df`` (not boolean, a
    factor, a keyword or formulaic's ``Intercept``)."""
    if not _PLAIN_NAME.fullmatch(name) or keyword.iskeyword(name) or name == "Intercept":
        return False
    if name not in df.columns or not df.columns.is_unique:
        return False
    dtype = df[name].dtype
    return isinstance(dtype, np.dtype) and dtype.kind in "iuf"


def _plain_terms(expr: str, df: pd.DataFrame) -> tuple[bool, tuple[str, ...]] | None:
    """(intercept, columns) of an expression that is a sum of plain numeric
    columns of ``df`` (:func:`_plain_column`) and the intercept's markers,
    read as formulaic reads it: the last of ``+1``, ``-1``, ``+0``, ``-0``
    decides the intercept, which comes first; a repeated column counts once.
    None for any other expression (factors, interactions, calls, removals,
    odd names): formulaic evaluates those."""
    tokens = re.split(r"([+-])", expr)
    intercept, names, sign = True, [], "+"
    for i, token in enumerate(tokens):
        token = token.strip()
        if i % 2:
            sign = token
        elif not token:
            if i or len(tokens) == 1:             # only a leading sign may have nothing before it ('-1 + x')
                return None
        elif token in ("0", "1"):
            intercept = (token == "1") == (sign == "+")
        elif sign == "+" and _plain_column(token, df):
            if token not in names:
                names.append(token)
        else:
            return None
    return intercept, tuple(names)


def _plain_matrix(terms: tuple[bool, tuple[str, ...]], df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The model matrix (n, k) and lme4's column names of :func:`_plain_terms`."""
    intercept, names = terms
    out = np.empty((len(df), int(intercept) + len(names)))
    if intercept:
        out[:, 0] = 1.0
    for j, name in enumerate(names, start=int(intercept)):
        out[:, j] = df[name].to_numpy(dtype=float)
    return out, ["(Intercept)"] * intercept + list(names)


def build_design(formula: str | ParsedFormula, data: Any, weights: Any = None, offset: Any = None, *,
                 planned: bool = False, glmm: bool = False) -> Design:
    """Evaluate a formula on data.

    Args:
        formula: lme4 formula text or a :class:`ParsedFormula`.
        data: a DataFrame or a dict of equal-length arrays.
        weights: prior weights, a column name or an array with one entry per
            row of ``data`` (lme4's ``weights``); rows of weight 0 are dropped.
        offset: a column name or an array with one entry per row of ``data``,
            added to the formula's ``offset()`` terms (lme4's ``offset``).
        planned: a planned design: the response (a column name) may be
            absent from ``data``; its ``y`` is then zeros and ``has_response``
            False (for simulation, :func:`lmm_jax.planned_model`).
        glmm: the design of a generalized linear mixed model: a response
            column that is a factor (text, categorical or boolean) is coded
            0 for its first level and 1 for the others (R's binomial family:
            categories in their order, text sorted, False before True), and
            a grouping factor may have as many levels as observations (an
            observation-level random effect, ``(1 | obs)``, is a valid
            overdispersion term of a GLMM; lme4 checks the levels of
            ``lmer`` fits only).

    Returns:
        The :class:`Design`.

    Raises:
        FormulaError: the formula cannot be parsed.
        DataError: the data cannot be used (see messages).
    """
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    df = as_frame(data)
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)           # a new frame (a lazy copy): the caller's keeps its names
    columns = list(df.columns)

    # -- which columns are used ----------------------------------------------
    response_name = pf.response.strip("`")
    has_response = not (planned and response_name not in df.columns)
    # a plain numeric response and fixed part (_plain_terms) are read here, anything else by formulaic
    plain_response = not has_response or (pf.response == response_name and _plain_column(response_name, df))
    plain_fixed = _plain_terms(pf.fixed, df) if plain_response else None
    plain_random = {term.expr: _plain_terms(term.expr, df) for term in pf.random}
    if plain_fixed is not None:
        fixed_vars, unknown = set(plain_fixed[1]) | ({response_name} if has_response else set()), set()
    else:
        fixed_vars, unknown = _required(pf.fixed_formula if has_response else f"~ {pf.fixed}", pf.text, columns)
    if unknown:
        name = sorted(unknown)[0]
        what = "the response" if name == pf.response.strip("`") else "fixed-effects variable"
        raise DataError(_missing_message(name, what, columns))
    used = set(fixed_vars)
    for term in pf.random:
        for f in term.factors:
            name = f.strip("`")
            if name not in df.columns:
                raise DataError(_missing_message(name, f"grouping factor of the random-effects term {term}:",
                                                 columns))
            used.add(name)
        plain = plain_random[term.expr]
        slope_vars, unknown = (set(plain[1]), set()) if plain is not None else _required(term.expr, pf.text, columns)
        if unknown:
            raise DataError(_missing_message(sorted(unknown)[0], f"variable of the random-effects term {term}:",
                                             columns))
        used |= slope_vars
    for expr in pf.offsets:
        offset_vars, unknown = _required(expr, pf.text, columns)
        if unknown:
            raise DataError(_missing_message(sorted(unknown)[0], f"variable of offset({expr}):", columns))
        used |= offset_vars
    if has_response and glmm:
        df = _binary_response(pf.response, df)
    if has_response:
        _check_response_column(pf.response, df)
    elif not re.fullmatch(r"`?[A-Za-z_.][\w.]*`?", pf.response.strip()):
        raise DataError(f"a planned design's response must be a plain name (it is simulated), got {pf.response!r}")
    w_all = None if weights is None else _row_values(weights, "weights", df)
    o_all = None if offset is None else _row_values(offset, "offset", df)
    if w_all is not None:
        _check_weights(*w_all)

    # -- missing values: drop rows with NA in a used column (lme4's na.omit) ----
    complete = np.ones(len(df), dtype=bool)
    for c in sorted(used):                    # column by column: no copy of the used columns
        complete &= df[c].notna().to_numpy()
    if o_all is not None:
        complete &= ~np.isnan(o_all[0])
    n_dropped = int((~complete).sum())
    n_zero_weight = 0
    if w_all is not None:
        zero = complete & (w_all[0] == 0)
        n_zero_weight = int(zero.sum())
        complete &= ~zero
    if not complete.any():
        per_col = {c: int(df[c].isna().sum()) for c in sorted(used) if df[c].isna().any()}
        zeros = f" and {n_zero_weight} have weight 0" if n_zero_weight else ""
        raise DataError(f"all {len(df)} rows have a missing value in a used column (missing per column: "
                        f"{per_col}){zeros}; nothing is left to fit")
    # no copy when every row is complete and pandas copies on write (pandas 3): the lazy copy keeps the
    # caller's later edits of ``data`` out of the design
    df_used = df.copy(deep=not _COPY_ON_WRITE) if complete.all() else df.loc[complete]

    # -- fixed part --------------------------------------------------------
    fixed_spec = None                         # formulaic's, where it evaluated the fixed part
    if plain_fixed is not None:
        y = df_used[response_name].to_numpy(dtype=float) if has_response else np.zeros(len(df_used))
        X_full, names_full = _plain_matrix(plain_fixed, df_used)
    else:
        try:
            text = f"{_response_expression(pf.response)} ~ {pf.fixed}" if has_response \
                else f"{response_name}__planned ~ {pf.fixed}"
            frame = df_used if has_response else df_used.assign(**{f"{response_name}__planned": 0.0})
            mm = _model_matrix(formulaic_text(text, df), frame)
        except Exception as e:
            raise FormulaError(f"cannot evaluate the fixed part {pf.fixed_formula!r}: {e}", pf.text,
                               pf.fixed, pf.text.find(pf.fixed)) from None
        lhs = mm.lhs
        if lhs.shape[1] != 1 or not _is_numeric(lhs):
            raise DataError(f"the response {pf.response!r} is not one numeric column (it gives {lhs.shape[1]} "
                            f"column(s): {list(lhs.columns)[:5]}); linear mixed models need a numeric response")
        y = np.asarray(lhs, dtype=float).ravel()
        fixed_spec = mm.rhs.model_spec
        X_full = np.empty(mm.rhs.shape, dtype=float)      # row-major, filled column by column: no second copy
        for j in range(X_full.shape[1]):
            X_full[:, j] = mm.rhs.iloc[:, j].to_numpy(dtype=float)
        names_full = [r_name(c) for c in mm.rhs.columns]
        del mm, lhs, frame                    # formulaic's frames: X_full and y are all we keep
    if not np.isfinite(y).all():
        n_inf, n_nan = int(np.isinf(y).sum()), int(np.isnan(y).sum())
        raise DataError(f"the response {pf.response!r} has {n_inf} infinite and {n_nan} NaN value(s) among the "
                        f"rows used (first at row {df_used.index[np.flatnonzero(~np.isfinite(y))[0]]!r}); remove "
                        "those rows or set them to NaN in the data (rows with NaN are dropped)")
    if has_response and y.max() == y.min():
        raise DataError(f"the response {pf.response!r} is constant (every value is {y[0]!r}); there is no "
                        "variation to model")
    bad = ~np.isfinite(X_full).all(axis=0)
    if bad.any():
        raise DataError(f"fixed-effects column(s) {[names_full[i] for i in np.flatnonzero(bad)]} have infinite "
                        "or NaN values (after transforms such as log); remove those rows or set them to NaN in "
                        "the data (rows with NaN are dropped)")
    w_used = None if w_all is None else w_all[0][complete]
    o_used = None if o_all is None else o_all[0][complete]
    for expr in pf.offsets:
        o_used = _offset_values(expr, pf.text, df, df_used) + (0.0 if o_used is None else o_used)
    keep = _independent_columns(X_full)
    dropped = tuple(names_full[j] for j in range(X_full.shape[1]) if j not in keep)
    if dropped:
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column(s): "
                      f"{list(dropped)}", RankDeficiencyWarning, stacklevel=3)
    X = X_full if len(keep) == X_full.shape[1] else X_full[:, keep]
    del X_full
    fixef_names = tuple(names_full[j] for j in keep)
    if X.shape[0] <= X.shape[1]:
        raise DataError(f"{X.shape[1]} fixed-effects columns for {X.shape[0]} observations; there must be more "
                        "observations than fixed effects: simplify the fixed part (a factor with many levels "
                        "belongs in a random-effects term, e.g. (1 | g))")

    # -- random terms ------------------------------------------------------
    n = len(y)
    expanded: list[tuple[RandomTerm, str, np.ndarray, tuple[str, ...]]] = []
    for term in pf.random:
        plain = plain_random[term.expr]
        if plain is not None:
            Z, names = _plain_matrix(plain, df_used)
            cols = tuple(names)
        else:
            try:
                Zm = _model_matrix(formulaic_text(term.expr, df), df_used)
            except Exception as e:
                raise FormulaError(f"cannot evaluate the random-effects expression {term.expr!r}: {e}", pf.text,
                                   term.expr, pf.text.find(term.expr)) from None
            Z = Zm.to_numpy(dtype=float)
            cols = tuple(r_name(c) for c in Zm.columns)
            del Zm
        if Z.shape[1] == 0:
            raise FormulaError(f"random-effects term {term} has no columns; use (1 | g) for an intercept",
                               pf.text, term.expr, pf.text.find(term.expr))
        if not np.isfinite(Z).all():
            badc = [cols[c] for c in np.flatnonzero(~np.isfinite(Z).all(axis=0))]
            raise DataError(f"random-effects term {term} has infinite or NaN values in its column(s) {badc}; "
                            "remove those rows or set them to NaN in the data (rows with NaN are dropped)")
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
        if m >= n and not glmm:
            raise DataError(f"grouping factor {term.group!r} has {m} levels for {n} observations; the number of "
                            "levels must be less than the number of observations (lme4's check), or the random "
                            "effect cannot be told from the residual: drop the term")
        if m * Z.shape[1] >= n and not glmm:
            raise DataError(f"term {term} has {m * Z.shape[1]} random effects ({m} levels x {Z.shape[1]} columns) "
                            f"for {n} observations; with at least as many random effects as observations the "
                            "variance components and the residual variance cannot be told apart (lme4's "
                            f"nobs > nRE check): simplify the term, e.g. to (1 | {term.group})")
        terms.append(TermDesign(group=term.group, columns=cols, levels=labels, codes=codes, Z=Z,
                                expr=expr, factors=tuple(f.strip("`") for f in term.factors)))
    order = sorted(range(len(terms)), key=lambda i: -terms[i].m)  # stable: formula order among ties
    terms = [terms[i] for i in order]
    _warn_far_slopes(terms)
    design = Design(formula=pf, y=y, X=X, fixef_names=fixef_names, terms=tuple(terms), dropped_columns=dropped,
                    n_dropped_rows=n_dropped, data=df_used, fixed_text=formulaic_text(pf.fixed, df),
                    kept_columns=tuple(keep), weights=w_used, offset=o_used, n_zero_weight_rows=n_zero_weight,
                    offset_column=offset if isinstance(offset, str) else None, has_response=has_response,
                    source=df_used if complete.all() else df.copy(deep=not _COPY_ON_WRITE), used=complete)
    if fixed_spec is not None:
        design.__dict__["fixed_spec"] = fixed_spec        # the cached property, seeded
    return design


def new_offset(design: Design, data: pd.DataFrame, offset: Any = None) -> np.ndarray | float:
    """The offset of new data's rows: the formula's ``offset()`` terms on
    ``data`` plus the ``offset`` argument's column there (or ``offset``, a
    column name or an array, given for the new rows); 0 for a model without one.

    Raises:
        DataError: the model was fitted with an offset array and ``offset``
            is not given, or the values cannot be used.
    """
    total: np.ndarray | float = 0.0
    for expr in design.formula.offsets:
        total = total + _offset_values(expr, design.formula.text, data, data)
    if offset is None and design.offset_column is not None:
        offset = design.offset_column
    if offset is None:
        fitted_with_array = design.offset is not None and len(design.formula.offsets) == 0
        if fitted_with_array:
            raise DataError("the model was fitted with an offset array: pass offset= (an array or a column of "
                            "newdata) with the new rows' offsets")
        return total
    values, label = _row_values(offset, "offset", data)
    if not np.isfinite(values).all():
        raise DataError(f"{label} has missing or infinite values for the new rows; give every row an offset")
    return total + values


def _row_values(spec: Any, what: str, df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """``weights`` or ``offset`` as a float array with one entry per row of
    ``df`` (NaN where missing), and how to name it in messages."""
    if isinstance(spec, str):
        if spec not in df.columns:
            raise DataError(_missing_message(spec, f"{what} column", list(df.columns)))
        col, label = df[spec], f"{what} column {spec!r}"
    else:
        col, label = spec, what
        if np.ndim(spec) != 1 or len(spec) != len(df):
            raise DataError(f"{what} must be a column name or an array with one entry per row of the data "
                            f"({len(df)}), got shape {np.shape(spec)}")
    try:
        values = pd.to_numeric(pd.Series(np.asarray(col, dtype=object)), errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{label} is not numeric (e.g. {np.asarray(col, dtype=object)[0]!r}); give numbers") from None
    return values, label


def _check_weights(w: np.ndarray, label: str) -> None:
    """Prior weights must be finite and >= 0 (0 drops the row)."""
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kinds = [k for k, m in (("NaN", np.isnan(w)), ("infinite", np.isinf(w)), ("negative", w < 0)) if m.any()]
        raise DataError(f"{label} has {int(bad.sum())} {'/'.join(kinds)} value(s) (first {w[i]!r} at row {i}); "
                        "prior weights must be finite and non-negative (a weight of 0 drops the row): fix or "
                        "remove those rows")


def _offset_values(expr: str, text: str, df: pd.DataFrame, df_used: pd.DataFrame) -> np.ndarray:
    """An ``offset(expr)`` term evaluated on the rows used."""
    try:
        mm = _model_matrix(f"0 + I({formulaic_text(expr, df)})", df_used)
        values = mm.to_numpy(dtype=float)
    except Exception as e:
        raise FormulaError(f"cannot evaluate offset({expr}): {e}", text, expr, text.find(expr)) from None
    if values.shape[1] != 1:
        raise DataError(f"offset({expr}) gives {values.shape[1]} columns; an offset is one numeric value per row")
    if not np.isfinite(values).all():
        raise DataError(f"offset({expr}) has infinite or NaN values among the rows used (after transforms such as "
                        "log); remove those rows or set them to NaN in the data (rows with NaN are dropped)")
    return values[:, 0]


class _Unchanged:
    """The default of an argument of ``update``: the fitted model's value."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


def response_rows(design: Design, y: Any) -> np.ndarray:
    """A new response on the rows ``design`` uses, as lme4's ``refit`` takes it.

    Args:
        design: the design.
        y: one value per row used (``design.n``), or per row of the input
            (``len(design.source)``: the rows dropped for missing values are
            then left out, as lme4 does with a fit's ``na.action``); a pandas
            Series is matched by its index labels to the rows used.

    Raises:
        DataError: another length, labels of a Series that miss rows used,
            or missing, infinite or constant values.
    """
    n = design.n
    if isinstance(y, pd.Series):
        index = design.data.index
        if not y.index.is_unique or not index.isin(y.index).all():
            why = ("repeats labels" if not y.index.is_unique
                   else f"lacks rows the fit used (e.g. {list(index[~index.isin(y.index)][:5])})")
            raise DataError(f"the new response is a Series whose index {why}: give one value per row of the fit's "
                            "data (index labels as in the data), or an array")
        values = pd.to_numeric(y.reindex(index), errors="coerce").to_numpy(dtype=float)
    else:
        try:
            values = np.asarray(y, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"the new response must be numeric, got {type(y).__name__}") from None
        total = None if design.source is None else len(design.source)
        if values.ndim == 1 and values.shape[0] == total and total != n:
            values = values[design.used]
        elif values.shape != (n,):
            rows = f"{n} (the rows the fit used)" + (f" or {total} (the rows of its data)" if total != n else "")
            raise DataError(f"the new response has shape {values.shape}; give one value per row: {rows}. For "
                            "many responses at once use model.fit_batch(Y)")
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(f"the new response has {bad} missing or infinite value(s) among the {n} rows the fit used; "
                        "a refit keeps the fit's rows: give finite values (or update(data=...) with the rows to use)")
    if values.max() == values.min():
        raise DataError(f"the new response is constant (every value is {values[0]!r}); there is no variation to model")
    return values


def with_response(design: Design, y: np.ndarray) -> Design:
    """The design with another response ``y`` (n,) on the same rows: X, Z,
    the terms and the working basis are kept (:meth:`Working.with_response`).

    The response's column of ``data`` (and of ``source``, missing on the rows
    not used) holds ``y``, so that what re-reads the data (a refit of another
    formula, :mod:`lmm_jax.inference.ranova`) sees it. A response that is an
    expression (``log(y)``) becomes the column of that name: the formula's
    response is then that name in backticks (```log(y)` ~ x + (1 | g)``).
    """
    pf = design.formula
    response = pf.response
    column = response[1:-1] if len(response) > 1 and response[0] == response[-1] == "`" else response
    if column not in design.data.columns and not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", column):
        rhs = pf.text.split("~", 1)[1]
        pf = dataclasses.replace(pf, response=f"`{column}`", text=f"`{column}` ~{rhs}")
    data = design.data.assign(**{column: y})
    source = design.source
    if source is design.data or source is None:
        source = data
    elif design.used is not None:
        full = np.full(len(source), np.nan)
        full[design.used] = y
        source = source.assign(**{column: full})
    out = dataclasses.replace(design, formula=pf, y=y, data=data, source=source, has_response=True)
    out.__dict__["working"] = design.working.with_response(y)      # the cached property, seeded: no new QR
    for name in ("theta_layout", "fixed_spec"):
        if name in design.__dict__:
            out.__dict__[name] = design.__dict__[name]
    return out


def treatment_coded(design: Design) -> Design | None:
    """The design with its ordered factors treatment-coded instead of
    polynomial-coded (:func:`code_ordered`), or None if it has no ordered
    factor in the fixed part. Both X span the same space; type III
    hypotheses (:mod:`lmm_jax.inference.anova`) are built on this one."""
    df = design.data
    text = quote_names(design.formula.fixed_formula, list(df.columns))
    if code_ordered(text, ordered_columns(df)) == text:
        return None
    rhs = _model_matrix(text, df).rhs
    X_full = rhs.to_numpy(dtype=float)
    keep = _independent_columns(X_full)
    names = [r_name(c) for c in rhs.columns]
    out = dataclasses.replace(design, X=X_full[:, keep], fixef_names=tuple(names[j] for j in keep),
                              fixed_text=quote_names(design.formula.fixed, list(df.columns)), kept_columns=tuple(keep))
    out.__dict__["fixed_spec"] = rhs.model_spec
    return out


def _warn_far_slopes(terms: list[TermDesign]) -> None:
    """Warn when a random-effects column of a correlated term with an
    intercept sits more than :data:`OFFSET_WARN_RATIO` SDs from zero.

    Fixed effects and the response are fitted in a working basis that makes
    their location irrelevant (:mod:`lmm_jax.build.working`); the random
    effects' columns are not reparametrised (their covariance parameters are
    reported in the user's columns), so Z'Z's rounding errors grow like
    eps * mean^2 while the information is in the variance, and the
    objective loses about 2 log10(mean / SD) digits. Centring such a
    variable changes the intercept's variance and the correlation only.
    """
    far = []
    for t in terms:
        sd, mean = t.Z.std(axis=0), t.Z.mean(axis=0)
        if t.k < 2 or not np.any(sd == 0):
            continue
        far += [f"{t.columns[j]} in ({' + '.join(t.columns)} | {t.group}) (mean {mean[j]:.4g}, SD {sd[j]:.3g})"
                for j in range(t.k) if sd[j] > 0 and abs(mean[j]) > OFFSET_WARN_RATIO * sd[j]]
    if far:
        warnings.warn(f"{', '.join(far)} lie more than {OFFSET_WARN_RATIO:g} SDs from zero; the random effects' "
                      "cross-products lose digits and the log-likelihood may be off by ~1e-6: center these "
                      "variables in the random-effects term (the intercept's variance and the correlation "
                      "change, the fit's log-likelihood does not)", ScalingWarning, stacklevel=4)


def _check_response_column(response: str, df: pd.DataFrame) -> None:
    """A response that is a plain column must be numeric (or boolean)."""
    name = response.strip("`")
    if name not in df.columns:
        return  # an expression such as log(y): checked once evaluated
    col = df[name]
    if pd.api.types.is_bool_dtype(col) or (pd.api.types.is_numeric_dtype(col)
                                           and not isinstance(col.dtype, pd.CategoricalDtype)):
        return
    example = col.dropna().iloc[0] if col.notna().any() else None
    hint = ("convert it with pd.to_numeric(data[...])" if not isinstance(col.dtype, pd.CategoricalDtype)
            else "a categorical response needs a GLMM; for numeric codes use .astype(float)")
    raise DataError(f"the response {name!r} is not numeric (dtype {col.dtype}, e.g. {example!r}); linear mixed "
                    f"models need a numeric response: {hint}")


def _response_expression(response: str) -> str:
    """The response as formulaic should evaluate it: arithmetic at the top
    level (``incidence/size``, ``y - 10``) is R's arithmetic, where formulaic
    reads ``/``, ``*``, ``+``, ``-`` and ``^`` as formula operators: it is
    wrapped in ``I(...)`` (``^`` a power there); a name or a call is left as it is."""
    depth, top = 0, []
    for piece, quoted in _split_quoted(response):
        if quoted:
            continue
        for c in piece:
            depth += (c == "(") - (c == ")")
            if depth == 0 and c in "+-*/^%":
                top.append(c)
    if not top:
        return response
    return f"I({response.replace('^', '**')})"


def _binary_response(response: str, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a factor response column (text, categorical, boolean)
    replaced by its 0/1 coding, R's binomial convention: 0 for the first
    level (categories in their order, text sorted, False), 1 for every other
    level; missing values stay missing. Numeric columns and expressions are
    left as they are."""
    name = response.strip("`")
    if name not in df.columns:
        return df
    col = df[name]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col) \
            and not isinstance(col.dtype, pd.CategoricalDtype):
        return df
    if isinstance(col.dtype, pd.CategoricalDtype):
        levels = [c for c in col.cat.categories if (col == c).any()]
    else:
        levels = sorted(col.dropna().unique().tolist(), key=lambda v: (str(type(v)), v))
    if not levels:
        return df
    coded = np.where(col.isna().to_numpy(), np.nan, (col != levels[0]).to_numpy(dtype=float))
    return df.assign(**{name: coded})


def _is_numeric(frame: pd.DataFrame) -> bool:
    try:
        np.asarray(frame, dtype=float)
        return True
    except (TypeError, ValueError):
        return False

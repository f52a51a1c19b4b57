r"""Analysis-of-variance tables: type III F tests per fixed-effect term
(lmerTest's ``anova``) and likelihood-ratio tests between nested models
(lme4's ``anova(m0, m1, ...)``).

Type III hypotheses follow lmerTest's ``get_contrasts_type3`` for
treatment-coded designs: with the full-rank X and the over-parametrised
``rdX = [1, model.matrix(~ 0 + term) for each term]``,

    L = zapsmall(t(ginv(X) rdX)),

then for each term contained in a higher-order term (same numeric variables,
strictly more variables) its columns of L are replaced by their residuals on
the containing terms' columns (highest order first); each term's hypothesis is
the transpose of its columns of L restricted to the rows named like X's
columns. Models with at most one term use the type I (Doolittle) contrasts,
as lmerTest does. The F tests are :func:`lmm_jax.inference.tests.f_test`.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..distributions import chi2_sf
from ..runtime.scope import entry_point
from ..build.design import R_FUNCTIONS, r_name, treatment_coded
from ..errors import InferenceError, check_bool
from .tests import F_COLUMNS, f_test, normalize_ddf

if TYPE_CHECKING:
    from ..results import LMMResult


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    x = np.asarray(x, dtype=float)
    mx = np.max(np.abs(x)) if x.size else 0.0
    if mx > 0:
        digits = max(0, digits - int(np.ceil(np.log10(mx))))
    return np.round(x, digits)


def _terms(result: "LMMResult"):
    """(name, formulaic term, kept column positions) for each fixed term, the intercept included."""
    d = result.design
    spec = d.fixed_spec
    pos = {full: i for i, full in enumerate(d.kept_columns)}
    out = []
    for term, cols in spec.term_indices.items():
        out.append((str(term), term, [pos[c] for c in cols if c in pos]))
    return out


def _check_treatment(result: "LMMResult") -> None:
    for name, (kind, state) in result.design.fixed_spec.encoder_state.items():
        contrasts = state.get("contrasts") if isinstance(state, dict) else None
        if contrasts is not None and type(contrasts.contrasts).__name__ != "TreatmentContrasts":
            raise InferenceError(f"type III tests are implemented for treatment-coded factors only; factor "
                                 f"{name!r} uses {type(contrasts.contrasts).__name__}: refit with the default "
                                 "(treatment) coding, or test your own contrasts with result.contrast(L)")


def doolittle_contrasts(XtX: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """lmerTest's ``t(doolittle(X'X)$L)``: rows are type I (sequential) contrasts."""
    n = XtX.shape[0]
    L = np.eye(n)
    U = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            U[i, j] = XtX[i, j] - L[i, :i] @ U[:i, j]
        for j in range(i + 1, n):
            v = XtX[j, i] - L[j, :i] @ U[:i, i]
            L[j, i] = 0.0 if abs(U[i, i]) < eps else v / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L.T


def type3_contrasts(result: "LMMResult") -> dict[str, np.ndarray]:
    """lmerTest's type III hypothesis matrix for each term (intercept excluded).

    lmerTest's type III hypotheses do not depend on the factors' coding. With
    ordered factors (polynomial-coded, as in lme4) they are built on the
    treatment-coded twin of X and mapped: ``X = X_t A`` gives
    ``beta_t = A beta``, so ``L_t beta_t = (L_t A) beta``."""
    twin = treatment_coded(result.design)
    if twin is None:
        return _type3_treatment(result)
    A = np.linalg.lstsq(twin.X, result.design.X, rcond=None)[0]
    return {n: zapsmall(L @ A) for n, L in _type3_treatment(SimpleNamespace(design=twin)).items()}


def _type3_treatment(result: "LMMResult") -> dict[str, np.ndarray]:
    d = result.design
    terms = _terms(result)
    named = [(n, t, c) for n, t, c in terms if n != "1"]
    has_intercept = any(n == "1" for n, _, _ in terms)
    X = d.X
    if X.shape[1] <= 1 or len(named) <= 1:
        Lfull = doolittle_contrasts(X.T @ X) if X.shape[1] > 1 else np.ones((1, 1))
        return {n: Lfull[c] for n, _, c in named}
    _check_treatment(result)
    blocks, names = [], []
    if has_intercept:
        blocks.append(np.ones((d.n, 1)))
        names.append("(Intercept)")
    data = d.data
    for n, term, _ in named:
        mm = model_matrix(f"0 + {n}", data, ensure_full_rank=False, context=R_FUNCTIONS)
        blocks.append(np.asarray(mm, dtype=float))
        names.extend(r_name(c) for c in mm.columns)
    rdX = np.concatenate(blocks, axis=1)
    if np.any(np.all(rdX == 0, axis=0)):
        empty = [nm for nm, z in zip(names, np.all(rdX == 0, axis=0)) if z]
        warnings.warn(f"missing cells for {empty}: interpret type III hypotheses with care", UserWarning,
                      stacklevel=3)
    L = zapsmall((np.linalg.pinv(X) @ rdX).T)            # rows: rdX parameters, columns: X columns
    kinds = {name: kind for name, (kind, _) in d.fixed_spec.encoder_state.items()}
    variables = {n: {str(f) for f in term.factors} for n, term, _ in named}
    numerics = {n: {v for v in vs if getattr(kinds.get(v), "value", None) == "numerical"}
                for n, vs in variables.items()}

    def contained_in(a: str) -> list[str]:
        return [b for b, _, _ in named if variables[a] < variables[b] and numerics[a] == numerics[b]]

    cols = {n: c for n, _, c in named}
    order = [n for n, t, _ in sorted(named, key=lambda x: -len(x[1].factors))]
    for n in order:
        containers = contained_in(n)
        if not containers or not cols[n]:
            continue
        A = L[:, sum((cols[b] for b in containers), [])]
        Y = L[:, cols[n]]
        coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
        L[:, cols[n]] = zapsmall(Y - A @ coef)
    row_of = {nm: i for i, nm in enumerate(names)}
    missing = [nm for nm in d.fixef_names if nm not in row_of]
    if missing:
        raise InferenceError(f"cannot match coefficients {missing} to the terms' full dummy coding {names}; "
                             "test these terms with result.contrast(L)")
    L = L[[row_of[nm] for nm in d.fixef_names]]
    out = {}
    for n, _, c in named:
        Lt = L[:, c].T
        out[n] = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
    return out


@entry_point
def anova_table(result: "LMMResult", ddf: str = "satterthwaite") -> pd.DataFrame:
    """Type III F tests, one row per fixed-effect term (lmerTest's ``anova``)."""
    ddf = normalize_ddf(ddf)
    rows, index = [], []
    for name, L in type3_contrasts(result).items():
        index.append(r_name(name))
        if L.shape[0] == 0:
            rows.append({c: np.nan for c in F_COLUMNS})
        else:
            rows.append(f_test(result, L, ddf))
    title = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's", "residual": "residual",
             "none": "asymptotic (infinite)"}[ddf]
    table = pd.DataFrame(rows, index=index, columns=F_COLUMNS)
    table.attrs["heading"] = f"Type III Analysis of Variance Table with {title} method"
    return table


@entry_point
def likelihood_ratio_table(*results: "LMMResult", refit: bool = True,
                           names: list[str] | None = None) -> pd.DataFrame:
    """Likelihood-ratio tests between nested models (lme4's ``anova(m0, m1, ...)``).

    Models are sorted by number of parameters; each row after the first is
    tested against the row before it: ``Chisq`` is the drop in deviance,
    ``Df`` the added parameters. With ``refit=True`` (lme4's default) REML
    fits are refitted by maximum likelihood first, because REML criteria of
    models with different fixed effects are not comparable; the returned
    table's ``attrs["note"]`` says so and a ``UserWarning`` is issued.

    Args:
        *results: two or more fits of the same response on the same rows.
        refit: refit REML fits by ML (lme4's ``refit = TRUE``).
        names: row labels (default ``m0, m1, ...`` in the order given).

    Returns:
        DataFrame with lme4's columns ``npar, AIC, BIC, logLik, deviance,
        Chisq, Df, Pr(>Chisq)``.
    """
    if len(results) < 2:
        raise InferenceError(f"anova needs at least two fitted models to compare, got {len(results)}")
    names = list(names) if names is not None else [f"m{i}" for i in range(len(results))]
    if len(names) != len(results):
        raise InferenceError(f"got {len(names)} names for {len(results)} models")
    ys = [r.design.y for r in results]
    if any(y.shape != ys[0].shape or not np.array_equal(y, ys[0]) for y in ys[1:]):
        raise InferenceError("models were not all fitted to the same response on the same rows (check missing "
                             "values and the response); likelihood-ratio tests need identical data")
    note = ""
    fits = list(results)
    if refit and any(r.reml for r in fits):
        refitted = [i for i, r in enumerate(fits) if r.reml]
        note = (f"refitting model(s) {[names[i] for i in refitted]} with ML (instead of REML), as lme4 does")
        warnings.warn(note, UserWarning, stacklevel=2)
        fits = [r.model.fit(reml=False) if r.reml else r for r in fits]
    elif any(r.reml for r in fits) and len({tuple(r.design.fixef_names) for r in fits}) > 1:
        warnings.warn("comparing REML criteria of models with different fixed effects is not meaningful; use "
                      "refit=True", UserWarning, stacklevel=2)
    order = sorted(range(len(fits)), key=lambda i: (fits[i].npar, i))
    rows = []
    prev = None
    for i in order:
        r = fits[i]
        dev = r.objective
        row = {"npar": r.npar, "AIC": r.aic, "BIC": r.bic, "logLik": r.loglik, "deviance": dev,
               "Chisq": np.nan, "Df": np.nan, "Pr(>Chisq)": np.nan}
        if prev is not None:
            chisq = max(prev["deviance"] - dev, 0.0)
            df = r.npar - prev["npar"]
            row.update(Chisq=chisq, Df=float(df), **{"Pr(>Chisq)": float(chi2_sf(chisq, df)) if df > 0
                                                     else np.nan})
        rows.append(row)
        prev = row
    table = pd.DataFrame(rows, index=[names[i] for i in order])
    table.attrs["note"] = note
    return table


@entry_point
def anova(*results: "LMMResult", refit: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """``lmm_jax.anova(m0, m1, ...)``: likelihood-ratio tests between nested
    fits, lme4's ``anova`` table (see :func:`likelihood_ratio_table`). With a
    single fit, its type III F table with Satterthwaite's df
    (:func:`anova_table`; ``fit.anova(ddf=...)`` for another ddf).

    Args:
        *results: one fit, or two or more fits of the same response on the
            same rows.
        refit: refit REML fits by ML before comparing (lme4's ``refit = TRUE``);
            with different fixed effects their REML criteria are not comparable.
        names: row labels of the comparison (default ``m0, m1, ...``).

    Returns:
        DataFrame with lme4's columns ``npar, AIC, BIC, logLik, deviance,
        Chisq, Df, Pr(>Chisq)``; for one fit, ``Sum Sq, Mean Sq, NumDF,
        DenDF, F value, Pr(>F)`` per fixed-effect term.

    Raises:
        TypeError: an argument that is not a fit.
        InferenceError: fits of different responses or rows, or ``names`` of
            the wrong length.

    Example:
        >>> data = lmm_jax.datasets.load("sleepstudy")
        >>> m0 = lmm_jax.fit("Reaction ~ 1 + (Days | Subject)", data)
        >>> m1 = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", data)
        >>> lmm_jax.anova(m0, m1)  # doctest: +SKIP
    """
    for i, r in enumerate(results):
        if not all(hasattr(r, a) for a in ("model", "design", "objective", "reml")):
            raise TypeError(f"anova takes fitted models (results of lmm_jax.fit), got {r!r} "
                            f"({type(r).__name__}) as argument {i + 1}; for one fit's type III F table with "
                            "another ddf, use fit.anova(ddf=...)")
    refit = check_bool(refit, "refit")
    if len(results) == 1:
        return anova_table(results[0])
    return likelihood_ratio_table(*results, refit=refit, names=names)

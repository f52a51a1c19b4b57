"""Fitted values, residuals and per-level coefficients (lme4's ``fitted``,
``residuals`` and ``coef``), labelled by the input's rows.

    mu (conditional) = X beta + Z b + o,      mu (marginal) = X beta + o

with o the offset. Residuals follow lme4's ``residuals.merMod`` for a linear
mixed model with prior weights w: ``"response"`` and ``"working"`` are
``y - mu``; ``"pearson"`` and ``"deviance"`` are ``sqrt(w) (y - mu)`` (the
same as ``"response"`` without weights); ``scaled`` divides by sigma.

Rows are labelled by the index of the data the model was built on
(:func:`on_rows`): ``na_action="omit"`` gives the rows used (lme4's
``na.omit``), ``"exclude"`` every row of the data, NaN where a row was
dropped for a missing value or a zero weight (lme4's ``na.exclude``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import check_bool
from ..runtime.scope import entry_point

if TYPE_CHECKING:
    from ..build.design import Design
    from ..results import LMMResult

NA_ACTIONS = ("omit", "exclude")
LEVELS = ("conditional", "marginal")
RESIDUAL_TYPES = ("response", "working", "pearson", "deviance")


def _check(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_na_action(na_action: str) -> str:
    """``na_action`` if it is ``"omit"`` or ``"exclude"`` (ValueError otherwise)."""
    return _check(na_action, "na_action", NA_ACTIONS)


def on_rows(values: np.ndarray, design: "Design", na_action: str = "omit", name: str | None = None) -> pd.Series:
    """``values`` (one per row used) as a Series on the data's index.

    Args:
        values: (n,) values in the model's row order.
        design: the model's design (``data`` holds the rows used, ``source``
            and ``used`` every row of the input).
        na_action: ``"omit"``: the rows used; ``"exclude"``: every row of
            the input, NaN on the rows the fit did not use.
        name: the Series' name.
    """
    check_na_action(na_action)
    if na_action == "omit" or design.source is None or design.used is None:
        return pd.Series(values, index=design.data.index, name=name)
    full = np.full(len(design.source), np.nan)
    full[design.used] = values
    return pd.Series(full, index=design.source.index, name=name)


def linear_predictor(result: "LMMResult", level: str = "conditional") -> np.ndarray:
    """mu over the rows used: ``X beta + o`` (``"marginal"``) plus ``Z b``
    (``"conditional"``, lme4's ``fitted``)."""
    _check(level, "level", LEVELS)
    d = result.design
    out = d.X @ result.beta if d.offset is None else d.X @ result.beta + d.offset
    if level == "conditional":
        for t, b in zip(d.terms, result.b):
            out = out + np.sum(t.Z * b[t.codes], axis=1)
    return out


@entry_point
def fitted_values(result: "LMMResult", level: str = "conditional", na_action: str = "omit") -> pd.Series:
    """Fitted values as a Series on the data's index (module docstring)."""
    check_na_action(na_action)
    mu = linear_predictor(result, level)
    return on_rows(mu, result.design, na_action, "fitted")


@entry_point
def residual_values(result: "LMMResult", type: str = "response", scaled: bool = False, level: str = "conditional",
                    na_action: str = "omit") -> pd.Series:
    """Residuals as a Series on the data's index (module docstring).

    Args:
        result: the fit.
        type: ``"response"`` (default, lme4's for LMMs), ``"working"``,
            ``"pearson"`` or ``"deviance"``.
        scaled: divide by sigma (lme4's ``scaled = TRUE``).
        level: ``"conditional"`` (y - X beta - Z b - o) or ``"marginal"``
            (y - X beta - o).
        na_action: ``"omit"`` or ``"exclude"`` (:func:`on_rows`).
    """
    _check(type, "type", RESIDUAL_TYPES)
    scaled = check_bool(scaled, "scaled")
    check_na_action(na_action)
    d = result.design
    r = d.y - linear_predictor(result, level)
    if type in ("pearson", "deviance") and d.weights is not None:
        r = r * np.sqrt(d.weights)
    if scaled:
        r = r / result.sigma
    return on_rows(r, d, na_action, "residuals")


@entry_point
def coef_tables(result: "LMMResult") -> dict[str, pd.DataFrame]:
    """lme4's ``coef``: per grouping factor, levels x coefficients, each
    the fixed effect plus the level's random effect where the factor's terms
    have that column. Columns: the random-effects columns that are not fixed
    effects (fixed part 0), then every fixed effect, in lme4's order."""
    fixef = result.fixef
    out: dict[str, pd.DataFrame] = {}
    for group, re in result.ranef.items():
        extra = [c for c in re.columns if c not in fixef.index]
        names = extra + list(fixef.index)
        base = np.concatenate([np.zeros(len(extra)), fixef.to_numpy()])
        values = np.tile(base, (len(re), 1))
        position = {c: j for j, c in enumerate(names)}
        for c, column in zip(re.columns, re.to_numpy().T):
            values[:, position[c]] += column
        out[group] = pd.DataFrame(values, index=re.index, columns=names)
    return out

"""Figures of a fit: random effects, diagnostics, coefficients, bootstrap, profiles.

Optional extra: matplotlib (``pip install lmm_jax[plot]``), imported only when a
plotting function is called. Every function returns the matplotlib
:class:`~matplotlib.figure.Figure` (its axes are ``fig.axes``) and works
headless (the Agg backend, which matplotlib selects without a display).
Functions drawing a single panel also take ``ax=`` to draw into an existing
axes.

=====================  ==================================================
function               what it shows
=====================  ==================================================
:func:`caterpillar`    conditional modes with prediction intervals
                       (lme4's ``dotplot(ranef(fit, condVar=TRUE))``)
:func:`diagnostics`    residuals vs fitted and a normal QQ plot,
                       coloured by group (:func:`residuals_vs_fitted`,
                       :func:`qq`)
:func:`forest`         fixed effects with confidence intervals
                       (pymer4's ``plot_summary``)
:func:`bootstrap`      bootstrap distribution of every parameter, the
                       estimate and the interval marked
:func:`profile`        profile-likelihood traces (signed root deviance)
:func:`overview`       one page: forest, caterpillar, residuals, QQ
=====================  ==================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..distributions import norm_ppf
from ..errors import check_bool
from ..runtime.scope import entry_point

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..results import LMMResult

__all__ = ["caterpillar", "diagnostics", "residuals_vs_fitted", "qq", "forest", "overview", "bootstrap", "profile"]

_MAX_LABELLED_LEVELS = 60  # above this, level names are not written on the axis
_MAX_LEGEND_GROUPS = 12  # above this, no legend
_MAX_DISTINCT_COLOURS = 20  # above this, groups are coloured by a continuous colour map


def _pyplot():
    """matplotlib.pyplot, or an ImportError saying how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("lmm_jax.plotting needs matplotlib; install it with: pip install 'lmm_jax[plot]' "
                          "(or pip install matplotlib)") from e
    return plt


def _new_axes(ax: "Axes | None", figsize: tuple[float, float]) -> tuple["Figure", "Axes"]:
    if ax is not None:
        return ax.figure, ax
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


# -- random effects -----------------------------------------------------------------

@entry_point
def caterpillar(result: "LMMResult", group: str | Sequence[str] | None = None, level: float = 0.95,
                order: bool = True, figsize: tuple[float, float] | None = None) -> "Figure":
    """Caterpillar plot: conditional modes of the random effects with intervals.

    For every grouping factor (one row of panels) and every random-effects
    column (one panel), each level's conditional mode is drawn with the
    interval ``mode +- z * condsd``, ``z`` the normal quantile of ``level``,
    as lme4's ``dotplot(ranef(fit, condVar = TRUE))``. Levels are sorted by
    the first column's mode.

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        group: grouping factor name(s) to draw; default all.
        level: coverage of the intervals (0.95: +-1.96 conditional SDs).
        order: sort levels by the first column's conditional mode.
        figsize: figure size in inches; default grows with the number of
            levels.

    Returns:
        The Figure; ``fig.axes`` holds one axes per (factor, column).

    Raises:
        KeyError: ``group`` names no grouping factor of the model.
        ValueError: ``level`` is not in (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    order = check_bool(order, "order")
    modes, sds = result.ranef, result.ranef_sd
    groups = list(modes) if group is None else ([group] if isinstance(group, str) else list(group))
    for g in groups:
        if g not in modes:
            raise KeyError(f"no grouping factor {g!r} in the model; it has: {', '.join(modes)}")
    z = float(norm_ppf(0.5 + level / 2.0))
    ncol = max(modes[g].shape[1] for g in groups)
    heights = [max(2.0, min(12.0, 0.18 * len(modes[g]) + 0.8)) for g in groups]
    plt = _pyplot()
    if figsize is None:
        figsize = (3.4 * ncol + 1.2, sum(heights))
    fig, axes = plt.subplots(len(groups), ncol, figsize=figsize, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    for row, g in zip(axes, groups):
        b = modes[g]
        for j, ax in enumerate(row):
            if j >= b.shape[1]:
                ax.set_axis_off()
                continue
            _caterpillar_panel(ax, b, sds[g].loc[b.index, b.columns], g, j, z, order, labels=j == 0)
    fig.suptitle(f"Random effects with {100 * level:g}% prediction intervals", fontsize=11)
    return fig


def _caterpillar_panel(ax: "Axes", b: pd.DataFrame, sd: pd.DataFrame, group: str, j: int, z: float, order: bool,
                       labels: bool) -> None:
    """One caterpillar panel: column ``j`` of the modes ``b`` (levels x
    columns) with +-z conditional SDs, levels sorted by column 0."""
    idx = np.argsort(b.iloc[:, 0].to_numpy(), kind="stable") if order else np.arange(len(b))
    pos = np.arange(len(idx))
    many = len(idx) > _MAX_LABELLED_LEVELS
    est, half = b.iloc[idx, j].to_numpy(), z * sd.iloc[idx, j].to_numpy()
    ax.errorbar(est, pos, xerr=half, fmt="o", ms=2.5 if many else 4, lw=0.6 if many else 1.0,
                color="C0", ecolor="0.45", capsize=0)
    ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
    ax.set_title(f"{group}: {b.columns[j]}", fontsize=10)
    ax.set_ylim(-0.7, len(idx) - 0.3)
    if many:
        ax.set_yticks([])
        if labels:
            ax.set_ylabel(f"{len(idx)} levels (sorted)")
    elif labels:
        ax.set_yticks(pos, [str(v) for v in b.index[idx]], fontsize=8 if len(idx) > 25 else 9)
    else:
        ax.set_yticks(pos, [""] * len(pos))
    ax.set_xlabel("conditional mode")


# -- residual diagnostics ------------------------------------------------------------

def _group_codes(result: "LMMResult", group: str | None) -> tuple[str | None, np.ndarray | None, np.ndarray | None]:
    """(name, codes per row, level labels) of a grouping factor; the first
    (largest) factor by default; (None, None, None) for ``group=False``."""
    if group is False:
        return None, None, None
    terms = result.design.terms
    if group is None:
        t = terms[0]
    else:
        matches = [t for t in terms if t.group == group]
        if not matches:
            raise KeyError(f"no grouping factor {group!r} in the model; it has: "
                           f"{', '.join(dict.fromkeys(t.group for t in terms))}")
        t = matches[0]
    return t.group, np.asarray(t.codes), np.asarray(t.levels)


def _scatter_by_group(ax: "Axes", x: np.ndarray, y: np.ndarray, name: str | None, codes: np.ndarray | None,
                      levels: np.ndarray | None) -> None:
    if codes is None:
        ax.scatter(x, y, s=14, alpha=0.75, color="C0", edgecolors="none")
        return
    m = len(levels)
    if m <= _MAX_DISTINCT_COLOURS:
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if m <= 10 else "tab20"]
        for c in range(m):
            sel = codes == c
            ax.scatter(x[sel], y[sel], s=14, alpha=0.8, color=cmap(c), edgecolors="none", label=str(levels[c]))
    else:
        ax.scatter(x, y, s=10, alpha=0.7, c=codes, cmap="viridis", edgecolors="none")
    if m <= _MAX_LEGEND_GROUPS:
        ax.legend(title=name, fontsize=7, title_fontsize=8, markerscale=1.2, loc="best", frameon=False,
                  ncol=2 if m > 6 else 1)
    else:
        ax.text(0.99, 0.02, f"colour: {name} ({m} levels)", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="0.3")


def _kernel_smooth(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None,
                   points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Nadaraya-Watson (Gaussian kernel) mean of y on a grid over x; the
    bandwidth is a fraction of the range of x, by default ``0.6 n^(-1/5)``
    (at least 0.08): wide for few points, narrower for many."""
    if bandwidth is None:
        bandwidth = max(0.08, 0.6 * len(x) ** -0.2)
    lo, hi = float(np.min(x)), float(np.max(x))
    grid = np.linspace(lo, hi, points)
    h = bandwidth * (hi - lo) if hi > lo else 1.0
    w = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / h) ** 2)
    return grid, (w @ y) / w.sum(axis=1)


@entry_point
def residuals_vs_fitted(result: "LMMResult", group: str | None | bool = None, ax: "Axes | None" = None,
                        smooth: bool = True) -> "Figure":
    """Residuals against fitted values (conditional on the random effects).

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        group: grouping factor used to colour the points; default the
            factor with most levels; ``False`` for one colour.
        ax: draw into this axes instead of a new figure.
        smooth: add a kernel-smoothed mean line (a trend means a missing
            term or a wrong functional form).

    Returns:
        The Figure holding the axes.
    """
    smooth = check_bool(smooth, "smooth")
    fig, ax = _new_axes(ax, (5.0, 4.0))
    name, codes, levels = _group_codes(result, group)
    fitted, resid = np.asarray(result.fitted), np.asarray(result.residuals)
    _scatter_by_group(ax, fitted, resid, name, codes, levels)
    ax.axhline(0.0, color="0.3", lw=0.8, ls="--")
    if smooth and len(fitted) >= 10:
        grid, trend = _kernel_smooth(fitted, resid)
        ax.plot(grid, trend, color="k", lw=1.2, alpha=0.7)
    ax.set_xlabel("fitted value")
    ax.set_ylabel("residual")
    ax.set_title("Residuals vs fitted", fontsize=10)
    return fig


@entry_point
def qq(result: "LMMResult", group: str | None | bool = None, ax: "Axes | None" = None) -> "Figure":
    """Normal QQ plot of the scaled residuals ``(y - fitted) / sigma``.

    The reference line passes through the quartiles (R's ``qqline``):
    conditional residuals are shrunk, so their spread is below sigma and
    the slope below 1 even for normal errors.

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        group: grouping factor used to colour the points (see
            :func:`residuals_vs_fitted`).
        ax: draw into this axes instead of a new figure.

    Returns:
        The Figure holding the axes.
    """
    fig, ax = _new_axes(ax, (4.5, 4.0))
    name, codes, levels = _group_codes(result, group)
    r = np.asarray(result.residuals) / result.sigma
    n = len(r)
    order = np.argsort(r)
    theo = norm_ppf((np.arange(1, n + 1) - 0.5) / n)  # Hazen plotting positions
    sample = r[order]
    _scatter_by_group(ax, theo, sample, name, None if codes is None else codes[order], levels)
    q1, q3 = np.quantile(r, [0.25, 0.75])
    z1, z3 = norm_ppf([0.25, 0.75])
    slope = (q3 - q1) / (z3 - z1)
    ends = np.array([theo[0], theo[-1]])
    ax.plot(ends, q1 + slope * (ends - z1), color="0.3", lw=0.8, ls="--")
    ax.set_xlabel("normal quantile")
    ax.set_ylabel("scaled residual")
    ax.set_title("Normal QQ plot of residuals", fontsize=10)
    return fig


@entry_point
def diagnostics(result: "LMMResult", group: str | None | bool = None,
                figsize: tuple[float, float] = (10.0, 4.2)) -> "Figure":
    """Residuals vs fitted and a normal QQ plot, side by side, coloured by group.

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        group: grouping factor used to colour the points; default the
            factor with most levels; ``False`` for one colour.
        figsize: figure size in inches.

    Returns:
        The Figure with two axes.
    """
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    residuals_vs_fitted(result, group=group, ax=a1)
    qq(result, group=group, ax=a2)
    legend = a2.get_legend()
    if legend is not None:
        legend.remove()
    return fig


# -- fixed effects -------------------------------------------------------------------

def _coef_intervals(result: "LMMResult", level: float, ddf: str | None) -> pd.DataFrame:
    """estimate, lower, upper of the fixed effects: ``result.coefs`` (t
    intervals with the chosen denominator df; Satterthwaite's by default)."""
    table = result.coefs(ddf="satterthwaite" if ddf is None else ddf, level=level)
    return table[["estimate", "lower", "upper"]]


@entry_point
def forest(result: "LMMResult", level: float = 0.95, ddf: str | None = None, intercept: bool | None = None,
           annotate: bool = True, ax: "Axes | None" = None) -> "Figure":
    """Forest plot of the fixed effects with confidence intervals.

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        level: confidence level of the intervals.
        ddf: denominator df method passed to ``result.coefs`` (e.g.
            ``"satterthwaite"``, ``"kenward-roger"``); default the result's
            default (Satterthwaite).
        intercept: include ``(Intercept)``; default only when it is the
            sole fixed effect (it is usually on another scale).
        annotate: write ``estimate [lower, upper]`` beside each row.
        ax: draw into this axes instead of a new figure.

    Returns:
        The Figure holding the axes.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    annotate = check_bool(annotate, "annotate")
    if intercept is not None:
        intercept = check_bool(intercept, "intercept")
    table = _coef_intervals(result, level, ddf)
    if intercept is None:
        intercept = len(table) == 1
    if not intercept:
        table = table.drop(index="(Intercept)", errors="ignore")
    if table.empty:
        raise ValueError("no fixed effects left to plot (the model has only an intercept; use intercept=True)")
    fig, ax = _new_axes(ax, (6.5 if annotate else 5.0, 0.45 * len(table) + 1.3))
    pos = np.arange(len(table))[::-1]
    est = table["estimate"].to_numpy()
    err = np.vstack([est - table["lower"].to_numpy(), table["upper"].to_numpy() - est])
    ax.errorbar(est, pos, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=3, ms=5)
    ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
    ax.set_yticks(pos, [str(i) for i in table.index])
    ax.set_ylim(-0.6, len(table) - 0.4)
    ax.set_xlabel(f"estimate with {100 * level:g}% CI")
    ax.set_title("Fixed effects", fontsize=10)
    if annotate:
        right = ax.secondary_yaxis("right")
        right.set_yticks(pos, [f"{e:.3g} [{lo:.3g}, {hi:.3g}]" for e, lo, hi in table.to_numpy()], fontsize=8)
        right.tick_params(length=0)
    return fig


# -- one-page overview -----------------------------------------------------------------

@entry_point
def overview(result: "LMMResult", level: float = 0.95, ddf: str | None = None,
             figsize: tuple[float, float] = (11.0, 8.0)) -> "Figure":
    """One page per fit: fixed effects, the first factor's random effects,
    residuals vs fitted and a QQ plot (what ``lmm-jax fit --plot`` writes).

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        level: confidence level of the coefficient and random-effect intervals.
        ddf: denominator df method for the coefficient intervals (see
            :func:`forest`).
        figsize: figure size in inches.

    Returns:
        The Figure with four axes.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=figsize, layout="constrained")
    if result.design.p:
        forest(result, level=level, ddf=ddf, ax=axes[0, 0])
    else:                                     # y ~ 0 + (1 | g)
        axes[0, 0].text(0.5, 0.5, "no fixed effects", ha="center", va="center")
        axes[0, 0].set_axis_off()
    group = result.design.terms[0].group
    b = result.ranef[group]
    _caterpillar_panel(axes[0, 1], b, result.ranef_sd[group].loc[b.index, b.columns], group, 0,
                       float(norm_ppf(0.5 + level / 2.0)), True, labels=True)
    residuals_vs_fitted(result, ax=axes[1, 0])
    qq(result, ax=axes[1, 1])
    legend = axes[1, 1].get_legend()
    if legend is not None:
        legend.remove()
    fig.suptitle(f"{result.model.formula}   ({'REML' if result.reml else 'ML'}, n = {result.nobs})", fontsize=11)
    return fig


# -- bootstrap and profiles -----------------------------------------------------------------

def _panel_grid(count: int, ncols: int, panel: tuple[float, float]):
    plt = _pyplot()
    ncols = max(1, min(ncols, count))
    nrows = int(np.ceil(count / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.set_axis_off()
    return fig, flat[:count]


@entry_point
def bootstrap(boot: Any, level: float = 0.95, method: str = "percentile", which: Sequence[str] | None = None,
              bins: int = 40, ncols: int = 3) -> "Figure":
    """Bootstrap distribution of every parameter, with the estimate and the interval marked.

    Args:
        boot: a :class:`~lmm_jax.batched.bootstrap.BootstrapResult` (from
            ``result.bootstrap(n, key)``).
        level: coverage of the marked intervals.
        method: interval method passed to ``boot.confint`` (``"percentile"``,
            ``"shortest"`` or ``"basic"``).
        which: parameter names in lme4's naming (``sd_(Intercept)|Subject``,
            ``sigma``, fixed-effect names); default all.
        bins: histogram bins.
        ncols: panels per row.

    Returns:
        The Figure, one axes per parameter. Replicates that failed or did
        not converge are left out, as in ``boot.confint``.

    Raises:
        KeyError: ``which`` names an unknown parameter.
    """
    ci = boot.confint(level=level, method=method)
    est = boot.replicates.estimates()[boot.replicates.ok]
    center = boot.estimate
    names = list(ci.index) if which is None else list(which)
    unknown = [n for n in names if n not in est.columns]
    if unknown:
        raise KeyError(f"no bootstrap parameter(s) {unknown}; available: {', '.join(est.columns)}")
    fig, axes = _panel_grid(len(names), ncols, (3.4, 2.6))
    for ax, name in zip(axes, names):
        v = est[name].to_numpy()
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, color="C0", alpha=0.75)
        lo, hi = ci.loc[name, "lower"], ci.loc[name, "upper"]
        ax.axvspan(lo, hi, color="C1", alpha=0.12, lw=0)
        for x in (lo, hi):
            ax.axvline(x, color="C1", lw=1.2, ls="--")
        ax.axvline(center[name], color="k", lw=1.4)
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=8)
    n_ok = int(np.sum(boot.replicates.ok))
    fig.suptitle(f"Parametric bootstrap: {n_ok} of {len(boot)} replicates; {100 * level:g}% {method} intervals "
                 "(dashed), estimate (solid)", fontsize=10)
    return fig


@entry_point
def profile(result: "LMMResult", which: Sequence[str] | None = None, level: float = 0.95, points: int = 13,
            ncols: int = 3) -> "Figure":
    """Profile-likelihood traces: zeta against each parameter (lme4's
    ``xyplot(profile(fit))``).

    ``zeta(psi) = sign(psi - psi_hat) sqrt(d(psi) - d(psi_hat))`` with the
    other parameters re-optimised (ML deviance; REML fits are refitted by ML
    first, as lme4 does). A straight line means the Wald interval is
    accurate on that scale; the marked interval is where ``|zeta| = z``.

    Args:
        result: a fitted :class:`~lmm_jax.results.LMMResult`.
        which: parameter names in lme4's naming; default all.
        level: level of the marked profile interval.
        points: profile points per parameter, spread over 1.4 times the
            interval.
        ncols: panels per row.

    Returns:
        The Figure, one axes per parameter.
    """
    from ..inference.profile import profile_confint, profile_zeta

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    ci = profile_confint(result, level=level, which=None if which is None else list(which))
    ml = result.model.fit(reml=False) if result.reml else result
    from ..inference.profile import parameters as profile_parameters

    estimates = {p.name: (p.estimate, p.kind) for p in profile_parameters(ml)}
    z = float(norm_ppf(0.5 + level / 2.0))
    names = list(ci.index)
    fig, axes = _panel_grid(len(names), ncols, (3.4, 2.6))
    for ax, name in zip(axes, names):
        est, kind = estimates[name]
        lo, hi = ci.loc[name, "lower"], ci.loc[name, "upper"]
        a = est - 1.4 * (est - lo) if np.isfinite(lo) else est - 1.0
        b = est + 1.4 * (hi - est) if np.isfinite(hi) else est + 1.0
        if kind in ("sd", "sigma"):
            a = max(a, 0.0)
        elif kind == "cor":
            a, b = max(a, -0.999), min(b, 0.999)
        grid = np.linspace(a, b, points)
        # the estimate is a point of its own (zeta = 0): drop grid points that all but coincide with it,
        # whose zeta would be 0 or rounding noise of either sign
        grid = np.unique(np.concatenate([grid[np.abs(grid - est) > 1e-6 * (b - a)], [est]]))
        zeta = profile_zeta(result, name, grid)
        ax.plot(zeta["value"], zeta["zeta"], "o-", ms=3, color="C0")
        for y in (-z, z):
            ax.axhline(y, color="0.4", lw=0.8, ls="--")
        for x in (lo, hi):
            if np.isfinite(x):
                ax.axvline(x, color="C1", lw=1.0, ls=":")
        ax.axhline(0.0, color="0.8", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[::ncols]:
        ax.set_ylabel("zeta")
    fig.suptitle(f"Profile zeta (ML deviance); dotted: {100 * level:g}% profile interval", fontsize=10)
    return fig

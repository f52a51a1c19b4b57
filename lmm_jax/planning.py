"""Simulation studies and power analysis: simr's workflow as a few compiled, vmapped calls.

* :func:`simulate`: responses from a fit, from a model at given parameters,
  from a planned design with no response (simr's ``makeLmer``: a formula and
  a frame of covariates and grouping columns), or on new data.
* :func:`power`: the probability of rejecting H0 for a fixed effect (t test,
  Satterthwaite / residual df or z) or for a likelihood-ratio test between
  nested formulas, with a Clopper-Pearson interval (simr's ``powerSim``).
* :func:`power_curve`: power over numbers of levels of a grouping factor
  (simr's ``extend`` + ``powerCurve``), each size one batched fit.
* :func:`extend`: a design with more (or fewer) levels of a grouping factor.

Every replicate is one column of one vmapped fit (:meth:`lmm_jax.LMM.fit_batch`):
a power estimate from 1,000 simulations is one compiled call, and sizes that
fall in one padded size bucket share their compilation. Results depend only
on ``key``: replicate i of size j uses ``fold_in(fold_in(key, j), i)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import jax
import numpy as np
import pandas as pd
from scipy import stats

from .batched.simulate import as_key, simulate as _simulate
from .build.design import as_frame
from .errors import DataError, check_bool, check_count
from .model import LMM
from .results import LMMResult
from .runtime.scope import entry_point

if TYPE_CHECKING:
    from .batched.batch import BatchResult

TESTS_DDF = ("satterthwaite", "residual", "none")
# Simulations per batched fit: batches up to this size run the single-stage vmapped optimiser
# (lmm_jax.batched.batch.UNSTAGED_MAX_BATCH), whose compilation is a fraction of the staged one's, and
# every call of a size bucket has this one shape (the last chunk is padded), so a power curve compiles
# once per bucket.
CHUNK = 256


def _model(spec: Any) -> "LMM | LMMResult":
    """An LMM or fit from what the user gave: a fit, a model, or (formula, data)."""
    if isinstance(spec, (LMM, LMMResult)):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return LMM(spec[0], spec[1], planned=True)
    raise TypeError(f"expected a fit, an LMM or a (formula, data) pair, got {type(spec).__name__}")


def fitted_params(fit: LMMResult) -> dict:
    """A fit's parameters by name (:mod:`lmm_jax.batched.params`): what a new
    design of the same formula is simulated at."""
    return {"beta": dict(zip(fit.design.fixef_names, np.asarray(fit.beta))), "theta": np.asarray(fit.theta),
            "sigma": float(fit.sigma)}


@entry_point
def simulate(model: Any, n: int, key: Any, params: dict | None = None, *, newdata: Any = None, use_u: bool = False,
             chunk_size: int | None = None) -> "jax.Array | Iterator[jax.Array]":
    """Draw ``n`` responses (lme4's ``simulate``, simr's ``makeLmer`` + ``doSim``).

    Args:
        model: a fitted :class:`~lmm_jax.results.LMMResult` (simulated at its
            estimates unless ``params``), an :class:`~lmm_jax.model.LMM` with
            ``params``, or a planned design ``(formula, data)`` whose data
            holds the covariates and grouping columns and may lack the
            response (``params`` required).
        n: number of replicates.
        key: an int seed or a ``jax.random`` key; replicate i uses
            ``fold_in(key, i)`` only.
        params: the parameters by lme4's names: ``{"beta": {name: value} (or
            an array), "sd_(Intercept)|g": ..., "cor_x.(Intercept)|g": ...,
            "sigma": ...}``, or with ``"theta"`` (lme4's layout) instead of the
            SDs and correlations (:mod:`lmm_jax.batched.params`).
        newdata: simulate on these rows instead of the model's (lme4's
            ``newdata``): the same formula on new covariates and levels, at
            the fit's parameters (or ``params``); new levels get new random
            effects.
        use_u: condition on the fit's random effects (lme4's ``use.u``):
            responses are the fitted values (``predict(newdata)`` on new rows,
            whose levels must all be in the fit) plus new residuals.
        chunk_size: return a generator of column chunks (memory-bounded).

    Returns:
        (n_rows, n) responses, rows in the model's (or ``newdata``'s used) order.

    Example:
        >>> design = pd.DataFrame({"Subject": np.repeat(np.arange(20), 10), "Days": np.tile(np.arange(10), 20)})
        >>> Y = lmm_jax.simulate(("Reaction ~ Days + (Days | Subject)", design), 100, key=0,
        ...                      params={"beta": {"(Intercept)": 250, "Days": 10}, "sd_(Intercept)|Subject": 25,
        ...                              "sd_Days|Subject": 6, "cor_Days.(Intercept)|Subject": 0.1, "sigma": 25})
    """
    m = _model(model)
    use_u = check_bool(use_u, "use_u")
    if newdata is None:
        return _simulate(m, n, key, params, use_u=use_u, chunk_size=chunk_size)
    base = m.model if isinstance(m, LMMResult) else m
    new = LMM(base.formula, newdata, planned=True, offset=base.design.offset_column)
    if params is None:
        if not isinstance(m, LMMResult):
            raise ValueError("simulating a model on new data needs params (or a fit to take them from)")
        if new.design.theta_layout.names != base.design.theta_layout.names:
            raise DataError(f"newdata gives the random effects {list(new.design.theta_layout.names)}, the fit "
                            f"{list(base.design.theta_layout.names)}: give params for the new design")
        params = fitted_params(m)
    if not use_u:
        return _simulate(new, n, key, params, chunk_size=chunk_size)
    if not isinstance(m, LMMResult):
        raise DataError("use_u=True conditions on a fit's random effects: simulate from the fitted result")
    mean = np.asarray(m.predict(new.design.data))
    noise = _simulate(new, n, key, {**params, "beta": np.zeros(new.design.p),
                                    "theta": np.zeros(new.design.theta_layout.n_theta)}, chunk_size=chunk_size)
    offset = 0.0 if new.design.offset is None else new.design.offset
    if chunk_size is None:
        return noise + (mean - offset)[:, None]
    return (chunk + (mean - offset)[:, None] for chunk in noise)


def extend(data: Any, along: str, n: int) -> pd.DataFrame:
    """``data`` with ``n`` levels of the grouping column ``along`` (simr's
    ``extend(along=)``): the first n levels if there are at least n, else
    copies of the existing levels' rows under new labels (``"<level>.<k>"``),
    cycling through the levels in their order of appearance.

    Args:
        data: a DataFrame (or dict of columns) of a design.
        along: the grouping column to extend or cut.
        n: the number of levels wanted, a positive integer.

    Returns:
        A new DataFrame (index reset); new labels make ``along`` a string
        column unless it was categorical.

    Raises:
        DataError: ``along`` is not a column of ``data``.

    Example:
        >>> data = lmm_jax.planning.extend(lmm_jax.datasets.load("sleepstudy"), "Subject", 40)
        >>> data["Subject"].nunique()
        40
    """
    df = as_frame(data)
    n = check_count(n, "n")
    if along not in df.columns:
        raise DataError(f"extend: {along!r} is not a column of the data (columns: {list(df.columns)[:20]})")
    levels = pd.unique(df[along].dropna())
    if n <= len(levels):
        return df[df[along].isin(levels[:n])].reset_index(drop=True)
    parts = [df]
    for i in range(len(levels), n):
        level, copy = levels[i % len(levels)], i // len(levels)
        rows = df[df[along] == level].copy()
        rows[along] = f"{level}.{copy}"
        parts.append(rows)
    out = pd.concat(parts, ignore_index=True)
    if not isinstance(df[along].dtype, pd.CategoricalDtype):
        out[along] = out[along].astype(str)
    return out


@dataclass(frozen=True)
class PowerResult:
    """A power estimate (simr's ``powerSim``).

    Attributes:
        test: what was tested (``"t test of x (satterthwaite df)"`` or
            ``"LRT y ~ x + (1 | g) vs y ~ 1 + (1 | g)"``).
        alpha: the level of the test.
        p_values: (n,) each replicate's p-value (NaN for failed fits).
        statistic: (n,) each replicate's t or LRT statistic.
        n_failed: replicates whose fit failed (they count as not rejected, as in simr).
        level: the confidence level of :attr:`interval`.
    """

    test: str
    alpha: float
    p_values: np.ndarray
    statistic: np.ndarray
    n_failed: int
    level: float = 0.95

    @property
    def n(self) -> int:
        """The number of simulated replicates (failed fits included)."""
        return len(self.p_values)

    @property
    def successes(self) -> int:
        """Replicates whose p-value is below :attr:`alpha` (the test rejected;
        failed fits, whose p-value is NaN, do not count)."""
        return int(np.sum(self.p_values < self.alpha))

    @property
    def power(self) -> float:
        """Fraction of the replicates that reject H0 at :attr:`alpha`."""
        return self.successes / self.n

    @property
    def interval(self) -> tuple[float, float]:
        """Clopper-Pearson interval of the power at :attr:`level` (simr's ``binom.test``)."""
        k, n, a = self.successes, self.n, 1.0 - self.level
        lower = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
        upper = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
        return lower, upper

    def __repr__(self) -> str:
        lo, hi = self.interval
        failed = f", {self.n_failed} failed fits" if self.n_failed else ""
        return (f"Power for {self.test}, ({self.level:.0%} confidence interval):\n"
                f"      {100 * self.power:.2f}% ({100 * lo:.2f}, {100 * hi:.2f})\n"
                f"Based on {self.n} simulations, ({self.successes} successes{failed}), alpha = {self.alpha:g}")


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _t_test(fits: "BatchResult", term: str) -> tuple[np.ndarray, np.ndarray]:
    """Each fit's t statistic and p-value for ``term`` (the batch's own ddf)."""
    table = fits.coef_table()
    rows = table[table["term"] == term].sort_values("fit")
    return rows["t"].to_numpy(), rows["p"].to_numpy()


@entry_point
def power(model: Any, test: str, n: int = 1000, key: Any = 0, params: dict | None = None, *, alpha: float = 0.05,
          ddf: str = "satterthwaite", reml: bool = True, level: float = 0.95, data: Any = None) -> PowerResult:
    """Power by simulation (simr's ``powerSim``): simulate ``n`` responses,
    fit them all in one vmapped call, count the rejections.

    Args:
        model: a fit, an LMM, or a planned design ``(formula, data)`` (then
            ``params`` is required; see :func:`simulate`).
        test: a fixed effect's name (``"Days"``, ``"recipeB"``): the t test
            of beta = 0 with ``ddf`` degrees of freedom (lmerTest's); or a
            formula of the null model (``"y ~ 1 + (Days | Subject)"``): the
            likelihood-ratio test of the nested models, both fitted by ML,
            chi-square with the difference in parameters as df.
        n: simulations. key: int seed or ``jax.random`` key.
        params: the parameters to simulate at (default: the fit's).
        alpha: the test's level. ddf: ``"satterthwaite"``, ``"residual"``
            (n - p) or ``"none"`` (z test). reml: fit the t tests' models by
            REML (default, as lmerTest) or ML. level: of the power's interval.
        data: the rows to simulate on instead of the model's (for example
            :func:`extend`'s), at the model's formula.

    Returns:
        A :class:`PowerResult`.

    Example:
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> lmm_jax.power(fit, "Days", n=1000, params={**lmm_jax.planning.fitted_params(fit),
        ...                                           "beta": {"(Intercept)": 251.4, "Days": 4.0}})
    """
    n = check_count(n, "n")
    alpha, reml = _check_alpha(alpha), check_bool(reml, "reml")
    if ddf not in TESTS_DDF:
        raise ValueError(f"ddf must be one of {TESTS_DDF}, got {ddf!r}")
    m = _model(model)
    base = m.model if isinstance(m, LMMResult) else m
    if data is not None:
        if params is None:
            if not isinstance(m, LMMResult):
                raise ValueError("power on new data needs params (or a fit to take them from)")
            params = fitted_params(m)
        base = LMM(base.formula, data, planned=True, offset=base.design.offset_column)
        m = base
    chunks = list(_chunks(m, n, key, params))
    if "~" in test:
        rows = base.design.data.drop(columns=[base.design.formula.response.strip("`")], errors="ignore")
        null = LMM(test, rows, planned=True, offset=base.design.offset_column)
        if null.design.n != base.design.n:
            raise DataError(f"the null model {test!r} uses {null.design.n} rows, the model {base.design.n}: "
                            "nested models must be fitted to the same rows")
        k1 = base.design.p + base.design.theta_layout.n_theta
        k0 = null.design.p + null.design.theta_layout.n_theta
        if k0 >= k1:
            raise DataError(f"the null model {test!r} has {k0} parameters, the model {k1}: the null model must "
                            "be nested in the model, with fewer parameters")
        full = _fit_chunks(base, chunks, n, reml=False, ddf="none")
        small = _fit_chunks(null, chunks, n, reml=False, ddf="none")
        stat = np.maximum(small.objective - full.objective, 0.0)
        ok = ~(full.failed | small.failed) & np.isfinite(stat)
        p = np.where(ok, stats.chi2.sf(stat, k1 - k0), np.nan)
        name = f"LRT {base.formula} vs {test} ({k1 - k0} df)"
        failed = int(np.sum(~ok))
    else:
        if test not in base.design.fixef_names:
            raise DataError(f"test {test!r} is neither a fixed effect of the model ({list(base.design.fixef_names)})"
                            " nor a null-model formula (with '~')")
        fits = _fit_chunks(base, chunks, n, reml=reml, ddf=ddf)
        stat, p = _t_test(fits, test)
        p = np.where(fits.failed, np.nan, p)
        name = f"fixed effect {test!r} (t test, {ddf} df)"
        failed = int(np.sum(fits.failed))
    return PowerResult(test=name, alpha=alpha, p_values=np.asarray(p, dtype=float),
                       statistic=np.asarray(stat, dtype=float), n_failed=failed, level=level)


def _chunks(model: Any, n: int, key: Any, params: dict | None) -> Iterator[np.ndarray]:
    """The n simulated responses in column chunks of :data:`CHUNK` (the last
    padded to full size by repeating its first column)."""
    for Y in simulate(model, n, key, params, chunk_size=CHUNK):
        Y = np.asarray(Y)
        if Y.shape[1] < CHUNK:
            Y = np.concatenate([Y, np.repeat(Y[:, :1], CHUNK - Y.shape[1], axis=1)], axis=1)
        yield Y


def _fit_chunks(model: LMM, chunks: list[np.ndarray], n: int, **kwargs) -> "BatchResult":
    """``model.fit_batch`` of every chunk, one result for the first n columns."""
    parts = [model.fit_batch(Y, **kwargs) for Y in chunks]
    out = {}
    for f in dataclasses.fields(parts[0]):
        first = getattr(parts[0], f.name)
        out[f.name] = (np.concatenate([getattr(p, f.name) for p in parts])[:n] if isinstance(first, np.ndarray)
                       else first)
    return type(parts[0])(**out)


@entry_point
def power_curve(model: Any, test: str, along: str, sizes: Sequence[int], n: int = 1000, key: Any = 0,
                params: dict | None = None, *, progress: bool = False, **kwargs) -> pd.DataFrame:
    """Power over numbers of levels of a grouping factor (simr's ``extend`` +
    ``powerCurve``): for each size the model's rows are :func:`extend`-ed to
    that many levels of ``along`` and :func:`power` runs one batched fit.

    Args:
        model, test, n, params: as :func:`power` (a fit's parameters by default).
        along: the grouping column whose number of levels varies.
        sizes: the numbers of levels.
        key: size j uses ``fold_in(key, j)``.
        progress: a tqdm bar over the sizes.
        **kwargs: passed to :func:`power` (alpha, ddf, reml, level).

    Returns:
        One row per size: ``size, n_rows, power, lower, upper, successes, n, n_failed``.

    Example:
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> lmm_jax.power_curve(fit, "Days", along="Subject", sizes=[6, 10, 14], n=200)  # doctest: +SKIP
    """
    m = _model(model)
    if params is None:
        if not isinstance(m, LMMResult):
            raise ValueError("power_curve needs params (or a fit to take them from)")
        params = fitted_params(m)
    base = m.model if isinstance(m, LMMResult) else m
    sizes = [check_count(s, "sizes") for s in sizes]
    key = as_key(key)
    rows = []
    it = sizes
    if check_bool(progress, "progress"):
        from tqdm.auto import tqdm
        it = tqdm(sizes, desc="power curve", unit="size")
    for j, size in enumerate(it):
        data = extend(base.design.data, along, size)
        res = power(base, test, n, jax.random.fold_in(key, j), params, data=data, **kwargs)
        lo, hi = res.interval
        rows.append({"size": size, "n_rows": len(data), "power": res.power, "lower": lo, "upper": hi,
                     "successes": res.successes, "n": res.n, "n_failed": res.n_failed})
    return pd.DataFrame(rows)

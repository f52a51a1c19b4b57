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
on ``key`` and the chunk size: replicate i of size j uses
``fold_in(fold_in(key, j), i)``. After ``jax.distributed.initialize()`` the
chunks are shared out between the processes (:mod:`lmm_jax.batched.distributed`)
and every process returns the whole result, the same bits as one process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import jax
import numpy as np
import pandas as pd

from .batched.batch import prepare_fit_batch
from .batched.distributed import exchange, mine, owners, put_rows
from .batched.simulate import as_key, simulate as _simulate, simulate_replicates
from .build.design import as_frame
from .distributions import beta_ppf, chi2_sf
from .errors import DataError, check_bool, check_count
from .model import LMM
from .results import LMMResult
from .runtime.kernel import traced_sets
from .runtime.scope import entry_point

if TYPE_CHECKING:
    from .batched.batch import BatchResult

TESTS_DDF = ("satterthwaite", "residual", "none")
# Simulations per batched fit: batches up to this size run the single-stage vmapped optimiser
# (lmm_jax.batched.batch.UNSTAGED_MAX_BATCH), which compiles sooner than the staged one, and
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

    A fitted GLMM (:class:`~lmm_jax.glmm.results.GLMMResult`) is simulated on its
    own rows at its estimates (:func:`lmm_jax.glmm.simulate.simulate`; ``use_u``
    as above, no ``params``, ``newdata`` or ``chunk_size``).
    """
    from .glmm.results import GLMMResult

    if isinstance(model, GLMMResult):
        if params is not None or newdata is not None or chunk_size is not None:
            raise ValueError("a GLMM fit is simulated on its own rows at its estimates: params, newdata and "
                             "chunk_size are not supported for it; call lmm_jax.simulate(glmm_fit, n, key, use_u=...)")
        from .glmm.simulate import simulate as simulate_glmm

        return simulate_glmm(model, n, key, use_u=use_u)
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
        process: (n,) the ``jax.process_index()`` of the process that
            simulated and fitted each replicate (all 0 in one process;
            :mod:`lmm_jax.batched.distributed`).
    """

    test: str
    alpha: float
    p_values: np.ndarray
    statistic: np.ndarray
    n_failed: int
    level: float = 0.95
    process: np.ndarray | None = None

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
        lower = 0.0 if k == 0 else float(beta_ppf(a / 2, k, n - k + 1))
        upper = 1.0 if k == n else float(beta_ppf(1 - a / 2, k + 1, n - k))
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


@dataclass(frozen=True)
class _PowerPlan:
    """One power simulation as every process plans it: what is simulated
    (``model`` at ``params``), the models fitted, the test, and the chunks
    of ``chunk`` replicates (one batched fit each, the last one drawn and
    fitted whole and trimmed)."""

    model: "LMM | LMMResult"
    base: LMM
    null: LMM | None
    test: str
    name: str
    key: jax.Array
    params: dict | None
    n: int
    chunk: int
    reml: bool
    ddf: str

    @property
    def starts(self) -> range:
        return range(0, self.n, self.chunk)


def _plan(model: Any, test: str, n: int, key: Any, params: dict | None, ddf: str, reml: bool, data: Any,
          chunk_size: int | None) -> _PowerPlan:
    """:func:`power`'s arguments checked, its models built and its chunks planned."""
    n = check_count(n, "n")
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
    null = None
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
        name = f"LRT {base.formula} vs {test} ({k1 - k0} df)"
    else:
        if test not in base.design.fixef_names:
            raise DataError(f"test {test!r} is neither a fixed effect of the model ({list(base.design.fixef_names)})"
                            " nor a null-model formula (with '~')")
        name = f"fixed effect {test!r} (t test, {ddf} df)"
    chunk = min(n, CHUNK) if chunk_size is None else check_count(chunk_size, "chunk_size")
    return _PowerPlan(model=m, base=base, null=null, test=test, name=name, key=as_key(key), params=params, n=n,
                      chunk=chunk, reml=reml, ddf=ddf)


def _power_chunk(plan: _PowerPlan, start: int) -> dict[str, np.ndarray]:
    """The p-values, statistics and failures of the replicates ``start`` to
    ``start + chunk - 1`` (trimmed to ``n``): one batched fit (two for an LRT)."""
    Y = simulate_replicates(plan.model, plan.key, start, plan.chunk, plan.params)
    if plan.null is not None:
        k1 = plan.base.design.p + plan.base.design.theta_layout.n_theta
        k0 = plan.null.design.p + plan.null.design.theta_layout.n_theta
        full = plan.base.fit_batch(Y, reml=False, ddf="none", pad_levels=True)
        small = plan.null.fit_batch(Y, reml=False, ddf="none", pad_levels=True)
        stat = np.maximum(small.objective - full.objective, 0.0)
        ok = ~(full.failed | small.failed) & np.isfinite(stat)
        p = np.where(ok, chi2_sf(stat, k1 - k0), np.nan)
        failed = ~ok
    else:
        fits = plan.base.fit_batch(Y, reml=plan.reml, ddf=plan.ddf, pad_levels=True)
        stat, p = _t_test(fits, plan.test)
        p = np.where(fits.failed, np.nan, p)
        failed = fits.failed
    size = min(plan.chunk, plan.n - start)
    return {"p_values": np.asarray(p, dtype=float)[:size], "statistic": np.asarray(stat, dtype=float)[:size],
            "failed": np.asarray(failed, dtype=bool)[:size]}


def _power_results(plans: Sequence[_PowerPlan], alpha: float, level: float, what: str,
                   progress: bool = False) -> list[PowerResult]:
    """Run the chunks of every plan, shared out between the processes
    (:mod:`lmm_jax.batched.distributed`; ``progress``: a tqdm bar over this
    process's chunks), and gather each plan's result."""
    units = [(j, start) for j, plan in enumerate(plans) for start in plan.starts]
    costs = [plans[j].chunk * plans[j].base.design.n for j, _ in units]
    largest = max(plan.n for plan in plans)
    owner = owners(costs, what, f"Pass chunk_size={max(1, -(-largest // jax.process_count()))} or less to split "
                                "the simulations into more chunks.")
    todo = mine(owner)
    traced = threading.Event()
    first = {plans[units[u][0]].base.padded.structure for u in todo[:1]}
    for j in sorted({units[u][0] for u in todo}):       # the other size buckets' fits compile beside the first's
        plan = plans[j]
        if plan.null is None and plan.base.padded.structure not in first:
            first.add(plan.base.padded.structure)
            prepare_fit_batch(plan.base, plan.chunk, plan.reml, ddf=plan.ddf, pad_levels=True, after=traced)
    if progress:
        from tqdm.auto import tqdm
        todo = tqdm(todo, desc="power", unit="chunk")
    with traced_sets(traced):
        shared = exchange({u: _power_chunk(plans[units[u][0]], units[u][1]) for u in todo})
    out = []
    for j, plan in enumerate(plans):
        arrays: dict[str, np.ndarray] = {}
        process = np.empty(plan.n, dtype=np.int32)
        for u, (jj, start) in enumerate(units):
            if jj == j:
                put_rows(arrays, plan.n, start, shared[u])
                process[start:start + plan.chunk] = owner[u]
        out.append(PowerResult(test=plan.name, alpha=alpha, p_values=arrays["p_values"],
                               statistic=arrays["statistic"], n_failed=int(np.sum(arrays["failed"])), level=level,
                               process=process))
    return out


@entry_point
def power(model: Any, test: str, n: int = 1000, key: Any = 0, params: dict | None = None, *, alpha: float = 0.05,
          ddf: str = "satterthwaite", reml: bool = True, level: float = 0.95, data: Any = None,
          chunk_size: int | None = None, family: str | None = None, link: str | None = None,
          weights: Any = None, nAGQ: int = 1) -> PowerResult:
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
        n: simulations. key: int seed or ``jax.random`` key; replicate i
            draws from ``fold_in(key, i)``.
        params: the parameters to simulate at (default: the fit's).
        alpha: the test's level. ddf: ``"satterthwaite"``, ``"residual"``
            (n - p) or ``"none"`` (z test). reml: fit the t tests' models by
            REML (default, as lmerTest) or ML. level: of the power's interval.
        data: the rows to simulate on instead of the model's (for example
            :func:`extend`'s), at the model's formula.
        chunk_size: simulations per batched fit. Default: all ``n`` in one
            up to :data:`CHUNK` (256, the single-stage optimiser's batch,
            whose compilation is a fraction of the staged one's); larger runs
            in chunks of it, the last one drawn and fitted whole and trimmed
            (one compilation per size bucket). After
            ``jax.distributed.initialize()`` the chunks are shared out
            between the processes and every process returns the whole result,
            the same bits as one process (docs/distributed.md).
        family, link, weights, nAGQ: a GLMM (``family="binomial"`` or
            ``"poisson"``; :mod:`lmm_jax.glmm.power`): ``model`` is a planned
            design ``(formula, data)``, ``params`` ``{"beta": ..., "sd_(Intercept)|g": ...}``
            (or ``"theta"``) on the link scale, ``weights`` the binomial trials
            (a column or an array), and ``test`` a fixed effect's Wald z test;
            the ``n`` fits run in one vmapped call (``ddf``, ``reml``,
            ``chunk_size`` do not apply).

    Returns:
        A :class:`PowerResult`.

    Example:
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> lmm_jax.power(fit, "Days", n=1000, params={**lmm_jax.planning.fitted_params(fit),
        ...                                           "beta": {"(Intercept)": 251.4, "Days": 4.0}})
    """
    alpha, reml = _check_alpha(alpha), check_bool(reml, "reml")
    if family is not None:
        return _glmm_power(model, test, n, key, params, alpha, level, data, family, link, weights, nAGQ)
    plan = _plan(model, test, n, key, params, ddf, reml, data, chunk_size)
    return _power_results([plan], alpha, level, f"a power simulation of {plan.n} in chunks of {plan.chunk}")[0]


def _glmm_power(model: Any, test: str, n: int, key: Any, params: dict | None, alpha: float, level: float,
                data: Any, family: str, link: str | None, weights: Any, nAGQ: int) -> PowerResult:
    """:func:`power` of a planned GLMM (:func:`lmm_jax.glmm.power.z_test_power`)."""
    from .glmm.power import check_planned, planned_model, z_test_power

    check_planned(model)
    if params is None:
        raise ValueError("a GLMM power simulation needs params: {'beta': {...}, 'sd_(Intercept)|g': ...} on the "
                         "link scale (or 'theta')")
    m = planned_model(model[0], model[1] if data is None else data, family, link, weights)
    p, z, failed = z_test_power(m, params, test, n, key, nAGQ)
    return PowerResult(test=f"{test} (Wald z test, {m.family.name} GLMM)", alpha=alpha, p_values=p,
                       statistic=z, n_failed=failed, level=level)


@entry_point
def power_curve(model: Any, test: str, along: str, sizes: Sequence[int], n: int = 1000, key: Any = 0,
                params: dict | None = None, *, progress: bool = False, alpha: float = 0.05,
                ddf: str = "satterthwaite", reml: bool = True, level: float = 0.95,
                chunk_size: int | None = None, family: str | None = None, link: str | None = None,
                weights: Any = None, nAGQ: int = 1) -> pd.DataFrame:
    """Power over numbers of levels of a grouping factor (simr's ``extend`` +
    ``powerCurve``): for each size the model's rows are :func:`extend`-ed to
    that many levels of ``along`` and :func:`power` runs one batched fit.

    Args:
        model, test, n, params: as :func:`power` (a fit's parameters by default).
        along: the grouping column whose number of levels varies.
        sizes: the numbers of levels.
        key: size j uses ``fold_in(key, j)``.
        progress: a tqdm bar over the chunks of simulations (one per size
            unless ``chunk_size`` cuts them).
        alpha, ddf, reml, level, chunk_size: as :func:`power`. After
            ``jax.distributed.initialize()`` the chunks of all sizes are
            shared out between the processes, and every process returns the
            whole table, the same bits as one process.
        family, link, weights, nAGQ: a GLMM's planned design, as :func:`power`
            (one compiled batch per size).

    Returns:
        One row per size: ``size, n_rows, power, lower, upper, successes, n, n_failed``.

    Example:
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> lmm_jax.power_curve(fit, "Days", along="Subject", sizes=[6, 10, 14], n=200)  # doctest: +SKIP
    """
    if family is not None:
        from .glmm.power import check_planned

        check_planned(model)
        key = as_key(key)
        rows = []
        for j, size in enumerate(sizes):
            rows_j = extend(model[1], along, check_count(size, "sizes"))
            res = _glmm_power(model, test, n, jax.random.fold_in(key, j), params, _check_alpha(alpha), level,
                              rows_j, family, link, weights, nAGQ)
            lo, hi = res.interval
            rows.append({"size": size, "n_rows": len(rows_j), "power": res.power, "lower": lo, "upper": hi,
                         "successes": res.successes, "n": res.n, "n_failed": res.n_failed})
        return pd.DataFrame(rows)
    m = _model(model)
    if params is None:
        if not isinstance(m, LMMResult):
            raise ValueError("power_curve needs params (or a fit to take them from)")
        params = fitted_params(m)
    base = m.model if isinstance(m, LMMResult) else m
    sizes = [check_count(s, "sizes") for s in sizes]
    alpha, reml = _check_alpha(alpha), check_bool(reml, "reml")
    key = as_key(key)
    progress = check_bool(progress, "progress")
    plans = [_plan(base, test, n, jax.random.fold_in(key, j), params, ddf, reml,
                   extend(base.design.data, along, size), chunk_size) for j, size in enumerate(sizes)]
    results = _power_results(plans, alpha, level, f"a power curve of {len(sizes)} sizes x {n} simulations",
                             progress)
    rows = []
    for size, plan, res in zip(sizes, plans, results):
        lo, hi = res.interval
        rows.append({"size": size, "n_rows": plan.base.design.n, "power": res.power, "lower": lo, "upper": hi,
                     "successes": res.successes, "n": res.n, "n_failed": res.n_failed})
    return pd.DataFrame(rows)

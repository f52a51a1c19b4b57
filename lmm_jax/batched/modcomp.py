r"""Parametric-bootstrap likelihood-ratio test between nested models
(pbkrtest's ``PBmodcomp``, Halekoh & Hojsgaard 2014, JSS 59(9)).

For a large model and a small (null) model nested in it, both fitted by
maximum likelihood (REML fits are refitted by ML first, as pbkrtest does),
the observed statistic is

    LRT = 2 (logLik_large - logLik_small) = deviance_small - deviance_large,

with ``df = npar_large - npar_small``. Its reference distribution is
simulated: ``n`` responses are drawn from the small model's ML fit
(:func:`lmm_jax.simulate`, on the user's scale, so prior weights and offsets
carry over), both models are refitted by ML to every response in batches
(:func:`lmm_jax.batched.batch.fit_batch` on each model's design with the same
responses), and ``LRT*_i = deviance*_small,i - deviance*_large,i``. As in
pbkrtest, only the positive ``LRT*`` enter:

    p_PB = (1 + #{LRT* > LRT}) / (1 + #{LRT* > 0}),

beside the chi^2(df) p-value and pbkrtest's ``summary`` approximations from
the moments E, V of the positive ``LRT*``: Gamma (shape E^2/V, scale V/E),
Bartlett (``df LRT / E`` against chi^2(df)) and F (``LRT / df`` against
F(df, 2E/(E - 1))). Replicate ``i`` draws from ``fold_in(key, i)``:
``lmm_jax.simulate(small_ml_fit, n, key)[:, i]`` is its response.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import pandas as pd

from ..distributions import chi2_sf, f_sf, gamma_sf
from ..errors import ConvergenceWarning, InferenceError, check_bool, check_count
from ..runtime.scope import entry_point
from .batch import UNSTAGED_MAX_BATCH, BatchResult, check_method, fit_batch
from .bootstrap import default_chunk_size
from .distributed import exchange, mine, owners, put_rows
from .simulate import _draw, as_key, resolve_params

if TYPE_CHECKING:
    from ..results import LMMResult

NESTED_RTOL = 1e-8  # a small model's X column counts as in the large model's column space below this residual


def check_nested(large: "LMMResult", small: "LMMResult") -> None:
    """Raise :class:`~lmm_jax.errors.InferenceError` unless ``small`` can be
    nested in ``large``: the same response, rows, weights and offset; more
    parameters in ``large``; the small model's fixed-effects columns in the
    column space of the large model's; and each of its random-effects
    columns a column of the large model's for the same grouping factor
    (the same grouping of the rows, the same values)."""
    for i, r in enumerate((large, small)):
        if not all(hasattr(r, a) for a in ("model", "design", "objective", "reml", "npar")):
            raise TypeError(f"pb_modcomp takes two fitted models (results of lmm_jax.fit), got {r!r} "
                            f"({type(r).__name__}) as argument {i + 1}")
    dl, ds = large.design, small.design
    if dl.n != ds.n or not np.array_equal(dl.y, ds.y):
        raise InferenceError(f"the models were not fitted to the same response on the same rows ({dl.n} and {ds.n} "
                             "rows; check missing values and the response): a likelihood-ratio test needs identical "
                             "data")
    for name in ("weights", "offset"):
        a, b = getattr(dl, name), getattr(ds, name)
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
            raise InferenceError(f"the models have different {name} (large: {'none' if a is None else 'given'}, "
                                 f"small: {'none' if b is None else 'given'}, or different values): fit both "
                                 f"with the same {name}")
    if large.npar <= small.npar:
        raise InferenceError(f"the large model ({large.model.formula!r}) has {large.npar} parameters and the small "
                             f"one ({small.model.formula!r}) {small.npar}: the first argument must be the model "
                             "with more parameters, pb_modcomp(large, small)")
    if ds.p:
        coef = np.linalg.lstsq(dl.X, ds.X, rcond=None)[0]
        rel = np.linalg.norm(ds.X - dl.X @ coef, axis=0) / np.maximum(np.linalg.norm(ds.X, axis=0), 1e-300)
        outside = [name for name, r in zip(ds.fixef_names, rel) if r > NESTED_RTOL]
        if outside:
            raise InferenceError(f"the small model's fixed effects {outside} are not in the column space of the "
                                 f"large model's {list(dl.fixef_names)}: the models are not nested")
    for t in ds.terms:
        for j, col in enumerate(t.columns):
            if not any(_same_column(t, j, u) for u in dl.terms if u.group == t.group):
                have = sorted({f"{c} | {u.group}" for u in dl.terms for c in u.columns})
                raise InferenceError(f"the small model's random effect '{col} | {t.group}' is not a random effect "
                                     f"of the large model (it has {have}): the models are not nested")


def _same_column(t, j: int, u) -> bool:
    """Column ``j`` of term ``t`` is a column of term ``u``: the same name, the
    same grouping of the rows and the same values."""
    if t.columns[j] not in u.columns:
        return False
    pairs = len(set(zip(t.codes.tolist(), u.codes.tolist())))
    same_groups = pairs == len(np.unique(t.codes)) == len(np.unique(u.codes))
    return same_groups and np.allclose(t.Z[:, j], u.Z[:, u.columns.index(t.columns[j])], rtol=1e-12, atol=0)


FIELDS = ("theta", "beta", "sigma", "objective", "converged", "iterations", "failure")  # of a chunk's refits


def _refits(fit: "LMMResult", arrays: dict[str, np.ndarray], name: str, process: np.ndarray) -> BatchResult:
    """The ML refits of ``fit``'s model to every simulated response: its
    chunks' ``arrays`` (``<name>.<field>``) as one :class:`BatchResult`."""
    d = fit.design
    return BatchResult(ks=d.ks, component_names=d.theta_layout.names, fixef_names=tuple(d.fixef_names), reml=False,
                       process=process, **{k: arrays[f"{name}.{k}"] for k in FIELDS})


@entry_point
def pb_modcomp(large: "LMMResult", small: "LMMResult", n: int = 1000, key: Any = 0, *,
               chunk_size: int | None = None, max_iter: int = 200, method: str = "bfgs",
               progress: bool = False) -> "PBModComp":
    """Parametric-bootstrap likelihood-ratio test of ``small`` against
    ``large`` (pbkrtest's ``PBmodcomp(large, small, nsim = n)``; module
    docstring).

    Args:
        large: the fitted larger model.
        small: the fitted smaller (null) model, nested in ``large``: the same
            response, rows, weights and offset (checked, see
            :func:`check_nested`).
        n: simulated responses.
        key: int seed or ``jax.random`` key; replicate ``i`` is
            ``lmm_jax.simulate(small_ml, n, key)[:, i]``.
        chunk_size: responses per batched fit. Default: the bootstrap's
            power of two (other ``n`` in its bucket reuse the compiled fits),
            at most ``UNSTAGED_MAX_BATCH`` (256), whose batched fits compile
            sooner than the staged larger ones: a test runs once per process
            (sleepstudy's slope, 4,000 simulations on 2 cores: 8.2 s with
            compilation, 0.69 s again, against 9.7 s and 0.57 s in chunks of
            2,048).
            After ``jax.distributed.initialize()`` the chunks are shared out
            between the processes and every process returns the whole test,
            the same bits as one process (docs/distributed.md).
        max_iter, method: the refits' optimiser (:func:`~lmm_jax.batched.batch.fit_batch`).
        progress: a tqdm bar over chunks.

    Returns:
        A :class:`PBModComp`: ``.test`` (pbkrtest's printed table),
        ``.summary()`` (its summary table), ``.p_value``, ``.reference``
        (the simulated statistics) and the refits.

    Raises:
        InferenceError: the models are not nested fits of the same data.

    Example:
        >>> ingot = lmm_jax.datasets.load("ingot")
        >>> large = lmm_jax.fit("pres ~ metal + (1 | ingot)", ingot, reml=False)
        >>> small = lmm_jax.fit("pres ~ 1 + (1 | ingot)", ingot, reml=False)
        >>> lmm_jax.pb_modcomp(large, small, n=1000, key=1).test
    """
    check_nested(large, small)
    n, max_iter = check_count(n, "n"), check_count(max_iter, "max_iter")
    progress, method = check_bool(progress, "progress"), check_method(method)
    key = as_key(key)
    large_ml = large.model.fit(reml=False) if large.reml else large
    small_ml = small.model.fit(reml=False) if small.reml else small
    model, p = resolve_params(small_ml, None)
    chunk = (min(default_chunk_size(n, model.design.n, 1, jax.default_backend()), UNSTAGED_MAX_BATCH)
             if chunk_size is None else check_count(chunk_size, "chunk_size"))
    starts = range(0, n, chunk)
    owner = owners([chunk] * len(starts), f"pb_modcomp of {n} simulations in chunks of {chunk}",
                   f"Pass chunk_size={max(1, -(-n // jax.process_count()))} or less to split it.")
    todo = mine(owner)
    if progress:
        from tqdm.auto import tqdm

        todo = tqdm(todo, desc="pb_modcomp", unit="chunk")
    local: dict[int, dict[str, np.ndarray]] = {}
    for c in todo:
        Y = _draw(model, p, key, starts[c], chunk)    # always a full chunk: one compilation
        size = min(chunk, n - starts[c])
        for name, m in (("large", large_ml.model), ("small", small_ml.model)):
            fits = fit_batch(m, Y, reml=False, max_iter=max_iter, method=method, ddf="none")
            local[c] = {**local.get(c, {}), **{f"{name}.{k}": getattr(fits, k)[:size] for k in FIELDS}}
    arrays: dict[str, np.ndarray] = {}
    for c, rows in exchange(local).items():
        put_rows(arrays, n, starts[c], rows)
    process = np.repeat(owner, chunk)[:n]
    refits_large = _refits(large_ml, arrays, "large", process)
    refits_small = _refits(small_ml, arrays, "small", process)
    ok = refits_large.ok & refits_small.ok
    reference = np.where(ok, refits_small.objective - refits_large.objective, np.nan)
    out = PBModComp(large=large_ml, small=small_ml, statistic=float(small_ml.objective - large_ml.objective),
                    df=int(large_ml.npar - small_ml.npar), reference=reference, large_refits=refits_large,
                    small_refits=refits_small, chunk_size=chunk)
    if not ok.all():
        failed = int(np.sum(refits_large.failed | refits_small.failed))
        warnings.warn(f"{n - int(ok.sum())} of {n} simulated responses are left out of the reference distribution: "
                      f"{failed} with a failed refit, the others with a refit that did not converge (see "
                      ".large_refits and .small_refits)", ConvergenceWarning, stacklevel=3)
    return out


@entry_point
@dataclass(frozen=True, eq=False)
class PBModComp:
    """A parametric-bootstrap likelihood-ratio test (pbkrtest's ``PBmodcomp``).

    Attributes:
        large, small: the two models' ML fits (the given fits, or their ML
            refits).
        statistic: the observed LRT, ``2 (logLik_large - logLik_small)``.
        df: ``npar_large - npar_small``.
        reference: (n,) the simulated LRT statistics; NaN where a refit
            failed or did not converge.
        large_refits, small_refits: the refits
            (:class:`~lmm_jax.batched.batch.BatchResult`, one row per response).
        chunk_size: responses per batched fit.
    """

    large: "LMMResult"
    small: "LMMResult"
    statistic: float
    df: int
    reference: np.ndarray
    large_refits: BatchResult
    small_refits: BatchResult
    chunk_size: int

    @property
    def n_positive(self) -> int:
        """Simulated statistics > 0: those the PB p-value counts (pbkrtest's ``npos``)."""
        return int(np.sum(self.reference > 0))

    @property
    def n_extreme(self) -> int:
        """Simulated statistics above the observed one."""
        return int(np.sum(self.reference > self.statistic))

    @property
    def p_value(self) -> float:
        """The parametric-bootstrap p-value ``(1 + n_extreme) / (1 + n_positive)``."""
        return (1 + self.n_extreme) / (1 + self.n_positive)

    @property
    def p_chisq(self) -> float:
        """The asymptotic p-value, ``P(chi^2(df) > LRT)``."""
        return float(chi2_sf(self.statistic, self.df))

    @property
    def test(self) -> pd.DataFrame:
        """pbkrtest's printed table: rows ``LRT`` (chi^2) and ``PBtest``,
        columns ``stat, df, p.value``."""
        return self.summary().loc[["LRT", "PBtest"], ["stat", "df", "p.value"]]

    def summary(self) -> pd.DataFrame:
        """pbkrtest's ``summary(PBmodcomp)`` table: rows ``LRT``, ``PBtest``,
        ``Gamma``, ``Bartlett``, ``F`` (module docstring), columns ``stat, df,
        ddf, p.value``; ``attrs`` holds the moments of the positive
        simulated statistics (``mean``, ``var``) and the counts."""
        pos = self.reference[self.reference > 0]
        t, df = self.statistic, self.df
        E = float(np.mean(pos)) if pos.size else np.nan
        V = float(np.var(pos, ddof=1)) if pos.size > 1 else np.nan
        ddf = 2.0 * E / (E - 1.0) if E != 1.0 else np.inf
        rows = {"LRT": (t, df, np.nan, self.p_chisq),
                "PBtest": (t, np.nan, np.nan, self.p_value),
                "Gamma": (t, np.nan, np.nan, float(gamma_sf(t, E * E / V, V / E))),
                "Bartlett": (df * t / E, df, np.nan, float(chi2_sf(df * t / E, df))),
                "F": (t / df, df, ddf, float(f_sf(t / df, df, ddf)) if ddf > 0 else np.nan)}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=["stat", "df", "ddf", "p.value"])
        table.attrs.update(mean=E, var=V, nsim=len(self.reference), npos=int(pos.size), n_extreme=self.n_extreme)
        return table

    def __repr__(self) -> str:
        n = len(self.reference)
        return (f"<PBModComp {self.large.model.formula!r} vs {self.small.model.formula!r}: LRT {self.statistic:.4f} "
                f"on {self.df} df, p (chi^2) {self.p_chisq:.4g}, p (PB, {self.n_positive} of {n} samples) "
                f"{self.p_value:.4g}>")


"""Parametric bootstrap of a GLMM fit (lme4's ``bootMer``) in compiled chunks.

For each chunk of replicates one compiled function draws the responses at
the fitted (theta, beta) (:func:`draw_replicates`, :mod:`lmm_jax.glmm.simulate`)
and another refits them (:func:`lmm_jax.glmm.batch.fit_rows_kernel`: the
joint Newton fit under ``jax.vmap``, warm-started at the fit's estimates,
:func:`lmm_jax.glmm.batch.starting_point`) for at most ``FIRST_ITER``
iterations. The replicates not converged by then (1.5% of cbpp's, most
heading for a zero SD) are gathered from every chunk and continue, a chunk
at a time, through the same executable (:func:`lmm_jax.glmm.batch.fit_in_passes`).
Chunks hold :func:`lmm_jax.glmm.batch.rows_per_call` replicates whatever
``n``, so every bootstrap, batch and power simulation of a model runs one fitting
executable; the replicates past ``n`` in the last chunk are computed and dropped.

Reproducibility: replicate ``i`` draws from ``jax.random.fold_in(key, i)``
whatever ``chunk_size``; the same key gives the same replicates.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..batched.bootstrap import _intervals
from ..batched.simulate import as_key
from ..core.family import Family
from ..core.laplace import GLMMData
from ..core.types import Structure, row_options
from ..errors import ConvergenceWarning, check_count
from ..runtime.kernel import kernel, traced_sets
from ..runtime.scope import entry_point
from .batch import (GLMMBatchResult, as_batch_result, first_pass, fit_in_passes, prepare_fits, rows_per_call,
                    starting_point, stragglers)
from .simulate import fit_basis_beta, simulate_batch

if TYPE_CHECKING:
    from .results import GLMMResult

@kernel(static_argnames=("fam", "s"), cpu_options=row_options)
def draw_replicates(key: jax.Array, idx: jnp.ndarray, theta: jnp.ndarray, beta_w: jnp.ndarray, data: GLMMData,
                    fam: Family, s: Structure) -> jnp.ndarray:
    """(B, n): the responses of replicates ``idx`` at ``(theta, beta_w)``,
    replicate ``i`` from ``fold_in(key, i)``."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    return simulate_batch(keys, theta, beta_w, None, data, fam, s)


@entry_point
def run_bootstrap(result: "GLMMResult", n: int, key: Any, *, chunk_size: int | None = None,
                  max_iter: int = 200) -> "GLMMBootstrapResult":
    """Parametric bootstrap of a fitted GLMM (see :meth:`GLMMResult.bootstrap`).

    Args:
        result: the fit; its (theta, beta) are simulated at and start each refit.
        n: replicates.
        key: an int seed or a ``jax.random`` key (replicate i uses ``fold_in(key, i)``).
        chunk_size: replicates per compiled call (default
            :func:`~lmm_jax.glmm.batch.rows_per_call`: 16 on the CPU).
        max_iter: Newton iteration limit per refit.

    Returns:
        A :class:`GLMMBootstrapResult`.
    """
    n, max_iter = check_count(n, "n"), check_count(max_iter, "max_iter")
    model = result.model
    m, fam, s = model.data, model.family, model.structure
    key = as_key(key)
    chunk = rows_per_call() if chunk_size is None else check_count(chunk_size, "chunk_size")
    phi0, active0, beta0 = starting_point(model, result)
    theta = np.asarray(result.theta, dtype=np.float64)
    beta_w = fit_basis_beta(result)
    parts, todo, Y_todo = [], [], []
    traced = threading.Event()
    prepare_fits(chunk, m, fam, s, result.n_agq, after=traced)      # compiles beside the first draws
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk, dtype=np.uint32)     # always a full chunk: one compilation
        with traced_sets(traced):
            Y = np.asarray(draw_replicates(key, idx, theta, beta_w, m, fam, s))
        out = first_pass(Y, phi0, active0, beta0, m, fam, s, result.n_agq, max_iter)
        size = min(chunk, n - start)
        out = {k: v[:size] for k, v in out.items()}
        late = stragglers(out)
        parts.append(out)
        todo.append(start + late)
        Y_todo.append(Y[late])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out = fit_in_passes(np.concatenate(Y_todo), out, np.concatenate(todo), m, fam, s, result.n_agq, max_iter, chunk)
    boot = GLMMBootstrapResult(fit=result, replicates=as_batch_result(out, model, with_vcov=False), chunk_size=chunk)
    if boot.n_failed or boot.n_nonconverged:
        warnings.warn(f"{boot.n_failed} of {n} bootstrap replicates failed and {boot.n_nonconverged} did not "
                      "converge; they are kept in .table (failure, converged) and left out of confint()",
                      ConvergenceWarning, stacklevel=3)
    return boot


@entry_point
@dataclass(frozen=True, eq=False)
class GLMMBootstrapResult:
    """Replicates of a GLMM's parametric bootstrap.

    Attributes:
        fit: the :class:`~lmm_jax.glmm.results.GLMMResult` bootstrapped.
        replicates: the refits, a :class:`~lmm_jax.glmm.batch.GLMMBatchResult`
            (no per-fit covariances).
        chunk_size: replicates per compiled call.
    """

    fit: "GLMMResult"
    replicates: GLMMBatchResult
    chunk_size: int

    def __len__(self) -> int:
        return len(self.replicates)

    def __repr__(self) -> str:
        return (f"<GLMMBootstrapResult {len(self)} replicates of {self.fit.model.formula!r}: {self.n_failed} "
                f"failed, {self.n_nonconverged} not converged, {int(np.sum(self.replicates.singular))} singular>")

    @property
    def n_failed(self) -> int:
        """Replicates whose response cannot be fitted or whose refit is not finite."""
        return self.replicates.n_failed

    @property
    def n_nonconverged(self) -> int:
        """Replicates that did not fail but whose refit did not converge."""
        return self.replicates.n_nonconverged

    @property
    def table(self) -> pd.DataFrame:
        """One row per replicate: deviance, convergence, failure, the lme4-named
        estimates (``sd_(Intercept)|herd``, fixed effects) and theta."""
        return self.replicates.table

    @property
    def estimate(self) -> pd.Series:
        """The bootstrapped fit's own estimates, in the table's naming."""
        f, r = self.fit, self.replicates
        one = GLMMBatchResult(theta=f.theta[None], beta=f.beta[None], objective=np.asarray([f.objective]),
                              converged=np.asarray([True]), iterations=np.asarray([0]), ks=r.ks,
                              component_names=r.component_names, fixef_names=r.fixef_names,
                              failure=np.asarray([""], dtype=object))
        return one.estimates().iloc[0]

    def confint(self, level: float = 0.95, method: Literal["percentile", "shortest", "basic"] = "percentile"
                ) -> pd.DataFrame:
        """Bootstrap intervals (lme4's ``confint(method = "boot")``; default the
        percentile intervals, ``boot.type = "perc"``) of the SDs, correlations
        and fixed effects, in lme4's naming; replicates that failed or did not
        converge are left out.

        Returns:
            DataFrame with columns ``lower``, ``upper``.
        """
        return _intervals(self.replicates.estimates(), self.estimate, self.replicates.ok, len(self), level, method)

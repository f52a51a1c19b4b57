"""Parametric bootstrap of a GLMM fit (lme4's ``bootMer``) in compiled chunks.

One jit-compiled function per chunk of replicates draws the responses at the
fitted (theta, beta) (:mod:`lmm_jax.glmm.simulate`), checks them
(:func:`lmm_jax.glmm.batch.response_checks`) and refits each by the joint
Newton fit under ``jax.vmap``, warm-started at the fit's estimates
(:func:`lmm_jax.glmm.batch.starting_point`), for at most ``FIRST_ITER``
iterations; the replicates not converged by then (1.5% of cbpp's, most
heading for a zero SD) continue in small batches
(:func:`lmm_jax.glmm.batch.fit_in_passes`). Chunks are powers of two
(:func:`lmm_jax.batched.bootstrap.default_chunk_size`, at most ``CHUNK_MAX``),
so bootstraps of other sizes reuse the compiled chunk; the replicates past ``n`` in the last
chunk are computed and dropped.

Reproducibility: replicate ``i`` draws from ``jax.random.fold_in(key, i)``
whatever ``chunk_size``; the same key gives the same replicates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..batched.bootstrap import _intervals, default_chunk_size
from ..batched.simulate import as_key
from ..core.family import Family
from ..core.laplace import GLMMData
from ..core.types import Structure
from ..errors import ConvergenceWarning, check_count
from ..runtime.kernel import kernel
from ..runtime.scope import entry_point
from .batch import FIRST_ITER, GLMMBatchResult, as_batch_result, fit_in_passes, fit_rows, starting_point
from .simulate import fit_basis_beta, simulate_batch

if TYPE_CHECKING:
    from .results import GLMMResult

# the default chunk's cap: 1,000 cbpp replicates (2 CPU cores) take 0.67 s in chunks of 64, 0.70 s of 128, 0.77 s
# of 256 and 1.5 s of 1,024 (the vmapped PIRLS and Newton loops of a chunk run until its slowest member is done)
CHUNK_MAX = 64


@kernel(static_argnames=("fam", "s", "n_agq", "max_iter"))
def bootstrap_chunk(key: jax.Array, idx: jnp.ndarray, theta: jnp.ndarray, beta_w: jnp.ndarray, data: GLMMData,
                    phi0: jnp.ndarray, active0: jnp.ndarray, beta0: jnp.ndarray, fam: Family, s: Structure,
                    n_agq: int, max_iter: int) -> dict:
    """Simulate and refit the replicates ``idx`` (fused): the responses (B, n)
    and :func:`fit_rows`' arrays."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    Y = simulate_batch(keys, theta, beta_w, None, data, fam, s)
    return Y, fit_rows(Y, data, phi0, active0, beta0, fam, s, n_agq, max_iter)


@entry_point
def run_bootstrap(result: "GLMMResult", n: int, key: Any, *, chunk_size: int | None = None,
                  max_iter: int = 200) -> "GLMMBootstrapResult":
    """Parametric bootstrap of a fitted GLMM (see :meth:`GLMMResult.bootstrap`).

    Args:
        result: the fit; its (theta, beta) are simulated at and start each refit.
        n: replicates.
        key: an int seed or a ``jax.random`` key (replicate i uses ``fold_in(key, i)``).
        chunk_size: replicates per compiled call (default: the smallest power of
            two >= n, at least 8, at most ``CHUNK_MAX``).
        max_iter: Newton iteration limit per refit.

    Returns:
        A :class:`GLMMBootstrapResult`.
    """
    n, max_iter = check_count(n, "n"), check_count(max_iter, "max_iter")
    model = result.model
    key = as_key(key)
    chunk = (min(default_chunk_size(n, model.design.n, 1, jax.default_backend()), CHUNK_MAX) if chunk_size is None
             else check_count(chunk_size, "chunk_size"))
    phi0, active0, beta0 = starting_point(model, result)
    theta = jnp.asarray(result.theta, dtype=jnp.float64)
    beta_w = fit_basis_beta(result)
    parts: list[dict] = []
    for start in range(0, n, chunk):
        idx = jnp.arange(start, start + chunk, dtype=jnp.uint32)     # always a full chunk: one compilation
        Y, out = bootstrap_chunk(key, idx, theta, beta_w, model.data, phi0, active0, beta0, model.family,
                                 model.structure, result.n_agq, min(FIRST_ITER, max_iter))
        if max_iter > FIRST_ITER:
            out = fit_in_passes(Y, out, model.data, model.family, model.structure, result.n_agq, max_iter)
        size = min(chunk, n - start)
        parts.append({k: np.asarray(v)[:size] for k, v in out.items()})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
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

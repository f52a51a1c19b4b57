"""Parametric bootstrap: thousands of refits in one compiled call.

lme4's ``bootMer`` and MixedModels.jl's ``parametricbootstrap``: simulate
responses at the fitted parameters (:mod:`lmm_jax.batched.simulate`), refit each, and
summarise the replicates. Here one jit-compiled function per chunk of
replicates does all three: draw the responses, form their cross-products
(only the y-parts; Z'Z, Z'X, X'X are the fitted model's), and run
:func:`lmm_jax.core.optimize.bfgs_minimize` under ``jax.vmap``, each replicate
started from its own MIVQUE(0) moment estimates (:mod:`lmm_jax.core.start`; for a
balanced design such as sleepstudy, its REML optimum unless that is on the
boundary) with the fitted model's inverse Hessian. Chunks bound the memory;
every chunk has the same shape, one of a few powers of two, so there is one
compilation per model structure and chunk size, shared by every number of
replicates that rounds to that size.

Reproducibility: replicate ``i`` draws its response from
``jax.random.fold_in(key, i)``, whatever ``chunk_size``, the number of devices
or of processes; its refit can differ in the last bits (1e-13) between chunk
sizes, as XLA compiles each batch shape to its own code.

Devices: the chunk runs on JAX's default device. With several local devices
the replicate axis is sharded across them (``NamedSharding`` over a 1-d mesh).
After ``jax.distributed.initialize()`` the chunks are shared out between the
processes (:mod:`lmm_jax.batched.distributed`), each runs its own, and every
process returns all the replicates, the same bits as one process
(docs/distributed.md).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .batch import (BatchResult, _as_batch_result, batch_response_products, check_method,
                    fit_products, moment_starts, start_inverse_hessian)
from ..runtime.kernel import kernel
from ..runtime.scope import entry_point
from ..errors import ConvergenceWarning, check_bool, check_count
from ..core.estimates import estimates
from ..core.types import batch_options
from ..core.parametrization import phi_from_theta
from .distributed import exchange, mine, owners, put_rows
from .simulate import Params, as_key, simulate_batch

if TYPE_CHECKING:
    from ..model import LMM
    from ..results import LMMResult

CHUNK_MAX_ENTRIES = 1 << 24   # default chunk: at most this many simulated y values (128 MB) per chunk
# on the CPU: larger vmapped chunks stalled XLA:CPU here (threads idle in futex waits at 10,000). A GPU
# has no such cap: 10,000 sleepstudy replicates took 0.13 s in chunks of 2,048 and 0.066 s in one (H100)
CHUNK_MAX = 2048
CHUNK_MIN = 8                 # smallest default chunk: bootstraps of 1 to 8 replicates share one compilation


@kernel(static_argnames=("s", "max_iter", "method"), cpu_options=batch_options)
def _bootstrap_chunk(key, idx, params, G, arrays, dp, rp, eq, phi_fit, active_fit, s, reml, max_iter, method):
    """Simulate, form products and refit the replicates ``idx`` (fused).
    Each refit starts from its response's MIVQUE(0) theta (``eq``; the
    fitted theta when None), BFGS from the inverse Hessian of the fitted
    response ``rp`` at the fitted theta."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    # y* - X beta (Zb + e): the fit is equivariant (beta* - beta, the same theta and sigma), and the
    # products lose the cancellation of y'y against its fixed-effects part (f's rounding ~ |X beta|^2)
    E = simulate_batch(keys, params._replace(beta=jnp.zeros_like(params.beta)), arrays, s)
    hinv0 = start_inverse_hessian(dp, rp, phi_fit, active_fit, s, reml) if method == "bfgs" else None
    rps = batch_response_products(E, G, arrays, s)
    phi0, active0 = (phi_fit, active_fit) if eq is None else moment_starts(eq, rps, s)
    out = fit_products(dp, rps, phi0, active0, s, reml, max_iter, method=method, hinv0=hinv0)
    return dict(out, beta=out["beta"] + params.beta)


@partial(jax.jit, static_argnames=("s", "reml", "statistic"))
def _statistic_chunk(key, idx, params, G, arrays, dp, theta, beta, rp, theta_fit, s, reml, statistic):
    """``statistic`` of each replicate's :class:`~lmm_jax.core.estimates.Estimates`
    at its refitted ``theta`` (vmapped), and of the fit's own (``rp`` at
    ``theta_fit``). The replicates' responses are drawn again from their
    keys (as :func:`_bootstrap_chunk` draws them), which costs less than
    keeping their products; their fixed effects are the refits' ``beta``."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    E = simulate_batch(keys, params._replace(beta=jnp.zeros_like(params.beta)), arrays, s)
    rps = batch_response_products(E, G, arrays, s)
    est = jax.vmap(lambda th, r: estimates(th, dp, r, s, reml))(theta, rps)._replace(beta=beta)
    return jax.vmap(statistic)(est), statistic(estimates(theta_fit, dp, rp, s, reml))


def check_statistic(statistic: Any, model: "LMM", reml: bool) -> Any:
    """The output structure of ``statistic`` (a pytree of ShapeDtypeStructs)
    applied to one replicate's :class:`~lmm_jax.core.estimates.Estimates`,
    traced once without compiling; a clear ``TypeError`` for a statistic
    that is not a hashable callable or does not trace."""
    if not callable(statistic):
        raise TypeError(f"statistic must be a function of one replicate's lmm_jax.Estimates, got {statistic!r}")
    try:
        hash(statistic)
    except TypeError as e:
        raise TypeError(f"statistic must be hashable (it keys the compiled chunk): {statistic!r} is not ({e}); "
                        "pass a function or a functools.partial") from e
    s, dp, rp = model.structure, model.products, model.response
    theta = jax.ShapeDtypeStruct((model.design.theta_layout.n_theta,), jnp.float64)
    try:
        shape = jax.eval_shape(lambda th: statistic(estimates(th, dp, rp, s, reml)), theta)
    except Exception as e:
        raise TypeError(f"statistic {getattr(statistic, '__name__', statistic)!r} could not be traced on an "
                        f"lmm_jax.Estimates (fields theta, beta, sigma, vcov, b, deviance: JAX arrays): "
                        f"{type(e).__name__}: {e}. It must be a JAX function (jax.numpy, no float() or "
                        "NumPy on its argument) returning an array or a pytree of arrays") from e
    if not jax.tree_util.tree_leaves(shape):
        raise TypeError(f"statistic {getattr(statistic, '__name__', statistic)!r} returned no arrays "
                        f"({shape!r}); return a scalar, an array or a pytree of arrays")
    return shape


def _replicate_sharding(n_dev: int):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.local_devices()[:n_dev]), ("replicate",))
    return NamedSharding(mesh, PartitionSpec("replicate"))


def _split_chunk(n: int, n_proc: int) -> int:
    """The largest power of two that cuts ``n`` replicates into at least
    ``n_proc`` chunks (for the message of a run that leaves processes idle):
    1,000 replicates on 4 processes, 256."""
    c = 1 << max(n - 1, 0).bit_length()
    while c > 1 and -(-n // c) < n_proc:
        c //= 2
    return c


def default_chunk_size(n: int, n_obs: int, n_dev: int = 1, platform: str = "cpu") -> int:
    """Replicates per chunk, a power of two so that bootstraps of other sizes
    reuse the compiled chunk: the smallest one >= n (at least
    ``CHUNK_MIN``), capped at the largest one within ``CHUNK_MAX_ENTRIES``
    simulated values and, on the CPU, ``CHUNK_MAX`` replicates; a multiple
    of the number of devices. Every chunk is computed whole and the
    replicates past n are dropped: 301 and 302 replicates both run as one
    chunk of 512, 10,000 as 5 x 2,048 on the CPU."""
    cap = max(1, CHUNK_MAX_ENTRIES // max(n_obs, 1))
    if platform == "cpu":
        cap = min(cap, CHUNK_MAX)
    cap = 1 << (cap.bit_length() - 1)                               # largest power of two <= cap
    c = min(cap, max(CHUNK_MIN, 1 << (max(n, 1) - 1).bit_length()))  # smallest power of two >= n
    return int(math.ceil(c / n_dev) * n_dev)


def replicate_bytes(model: "LMM") -> int:
    """Host memory a bootstrap of ``model`` holds per replicate at its peak,
    while :meth:`BootstrapResult.confint` summarises: the estimates kept
    (theta, beta, sigma and objective in float64, converged, iterations,
    the failure reason's pointer, the computing process) and three float64 copies of the estimates
    table (sd/cor, sigma, fixed effects). Simulated responses are not kept:
    they live one chunk at a time. Measured peaks (tracemalloc, 4,096 to
    16,384 replicates): sleepstudy 188 bytes per replicate (this gives
    221), Penicillin 125 (157)."""
    lay, p = model.design.theta_layout, model.design.p
    kept = 8 * (lay.n_theta + p + 2) + 1 + 8 + 8 + 4
    return kept + 3 * 8 * (len(lay.names) + 1 + p)


@entry_point
def run_bootstrap(result: "LMMResult", n: int, key: Any, *, chunk_size: int | None = None,
                  progress: bool = False, params: dict | None = None, max_iter: int = 200,
                  method: str = "bfgs", statistic: Callable | None = None) -> "BootstrapResult":
    """Parametric bootstrap of a fitted model (see :meth:`LMMResult.bootstrap`)."""
    from .simulate import resolve_params

    n, max_iter = check_count(n, "n"), check_count(max_iter, "max_iter")
    progress = check_bool(progress, "progress")
    method = check_method(method)
    model, p = resolve_params(result, params)
    s = model.structure
    key = as_key(key)
    n_dev = jax.local_device_count()
    chunk = (default_chunk_size(n, model.design.n, n_dev, jax.default_backend()) if chunk_size is None
             else check_count(chunk_size, "chunk_size"))
    if n_dev > 1:
        chunk = int(math.ceil(chunk / n_dev) * n_dev)
    sharding = _replicate_sharding(n_dev) if n_dev > 1 else None
    phi0, active0 = phi_from_theta(np.asarray(p.theta), s.ks)
    # host arrays: the kernels take numpy, and jnp.asarray of a numpy array compiles a one-op program
    phi0, active0 = np.asarray(phi0, dtype=np.float64), np.asarray(active0, dtype=bool)
    G = model.response_map
    eq = model.moment_equations
    starts = range(0, n, chunk)
    owner = owners([chunk] * len(starts), f"a bootstrap of {n} replicates in chunks of {chunk}",
                   f"Pass chunk_size={_split_chunk(n, jax.process_count())} or less to split it.")
    todo = mine(owner)
    steps = todo
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(todo, desc="bootstrap", unit="chunk")
    theta_fit = np.asarray(result.theta, dtype=np.float64)
    stat_tree = (None if statistic is None
                 else jax.tree_util.tree_structure(check_statistic(statistic, model, result.reml)))
    out: dict[str, np.ndarray] = {}
    local: dict[int, dict[str, np.ndarray]] = {}
    for c in steps:
        start = starts[c]
        idx_np = np.arange(start, start + chunk, dtype=np.uint32)     # always a full chunk: one compilation
        if sharding is None:
            idx = idx_np                     # the kernel takes numpy (jnp.asarray would compile a copy)
        else:
            idx = jax.make_array_from_callback(idx_np.shape, sharding, lambda i: idx_np[i])
        part = _bootstrap_chunk(key, idx, p, G, model.arrays, model.products, model.response, eq, phi0, active0, s,
                                result.reml, int(max_iter), method)
        size = min(chunk, n - start)
        rows = {k: np.asarray(v)[:size] for k, v in part.items()}
        if statistic is not None:
            stat, stat0 = _statistic_chunk(key, idx, p, G, model.arrays, model.products, part["theta"],
                                           part["beta"], model.response, theta_fit, s, result.reml, statistic)
            for j, v in enumerate(jax.tree_util.tree_leaves(stat)):
                v = np.asarray(v)[:size]          # float arrays, so that failed replicates can be NaN
                rows[f"statistic.{j}"] = v if np.issubdtype(v.dtype, np.inexact) else v.astype(np.float64)
        put_rows(out, n, start, rows)             # each chunk's estimates straight into the arrays of all n
        if jax.process_count() > 1:
            local[c] = rows
        if statistic is not None and c == 0:
            local.setdefault(c, {}).update({f"estimate.{j}": np.asarray(v)
                                            for j, v in enumerate(jax.tree_util.tree_leaves(stat0))})
    shared = exchange(local)
    done = set(todo)
    for c, rows in shared.items():
        if c not in done:
            put_rows(out, n, starts[c], {k: v for k, v in rows.items() if not k.startswith("estimate.")})
    stat_leaves = (None if stat_tree is None
                   else [out.pop(f"statistic.{j}") for j in range(stat_tree.num_leaves)])
    reps = _as_batch_result(out, model.design, result.reml, process=np.repeat(owner, chunk)[:n])
    stats = stat0 = None
    if stat_leaves is not None:
        for arr in stat_leaves:
            arr[reps.failed] = np.nan
        stats = jax.tree_util.tree_unflatten(stat_tree, stat_leaves)
        stat0 = jax.tree_util.tree_unflatten(stat_tree, [shared[0][f"estimate.{j}"]
                                                         for j in range(stat_tree.num_leaves)])
    boot = BootstrapResult(fit=result, replicates=reps, params=p, chunk_size=chunk, statistic=stats,
                           statistic_estimate=stat0)
    if boot.n_failed or boot.n_nonconverged:
        warnings.warn(f"{boot.n_failed} of {n} bootstrap replicates failed (non-finite) and "
                      f"{boot.n_nonconverged} did not converge; they are kept in .table (converged=False) and "
                      "left out of confint()", ConvergenceWarning, stacklevel=3)
    return boot


@entry_point
@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Replicates of a parametric bootstrap.

    Attributes:
        fit: the :class:`~lmm_jax.results.LMMResult` bootstrapped.
        replicates: the refits, a :class:`~lmm_jax.batched.batch.BatchResult`.
        params: the parameters the responses were simulated at.
        chunk_size: replicates per compiled call.
        statistic: the ``statistic`` of each replicate (``bootstrap(...,
            statistic=f)``; None without one): ``f``'s output pytree with
            each array stacked over the replicates, (n, ...), as NumPy
            arrays (integer and boolean outputs as float64); NaN for the
            replicates that failed (:attr:`n_failed`).
        statistic_estimate: ``f`` of the bootstrapped fit's own estimates
            (lme4 ``bootMer``'s ``t0``).
    """

    fit: "LMMResult"
    replicates: BatchResult
    params: Params
    chunk_size: int
    statistic: Any = None
    statistic_estimate: Any = None

    def __len__(self) -> int:
        return len(self.replicates)

    def __repr__(self) -> str:
        return (f"<BootstrapResult {len(self)} replicates of {self.fit.model.formula!r}: "
                f"{self.n_failed} failed, {self.n_nonconverged} not converged, "
                f"{int(np.sum(self.replicates.singular))} singular>")

    @property
    def n_failed(self) -> int:
        """Replicates whose refit gave non-finite values."""
        return self.replicates.n_failed

    @property
    def n_nonconverged(self) -> int:
        """Replicates with finite values whose optimiser did not converge."""
        return self.replicates.n_nonconverged

    @property
    def table(self) -> pd.DataFrame:
        """One row per replicate (index = replicate number): objective,
        converged, singular, iterations, the lme4-named estimates
        (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ...,
        ``sigma``, fixed effects) and theta."""
        return self.replicates.table

    @property
    def estimate(self) -> pd.Series:
        """The bootstrapped fit's own estimates, in the table's naming."""
        f = self.fit
        one = BatchResult(theta=f.theta[None], beta=f.beta[None], sigma=np.asarray([f.sigma]),
                          objective=np.asarray([f.objective]), converged=np.asarray([True]),
                          iterations=np.asarray([0]), ks=self.replicates.ks,
                          component_names=self.replicates.component_names,
                          fixef_names=self.replicates.fixef_names, reml=f.reml)
        return one.estimates().iloc[0]

    def confint(self, level: float = 0.95, method: Literal["percentile", "shortest", "basic"] = "percentile"
                ) -> pd.DataFrame:
        """Bootstrap confidence intervals (lme4 ``confint(method = "boot")``).

        Args:
            level: coverage, in (0, 1).
            method: ``"percentile"`` (quantiles of the replicates, lme4's
                default ``boot.type = "perc"``), ``"shortest"`` (the shortest
                interval holding ``level`` of the replicates, MixedModels.jl's
                ``shortestcovint``) or ``"basic"`` (``2 est - q_{1-a/2}``,
                ``2 est - q_{a/2}``).

        Returns:
            DataFrame with columns ``lower``, ``upper`` indexed in lme4's
            order: sd/cor per term, ``sigma``, fixed effects. Replicates that
            failed or did not converge are left out (counted in
            :attr:`n_failed` / :attr:`n_nonconverged`); correlations of
            replicates with a zero SD are undefined and left out of that row.
        """
        return _intervals(self.replicates.estimates(), self.estimate, self.replicates.ok, len(self), level,
                          method)

    @property
    def statistic_table(self) -> pd.DataFrame:
        """The :attr:`statistic` flattened, one row per replicate: a column
        per scalar output, named by its pytree path (``t``, ``ratio``,
        ``0``, ...; ``statistic`` for a bare output), with ``[i]`` or
        ``[i,j]`` per element of a non-scalar array (``beta[1]``)."""
        if self.statistic is None:
            raise ValueError("this bootstrap has no statistic: pass bootstrap(..., statistic=f), f a JAX "
                             "function of one replicate's lmm_jax.Estimates")
        return pd.DataFrame(_flat_columns(self.statistic, per_replicate=True))

    def statistic_confint(self, level: float = 0.95,
                          method: Literal["percentile", "shortest", "basic"] = "percentile") -> pd.DataFrame:
        """Bootstrap intervals of the :attr:`statistic` (lme4's ``boot.ci`` of
        ``bootMer(FUN=)``): one row per column of :attr:`statistic_table`,
        by the methods of :meth:`confint` ("basic" centres on
        :attr:`statistic_estimate`). The replicates that failed or did not
        converge are left out, as in :meth:`confint`.

        Args:
            level: coverage, in (0, 1).
            method: ``"percentile"``, ``"shortest"`` or ``"basic"``, as for
                :meth:`confint`.

        Returns:
            DataFrame with columns ``lower``, ``upper``, one row per scalar of
            the statistic (the columns of :attr:`statistic_table`).
        """
        center = pd.Series(_flat_columns(self.statistic_estimate, per_replicate=False))
        return _intervals(self.statistic_table, center, self.replicates.ok, len(self), level, method)


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):                # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_columns(tree: Any, per_replicate: bool) -> dict[str, np.ndarray]:
    """Each scalar of a pytree of arrays (with a leading replicate axis when
    ``per_replicate``) as a named column (:attr:`BootstrapResult.statistic_table`)."""
    cols: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.asarray(leaf)
        base = ".".join(_key_name(k) for k in path) or "statistic"
        shape = leaf.shape[1:] if per_replicate else leaf.shape
        for ix in np.ndindex(shape):
            name = base if not ix else f"{base}[{','.join(map(str, ix))}]"
            cols[name] = leaf[(slice(None),) + ix] if per_replicate else leaf[ix]
    return cols


def _intervals(est: pd.DataFrame, center: pd.Series, ok: np.ndarray, n: int, level: float,
               method: str) -> pd.DataFrame:
    """Per column of ``est`` (one row per replicate), the bootstrap interval
    of its finite values in the rows ``ok`` (:meth:`BootstrapResult.confint`)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in ("percentile", "shortest", "basic"):
        raise ValueError(f"method must be 'percentile', 'shortest' or 'basic', got {method!r}")
    est = est[ok]
    if len(est) == 0:
        raise ValueError(f"no usable replicates: all {n} failed or did not converge")
    alpha = (1.0 - level) / 2.0
    rows = {}
    for name in est.columns:
        v = est[name].to_numpy()
        v = np.sort(v[np.isfinite(v)])
        if v.size == 0:
            rows[name] = (np.nan, np.nan)
        elif method == "percentile":
            rows[name] = tuple(np.quantile(v, [alpha, 1.0 - alpha]))
        elif method == "basic":
            lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
            rows[name] = (2.0 * center[name] - hi, 2.0 * center[name] - lo)
        else:
            rows[name] = _shortest(v, level)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["lower", "upper"])


def _shortest(v_sorted: np.ndarray, level: float) -> tuple[float, float]:
    """Shortest interval [v_i, v_{i+w}] holding ceil(level * n) sorted values."""
    n = v_sorted.size
    w = max(int(math.ceil(level * n)) - 1, 0)
    widths = v_sorted[w:] - v_sorted[:n - w]
    i = int(np.argmin(widths))
    return float(v_sorted[i]), float(v_sorted[i + w])

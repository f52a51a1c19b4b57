"""Responses simulated from a linear mixed model, in pure JAX.

For parameters (beta, theta, sigma) a replicate is (lme4 ``simulate``,
MixedModels.jl ``simulate!``)

    y* = X beta + sum_t Z_t b_t + sigma e,   b_t = sigma Lambda_t u_t,
    u_t ~ N(0, I) of shape (m_t, k_t),        e ~ N(0, I_n),

so that ``b_t`` has the per-level covariance ``sigma^2 Lambda_t Lambda_t'``.
A model with prior weights and an offset (:mod:`lmm_jax.build.working`) draws
``y* = X beta + o + (sum_t Z_t b_t + sigma e) / sqrt(w)``: residual variances
``sigma^2 / w_i``. The compiled draws are of the working model's random part
(:func:`simulate_one`), which is what a bootstrap refits.

Reproducibility: replicate ``i`` draws from ``jax.random.fold_in(key, i)``
only, so replicate i is the same whatever the number of replicates, the
chunking or the device layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..runtime.kernel import kernel, serializable
from ..runtime.scope import entry_point
from ..core.types import DesignArrays, Structure, row_options
from ..build.working import user_response
from ..core.parametrization import lambdas
from ..errors import DataError, check_bool, check_count
from .params import named_params

if TYPE_CHECKING:
    from ..model import LMM
    from ..results import LMMResult


@serializable
class Params(NamedTuple):
    """Model parameters on the scale the simulation uses.

    Attributes:
        beta: (p,) fixed effects.
        theta: lme4's relative covariance parameters.
        sigma: residual standard deviation (scalar array).
    """

    beta: jnp.ndarray
    theta: jnp.ndarray
    sigma: jnp.ndarray


def as_key(key: Any) -> jax.Array:
    """A JAX PRNG key from an int seed or a key (raw uint32 or typed)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    dtype = getattr(key, "dtype", None)
    if isinstance(key, (jax.Array, np.ndarray)) and (jnp.issubdtype(dtype, jax.dtypes.prng_key) or dtype == np.uint32):
        return jnp.asarray(key)
    raise TypeError(f"key must be an int seed or a jax.random key (jax.random.PRNGKey(0) or jax.random.key(0)), "
                    f"got {key!r} of type {type(key).__name__}")


def replicate_keys(key: jax.Array, start: int | jnp.ndarray, size: int) -> jax.Array:
    """Keys of replicates ``start, ..., start + size - 1``: ``fold_in(key, i)``."""
    idx = jnp.asarray(start, dtype=jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def resolve_params(model_or_result: "LMM | LMMResult", params: dict | None) -> tuple["LMM", Params]:
    """The model and the parameters to simulate at: ``params`` (by name or
    theta, :mod:`lmm_jax.batched.params`), else the fit's."""
    if hasattr(model_or_result, "model") and hasattr(model_or_result, "theta"):
        model, fitted = model_or_result.model, model_or_result
    elif hasattr(model_or_result, "design") and hasattr(model_or_result, "structure"):
        model, fitted = model_or_result, None
    else:
        raise TypeError(f"expected an LMM, an LMMResult or a (formula, data) pair, got "
                        f"{type(model_or_result).__name__}")
    if params is None:
        if fitted is None:
            names = ", ".join(f"{n!r}: ..." for n in model.design.theta_layout.names)
            raise ValueError("an unfitted LMM has no parameters: pass params={'beta': ..., " + names
                             + ", 'sigma': ...} (or 'theta' in lme4's layout instead of the SDs and correlations), "
                             "or simulate from a fitted result")
        # float64 arrays, not weakly typed: given params have the same types and reuse the compiled code
        # (numpy: the kernels take it, and jnp.asarray would compile a conversion per array)
        return model, Params(*(np.asarray(v, dtype=np.float64) for v in (fitted.beta, fitted.theta, fitted.sigma)))
    beta, theta, sigma = named_params(params, model.design)
    return model, Params(*(np.asarray(v, dtype=np.float64) for v in (beta, theta, sigma)))


def simulate_one(key: jax.Array, params: Params, arrays: DesignArrays, s: Structure) -> jnp.ndarray:
    """One working response (n,) drawn at ``params`` (module docstring), on
    the working design ``arrays`` (:func:`lmm_jax.build.crossprod.design_arrays`):
    ``params.beta`` in the working basis (zero for the random part alone)."""
    keys = jax.random.split(key, len(s.ks) + 1)
    lams = lambdas(params.theta, s.ks)
    y = arrays.X @ params.beta
    for kt, lam, codes, Z, m, k in zip(keys[:-1], lams, arrays.codes, arrays.Z, s.ms, s.ks):
        u = jax.random.normal(kt, (m, k), dtype=y.dtype)
        b = params.sigma * (u @ lam.T)                     # rows b_j = sigma Lambda_t u_j
        y = y + jnp.sum(Z * b[codes], axis=1)
    return y + params.sigma * jax.random.normal(keys[-1], y.shape, dtype=y.dtype)


def simulate_batch(keys: jax.Array, params: Params, arrays: DesignArrays, s: Structure) -> jnp.ndarray:
    """Responses for a batch of replicate keys, as an (n, B) array."""
    return jax.vmap(lambda k: simulate_one(k, params, arrays, s), out_axes=1)(keys)


@kernel(static_argnames=("s", "size"), cpu_options=row_options)
def draw_responses(key: jax.Array, start: jnp.ndarray, params: Params, mean: jnp.ndarray, sqrt_w: jnp.ndarray | None,
                   arrays: DesignArrays, s: Structure, size: int) -> jnp.ndarray:
    """Replicates ``start, ..., start + size - 1`` (n, size) on the user's scale, one compiled
    function: the working model's random part (:func:`simulate_batch`, any beta) taken back to the
    user's scale around ``mean`` (:func:`~lmm_jax.build.working.user_response`; ``sqrt_w`` None: no
    prior weights)."""
    E = simulate_batch(replicate_keys(key, start, size), params._replace(beta=jnp.zeros_like(params.beta)), arrays, s)
    return user_response(E, mean, sqrt_w)


@entry_point
def simulate(model_or_result: "LMM | LMMResult", n: int, key: Any, params: dict | None = None, *,
             use_u: bool = False, chunk_size: int | None = None) -> jnp.ndarray | Iterator[jnp.ndarray]:
    """Draw ``n`` responses from the model (lme4 ``simulate``) on its own rows.

    The public :func:`lmm_jax.simulate` (:mod:`lmm_jax.planning`) adds planned
    designs and new data.

    Args:
        model_or_result: a fitted :class:`~lmm_jax.results.LMMResult` (simulate
            at its estimates) or an :class:`~lmm_jax.model.LMM` with ``params``.
        n: number of replicates.
        key: an int seed or a ``jax.random`` key. Replicate ``i`` uses
            ``jax.random.fold_in(key, i)``, so it does not depend on ``n`` or
            ``chunk_size``.
        params: parameters overriding the fitted values, by lme4's names
            (``{"beta": ..., "sd_(Intercept)|Subject": ..., "sigma": ...}``) or
            with ``theta`` (:mod:`lmm_jax.batched.params`).
        use_u: condition on the fit's random effects (lme4's ``use.u = TRUE``):
            ``y* = fitted + sigma e / sqrt(w)``; default False draws new ones.
        chunk_size: if given, return a generator of (n_obs, <= chunk_size)
            arrays instead of one (n_obs, n) array (memory-bounded).

    Returns:
        An (n_obs, n) float64 array of responses, rows in the order of the
        model's rows, or a generator of column chunks of it.

    Example:
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> Y = lmm_jax.simulate(fit, 1000, key=1)          # (180, 1000)
    """
    n = check_count(n, "n")
    chunk = None if chunk_size is None else check_count(chunk_size, "chunk_size")
    use_u = check_bool(use_u, "use_u")
    model, p = resolve_params(model_or_result, params)
    mean = None
    if use_u:
        if model is model_or_result:
            raise DataError("use_u=True conditions on a fit's random effects: simulate from the fitted result")
        if params is not None:
            raise DataError("use_u=True simulates around the fit's own fitted values; params cannot be given with it")
        mean = np.asarray(model_or_result.fitted, dtype=np.float64)
        p = p._replace(theta=np.zeros_like(p.theta))           # no new random effects: the residuals only
    key = as_key(key)
    if chunk is None:
        return _draw(model, p, key, 0, n, mean)
    return _simulate_chunks(model, p, key, n, chunk, mean)


@entry_point
def simulate_replicates(model_or_result: "LMM | LMMResult", key: Any, start: int, size: int,
                        params: dict | None = None) -> jnp.ndarray:
    """Replicates ``start, ..., start + size - 1`` of :func:`simulate`: the
    columns ``start:start + size`` of ``simulate(model_or_result, n, key,
    params)`` for any ``n >= start + size`` (each from its own key), drawn
    without the others (a process's share of a split run,
    :mod:`lmm_jax.batched.distributed`)."""
    model, p = resolve_params(model_or_result, params)
    return _draw(model, p, as_key(key), int(start), check_count(size, "size"))


def _draw(model: "LMM", p: Params, key: jax.Array, start: int, size: int, mean: np.ndarray | None = None) -> jnp.ndarray:
    """Replicates ``start, ..., start + size - 1`` on the user's scale (:func:`draw_responses`):
    the working model's random part (one compiled function for any beta) around the mean
    (``X beta + o`` unless given)."""
    d = model.design
    if mean is None:
        mean = d.X @ np.asarray(p.beta, dtype=np.float64)
        if d.offset is not None:
            mean = mean + d.offset
    return draw_responses(key, np.uint32(start), p, np.asarray(mean, dtype=np.float64), d.working.sqrt_w,
                          model.arrays, model.structure, size)


@entry_point
def _simulate_chunks(model: "LMM", p: Params, key: jax.Array, n: int, chunk: int,
                     mean: jnp.ndarray | None) -> Iterator[jnp.ndarray]:
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        # always draw full chunks (one compilation), trim the last
        yield _draw(model, p, key, start, chunk, mean)[:, :size]

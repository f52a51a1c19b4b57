"""Responses simulated from a fitted GLMM, in pure JAX (lme4's ``simulate`` of a glmer fit).

A replicate draws new spherical random effects ``u ~ N(0, I_q)``, so that
``b = Lambda u`` has the per-level covariance ``Lambda_t Lambda_t'``, forms
the linear predictor ``eta = offset + X beta + Z b`` and draws the response
from the family at ``mu = linkinv(eta)``
(:func:`lmm_jax.core.family.simulate`): binomial proportions
``Binomial(w, mu) / w`` with the prior weights ``w`` as the numbers of
trials (the model's own response scale), poisson counts ``Poisson(mu)``.
``use_u=True`` keeps the fit's conditional modes (lme4's ``use.u = TRUE``):
``eta`` is the fit's and only the family's draw is new.

Reproducibility: replicate ``i`` draws from ``jax.random.fold_in(key, i)``
only (as :mod:`lmm_jax.batched.simulate`), whatever the number of replicates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ..batched.simulate import as_key, replicate_keys
from ..core.family import Family, simulate as draw_family
from ..core.laplace import GLMMData, linear_predictor, n_random
from ..core.types import Structure
from ..errors import check_bool, check_count
from ..runtime.kernel import kernel
from ..runtime.scope import entry_point

if TYPE_CHECKING:
    from .results import GLMMResult


def simulate_one(key: jax.Array, theta: jnp.ndarray, beta_w: jnp.ndarray, eta_fit: jnp.ndarray | None,
                 data: GLMMData, fam: Family, s: Structure) -> jnp.ndarray:
    """One response (n,) at ``(theta, beta_w)`` (``beta_w`` in the fit's basis
    of ``data.X``): new random effects, or the linear predictor ``eta_fit``
    when given (conditional on the modes)."""
    k_u, k_y = jax.random.split(key)
    if eta_fit is None:
        u = jax.random.normal(k_u, (n_random(s),), dtype=beta_w.dtype)
        eta = linear_predictor(u, theta, beta_w, data, s)
    else:
        eta = eta_fit
    return draw_family(fam, k_y, eta, data.weights)


def simulate_batch(keys: jax.Array, theta: jnp.ndarray, beta_w: jnp.ndarray, eta_fit: jnp.ndarray | None,
                   data: GLMMData, fam: Family, s: Structure) -> jnp.ndarray:
    """Responses for a batch of replicate keys, as a (B, n) array (replicates first)."""
    return jax.vmap(lambda k: simulate_one(k, theta, beta_w, eta_fit, data, fam, s))(keys)


@kernel(static_argnames=("fam", "s"))
def simulate_kernel(keys: jax.Array, theta: jnp.ndarray, beta_w: jnp.ndarray, eta_fit: jnp.ndarray | None,
                    data: GLMMData, fam: Family, s: Structure) -> jnp.ndarray:
    """:func:`simulate_batch` compiled, transposed to (n, B)."""
    return simulate_batch(keys, theta, beta_w, eta_fit, data, fam, s).T


def fit_basis_beta(result: "GLMMResult") -> np.ndarray:
    """The fit's fixed effects in the basis of ``model.data.X``: ``S^{-1} beta``."""
    basis = result.model.basis
    return np.asarray(np.linalg.solve(basis, result.beta) if basis.size else np.zeros(0), dtype=np.float64)


@entry_point
def simulate(result: "GLMMResult", n: int, key: Any, *, use_u: bool = False) -> jnp.ndarray:
    """Draw ``n`` responses from a fitted GLMM on its own rows (lme4's ``simulate``).

    Args:
        result: a :class:`~lmm_jax.glmm.results.GLMMResult`.
        n: number of replicates.
        key: an int seed or a ``jax.random`` key; replicate ``i`` uses
            ``jax.random.fold_in(key, i)``.
        use_u: condition on the fit's conditional modes (lme4's ``use.u = TRUE``);
            default False draws new random effects.

    Returns:
        An (n_obs, n) float64 array in the model's row order: binomial
        proportions (successes / trials, the trials being the prior weights)
        or poisson counts, ready for :meth:`GLMM.fit_batch`.
    """
    n = check_count(n, "n")
    use_u = check_bool(use_u, "use_u")
    m = result.model
    eta = jnp.asarray(result.eta) if use_u else None
    keys = replicate_keys(as_key(key), 0, n)
    return simulate_kernel(keys, jnp.asarray(result.theta, dtype=jnp.float64), fit_basis_beta(result), eta, m.data,
                           m.family, m.structure)

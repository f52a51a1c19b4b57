"""Power of a fixed effect's Wald z test in a planned GLMM, by batched simulation (simr's ``powerSim``
for ``glmer``).

A planned design is a formula and the rows of the covariates and grouping
factors; the response column may be absent (it is simulated). At the given
parameters (``beta`` by name or as an array; ``theta`` in lme4's layout, or
the SDs and correlations by lme4's names, ``sd_(Intercept)|g``, on the link
scale), ``n`` responses are drawn (:mod:`lmm_jax.glmm.simulate`: binomial
outcomes with the prior weights as trials, poisson counts), fitted in one
vmapped call (:mod:`lmm_jax.glmm.batch`, each fit started at the given
theta) and each fit's z test of ``beta_term = 0`` is counted.
:func:`lmm_jax.power` and :func:`lmm_jax.power_curve` call this for
``family=``.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from ..batched.params import fixed_effects_vector, theta_from_sd_cor
from ..batched.simulate import as_key, replicate_keys
from ..build.design import as_frame
from ..errors import DataError, InferenceError, check_count
from ..runtime.kernel import traced_sets
from ..runtime.scope import entry_point
from .batch import fit_batch, prepare_fits, rows_per_call
from .model import GLMM, _check_agq
from .simulate import simulate_kernel


def planned_model(formula: str, data: Any, family: str = "binomial", link: str | None = None,
                  weights: Any = None) -> GLMM:
    """The GLMM of a planned design: a response column named by the formula's
    left side that is missing from ``data`` is added as alternating 0 and 1
    (a placeholder that passes the design's checks: the responses fitted are
    simulated)."""
    df = as_frame(data)
    lhs = formula.split("~", 1)[0].strip().strip("`")
    if lhs.isidentifier() and lhs not in df.columns:
        df = df.assign(**{lhs: np.arange(len(df)) % 2.0})
    return GLMM(formula, df, family, link, weights=weights)


def glmm_params(params: Mapping[str, Any], model: GLMM) -> tuple[np.ndarray, np.ndarray]:
    """(theta, beta) from ``params``: ``beta`` (by name or an array in the
    model's column order) and ``theta`` or the SDs/correlations by lme4's names.

    Raises:
        ValueError: missing or unknown entries.
    """
    lay = model.design.theta_layout
    allowed = {"beta", "theta", *lay.names}
    unknown = sorted(set(params) - allowed)
    if unknown or "beta" not in params:
        raise ValueError(f"params of a GLMM need 'beta' ({list(model.design.fixef_names)}) and 'theta' or the SDs "
                         f"{list(lay.names)} on the link scale; got unknown {unknown}" if unknown else
                         f"params of a GLMM need 'beta' ({list(model.design.fixef_names)}) and 'theta' or the SDs "
                         f"{list(lay.names)} on the link scale")
    beta = fixed_effects_vector(params["beta"], tuple(model.design.fixef_names))
    if "theta" in params:
        theta = np.asarray(params["theta"], dtype=float)
        if theta.shape != (lay.n_theta,):
            raise ValueError(f"params['theta'] must have {lay.n_theta} entries (lme4's layout), got {theta.shape}")
    else:
        theta = theta_from_sd_cor({k: v for k, v in params.items() if k in lay.names}, lay, 1.0)
    return theta, beta


@entry_point
def simulate_at(model: GLMM, theta: np.ndarray, beta: np.ndarray, n: int, key: Any) -> jnp.ndarray:
    """(n_obs, n) responses of ``model``'s design at (theta, beta) (user's columns)."""
    beta_w = np.linalg.solve(model.basis, beta) if model.structure.p else np.zeros(0)
    keys = replicate_keys(as_key(key), 0, check_count(n, "n"))
    return simulate_kernel(keys, jnp.asarray(theta, dtype=jnp.float64), jnp.asarray(beta_w, dtype=jnp.float64),
                           None, model.data, model.family, model.structure)


@entry_point
def z_test_power(model: GLMM, params: Mapping[str, Any], term: str, n: int = 200, key: Any = 0,
                 nAGQ: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Simulate ``n`` responses at ``params``, fit them in one batch and z-test ``term``.

    Returns:
        ``(p_values, z, n_failed)``: (n,) each replicate's two-sided Wald p-value
        and z (NaN for failed fits, which count as not rejected), and the failures.

    Raises:
        InferenceError: ``term`` is not a fixed effect of the model.
    """
    names = list(model.design.fixef_names)
    if term not in names:
        raise InferenceError(f"a GLMM power simulation z-tests a fixed effect: {term!r} is not one of {names} "
                             "(likelihood-ratio tests of GLMMs are not available here)")
    theta, beta = glmm_params(params, model)
    n_agq = _check_agq(nAGQ, model.structure, model.design)
    traced = threading.Event()
    prepare_fits(rows_per_call(), model.data, model.family, model.structure, n_agq, after=traced)
    with traced_sets(traced):                         # the fits compile beside the simulation
        Y = simulate_at(model, theta, beta, n, key)
    fits = fit_batch(model, Y, n_agq, start=theta)
    j = names.index(term)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = fits.beta[:, j] / fits.std_errors[:, j]
    z = np.where(fits.ok, z, np.nan)
    return 2.0 * ndtr(-np.abs(z)), z, int(np.sum(~fits.ok))


def check_planned(model: Any) -> None:
    """A GLMM power run takes a planned design ``(formula, data)``."""
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], str)):
        raise DataError("a GLMM power simulation (family=...) takes a planned design (formula, data) and params; "
                        f"got {type(model).__name__}")


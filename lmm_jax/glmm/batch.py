"""Many GLMM fits of one design in compiled, vmapped calls: ``GLMM.fit_batch(Y)``.

Every column of Y (responses on the model's rows) is fitted by the joint
Newton fit over (theta, beta) (:func:`lmm_jax.core.glmm_fit.fit`) under
``jax.vmap``, ``ROWS`` responses per call of one compiled function
(:func:`fit_rows_kernel`), whose while loops run until the slowest member
of the call is done. So that the few fits that need many iterations (those
heading for the boundary) do not hold up the rest, a first pass allows each
fit ``FIRST_ITER`` iterations, and the fits not converged by then continue
from where they stopped, gathered ``ROWS`` at a time (:func:`fit_in_passes`).
The iteration limit is an argument of the compiled function, not part of
it: both passes, every batch of a model, its bootstrap and its power
simulations run one executable. Each fit starts from lme4's theta and
its own GLM fit, as :meth:`GLMM.fit` does (:func:`glm_starts`), or from a
given fit's estimates (``start=result``, a warm start for responses
simulated from it).

Responses that cannot be fitted get NaN estimates, ``converged=False`` and a
reason in ``failure``: non-finite values, values the family does not allow
(:func:`lmm_jax.glmm.model.check_response`'s rules), and responses whose
likelihood has no finite optimum: binomial columns with no successes or no
failures, poisson columns of zero counts.

The standard errors of :meth:`GLMMBatchResult.coef_table` are each fit's
Wald SEs from its exact Hessian in (theta, beta), as :attr:`GLMMResult.vcov`
(:func:`lmm_jax.glmm.results.parameter_derivatives` per fit, on the host).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from ..batched.batch import FitFlags, is_singular_rows, sd_cor
from ..core.family import Family
from ..core.glmm_fit import fit as fit_one
from ..core.laplace import GLMMData, glm_fit
from ..core.parametrization import diagonal_mask, phi_from_theta, theta_start
from ..core.theta_layout import ThetaLayout
from ..core.types import Structure
from ..errors import InferenceError, check_count
from ..runtime import kernel as kernel_module
from ..runtime.kernel import kernel, traced_sets
from ..runtime.scope import entry_point

if TYPE_CHECKING:
    from .model import GLMM

INTEGER_TOL = 1e-3               # as lmm_jax.glmm.model.INTEGER_TOL: successes or counts off a whole number
WARM_THETA_MIN = 0.1             # a warm start's diagonal theta entries are at least this (0 would fix them at 0)
NONFINITE_ESTIMATES = "non-finite estimates or deviance"
OPT_FIELDS = ("theta", "phi", "active", "objective", "gradient", "hessian", "converged", "iterations",
              "gradient_norm", "decrement")
FIRST_ITER = 5          # Newton iterations of a batch's first pass (cbpp's bootstrap: 90% of the fits; the rest continue)
# Responses per compiled call of the fits on the CPU (both passes; :func:`rows_per_call`). One size for every
# call keeps one executable per model; 1,000 cbpp bootstrap refits (2 CPU cores) run in about the same time in
# calls of 16 as of 64, and the stragglers' calls, where most members have converged, waste least when small.
ROWS = 16
ROWS_ACCELERATOR = 64   # the same on a GPU or TPU, whose vector units a wider call fills


# -- responses that cannot be fitted ------------------------------------------------------------
def response_checks(Y: jnp.ndarray, w: jnp.ndarray, fam: Family) -> dict:
    """Per response (rows of ``Y``, (B, n)): non-finite values, values the
    family does not allow, and the totals whose zero means no finite optimum
    (binomial: successes ``sum w y`` and failures ``sum w (1 - y)``; poisson:
    the counts' sum, with ``failures`` set to 1). Plain JAX, vmappable."""
    finite = jnp.isfinite(Y)
    Yf = jnp.where(finite, Y, 0.0)
    if fam.name == "binomial":
        k = w * Yf
        bad = (Yf < 0) | (Yf > 1) | (jnp.abs(k - jnp.round(k)) > INTEGER_TOL)
        successes, failures = jnp.sum(k, axis=-1), jnp.sum(w * (1.0 - Yf), axis=-1)
    else:
        bad = (Yf < 0) | (jnp.abs(Yf - jnp.round(Yf)) > INTEGER_TOL)
        successes, failures = jnp.sum(Yf, axis=-1), jnp.ones(Y.shape[:-1], Y.dtype)
    return dict(n_nonfinite=jnp.sum(~finite, axis=-1), n_invalid=jnp.sum(bad & finite, axis=-1),
                successes=successes, failures=failures)


def failure_reasons(checks: dict, fam: Family) -> np.ndarray:
    """(B,) object array: why each response cannot be fitted, "" where it can."""
    c = {k: np.atleast_1d(np.asarray(v)) for k, v in checks.items()}
    reasons = np.full(c["successes"].shape, "", dtype=object)
    for j in range(reasons.size):
        if c["n_nonfinite"][j]:
            reasons[j] = (f"the response has {int(c['n_nonfinite'][j])} infinite or NaN value(s); a batch fits every "
                          "column on the model's rows: drop those rows from the model, or fit the column alone")
        elif c["n_invalid"][j]:
            reasons[j] = (f"the response has {int(c['n_invalid'][j])} value(s) the {fam.name} family does not allow "
                          + ("(proportions in [0, 1] whose successes y * weights are whole numbers)"
                             if fam.name == "binomial" else "(counts: whole numbers >= 0)"))
        elif fam.name == "binomial" and c["successes"][j] <= 0.5:
            reasons[j] = ("every binomial outcome is 0 (no successes): the fixed effects have no finite maximum "
                          "likelihood estimate")
        elif fam.name == "binomial" and c["failures"][j] <= 0.5:
            reasons[j] = ("every binomial outcome is 1 (no failures): the fixed effects have no finite maximum "
                          "likelihood estimate")
        elif fam.name == "poisson" and c["successes"][j] <= 0.5:
            reasons[j] = "every count is 0: the fixed effects have no finite maximum likelihood estimate"
    return reasons


# -- the compiled fits --------------------------------------------------------------------------
def rows_per_call(backend: str | None = None) -> int:
    """Responses per compiled call of the fits on ``backend`` (default JAX's):
    :data:`ROWS` on the CPU, :data:`ROWS_ACCELERATOR` elsewhere."""
    return ROWS if (backend or jax.default_backend()) == "cpu" else ROWS_ACCELERATOR


def fit_rows(Y: jnp.ndarray, phi0: jnp.ndarray, active0: jnp.ndarray, beta0: jnp.ndarray, iterations: jnp.ndarray,
             data: GLMMData, fam: Family, s: Structure, n_agq: int) -> dict:
    """Fit every row of ``Y`` (B, n) from its own start (rows of ``phi0``,
    ``active0`` and ``beta0``, the fixed effects in the fit's basis) with at
    most ``iterations`` Newton iterations (a scalar, traced: not a
    compile-time constant) and check it (vmapped
    :func:`lmm_jax.core.glmm_fit.fit`); a dict of (B, ...) arrays: the
    optimiser's ``OPT_FIELDS`` (``theta`` is theta then beta in the fit's
    basis) and :func:`response_checks`."""
    def one(y, phi, active, beta):
        # the estimates fit_one adds at the optimum are unused outputs, which XLA drops
        opt, _ = fit_one(data._replace(y=y), phi, active, fam, s, n_agq, iterations, beta)
        return {f: getattr(opt, f) for f in OPT_FIELDS}

    out = jax.vmap(one)(Y, phi0, active0, beta0)
    out.update(response_checks(Y, data.weights, fam))
    return out


@kernel(static_argnames=("fam", "s", "n_agq"))
def fit_rows_kernel(Y: jnp.ndarray, phi0: jnp.ndarray, active0: jnp.ndarray, beta0: jnp.ndarray,
                    iterations: jnp.ndarray, data: GLMMData, fam: Family, s: Structure, n_agq: int) -> dict:
    """:func:`fit_rows` compiled: one executable per model and number of rows."""
    return fit_rows(Y, phi0, active0, beta0, iterations, data, fam, s, n_agq)


@kernel(static_argnames=("fam",))
def glm_starts(Y: jnp.ndarray, data: GLMMData, fam: Family) -> jnp.ndarray:
    """(B, p): each row of ``Y``'s GLM fit without random effects
    (:func:`lmm_jax.core.laplace.glm_fit`), the fixed effects' start of a
    fit from scratch, in the fit's basis."""
    return jax.vmap(lambda y: glm_fit(data._replace(y=y), fam))(Y)


def prepare_fits(rows: int, data: GLMMData, fam: Family, s: Structure, n_agq: int,
                 after: threading.Event) -> None:
    """Compile :func:`fit_rows_kernel` for ``rows`` responses on a background
    thread, traced once ``after`` is set (by
    :func:`~lmm_jax.runtime.kernel.traced_sets` around the kernel the caller
    needs first: the simulated responses, the GLM starts), so that it traces
    while that kernel compiles and compiles beside it. Nothing on one core."""
    if not kernel_module.SPARE_CORES:
        return
    nt, f64, shape = ThetaLayout.of(s.ks).n_theta, np.float64, jax.ShapeDtypeStruct
    fit_rows_kernel.prepare(shape((rows, data.y.shape[0]), f64), shape((rows, nt), f64), shape((rows, nt), np.bool_),
                            shape((rows, s.p), f64), shape((), np.int32), data, fam, s, n_agq, after=after)


def _blocks(n: int, rows: int):
    """(start, row indices padded to ``rows`` by repeating the first) of each call over ``n`` rows."""
    for start in range(0, n, rows):
        idx = np.arange(start, min(start + rows, n))
        yield start, np.concatenate([idx, np.full(rows - idx.size, idx[0])])


def first_pass(Y: np.ndarray, phi0: np.ndarray, active0: np.ndarray, beta0: np.ndarray, data: GLMMData,
               fam: Family, s: Structure, n_agq: int, max_iter: int) -> dict:
    """:func:`fit_rows_kernel` on the B responses of ``Y`` (B, n) with at
    most ``min(FIRST_ITER, max_iter)`` iterations, from one start for all
    (``phi0``, ``active0``, and ``beta0`` (p,)) or one per row (``beta0``
    (B, p)); NumPy arrays."""
    B = Y.shape[0]
    phi0, active0 = np.broadcast_to(phi0, (B,) + phi0.shape[-1:]), np.broadcast_to(active0, (B,) + active0.shape[-1:])
    beta0 = np.broadcast_to(beta0, (B,) + beta0.shape[-1:])
    iterations = np.int32(min(FIRST_ITER, max_iter))
    return {k: np.asarray(v) for k, v in
            fit_rows_kernel(Y, phi0, active0, beta0, iterations, data, fam, s, n_agq).items()}


def stragglers(out: dict) -> np.ndarray:
    """Rows of ``out`` (:func:`fit_rows`' arrays) whose fit has not converged
    but can continue: a response that can be fitted, a finite point."""
    return np.flatnonzero(~out["converged"] & (out["n_nonfinite"] == 0) & (out["n_invalid"] == 0)
                          & np.all(np.isfinite(out["phi"]), axis=1))


def fit_in_passes(Y: np.ndarray, out: dict, todo: np.ndarray, data: GLMMData, fam: Family, s: Structure,
                  n_agq: int, max_iter: int, rows: int) -> dict:
    """Continue the fits ``todo`` (:func:`stragglers`) of ``out`` (a first
    pass: at most ``FIRST_ITER`` iterations) from where they stopped, ``rows``
    per call, up to ``max_iter`` iterations in all; ``Y`` (len(todo), n) holds
    their responses. A vmapped while loop runs until its slowest member is
    done, so the few fits that need many iterations are gathered here
    instead of holding up every call of the first pass. Updates and returns
    ``out`` (NumPy arrays)."""
    if max_iter <= FIRST_ITER or not todo.size:
        return out
    nt = ThetaLayout.of(s.ks).n_theta
    iterations = np.int32(max_iter - FIRST_ITER)
    for start, pad in _blocks(todo.size, rows):
        r = todo[pad]
        part = fit_rows_kernel(Y[pad], out["phi"][r, :nt], out["active"][r, :nt], out["theta"][r, nt:], iterations,
                               data, fam, s, n_agq)
        done = r[:min(rows, todo.size - start)]
        for f in OPT_FIELDS:
            value = np.asarray(part[f])[:done.size]
            out[f][done] = value + out[f][done] if f == "iterations" else value
    return out


def fit_responses(Y: np.ndarray, model: "GLMM", n_agq: int, start: Any, max_iter: int,
                  rows: int | None = None) -> dict:
    """Fit every row of ``Y`` (B, n) on ``model``'s design in both passes,
    ``rows`` (default :func:`rows_per_call`) per compiled call, from
    :func:`starting_point`'s start; :func:`fit_rows`' arrays for the B fits."""
    m, rows = model, rows or rows_per_call()
    phi0, active0, beta0 = starting_point(model, start)
    B = Y.shape[0]
    parts = []
    traced = threading.Event()
    if beta0 is None:                              # the fits compile beside the GLM starts
        prepare_fits(rows, m.data, m.family, m.structure, n_agq, after=traced)
    for start, pad in _blocks(B, rows):
        Yb = Y[pad]
        with traced_sets(traced):
            b0 = np.asarray(glm_starts(Yb, m.data, m.family)) if beta0 is None else beta0
        out = first_pass(Yb, phi0, active0, b0, m.data, m.family, m.structure, n_agq, max_iter)
        parts.append({k: v[:min(rows, B - start)] for k, v in out.items()})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    todo = stragglers(out)
    return fit_in_passes(Y[todo], out, todo, m.data, m.family, m.structure, n_agq, max_iter, rows)


def starting_point(model: "GLMM", start: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(phi0, active0, beta0) of a batch: lme4's theta and each response's GLM
    fit (``start`` None), a theta in lme4's layout, or a fit's (theta, beta)
    (a :class:`GLMMResult` of this model's design: a warm start, its diagonal
    theta entries raised to at least ``WARM_THETA_MIN``)."""
    ks = model.structure.ks
    beta0 = None
    if start is None:
        theta0 = theta_start(ks)
    elif hasattr(start, "theta") and hasattr(start, "beta"):
        if start.model.structure != model.structure:
            raise ValueError(f"start is a fit of another design ({start.model.structure}); this model is "
                             f"{model.structure}")
        diag = diagonal_mask(ks)
        theta0 = np.where(diag, np.maximum(np.asarray(start.theta, dtype=float), WARM_THETA_MIN), start.theta)
        beta0 = np.linalg.solve(model.basis, start.beta) if model.structure.p else np.zeros(0)
    else:
        theta0 = np.asarray(start, dtype=float)
        if theta0.shape != (model.n_theta,) or not np.isfinite(theta0).all():
            raise ValueError(f"start must be a GLMMResult or {model.n_theta} finite numbers (lme4's theta layout), "
                             f"got {np.asarray(start).tolist()}")
    phi0, active0 = phi_from_theta(theta0, ks)
    return np.asarray(phi0, dtype=np.float64), np.asarray(active0, dtype=bool), beta0


def user_estimates(out: dict, model: "GLMM") -> tuple[np.ndarray, np.ndarray]:
    """(theta, beta) per fit from the optimiser's ``theta`` (theta then beta in
    the fit's basis): beta in the user's columns, ``S beta_w``."""
    x = np.asarray(out["theta"], dtype=float)
    nt = model.n_theta
    return x[:, :nt], x[:, nt:] @ model.basis.T


def fixef_covariances(out: dict, model: "GLMM") -> np.ndarray:
    """(B, p, p): each fit's ``vcov(beta)``, the beta block of ``2 H^{-1}`` with H
    the Hessian in lme4's (theta, beta) over the entries off the boundary, as
    :attr:`GLMMResult.vcov` (its :func:`~lmm_jax.glmm.results.parameter_derivatives`
    for all fits at once); NaN where H is singular."""
    nt, p = model.n_theta, model.structure.p
    x = np.asarray(out["theta"], dtype=float)
    g = np.asarray(out["gradient"], dtype=float)
    H = np.asarray(out["hessian"], dtype=float)
    B, n = x.shape
    diag = np.concatenate([diagonal_mask(model.structure.ks), np.zeros(p, dtype=bool)])
    boundary = diag & (x == 0.0)
    interior = diag & ~boundary
    c = np.where(interior, x, 1.0)                                # theta = exp(phi) on the diagonal entries
    eye = np.eye(n)
    H = (H - eye * np.where(interior, np.where(boundary, 0.0, g), 0.0)[:, None, :]) / (c[:, :, None] * c[:, None, :])
    T = np.eye(n)
    if p:
        T[nt:, nt:] = np.linalg.inv(model.basis)                 # d beta_w / d beta
    H = T.T @ H @ T
    H = (H + H.transpose(0, 2, 1)) / 2.0
    keep = (~boundary).astype(float)
    H = H * keep[:, :, None] * keep[:, None, :] + eye * (1.0 - keep)[:, None, :]   # the free block alone
    V = np.full((B, p, p), np.nan)
    for i in range(B):
        try:
            V[i] = 2.0 * np.linalg.inv(H[i])[nt:, nt:]
        except np.linalg.LinAlgError:
            pass
    return (V + V.transpose(0, 2, 1)) / 2.0


def as_batch_result(out: dict, model: "GLMM", with_vcov: bool) -> "GLMMBatchResult":
    """A :class:`GLMMBatchResult` of :func:`fit_rows`' arrays; failed responses get NaN estimates."""
    theta, beta = user_estimates(out, model)
    failure = failure_reasons({k: out[k] for k in ("n_nonfinite", "n_invalid", "successes", "failures")},
                              model.family)
    objective = np.asarray(out["objective"], dtype=float)
    converged = np.asarray(out["converged"], dtype=bool)
    vcov = fixef_covariances(out, model) if with_vcov else None
    bad = failure != ""
    if bad.any():
        theta, beta, objective = (np.where(bad.reshape((-1,) + (1,) * (a.ndim - 1)), np.nan, a)
                                  for a in (theta, beta, objective))
        converged = converged & ~bad
        if vcov is not None:
            vcov[bad] = np.nan
    d = model.design
    return GLMMBatchResult(theta=theta, beta=beta, objective=objective, converged=converged,
                           iterations=np.asarray(out["iterations"]), ks=d.ks, component_names=d.theta_layout.names,
                           fixef_names=tuple(d.fixef_names), failure=failure, vcov=vcov)


@entry_point
def fit_batch(model: "GLMM", Y: Any, n_agq: int = 1, *, start: Any = None, max_iter: int = 200) -> "GLMMBatchResult":
    """Fit many responses on the design of ``model`` in one vmapped compiled call
    (see :meth:`GLMM.fit_batch <lmm_jax.glmm.model.GLMM.fit_batch>`, which checks ``n_agq``)."""
    max_iter = check_count(max_iter, "max_iter")
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != model.design.n:
        raise ValueError(f"Y must be (n_obs, B) = ({model.design.n}, B) for this model, got shape {Y.shape}; pass one "
                         "response per column in the model's row order")
    out = fit_responses(np.ascontiguousarray(Y.T), model, n_agq, start, max_iter)
    return as_batch_result(out, model, with_vcov=True)


@entry_point
@dataclass(frozen=True, eq=False)
class GLMMBatchResult(FitFlags):
    """Many GLMM fits of one design (arrays with a leading fit axis).

    Attributes:
        theta: (B, n_theta) lme4's theta per fit.
        beta: (B, p) fixed effects.
        objective: (B,) deviance (-2 log-likelihood of the approximation).
        converged: (B,) the Newton loop met its criterion (False for failed fits).
        iterations: (B,) Newton iterations.
        ks: columns per random-effects term.
        component_names: lme4 names of the sd/cor parameters.
        fixef_names: fixed-effects names.
        failure: (B,) why each fit failed, "" where it did not (module
            docstring; non-finite estimates are ``NONFINITE_ESTIMATES``).
        vcov: (B, p, p) each fit's covariance of the fixed effects (None for
            bootstrap replicates).
    """

    theta: np.ndarray
    beta: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    ks: tuple[int, ...]
    component_names: tuple[str, ...]
    fixef_names: tuple[str, ...]
    failure: np.ndarray
    vcov: np.ndarray | None = None

    def __post_init__(self) -> None:
        failure = np.array(self.failure, dtype=object).reshape(len(self))
        failure[(failure == "") & ~self.finite] = NONFINITE_ESTIMATES
        object.__setattr__(self, "failure", failure)

    def __repr__(self) -> str:
        return (f"<GLMMBatchResult {len(self)} fits: {self.n_failed} failed, {self.n_nonconverged} not converged, "
                f"{int(np.sum(self.singular & ~self.failed))} singular>")

    @property
    def finite(self) -> np.ndarray:
        """(B,) True where every estimate and the deviance are finite."""
        return (np.isfinite(self.objective) & np.all(np.isfinite(self.theta), axis=1)
                & np.all(np.isfinite(self.beta), axis=1))

    @property
    def singular(self) -> np.ndarray:
        """(B,) lme4's ``isSingular`` per fit."""
        return is_singular_rows(np.nan_to_num(self.theta, nan=1.0), self.ks)

    @property
    def loglik(self) -> np.ndarray:
        """(B,) ``-objective / 2`` (glmer's ``logLik``)."""
        return -self.objective / 2.0

    def estimates(self) -> pd.DataFrame:
        """(B, ...) the SDs and correlations of Lambda_t Lambda_t' (lme4's
        ``confint`` names, ``sd_(Intercept)|herd``) and the fixed effects."""
        cols = np.column_stack([sd_cor(self.theta, np.ones(len(self)), self.ks), self.beta])
        return pd.DataFrame(cols, columns=list(self.component_names) + list(self.fixef_names))

    @property
    def std_errors(self) -> np.ndarray:
        """(B, p) Wald standard errors of the fixed effects."""
        if self.vcov is None:
            raise InferenceError("these fits carry no covariance of the fixed effects (bootstrap replicates); "
                                 "refit the responses with GLMM.fit_batch for z tests")
        return np.sqrt(np.diagonal(self.vcov, axis1=1, axis2=2))

    def coef_table(self, level: float = 0.95) -> pd.DataFrame:
        """Wald z tests and intervals of the fixed effects, one row per (fit, term):
        columns ``fit, term, estimate, std_error, z, p, lower, upper, converged,
        singular``; each fit's rows equal its own ``GLMMResult.coef_table`` and
        ``confint("Wald", level)`` (NaN for a failed fit)."""
        if not 0 < level < 1:
            raise InferenceError(f"level must be in (0, 1), got {level}")
        se = self.std_errors
        B, p = self.beta.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.beta / se
        crit = ndtri(0.5 + level / 2.0)
        table = pd.DataFrame({"fit": np.repeat(np.arange(B), p),
                              "term": np.tile(np.asarray(self.fixef_names, dtype=object), B),
                              "estimate": self.beta.ravel(), "std_error": se.ravel(), "z": z.ravel(),
                              "p": (2.0 * ndtr(-np.abs(z))).ravel(), "lower": (self.beta - crit * se).ravel(),
                              "upper": (self.beta + crit * se).ravel(), "converged": np.repeat(self.converged, p),
                              "singular": np.repeat(self.singular, p)})
        table.attrs.update(level=level)
        return table

    @property
    def table(self) -> pd.DataFrame:
        """One row per fit: objective, loglik, converged, singular, iterations,
        failure, the estimates (:meth:`estimates`) and theta_1.. (lme4's theta)."""
        head = pd.DataFrame({"objective": self.objective, "loglik": self.loglik, "converged": self.converged,
                             "singular": self.singular, "iterations": self.iterations, "failure": self.failure})
        th = pd.DataFrame(self.theta, columns=[f"theta_{i + 1}" for i in range(self.theta.shape[1])])
        return pd.concat([head, self.estimates(), th], axis=1)

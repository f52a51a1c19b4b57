"""Many fits in one compiled call: many responses on one design, and many
designs grouped by shape.

Across responses on one design only the y-parts of the cross-products
(Z'y, X'y, y'y) change (DESIGN.md sec. 2). They are linear in y, so for a
batch ``Y`` (n x B) they are one matrix product ``G Y`` with the fixed sparse
pattern ``G = [Z_1 Z_r X]'`` held dense when it is small (a GEMM is far
faster on CPU than a batched scatter), else the segment sums of
:func:`~lmm_jax.build.crossprod.response_products` under ``vmap``. The optimiser is
:func:`lmm_jax.core.estimates.theta_optimum` (or BFGS) under ``jax.vmap``; under vmap its
``lax.while_loop`` runs until every replicate has stopped.

Designs whose padded products have one shape (:func:`~lmm_jax.build.crossprod.pad_products`)
share one compilation: :func:`fit_many` stacks their products and vmaps over
design and response together, one compiled call per shape bucket.
:func:`fit_batch` computes the responses' products in a kernel of their own
(it depends on the rows), then fits them in a second one, at the exact
sizes or, with ``pad_levels=True`` (power simulations), in the padded
layout, which designs of other sizes in the same buckets share.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.linalg import solve_triangular
from scipy.special import stdtr, stdtrit

from ..runtime import kernel as kernel_module
from ..runtime.kernel import kernel, traced_sets
from ..runtime.scope import entry_point
from ..core.types import (DesignArrays, DesignProducts, ResponseProducts, Structure, batch_options, one_off_options,
                          quick_batch, row_options)
from ..build.crossprod import padded_response, response_products
from ..core.likelihood import factorize, fixed_effects, profiled_deviance, sigma_hat, user_fixed_effects
from ..core.estimates import SINGULAR_TOL, coefficient_inference, theta_optimum
from ..core.optimize import bfgs_minimize, inverse_hessian_start, masked
from ..core.parametrization import diagonal_mask, n_theta, phi_from_theta, theta_from_phi, theta_start
from ..core.start import MomentEquations, moment_theta
from ..core.theta_layout import ThetaLayout
from ..errors import InferenceError, check_bool, check_count, normalize_ddf
from .distributed import exchange, mine, owners

if TYPE_CHECKING:
    from ..build.design import Design
    from ..model import LMM

DENSE_MAX_ENTRIES = 1 << 24  # use the dense map G (q1 + qr + p) x n up to 16M entries (128 MB)
# A response whose least-squares residual on X is below this fraction of its norm has no residual
# variation: its fit would report sigma ~ 0 (the residual is rounding, ~1e-16 relative for a response
# in X's column space) and is flagged as failed. Measured data are never this close to a linear model.
RESIDUAL_RTOL = 1e-10
NONFINITE_ESTIMATES = "non-finite estimates or objective"


# -- responses that cannot be fitted ------------------------------------------------------------
def response_checks(Y, E, xp=jnp) -> dict:
    """Per column of ``Y`` (n, B) with least-squares residuals ``E`` on X:
    its number of non-finite values, whether it is constant, its first
    value and ``|E| / |Y|``; ``xp`` is ``jax.numpy`` (inside a jitted fit)
    or ``numpy``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(n_nonfinite=xp.sum(~xp.isfinite(Y), axis=0), constant=xp.all(Y == Y[:1], axis=0), first=Y[0],
                    relative_residual=xp.linalg.norm(E, axis=0) / xp.linalg.norm(Y, axis=0))


def failure_reasons(checks: dict) -> np.ndarray:
    """(B,) object array: why each response cannot be fitted, "" where it can
    (the conditions under which :func:`lmm_jax.fit` raises ``DataError``, and a
    response in the column space of X, whose sigma would be 0)."""
    c = {k: np.asarray(v) for k, v in checks.items()}
    reasons = np.full(c["constant"].shape, "", dtype=object)
    for j in range(reasons.size):
        if c["n_nonfinite"][j]:
            reasons[j] = (f"the response has {int(c['n_nonfinite'][j])} infinite or NaN value(s); a batch fits "
                          "every column on the model's rows: drop those rows from the model, or fit the column alone")
        elif c["constant"][j]:
            reasons[j] = (f"the response is constant (every value is {float(c['first'][j])!r}); there is no "
                          "variation to model")
        elif not c["relative_residual"][j] > RESIDUAL_RTOL:
            reasons[j] = (f"the response is a linear combination of the fixed-effects columns (least-squares "
                          f"residual {float(c['relative_residual'][j]):.1e} of its norm, below {RESIDUAL_RTOL:g}); "
                          "there is no residual variation to model (sigma would be 0)")
    return reasons


# -- response products of a batch ---------------------------------------------------------------
def response_map(design: "Design") -> np.ndarray | None:
    """Dense ``G`` with rows ``[Z_1' (level-major); Z_r'; X']`` of the working
    design (:mod:`lmm_jax.build.working`) so that the products of a working
    response y are ``G y`` (None if G would be too large)."""
    q1 = design.terms[0].m * design.terms[0].k
    qr = sum(t.m * t.k for t in design.terms[1:])
    rows = q1 + qr + design.p
    if rows * design.n > DENSE_MAX_ENTRIES:
        return None
    G = np.zeros((rows, design.n))
    obs = np.arange(design.n)
    offset = 0
    wk = design.working
    for t, Z in zip(design.terms, wk.Z):
        for c in range(t.k):
            np.add.at(G, (offset + t.codes.astype(np.int64) * t.k + c, obs), Z[:, c])
        offset += t.m * t.k
    G[offset:] = wk.X.T
    return G


def batch_response_products(Y: jnp.ndarray, G: jnp.ndarray | None, arrays: DesignArrays,
                            s: Structure, shift: jnp.ndarray | None = None) -> ResponseProducts:
    """Products of every column of a working Y (n, B), with a leading batch
    axis B; ``shift`` (B, p): the working fixed effects taken out of each
    column (default none)."""
    if shift is None:
        shift = jnp.zeros((Y.shape[1], s.p), dtype=Y.dtype)
    if G is None:
        return jax.vmap(lambda y, b: response_products(y, arrays, s, b))(Y.T, shift)
    q1 = s.ms[0] * s.ks[0]
    P = (G @ Y).T                                                   # (B, q1 + qr + p)
    return ResponseProducts(Z1y=P[:, :q1].reshape(-1, s.ms[0], s.ks[0]), Zry=P[:, q1:q1 + s.q_rest],
                            Xy=P[:, q1 + s.q_rest:], yy=jnp.sum(Y * Y, axis=0), shift=shift)


# -- the vmapped fit ----------------------------------------------------------------------------
# Stages of a batch fit (fit_products). Under vmap a while_loop costs the whole batch an iteration
# for as long as its slowest member runs, so the batch is compacted as fits converge: every fit gets
# FIRST_PASS_ITER iterations, and the unconverged ones are continued in rounds of 1/STRAGGLER_FRACTION
# of the batch, BFGS from each fit's own inverse Hessian. Moment starts (lmm_jax.core.start) leave most
# bootstrap refits converged at the start (10,000 sleepstudy replicates: 0 BFGS iterations at the 90th
# percentile, 20 at the 99th), so BFGS's first stage only tests the starts and compiles no loop: its
# staged kernel holds one copy of the optimiser, Newton's two. A middle stage (rounds of B/8 continued
# for 12 iterations, before the stragglers' rounds from each fit's exact Hessian) makes a staged kernel's
# first call about 1.7x as long and its warm calls no faster (interleaved bootstraps, 2-core VM:
# sleepstudy's 10,000 8.9 s against 5.0 s first, 0.26 s against 0.20 s warm; a crossed 50 x 20 design's
# 1,000 13.8 s against 7.9 s, 0.34 s against 0.32 s; Pastes' 2,000 16.3 s against 8.9 s, 0.22 s against
# 0.12 s).
FIRST_PASS_ITER = {"newton": 6, "bfgs": 0}
STRAGGLER_FRACTION = 64  # fits continued per round: 1/64 of the batch (at least 8)
BFGS_TOL = 1e-11         # stopping threshold on BFGS's approximate decrement (Newton's: 1e-12)
AXIS = "fit"             # name of the vmapped fit axis (the BFGS fits' batch-wide branches use it)
METHODS = ("bfgs", "newton")
# Batches up to this size run as one vmapped loop of max_iter iterations, without the gather-and-scatter
# rounds: a small batch loses little to its slowest member, and its program is smaller (pb_modcomp's 4,000
# sleepstudy simulations, 2 cores: 8.2 s with compilation in chunks of 256, 9.7 s in chunks of 2,048; then
# 0.69 s against 0.57 s).
UNSTAGED_MAX_BATCH = 256


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be 'bfgs' (quasi-Newton, the fast default for batches) or 'newton' "
                         f"(exact Hessian every iteration, as LMM.fit), got {method!r}")
    return method


@partial(jax.jit, static_argnames=("s",))
def start_inverse_hessian(dp: DesignProducts, rp: ResponseProducts, phi0: jnp.ndarray, active0: jnp.ndarray,
                          s: Structure, reml: bool) -> jnp.ndarray:
    """A BFGS start shared by a batch: the inverse of the exact Hessian (in
    phi) of one response's objective at ``phi0``, eigenvalues floored
    (:func:`~lmm_jax.core.optimize.inverse_hessian_start`). For a bootstrap, the
    fitted response at the fitted theta: every replicate's Hessian is close."""
    def f(phi):
        return profiled_deviance(theta_from_phi(phi, s.ks, active0), dp, rp, s, reml)

    return inverse_hessian_start(masked(jax.hessian(f)(phi0), active0.astype(phi0.dtype)))


def moment_starts(eq: "MomentEquations | None", rps: ResponseProducts, s: Structure,
                  design_axis: int | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Starts (phi, active) for :func:`fit_products`: each response's MIVQUE(0)
    theta, shape (B, n_theta) (:func:`lmm_jax.core.start.moment_theta`, as
    :meth:`LMM.fit` starts), or lme4's identity, one for all, when ``eq`` is None."""
    if eq is None:
        phi, active = phi_from_theta(theta_start(s.ks), s.ks)
        return jnp.asarray(phi), jnp.asarray(active)
    theta = jax.vmap(lambda e, rp: moment_theta(e, rp, s), in_axes=(design_axis, 0))(eq, rps)
    diag = jnp.asarray(diagonal_mask(s.ks))
    phi = jnp.where(diag, jnp.log(jnp.where(diag, theta, 1.0)), theta)      # diagonal entries >= THETA_MIN > 0
    return phi, jnp.ones(theta.shape, dtype=bool)


def fit_products(dp: DesignProducts, rps: ResponseProducts, phi0: jnp.ndarray, active0: jnp.ndarray,
                 s: Structure, reml: bool, max_iter: int, design_axis: int | None = None, method: str = "bfgs",
                 hinv0: jnp.ndarray | None = None) -> dict:
    """Fit every response in ``rps`` (leading batch axis); the design
    products are shared (``design_axis=None``) or batched too (``0``).

    ``method="bfgs"`` (:func:`~lmm_jax.core.optimize.bfgs_minimize`) starts from
    ``hinv0`` (shared by the batch; None: each fit's exact Hessian at
    ``phi0``), ``"newton"`` is :func:`lmm_jax.core.estimates.theta_optimum` (exact Hessian
    every iteration, as a single fit). ``phi0`` and ``active0`` are one start
    for the batch (1-d) or one per fit (2-d, e.g. each response's moment
    start, :func:`moment_starts`).

    Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so a
    few fits that need many iterations would make the whole batch pay for
    them. A batch of more than ``UNSTAGED_MAX_BATCH`` fits therefore runs in
    two stages inside one compiled function: every fit gets
    ``FIRST_PASS_ITER`` iterations; then the unconverged ones are gathered in
    rounds of ``max(8, B // STRAGGLER_FRACTION)`` and continued for up to
    ``max_iter - FIRST_PASS_ITER`` more, and scattered back. BFGS continues
    from each fit's own inverse Hessian (Newton is memoryless given (phi,
    active)): restarting from each continued fit's exact Hessian instead
    makes the stage's program larger and, where most fits continue (a crossed
    50 x 20 design's bootstrap of 1,000), the warm call 30% longer.

    Returns a dict of per-fit arrays: theta, beta, sigma, objective,
    converged, iterations.
    """
    method = check_method(method)
    B = rps.yy.shape[0]
    first = min(max_iter, FIRST_PASS_ITER[method]) if B > UNSTAGED_MAX_BATCH else max_iter

    if method == "newton":
        def fit_from(dp1, rp1, phi_s, act_s, hinv_s, iters):
            return theta_optimum(dp1, rp1, phi_s, act_s, s, reml, iters)
    else:
        def fit_from(dp1, rp1, phi_s, act_s, hinv_s, iters):
            return bfgs_minimize(lambda th: profiled_deviance(th, dp1, rp1, s, reml), phi_s, act_s, s.ks, hinv_s,
                                 max_iter=iters, tol=BFGS_TOL, axis_name=AXIS)

    start_axis = 0 if phi0.ndim == 2 else None
    opt = jax.vmap(fit_from, in_axes=(design_axis, 0, start_axis, start_axis, None, None), axis_name=AXIS)(
        dp, rps, phi0, active0, hinv0, first)

    def continue_some(o, pending, M, iters):
        # gather up to M pending fits, continue them for ``iters`` iterations, scatter them back
        idx = jnp.argsort(jnp.where(pending, 0, 1), stable=True)[:M]
        sel = pending[idx]
        dp_sub = dp if design_axis is None else _take(dp, idx)
        # BFGS continues from each fit's own inverse Hessian (Newton's state is (phi, active))
        own = o.inverse_hessian is not None
        o2 = jax.vmap(fit_from, in_axes=(design_axis, 0, 0, 0, 0 if own else None, None), axis_name=AXIS)(
            dp_sub, _take(rps, idx), o.phi[idx], o.active[idx], o.inverse_hessian[idx] if own else None, iters)
        o2 = o2._replace(iterations=o2.iterations + o.iterations[idx])

        def merge(a, b):
            keep = sel.reshape(sel.shape + (1,) * (a.ndim - 1))
            return a.at[idx].set(jnp.where(keep, b, a[idx]))

        return jax.tree_util.tree_map(merge, o, o2), idx, sel

    def rounds(o, M, iters):
        # continue the unfinished fits, M at a time, each once for ``iters`` iterations
        def pending_of(c):
            o, tried = c
            return ~o.converged & ~tried & (o.iterations >= first)

        def body(c):
            o, tried = c
            o, idx, sel = continue_some(o, pending_of(c), M, iters)
            return o, tried.at[idx].set(tried[idx] | sel)

        o, _ = jax.lax.while_loop(lambda c: jnp.any(pending_of(c)), body, (o, jnp.zeros(B, dtype=bool)))
        return o

    rest = max_iter - first
    if rest > 0 and B > 0:
        # the fits left crawl along a flat valley near the boundary (sleepstudy: single Newton fits of the
        # same responses take 64-151 iterations)
        opt = rounds(opt, min(B, max(8, B // STRAGGLER_FRACTION)), rest)

    def estimates(dp1, rp1, theta):
        F = factorize(theta, dp1, rp1, s)
        return user_fixed_effects(fixed_effects(F), dp1, rp1), sigma_hat(F, dp1, reml)

    beta, sigma = jax.vmap(estimates, in_axes=(design_axis, 0, 0))(dp, rps, opt.theta)
    return dict(theta=opt.theta, beta=beta, sigma=sigma, objective=opt.objective, converged=opt.converged,
                iterations=opt.iterations)


def ols_residuals(Y: jnp.ndarray, X: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(Y - X B, B)`` with B the least-squares coefficients of each column.

    The fit is equivariant (responses ``y - X b`` give ``beta - b`` and the same
    theta, sigma and objective), and the residuals' products are free of the
    cancellation between ``y'y`` and its fixed-effects part that makes the
    objective's rounding grow with ``|X beta|^2`` (for Penicillin's diameters,
    about 25 +- 1, 1e-10 instead of 1e-13): BFGS's line search needs f
    accurate below its stopping tolerance."""
    Q, R = jnp.linalg.qr(X)
    C = Q.T @ Y
    return Y - Q @ C, solve_triangular(R, C, lower=False).T


def with_inference(out: dict, dp: DesignProducts, rps: ResponseProducts, s: Structure, reml: bool,
                   satterthwaite: bool, design_axis: int | None = None) -> dict:
    """``out`` of :func:`fit_products` with each fit's ``vcov`` (B, p, p)
    and, if ``satterthwaite``, its coefficients' Satterthwaite ``df`` (B, p)
    (:func:`lmm_jax.core.estimates.coefficient_inference`, vmapped)."""
    inf = jax.vmap(lambda dp1, rp1, th, sg: coefficient_inference(th, sg, dp1, rp1, s, reml, satterthwaite),
                   in_axes=(design_axis, 0, 0, 0))(dp, rps, out["theta"], out["sigma"])
    return dict(out, **inf)


@kernel(static_argnames=("s", "padded"), cpu_options=row_options)
def _batch_products(Y, G, arrays, s, padded):
    """The products of the working responses Y (n, B) in the padded layout,
    and the checks of :func:`response_checks`: the part of a batch fit that
    depends on the rows (n) and the exact levels, a small kernel of its own."""
    E, B0 = ols_residuals(Y, arrays.X)
    return padded_response(batch_response_products(E, G, arrays, s, B0), s, padded, jnp), response_checks(Y, E)


@kernel(static_argnames=("s", "max_iter", "method", "satterthwaite"), cpu_options=batch_options)
def _fit_responses(rps, dp, eq, phi0, active0, s, reml, max_iter, method, satterthwaite):
    """The fits of padded response products and their t tests: it depends on the
    padded structure only, so designs of other sizes in the same buckets (a
    power curve's sizes, a simulation study's conditions) share it, and so do
    ML and REML fits (``reml`` is an argument, not a static)."""
    # the fits and their t tests in one kernel: split in two (as fit_many's are), 1,000 sleepstudy fits
    # compile 12% sooner on two cores but run 25% longer warm (0.096 s against 0.077 s), which simulation
    # studies pay on every call
    if phi0 is None:
        phi0, active0 = moment_starts(eq, rps, s)
    out = fit_products(dp, rps, phi0, active0, s, reml, max_iter, method=method)
    return with_inference(out, dp, rps, s, reml, satterthwaite)


@kernel(static_argnames=("s", "max_iter", "method", "quick_code"), cpu_options=one_off_options)
def _fit_stacked(dps, rps, eqs, s, reml, max_iter, method, quick_code):
    phi0, active0 = moment_starts(eqs, rps, s, design_axis=0)
    return fit_products(dps, rps, phi0, active0, s, reml, max_iter, design_axis=0, method=method)


@kernel(static_argnames=("s", "satterthwaite", "quick_code"), cpu_options=one_off_options)
def _stacked_inference(theta, sigma, dps, rps, s, reml, satterthwaite, quick_code):
    """:func:`with_inference`'s vcov and df of :func:`_fit_stacked`'s fits: a
    kernel of its own, which compiles on a second thread beside the fits'."""
    return with_inference(dict(theta=theta, sigma=sigma), dps, rps, s, reml, satterthwaite, design_axis=0)


# -- tables -------------------------------------------------------------------------------------
def sd_cor(theta: np.ndarray, sigma: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """Per fit, the SDs and correlations of sigma^2 Lambda_t Lambda_t' in
    theta's order (correlations NaN where an SD is 0).

    Args:
        theta: (B, n_theta); sigma: (B,).
    """
    theta = np.asarray(theta, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    lay = ThetaLayout.of(ks)
    cols = []
    for t, k in enumerate(ks):
        r, c = lay.tri(t)
        L = np.zeros((theta.shape[0], k, k))
        L[:, r, c] = theta[:, lay.slices[t]]
        S = sigma[:, None, None] ** 2 * (L @ L.transpose(0, 2, 1))
        sd = np.sqrt(np.diagonal(S, axis1=1, axis2=2))
        for i, j in zip(r, c):
            if i == j:
                cols.append(sd[:, i])
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    cols.append(np.where(sd[:, i] * sd[:, j] > 0, S[:, i, j] / (sd[:, i] * sd[:, j]), np.nan))
    return np.stack(cols, axis=1) if cols else np.zeros((theta.shape[0], 0))


def is_singular_rows(theta: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """lme4's ``isSingular`` per row of theta."""
    return np.any(np.abs(np.asarray(theta)[:, diagonal_mask(ks)]) < SINGULAR_TOL, axis=1)


@entry_point
class FitFlags:
    """What a batch of fits says about each fit, from its ``theta`` (B, n_theta),
    ``converged`` (B,) and ``failure`` (B,) reasons (shared by
    :class:`BatchResult` and the GLMMs' batch result)."""

    def __len__(self) -> int:
        return self.theta.shape[0]

    @property
    def failed(self) -> np.ndarray:
        """(B,) True where the fit failed (:attr:`failure` says why)."""
        return self.failure != ""

    @property
    def ok(self) -> np.ndarray:
        """(B,) converged and not failed: the fits that enter summaries."""
        return self.converged & ~self.failed

    @property
    def n_failed(self) -> int:
        """Fits that failed: responses that cannot be fitted, or non-finite
        estimates or objective (:attr:`failure`)."""
        return int(np.sum(self.failed))

    @property
    def n_nonconverged(self) -> int:
        """Fits that did not fail but whose optimiser did not meet its criterion."""
        return int(np.sum(~self.failed & ~self.converged))


@entry_point
@dataclass(frozen=True, eq=False)
class BatchResult(FitFlags):
    """Many fits of one model structure (arrays with a leading fit axis).

    Attributes:
        theta: (B, n_theta) lme4's theta per fit.
        beta: (B, p) fixed effects.
        sigma: (B,) residual SDs.
        objective: (B,) REML criterion or ML deviance at the optimum.
        converged: (B,) the optimiser met its criterion.
        iterations: (B,) Newton iterations.
        ks: columns per random-effects term.
        component_names: lme4 names of the sd/cor parameters
            (:attr:`~lmm_jax.core.theta_layout.ThetaLayout.names`).
        fixef_names: fixed-effects names.
        reml: REML (True) or ML fits.
        failure: (B,) why each fit failed, "" where it did not: a response
            that cannot be fitted (:func:`failure_reasons`; its estimates
            are NaN and ``converged`` False) or non-finite estimates
            (``NONFINITE_ESTIMATES``, filled in from the arrays).
        vcov: (B, p, p) covariance of each fit's fixed effects,
            ``sigma^2 (X'V^{-1}X)^{-1}`` (lme4's ``vcov``); None for
            bootstrap replicates.
        df: (B, p) denominator df of each coefficient's t test, by ``ddf``;
            None where ``vcov`` is.
        ddf: how ``df`` was computed: ``"satterthwaite"`` (lmerTest's method,
            per fit), ``"residual"`` (n - p) or ``"none"`` (infinite: z tests).
        process: (B,) the ``jax.process_index()`` of the process that
            computed each fit, for the runs that share their work out
            between processes (bootstrap, :func:`lmm_jax.fit_many`,
            :func:`~lmm_jax.pb_modcomp`; :mod:`lmm_jax.batched.distributed`):
            all 0 in one process; None for :func:`fit_batch`.
    """

    theta: np.ndarray
    beta: np.ndarray
    sigma: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    ks: tuple[int, ...]
    component_names: tuple[str, ...]
    fixef_names: tuple[str, ...]
    reml: bool
    failure: np.ndarray | None = None
    vcov: np.ndarray | None = None
    df: np.ndarray | None = None
    ddf: str | None = None
    process: np.ndarray | None = None

    def __post_init__(self) -> None:
        failure = (np.full(len(self), "", dtype=object) if self.failure is None
                   else np.array(self.failure, dtype=object).reshape(len(self)))
        failure[(failure == "") & ~self.finite] = NONFINITE_ESTIMATES
        object.__setattr__(self, "failure", failure)

    @property
    def finite(self) -> np.ndarray:
        """(B,) True where every estimate and the objective are finite."""
        return (np.isfinite(self.objective) & np.all(np.isfinite(self.theta), axis=1)
                & np.all(np.isfinite(self.beta), axis=1) & np.isfinite(self.sigma))

    @property
    def singular(self) -> np.ndarray:
        """(B,) booleans: lme4's ``isSingular`` per fit, some diagonal of Lambda
        below 1e-4 (:func:`is_singular_rows`)."""
        return is_singular_rows(self.theta, self.ks)

    def estimates(self) -> pd.DataFrame:
        """(B, ...) sd/cor components, sigma and fixed effects in lme4's
        ``confint`` order and naming."""
        cols = np.column_stack([sd_cor(self.theta, self.sigma, self.ks), self.sigma, self.beta])
        return pd.DataFrame(cols, columns=list(self.component_names) + ["sigma"] + list(self.fixef_names))

    @property
    def std_errors(self) -> np.ndarray:
        """(B, p) standard errors of the fixed effects (sqrt of vcov's diagonal)."""
        return np.sqrt(np.diagonal(self._vcov(), axis1=1, axis2=2))

    def _vcov(self) -> np.ndarray:
        if self.vcov is None:
            raise InferenceError("these fits carry no covariance of the fixed effects (bootstrap replicates); "
                                 "refit the responses with LMM.fit_batch or lmm_jax.fit_many for t tests")
        return self.vcov

    def coef_table(self, level: float = 0.95) -> pd.DataFrame:
        """t tests and intervals of the fixed effects: one row per (fit, term).

        Columns ``fit, term, estimate, std_error, df, t, p, lower, upper,
        converged, singular``: ``df`` by :attr:`ddf`, ``p`` two-sided from
        Student's t with ``df``, ``lower, upper`` the t interval ``estimate
        -+ t_{df, (1 + level)/2} std_error`` (infinite df: z). Each row equals
        the row of ``LMMResult.coefs(ddf, level)`` of that fit alone; a failed
        fit's rows are NaN. For the fits that enter a summary, filter on
        ``converged`` (False for failed fits) or ``fit`` in ``np.flatnonzero(ok)``.

        Args:
            level: confidence level of ``lower, upper``.

        Returns:
            DataFrame, one row per fit and fixed effect, the columns above.
        """
        if not 0 < level < 1:
            raise InferenceError(f"level must be in (0, 1), got {level}")
        se = self.std_errors
        B, p = self.beta.shape
        df = np.broadcast_to(np.asarray(self.df, dtype=float), (B, p))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.beta / se
            pval = 2.0 * stdtr(df, -np.abs(t))        # Student's t CDF (scipy.stats.t.sf's kernel)
            crit = stdtrit(df, 0.5 + level / 2.0)     # its quantile (scipy.stats.t.ppf's kernel)
        table = pd.DataFrame({"fit": np.repeat(np.arange(B), p), "term": np.tile(np.asarray(self.fixef_names,
                                                                                         dtype=object), B),
                              "estimate": self.beta.ravel(), "std_error": se.ravel(), "df": df.ravel(),
                              "t": t.ravel(), "p": pval.ravel(), "lower": (self.beta - crit * se).ravel(),
                              "upper": (self.beta + crit * se).ravel(),
                              "converged": np.repeat(self.converged, p), "singular": np.repeat(self.singular, p)})
        table.attrs.update(level=level, ddf=self.ddf)
        return table

    def sdcor_table(self) -> pd.DataFrame:
        """The variance parameters on lme4's sd/cor scale, one row per (fit,
        component): columns ``fit, component, estimate, converged, singular``;
        components in lme4's ``confint`` naming and order, then ``sigma``
        (the columns of :meth:`estimates`)."""
        est = np.column_stack([sd_cor(self.theta, self.sigma, self.ks), self.sigma])
        B, c = est.shape
        return pd.DataFrame({"fit": np.repeat(np.arange(B), c),
                             "component": np.tile(np.asarray(list(self.component_names) + ["sigma"], dtype=object), B),
                             "estimate": est.ravel(), "converged": np.repeat(self.converged, c),
                             "singular": np.repeat(self.singular, c)})

    @property
    def table(self) -> pd.DataFrame:
        """One row per fit: objective, converged, singular, iterations,
        failure ("" or why the fit failed), then the estimates
        (:meth:`estimates`) and theta_1.. (lme4's theta)."""
        head = pd.DataFrame({"objective": self.objective, "converged": self.converged, "singular": self.singular,
                             "iterations": self.iterations, "failure": self.failure})
        th = pd.DataFrame(self.theta, columns=[f"theta_{i + 1}" for i in range(self.theta.shape[1])])
        return pd.concat([head, self.estimates(), th], axis=1)


def _as_batch_result(out: dict, design: "Design", reml: bool, failure: np.ndarray | None = None,
                     ddf: str | None = None, process: np.ndarray | None = None) -> BatchResult:
    """A :class:`BatchResult` of the arrays ``out``; the fits with a
    ``failure`` reason get NaN estimates and ``converged=False``. With
    ``ddf``, ``out`` has ``vcov`` (and ``df`` for ``"satterthwaite"``; the
    other methods' df come from the design). ``process``: who computed each fit."""
    out = {k: np.asarray(v) for k, v in out.items()}
    out["converged"] = out["converged"].astype(bool)
    if ddf is not None and ddf != "satterthwaite":
        df = float(design.n - design.p) if ddf == "residual" else np.inf
        out["df"] = np.full(out["beta"].shape, df)
    if failure is not None and np.any(failure != ""):
        bad = failure != ""
        for k in ("theta", "beta", "sigma", "objective", "vcov", "df"):
            if k in out:
                out[k] = np.where(bad.reshape((-1,) + (1,) * (out[k].ndim - 1)), np.nan, out[k])
        out["converged"] = out["converged"] & ~bad
    return BatchResult(theta=out["theta"], beta=out["beta"], sigma=out["sigma"], objective=out["objective"],
                       converged=out["converged"], iterations=out["iterations"],
                       ks=design.ks, component_names=design.theta_layout.names,
                       fixef_names=tuple(design.fixef_names), reml=reml, failure=failure,
                       vcov=out.get("vcov"), df=out.get("df"), ddf=ddf, process=process)


def _start(s: Structure, start: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    theta0 = np.asarray(start, dtype=float)
    n_theta = ThetaLayout.of(s.ks).n_theta
    if theta0.shape != (n_theta,):
        raise ValueError(f"start must be one theta in lme4's layout ({n_theta} entries), got shape {theta0.shape}")
    if not np.isfinite(theta0).all():
        raise ValueError(f"start must be finite, got {theta0.tolist()}")
    phi0, active0 = phi_from_theta(theta0, s.ks)
    return jnp.asarray(phi0), jnp.asarray(active0)


def check_batch_ddf(ddf: str) -> str:
    """``ddf`` of a batched fit: :func:`~lmm_jax.errors.normalize_ddf`'s
    spellings, Kenward-Roger refused (it has no batched kernel)."""
    ddf = normalize_ddf(ddf)
    if ddf == "kenward-roger":
        raise InferenceError("ddf='kenward-roger' is not available for batched fits; use 'satterthwaite' (the "
                             "default), 'residual' or 'none', or fit a response alone for LMMResult.coefs('kr')")
    return ddf


@entry_point
def fit_batch(model: "LMM", Y: Any, reml: bool = True, *, start: np.ndarray | None = None,
              max_iter: int = 200, method: str = "bfgs", ddf: str = "satterthwaite",
              pad_levels: bool = False) -> BatchResult:
    """Fit many responses on the design of ``model`` in one vmapped call.

    Args:
        model: the :class:`~lmm_jax.model.LMM` whose design is used (its own
            response is ignored).
        Y: (n_obs, B) responses, one per column, rows in the model's row order
            (after its missing-value drops); a 1-d array is one response.
        reml: REML (default) or ML.
        start: starting theta for every fit; default: each response's own
            MIVQUE(0) moment estimates (:mod:`lmm_jax.core.start`), the start of
            :meth:`LMM.fit`, so each column equals its own fit.
        max_iter: iterations per fit before it is reported unconverged.
        method: ``"bfgs"`` (default: each fit starts from the exact Hessian
            at ``start`` and updates it by BFGS; 5-8x faster per batch) or
            ``"newton"`` (the exact Hessian every iteration, the same
            iterations as :meth:`LMM.fit`). Both reach the same optimum to
            the optimisers' tolerance (objective 1e-10 relative).
        ddf: denominator df of the coefficients' t tests
            (:meth:`BatchResult.coef_table`): ``"satterthwaite"`` (default;
            lmerTest's, from each fit's exact Hessian in (theta, sigma),
            computed in the same compiled call), ``"residual"`` (n - p) or
            ``"none"`` (z tests); the last two skip the Hessians (1,000
            sleepstudy responses on 2 CPU cores: 12 s of CPU to compile
            instead of 14.5, 0.05 s per warm call instead of 0.09).
        pad_levels: fit in the model's padded layout
            (:func:`~lmm_jax.build.crossprod.pad_products`: levels padded to
            size buckets), so that designs of other sizes in the same buckets
            (a simulation study's conditions, a power curve's sizes) share the
            compiled fit; only a small kernel of the responses' products
            compiles per size. Padded levels cost time on every call
            (1,000 sleepstudy responses, 18 subjects padded to 32: 0.12 s
            warm against 0.08 s), so the default fits at the exact sizes.

    Returns:
        A :class:`BatchResult`; ``.table`` is a DataFrame with one row per column of Y,
        ``.coef_table()`` one per column and fixed effect.
        A column that :func:`lmm_jax.fit` would refuse (non-finite values, a
        constant) or that lies in the column space of X (sigma would be 0)
        is a failed fit: NaN estimates, ``converged=False``, counted in
        ``n_failed``, with the reason in ``failure`` (the other columns are
        fitted as usual).
    """
    reml, max_iter = check_bool(reml, "reml"), check_count(max_iter, "max_iter")
    ddf = check_batch_ddf(ddf)
    Y = jnp.asarray(Y, dtype=jnp.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    s = model.structure
    if Y.ndim != 2 or Y.shape[0] != model.design.n:
        raise ValueError(f"Y must be (n_obs, B) = ({model.design.n}, B) for this model, got shape {Y.shape}; pass one "
                         "response per column in the model's row order")
    phi0, active0 = (None, None) if start is None else _start(s, start)
    if check_bool(pad_levels, "pad_levels"):
        dp, eq, fitted = model.padded.products, model.padded_moment_equations, model.padded.structure
    else:
        dp, eq, fitted = model.products, model.moment_equations, s
    rps, checks = _batch_products(model.design.working.response(Y), model.response_map, model.arrays, s, fitted)
    out = _fit_responses(rps, dp, eq, phi0, active0, fitted, bool(reml), int(max_iter), check_method(method),
                         ddf == "satterthwaite")
    return _as_batch_result(out, model.design, bool(reml), failure_reasons(checks), ddf)


def prepare_fit_batch(model: "LMM", B: int, reml: bool = True, *, max_iter: int = 200, method: str = "bfgs",
                      ddf: str = "satterthwaite", pad_levels: bool = False,
                      after: threading.Event | None = None) -> None:
    """Compile the fitting kernel of ``fit_batch(model, Y, ...)`` for B
    responses (``Y`` (n_obs, B), the other arguments as :func:`fit_batch`'s,
    ``start`` None) on a background thread (:meth:`Kernel.prepare
    <lmm_jax.runtime.kernel.Kernel.prepare>`), traced once ``after`` is set:
    a caller that will fit several padded structures (a power curve's size
    buckets) compiles the later ones beside the first. Nothing on one core."""
    if not kernel_module.SPARE_CORES:
        return
    s = model.structure
    if pad_levels:
        dp, eq, fitted = model.padded.products, model.padded_moment_equations, model.padded.structure
    else:
        dp, eq, fitted = model.products, model.moment_equations, s
    Yw = jax.ShapeDtypeStruct((model.design.n, B), np.float64)
    rps, _ = jax.eval_shape(partial(_batch_products.jitted, s=s, padded=fitted), Yw, model.response_map,
                            model.arrays)
    _fit_responses.prepare(rps, dp, eq, None, None, fitted, bool(reml), int(max_iter), check_method(method),
                           check_batch_ddf(ddf) == "satterthwaite", after=after)


@entry_point
def fit_models(models: Sequence["LMM"], reml: bool = True, *, max_iter: int = 200,
               method: str = "bfgs", ddf: str = "satterthwaite", chunk_size: int | None = None) -> list[BatchResult]:
    """Fit many models, one compiled vmapped call per padded structure
    (:func:`lmm_jax.fit_many` builds the models from (formula, data) pairs).

    Models are grouped by the structure of their padded products
    (:func:`~lmm_jax.build.crossprod.pad_products`: terms' columns, levels
    rounded up to size buckets, p; the number of observations is a runtime
    value); each group's design and response products are stacked and
    fitted together, so a power analysis over a few numbers of subjects
    compiles once per size bucket, not once per dataset.

    Args:
        models: :class:`~lmm_jax.model.LMM` objects.
        reml: REML (default) or ML.
        max_iter: iterations per fit before it is reported unconverged.
        method: ``"bfgs"`` or ``"newton"``, as for :func:`fit_batch`.
        ddf: ``"satterthwaite"``, ``"residual"`` or ``"none"``, as for :func:`fit_batch`.
        chunk_size: models per compiled call: a group of one structure is
            cut into chunks of this many (in input order; the last one
            shorter, a compilation of its own). Default: each group whole.
            After ``jax.distributed.initialize()`` the calls (groups or
            chunks) are shared out between the processes
            (:mod:`lmm_jax.batched.distributed`) and every process returns
            every fit, the same bits as one process.

    Returns:
        One single-fit :class:`BatchResult` per model, in the input order; a
        model whose response lies in the column space of X (sigma would be
        0) is a failed fit, as in :func:`fit_batch`. ``process`` says which
        process fitted it.
    """
    reml, max_iter = check_bool(reml, "reml"), check_count(max_iter, "max_iter")
    ddf = check_batch_ddf(ddf)
    method = check_method(method)
    chunk = None if chunk_size is None else check_count(chunk_size, "chunk_size")
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        # same padded structure and the same pytree of products (a sparse coupling block has its own shapes)
        leaves, tree = jax.tree_util.tree_flatten(m.padded.products)
        key = (m.padded.structure, tree, tuple(np.shape(a) for a in leaves))
        groups.setdefault(key, []).append(i)
    units = [(key[0], idx[j:j + (chunk or len(idx))]) for key, idx in groups.items()
             for j in range(0, len(idx), chunk or len(idx))]
    largest = max((len(idx) for idx in groups.values()), default=1)
    owner = owners([len(idx) for _, idx in units], f"fit_many of {len(models)} models in {len(units)} call(s)",
                   f"Pass chunk_size={max(1, -(-largest // jax.process_count()))} or less to cut the groups "
                   "of one shape into more calls.")
    local: dict[int, dict[str, np.ndarray]] = {}
    for u in mine(owner):
        s, idx = units[u]
        dps = _stack([models[i].padded.products for i in idx])
        rps = _stack([models[i].padded.response for i in idx])
        eqs = [models[i].padded_moment_equations for i in idx]
        eqs = None if any(e is None for e in eqs) else _stack(eqs)
        satterthwaite = ddf == "satterthwaite"
        quick = quick_batch(len(idx), s)
        traced = threading.Event()
        if kernel_module.SPARE_CORES:   # the t tests' kernel compiles beside the fits' (traced after it)
            n = len(idx)
            _stacked_inference.prepare(jax.ShapeDtypeStruct((n, n_theta(s.ks)), np.float64),
                                       jax.ShapeDtypeStruct((n,), np.float64), dps, rps, s, bool(reml),
                                       satterthwaite, quick, after=traced)
        with traced_sets(traced):
            res = _fit_stacked(dps, rps, eqs, s, bool(reml), int(max_iter), method, quick)
        inf = _stacked_inference(res["theta"], res["sigma"], dps, rps, s, bool(reml), satterthwaite, quick)
        local[u] = {k: np.asarray(v) for k, v in dict(res, **inf).items()}
    shared = exchange(local)
    out: list[BatchResult | None] = [None] * len(models)
    for u, (_, idx) in enumerate(units):
        res = shared[u]
        for row, i in enumerate(idx):
            d = models[i].design
            y = d.working.response(np.asarray(d.y, dtype=float))[:, None]
            e = d.working.y[:, None]                   # y's least-squares residual (lmm_jax.build.working)
            out[i] = _as_batch_result({k: v[row:row + 1] for k, v in res.items()}, d, bool(reml),
                                      failure_reasons(response_checks(y, e, np)), ddf, process=owner[u:u + 1])
    return out  # type: ignore[return-value]


def _stack(trees: list) -> Any:
    """Stack pytrees of arrays along a new leading axis, on the host (no
    device computation to compile per group size)."""
    return jax.tree_util.tree_map(lambda *a: jax.device_put(np.stack([np.asarray(x) for x in a])), *trees)

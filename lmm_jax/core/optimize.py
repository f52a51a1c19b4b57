"""One vmappable optimiser loop: Newton with the exact Hessian, or BFGS.

Minimises ``f(theta_from_phi(phi, active))`` over the unconstrained log-Cholesky
parameters phi. Both methods are one loop, :func:`_solve` (Nocedal & Wright
2006, secs. 3.1, 3.4 and 6.1; the layout follows optimistix: a typed solver
state, named predicates, the methods as specialisations of one loop). They
differ in their curvature model M (:class:`_Method`):

- :func:`newton_minimize`: M is the exact Hessian H by autodiff at every point;
  the direction ``d = -|H|^{-1} g`` has the eigenvalues of H replaced by their
  absolute values (floored, :func:`floored_eigh`), so d is a descent direction
  even where H is indefinite.
- :func:`bfgs_minimize`: M approximates the inverse Hessian, started from a
  given matrix and updated by BFGS from each step and its change of gradient;
  ``d = -M g``. An iteration costs one value-and-gradient instead of a Hessian
  (about 6x fewer flops for a 3-parameter model); for refits of many responses
  near a known optimum (the bootstrap) the fitted model's exact Hessian is an
  excellent start (:func:`inverse_hessian_start`).

An iteration, written once for both:

1. the step d from M and the gradient g, capped at ``max_step`` in the infinity
   norm (a trust region in all but name, :func:`capped`); the decrement
   ``-g'd / 2`` (before the cap) is the decrease of f the model predicts;
2. the line search (:func:`armijo`, :func:`backtrack`): the full step is taken
   if it passes the Armijo condition, or if its change of f is rounding noise
   by the method's rule (:attr:`_Method.noise_pass`); else it is halved on f
   alone until it passes;
3. the boundary rule (:func:`zero_tiny`, :func:`reactivate`): a diagonal entry
   of Lambda whose theta has fallen below ``zero_tol`` is set to exactly 0
   (made inactive) when that does not raise f. In the log parametrisation a
   zero variance sits at -infinity, which the capped step approaches by only
   ~0.5 in phi per step; the rule reaches lme4's boundary optimum in a few
   steps and without NaN. An inactive entry is re-activated if moving it to
   ``reactivate_at`` lowers f;
4. stop when the decrement is below ``tol`` (:func:`converged`), or when two
   steps in a row have stalled (:func:`stalled`), or after ``max_iter`` steps.

Each pass of the loop takes the derivatives at one point, the end of the step
under test, so they appear once in the compiled loop (compile time is most of
a first fit): a full step that passes brings the next iteration's derivatives
with it; a step the search shortened, or a point the boundary rule moved, has
its derivatives taken by the next pass. Everything is inside
``lax.while_loop`` with fixed shapes, so ``jax.vmap`` over data (bootstrap
replicates) works: under vmap the loop runs until every member has stopped.

Besides M, the methods differ in a few rules (the fields of :class:`_Method`):
which full steps pass on rounding noise, what counts as a stall, when zeroed
entries are tried again, and Newton's polish. Newton's tolerance 1e-12 fixes
theta to about ``sqrt(2e-12 / curvature)``; at 1e-11 a near-zero variance
component that Newton reached with a last decrement of 6e-12 was 1.5e-5 off
lme4's. When it stops below tol, Newton takes the step it has
computed without evaluating f again (the polish): inside the region of
quadratic convergence it leaves an error of order dec instead of sqrt(dec);
the reported f, g and H are those before the step (f differs by less than
tol). Near the optimum Newton also takes a full step that Armijo, comparing
f's rounding noise, fails, if it lowers the decrement (a measure of the
gradient, which has no such cancellation) and raises f by less than that
noise. Without the polish and this rule, sleepstudy's ML fit from nearby starts
ends 2 to 4 iterations in, with its covariance up to 1.1e-5 (relative) from the
exact optimum (on an H100, and on the CPU with XLA's older fusion emitters, a
full step to the optimum fails Armijo on f's rounding noise twice and the loop
stops as stalled).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..runtime.kernel import serializable
from .eigh import symmetric_eigh
from .loops import batched_like
from .parametrization import diagonal_mask, theta_from_phi


class OptimizerSettings(NamedTuple):
    """The numbers that steer the loop (Python numbers: constants of the
    compiled program, so a settings value is a static argument).

    Attributes:
        tol: stop when the decrement (the decrease of f the curvature model
            predicts, deviance units) is below this.
        max_iter: the most steps (line searches) a fit takes.
        max_step: cap on the infinity norm of a step in phi.
        zero_tol: theta below which a diagonal entry is tried at exactly 0.
        reactivate_at: theta at which a zeroed entry is tried again.
        armijo: the Armijo constant: a step ``alpha d`` passes if it lowers f
            by at least ``armijo * alpha * |g'd|``.
        max_halvings: the line search's shortest step is ``2**-max_halvings``
            of the full step; a search that finds nothing by then fails.
        stall: a fit that stops stalled counts as converged if its decrement
            is below this (its gradient is then as small as f's rounding
            lets a line search see).
        eig_floor: eigenvalues of an exact Hessian are raised to at least
            ``eig_floor * max(max |lambda|, 1)`` in absolute value.
        f_rounding: f's rounding level relative to ``1 + |f|``: a step that
            gains less is no gain (it counts as flat).
        f_noise: the most rounding noise relative to ``1 + |f|`` that Newton's
            decrement rule allows for (data 1e4 SDs from zero: 2e-8).
        curvature: the BFGS update is skipped unless
            ``s'y > curvature * |s| |y|`` (``s'y > 0`` keeps M positive
            definite; the margin keeps ``1 / s'y`` bounded).
    """

    tol: float = 1e-12
    max_iter: int = 200
    max_step: float = 2.0
    zero_tol: float = 1e-3
    reactivate_at: float = 1e-2
    armijo: float = 1e-4
    max_halvings: int = 41
    stall: float = 1e-6
    eig_floor: float = 1e-8
    f_rounding: float = 1e-12
    f_noise: float = 1e-7
    curvature: float = 1e-12


# Newton's default settings (the single fit, the profile).
NEWTON = OptimizerSettings()
# BFGS's defaults. tol: Newton's 1e-12 comes from the single fit's agreement with lme4 (module docstring);
# BFGS refits batches near a known optimum (the bootstrap, batch.fit_products, whose FIRST_PASS_ITER is
# sized for this value), where theta to about sqrt(2e-11 / curvature) is far below the replicates' spread.
# Each method keeps its own value: changing either changes every fit it makes. max_halvings: under vmap
# every halving costs the whole batch an evaluation, so a search gives up after 8 and the failure restarts
# M instead.
BFGS = OptimizerSettings(tol=1e-11, max_halvings=8)


@serializable
class NewtonResult(NamedTuple):
    """What the optimiser returns (arrays, so it can be vmapped).

    Attributes:
        theta: lme4's theta at the optimum (boundary entries exactly 0).
        phi: the log-Cholesky parameters (inactive entries hold their last value).
        active: False for diagonal entries fixed at 0.
        objective: f at the optimum.
        gradient_norm: infinity norm of the gradient over active entries.
        decrement: the last decrement.
        iterations: steps taken.
        converged: the decrement fell below ``tol`` before ``max_iter``, or
            the fit stalled with the decrement below ``stall``
            (:class:`OptimizerSettings`).
        gradient: gradient of f in phi at the optimum (0 for inactive entries).
        hessian: Hessian of f in phi at the optimum (identity rows/columns
            for inactive entries); :mod:`lmm_jax.core.diagnostics` maps both to theta.
            From :func:`bfgs_minimize`: None (see ``inverse_hessian``).
        inverse_hessian: :func:`bfgs_minimize`'s approximation of the inverse
            Hessian at the optimum (a warm start for continuing); None from
            :func:`newton_minimize`.
    """

    theta: jnp.ndarray
    phi: jnp.ndarray
    active: jnp.ndarray
    objective: jnp.ndarray
    gradient_norm: jnp.ndarray
    decrement: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray
    gradient: jnp.ndarray
    hessian: jnp.ndarray | None
    inverse_hessian: jnp.ndarray | None = None


# -- the pieces both methods share ----------------------------------------------------------------
def masked(M: jnp.ndarray, act: jnp.ndarray) -> jnp.ndarray:
    """M on the active rows and columns, the identity on the inactive ones
    (``act``: the active mask as 0/1 floats)."""
    return M * act[:, None] * act[None, :] + jnp.diag(1.0 - act)


def floored_eigh(H: jnp.ndarray, eig_floor: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(|lambda|, Q)`` of symmetric H with each ``|lambda|`` raised to at
    least ``eig_floor * max(max |lambda|, 1)``: ``Q diag(|lambda|) Q'`` is a
    positive definite stand-in for H (Nocedal & Wright 2006, sec. 3.4); the
    decomposition by :func:`~lmm_jax.core.eigh.symmetric_eigh`."""
    lam, Q = symmetric_eigh(H)
    floor = eig_floor * jnp.maximum(jnp.max(jnp.abs(lam)), 1.0)
    return jnp.maximum(jnp.abs(lam), floor), Q


def capped(d: jnp.ndarray, g: jnp.ndarray, max_step: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(d', dec)``: direction d scaled down to at most ``max_step`` in the
    infinity norm, and the decrement ``-g'd / 2`` of the uncapped d."""
    dec = -(g @ d) / 2.0
    scale = jnp.minimum(1.0, max_step / jnp.maximum(jnp.max(jnp.abs(d)), 1e-300))
    return d * scale, dec


def armijo(f0: jnp.ndarray, slope: jnp.ndarray, alpha, fa: jnp.ndarray, c: float) -> jnp.ndarray:
    """The Armijo (sufficient decrease) condition for the step ``alpha d``
    with ``slope = g'd``: ``f(alpha) <= f0 + c alpha slope``, f finite."""
    return jnp.isfinite(fa) & (fa <= f0 + c * alpha * slope)


def backtrack(f_at: Callable[[jnp.ndarray], jnp.ndarray], f0: jnp.ndarray, slope: jnp.ndarray, live: jnp.ndarray,
              settings: OptimizerSettings) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Backtracking line search after the full step has failed: ``alpha`` =
    1/2, 1/4, ... down to ``2**-settings.max_halvings``, on f alone
    (``f_at(alpha)``), until :func:`armijo` holds.

    ``live`` False searches nothing (a fit that needs no search must not keep
    a vmapped loop going). Returns ``(alpha, f(alpha), found)``."""
    def cond(c):
        alpha, fa, k = c
        return live & ((k == 0) | (~armijo(f0, slope, alpha, fa, settings.armijo) & (k < settings.max_halvings)))

    def body(c):
        alpha, _, k = c
        alpha = alpha * 0.5
        return alpha, f_at(alpha), k + 1

    start = batched_like((jnp.asarray(1.0, f0.dtype), f0, jnp.asarray(0)), f0)
    alpha, fa, _ = lax.while_loop(cond, body, start)
    return alpha, fa, live & armijo(f0, slope, alpha, fa, settings.armijo)


def _this_fit(flag: jnp.ndarray) -> jnp.ndarray:
    # a boundary test runs where this fit needs it (batch-wide tests: bfgs_minimize's ``anywhere``)
    return flag


def zero_tiny(f_phi: Callable, phi: jnp.ndarray, active: jnp.ndarray, f: jnp.ndarray, diag: jnp.ndarray,
              settings: OptimizerSettings, live: jnp.ndarray, anywhere: Callable = _this_fit):
    """The boundary rule, first half: set the active diagonal entries whose
    phi is below ``log(zero_tol)`` to exactly 0 if f does not rise.

    ``f_phi(phi, active)`` is the objective, ``diag`` marks the diagonal
    entries of Lambda, ``live`` False tests nothing. f is evaluated only where
    some entry is a candidate: a real branch in a single fit; under vmap a
    select, unless ``anywhere`` (see :func:`bfgs_minimize`'s ``axis_name``)
    makes the test batch-wide. Returns ``(active, f, zeroed)``."""
    cand = diag & active & (phi < jnp.log(settings.zero_tol)) & live

    def test(_):
        f_zero = f_phi(phi, active & ~cand)
        take = jnp.any(cand) & (f_zero <= f)
        return jnp.where(take, active & ~cand, active), jnp.where(take, f_zero, f), take

    return lax.cond(anywhere(jnp.any(cand)), test, lambda _: (active, f, jnp.asarray(False)), None)


def reactivate(f_phi: Callable, phi: jnp.ndarray, active: jnp.ndarray, f: jnp.ndarray, diag: jnp.ndarray,
               settings: OptimizerSettings, live: jnp.ndarray, anywhere: Callable = _this_fit):
    """The boundary rule, second half: move the zeroed diagonal entries to
    theta = ``reactivate_at`` and keep them active if f drops (the KKT check
    at the boundary). Evaluated as :func:`zero_tiny`. Returns
    ``(phi, active, f, back)``."""
    off = diag & ~active
    need = jnp.any(off) & live

    def test(_):
        phi_try = jnp.where(off, jnp.log(settings.reactivate_at), phi)
        f_off = f_phi(phi_try, active | off)
        back = need & (f_off < f)
        return jnp.where(back, phi_try, phi), jnp.where(back, active | off, active), jnp.where(back, f_off, f), back

    return lax.cond(anywhere(need), test, lambda _: (phi, active, f, jnp.asarray(False)), None)


def inverse_hessian_start(H: jnp.ndarray, eig_floor: float = NEWTON.eig_floor) -> jnp.ndarray:
    """``|H|^{-1}`` with eigenvalues floored as in the Newton direction
    (:func:`floored_eigh`): a positive definite start for
    :func:`bfgs_minimize` from an exact Hessian."""
    lam, Q = floored_eigh(H, eig_floor)
    return (Q / lam) @ Q.T


# -- the loop ------------------------------------------------------------------------------------
class _State(NamedTuple):
    """The loop's state between passes, built by field name. f, g, M and
    (d, dec) belong to ``phi``, except before a refresh pass (``trial`` and
    ``taken`` False), whose evaluation replaces g, M, d and dec."""

    phi: jnp.ndarray            # the last accepted point
    active: jnp.ndarray         # False for diagonal entries fixed at 0
    f: jnp.ndarray
    g: jnp.ndarray              # masked: 0 on inactive entries
    M: jnp.ndarray              # the curvature model: H (Newton) or an inverse Hessian (BFGS)
    d: jnp.ndarray              # the capped direction from phi (0 in a refresh pass)
    dec: jnp.ndarray            # its decrement
    alpha: jnp.ndarray          # the next pass evaluates phi + alpha d
    trial: jnp.ndarray          # ... to test the full step (alpha = 1)
    taken: jnp.ndarray          # ... to take the step the search found; neither: to refresh at phi (alpha = 0, d = 0)
    it: jnp.ndarray             # steps taken
    done: jnp.ndarray
    stalled: jnp.ndarray        # the last step stalled (the method's rule)
    stalled_before: jnp.ndarray  # ... and the one before it
    changed: jnp.ndarray        # the last step changed the active set


class _Method(NamedTuple):
    """What distinguishes Newton from BFGS: the curvature model, and the
    rules that go with it (Newton's value / BFGS's in brackets).

    Attributes:
        evaluate: ``(phi, active) -> (f, g, H or None)``, g and H masked to
            the active entries (f, g and H from one computation / f and g).
        model: ``(M, H, s, g_new, g) -> M`` at the end of the step s (H /
            the BFGS update).
        direction: ``(g, M) -> (d, dec)``, d capped (``-|H|^{-1} g`` /
            ``-M g``).
        noise_pass: ``(f0, dec0, f_t, dec_t) ->`` whether a full step that
            fails Armijo passes on rounding noise (it lowers the decrement
            and raises f by less than ``f_noise`` / it changes f by less than
            ``f_rounding``).
        restart: ``active -> M`` after a failed step or a change of the
            active set (None: M is exact / ``hinv0`` masked).
        flat_steps_stall: a step that gains less than f's rounding level
            counts as a stall (True / False: only a failed step).
        strict_stalls: a step that changes the active set is no stall, and a
            fit that ends stalled is converged (decrement below ``stall``)
            only if its last two steps stalled (True / False: every failed
            step is a stall, and one last stalled step is enough).
        reactivate_at_rest: zeroed entries are tried again only where the fit
            would stop on its face, the KKT check (False: after every step /
            True: under vmap each test costs the batch an evaluation).
        polish: the step computed at the stop is taken (True: it is a Newton
            step inside the quadratic region / False).
    """

    evaluate: Callable
    model: Callable
    direction: Callable
    noise_pass: Callable
    restart: Callable | None
    flat_steps_stall: bool
    strict_stalls: bool
    reactivate_at_rest: bool
    polish: bool


def converged(dec: jnp.ndarray, settings: OptimizerSettings) -> jnp.ndarray:
    """The stopping rule: the predicted decrease of f is below ``tol``."""
    return dec < settings.tol


def stalled(last: jnp.ndarray, before: jnp.ndarray) -> jnp.ndarray:
    """The stall rule: the last two steps stalled (failed, or for Newton also
    gained nothing measurable): the line search can no longer lower f."""
    return last & before


def _running(st: _State) -> jnp.ndarray:
    """The loop's condition: not done. It reads ``it`` too (``it >= 0`` always holds) so that it
    depends on two entries of the loop's state. XLA's while-loop passes look for an induction
    variable on every compile: a condition of one entry sends them to extract the body's whole
    computation of that entry, again and again, which took a third of a single fit's compile
    (sleepstudy with two terms: 1.02 s against 0.67 s); a condition of two entries they leave at
    once. Under vmap the condition is already of the whole batch."""
    return ~st.done & (st.it >= 0)


def _solve(method: _Method, f_phi, st: _State, diag, settings: OptimizerSettings, anywhere=_this_fit) -> _State:
    """Run the loop from ``st`` until it stops (see the module docstring)."""
    # the line search and the boundary rule's two tests evaluate the objective alone, at the same shapes:
    # as one jitted function it is traced and lowered once, not three times. XLA inlines the calls, so the
    # compiled program is the same; what it saves is tracing (for a GLMM the objective holds PIRLS's loop)
    f_phi = jax.jit(f_phi)

    def body(st: _State) -> _State:
        # the derivatives at the end of the step under test (at phi itself in a refresh pass)
        s = st.alpha * st.d
        phi_t = st.phi + s
        f_t, g_t, H_t = method.evaluate(phi_t, st.active)
        M_t = method.model(st.M, H_t, s, g_t, st.g)
        d_t, dec_t = method.direction(g_t, M_t)
        # a trial: the full step passes Armijo or the method's noise rule, or is searched back on f alone
        slope = st.g @ st.d
        full = st.trial & (armijo(st.f, slope, 1.0, f_t, settings.armijo) | method.noise_pass(st.f, st.dec, f_t, dec_t))
        search = st.trial & ~full
        alpha, _, found = backtrack(lambda a: f_phi(st.phi + a * st.d, st.active), st.f, slope, search, settings)
        # the pass is a refresh at phi, or a trial whose search found a shorter step (the next pass takes it),
        # or a step that settles: the derivatives at its end are in hand (a full step, a taken one), or it failed
        refresh = ~(st.trial | st.taken)
        pending = search & found
        settle = ~refresh & ~pending
        # the pass's point replaces phi in a refresh, or where the step reached it with finite f and g
        ok = (full | st.taken) & jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t))
        take = ok | refresh
        phi_s, f_s, g_s, M_s = (jnp.where(take, a, b) for a, b in ((phi_t, st.phi), (f_t, st.f), (g_t, st.g),
                                                                    (M_t, st.M)))
        d_s, dec_s = jnp.where(take, d_t, st.d), jnp.where(take, dec_t, st.dec)
        # a step that fails, or (Newton) gains less than f's rounding level, is a stall (an objective
        # noisy at 1e-12 of its size, e.g. a covariate 700 SDs from zero, can pass and fail Armijo by turns)
        flat = ok & (st.f - f_s <= settings.f_rounding * (1.0 + jnp.abs(st.f)))
        stall = (~ok | flat) if method.flat_steps_stall else ~ok
        # the boundary rule, on the settled point
        active_z, f_z, zeroed = zero_tiny(f_phi, phi_s, st.active, f_s, diag, settings, settle, anywhere)
        if method.reactivate_at_rest:
            gate = settle & ~zeroed & (converged(dec_s, settings) | (stall & st.stalled))
        else:
            gate = settle
        phi_n, active_n, f_n, back = reactivate(f_phi, phi_s, active_z, f_z, diag, settings, gate, anywhere)
        moved = zeroed | back
        if method.restart is not None:
            M_s = jnp.where(settle & (moved | ~ok), method.restart(active_n), M_s)
            d_s, dec_s = method.direction(g_s, M_s)
        same_face = ~moved
        stall = stall & same_face if method.strict_stalls else stall
        stalled_now = jnp.where(settle, stall, st.stalled)
        stalled_before = jnp.where(settle, st.stalled, st.stalled_before)
        changed = jnp.where(settle, moved, st.changed)
        it = st.it + st.trial.astype(st.it.dtype)
        # the derivatives in hand belong to the new point unless the boundary rule moved it; a refresh after a
        # change of face cannot stop on the decrement or on stalls (the next step is the face's first)
        known = (settle & same_face) | refresh
        stop = known & (((converged(dec_s, settings) | stalled(stalled_now, stalled_before)) & ~changed)
                        | (it >= settings.max_iter))
        # next: test the full step from the new point, take the step found, or refresh at the moved point
        # (alpha = 0, d = 0)
        return _State(phi=phi_n, active=active_n, f=f_n, g=g_s, M=M_s, d=jnp.where(known | pending, d_s, 0.0),
                      dec=dec_s, alpha=jnp.where(pending, alpha, known.astype(alpha.dtype)), trial=known & ~stop,
                      taken=pending, it=it, done=stop, stalled=stalled_now, stalled_before=stalled_before,
                      changed=changed)

    return lax.while_loop(_running, body, st)


def _result(method: _Method, st: _State, ks, settings: OptimizerSettings, free: int = 0) -> NewtonResult:
    n = st.phi.shape[0]
    done_stalled = stalled(st.stalled, st.stalled_before) if method.strict_stalls else st.stalled
    ok = converged(st.dec, settings) | (done_stalled & (st.dec < settings.stall))
    phi = st.phi
    if method.polish:
        # the last step, computed and not taken. Below tol it is inside Newton's quadratic region, where it
        # leaves an error of O(dec) instead of O(sqrt(dec)) in phi, at no evaluation's cost
        phi = jnp.where(converged(st.dec, settings) & jnp.all(jnp.isfinite(st.d)), st.phi + st.d, st.phi)
    exact = method.restart is None
    return NewtonResult(theta=_params_from_phi(phi, ks, st.active, free), phi=phi, active=st.active, objective=st.f,
                        gradient_norm=jnp.max(jnp.abs(st.g)) if n else jnp.asarray(0.0, st.f.dtype),
                        decrement=st.dec, iterations=st.it, converged=ok, gradient=st.g,
                        hessian=st.M if exact else None, inverse_hessian=None if exact else st.M)


def _start(phi0, active0, f, g, M, d, dec, trial) -> _State:
    """The state before the first pass: a trial of d from phi0, or (``trial`` False, d = 0) a refresh.

    Every entry is tied to phi0 (:func:`~lmm_jax.core.loops.batched_like`): under ``vmap``, with phi0
    batched, the whole state starts batched."""
    false = jnp.asarray(False)
    st = _State(phi=phi0, active=active0, f=f, g=g, M=M, d=d, dec=dec, alpha=trial.astype(phi0.dtype),
                trial=trial, taken=false, it=jnp.asarray(0), done=false, stalled=false, stalled_before=false,
                changed=false)
    return batched_like(st, phi0)


def _settings(base: OptimizerSettings, **given) -> OptimizerSettings:
    """``base`` with the fields given (not None) replaced."""
    return base._replace(**{k: v for k, v in given.items() if v is not None})


def _params_from_phi(phi: jnp.ndarray, ks: tuple[int, ...], active: jnp.ndarray, free: int) -> jnp.ndarray:
    """theta from the first entries of phi (:func:`theta_from_phi`), followed by the ``free`` trailing
    unconstrained parameters as they are."""
    if not free:
        return theta_from_phi(phi, ks, active)
    nt = phi.shape[0] - free
    return jnp.concatenate([theta_from_phi(phi[:nt], ks, active[:nt]), phi[nt:]])


def _in_phi(f_theta: Callable, ks: tuple[int, ...], free: int = 0) -> Callable:
    """The objective as a function of (phi, active): theta from the unconstrained phi, with the inactive
    (boundary) diagonal entries at zero (and ``free`` trailing unconstrained parameters)."""
    return lambda phi, active: f_theta(_params_from_phi(phi, ks, active, free))


def _diagonal(ks: tuple[int, ...], free: int) -> jnp.ndarray:
    """The boundary rule's candidates: theta's diagonal entries (none of the ``free`` trailing parameters)."""
    return jnp.asarray(np.concatenate([diagonal_mask(ks), np.zeros(free, dtype=bool)]))


def value_grad_hessian(value_and_grad: Callable, phi: jnp.ndarray, active: jnp.ndarray):
    """``(f, g, H)`` at ``(phi, active)``, g and H masked to the active entries
    (:func:`masked`), from one computation: the Hessian's columns are jvps of
    ``value_and_grad(phi, active)``, whose primal is (f, g). Taking f and g
    from a separate value-and-gradient would compile the objective's
    derivatives a second time (1.4 s of InstEval's 8 s first fit)."""
    dtype, n = phi.dtype, phi.shape[0]

    def column(v):
        return jax.jvp(lambda x: value_and_grad(x, active), (phi,), (v,))

    (f, g), (_, H) = jax.vmap(column, out_axes=((None, None), (0, 0)))(jnp.eye(n, dtype=dtype))
    act = active.astype(dtype)
    return f, g * act, masked(H, act)


# -- the two methods -----------------------------------------------------------------------------
def newton_minimize(f_theta: Callable[[jnp.ndarray], jnp.ndarray], phi0: jnp.ndarray, active0: jnp.ndarray,
                    ks: tuple[int, ...], *, max_iter: int | None = None, tol: float | None = None,
                    max_step: float | None = None, zero_tol: float | None = None,
                    reactivate_at: float | None = None, settings: OptimizerSettings = NEWTON,
                    free: int = 0) -> NewtonResult:
    """Minimise ``f_theta`` over theta = theta_from_phi(phi, active) by Newton's
    method with the exact Hessian (module docstring).

    The first pass takes f, g and H at ``phi0``. The boundary rule is tested
    after every step; a step that gains less than f's rounding level counts
    as a stall; the polish is taken at the stop.

    Args:
        f_theta: objective as a function of lme4's theta (pure JAX).
        phi0: starting log-Cholesky parameters.
        active0: starting active mask (all True to start in the interior).
        ks: columns per term (for the layout of theta).
        max_iter, tol, max_step, zero_tol, reactivate_at: override the
            fields of ``settings`` of these names (:class:`OptimizerSettings`).
        settings: the loop's settings, :data:`NEWTON` by default.
        free: trailing entries of phi that are unconstrained parameters of
            f besides theta (a GLMM's fixed effects): f is called with
            ``concatenate([theta, phi[-free:]])``, and the boundary rule
            never touches them (``active`` has an entry for each, True).

    Returns:
        A :class:`NewtonResult` (its ``theta``: theta followed by the free parameters).
    """
    settings = _settings(settings, max_iter=max_iter, tol=tol, max_step=max_step, zero_tol=zero_tol,
                         reactivate_at=reactivate_at)
    diag = _diagonal(ks, free)
    dtype = phi0.dtype
    n = phi0.shape[0]
    f_phi = _in_phi(f_theta, ks, free)
    value_and_grad = jax.value_and_grad(f_phi)

    def evaluate(phi, active):
        return value_grad_hessian(value_and_grad, phi, active)

    def direction(g, H):
        lam, Q = floored_eigh(H, settings.eig_floor)
        return capped(-Q @ ((Q.T @ g) / lam), g, settings.max_step)

    def noise_pass(f0, dec0, f_t, dec_t):
        # where the predicted decrease is tiny, Armijo compares f's rounding noise (sleepstudy's ML
        # deviance, 1752, is noisy at 4e-11; with x = 1e4 + N(0, 1), a deviance of 259 at 4e-6): there the
        # full step also passes if it lowers the decrement and raises f by no more than such noise
        tiny = settings.f_noise * (1.0 + jnp.abs(f0))
        return (dec0 <= tiny) & (f_t <= f0 + tiny) & (dec_t < dec0)

    method = _Method(evaluate=evaluate, model=lambda M, H, s, g_new, g: H, direction=direction,
                     noise_pass=noise_pass, restart=None, flat_steps_stall=True, strict_stalls=True,
                     reactivate_at_rest=False, polish=True)
    active0 = jnp.asarray(active0, dtype=bool)
    # the first pass is a refresh at phi0: its f, g and H come from the loop's one evaluation
    zero = jnp.zeros_like(phi0)
    st = _start(phi0, active0, jnp.asarray(jnp.nan, dtype), zero, jnp.eye(n, dtype=dtype), zero,
                jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
    return _result(method, _solve(method, f_phi, st, diag, settings), ks, settings, free)


def bfgs_minimize(f_theta: Callable[[jnp.ndarray], jnp.ndarray], phi0: jnp.ndarray, active0: jnp.ndarray,
                  ks: tuple[int, ...], hinv0: jnp.ndarray | None = None, *, max_iter: int | None = None,
                  tol: float | None = None, max_step: float | None = None, zero_tol: float | None = None,
                  reactivate_at: float | None = None, max_backtracks: int | None = None,
                  axis_name: str | None = None, settings: OptimizerSettings = BFGS) -> NewtonResult:
    """Minimise ``f_theta`` like :func:`newton_minimize`, with BFGS updates of
    an inverse Hessian M instead of the exact Hessian at every iterate.

    M takes the BFGS update (Nocedal & Wright 2006, eq. 6.17) with ``s`` the
    step and ``y`` the change of g, skipped unless ``s'y > 0`` (which keeps M
    positive definite). A failed line search restarts M from ``hinv0`` (a
    different direction), as does a change of the active set. The boundary rule zeroes
    entries after every step, and re-activates zeroed ones only once a fit
    would stop on its face (the KKT check). A full step that changes f by
    less than its rounding level passes as it is (Armijo cannot be tested
    there; the gradient still steers); every failed search is a stall, and a
    fit whose last step stalled with the decrement below ``stall`` counts as
    converged.

    Under ``jax.vmap(..., axis_name=a)`` pass ``axis_name=a``: the boundary
    tests then run only in passes where some member of the batch needs them.

    Args:
        f_theta, phi0, active0, ks: as for :func:`newton_minimize`.
        hinv0: starting inverse Hessian in phi (e.g. :func:`inverse_hessian_start`
            of the fitted model's Hessian); None: the inverse of the exact
            Hessian at ``phi0`` (one Hessian per fit).
        max_iter, tol, max_step, zero_tol, reactivate_at: override the
            fields of ``settings`` of these names.
        max_backtracks: overrides ``settings.max_halvings``.
        axis_name: the vmapped axis's name, if any (see above).
        settings: the loop's settings, :data:`BFGS` by default.

    Returns:
        A :class:`NewtonResult` with ``hessian=None`` and ``inverse_hessian``
        the final approximation.
    """
    settings = _settings(settings, max_iter=max_iter, tol=tol, max_step=max_step, zero_tol=zero_tol,
                         reactivate_at=reactivate_at, max_halvings=max_backtracks)
    diag = jnp.asarray(diagonal_mask(ks))
    dtype = phi0.dtype
    n = phi0.shape[0]
    f_phi = _in_phi(f_theta, ks)
    value_and_grad = jax.value_and_grad(f_phi)

    def evaluate(phi, active):
        f, g = value_and_grad(phi, active)
        return f, g * active.astype(dtype), None

    def model(Hinv, _, s, g_new, g):
        y = g_new - g
        sy = s @ y
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        V = jnp.eye(n, dtype=dtype) - rho * jnp.outer(s, y)
        use = sy > settings.curvature * jnp.sqrt((s @ s) * (y @ y))
        return jnp.where(use, V @ Hinv @ V.T + rho * jnp.outer(s, s), Hinv)

    def direction(g, Hinv):
        return capped(-Hinv @ g, g, settings.max_step)

    def noise_pass(f0, dec0, f_t, dec_t):
        return f_t <= f0 + settings.f_rounding * (1.0 + jnp.abs(f0))

    def anywhere(flag):
        # under vmap with ``axis_name``: True for every member if it holds for any, so that
        # lax.cond really branches (an optional step runs only when some fit needs it)
        if axis_name is None:
            return flag
        return lax.psum(flag.astype(jnp.int32), axis_name) > 0

    active0 = jnp.asarray(active0, dtype=bool)
    fg0 = None                       # f and g at phi0, where they come with the start's Hessian
    if hinv0 is None:
        f0, g0, H0 = value_grad_hessian(value_and_grad, phi0, active0)
        hinv0, fg0 = inverse_hessian_start(H0, settings.eig_floor), (f0, g0)
    method = _Method(evaluate=evaluate, model=model, direction=direction, noise_pass=noise_pass,
                     restart=lambda active: masked(hinv0, active.astype(dtype)), flat_steps_stall=False,
                     strict_stalls=False, reactivate_at_rest=True, polish=False)
    M0 = method.restart(active0)
    if fg0 is None:
        if settings.max_iter > 0:
            # the loop's first pass is a refresh at phi0, whose evaluation gives f and g: the objective's
            # derivatives appear once in the compiled function, not also before the loop
            zero = jnp.zeros_like(phi0)
            st = _start(phi0, active0, jnp.asarray(jnp.nan, dtype), zero, M0, zero, jnp.asarray(jnp.inf, dtype),
                        jnp.asarray(False))
            return _result(method, _solve(method, f_phi, st, diag, settings, anywhere), ks, settings)
        fg0 = evaluate(phi0, active0)[:2]        # max_iter = 0: the start is all, no loop to compile
    f0, g0 = fg0
    d0, dec0 = direction(g0, M0)
    done = converged(dec0, settings)
    st = _start(phi0, active0, f0, g0, M0, d0, dec0, ~done)._replace(done=done)
    if settings.max_iter > 0:
        st = _solve(method, f_phi, st, diag, settings, anywhere)
    return _result(method, st, ks, settings)

"""The optimiser loop: its shared pieces, and BFGS against Newton.

The pieces both methods share (line search, step cap, eigenvalue floor,
masking, boundary rule) are pinned as functions. ``bfgs_minimize`` is the fast
path of every batched fit and bootstrap; Newton with the exact Hessian is the
slow path it is checked against: same optimum (pinned for sleepstudy and the
boundary case Dyestuff2), same boundary (singular) decisions, and the
batch-wide branches taken under ``vmap(axis_name=...)`` change no result.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.core.likelihood import profiled_deviance
from lmm_jax.core.loops import batched_like
from lmm_jax.core.optimize import (BFGS, NEWTON, armijo, backtrack, bfgs_minimize, capped, inverse_hessian_start,
                                   masked, newton_minimize, reactivate, zero_tiny)
from lmm_jax.core.parametrization import diagonal_mask, phi_from_theta, theta_from_phi, theta_start

from tests.helpers import load_data, load_reference

pytestmark = pytest.mark.usefixtures("x64")   # lmm_jax's internals, called outside its entry points

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),       # k = 2, correlated
    "Penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),  # crossed, dense Schur block
    "Dyestuff2": ("Yield ~ 1 + (1 | Batch)", "Dyestuff2"),                   # singular: optimum on the boundary
}
REML = {"sleepstudy": True, "Penicillin": False, "Dyestuff2": True}
# the optimum from theta_start: Newton's theta and criterion, and the lme4 reference case of the same fit
GOLDEN = {
    "sleepstudy": ([0.9667329518648398, 0.01516905427048371, 0.23090959476049008], 1743.628271958482,
                   "sleepstudy_reml"),
    "Dyestuff2": ([0.0], 161.82827781228843, "dyestuff2_singular"),
}


def _objective(m, rp=None, reml=True):
    rp = m.response if rp is None else rp
    return lambda th: profiled_deviance(th, m.products, rp, m.structure, reml)


@pytest.mark.parametrize("case", list(CASES))
def test_bfgs_reaches_newtons_optimum(case):
    formula, data = CASES[case]
    reml = REML[case]
    m = lmm_jax.LMM(formula, load_data(data))
    ks = m.structure.ks
    phi0, act0 = (jnp.asarray(a) for a in phi_from_theta(theta_start(ks), ks))
    nt = jax.jit(lambda: newton_minimize(_objective(m, reml=reml), phi0, act0, ks))()
    qn = jax.jit(lambda: bfgs_minimize(_objective(m, reml=reml), phi0, act0, ks))()
    assert bool(nt.converged) and bool(qn.converged)
    assert qn.hessian is None and qn.inverse_hessian.shape == (len(phi0), len(phi0))
    np.testing.assert_allclose(float(qn.objective), float(nt.objective), rtol=1e-11)
    np.testing.assert_array_equal(np.asarray(qn.active), np.asarray(nt.active))   # same boundary decision
    np.testing.assert_allclose(np.asarray(qn.theta), np.asarray(nt.theta), rtol=1e-5, atol=1e-7)
    if case == "Dyestuff2":
        assert float(qn.theta[0]) == 0.0                                           # exactly on the boundary
    if case in GOLDEN:
        theta, crit, ref_case = GOLDEN[case]
        np.testing.assert_allclose(np.asarray(nt.theta), theta, rtol=0, atol=1e-9)
        np.testing.assert_allclose(float(nt.objective), crit, rtol=1e-12)
        np.testing.assert_allclose(float(qn.objective), crit, rtol=1e-12)
        ref = load_reference(ref_case)                                             # lme4's optimum
        np.testing.assert_allclose(np.asarray(nt.theta), ref["theta"], rtol=0, atol=1e-6)
        assert abs(float(nt.objective) - ref["reml_criterion"]) < 2e-6
        assert int(nt.iterations) <= 20 and int(qn.iterations) <= 30


def test_batch_wide_branches_change_nothing():
    """Under vmap with ``axis_name`` the optional steps (boundary tests, the
    gradient after a change of face) run only when some member needs them,
    as real branches; without it they run for every member every iteration
    (selects). Same fits either way."""
    formula, data = CASES["sleepstudy"]
    m = lmm_jax.LMM(formula, load_data(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = m.fit()
    s = m.structure
    Y = lmm_jax.simulate(fit, 64, key=3)
    rps = jax.vmap(m.response_products, in_axes=1)(Y)
    phi0, act0 = (jnp.asarray(a) for a in phi_from_theta(np.asarray(fit.theta), s.ks))

    def one(rp, axis_name):
        return bfgs_minimize(_objective(m, rp), phi0, act0, s.ks, axis_name=axis_name)

    gated = jax.jit(jax.vmap(lambda rp: one(rp, "b"), axis_name="b"))(rps)
    plain = jax.jit(jax.vmap(lambda rp: one(rp, None)))(rps)
    assert np.asarray(gated.converged).all()
    assert int(np.sum(~np.asarray(gated.active))) > 0                # some replicates reach the boundary
    np.testing.assert_array_equal(np.asarray(gated.iterations), np.asarray(plain.iterations))
    np.testing.assert_array_equal(np.asarray(gated.active), np.asarray(plain.active))
    np.testing.assert_allclose(np.asarray(gated.objective), np.asarray(plain.objective), rtol=1e-13)


def test_penicillin_batch_fits_converge_without_stalls():
    """Penicillin's uncentred responses (~23 +- 1) put f's rounding level near
    1e-10: a line search that accepts ever shorter steps whose change of f is
    below it runs 1-2% of fits to max_iter. Only a full step may pass on
    rounding alone and a failed search restarts H_inv, so no fit stalls. Each
    of 300 simulated responses is refitted by BFGS from one start, three times
    the model's theta, away from its own optimum (a bootstrap's refits start at
    their moment estimates, which for this balanced design are their optima:
    no line search would run)."""
    formula, data = CASES["Penicillin"]
    fit = lmm_jax.fit(formula, load_data(data))
    Y = np.asarray(lmm_jax.simulate(fit, 300, key=1))
    res = fit.model.fit_batch(Y, start=3.0 * np.asarray(fit.theta), ddf="none")
    assert res.n_failed == 0 and bool(np.all(res.converged))
    assert int(np.min(res.iterations)) >= 3 and int(np.max(res.iterations)) <= 20


def _log_cosh(theta):
    # in phi = log(theta): log cosh(5 (phi - 1)), minimum 0 at phi = 1. From phi = 1.5 the Newton step
    # -sinh(10 x) / 10 (x = phi - 1) is capped at max_step = 2 and lands at phi = -0.5, where f is
    # higher: the full trial fails Armijo and the search halves to phi = 0.5 (equal f, fails) and 1.0
    return jnp.log(jnp.cosh(5.0 * (jnp.log(theta[0]) - 1.0)))


def test_newton_recovers_from_a_failed_full_step():
    """Newton's pass takes its derivatives at the full step; when that step fails Armijo the step is
    halved on f alone and the next pass is taken where the search stopped (not at the rejected
    point). Here the first full step overshoots: the fit must still land on the minimum, single and
    vmapped, and a wrong point kept after the search would not."""
    phi0 = jnp.asarray([1.5])
    res = jax.jit(lambda p: newton_minimize(_log_cosh, p, jnp.asarray([True]), (1,)))(phi0)
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.phi), [1.0], atol=1e-9)
    assert float(res.objective) < 1e-15
    assert int(res.iterations) <= 3
    batch = jax.jit(jax.vmap(lambda p: newton_minimize(_log_cosh, p, jnp.asarray([True]), (1,))))(
        jnp.asarray([[1.5], [1.02], [0.3]]))
    assert bool(jnp.all(batch.converged))
    np.testing.assert_allclose(np.asarray(batch.phi)[:, 0], 1.0, atol=1e-9)


def test_newton_reaches_the_optimum_to_rounding_from_any_start():
    """Near the optimum sleepstudy's ML deviance (1752) is noisy at 4e-11, the size of the last
    steps' predicted gains. There Newton takes a full step that lowers the decrement even if Armijo,
    comparing noise, fails it; and at the stop (decrement < 1e-12) it takes the step it has computed
    (the polish), which fixes theta to O(dec), not O(sqrt(dec)). Without them the fits from nearby
    starts ended 2 to 4 iterations in, up to 2e-7 apart in theta (the covariance up to 1.1e-5
    relative from the optimum, out of lme4's 1e-5 band: seen on an H100 and with XLA:CPU's older
    fusion emitters); with them every end is the point where the gradient vanishes."""
    m = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", load_data("sleepstudy"))
    ks = m.structure.ks
    f = _objective(m, reml=False)
    fit = jax.jit(lambda p, a: newton_minimize(f, p, a, ks))
    rng = np.random.default_rng(0)
    thetas, iterations = [], set()
    for _ in range(8):
        phi0, act0 = phi_from_theta(np.asarray([0.9292, 0.0182, 0.2226]) * (1 + 0.05 * rng.normal(size=3)), ks)
        res = fit(jnp.asarray(phi0), jnp.asarray(act0))
        assert bool(res.converged)
        thetas.append(np.asarray(res.theta))
        iterations.add(int(res.iterations))
    assert len(iterations) > 1                                   # the stops do come at different points
    np.testing.assert_allclose(np.array(thetas), np.broadcast_to(thetas[0], (8, 3)), rtol=0, atol=1e-10)
    assert np.max(np.abs(np.asarray(jax.jit(jax.grad(f))(jnp.asarray(thetas[0]))))) < 1e-8   # the optimum (|g| ~ 1e-11)
    default = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", load_data("sleepstudy")).fit(reml=False)
    np.testing.assert_allclose(np.asarray(default.theta), thetas[0], rtol=0, atol=1e-10)


# -- the shared pieces ------------------------------------------------------------------------------
def test_settings_differ_only_where_named():
    """Newton and BFGS share every setting but the tolerance and the search length."""
    assert (NEWTON.tol, BFGS.tol) == (1e-12, 1e-11)
    assert (NEWTON.max_halvings, BFGS.max_halvings) == (41, 8)
    assert NEWTON.armijo == 1e-4 and NEWTON.stall == 1e-6 and NEWTON.max_iter == 200
    assert NEWTON._replace(tol=BFGS.tol, max_halvings=BFGS.max_halvings) == BFGS


def test_armijo_and_backtrack():
    f0, slope = jnp.asarray(1.0), jnp.asarray(-2.0)

    def f_at(a):                                  # f along the step: 1 - 2 a + 4 a^2
        return 1.0 - 2.0 * a + 4.0 * a * a

    assert bool(armijo(f0, slope, 1.0, f0 - 2e-4, 1e-4)) and not bool(armijo(f0, slope, 1.0, f0, 1e-4))
    assert not bool(armijo(f0, slope, 1.0, jnp.asarray(-jnp.inf), 1e-4))   # f must be finite
    # the full step (f = 3) has failed; 1/2 gives f = 1, no decrease; 1/4 gives 0.75
    alpha, fa, found = backtrack(f_at, f0, slope, jnp.asarray(True), NEWTON)
    assert bool(found) and float(alpha) == 0.25 and float(fa) == 0.75
    alpha, fa, found = backtrack(f_at, f0, slope, jnp.asarray(False), NEWTON)        # not live: no search
    assert not bool(found) and float(alpha) == 1.0 and float(fa) == 1.0
    for settings in (NEWTON, BFGS):                                                   # never passes
        alpha, _, found = backtrack(lambda a: f0 + 1.0, f0, slope, jnp.asarray(True), settings)
        assert not bool(found) and float(alpha) == 2.0 ** -settings.max_halvings
    # under vmap a fit that is not searching does not change its result
    alphas, _, founds = jax.vmap(lambda live: backtrack(f_at, f0, slope, live, NEWTON))(jnp.asarray([True, False]))
    np.testing.assert_array_equal(np.asarray(founds), [True, False])
    assert float(alphas[0]) == 0.25


def test_step_cap_eigenvalue_floor_and_masking():
    d, dec = capped(jnp.asarray([4.0, -1.0]), jnp.asarray([-1.0, 0.0]), 2.0)
    np.testing.assert_array_equal(np.asarray(d), [2.0, -0.5])          # capped to 2 in the infinity norm
    assert float(dec) == 2.0                                           # -g'd / 2 of the uncapped d
    # |H|^{-1} of an indefinite, nearly singular H: |-4| and 1e-12 raised to 1e-8 * 4
    np.testing.assert_allclose(np.asarray(inverse_hessian_start(jnp.diag(jnp.asarray([-4.0, 1e-12])))),
                               np.diag([0.25, 1 / 4e-8]), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(masked(jnp.asarray([[1.0, 2.0], [3.0, 4.0]]), jnp.asarray([1.0, 0.0]))),
                                  [[1.0, 0.0], [0.0, 1.0]])


def test_boundary_rule():
    """A diagonal entry below zero_tol is zeroed if f does not rise; a zeroed
    one is re-activated at reactivate_at if f drops."""
    ks = (1, 1)
    diag = jnp.asarray(diagonal_mask(ks))
    live = jnp.asarray(True)

    def f_of(target):
        def f_phi(phi, active):
            th = theta_from_phi(phi, ks, active)
            return (th[0] - target) ** 2 + (th[1] - 1.0) ** 2
        return f_phi

    phi = jnp.log(jnp.asarray([1e-4, 0.5]))
    on = jnp.asarray([True, True])
    for target, zeroed in ((0.0, True), (1.0, False)):                 # f falls / rises at theta_0 = 0
        f_phi = f_of(target)
        active, f, z = zero_tiny(f_phi, phi, on, f_phi(phi, on), diag, NEWTON, live)
        assert bool(z) == zeroed and bool(active[0]) == (not zeroed) and bool(active[1])
        assert float(f) == float(f_phi(phi, active))
    f_phi = f_of(0.0)
    _, _, z = zero_tiny(f_phi, phi, on, f_phi(phi, on), diag, NEWTON, jnp.asarray(False))
    assert not bool(z)                                                 # not live: nothing tested
    off = jnp.asarray([False, True])
    for target, back in ((1.0, True), (0.0, False)):                   # f falls / rises off zero
        f_phi = f_of(target)
        phi2, active, f, b = reactivate(f_phi, phi, off, f_phi(phi, off), diag, NEWTON, live)
        assert bool(b) == back and bool(active[0]) == back
        assert float(phi2[0]) == (float(np.log(NEWTON.reactivate_at)) if back else float(phi[0]))


def test_bfgs_without_iterations_returns_its_start():
    """``max_iter=0`` (batch.fit_products' first stage) evaluates the start only."""
    phi0 = jnp.asarray([1.5])
    res = jax.jit(lambda p: bfgs_minimize(_log_cosh, p, jnp.asarray([True]), (1,), jnp.eye(1), max_iter=0))(phi0)
    assert int(res.iterations) == 0 and not bool(res.converged)
    np.testing.assert_array_equal(np.asarray(res.phi), [1.5])
    assert float(res.objective) == float(_log_cosh(jnp.exp(phi0)))


def test_a_vmapped_loop_starts_with_its_whole_state_batched(monkeypatch):
    """Under vmap the loop's state starts batched (batched_like), so lax.while_loop's batching rule
    batches the loop body once to find which entries are batched, not once per step by which
    batching spreads through the state (three times without it)."""
    from jax._src.interpreters import batching
    real = batching.batch_jaxpr
    sizes = []

    def counted(closed, *args, **kwargs):
        sizes.append(len(closed.jaxpr.eqns))
        return real(closed, *args, **kwargs)

    monkeypatch.setattr(batching, "batch_jaxpr", counted)

    def f(theta):
        return jnp.sum((theta - 0.5) ** 2)

    jax.make_jaxpr(jax.vmap(lambda p: newton_minimize(f, p, jnp.ones(1, bool), (1,)).objective))(jnp.zeros((4, 1)))
    assert sizes and sizes.count(max(sizes)) == 1            # the loop's body, the largest jaxpr batched
    assert float(batched_like(jnp.asarray(2.5), jnp.asarray(jnp.nan))) == 2.5

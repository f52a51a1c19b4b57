"""The batch optimiser (BFGS) against the single-fit one (Newton).

``bfgs_minimize`` is the fast path of every batched fit and bootstrap; Newton
with the exact Hessian is the slow path it is checked against: same optimum,
same boundary (singular) decisions, and the batch-wide branches taken under
``vmap(axis_name=...)`` change no result.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.core.likelihood import profiled_deviance
from lmm_jax.core.optimize import bfgs_minimize, newton_minimize
from lmm_jax.core.parametrization import phi_from_theta, theta_start

from conftest import load_data

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),       # k = 2, correlated
    "Penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),  # crossed, dense Schur block
    "Dyestuff2": ("Yield ~ 1 + (1 | Batch)", "Dyestuff2"),                   # singular: optimum on the boundary
}
REML = {"sleepstudy": True, "Penicillin": False, "Dyestuff2": True}


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


def test_penicillin_bootstrap_converges_without_stalls():
    """Penicillin's uncentred responses (~25 +- 1) put f's rounding level near
    1e-10: a line search that accepts ever shorter steps whose change of f is
    below it runs 1-2% of replicates to max_iter. Only a full step may pass on
    rounding alone, a failed search restarts H_inv, and the bootstrap fits
    y - X beta (rounding ~1e-13): no replicate stalls."""
    formula, data = CASES["Penicillin"]
    fit = lmm_jax.fit(formula, load_data(data))
    boot = fit.bootstrap(300, key=1, chunk_size=300)
    assert boot.n_failed == 0 and boot.n_nonconverged == 0
    assert int(boot.replicates.iterations.max()) <= 20


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
    res = newton_minimize(_log_cosh, phi0, jnp.asarray([True]), (1,))
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.phi), [1.0], atol=1e-9)
    assert float(res.objective) < 1e-15
    assert int(res.iterations) <= 3
    batch = jax.vmap(lambda p: newton_minimize(_log_cosh, p, jnp.asarray([True]), (1,)))(
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
    assert np.max(np.abs(np.asarray(jax.grad(f)(jnp.asarray(thetas[0]))))) < 1e-8   # at the optimum (|g| ~ 1e-11)
    default = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", load_data("sleepstudy")).fit(reml=False)
    np.testing.assert_allclose(np.asarray(default.theta), thetas[0], rtol=0, atol=1e-10)

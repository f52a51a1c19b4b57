"""lme4-style convergence diagnostics: gradient and Hessian checks at the optimum."""

from __future__ import annotations

import numpy as np
import pytest

import lmm_jax
from lmm_jax import ConvergenceError, ConvergenceWarning
from lmm_jax.core.diagnostics import assess
from tests.helpers import robust_fit


# == convergence diagnostics ====================================================
def test_diagnostics_at_a_converged_fit(base_fit):
    d = base_fit.diagnostics
    assert d.ok and d.messages == ()
    assert d.max_gradient < 1e-4 and d.min_eigenvalue > 0
    assert d.as_dict()["ok"] is True


def test_diagnostics_flag_a_stopped_fit(frame):
    model = lmm_jax.LMM("y ~ x + (1 | g)", frame)
    with pytest.warns(ConvergenceWarning, match=r"max\|grad\|"):
        fit = model.fit(start=np.array([20.0]), max_iter=1)
    assert not fit.diagnostics.gradient_ok and fit.diagnostics.max_gradient > 2e-3
    with pytest.raises(ConvergenceError, match="stopped after 1 iterations"):
        model.fit(start=np.array([20.0]), max_iter=1, throw=True)


def test_diagnostics_hessian_checks():
    g = np.array([1e-5, 2e-5])
    assert assess(g, np.diag([2.0, 3.0]), np.array([False, False])).ok
    bad = assess(g, np.array([[1.0, 0.0], [0.0, -2.0]]), np.array([False, False]))
    assert not bad.hessian_ok and "1 negative eigenvalue" in bad.messages[-1]
    flat = assess(g, np.diag([1e-9, 3.0]), np.array([False, False]))
    assert not flat.hessian_ok and "close to zero" in flat.messages[-1]
    # a boundary entry is excluded: its gradient need not vanish
    at_boundary = assess(np.array([5.0, 1e-6]), np.diag([-1.0, 3.0]), np.array([True, False]))
    assert at_boundary.ok and at_boundary.gradient[0] == 0.0


def test_diagnostics_from_newton_equal_autodiff_in_theta(x64):
    """Fast path (the optimiser's phi derivatives mapped to theta) against the
    slow one (autodiff of the objective in theta), for a 2x2 term."""
    import jax.numpy as jnp

    from lmm_jax.core.diagnostics import check_convergence, theta_derivatives, theta_derivatives_from_phi
    from lmm_jax.core.estimates import fit_theta
    from lmm_jax.core.parametrization import phi_from_theta
    from lmm_jax.core.start import default_start

    ref, fit = robust_fit("balanced")
    m = fit.model
    phi0, active0 = phi_from_theta(default_start(m), m.structure.ks)        # the fit's own start
    opt = fit_theta(m.products, m.response, jnp.asarray(phi0), jnp.asarray(active0), m.structure, True, 200)
    g_fast, H_fast = theta_derivatives_from_phi(np.asarray(opt.theta), np.asarray(opt.gradient),
                                                np.asarray(opt.hessian), m.structure.ks)
    g_slow, H_slow = theta_derivatives(opt.theta, m.products, m.response, m.structure, True)
    np.testing.assert_allclose(g_fast, np.asarray(g_slow), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(H_fast, np.asarray(H_slow), rtol=1e-8, atol=1e-8)
    slow = check_convergence(opt.theta, m.products, m.response, m.structure, True)
    np.testing.assert_allclose(fit.diagnostics.hessian_eigenvalues, slow.hessian_eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(fit.diagnostics.max_gradient, slow.max_gradient, rtol=1e-6, atol=1e-12)

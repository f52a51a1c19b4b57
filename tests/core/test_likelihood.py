"""The blocked, profiled deviance against slow, obvious computations.

* golden values at fixed theta (not only the optimum) against a dense n x n
  marginal likelihood, for every kind of term layout;
* autodiff gradients and Hessians against finite differences;
* the fitted result at theta against GLS / dense BLUP formulas.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.core.likelihood import deviance_at_sigma, factorize, profiled_deviance
from lmm_jax.core.parametrization import lambdas, n_theta, phi_from_theta, theta_from_phi

pytestmark = pytest.mark.usefixtures("x64")   # lmm_jax's internals, called outside its entry points

MODELS = {
    "slope": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    "nested": ("strength ~ 1 + (1 | batch/cask)", "Pastes"),
    "zerocorr": ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
    "factors": ("angle ~ recipe * temp + (1 | recipe:replicate)", "cake"),
    "k3": ("Reaction ~ Days + I(Days**2) + (Days + I(Days**2) | Subject)", "sleepstudy"),
    "slope_plus_crossed": ("Reaction ~ Days + (Days | Subject) + (1 | Days)", "sleepstudy"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    formula, data = MODELS[request.param]
    return lmm_jax.LMM(formula, lmm_jax.datasets.load(data))


def dense_Z_lambda(model, theta):
    """Dense Z and Lambda (n x q, q x q) in the model's term order."""
    d = model.design
    Zs, Ls = [], []
    for t, lam in zip(d.terms, lambdas(jnp.asarray(theta), model.structure.ks)):
        Zt = np.zeros((d.n, t.m * t.k))
        for c in range(t.k):
            Zt[np.arange(d.n), t.codes * t.k + c] = t.Z[:, c]
        Zs.append(Zt)
        Ls.append(np.kron(np.eye(t.m), np.asarray(lam)))
    Z = np.hstack(Zs)
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    o = 0
    for L in Ls:
        Lam[o:o + L.shape[0], o:o + L.shape[0]] = L
        o += L.shape[0]
    return Z, Lam


def dense_deviance(model, theta, reml):
    """-2 log L from the n x n marginal covariance V0 = I + Z Lambda Lambda'Z',
    beta by GLS and sigma^2 profiled: the textbook formula the blocked code avoids."""
    d = model.design
    Z, Lam = dense_Z_lambda(model, theta)
    V0 = np.eye(d.n) + Z @ Lam @ Lam.T @ Z.T
    Vi = np.linalg.inv(V0)
    XtViX = d.X.T @ Vi @ d.X
    beta = np.linalg.solve(XtViX, d.X.T @ Vi @ d.y)
    r = d.y - d.X @ beta
    rss = r @ Vi @ r
    ld = np.linalg.slogdet(V0)[1]
    if reml:
        nu = d.n - d.p
        return ld + np.linalg.slogdet(XtViX)[1] + nu * (1 + np.log(2 * np.pi * rss / nu)), beta
    return ld + d.n * (1 + np.log(2 * np.pi * rss / d.n)), beta


def random_theta(model, seed):
    rng = np.random.default_rng(seed)
    ks = model.structure.ks
    phi = rng.normal(scale=0.5, size=n_theta(ks))
    return np.asarray(theta_from_phi(jnp.asarray(phi), ks))


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("seed", [0])
def test_profiled_deviance_equals_dense_marginal_likelihood(model, reml, seed):
    theta = random_theta(model, seed)
    blocked = float(jax.jit(model.deviance_function(reml=reml, param="theta"))(jnp.asarray(theta)))
    dense, beta = dense_deviance(model, theta, reml)
    assert blocked == pytest.approx(dense, rel=1e-11, abs=1e-8)
    fit = lmm_jax.LMMResult.from_theta(model, theta, reml=reml)
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-9, atol=1e-9)


def test_conditional_modes_and_variances_equal_dense_formulas(model):
    """b = Lambda (Lambda'Z'Z Lambda + I)^{-1} Lambda'Z'(y - X beta), Var(b|y) = sigma^2 Lambda (...)^{-1} Lambda'."""
    theta = random_theta(model, 3)
    d = model.design
    fit = lmm_jax.LMMResult.from_theta(model, theta, reml=True)
    Z, Lam = dense_Z_lambda(model, theta)
    P = np.linalg.inv(Lam.T @ Z.T @ Z @ Lam + np.eye(Z.shape[1]))
    b = Lam @ P @ Lam.T @ Z.T @ (d.y - d.X @ fit.beta)
    sd = fit.sigma * np.sqrt(np.diag(Lam @ P @ Lam.T))
    o = 0
    for t, bt in zip(d.terms, fit.b):
        np.testing.assert_allclose(bt.ravel(), b[o:o + t.m * t.k], rtol=1e-8, atol=1e-8)
        o += t.m * t.k
    sds = np.concatenate([np.asarray(fit.ranef_sd[t.group][list(t.columns)].to_numpy()).ravel() for t in
                          _unique_groups(d.terms)])
    got = np.concatenate([np.sqrt(np.diagonal(
        np.asarray(c), axis1=1, axis2=2)).ravel() for c in _cond_cov(model, theta)]) * fit.sigma
    np.testing.assert_allclose(got, sd, rtol=1e-8, atol=1e-10)
    assert np.all(np.isfinite(sds))


def _unique_groups(terms):
    seen, out = set(), []
    for t in terms:
        if t.group not in seen:
            seen.add(t.group)
            out.append(t)
    return out


def _cond_cov(model, theta):
    from lmm_jax.core.likelihood import conditional_covariances
    s = model.structure

    @jax.jit
    def covariances(th, dp, rp):
        return conditional_covariances(th, factorize(th, dp, rp, s), s)

    return covariances(jnp.asarray(theta), model.products, model.response)


def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def test_autodiff_gradient_and_hessian_match_finite_differences(model):
    reml = model.structure.p > 1  # both criteria are covered across the models
    f = jax.jit(model.deviance_function(reml=reml, param="phi"))
    phi = np.asarray(phi_from_theta(random_theta(model, 5), model.structure.ks)[0])
    gfun = jax.jit(jax.grad(f))
    g = np.asarray(gfun(jnp.asarray(phi)))
    g_fd = _fd_grad(lambda x: float(f(jnp.asarray(x))), phi)
    np.testing.assert_allclose(g, g_fd, rtol=1e-5, atol=1e-5)
    H = np.asarray(jax.jit(jax.hessian(f))(jnp.asarray(phi)))
    H_fd = np.stack([_fd_grad(lambda x: float(gfun(jnp.asarray(x))[i]), phi, 1e-5) for i in range(len(phi))])
    np.testing.assert_allclose(H, H_fd, rtol=1e-4, atol=1e-4)


def test_deviance_at_sigma_is_minimised_at_profiled_sigma(model):
    """Profiling sigma out of devfun_vp gives the profiled deviance."""
    theta = jnp.asarray(random_theta(model, 7))
    s = model.structure

    @jax.jit
    def criteria(sigma, reml, dp, rp):
        # profiled, at sigma, and d/dsigma at sigma; REML and ML share one compiled call (reml is traced)
        def at(sg):
            return deviance_at_sigma(theta, sg, dp, rp, s, reml)
        return profiled_deviance(theta, dp, rp, s, reml), at(sigma), jax.grad(at)(sigma)

    for reml in (True, False):
        fit = lmm_jax.LMMResult.from_theta(model, theta, reml=reml)
        prof, at, dsig = criteria(jnp.asarray(fit.sigma), jnp.asarray(reml), model.products, model.response)
        assert float(at) == pytest.approx(float(prof), rel=1e-12)
        assert abs(float(dsig)) < 1e-6 * abs(float(prof))


# -- small dense kernels: jnp loops instead of LAPACK (lmm_jax/core/linalg.py) -------------------------
@pytest.mark.parametrize("k", [3, 7, 20, 64])
def test_small_cholesky_and_solves_match_lapack(k):
    """The unrolled (k <= 6) and fori_loop (k <= 64) kernels against LAPACK:
    values, and directional derivatives along symmetric directions (the loop
    reads only the lower triangle, so its raw gradient is lower-triangular;
    along every symmetric dM, which is all the likelihood produces, they agree)."""
    from jax.scipy.linalg import solve_triangular

    from lmm_jax.core.linalg import batched_backward_solve, batched_cholesky, batched_forward_solve

    rng = np.random.default_rng(k)
    A = rng.normal(size=(4, k, k))
    M = jnp.asarray(A @ A.transpose(0, 2, 1) + k * np.eye(k))
    B = jnp.asarray(rng.normal(size=(4, k, 3)))
    E = rng.normal(size=(4, k, k))
    E = jnp.asarray(E + E.transpose(0, 2, 1))
    L, L_ref = batched_cholesky(M), jnp.linalg.cholesky(M)
    np.testing.assert_allclose(L, L_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batched_forward_solve(L, B), solve_triangular(L_ref, B, lower=True), atol=1e-12)
    np.testing.assert_allclose(batched_backward_solve(L, B), solve_triangular(L_ref, B, lower=True, trans="T"),
                               atol=1e-12)

    def logdet(chol):
        return lambda M: jnp.sum(jnp.log(jnp.diagonal(chol(M), axis1=-2, axis2=-1)))

    for f, f_ref in [(logdet(batched_cholesky), logdet(jnp.linalg.cholesky))]:
        np.testing.assert_allclose(jax.jvp(f, (M,), (E,))[1], jax.jvp(f_ref, (M,), (E,))[1], rtol=1e-10)
        hvp = jnp.sum(jax.jvp(jax.grad(f), (M,), (E,))[1] * E)
        hvp_ref = jnp.sum(jax.jvp(jax.grad(f_ref), (M,), (E,))[1] * E)
        np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-10)


@pytest.mark.parametrize("k", [7, 20, 64])
def test_single_matrix_goes_to_lapack_and_equals_the_loops(k):
    """A single matrix beyond the unrolled sizes (a single fit's dense block) is factored and solved by
    LAPACK, the same matrix stacked or vmapped by the loops: equal values and derivatives, both reading
    only the lower triangle (the upper is garbage here), and LAPACK in the compiled code of the first only."""
    from lmm_jax.core.linalg import (_elementwise_backward_solve, _elementwise_cholesky, _elementwise_forward_solve,
                                     batched_backward_solve, batched_cholesky, batched_forward_solve)

    rng = np.random.default_rng(k)
    A = rng.normal(size=(k, k))
    M = A @ A.T + k * np.eye(k)
    M_lower = jnp.asarray(np.tril(M) + np.triu(rng.normal(size=(k, k)), 1))
    B = jnp.asarray(rng.normal(size=(k, 3)))
    E = rng.normal(size=(k, k))
    E = jnp.asarray(np.tril(E + E.T))

    def solves(chol, fwd, bwd):
        def f(M):
            L = chol(M)
            return jnp.sum(jnp.log(jnp.diagonal(L))) + jnp.sum(bwd(L, fwd(L, B)) * B)
        return f

    fast = solves(batched_cholesky, batched_forward_solve, batched_backward_solve)
    loops = solves(_elementwise_cholesky, _elementwise_forward_solve, _elementwise_backward_solve)

    @jax.jit
    def checks(M_lower, E):
        # each path's factor, value, directional derivative and Hessian-vector product in one compiled call
        # (op by op, each primitive would compile on its own)
        def of(chol, f):
            return (chol(M_lower), f(M_lower), jax.jvp(f, (M_lower,), (E,))[1],
                    jnp.sum(jax.jvp(jax.grad(f), (M_lower,), (E,))[1] * E))
        return of(batched_cholesky, fast), of(_elementwise_cholesky, loops)

    (L, value, jvp, hvp), (L_loops, value_loops, jvp_loops, hvp_loops) = checks(M_lower, E)
    np.testing.assert_allclose(L, L_loops, rtol=0, atol=1e-12)
    np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=0, atol=1e-12)
    np.testing.assert_allclose(value, value_loops, rtol=1e-13)
    np.testing.assert_allclose(jvp, jvp_loops, rtol=1e-10)
    np.testing.assert_allclose(hvp, hvp_loops, rtol=1e-10)
    assert 'custom_call_target="lapack' in jax.jit(fast).lower(M_lower).compile().as_text()
    stacked = jnp.stack([M_lower, M_lower])
    assert 'custom_call_target="lapack' not in jax.jit(jax.vmap(fast)).lower(stacked).compile().as_text()


@pytest.mark.parametrize("formula, data", [("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
                                           ("Reaction ~ Days + (Days | Subject)", "sleepstudy")])
def test_batched_objective_calls_no_lapack(formula, data):
    """Batched LAPACK calls on CPU schedule their batch on XLA's intra-op pool
    and block a pool thread; two at once deadlock a 2-core machine (a bootstrap
    hangs). A vmapped value-and-gradient of a model whose dense blocks are
    small must compile to no LAPACK custom call at all."""
    m = lmm_jax.LMM(formula, lmm_jax.datasets.load(data))
    s = m.structure
    Y = jnp.asarray(np.random.default_rng(0).normal(size=(m.design.n, 8))) + jnp.asarray(m.design.y)[:, None]
    rps = jax.vmap(m.response_products, in_axes=1)(Y)
    theta = jnp.asarray(lmm_jax.core.parametrization.theta_start(s.ks)) * 0.7

    def f(rp):
        return jax.value_and_grad(lambda th: profiled_deviance(th, m.products, rp, s, True))(theta)

    hlo = jax.jit(jax.vmap(f)).lower(rps).compile().as_text()
    assert 'custom_call_target="lapack' not in hlo


# -- large dense blocks: LAPACK, one matrix per call under vmap (lmm_jax/core/linalg.py) ----------------
def batched_lapack_calls(hlo: str) -> tuple[int, list[str]]:
    """``(number of LAPACK custom calls, those whose operands carry a batch dimension)`` in compiled HLO."""
    calls, batched = 0, []
    for line in hlo.splitlines():
        target = re.search(r'custom_call_target="(lapack_\w+)"', line)
        operands = re.search(r"operand_layout_constraints=\{(.*?)\}, ", line)
        if target and operands:
            calls += 1
            if any(dims.count(",") > 1 for dims in re.findall(r"\[([\d,]*)\]", operands.group(1))):
                batched.append(target.group(1))
    return calls, batched


def test_large_cholesky_and_solves_give_lapack_one_matrix_per_call():
    """Above LOOP_MAX the factor and solves are LAPACK's (lapack_cholesky, lapack_solve): the same
    values, gradients and Hessians as jnp.linalg.cholesky and solve_triangular, under vmap too. There
    each LAPACK call gets one matrix: jaxlib runs a batched call's chunks on XLA's CPU pool while the
    pool thread that made the call waits, and two such calls at once left a 2-core machine's pool
    waiting for ever (a bootstrap of a crossed design over 64 levels hung). The reference's compiled
    code does batch them, which shows the HLO check sees batches."""
    from jax.scipy.linalg import solve_triangular

    from lmm_jax.core.linalg import lapack_cholesky, lapack_solve

    k = 80
    rng = np.random.default_rng(k)
    A = rng.normal(size=(3, k, k))
    M = jnp.asarray(A @ A.transpose(0, 2, 1) + k * np.eye(k))
    B = jnp.asarray(rng.normal(size=(3, k, 2)))
    bend = jnp.asarray(np.outer(np.arange(k), np.arange(k)) / k ** 2)

    def objective(chol, solve):
        def f(t, M, B):
            L = chol(M + t[0] * jnp.eye(k) + t[1] * bend)
            X = solve(L, solve(L, t[1] * B), True)
            return jnp.sum(jnp.log(jnp.diagonal(L))) + jnp.sum(X * B)
        return f

    f = objective(lapack_cholesky, lapack_solve)
    f_ref = objective(jnp.linalg.cholesky, lambda L, B, tr=False: solve_triangular(L, B, lower=True, trans=int(tr)))
    t = jnp.array([0.3, 1.7])

    def value_gradient_hessian(g):
        return lambda t, M, B: (g(t, M, B), jax.grad(g)(t, M, B), jax.hessian(g)(t, M, B))

    mine, ref = (jax.jit(jax.vmap(value_gradient_hessian(g), in_axes=(None, 0, 0))).lower(t, M, B).compile()
                 for g in (f, f_ref))
    # the reference's numbers one matrix at a time: its vmapped code (ref, compiled only) is the hazard above
    one_ref = jax.jit(value_gradient_hessian(f_ref))
    want = [np.stack(parts) for parts in zip(*(one_ref(t, M[i], B[i]) for i in range(len(M))))]
    for a, b in zip(mine(t, M, B), want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    calls, batched = batched_lapack_calls(mine.as_text())
    assert calls > 0 and batched == []
    assert batched_lapack_calls(ref.as_text())[1]


@pytest.mark.parametrize("formula, levels", [("y ~ x + (1 | g) + (1 | h)", 40), ("y ~ x + (1 | g) + (1 | h)", 66),
                                             ("y ~ x + (1 | g) + (x | h)", 66)],
                         ids=["scalar_sparse_40", "scalar_sparse_66", "dense_rule_66"])
def test_batched_fits_give_lapack_no_batch(formula, levels):
    """Crossed designs with scalar terms (sparse coupling, the closed-form rules) or a slope (the
    generic rule): the vmapped value, Hessian and factor, with theta varying as in batched fits and
    profiles, call no LAPACK at all for a second block of at most 64 columns (40 levels), and pass
    it one matrix per call above (66 levels; 132 columns with the slope)."""
    rng = np.random.default_rng(3)
    n = 600
    data = pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n),
                         "g": rng.integers(0, 70, n).astype(str), "h": rng.integers(0, levels, n).astype(str)})
    m = lmm_jax.LMM(formula, data)
    s = m.structure
    rps = jax.vmap(m.response_products, in_axes=1)(jnp.asarray(rng.normal(size=(n, 4))))
    thetas = jnp.asarray(lmm_jax.core.parametrization.theta_start(s.ks)) * jnp.linspace(0.5, 1.1, 4)[:, None]

    def f(theta, rp):                     # theta differs between fits, so do the factors
        dev = lambda th: profiled_deviance(th, m.products, rp, s, True)          # noqa: E731
        return dev(theta), jax.hessian(dev)(theta), factorize(theta, m.products, rp, s).C2

    calls, batched = batched_lapack_calls(jax.jit(jax.vmap(f)).lower(thetas, rps).compile().as_text())
    assert (calls > 0 if s.q_rest > 64 else calls == 0) and batched == []

"""The public pure functions: ``make_deviance`` (both data forms) and ``make_estimates``.

* golden values at fixed theta from lme4's ``devFunOnly``;
* the data-as-argument form against the closure form, against fits (the
  optimum's criterion and estimates) and against models built on each response;
* grad / hessian / vmap over responses and over stacked datasets, jit of a
  user's function that calls them (traced once);
* the errors raised inside a user's code: 64-bit types off, float32 inputs,
  products of another structure or with a batch axis not vmapped over.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.core.parametrization import phi_from_theta, theta_from_phi

pytestmark = pytest.mark.usefixtures("x64")   # the pure functions run in the user's code, which turns x64 on (README)

SLEEP = "Reaction ~ Days + (Days | Subject)"

# lme4 1.1-31 (R 4.2.2), the deviance function alone, at fixed theta on lme4's own sleepstudy:
#   f <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = reml, devFunOnly = TRUE)
#   sprintf("%.12f", f(theta))
LME4_DEVFUN = [  # (reml, theta, value)
    (True, (1.0, 0.0, 1.0), 1773.680330616000),
    (True, (0.9, -0.05, 0.25), 1744.703881075501),
    (False, (1.0, 0.0, 1.0), 1784.642296192447),
    (False, (0.9, -0.05, 0.25), 1753.040829280540),
]

MODELS = {  # one per layout of the coupling block: none, dense (crossed), sparse (nested)
    "slope": (SLEEP, "sleepstudy"),
    "crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    "nested": ("strength ~ 1 + (1 | batch/cask)", "Pastes"),
}


@pytest.fixture(scope="module")
def sleep():
    return lmm_jax.LMM(SLEEP, lmm_jax.datasets.load("sleepstudy"))


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    formula, data = MODELS[request.param]
    return lmm_jax.LMM(formula, lmm_jax.datasets.load(data))


def _theta(model, seed):
    """A theta away from the optimum: lme4's start, perturbed."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(scale=0.5, size=model.n_theta)
    return np.asarray(theta_from_phi(jnp.asarray(phi), model.structure.ks))


def _responses(model, n, seed):
    """``n`` responses on the model's design: y plus noise of its own scale."""
    y = np.asarray(model.design.y)
    rng = np.random.default_rng(seed)
    return jnp.asarray(y[:, None] + rng.normal(scale=y.std(), size=(y.size, n)))


@pytest.mark.parametrize("reml, theta, value", LME4_DEVFUN)
def test_golden_lme4_devfun_at_fixed_theta(sleep, reml, theta, value):
    theta = jnp.asarray(theta)
    pure = lmm_jax.make_deviance(sleep, reml=reml, param="theta", data="argument")
    closed = lmm_jax.make_deviance(sleep, reml=reml, param="theta")
    assert float(pure(theta, sleep.cross_products())) == pytest.approx(value, rel=1e-12)
    assert float(closed(theta)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("param, reml", [("theta", True), ("phi", False)])
def test_argument_form_equals_closure_form(model, param, reml):
    """Value, gradient and Hessian of both forms in one ``jax.jit`` of a user's function (op by op, the
    Hessians cost about three times its compile time): in theta by REML and in phi by ML, so each
    parametrisation and each criterion is checked (both criteria of both forms against lme4's devfun:
    test_golden_lme4_devfun_at_fixed_theta)."""
    theta = _theta(model, 1)
    x = jnp.asarray(theta if param == "theta" else phi_from_theta(theta, model.structure.ks)[0])
    pure = model.deviance_function(reml=reml, param=param, data="argument")
    closed = model.deviance_function(reml=reml, param=param)

    @jax.jit
    def both(x, products):
        return ((pure(x, products), jax.grad(pure)(x, products), jax.hessian(pure)(x, products)),
                (closed(x), jax.grad(closed)(x), jax.hessian(closed)(x)))

    (f_pure, g_pure, H_pure), (f_closed, g_closed, H_closed) = both(x, model.cross_products())
    assert float(f_pure) == pytest.approx(float(f_closed), rel=1e-13)
    np.testing.assert_allclose(g_pure, g_closed, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(H_pure, H_closed, rtol=1e-10, atol=1e-8)


def test_equals_fit_objective_and_estimates_at_the_optimum(model):
    for reml in (True, False):
        fit = model.fit(reml=reml)
        theta = jnp.asarray(fit.theta)
        # each function run as one jitted call (as a user's jit would), not op by op
        pure = jax.jit(lmm_jax.make_deviance(model, reml=reml, param="theta", data="argument"))
        products = model.cross_products()
        assert float(pure(theta, products)) == pytest.approx(fit.objective, rel=1e-10)
        for est in (jax.jit(lmm_jax.make_estimates(model, reml=reml))(theta),
                    jax.jit(lmm_jax.make_estimates(model, reml=reml, data="argument"))(theta, products)):
            assert isinstance(est, lmm_jax.Estimates)
            np.testing.assert_array_equal(est.theta, theta)
            assert float(est.deviance) == pytest.approx(fit.objective, rel=1e-10)
            assert float(est.sigma) == pytest.approx(fit.sigma, rel=1e-9)
            np.testing.assert_allclose(est.beta, fit.beta, rtol=1e-9)
            np.testing.assert_allclose(est.vcov, fit.vcov.to_numpy(), rtol=1e-8, atol=1e-12)
            assert len(est.b) == len(fit.b)
            for got, want in zip(est.b, fit.b):
                np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_cross_products_of_a_response_are_the_models_own(model):
    """``cross_products(y)`` (traced segment sums of the working response)
    gives the criterion and estimates of the products a model forms for its
    own y (host bincounts of its least-squares residuals, shift added back),
    and of a model built on another response: the vmapped criteria equal
    those of one model per response."""
    theta = jnp.asarray(_theta(model, 2))
    same = model.cross_products(jnp.asarray(model.design.y))
    est = lmm_jax.make_estimates(model, reml=True, data="argument")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9), est(theta, same),
                 est(theta, model.cross_products()))
    Y = _responses(model, 3, seed=3)
    pure = lmm_jax.make_deviance(model, reml=True, param="theta", data="argument")
    batched = jax.jit(jax.vmap(lambda y: pure(theta, model.cross_products(y)), in_axes=1))(Y)
    data = lmm_jax.datasets.load(dict(MODELS.values())[model.formula])
    response = model.formula.split("~")[0].strip()
    for i in range(Y.shape[1]):
        assert float(batched[i]) == pytest.approx(float(pure(theta, model.cross_products(Y[:, i]))), rel=1e-12)
        other = lmm_jax.LMM(model.formula, data.assign(**{response: np.asarray(Y[:, i])}))
        assert float(batched[i]) == pytest.approx(float(other.deviance_function(param="theta")(theta)), rel=1e-11)


def test_vmap_over_responses_with_their_own_theta_equals_models_per_response(sleep):
    data = lmm_jax.datasets.load("sleepstudy")
    Y = _responses(sleep, 4, seed=4)
    thetas = jnp.stack([jnp.asarray(_theta(sleep, s)) for s in range(4)])
    pure = lmm_jax.make_deviance(sleep, reml=False, param="theta", data="argument")
    est = lmm_jax.make_estimates(sleep, reml=False, data="argument")
    dev = jax.jit(jax.vmap(lambda th, y: pure(th, sleep.cross_products(y)), in_axes=(0, 1)))(thetas, Y)
    E = jax.jit(jax.vmap(lambda th, y: est(th, sleep.cross_products(y)), in_axes=(0, 1)))(thetas, Y)
    assert E.beta.shape == (4, 2) and E.vcov.shape == (4, 2, 2) and E.b[0].shape == (4, 18, 2)
    for i in range(4):
        other = lmm_jax.LMM(SLEEP, data.assign(Reaction=np.asarray(Y[:, i])))
        assert float(dev[i]) == pytest.approx(float(other.deviance_function(False, "theta")(thetas[i])), rel=1e-11)
        res = lmm_jax.LMMResult.from_theta(other, np.asarray(thetas[i]), reml=False)
        np.testing.assert_allclose(E.beta[i], res.beta, rtol=1e-9)
        np.testing.assert_allclose(E.vcov[i], res.vcov.to_numpy(), rtol=1e-9)
        assert float(E.sigma[i]) == pytest.approx(res.sigma, rel=1e-10)
    # in_axes by pytree prefix: the design's products shared, the responses' stacked
    cps = lmm_jax.CrossProducts(sleep.products, jax.jit(jax.vmap(sleep.response_products, in_axes=1))(Y))
    again = jax.jit(jax.vmap(pure, in_axes=(0, lmm_jax.CrossProducts(None, 0))))(thetas, cps)
    np.testing.assert_allclose(again, dev, rtol=1e-13)


def test_vmap_over_stacked_datasets_of_one_structure():
    """Datasets with the sleepstudy structure (18 subjects, (Days | Subject),
    p = 2) but other covariates and numbers of rows, stacked and vmapped."""
    base = lmm_jax.datasets.load("sleepstudy")
    rng = np.random.default_rng(5)
    datasets = [base, base.assign(Days=base.Days + rng.normal(scale=0.5, size=len(base))),
                base.drop(index=[0, 1, 17, 42, 99, 150]).reset_index(drop=True)]
    models = [lmm_jax.LMM(SLEEP, d) for d in datasets]
    assert len({m.structure for m in models}) == 1 and models[2].design.n == 174
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[m.cross_products() for m in models])
    thetas = jnp.stack([jnp.asarray(_theta(models[0], s)) for s in range(3)])
    pure = lmm_jax.make_deviance(models[0], reml=True, param="theta", data="argument")
    est = lmm_jax.make_estimates(models[0], reml=True, data="argument")
    dev = jax.jit(jax.vmap(pure))(thetas, stacked)
    E = jax.jit(jax.vmap(est))(thetas, stacked)
    for i, m in enumerate(models):
        assert float(dev[i]) == pytest.approx(float(m.deviance_function(True, "theta")(thetas[i])), rel=1e-12)
        res = lmm_jax.LMMResult.from_theta(m, np.asarray(thetas[i]), reml=True)
        np.testing.assert_allclose(E.beta[i], res.beta, rtol=1e-9)
        assert float(E.sigma[i]) == pytest.approx(res.sigma, rel=1e-10)
    # per-dataset gradients: vmap of grad
    G = jax.jit(jax.vmap(jax.grad(pure)))(thetas, stacked)
    for i, m in enumerate(models):
        np.testing.assert_allclose(G[i], jax.jit(jax.grad(m.deviance_function(True, "theta")))(thetas[i]),
                                   rtol=1e-10)


def test_grad_in_the_response_matches_finite_differences(sleep):
    """Differentiating through ``cross_products(y)``: d deviance / d y."""
    theta = jnp.asarray(_theta(sleep, 6))
    pure = lmm_jax.make_deviance(sleep, reml=True, param="theta", data="argument")
    dev_y = jax.jit(lambda y: pure(theta, sleep.cross_products(y)))
    y = jnp.asarray(sleep.design.y)
    g = jax.grad(dev_y)(y)
    h = 1e-4
    for i in (0, 7, 100, 179):
        e = jnp.zeros_like(y).at[i].set(h)
        fd = (float(dev_y(y + e)) - float(dev_y(y - e))) / (2 * h)
        assert float(g[i]) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_jit_of_a_users_function_traces_once(sleep):
    pure = lmm_jax.make_deviance(sleep, reml=True, param="phi", data="argument")
    est = lmm_jax.make_estimates(sleep, reml=True, data="argument")
    traces = []

    @jax.jit
    def user(phi, theta, y):            # a user's own code, mixing both functions
        traces.append(1)
        cp = sleep.cross_products(y)
        return pure(phi, cp) + jnp.log(est(theta, cp).sigma)

    Y = _responses(sleep, 2, seed=7)
    theta = jnp.asarray(_theta(sleep, 8))
    phi = phi_from_theta(theta, sleep.structure.ks)[0]
    for i in range(2):
        y = Y[:, i]
        want = float(pure(phi, sleep.cross_products(y))) + np.log(float(est(theta, sleep.cross_products(y)).sigma))
        assert float(user(phi, theta, y)) == pytest.approx(want, rel=1e-13)
    assert len(traces) == 1


def test_errors_inside_a_users_code(sleep):
    pure = lmm_jax.make_deviance(sleep, param="theta", data="argument")
    closed = lmm_jax.make_deviance(sleep, param="theta")
    est = lmm_jax.make_estimates(sleep, data="argument")
    theta, cp = jnp.asarray(_theta(sleep, 9)), sleep.cross_products()
    with pytest.raises(TypeError, match="float32"):
        pure(theta.astype(jnp.float32), cp)
    with pytest.raises(TypeError, match="float32"):
        est(theta, cp._replace(response=jax.tree.map(lambda a: a.astype(jnp.float32), cp.response)))
    with pytest.raises(TypeError, match="float32"):
        jax.jit(closed)(theta.astype(jnp.float32))
    with jax.enable_x64(False):
        for call in (lambda: pure(theta, cp), lambda: closed(theta), lambda: jax.jit(est)(theta, cp)):
            with pytest.raises(TypeError, match="64-bit types are off"):
                call()
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), cp)
    with pytest.raises(lmm_jax.DataError, match="jax.vmap over it"):
        pure(theta, stacked)
    with pytest.raises(lmm_jax.DataError, match="shape"):
        pure(jnp.stack([theta, theta]), cp)
    data = lmm_jax.datasets.load("sleepstudy")
    other = lmm_jax.LMM(SLEEP, data[data.Subject != data.Subject.iloc[0]])       # 17 subjects
    with pytest.raises(lmm_jax.DataError, match="structure"):
        pure(theta, other.cross_products())
    with pytest.raises(lmm_jax.DataError, match="CrossProducts"):
        pure(theta, (sleep.products, sleep.response))
    with pytest.raises(ValueError, match="param"):
        lmm_jax.make_deviance(sleep, param="sigma")
    with pytest.raises(ValueError, match="data"):
        lmm_jax.make_estimates(sleep, data="closed")


def test_a_models_arrays_formed_first_inside_a_users_jit_do_not_leak():
    """``LMM.arrays`` is cached on first use; formed inside a user's trace it
    must still be concrete, or the next call outside would see a leaked tracer."""
    m = lmm_jax.LMM(SLEEP, lmm_jax.datasets.load("sleepstudy"))
    f = lmm_jax.make_deviance(m, reml=True, param="theta", data="argument")
    theta, y = jnp.array([1.0, 0.0, 1.0]), jnp.asarray(m.design.y)
    inside = float(jax.jit(lambda th, y: f(th, m.cross_products(y)))(theta, y))
    outside = float(f(theta, m.cross_products(y)))
    assert inside == pytest.approx(outside, rel=1e-12) == pytest.approx(LME4_DEVFUN[0][2], rel=1e-12)

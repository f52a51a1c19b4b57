"""Compiled code keyed by a model's structure, not its sizes.

* the padded products (levels rounded up to size buckets) give the same
  criterion, gradient, Hessian and estimates as the exact ones, to 1e-10;
* a fit on padded products equals the fit on the exact products;
* a second dataset of the same structure and other sizes compiles nothing
  (counted in a fresh process through JAX's compile events);
* host-side closed forms against autodiff (the variance-components Jacobian).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.build.crossprod import LEVEL_BUCKET_MIN, pad_products, size_bucket
from lmm_jax.core.likelihood import deviance_at_sigma, profiled_deviance
from lmm_jax.core.estimates import estimates_at, fit_theta, unpad_estimates
from lmm_jax.core.parametrization import lambdas, phi_from_theta, theta_start
from lmm_jax.core.theta_layout import ThetaLayout, lower_tri_indices
from lmm_jax.inference.satterthwaite import sdcor_jacobian, sdcor_of, varcomp_jacobian, varcomp_of

pytestmark = pytest.mark.usefixtures("x64")   # lmm_jax's internals, called outside its entry points

MODELS = {
    "slope": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin"),
    "two_slopes": ("Reaction ~ Days + (Days | Subject) + (Days | cohort)", "sleepstudy"),
}


def load(name):
    d = lmm_jax.datasets.load(name)
    if name == "sleepstudy":          # a second grouping factor with fewer levels: a remaining term with k = 2
        d = d.assign(cohort=(d.Subject.astype(int) % 5).astype(str))
    return d


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    formula, data = MODELS[request.param]
    return lmm_jax.LMM(formula, load(data))


def test_size_buckets():
    assert [size_bucket(m, 32) for m in (0, 1, 18, 32, 33, 64, 65, 256)] == [0, 32, 32, 32, 64, 64, 128, 256]
    # above 256: the next multiple of an eighth of the octave, at most 12.5% more
    for m in range(257, 5000, 7):
        b = size_bucket(m, 32)
        assert m <= b <= 1.125 * m
    assert size_bucket(2972, 32) == 3072


def test_padding_changes_only_levels(model):
    pad = model.padded
    assert pad.structure.ks == model.structure.ks and pad.structure.p == model.structure.p
    assert all(b == size_bucket(m, LEVEL_BUCKET_MIN) for b, m in zip(pad.structure.ms, model.structure.ms))
    assert pad.structure != model.structure          # every model here has a term below the bucket


@partial(jax.jit, static_argnames=("s",))
def derivatives(theta, sigma, dp, rp, s):
    """The REML criterion, its gradient and Hessian in theta, and the Hessian of the ML devfun_vp in
    (theta, sigma): between them every term of both criteria (n and p enter as runtime scalars)."""
    def f(th):
        return profiled_deviance(th, dp, rp, s, True)

    vp = jnp.concatenate([theta, sigma[None]])
    H_vp = jax.hessian(lambda v: deviance_at_sigma(v[:-1], v[-1], dp, rp, s, False))(vp)
    return f(theta), jax.grad(f)(theta), jax.hessian(f)(theta), H_vp, profiled_deviance(theta, dp, rp, s, False)


@pytest.mark.parametrize("name", ["slope", "two_slopes"])   # first-term and remaining-term padding; the
def test_padded_criterion_gradient_and_hessian_equal_exact(name):  # crossed layout's: the sparse test below
    formula, data = MODELS[name]
    model = lmm_jax.LMM(formula, load(data))
    s, pad = model.structure, model.padded
    rng = np.random.default_rng(0)
    diag = np.concatenate([lower_tri_indices(k)[0] == lower_tri_indices(k)[1] for k in s.ks])
    for _ in range(3):
        theta = np.where(diag, rng.uniform(0.2, 2.0, diag.size), rng.uniform(-0.5, 0.5, diag.size))
        th = jnp.asarray(theta)
        got = derivatives(th, jnp.asarray(1.3), pad.products, pad.response, pad.structure)
        want = derivatives(th, jnp.asarray(1.3), model.products, model.response, s)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-9)
        est_p = unpad_estimates(estimates_at(th, pad.products, pad.response, pad.structure, True), model.design)
        est_e = unpad_estimates(estimates_at(th, model.products, model.response, s, True), model.design)
        np.testing.assert_allclose(est_p["beta"], est_e["beta"], rtol=1e-10)
        np.testing.assert_allclose(est_p["unscaled_vcov"], est_e["unscaled_vcov"], rtol=1e-10, atol=1e-14)
        for bp, be in zip(est_p["b"], est_e["b"]):
            np.testing.assert_allclose(bp, be, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["slope", "crossed"])   # two_slopes' padding: the criterion test above
def test_padded_fit_equals_exact_fit(name):
    """LMM.fit runs on the padded products; the same Newton loop on the exact ones ends at the same optimum."""
    import warnings

    formula, data = MODELS[name]
    model = lmm_jax.LMM(formula, load(data))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        r = model.fit(reml=True)
    phi0, active0 = phi_from_theta(theta_start(model.structure.ks), model.structure.ks)   # lme4's start
    exact = fit_theta(model.products, model.response, jnp.asarray(phi0), jnp.asarray(active0), model.structure, True)
    np.testing.assert_allclose(r.objective, float(exact.objective), rtol=1e-10)
    np.testing.assert_allclose(r.theta, np.asarray(exact.theta), rtol=1e-6, atol=1e-7)


def test_small_sparse_coupling_is_padded_densely_and_large_is_kept():
    from lmm_jax.build.crossprod import design_products, response_products_host
    from lmm_jax.core.sparse import SparseA21

    m = lmm_jax.LMM("diameter ~ 1 + (1 | plate) + (1 | sample)", lmm_jax.datasets.load("Penicillin"))
    dp = design_products(m.design, sparse=True)
    rp = response_products_host(m.design.y, m.design)
    pad = pad_products(dp, rp, m.structure)
    assert isinstance(dp.A21, SparseA21) and not isinstance(pad.products.A21, SparseA21)
    th = jnp.asarray([0.8, 1.7])
    deviance = jax.jit(profiled_deviance, static_argnames=("s", "reml"))    # compiled, not op by op
    np.testing.assert_allclose(deviance(th, pad.products, pad.response, s=pad.structure, reml=True),
                               deviance(th, dp, rp, s=m.structure, reml=True), rtol=1e-12)
    big = m.structure._replace(ms=(3000, 400))          # padded dense block 3072 x 448: kept sparse, unpadded
    assert pad_products(dp, rp, big).products is dp


def test_host_response_products_equal_the_jax_ones(model):
    from lmm_jax.build.crossprod import response_products

    wk = model.design.working
    ref = response_products(jnp.asarray(wk.y), model.arrays, model.structure, jnp.asarray(wk.shift))
    for a, b in zip(model.response, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-9)


def test_varcomp_jacobian_equals_autodiff():
    def varcomp_jax(vp, ks):
        theta, sigma = vp[:-1], vp[-1]
        out = []
        for lam, k in zip(lambdas(theta, ks), ks):
            S = sigma ** 2 * lam @ lam.T
            r, c = lower_tri_indices(k)
            out.append(S[r, c])
        return jnp.concatenate(out + [jnp.atleast_1d(sigma ** 2)])

    rng = np.random.default_rng(3)
    for ks in [(1,), (2,), (3, 1, 2), (1, 1)]:
        vp = rng.normal(size=sum(k * (k + 1) // 2 for k in ks) + 1)
        vp[-1] = 1.7
        value, jac = jax.jit(lambda v: (varcomp_jax(v, ks), jax.jacfwd(varcomp_jax)(v, ks)))(jnp.asarray(vp))
        np.testing.assert_allclose(varcomp_of(vp, ks), np.asarray(value), rtol=1e-14)
        np.testing.assert_allclose(varcomp_jacobian(vp, ks), np.asarray(jac), rtol=1e-13, atol=1e-14)



def test_sdcor_jacobian_equals_autodiff():
    """The SDs and correlations of variance components and their closed-form Jacobian (the
    variance-component tables' delta method) equal autodiff of the formulas written out."""
    def sdcor_jax(v, ks):
        lay = ThetaLayout.of(ks)
        out = []
        for t, i, j in lay.entries:
            vii, vjj = v[lay.position(t, i, i)], v[lay.position(t, j, j)]
            out.append(jnp.sqrt(vii) if i == j else v[lay.position(t, i, j)] / jnp.sqrt(vii * vjj))
        return jnp.stack(out + [jnp.sqrt(v[-1])])

    rng = np.random.default_rng(4)
    for ks in [(1,), (2,), (3, 1, 2), (1, 1)]:
        vp = rng.normal(size=sum(k * (k + 1) // 2 for k in ks) + 1)
        vp[-1] = 1.7
        v = varcomp_of(vp, ks)
        value, jac = jax.jit(lambda x: (sdcor_jax(x, ks), jax.jacfwd(sdcor_jax)(x, ks)))(jnp.asarray(v))
        np.testing.assert_allclose(sdcor_of(v, ks), np.asarray(value), rtol=1e-14)
        np.testing.assert_allclose(sdcor_jacobian(v, ks), np.asarray(jac), rtol=1e-12, atol=1e-14)
    # a variance at exactly 0 (a boundary fit): its SD's derivative is infinite, its correlations NaN
    v = varcomp_of(np.array([0.0, 0.5, 0.0, 1.0]), (2,))     # Lambda = [[0, 0], [0.5, 0]]: var 0, cov 0, var 0.25
    with np.errstate(all="raise"):
        sd, J = sdcor_of(v, (2,)), sdcor_jacobian(v, (2,))
    assert sd[0] == 0.0 and np.isnan(sd[1]) and sd[2] == 0.5
    assert np.isinf(J[0, 0]) and J[2, 2] == 1.0 and J[3, 3] == 0.5


REUSE_SCRIPT = textwrap.dedent("""
    import json, warnings
    import jax
    from jax._src import monitoring
    import lmm_jax

    events = {"compile": 0, "trace": 0}
    def listen(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events["compile"] += 1
        elif name == "/jax/core/compile/jaxpr_trace_duration":
            events["trace"] += 1
    monitoring.register_event_duration_secs_listener(listen)

    d = lmm_jax.datasets.load("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    first = lmm_jax.fit(f, d)
    first.summary(); first.ranef_sd
    after_first = dict(events)
    sub = d[d.Subject.isin(sorted(d.Subject.unique())[:14]) & (d.Days < 8)]
    second = lmm_jax.fit(f, sub)
    text = second.summary(); second.ranef_sd
    new = {k: events[k] - after_first[k] for k in events}
    after_second = dict(events)
    ml = lmm_jax.fit(f, sub, reml=False)               # ML after REML: reml is an argument of the kernels
    ml.summary(); ml.ranef_sd
    new_ml = {k: events[k] - after_second[k] for k in events}
    print(json.dumps({"first": after_first, "new": new, "new_ml": new_ml, "n": [first.nobs, second.nobs],
                      "levels": [first.ngroups["Subject"], second.ngroups["Subject"]]}))
""")


def test_another_size_of_the_same_structure_compiles_nothing(tmp_path):
    """A 14-subject, 8-day subset of sleepstudy after the whole: the same executables (size buckets);
    then its ML fit: the same ones again (ML and REML share them)."""
    env = dict(__import__("os").environ, LMM_JAX_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", REUSE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    res = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == [180, 112] and res["levels"] == [18, 14]
    assert res["first"]["compile"] >= 3                # the fit, its start and the summary's inference compiled
    assert res["new"] == {"compile": 0, "trace": 0}, res
    assert res["new_ml"] == {"compile": 0, "trace": 0}, res

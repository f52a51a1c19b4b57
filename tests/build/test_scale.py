"""Large-model paths: the sparse coupling block against the dense one, O(n)
chunked cross-products, bounded memory, and InstEval against lme4."""

from __future__ import annotations

import tracemalloc
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from tests.helpers import load_data, load_reference, rel_err
from lmm_jax.build.crossprod import design_products
from lmm_jax.errors import DataError
from lmm_jax.core.likelihood import conditional_covariances, deviance_at_sigma, factorize, profiled_deviance, spherical_modes
from lmm_jax.core.parametrization import n_theta, phi_from_theta, theta_from_phi
from lmm_jax.core.sparse import SparseA21, dense_coupling, n_pairs
from lmm_jax.runtime.scope import float64

pytestmark = pytest.mark.usefixtures("x64")   # lmm_jax's internals, called outside its entry points


def _crossed(n: int, m_g: int, m_h: int, seed: int, per_g: int) -> pd.DataFrame:
    """Partially crossed g x h design: each level of g meets ``per_g`` levels of h."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, m_g, n)
    seen = rng.integers(0, m_h, (m_g, per_g))
    h = seen[g, rng.integers(0, per_g, n)]
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(size=m_g)[g] * 0.8 + rng.normal(size=m_g)[g] * 0.3 * x \
        + rng.normal(size=m_h)[h] * 0.6 + rng.normal(size=m_h)[h] * 0.2 * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})


CASES = {
    "penicillin": (load_reference("penicillin_crossed")["formula"], lambda: load_data("Penicillin")),
    "pastes": (load_reference("pastes_nested")["formula"], lambda: load_data("Pastes")),
    "slope_first": ("y ~ x + (x | g) + (1 | h)", lambda: _crossed(900, 80, 30, 0, 6)),
    "slope_rest": ("y ~ x + (1 | g) + (x | h)", lambda: _crossed(900, 80, 30, 1, 6)),
    "three_terms": ("y ~ x + (x | g) + (1 | h) + (0 + x | h)", lambda: _crossed(700, 60, 25, 2, 5)),
}
PAIR_CASES = ("penicillin", "pastes", "slope_first", "three_terms")


@pytest.fixture(scope="module", params=PAIR_CASES)
def pair(request):
    """(model, dense products, sparse products) of one case."""
    formula, data = CASES[request.param]
    model = lmm_jax.LMM(formula, data())
    with float64():                             # internals: arrays on the device in float64, as an entry point makes them
        dense = design_products(model.design, sparse=False)
        sparse = design_products(model.design, sparse=True)
    return model, dense, sparse


def _theta(model, seed: int) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    ks = model.structure.ks
    phi = phi_from_theta(np.asarray(lmm_jax.core.parametrization.theta_start(ks)), ks)[0]
    return theta_from_phi(jnp.asarray(phi + 0.6 * rng.normal(size=n_theta(ks))), ks)


def test_sparse_coupling_holds_exactly_the_dense_block(pair):
    model, dense, sparse = pair
    assert isinstance(sparse.A21, SparseA21) and not isinstance(dense.A21, SparseA21)
    idx = sparse.A21.index
    rebuilt = np.zeros(dense.A21.shape)
    rows = np.concatenate([np.asarray(b).reshape(-1, b.shape[-1]) for b in sparse.A21.blocks])
    np.add.at(rebuilt, (np.asarray(idx.row), np.asarray(idx.level)), rows)
    np.testing.assert_array_equal(rebuilt, np.asarray(dense.A21))
    np.testing.assert_array_equal(dense_coupling(sparse.A21, *np.asarray(dense.A21).shape[:2]), rebuilt)
    # every (row, level) stored once; the pairs are all same-level pairs with row[a] <= row[b]
    keys = np.asarray(idx.row).astype(np.int64) * model.structure.ms[0] + np.asarray(idx.level)
    assert np.unique(keys).size == keys.size
    per_level = np.bincount(np.asarray(idx.level), minlength=model.structure.ms[0])
    assert n_pairs(sparse.A21) == int(np.sum(per_level * (per_level + 1) // 2))
    a, b = np.asarray(idx.pair_a), np.asarray(idx.pair_b)
    assert np.all(np.asarray(idx.level)[a] == np.asarray(idx.level)[b])
    assert np.all(np.asarray(idx.row)[a] <= np.asarray(idx.row)[b])
    assert np.all(np.diff(np.asarray(idx.pair_dest)) >= 0)


@partial(jax.jit, static_argnames=("s",))
def _evaluate(thetas, dp, rp, s):
    """Everything the two paths must agree on, at a batch of theta (one compile per case and path)."""
    def one(theta):
        F = factorize(theta, dp, rp, s)
        beta = jnp.linspace(-1.0, 1.0, s.p)
        return dict(reml=profiled_deviance(theta, dp, rp, s, True), ml=profiled_deviance(theta, dp, rp, s, False),
                    at_sigma=deviance_at_sigma(theta, jnp.asarray(1.7), dp, rp, s, True),
                    grad=jax.grad(profiled_deviance)(theta, dp, rp, s, True), L22=F.L22, L33=F.L33,
                    modes=spherical_modes(F, beta), condcov=conditional_covariances(theta, F, s))
    return jax.vmap(one)(thetas)


def test_sparse_and_dense_paths_agree(pair):
    """Deviances, gradient, factor, conditional modes and covariances to 1e-10."""
    model, dense, sparse = pair
    s, rp = model.structure, model.response
    thetas = jnp.stack([_theta(model, seed) for seed in (0, 1)])
    d, sp = _evaluate(thetas, dense, rp, s), _evaluate(thetas, sparse, rp, s)
    for key in ("reml", "ml", "at_sigma"):
        np.testing.assert_allclose(sp[key], d[key], rtol=1e-10, atol=0)
    np.testing.assert_allclose(sp["grad"], d["grad"], rtol=1e-9, atol=1e-9 * np.max(np.abs(d["grad"])))
    for a, b in zip(jax.tree_util.tree_leaves((sp["L22"], sp["L33"], sp["modes"], sp["condcov"])),
                    jax.tree_util.tree_leaves((d["L22"], d["L33"], d["modes"], d["condcov"]))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * max(1.0, float(np.max(np.abs(b)))))


def test_sparse_and_dense_hessians_agree():
    """Exact Hessians (custom derivative rules of the dense block) with k_1 = 2 and k_t = 2."""
    for formula, data in [("y ~ x + (x | g) + (x | h)", lambda: _crossed(900, 80, 30, 1, 6))]:
        model = lmm_jax.LMM(formula, data())
        s, rp = model.structure, model.response
        theta = _theta(model, 3)
        hess = jax.jit(jax.hessian(profiled_deviance), static_argnums=(3, 4))
        H = [np.asarray(hess(theta, dp, rp, s, True))
             for dp in (design_products(model.design, sparse=False), design_products(model.design, sparse=True))]
        np.testing.assert_allclose(H[1], H[0], rtol=1e-8, atol=1e-8 * np.max(np.abs(H[0])))
        # and against central differences of the exact gradient
        g = jax.jit(jax.grad(profiled_deviance), static_argnums=(3, 4))
        h = 1e-5
        fd = np.stack([(np.asarray(g(theta.at[i].add(h), model.products, rp, s, True))
                        - np.asarray(g(theta.at[i].add(-h), model.products, rp, s, True))) / (2 * h)
                       for i in range(theta.shape[0])])
        np.testing.assert_allclose(H[1], fd, rtol=1e-4, atol=1e-4 * np.max(np.abs(H[0])))


def test_chunked_cross_products_equal_one_pass():
    model = lmm_jax.LMM(*[CASES["three_terms"][0], CASES["three_terms"][1]()])
    for sparse in (False, True):
        one = design_products(model.design, sparse=sparse, chunk_rows=10 ** 9)
        chunked = design_products(model.design, sparse=sparse, chunk_rows=97)
        for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(chunked)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-12)


def test_design_of_many_rows_peaks_under_three_times_the_data():
    """Memory stays under 3x the data. 200,000 rows of y, x1, x2, g (6.4 MB):
    the design keeps y, X, Z and int32 codes and never copies the frame."""
    rng = np.random.default_rng(4)
    n = 200_000
    data = pd.DataFrame({"y": rng.normal(size=n), "x1": rng.normal(size=n), "x2": rng.normal(size=n),
                         "g": rng.integers(0, 2_000, n)})
    size = data.memory_usage(index=False).sum()
    tracemalloc.start()
    design = lmm_jax.build.design.build_design("y ~ x1 + x2 + (x1 | g)", data)
    dp = design_products(design)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * size, f"peak {peak / 1e6:.1f} MB for {size / 1e6:.1f} MB of data"
    assert design.terms[0].codes.dtype == np.int32 and design.ms == (2_000,)
    assert np.isfinite(np.asarray(dp.XtX)).all()


@pytest.mark.parametrize("values", [
    np.array([3, 1, 3, 7, 1, -2] * 50), np.array([0.5, 2.0, 0.5, -1.25] * 60), np.array([True, False] * 70),
    np.array(["b", "a", "c", "a"] * 40, dtype=object),
])
def test_level_codes_by_blocks_equal_pandas_categories(values):
    from lmm_jax.build.design import level_codes
    s = pd.Series(values)
    cat = s.astype("category")
    labels, codes = level_codes(s, chunk_rows=7)
    assert list(labels) == [str(c) for c in cat.cat.categories]
    np.testing.assert_array_equal(codes, cat.cat.codes.to_numpy())
    assert codes.dtype == np.int32


def test_rank_by_row_blocks_finds_the_same_columns():
    from lmm_jax.build.design import _independent_columns
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=1000), rng.normal(size=1000)
    X = np.column_stack([np.ones(1000), a, 2 * a - 1, b, np.zeros(1000), a + b])
    for chunk in (5, 64, 10 ** 6):
        assert _independent_columns(X, chunk_rows=chunk) == [0, 1, 3]


def test_sparse_products_never_allocate_the_dense_coupling_block():
    """A 12,000 x 4,000-level crossed design: dense A21 would be 384 MB."""
    data = _crossed(40_000, 12_000, 4_000, 5, 3)
    design = lmm_jax.build.design.build_design("y ~ x + (1 | g) + (1 | h)", data)
    assert design.ms[0] > 11_000 and design.ms[1] > 3_900
    tracemalloc.start()
    dp = design_products(design)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(dp.A21, SparseA21)     # chosen by default: the dense block would be 48 M entries
    # A22 (4,000^2 doubles, 128 MB) is the one dense block; nothing else of size q_r x m_1
    assert peak < 4_000 ** 2 * 8 * 1.1 + 30e6


def test_too_many_remaining_columns_is_a_data_error(monkeypatch):
    import lmm_jax.build.crossprod as cp
    model = lmm_jax.LMM(CASES["penicillin"][0], CASES["penicillin"][1]())
    monkeypatch.setattr(cp, "MAX_DENSE_REST", 5)
    with pytest.raises(DataError, match="at most 5"):
        cp.design_products(model.design)


# -- InstEval: 73,421 rows, 2,972 x 1,128 crossed, against lme4 -------------------------------------------------

@pytest.fixture(scope="module")
def insteval():
    ref = load_reference("insteval_crossed")
    with warnings.catch_warnings():
        warnings.simplefilter("error", lmm_jax.ConvergenceWarning)
        fit = lmm_jax.fit(ref["formula"], load_data("InstEval"), reml=ref["reml"])
    return ref, fit


@pytest.mark.slow
@pytest.mark.xdist_group("insteval")     # one worker fits InstEval (7 s) for both tests
def test_insteval_matches_lme4(insteval):
    ref, fit = insteval
    assert isinstance(fit.model.products.A21, SparseA21)
    assert fit.converged
    assert fit.loglik >= ref["logLik"] - 1e-6
    assert abs(fit.loglik - ref["logLik"]) < 1e-6
    assert rel_err(fit.beta, ref["beta"]) < 1e-5
    assert rel_err(fit.varcomp, ref["varcomp"]) < 1e-5
    assert abs(fit.sigma - ref["sigma"]) / ref["sigma"] < 1e-5


@pytest.mark.slow
@pytest.mark.xdist_group("insteval")
def test_insteval_inference_matches_lmertest(insteval):
    ref, fit = insteval
    assert rel_err(fit.std_errors, ref["beta_se"]) < 1e-4
    assert rel_err(fit.coef_table.df, ref["df_satterthwaite"]) < 1e-4
    assert rel_err(fit.varcomp_se, ref["varcomp_se"]) < 1e-3


def _three_scalar(n: int, seed: int) -> pd.DataFrame:
    """Three crossed scalar factors (the InstEval shape, small)."""
    rng = np.random.default_rng(seed)
    g, h, k = rng.integers(0, 70, n), rng.integers(0, 25, n), rng.integers(0, 6, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + 0.8 * rng.normal(size=70)[g] + 0.5 * rng.normal(size=25)[h] + 0.3 * rng.normal(size=6)[k] \
        + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g, "h": h, "k": k})


@partial(jax.jit, static_argnames=("s",))
def _derivatives(theta, phi, active, dp, rp, s, reml):
    """Value, gradient and Hessian in theta, the optimiser's Hessian in phi, and a vmapped Hessian
    (``reml`` traced, as the kernels take it: REML and ML share one compilation per coupling)."""
    f = partial(profiled_deviance, dp=dp, rp=rp, s=s, reml=reml)
    fphi = lambda p: f(theta_from_phi(p, s.ks, active))                        # noqa: E731
    return (f(theta), jax.grad(f)(theta), jax.hessian(f)(theta), jax.jacfwd(jax.grad(fphi))(phi),
            jax.vmap(jax.hessian(f))(jnp.stack([theta, theta * 1.1])))


@pytest.mark.xdist_group("scalar_fast_path")      # one worker compiles _derivatives once for all four points
@pytest.mark.parametrize("theta", [(0.8, 0.6, 0.4), (1.3, 0.004, 0.7), (0.9, 0.0, 0.5), (0.02, 1.1, 0.0)],
                         ids=["interior", "small_theta", "zero_theta", "zero_last"])
def test_scalar_fast_path_matches_generic_path(theta):
    """Scalar terms with sparse coupling take closed-form derivative rules (likelihood._scalar_derivatives,
    with a q_r^3-saving Hessian rule when every |theta_t| >= SCALAR_FAST_MIN); the dense coupling takes
    the generic rules. Value, gradient and exact Hessian agree, in theta and in the optimiser's phi, also
    at small and exactly-zero theta (the boundary) and under vmap."""
    model = lmm_jax.LMM("y ~ x + (1 | g) + (1 | h) + (1 | k)", _three_scalar(1500, 4))
    s, rp = model.structure, model.response
    dense, sparse = design_products(model.design, sparse=False), design_products(model.design, sparse=True)
    th = jnp.asarray(theta)
    phi, active = jnp.log(jnp.where(th > 0, th, 1.0)), th != 0
    for reml in (True, False):
        for a, b in zip(_derivatives(th, phi, active, sparse, rp, s, jnp.asarray(reml)),
                        _derivatives(th, phi, active, dense, rp, s, jnp.asarray(reml))):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * max(1.0, float(np.max(np.abs(b)))))

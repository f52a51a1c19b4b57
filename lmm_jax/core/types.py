"""The static structure of a model and the pytrees of its cross-products.

These are what every compiled function takes: a :class:`Structure` (hashable,
static) and :class:`DesignProducts` / :class:`ResponseProducts` (arrays).
:mod:`lmm_jax.build.crossprod` forms them from a design.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ..runtime.kernel import QUICK_OPTIONS, QUICK_SWITCH, serializable
from ..runtime.switches import env_switch
from .sparse import SparseA21


class Structure(NamedTuple):
    """Static shapes of a model's cross-products (hashable; the key jit
    compiles by). The number of observations is not among them: it is the
    runtime scalar ``DesignProducts.nobs``, so datasets that differ only in
    n share compiled code (and, padded by :func:`~lmm_jax.build.crossprod.pad_products`, datasets
    whose levels fall in the same size buckets too).

    Attributes:
        ks: columns per term (largest-level term first).
        ms: levels per term (padded levels included).
        p: fixed-effects columns.
    """

    ks: tuple[int, ...]
    ms: tuple[int, ...]
    p: int

    @property
    def q_rest(self) -> int:
        return sum(k * m for k, m in zip(self.ks[1:], self.ms[1:]))

    @property
    def rest_offsets(self) -> tuple[int, ...]:
        """Start of each remaining term's columns within Z_r."""
        out, o = [], 0
        for k, m in zip(self.ks[1:], self.ms[1:]):
            out.append(o)
            o += k * m
        return tuple(out)



# Columns of a model's dense block (terms after the first) above which batched kernels keep XLA:CPU's
# MLIR fusion emitters (:func:`batch_options`).
DENSE_EMITTER_COLUMNS = 128


def batch_options(statics: dict) -> dict:
    """CPU compiler options of a batched kernel (``cpu_options`` of
    :func:`lmm_jax.runtime.kernel.kernel`) whose static ``s`` is the model's
    :class:`Structure`: XLA:CPU's elemental IR emitter
    for fusions (``xla_cpu_use_fusion_emitters=false``) unless the dense
    block of the terms after the first has more than
    :data:`DENSE_EMITTER_COLUMNS` columns. Its executables compile about 30%
    sooner and run as fast for such models (2-core VM: 1,024 sleepstudy
    bootstrap refits first call 11.0 -> 7.4 s, Penicillin 17.9 -> 12.3 s,
    16 refits of a 5,000-row 120 x 80 crossed design 6.3 -> 4.6 s and of a
    20,000-row, 1,000-group random-slope model 5.9 -> 4.0 s, each at the same
    warm time; ``fit_many``'s 50 sleepstudy fits, compiled so with
    ``LMM_JAX_QUICK_COMPILE=0``, 4.7 -> 2.2 s of XLA compile); a larger
    dense block (crossed 500 x 200) refits about 20% faster with the MLIR
    emitters, and so do the GLMMs' batched kernels
    (PIRLS over the rows each iteration: 1,000 cbpp bootstrap refits 0.59 s
    against 0.71 s warm), which take XLA's defaults. The choice depends on
    the structure only, so every chunk and every process of a batched run
    computes with the same code, bit for bit."""
    if statics["s"].q_rest > DENSE_EMITTER_COLUMNS:
        return {}
    return {"xla_cpu_use_fusion_emitters": False}


# Fits times random-effect columns (sum of m k over the terms, padded) in one compiled call up to which
# a kernel that runs once or a few times per model (fit_many's, the profile's) compiles quick code
# (:func:`one_off_options`).
QUICK_BATCH_WORK = 100_000


def quick_batch(fits: int, s: Structure) -> bool:
    """Whether ``fits`` fits of structure ``s`` in one compiled call are few
    and small enough for quick code (:data:`QUICK_BATCH_WORK`)."""
    return fits * sum(k * m for k, m in zip(s.ks, s.ms)) <= QUICK_BATCH_WORK


def one_off_options(statics: dict) -> dict:
    """CPU compiler options of a batched kernel that a model's analysis runs
    once or a few times (``fit_many``'s fits and t tests, a profile's
    constrained solves), by its static ``quick_code`` (:func:`quick_batch`
    of the call's fits and structure): the quick options
    (:data:`~lmm_jax.runtime.kernel.QUICK_OPTIONS`: LLVM at -O0, XLA:CPU's
    elemental emitter) when it is true, else :func:`batch_options`. One
    tier, so every call, chunk and process of a run computes with the same
    code, bit for bit. Quick code compiles in about half the time and runs
    1.6-2.2x longer, which a small call hardly sees (2-core VM: sleepstudy's
    model on 50 datasets in 3 shapes, first call 4.1 -> 2.2 s, warm 12 ->
    23 ms; on 1,000 datasets 5.4 -> 3.6 s and 0.22 -> 0.35 s, beside 2.9 s
    building the models; 10 datasets of a 1,000-group random-slope model,
    20,000 rows each, 4.3 -> 2.4 s and 44 -> 94 ms), while above the bound
    the extra run time of every later call would outweigh the compile
    saved once. With ``LMM_JAX_QUICK_COMPILE=0``: :func:`batch_options`."""
    if statics.get("quick_code") and env_switch(QUICK_SWITCH) is not False:
        return dict(QUICK_OPTIONS)
    return batch_options(statics)


def row_options(statics: dict) -> dict:
    """CPU compiler options of a kernel of per-row arithmetic (the simulated
    responses, a batch's response products): XLA:CPU's elemental emitter,
    whatever the structure. Such kernels compile per number of rows; the
    emitter compiles them sooner and runs them as fast (sleepstudy's
    simulation: 0.58 -> 0.40 s to compile, 10,000 draws 0.055 -> 0.045 s
    warm; 1,000 responses' products within noise)."""
    return {"xla_cpu_use_fusion_emitters": False}


@serializable
class DesignProducts(NamedTuple):
    """Cross-products that do not involve y (see module docstring), of the
    working design (:mod:`lmm_jax.build.working`: rows scaled by the square
    roots of the prior weights, fixed effects in an orthonormal basis
    ``X_w = sqrt(W) X S``), and the runtime scalars the criteria need.

    Attributes:
        A11, A21, A22, Z1X, ZrX, XtX: the blocks of the module docstring.
        nobs: n; rank: the estimated fixed effects (REML's p).
        basis: S (p, p): the user's fixed effects are ``beta = S beta_w``.
        log_det_basis: ``log|det S|``: the REML criterion of the user's X is
            the working one minus ``2 log|det S|``.
        log_weights: ``sum(log w_i)``: the criteria of a weighted model are
            the working ones minus it (residual variances sigma^2 / w_i).
    """

    A11: jnp.ndarray
    A21: "jnp.ndarray | SparseA21"
    A22: jnp.ndarray
    Z1X: jnp.ndarray
    ZrX: jnp.ndarray
    XtX: jnp.ndarray
    nobs: jnp.ndarray
    rank: jnp.ndarray
    basis: jnp.ndarray
    log_det_basis: jnp.ndarray
    log_weights: jnp.ndarray


@serializable
class ResponseProducts(NamedTuple):
    """Cross-products that involve y: Z_1'y (m_1, k_1), Z_r'y (q_r,), X'y (p,),
    y'y, of a working response ``y_w - X_w shift``; ``shift`` (p,) is added
    back to the working fixed effects (a response far from zero keeps its
    digits: its products are those of least-squares residuals)."""

    Z1y: jnp.ndarray
    Zry: jnp.ndarray
    Xy: jnp.ndarray
    yy: jnp.ndarray
    shift: jnp.ndarray


class CrossProducts(NamedTuple):
    """All of a dataset's cross-products: the data argument of the pure
    deviance and estimates (:func:`lmm_jax.make_deviance` with
    ``data="argument"``, :func:`lmm_jax.make_estimates`).

    A pytree of arrays (a NamedTuple), so it goes through ``jit``, ``vmap``
    and ``grad`` like any other argument. Stacked along a leading axis
    (``jax.tree.map(lambda *a: jnp.stack(a), *cps)``) it batches datasets
    of one :class:`Structure`; to batch responses on one design, vmap over
    ``y`` in ``model.cross_products(y)`` instead, which leaves ``design``
    unbatched.

    Attributes:
        design: the products that do not involve y (Z'Z, Z'X, X'X, n, rank).
        response: the products that do (Z'y, X'y, y'y).
    """

    design: DesignProducts
    response: ResponseProducts


@serializable
class DesignArrays(NamedTuple):
    """What a pure function of y needs to form its products: X, and each
    term's level codes and Z columns."""

    X: jnp.ndarray
    codes: tuple[jnp.ndarray, ...]
    Z: tuple[jnp.ndarray, ...]


class Padded(NamedTuple):
    """A model's products padded to size buckets, and their structure: what
    the compiled kernels of a single fit take (:func:`~lmm_jax.build.crossprod.pad_products`)."""

    products: DesignProducts
    response: ResponseProducts
    structure: Structure

"""Cross-products of [Z X y], computed once in O(n), in blocked form.

With terms ordered largest first, ``Z = [Z_1 Z_r]`` where Z_1 is the first
term (m_1 levels of k_1 columns: its block of Z'Z is block diagonal) and Z_r
holds the remaining terms (q_r = sum of m_t k_t columns, level-major within
each term). The likelihood needs only

    A11 = Z_1'Z_1  as (m_1, k_1, k_1) diagonal blocks
    A21 = Z_r'Z_1  as (q_r, m_1, k_1), or by its nonzero blocks
                   (:class:`~lmm_jax.core.sparse.SparseA21`) when that is large
    A22 = Z_r'Z_r  as (q_r, q_r)
    Z_1'X, Z_r'X, X'X                        (design: shared by all responses)
    Z_1'y, Z_r'y, X'y, y'y                   (response: what vmap batches)

Design products are built with numpy ``bincount`` (no dense Z). Response
products are a pure JAX function of y (segment sums), so a batch of
simulated responses maps through it with ``vmap``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .design import Design
from ..errors import DataError
from ..core.sparse import SparseA21, dense_coupling, n_pairs, sparse_coupling
from ..core.types import DesignArrays, DesignProducts, Padded, ResponseProducts, Structure

MAX_DENSE_COUPLING = 1 << 24   # dense A21 (q_r m_1 k_1 entries) above this: always stored sparse
PAIR_COST = 100                # one sparse pair costs about this many dense matmul flops (gather + scatter)
# Every term scalar: the sparse path's derivatives are closed forms over three pair sums per Newton pass
# (likelihood._scalar_derivatives), the dense one differentiates through the q_r^2 m_1 update. Refits of
# y ~ x1 + (1|A) + (1|B), ms per fit dense / sparse on a 2-core CPU: 500 x 200 levels (20k rows) 100 / 32,
# 200 x 100 (5k) 31 / 18, 100 x 50 (2k) 10 / 11, 100 x 80 (5k) 13 / 17, 300 x 100 (20k) 47 / 111.
SCALAR_PAIR_COST = 20
MAX_DENSE_REST = 20_000        # columns of the remaining terms' dense block
CHUNK_ROWS = 1 << 16           # rows per chunk of the O(n) bincounts (and of X_w, formed per chunk)


def structure_of(design: Design) -> Structure:
    return Structure(ks=design.ks, ms=design.ms, p=design.p)


def design_arrays(design: Design) -> DesignArrays:
    """The working X and Z (:mod:`lmm_jax.build.working`) and the level codes, on the device."""
    wk = design.working
    return DesignArrays(X=jax.device_put(wk.X), codes=tuple(jax.device_put(t.codes) for t in design.terms),
                        Z=tuple(jax.device_put(Z) for Z in wk.Z))


def _rest_terms(design: Design) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """For each remaining term: (codes, working Z, offset of the term in Z_r, levels)."""
    out, o = [], 0
    for t, Z in zip(design.terms[1:], design.working.Z[1:]):
        out.append((t.codes.astype(np.int64), Z, o, t.m))
        o += t.m * t.k
    return out


def _chunks(n: int, chunk_rows: int):
    for lo in range(0, n, chunk_rows):
        yield slice(lo, min(lo + chunk_rows, n))


def use_sparse_coupling(structure: Structure, pairs: int) -> bool:
    """Default storage of A21, by cost. Dense, the Schur update ``L21 L21'``
    is a (q_r x m_1 k_1) by (m_1 k_1 x q_r) product, q_r^2 m_1 k_1 flops;
    sparse, it costs ``pairs`` gathers and scatter-adds of k_1-vectors, each
    worth about :data:`PAIR_COST` matmul flops on CPU. Sparse when that is
    cheaper, or when the dense block would exceed :data:`MAX_DENSE_COUPLING`
    entries (memory). With every term scalar a pair is worth
    :data:`SCALAR_PAIR_COST` flops instead (measured; see there).

    Args:
        structure: the model's shapes.
        pairs: co-occurring row pairs (:func:`lmm_jax.core.sparse.n_pairs`).
    """
    qr, m1, k1 = structure.q_rest, structure.ms[0], structure.ks[0]
    cost = SCALAR_PAIR_COST if all(k == 1 for k in structure.ks) else PAIR_COST
    return qr * m1 * k1 > MAX_DENSE_COUPLING or cost * pairs * k1 < qr * qr * m1 * k1


def design_products(design: Design, sparse: bool | None = None, chunk_rows: int = CHUNK_ROWS) -> DesignProducts:
    """Z'Z, Z'X and X'X of the working design (:mod:`lmm_jax.build.working`)
    in blocked form, in O(n) with bincount (no dense Z).

    Args:
        design: the evaluated design.
        sparse: store ``A21`` as :class:`~lmm_jax.core.sparse.SparseA21` (True),
            as a dense (q_r, m_1, k_1) array (False), or decide by cost (None,
            :func:`use_sparse_coupling`). Both give the same likelihood.
        chunk_rows: rows per chunk of the weighted bincounts; temporaries are
            O(chunk_rows), the results O(m_1 k_1^2 + q_r^2).

    Raises:
        DataError: the remaining terms have too many columns for a dense
            q_r x q_r block (more than :data:`MAX_DENSE_REST`).
    """
    t1 = design.terms[0]
    m1, k1 = t1.m, t1.k
    wk = design.working
    Z1 = wk.Z[0]
    n, p = design.n, design.p
    c1 = t1.codes.astype(np.int64)
    rest = _rest_terms(design)
    qr = sum(t.m * t.k for t in design.terms[1:])
    if qr > MAX_DENSE_REST:
        raise DataError(f"the random-effects terms after the first ({[t.group for t in design.terms[1:]]}) have "
                        f"{qr} columns in all; their block of Z'Z is factored densely and at most {MAX_DENSE_REST} "
                        "are supported: drop or merge some terms, or make the largest factor come first")
    A11 = np.zeros((m1, k1, k1))
    Z1X = np.zeros((m1, k1, p))
    ZrX = np.zeros((qr, p))
    A22 = np.zeros((qr, qr))
    A22_flat = A22.reshape(-1)
    XtX = np.zeros((p, p))
    for sl in _chunks(n, chunk_rows):
        X = wk.X_rows(sl)                     # X_w by blocks: never the whole matrix here
        XtX += X.T @ X
        for a in range(k1):
            for b in range(a, k1):
                A11[:, a, b] += np.bincount(c1[sl], weights=Z1[sl, a] * Z1[sl, b], minlength=m1)
            for j in range(p):
                Z1X[:, a, j] += np.bincount(c1[sl], weights=Z1[sl, a] * X[:, j], minlength=m1)
        for codes, Z, o, m in rest:
            for c in range(Z.shape[1]):
                row = o + codes[sl] * Z.shape[1] + c
                for j in range(p):
                    ZrX[:, j] += np.bincount(row, weights=Z[sl, c] * X[:, j], minlength=qr)
                for codes2, Z2, o2, m2 in rest:
                    for d in range(Z2.shape[1]):
                        # scatter-add into the flat view: no second q_r x q_r temporary
                        np.add.at(A22_flat, row * qr + (o2 + codes2[sl] * Z2.shape[1] + d), Z[sl, c] * Z2[sl, d])
    for a in range(k1):
        for b in range(a + 1, k1):
            A11[:, b, a] = A11[:, a, b]
    if qr == 0:
        A21 = jax.device_put(np.zeros((0, m1, k1)))
    elif sparse or sparse is None:
        A21 = sparse_coupling(rest, c1, Z1, m1, qr, chunk_rows)
        if sparse is None and not use_sparse_coupling(structure_of(design), n_pairs(A21)):
            A21 = jax.device_put(dense_coupling(A21, qr, m1))
    else:
        A21 = np.zeros((qr, m1, k1))
        for codes, Z, o, m in rest:
            for sl in _chunks(n, chunk_rows):
                for c in range(Z.shape[1]):
                    flat = (o + codes[sl] * Z.shape[1] + c) * m1 + c1[sl]
                    for a in range(k1):
                        A21[..., a] += np.bincount(flat, weights=Z[sl, c] * Z1[sl, a],
                                                   minlength=qr * m1).reshape(qr, m1)
        A21 = jax.device_put(A21)
    return DesignProducts(A11=jax.device_put(A11), A21=A21, A22=jax.device_put(A22),
                          Z1X=jax.device_put(Z1X), ZrX=jax.device_put(ZrX), XtX=jax.device_put(XtX),
                          nobs=jax.device_put(np.float64(n)), rank=jax.device_put(np.float64(p)),
                          basis=jax.device_put(wk.basis), log_det_basis=jax.device_put(np.float64(wk.log_det_basis)),
                          log_weights=jax.device_put(np.float64(wk.log_weights)))


def response_products(y: jnp.ndarray, arrays: DesignArrays, structure: Structure,
                      shift: jnp.ndarray | None = None) -> ResponseProducts:
    """Z_1'y, Z_r'y, X'y and y'y of a working response y as a pure JAX
    function of y (vmappable); ``shift``: the working fixed effects taken
    out of y (default none)."""
    ks, ms = structure.ks, structure.ms
    Z1y = jax.ops.segment_sum(arrays.Z[0] * y[:, None], arrays.codes[0], num_segments=ms[0])
    parts = [jax.ops.segment_sum(Z * y[:, None], c, num_segments=m).reshape(m * k)
             for Z, c, m, k in zip(arrays.Z[1:], arrays.codes[1:], ms[1:], ks[1:])]
    Zry = jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype=y.dtype)
    shift = jnp.zeros(arrays.X.shape[1], dtype=y.dtype) if shift is None else shift
    return ResponseProducts(Z1y=Z1y, Zry=Zry, Xy=arrays.X.T @ y, yy=y @ y, shift=shift)


def response_products_host(y: np.ndarray, design: Design, shift: np.ndarray | None = None) -> ResponseProducts:
    """:func:`response_products` of one working response, in numpy
    (bincounts): what a model forms once when it is built, with no device
    computation to compile for its sizes."""
    y = np.asarray(y, dtype=float)
    wk = design.working
    Zty = [np.stack([np.bincount(t.codes, weights=Z[:, a] * y, minlength=t.m) for a in range(t.k)], axis=-1)
           for t, Z in zip(design.terms, wk.Z)]                              # Z_t'y, (m_t, k_t) per term
    Zry = np.concatenate([z.reshape(-1) for z in Zty[1:]]) if len(Zty) > 1 else np.zeros(0)
    shift = np.zeros(design.p) if shift is None else np.asarray(shift, dtype=float)
    Xy = sum((wk.X_rows(sl).T @ y[sl] for sl in _chunks(design.n, CHUNK_ROWS)), np.zeros(design.p))
    return jax.device_put(ResponseProducts(Z1y=Zty[0], Zry=Zry, Xy=Xy, yy=np.float64(y @ y), shift=shift))


def user_basis_design(dp: DesignProducts) -> DesignProducts:
    """The design products in the user's fixed-effects basis (``X_u = sqrt(W) X``)
    from the working ones: with ``R = S^{-1}``, ``Z'X_u = Z'X_w R`` and
    ``X_u'X_u = R'X_w'X_w R``. For computations that address single fixed
    effects through the products (Kenward-Roger's adjustment, a profile that
    moves beta_j's column into the response). Unpadded products only (host
    computation)."""
    S = np.asarray(dp.basis)
    p = S.shape[0]
    R = np.linalg.inv(S) if p else S
    XtX, Z1X, ZrX = np.asarray(dp.XtX), np.asarray(dp.Z1X), np.asarray(dp.ZrX)
    return dp._replace(Z1X=jax.device_put(Z1X @ R), ZrX=jax.device_put(ZrX @ R), XtX=jax.device_put(R.T @ XtX @ R),
                       basis=jax.device_put(np.eye(p)), log_det_basis=jax.device_put(np.float64(0.0)))


def user_basis_products(dp: DesignProducts, rp: ResponseProducts) -> tuple[DesignProducts, ResponseProducts]:
    """:func:`user_basis_design` and the response's products with y unshifted
    (``y = y_w + X_w shift``)."""
    dp_u = user_basis_design(dp)
    S = np.asarray(dp.basis)
    b0 = np.asarray(rp.shift)
    XtX, Xy = np.asarray(dp.XtX), np.asarray(rp.Xy)
    Z1X, ZrX = np.asarray(dp.Z1X), np.asarray(dp.ZrX)
    R = np.linalg.inv(S) if S.shape[0] else S
    rp_u = ResponseProducts(Z1y=jax.device_put(np.asarray(rp.Z1y) + Z1X @ b0),
                            Zry=jax.device_put(np.asarray(rp.Zry) + ZrX @ b0),
                            Xy=jax.device_put(R.T @ (Xy + XtX @ b0)),
                            yy=jax.device_put(np.float64(rp.yy) + 2 * b0 @ Xy + b0 @ XtX @ b0),
                            shift=jax.device_put(np.zeros(S.shape[0])))
    return dp_u, rp_u


# Size buckets of the padded levels (pad_products): up to FINE_BUCKET_FROM a count is rounded up to a
# power of two (at least LEVEL_BUCKET_MIN), above it to the next multiple of an eighth of its octave (at
# most 12.5% more, where the remaining terms' dense block costs q_r^3).
LEVEL_BUCKET_MIN = 32
FINE_BUCKET_FROM = 256
# A sparse coupling block whose padded dense form has at most this many entries (q_r m_1 k_1) is padded
# densely: small crossed designs then share compiled code across sizes (a dense update of 64k entries
# costs microseconds), where the sparse form's pair count would be a shape of every dataset's own.
DENSE_PAD_MAX_ENTRIES = 1 << 16


def size_bucket(x: int, minimum: int) -> int:
    """The padded size of a dimension of ``x`` (0 stays 0: an absent block)."""
    if x <= 0:
        return 0
    if x <= minimum:
        return minimum
    bits = (x - 1).bit_length()
    if x <= FINE_BUCKET_FROM:
        return 1 << bits
    step = 1 << (bits - 4)       # an eighth of the octave (2^(bits-1), 2^bits] that holds x
    return -(-x // step) * step


def _rest_rows(s: Structure, padded: Structure) -> np.ndarray:
    """Positions of the remaining terms' rows of Z_r in the padded layout
    (each term's padded levels follow its own)."""
    out = [o_new + np.arange(m * k) for k, m, o_new in zip(s.ks[1:], s.ms[1:], padded.rest_offsets)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def padded_response(rp: ResponseProducts, s: Structure, padded: Structure, xp: Any = np) -> ResponseProducts:
    """Response products in the padded layout of :func:`pad_products` (zeros
    for the padded levels), of one response or with leading batch axes:
    numpy arrays with ``xp=np``, traced inside a kernel with ``xp=jnp``."""
    if padded == s:
        return rp
    Z1y, Zry = rp.Z1y, rp.Zry
    zeros = xp.zeros(Z1y.shape[:-2] + (padded.ms[0] - s.ms[0], s.ks[0]), dtype=Z1y.dtype)
    source = np.full(padded.q_rest, s.q_rest)          # each padded row's row of [Z_r'y, 0]
    source[_rest_rows(s, padded)] = np.arange(s.q_rest)
    Zry = xp.take(xp.concatenate([Zry, xp.zeros(Zry.shape[:-1] + (1,), dtype=Zry.dtype)], axis=-1), source, axis=-1)
    return rp._replace(Z1y=xp.concatenate([Z1y, zeros], axis=-2), Zry=Zry)


def pad_response(rp: ResponseProducts, s: Structure, padded: Structure) -> ResponseProducts:
    """One response's products in the padded layout of :func:`pad_products`,
    on the device (:func:`padded_response` in numpy)."""
    host = padded_response(rp._replace(Z1y=np.asarray(rp.Z1y), Zry=np.asarray(rp.Zry)), s, padded)
    return host._replace(Z1y=jax.device_put(host.Z1y), Zry=jax.device_put(host.Zry))


def pad_products(dp: DesignProducts, rp: ResponseProducts, s: Structure) -> Padded:
    """Pad the products to size buckets (:func:`size_bucket`), so that every
    dataset whose levels fall in the same buckets runs the same
    compiled code (and hits the persistent cache across processes).

    The padding is exactly neutral: a padded level has a zero block of Z'Z
    and zero cross-products, so its diagonal block of the penalised system
    is ``Lambda'0 Lambda + I = I``, its Cholesky factor I, its
    log-determinant 0 and its mode 0.

    Fixed-effects columns are not padded: the (p+1)-square factor of
    ``[X y]`` is unrolled (:func:`~lmm_jax.core.linalg.batched_cholesky`), and
    under the exact Hessian its compile time grows steeply with p (sleepstudy
    padded from p = 2 to 4 doubled the fit's compile time), while p is
    usually fixed by the formula.

    A sparse coupling block (:class:`~lmm_jax.core.sparse.SparseA21`) is indexed
    by the exact sizes and its pair count is a shape of its own: it is
    padded as a dense block when that is small (at most
    :data:`DENSE_PAD_MAX_ENTRIES` entries), and otherwise (large crossed
    designs such as InstEval) the products are returned unpadded.
    """
    padded = s._replace(ms=tuple(size_bucket(m, LEVEL_BUCKET_MIN) for m in s.ms))
    if isinstance(dp.A21, SparseA21):
        if padded.q_rest * padded.ms[0] * padded.ks[0] > DENSE_PAD_MAX_ENTRIES:
            return Padded(dp, rp, s)
        dp = dp._replace(A21=dense_coupling(dp.A21, s.q_rest, s.ms[0]))
    if padded == s:
        return Padded(dp, rp, s)
    m1, k1 = s.ms[0], s.ks[0]
    rows = _rest_rows(s, padded)
    A11 = np.zeros((padded.ms[0], k1, k1))
    A11[:m1] = np.asarray(dp.A11)
    Z1X = np.zeros((padded.ms[0], k1, s.p))
    Z1X[:m1] = np.asarray(dp.Z1X)
    A21 = np.zeros((padded.q_rest, padded.ms[0], k1))
    A21[rows[:, None], np.arange(m1)[None, :]] = np.asarray(dp.A21)
    A22 = np.zeros((padded.q_rest, padded.q_rest))
    A22[np.ix_(rows, rows)] = np.asarray(dp.A22)
    ZrX = np.zeros((padded.q_rest, s.p))
    ZrX[rows] = np.asarray(dp.ZrX)
    out = dp._replace(A11=jax.device_put(A11), A21=jax.device_put(A21), A22=jax.device_put(A22),
                      Z1X=jax.device_put(Z1X), ZrX=jax.device_put(ZrX))
    return Padded(out, pad_response(rp, s, padded), padded)


def repad_response(padded: Padded, rp: ResponseProducts, s: Structure) -> Padded:
    """``padded`` (:func:`pad_products` of a design of structure ``s``) with
    the response products ``rp`` of another response on the same design, in
    its layout: the padded design products are reused as they are."""
    return Padded(padded.products, rp if padded.structure == s else pad_response(rp, s, padded.structure),
                  padded.structure)

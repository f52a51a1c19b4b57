r"""Sparse storage of the coupling block ``A21 = Z_r'Z_1`` and its Schur update.

For crossed or partially crossed factors the block of ``Z'Z`` between the
remaining terms and the first (largest) term is sparse: row ``r`` of ``Z_r``
meets level ``j`` of the first term only if some observation has both. For
InstEval (1,156 remaining columns x 2,972 students) about 3% of the dense
(q_r, m_1) array is nonzero. Stored densely, the Schur complement update

    L21 L21' = Lambda_r'A21 Lambda_1 M_1^{-1} Lambda_1'A21' Lambda_r,
    M_1 = blockdiag_j(Lambda_1'A11_j Lambda_1 + I)                    (1)

costs a (q_r x m_1 k_1) by (m_1 k_1 x q_r) product per evaluation (4 GFlop for
InstEval). Here it is a sum over the co-occurring pairs only: with the nonzero
rows of ``L21`` (one k_1-vector per (row r, level j) pair)

    (L21 L21')[r, r'] = sum_j  L21[r, j] . L21[r', j]                (2)

and the pairs (a, b) of nonzero rows that share a level j, with row(a) <=
row(b), are enumerated once in numpy (:func:`coupling_index`). One
evaluation gathers the two rows of each pair, takes their dot product and
adds it into the lower triangle of the q_r x q_r update with a sorted
``segment_sum`` (MixedModels.jl forms the same product from its sparse
``L[2,1]`` block in ``rankUpdate!``). The cost is O(pairs k_1), independent
of n, and nothing of size q_r x m_1 is ever allocated.

Rows of a remaining term with k_t > 1 columns are stored as complete groups
of k_t consecutive rows (one group per (level of t, level j) pair), so
``Lambda_t'`` mixes rows inside a group with one einsum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..runtime.kernel import serializable


@serializable
class CouplingIndex(NamedTuple):
    """Where the nonzero rows of A21 (and L21) sit, and the pairs of (2).

    Attributes:
        row: (R,) int32 row of Z_r of each stored row (R = sum_t nnz_t k_t).
        level: (R,) int32 first-term level j of each stored row.
        pair_a, pair_b: (P,) int32 positions of the two stored rows of each
            pair; same level, ``row[pair_a] <= row[pair_b]``.
        pair_level: (P,) int32 their common level j.
        pair_dest: (P,) int32 or int64 ``row[pair_b] * q_r + row[pair_a]``,
            sorted ascending (the flat position in the lower triangle).
        pair_product: (P,) the dot product of the two stored rows of A21 of
            each pair (a theta-free factor of every term of (2) for k_1 = 1,
            see :func:`scalar_schur_update`).
    """

    row: jnp.ndarray
    level: jnp.ndarray
    pair_a: jnp.ndarray
    pair_b: jnp.ndarray
    pair_level: jnp.ndarray
    pair_dest: jnp.ndarray
    pair_product: jnp.ndarray


@serializable
class SparseA21(NamedTuple):
    """``A21 = Z_r'Z_1`` by nonzero blocks.

    Attributes:
        blocks: one array per remaining term t, (nnz_t, k_t, k_1): the block
            ``Z_t[level l]' Z_1[level j]`` of each co-occurring (l, j) pair.
        index: the :class:`CouplingIndex` of the flattened rows.
    """

    blocks: tuple[jnp.ndarray, ...]
    index: CouplingIndex


class SparseL21(NamedTuple):
    """The nonzero rows of ``L21 = Lambda_r'A21 Lambda_1 L_1^{-T}``.

    Attributes:
        values: (R, k_1) one row per stored row of A21.
        index: the :class:`CouplingIndex` (shared with A21).
    """

    values: jnp.ndarray
    index: CouplingIndex


def _upper_pairs(level: np.ndarray, row: np.ndarray, q_r: int) -> tuple[np.ndarray, ...]:
    """All pairs (a, b) of stored rows with the same level and row[a] <= row[b],
    ordered by destination ``row[b] * q_r + row[a]`` (ties in generation order)."""
    R = level.shape[0]
    idx = np.int32 if R < 2 ** 31 else np.int64          # the gathers below move half the bytes in int32
    order = np.lexsort((row, level)).astype(idx)          # by level, then row
    lev_sorted = level[order]
    starts = np.flatnonzero(np.r_[True, lev_sorted[1:] != lev_sorted[:-1]])
    sizes = np.diff(np.r_[starts, R])
    group_end = np.repeat(starts + sizes, sizes)           # end of each element's group (sorted positions)
    count = group_end - np.arange(R)                       # partners at or after each element
    total = int(count.sum())
    a_sorted = np.repeat(np.arange(R, dtype=idx), count)
    first_of_run = np.repeat((np.cumsum(count) - count).astype(np.int64), count)
    b_sorted = a_sorted + (np.arange(total, dtype=np.int64) - first_of_run).astype(idx)
    pair_a, pair_b = order[a_sorted], order[b_sorted]
    dest_dtype = np.int32 if q_r * q_r < 2 ** 31 else np.int64
    dest = row[pair_b].astype(np.int64) * q_r + row[pair_a]
    if q_r * q_r * max(total, 1) < 2 ** 62:
        # distinct keys (dest, then position), whose quicksort is dest's stable order, 3-4x sooner
        by_dest = np.argsort(dest * total + np.arange(total))
    else:
        by_dest = np.argsort(dest, kind="stable")
    a = pair_a[by_dest]
    return (a.astype(np.int32), pair_b[by_dest].astype(np.int32), level[a].astype(np.int32),
            dest[by_dest].astype(dest_dtype))


def sparse_coupling(rest: list[tuple[np.ndarray, np.ndarray, int, int]], codes1: np.ndarray, Z1: np.ndarray,
                    m1: int, q_r: int, chunk_rows: int = 1 << 18) -> SparseA21:
    """Build :class:`SparseA21` from the data in O(n log n) (one sort).

    Args:
        rest: for each remaining term (codes (n,), Z (n, k_t), offset of the
            term in Z_r, levels m_t).
        codes1, Z1: the first term's level codes (n,) and columns (n, k_1).
        m1: levels of the first term.
        q_r: columns of Z_r.
        chunk_rows: rows per chunk for the weighted bincounts (bounds the
            size of temporaries for very large n).
    """
    k1 = Z1.shape[1]
    n = codes1.shape[0]
    blocks, rows, levels = [], [], []
    for codes, Z, offset, m in rest:
        kt = Z.shape[1]
        key = codes.astype(np.int64) * m1 + codes1
        uniq, inv = np.unique(key, return_inverse=True)
        nnz = uniq.shape[0]
        vals = np.zeros((nnz, kt, k1))
        for lo in range(0, n, chunk_rows):
            sl = slice(lo, min(lo + chunk_rows, n))
            for c in range(kt):
                for a in range(k1):
                    vals[:, c, a] += np.bincount(inv[sl], weights=Z[sl, c] * Z1[sl, a], minlength=nnz)
        lvl_t, j = uniq // m1, uniq % m1
        blocks.append(vals)
        rows.append((offset + lvl_t[:, None] * kt + np.arange(kt)[None, :]).ravel())
        levels.append(np.repeat(j, kt))
    row = np.concatenate(rows).astype(np.int64)
    level = np.concatenate(levels).astype(np.int64)
    pair_a, pair_b, pair_level, pair_dest = _upper_pairs(level, row, q_r)
    flat = np.concatenate([b.reshape(-1, k1) for b in blocks])
    pair_product = np.einsum("pa,pa->p", flat[pair_a], flat[pair_b])
    index = CouplingIndex(row=jax.device_put(row.astype(np.int32)), level=jax.device_put(level.astype(np.int32)),
                          pair_a=jax.device_put(pair_a), pair_b=jax.device_put(pair_b),
                          pair_level=jax.device_put(pair_level), pair_dest=jax.device_put(pair_dest),
                          pair_product=jax.device_put(pair_product))
    return SparseA21(blocks=tuple(jax.device_put(b) for b in blocks), index=index)


def dense_coupling(A21: SparseA21, q_r: int, m1: int) -> np.ndarray:
    """The dense (q_r, m_1, k_1) array of a :class:`SparseA21` (numpy)."""
    rows = np.concatenate([np.asarray(b).reshape(-1, b.shape[-1]) for b in A21.blocks])
    out = np.zeros((q_r, m1, rows.shape[-1]))
    out[np.asarray(A21.index.row), np.asarray(A21.index.level)] = rows   # each (row, level) once
    return out


def n_pairs(A21: SparseA21) -> int:
    """Number of co-occurring row pairs (the cost of one Schur update)."""
    return int(A21.index.pair_a.shape[0])


def lambda_coupling(lams: tuple[jnp.ndarray, ...], A21: SparseA21) -> jnp.ndarray:
    """The stored rows of ``Lambda_r' A21 Lambda_1``, shape (R, k_1)."""
    lam1 = lams[0]
    k1 = lam1.shape[0]
    parts = [jnp.einsum("ba,ebc,cd->ead", lam, blk, lam1).reshape(-1, k1) for lam, blk in zip(lams[1:], A21.blocks)]
    return jnp.concatenate(parts, axis=0)


def symmetric_from_lower(T: jnp.ndarray) -> jnp.ndarray:
    """The symmetric matrix whose lower triangle (and diagonal) is that of T (..., q, q), upper 0."""
    return T + jnp.swapaxes(T, -1, -2) - jnp.eye(T.shape[-1], dtype=T.dtype) * T


def schur_update(L21: SparseL21, q_r: int) -> jnp.ndarray:
    """``L21 L21'`` (q_r, q_r) by eq. (2): a gather per pair and a sorted segment sum."""
    idx = L21.index
    v = L21.values
    vals = jnp.sum(v[idx.pair_a] * v[idx.pair_b], axis=-1)
    T = jax.ops.segment_sum(vals, idx.pair_dest, num_segments=q_r * q_r, indices_are_sorted=True)
    return symmetric_from_lower(T.reshape(q_r, q_r))


def scalar_schur_update(A21: SparseA21, w: jnp.ndarray, q_r: int, lower: bool = False) -> jnp.ndarray:
    """``sum_j w_j a_j a_j'`` (q_r, q_r) for scalar terms (k_1 = 1 and every k_t = 1),
    ``a_j`` the column of ``A21`` for level j; for w of shape (m_1, k), the k
    sums at once, shape (k, q_r, q_r) (one gather and one segment sum).

    With ``Lambda_1 = theta_1`` and ``L_1j^2 = 1 + theta_1^2 A11_j``, the rows of
    L21 are ``lambda_r A21[r, j] theta_1 / L_1j``, so (2) is ``Lambda_r U Lambda_r``
    with ``U = sum_j w_j a_j a_j'`` and ``w_j = theta_1^2 / L_1j^2``: the product of
    the two stored values of each pair does not depend on theta, U is linear
    in w, and its derivatives in theta_1 are the same sum with the
    derivatives of w (``likelihood._scalar_derivatives``). With ``lower``, only
    the lower triangle (and diagonal) is filled, the upper triangle is 0: what
    a Cholesky factorisation reads, without the q_r x q_r transpose.
    """
    idx = A21.index
    W = w if w.ndim == 2 else w[:, None]
    T = jax.ops.segment_sum(W[idx.pair_level] * idx.pair_product[:, None], idx.pair_dest, num_segments=q_r * q_r,
                            indices_are_sorted=True)
    T = jnp.moveaxis(T.reshape(q_r, q_r, W.shape[1]), -1, 0)
    U = T if lower else symmetric_from_lower(T)
    return U if w.ndim == 2 else U[0]


def scalar_pair_inner(A21: SparseA21, w: jnp.ndarray, Y: jnp.ndarray) -> jnp.ndarray:
    """``<Y, U(w)>`` for symmetric Y (q_r, q_r) and U(w) of :func:`scalar_schur_update`
    (w (m_1,), or (m_1, k) for k sums at once), from the pairs without forming
    U: one gather of Y at the pairs' positions (each off-diagonal pair stands
    for two entries of the symmetric U)."""
    idx = A21.index
    y = idx.pair_product * jnp.where(idx.pair_a == idx.pair_b, 1.0, 2.0) * Y.reshape(-1)[idx.pair_dest]
    return y @ w[idx.pair_level]


def times_dense(L21: SparseL21, C1: jnp.ndarray, q_r: int) -> jnp.ndarray:
    """``L21 C1`` (q_r, c) for C1 (m_1, k_1, c): sum_j L21[r, j] C1[j]."""
    idx = L21.index
    contrib = jnp.einsum("ra,rac->rc", L21.values, C1[idx.level])
    return jax.ops.segment_sum(contrib, idx.row, num_segments=q_r)


def transpose_times_vector(L21: SparseL21, u: jnp.ndarray, m1: int) -> jnp.ndarray:
    """``L21' u`` as (m_1, k_1) for u (q_r,): sum_r L21[r, j] u[r]."""
    idx = L21.index
    return jax.ops.segment_sum(L21.values * u[idx.row][:, None], idx.level, num_segments=m1)


def quadratic_blocks(L21: SparseL21, P: jnp.ndarray, m1: int) -> jnp.ndarray:
    """``L21[:, j]' P L21[:, j]`` for each level j, (m_1, k_1, k_1), P symmetric (q_r, q_r).

    Over the upper pairs of (2): each off-diagonal pair counts twice (once
    transposed), a row paired with itself once.
    """
    idx = L21.index
    v = L21.values
    ra, rb = idx.row[idx.pair_a], idx.row[idx.pair_b]
    w = P[ra, rb] * jnp.where(idx.pair_a == idx.pair_b, 0.5, 1.0)
    X = jax.ops.segment_sum(w[:, None, None] * v[idx.pair_a][:, :, None] * v[idx.pair_b][:, None, :],
                            idx.pair_level, num_segments=m1)
    return X + jnp.swapaxes(X, -1, -2)

"""Cross-products of [Z X y], computed once in O(n), in blocked form.

With terms ordered largest first, ``Z = [Z_1 Z_r]`` where Z_1 is the first
term (m_1 levels of k_1 columns: its block of Z'Z is block diagonal) and Z_r
holds the remaining terms (q_r = sum of m_t k_t columns, level-major within
each term). The likelihood needs only

    A11 = Z_1'Z_1  as (m_1, k_1, k_1) diagonal blocks
    A21 = Z_r'Z_1  as (q_r, m_1, k_1)
    A22 = Z_r'Z_r  as (q_r, q_r)
    Z_1'X, Z_r'X, X'X                        (design: shared by all responses)
    Z_1'y, Z_r'y, X'y, y'y                   (response: what vmap batches)

Design products are built with numpy ``bincount`` (no dense Z). Response
products are a pure JAX function of y (segment sums), so a batch of
simulated responses maps through it with ``vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .design import Design


class Structure(NamedTuple):
    """Static shape information of a model (hashable; closed over by jit).

    Attributes:
        ks: columns per term (largest-level term first).
        ms: levels per term.
        n: observations.
        p: fixed-effects columns.
    """

    ks: tuple[int, ...]
    ms: tuple[int, ...]
    n: int
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


class DesignProducts(NamedTuple):
    """Cross-products that do not involve y (see module docstring)."""

    A11: jnp.ndarray
    A21: jnp.ndarray
    A22: jnp.ndarray
    Z1X: jnp.ndarray
    ZrX: jnp.ndarray
    XtX: jnp.ndarray


class ResponseProducts(NamedTuple):
    """Cross-products that involve y: Z_1'y (m_1, k_1), Z_r'y (q_r,), X'y (p,), y'y."""

    Z1y: jnp.ndarray
    Zry: jnp.ndarray
    Xy: jnp.ndarray
    yy: jnp.ndarray


class DesignArrays(NamedTuple):
    """What a pure function of y needs to form its products: X, and each
    term's level codes and Z columns."""

    X: jnp.ndarray
    codes: tuple[jnp.ndarray, ...]
    Z: tuple[jnp.ndarray, ...]


def structure_of(design: Design) -> Structure:
    return Structure(ks=design.ks, ms=design.ms, n=design.n, p=design.p)


def design_arrays(design: Design) -> DesignArrays:
    return DesignArrays(X=jnp.asarray(design.X), codes=tuple(jnp.asarray(t.codes) for t in design.terms),
                        Z=tuple(jnp.asarray(t.Z) for t in design.terms))


def _rest_index(design: Design) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each remaining term: (row index into Z_r of column c, for each c) as an (n, k) int array, and Z."""
    out, o = [], 0
    for t in design.terms[1:]:
        idx = o + t.codes[:, None].astype(np.int64) * t.k + np.arange(t.k)[None, :]
        out.append((idx, t.Z))
        o += t.m * t.k
    return out


def design_products(design: Design) -> DesignProducts:
    """Z'Z, Z'X and X'X in blocked form, in O(n) per entry with bincount."""
    t1 = design.terms[0]
    m1, k1 = t1.m, t1.k
    X = design.X
    p = X.shape[1]
    c1 = t1.codes.astype(np.int64)
    A11 = np.empty((m1, k1, k1))
    for a in range(k1):
        for b in range(a, k1):
            A11[:, a, b] = A11[:, b, a] = np.bincount(c1, weights=t1.Z[:, a] * t1.Z[:, b], minlength=m1)
    Z1X = np.empty((m1, k1, p))
    for a in range(k1):
        for j in range(p):
            Z1X[:, a, j] = np.bincount(c1, weights=t1.Z[:, a] * X[:, j], minlength=m1)
    rest = _rest_index(design)
    qr = sum(t.m * t.k for t in design.terms[1:])
    A21 = np.zeros((qr, m1, k1))
    A22 = np.zeros((qr, qr))
    ZrX = np.zeros((qr, p))
    for idx, Z in rest:
        for c in range(idx.shape[1]):
            flat = idx[:, c] * m1 + c1
            for a in range(k1):
                A21[..., a] += np.bincount(flat, weights=Z[:, c] * t1.Z[:, a], minlength=qr * m1).reshape(qr, m1)
            for j in range(p):
                ZrX[:, j] += np.bincount(idx[:, c], weights=Z[:, c] * X[:, j], minlength=qr)
            for idx2, Z2 in rest:
                for d in range(idx2.shape[1]):
                    flat2 = idx[:, c] * qr + idx2[:, d]
                    A22 += np.bincount(flat2, weights=Z[:, c] * Z2[:, d], minlength=qr * qr).reshape(qr, qr)
    return DesignProducts(A11=jnp.asarray(A11), A21=jnp.asarray(A21), A22=jnp.asarray(A22),
                          Z1X=jnp.asarray(Z1X), ZrX=jnp.asarray(ZrX), XtX=jnp.asarray(X.T @ X))


def response_products(y: jnp.ndarray, arrays: DesignArrays, structure: Structure) -> ResponseProducts:
    """Z_1'y, Z_r'y, X'y and y'y as a pure JAX function of y (vmappable)."""
    ks, ms = structure.ks, structure.ms
    Z1y = jax.ops.segment_sum(arrays.Z[0] * y[:, None], arrays.codes[0], num_segments=ms[0])
    parts = [jax.ops.segment_sum(Z * y[:, None], c, num_segments=m).reshape(m * k)
             for Z, c, m, k in zip(arrays.Z[1:], arrays.codes[1:], ms[1:], ks[1:])]
    Zry = jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype=y.dtype)
    return ResponseProducts(Z1y=Z1y, Zry=Zry, Xy=arrays.X.T @ y, yy=y @ y)

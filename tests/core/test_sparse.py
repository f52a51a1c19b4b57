"""The sparse coupling's pair list (lmm_jax/core/sparse.py) against its definition, pair by pair."""

from __future__ import annotations

import numpy as np
import pytest

from lmm_jax.core.sparse import _upper_pairs


def pairs_by_definition(level: np.ndarray, row: np.ndarray, q_r: int) -> list[tuple[int, int, int, int]]:
    """Every (a, b) with the same level and row[a] <= row[b] (a before b among equal rows), ordered by
    the destination row[b] * q_r + row[a], then by level and rows as generated."""
    order = sorted(range(len(level)), key=lambda i: (level[i], row[i], i))
    out = []
    for x, a in enumerate(order):
        for b in order[x:]:
            if level[b] == level[a]:
                out.append((int(row[b]) * q_r + int(row[a]), len(out), a, b))
    return [(a, b, int(level[a]), dest) for dest, _, a, b in sorted(out)]


@pytest.mark.parametrize("q_r", [7, 40, 1 << 28])        # 1 << 28: keys too large for the fast sort
@pytest.mark.parametrize("seed", range(3))
def test_upper_pairs_are_the_definitions_in_destination_order(q_r, seed):
    rng = np.random.default_rng(seed)
    R = 60
    level = rng.integers(0, 9, R)
    # distinct rows (as in a design) or repeated ones
    row = rng.choice(1000, R, replace=False) if seed == 0 and q_r > 1000 else rng.integers(0, min(q_r, 40), R)
    a, b, lev, dest = _upper_pairs(level, row, q_r)
    assert list(zip(a.tolist(), b.tolist(), lev.tolist(), dest.tolist())) == pairs_by_definition(level, row, q_r)
    assert dest.dtype == (np.int32 if q_r * q_r < 2 ** 31 else np.int64)

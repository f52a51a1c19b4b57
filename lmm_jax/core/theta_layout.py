"""Where each entry of theta sits, and what lme4 calls it.

theta stacks, term by term, the lower triangle of each term's k_t x k_t
relative covariance factor Lambda_t, column by column (lme4's
``getME(fit, "theta")``: (1,1), (2,1), ..., (k,1), (2,2), ...). A
:class:`ThetaLayout` is that map, built once from the terms' column counts
(MixedModels.jl's ``parmap``): every per-term slice of theta, the mask of its
diagonal entries, the (term, row, column) of each entry and, given the
terms' column and grouping-factor names, lme4's parameter names.

The variance components ``vech(sigma^2 Lambda_t Lambda_t')`` (the varcomp
vector of :mod:`lmm_jax.inference.satterthwaite`) are in the order of theta,
followed by sigma^2; :attr:`ThetaLayout.varcorr_order` gives lme4's
``as.data.frame(VarCorr(fit))`` row order.

Naming a grouping factor that appears in several terms (``(1 | g) +
(0 + x | g)``, as ``(x || g)`` expands): the second and later terms of a
factor get R's ``make.unique`` suffixes ``g.1``, ``g.2``, ..., the ``grp``
of lme4's ``as.data.frame(VarCorr(fit))``; the same group name enters the
parameter names (``sd_x|g.1``). lme4's ``confint(fit, oldNames = FALSE)``
leaves the suffix out, so two terms can share a name there (``(1 | g) +
(1 | g)`` gives ``sd_(Intercept)|g`` twice); here every name is distinct,
since names are keys (``profile_confint(which=...)``, table indexes,
bootstrap columns). When a factor repeats, lme4 also passes every group name
through R's ``make.names`` (``cask:batch`` becomes ``cask.batch``); that is
not done here: a factor keeps the name it has in every other table.

numpy only: the layout is static, so compiled code reads its index arrays as
constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np


def lower_tri_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a k x k lower triangle in column-major order
    (lme4's order: (1,1), (2,1), ..., (k,1), (2,2), ...)."""
    rows, cols = [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
    return np.asarray(rows, dtype=int), np.asarray(cols, dtype=int)


def make_unique(names: tuple[str, ...]) -> tuple[str, ...]:
    """R's ``make.unique``: the second and later copies of a name get ``.1``,
    ``.2``, ..., skipping names already present (``a, a, a.1`` ->
    ``a, a.2, a.1``)."""
    taken = set(names)
    first: set[str] = set()
    counts: dict[str, int] = {}
    out = []
    for name in names:
        if name not in first:
            first.add(name)
            out.append(name)
            continue
        n = counts.get(name, 0) + 1
        while f"{name}.{n}" in taken:
            n += 1
        counts[name] = n
        taken.add(f"{name}.{n}")
        out.append(f"{name}.{n}")
    return tuple(out)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class ThetaLayout:
    """The layout of theta for terms with ``ks`` columns (module docstring).

    Args:
        ks: columns per random-effects term, in the model's term order.
        columns: optional, per term its column names (``("(Intercept)", "Days")``).
        groups: optional, per term its grouping factor as lme4 prints it
            (``Subject``, ``cask:batch``); repeated factors are allowed.

    Index arrays are read-only numpy arrays of length :attr:`n_theta`.

    Example:
        >>> lay = ThetaLayout((2,), (("(Intercept)", "Days"),), ("Subject",))
        >>> lay.names
        ('sd_(Intercept)|Subject', 'cor_Days.(Intercept)|Subject', 'sd_Days|Subject')
    """

    ks: tuple[int, ...]
    columns: tuple[tuple[str, ...], ...] | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(tuple(str(c) for c in cs) for cs in self.columns))
            if tuple(len(cs) for cs in self.columns) != self.ks:
                raise ValueError(f"columns {self.columns} do not match the terms' column counts {self.ks}")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(str(g) for g in self.groups))
            if len(self.groups) != len(self.ks):
                raise ValueError(f"groups {self.groups} must name each of the {len(self.ks)} terms")

    @staticmethod
    @lru_cache(maxsize=None)
    def of(ks: tuple[int, ...]) -> "ThetaLayout":
        """The unnamed layout of ``ks`` (shared; what kernels of a structure use)."""
        return ThetaLayout(tuple(ks))

    # -- positions ------------------------------------------------------------------------------
    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Entries of theta per term, k_t (k_t + 1) / 2."""
        return tuple(k * (k + 1) // 2 for k in self.ks)

    @property
    def n_theta(self) -> int:
        return sum(self.sizes)

    @cached_property
    def slices(self) -> tuple[slice, ...]:
        """Per term, its slice of theta."""
        ends = np.cumsum((0,) + self.sizes)
        return tuple(slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:]))

    def tri(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) in Lambda_t of the entries of term t's slice."""
        sl = self.slices[t]
        return self.row[sl], self.col[sl]

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [(np.full(len(r), t), r, c) for t, k in enumerate(self.ks) for r, c in [lower_tri_indices(k)]]
        if not parts:
            return tuple(_readonly(np.zeros(0, dtype=int)) for _ in range(3))
        return tuple(_readonly(np.concatenate([p[a] for p in parts]).astype(int)) for a in range(3))

    @property
    def term(self) -> np.ndarray:
        """Term of each theta entry."""
        return self._arrays[0]

    @property
    def row(self) -> np.ndarray:
        """Row in Lambda_t of each theta entry."""
        return self._arrays[1]

    @property
    def col(self) -> np.ndarray:
        """Column in Lambda_t of each theta entry."""
        return self._arrays[2]

    @cached_property
    def entries(self) -> tuple[tuple[int, int, int], ...]:
        """(term, row, column) of each theta entry."""
        return tuple((int(t), int(i), int(j)) for t, i, j in zip(self.term, self.row, self.col))

    @cached_property
    def diagonal(self) -> np.ndarray:
        """True where the theta entry is a diagonal of its Lambda_t."""
        return _readonly(self.row == self.col)

    @cached_property
    def _positions(self) -> dict[tuple[int, int, int], int]:
        return {e: n for n, e in enumerate(self.entries)}

    def position(self, t: int, i: int, j: int) -> int:
        """Index in theta of entry (i, j) of Lambda_t, or of vech(Sigma_t) in
        the varcomp vector (symmetric: (i, j) and (j, i) are the same entry)."""
        return self._positions[(t, max(i, j), min(i, j))]

    @cached_property
    def stacked_row(self) -> np.ndarray:
        """Each entry's row when the terms' Lambda_t are stacked one under
        another (``sum(ks)`` rows): ``sum(ks[:t]) + i``."""
        first = np.cumsum((0,) + self.ks)[:-1]
        return _readonly(first[self.term] + self.row if self.n_theta else np.zeros(0, dtype=int))

    @cached_property
    def varcorr_order(self) -> np.ndarray:
        """Theta positions in lme4's ``as.data.frame(VarCorr(fit))`` row order:
        per term, its variances, then its covariances column by column."""
        out = []
        for sl in self.slices:
            pos = np.arange(sl.start, sl.stop)
            out.extend(pos[self.diagonal[sl]])
            out.extend(pos[~self.diagonal[sl]])
        return _readonly(np.asarray(out, dtype=int))

    # -- names ----------------------------------------------------------------------------------
    @cached_property
    def group_names(self) -> tuple[str, ...]:
        """Per term, its group name: the factor, with ``.1``, ``.2``, ... on the
        second and later terms of the same factor (module docstring)."""
        if self.groups is None:
            raise ValueError("this ThetaLayout was built without the terms' grouping factors (groups=...)")
        return make_unique(self.groups)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """lme4's name of each theta entry on the SD / correlation scale:
        ``sd_<column>|<group>`` for a diagonal entry (i, i),
        ``cor_<column i>.<column j>|<group>`` for an entry (i, j), i > j."""
        if self.columns is None:
            raise ValueError("this ThetaLayout was built without the terms' column names (columns=...)")
        grp, cols = self.group_names, self.columns
        return tuple(f"sd_{cols[t][i]}|{grp[t]}" if i == j else f"cor_{cols[t][i]}.{cols[t][j]}|{grp[t]}"
                     for t, i, j in self.entries)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """:attr:`names`, then ``sigma``: the variance parameters of lme4's ``confint``."""
        return self.names + ("sigma",)

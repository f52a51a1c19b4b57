"""The GLMM object and its fit: ``GLMM(formula, data, family="binomial").fit()`` (lme4's ``glmer``).

``GLMM`` holds the design and the row arrays the Laplace deviance is a
function of (:class:`~lmm_jax.core.laplace.GLMMData`) and never changes;
``fit`` returns an immutable :class:`~lmm_jax.glmm.results.GLMMResult`.

Responses (lme4's conventions for the binomial family):

* 0/1: numbers, booleans, or a factor (text or categorical) whose first
  level is 0 and every other level 1;
* proportions ``y`` in [0, 1] with ``weights`` = the number of trials, so
  that ``y * weights`` are whole numbers of successes;
* successes and failures: ``s/(s + f) ~ ...`` with ``weights = s + f``, or
  lme4's own spelling ``cbind(s, f) ~ ...``, which is translated to it.

Poisson responses are counts (whole numbers >= 0). An offset enters the
linear predictor as it does for an LMM (``offset(log(exposure))`` in the
formula, or ``offset=``).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from formulaic import model_matrix

from ..build.crossprod import MAX_DENSE_COUPLING, MAX_DENSE_REST
from ..build.design import R_FUNCTIONS, Design, as_frame, build_design, formulaic_text
from ..core.diagnostics import assess
from ..core.family import Family, make_family
from ..core.glmm_fit import fit_glmm
from ..core.laplace import MAX_AGQ, GLMMData, deviance
from ..core.parametrization import phi_from_theta, theta_start
from ..core.types import Structure
from ..errors import ConvergenceError, ConvergenceWarning, DataError, SeparationWarning, SingularFitWarning, \
    check_bool, check_count
from ..runtime.scope import entry_point
from .results import GLMMResult

INTEGER_TOL = 1e-3          # R's binomial initialize: |w y - round(w y)| above this is a non-integer count
SEPARATION_SPAN = 15.0      # |beta_j| x range(x_j) on the link scale above which a fixed effect is flagged
_CBIND = re.compile(r"^\s*cbind\s*\((.*)\)\s*$", re.S)


def _split_arguments(text: str) -> list[str]:
    """The top-level comma-separated arguments of a call's argument text."""
    parts, depth, last = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:])
    return [p.strip() for p in parts]


def _evaluate(expr: str, df: pd.DataFrame) -> np.ndarray:
    """A numeric expression of the data's columns, one value per row (NaN kept)."""
    mm = model_matrix(f"0 + I({formulaic_text(expr, df)})", df, na_action="ignore", context=R_FUNCTIONS)
    if mm.shape[1] != 1:
        raise DataError(f"{expr!r} in cbind(...) is not one numeric column")
    return mm.to_numpy(dtype=float)[:, 0]


def cbind_response(formula: str, data: Any, weights: Any) -> tuple[str, Any, Any]:
    """lme4's ``cbind(successes, failures) ~ rhs`` as the proportion response
    ``successes / (successes + failures)`` (a column named ``cbind(...)``,
    added to a copy of the data) with weights ``successes + failures`` (times
    the given weights); any other formula is returned as it is."""
    if not isinstance(formula, str) or "~" not in formula:
        return formula, data, weights
    lhs, rhs = formula.split("~", 1)
    m = _CBIND.match(lhs)
    if m is None:
        return formula, data, weights
    args = _split_arguments(m.group(1))
    if len(args) != 2 or not all(args):
        raise DataError(f"cbind() in the response takes two arguments, successes and failures, got {lhs.strip()!r}")
    df = as_frame(data)
    success, failure = (_evaluate(a, df) for a in args)
    trials = success + failure
    with np.errstate(invalid="ignore", divide="ignore"):
        prop = np.where(trials > 0, success / np.where(trials > 0, trials, 1.0), np.nan)
    bad = np.isfinite(trials) & ((success < 0) | (failure < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"cbind({args[0]}, {args[1]}) has negative counts (first at row {i}: {success[i]:g}, "
                        f"{failure[i]:g}); successes and failures must be >= 0")
    name = f"cbind({args[0]}, {args[1]})"
    if weights is None:
        total = trials
    else:
        w = df[weights].to_numpy(dtype=float) if isinstance(weights, str) else np.asarray(weights, dtype=float)
        total = trials * w
    return f"`{name}` ~{rhs}", df.assign(**{name: prop}), np.where(np.isfinite(total), total, 0.0)


def check_response(design: Design, fam: Family) -> None:
    """The response must suit the family (lme4's binomial and poisson checks, as errors).

    Raises:
        DataError: a binomial response outside [0, 1], proportions whose
            successes ``y * weights`` are not whole numbers, or poisson
            responses that are negative or not whole numbers.
    """
    y = design.y
    w = np.ones_like(y) if design.weights is None else design.weights
    name = design.formula.response
    rows = design.data.index
    if fam.name == "binomial":
        bad = (y < 0) | (y > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"the binomial response {name!r} has {int(bad.sum())} value(s) outside [0, 1] (first "
                            f"{y[i]:g} at row {rows[i]!r}): give 0/1 outcomes, a two-level factor, or proportions "
                            "with weights= the number of trials (or cbind(successes, failures) ~ ...)")
        k = w * y
        off = np.abs(k - np.round(k)) > INTEGER_TOL
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DataError(f"the binomial response {name!r} times the weights gives non-integer numbers of "
                            f"successes ({int(off.sum())} row(s); first at row {rows[i]!r}: {y[i]:g} x {w[i]:g} = "
                            f"{k[i]:g}): proportions need weights= the number of trials of each row")
    elif fam.name == "poisson":
        bad = (y < 0) | (np.abs(y - np.round(y)) > INTEGER_TOL)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"the poisson response {name!r} has {int(bad.sum())} value(s) that are not counts "
                            f"(first {y[i]:g} at row {rows[i]!r}): a poisson response must be a whole number >= 0")


def _check_size(s: Structure, design: Design) -> None:
    """The dense coupling block and the remaining terms' block must fit (:mod:`lmm_jax.core.laplace`)."""
    qr = s.q_rest
    if qr > MAX_DENSE_REST or qr * s.ms[0] * s.ks[0] > MAX_DENSE_COUPLING:
        raise DataError(f"the random-effects terms after the first ({[t.group for t in design.terms[1:]]}) have "
                        f"{qr} columns, coupled densely to {s.ms[0] * s.ks[0]} of the first term: a GLMM supports "
                        f"at most {MAX_DENSE_REST} such columns and {MAX_DENSE_COUPLING} coupling entries; drop or "
                        "merge terms, or make the largest factor come first")


def user_basis(X: np.ndarray) -> np.ndarray:
    """S with ``X S`` of orthogonal columns of mean square 1 (``S = sqrt(n) R^{-1}``,
    ``X = QR``): the fit's basis of the fixed effects, ``beta = S beta_w``."""
    n, p = X.shape
    if p == 0:
        return np.zeros((0, 0))
    R = np.linalg.qr(X, mode="r")
    R = R * np.where(np.diagonal(R) < 0, -1.0, 1.0)[:, None]
    return np.sqrt(n) * np.linalg.inv(R)


@entry_point
class GLMM:
    """A generalized linear mixed model in lme4 syntax, ready to fit (lme4's ``glmer``).

    Args:
        formula: e.g. ``"r2 ~ Anger + Gender + (1 | id) + (1 | item)"``, or
            ``"cbind(incidence, size - incidence) ~ period + (1 | herd)"``.
        data: a pandas or polars DataFrame, or a dict of equal-length arrays.
        family: ``"binomial"`` or ``"poisson"``.
        link: ``"logit"`` (binomial's default), ``"probit"``, ``"cloglog"``;
            ``"log"`` (poisson's).
        weights: prior weights, a column name or an array: for a binomial
            proportion, the number of trials.
        offset: a known term of the linear predictor (a column name or an
            array), added to the formula's ``offset()`` terms.

    Attributes:
        family: the :class:`~lmm_jax.core.family.Family`.
        design: the evaluated :class:`~lmm_jax.build.design.Design` (a
            factor response coded 0/1).
        structure: static shapes.
        basis: S (p, p): the fit's fixed effects ``beta_w`` are ``S^{-1} beta``.
        data: the :class:`~lmm_jax.core.laplace.GLMMData` on the device
            (X in the fit's basis).

    Raises:
        ValueError: an unsupported family or link.
        FormulaError, DataError: as for :class:`~lmm_jax.model.LMM`, and a
            response that does not suit the family (:func:`check_response`).
    """

    def __init__(self, formula: str, data: Any, family: str = "binomial", link: str | None = None, *,
                 weights: Any = None, offset: Any = None):
        self.family: Family = make_family(family, link)
        self.formula = formula
        self.weights, self.offset = weights, offset
        text, frame, w = cbind_response(formula, data, weights)
        self.design: Design = build_design(text, frame, weights=w, offset=offset, glmm=True)
        check_response(self.design, self.family)
        d = self.design
        self.structure = Structure(ks=d.ks, ms=d.ms, p=d.p)
        _check_size(self.structure, d)
        self.basis = user_basis(d.X)
        n = d.n
        self.data = jax.device_put(GLMMData(
            y=d.y, weights=np.ones(n) if d.weights is None else d.weights,
            offset=np.zeros(n) if d.offset is None else d.offset, X=d.X @ self.basis,
            codes=tuple(t.codes for t in d.terms), Z=tuple(t.Z for t in d.terms)))

    def __repr__(self) -> str:
        d = self.design
        groups = ", ".join(f"{t.group}: {t.m}" for t in d.terms)
        return f"GLMM({self.formula!r}, {self.family.name}({self.family.link}); n={d.n}, p={d.p}, groups {groups})"

    @property
    def n_theta(self) -> int:
        """The number of covariance parameters theta (lme4's layout)."""
        return self.design.theta_layout.n_theta

    def deviance_function(self, nAGQ: int = 1) -> Callable:
        """glmer's objective as a pure JAX function of ``x = concatenate([theta, beta])``
        (lme4's ``glmer(..., devFunOnly = TRUE)`` of stage 2): the Laplace
        deviance (``nAGQ = 1``) or the AGQ deviance, differentiable with
        ``jax.grad`` / ``jax.hessian`` (exact, through the conditional
        mode's implicit derivatives), jit-able and vmappable. beta is in the
        user's columns (``design.fixef_names``).

        Args:
            nAGQ: 1 (Laplace) or the number of quadrature points (a single scalar term).
        """
        n_agq = _check_agq(nAGQ, self.structure, self.design)
        nt, fam, s, data = self.n_theta, self.family, self.structure, self.data
        S_inv = jnp.asarray(np.linalg.inv(self.basis) if self.structure.p else self.basis)

        def f(x: jnp.ndarray) -> jnp.ndarray:
            x = jnp.asarray(x, dtype=jnp.float64)
            return deviance(x[:nt], S_inv @ x[nt:], data, fam, s, n_agq)

        return f

    def fit(self, nAGQ: int = 1, *, start: Any = None, max_iter: int = 200, throw: bool = False) -> GLMMResult:
        """Fit by maximum likelihood: the Laplace approximation (``nAGQ = 1``) or
        adaptive Gauss-Hermite quadrature with ``nAGQ`` points (a single
        scalar random-effects term, as lme4 allows).

        Args:
            nAGQ: 1 (Laplace, glmer's default) or 2 to 25 quadrature points.
            start: starting theta (lme4's layout); default lme4's, every Lambda_t = I.
                beta starts at the GLM fit without random effects.
            max_iter: Newton iteration limit.
            throw: raise :class:`~lmm_jax.errors.ConvergenceError` instead of warning.

        Returns:
            An immutable :class:`~lmm_jax.glmm.results.GLMMResult`.

        Raises:
            ValueError: ``nAGQ`` out of range, or above 1 for a model that is
                not a single scalar random-effects term.
        """
        n_agq = _check_agq(nAGQ, self.structure, self.design)
        throw = check_bool(throw, "throw")
        max_iter = check_count(max_iter, "max_iter")
        ks = self.structure.ks
        theta0 = theta_start(ks) if start is None else np.asarray(start, dtype=float)
        if theta0.shape != (self.n_theta,) or not np.isfinite(theta0).all():
            raise ValueError(f"start must be {self.n_theta} finite numbers (lme4's theta layout), got "
                             f"{np.asarray(start).tolist()}")
        phi0, active0 = phi_from_theta(theta0, ks)
        opt, est = fit_glmm(self.data, np.asarray(phi0, dtype=np.float64), np.asarray(active0, dtype=bool),
                            self.family, self.structure, n_agq, max_iter)
        opt = jax.tree_util.tree_map(np.asarray, opt)
        est = jax.tree_util.tree_map(np.asarray, est)
        result = GLMMResult.from_fit(self, opt, est, n_agq)
        names = tuple(self.design.theta_layout.names) + tuple(self.design.fixef_names)
        diag = assess(result.gradient, result.hessian, result.boundary, names=names)
        result = dataclasses.replace(result, diagnostics=diag)
        problems = []
        if not result.converged:
            problems.append(f"the optimiser stopped after {int(opt.iterations)} iterations without meeting its "
                            f"criterion (Newton decrement {float(opt.decrement):.2g}, |grad| "
                            f"{float(opt.gradient_norm):.2g})")
        separated = separation(result)
        problems.extend(diag.messages if not separated else ())
        if problems:
            msg = "; ".join(problems) + "; try rescaling covariates or a simpler random-effects structure"
            if throw:
                raise ConvergenceError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=2)
        if separated:
            warnings.warn(separated, SeparationWarning, stacklevel=2)
        if result.singular:
            warnings.warn("boundary (singular) fit: a variance component is estimated at zero or a correlation "
                          "at +-1; see result.singular and consider simplifying the random effects",
                          SingularFitWarning, stacklevel=2)
        return result

    def fit_batch(self, Y: Any, nAGQ: int = 1, *, start: Any = None, max_iter: int = 200):
        """Fit many responses on this design in one vmapped compiled call
        (:mod:`lmm_jax.glmm.batch`): each column equals :meth:`fit` of that response.

        Args:
            Y: (n_obs, B) responses in the model's row order (binomial: proportions
                of the model's weights; poisson: counts), e.g. :meth:`GLMMResult.simulate`'s.
            nAGQ: 1 (Laplace) or the quadrature points, as for :meth:`fit`.
            start: None (each fit from lme4's theta and its GLM fit), a theta in
                lme4's layout, or a :class:`GLMMResult` of this design (a warm start
                from its theta and beta).
            max_iter: Newton iteration limit per fit.

        Returns:
            A :class:`~lmm_jax.glmm.batch.GLMMBatchResult` (``.table``, ``.coef_table()``);
            columns that cannot be fitted (all 0 or all 1 binomial outcomes, all-zero
            counts, invalid values) have NaN estimates and a ``failure`` reason.
        """
        from .batch import fit_batch

        return fit_batch(self, Y, _check_agq(nAGQ, self.structure, self.design), start=start, max_iter=max_iter)


def _check_agq(nAGQ: Any, s: Structure, design: Design) -> int:
    n_agq = check_count(nAGQ, "nAGQ")
    if n_agq > MAX_AGQ:
        raise ValueError(f"nAGQ must be at most {MAX_AGQ} (lme4's limit), got {n_agq}")
    if n_agq > 1 and (len(s.ks) != 1 or s.ks[0] != 1):
        terms = ", ".join(f"({' + '.join(t.columns)} | {t.group})" for t in design.terms)
        raise ValueError(f"nAGQ > 1 (adaptive Gauss-Hermite quadrature) is defined for a single scalar "
                         f"random-effects term, such as (1 | g), as in lme4; this model has {terms}: use nAGQ=1 "
                         "(the Laplace approximation)")
    return n_agq


def separation(result: GLMMResult) -> str:
    """A message naming the fixed effects whose estimates drift to infinity
    (complete or quasi-complete separation), or "" if none.

    A fixed effect is flagged when its estimate moves the linear predictor
    by more than :data:`SEPARATION_SPAN` across the range of its column
    (odds or rates changing by a factor above e^15 ~ 3e6): the data then
    determine the coefficient's sign but not its size (fitted probabilities
    numerically 0 or 1 for a level; counts all zero in a level).
    """
    d = result.design
    X = d.X
    span = np.abs(result.beta) * (X.max(axis=0) - X.min(axis=0))
    names = [f"{d.fixef_names[j]} (estimate {result.beta[j]:.4g}, SE {result.std_errors.iloc[j]:.3g})"
             for j in np.flatnonzero(span > SEPARATION_SPAN)]
    if not names:
        return ""
    return (f"possible complete or quasi-complete separation: the fixed effect(s) {', '.join(names)} move the "
            f"linear predictor by more than {SEPARATION_SPAN:g} on the link scale across their column's range, so "
            "fitted values for some level or range are numerically 0 or 1 (or rates 0) and the estimate drifts to "
            "infinity; its size and SE are not meaningful: drop or merge the offending level or covariate, or "
            "use a penalised (bias-reduced) fit")


@entry_point
def fit_glmm_model(formula: str, data: Any, family: str = "binomial", link: str | None = None, *, weights: Any = None,
                   offset: Any = None, nAGQ: int = 1, **kwargs) -> GLMMResult:
    """Fit a GLMM (lme4's ``glmer``): ``GLMM(formula, data, family, link, weights=, offset=).fit(nAGQ, **kwargs)``."""
    return GLMM(formula, data, family, link, weights=weights, offset=offset).fit(nAGQ, **kwargs)


"""The model object and the fit: ``LMM(formula, data).fit(reml=True)``.

``LMM`` holds the design and its cross-products and never changes; ``fit``
returns a new immutable :class:`~lmm_jax.results.LMMResult`. The compiled
pieces are module-level functions of (cross-products, static structure), so
every model of the same shape shares one compilation, and the bootstrap vmaps
the very same function over simulated responses.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .build.crossprod import (design_arrays, design_products, pad_products, response_products, response_products_host,
                              structure_of)
from .build.design import Design, build_design
from .core.diagnostics import diagnose_newton
from .core.estimates import fit_and_estimate, unpad_estimates, varpar_hessian
from .core.likelihood import profiled_deviance
from .core.parametrization import n_theta, phi_from_theta, theta_from_phi
from .core.start import default_start
from .core.types import DesignArrays, DesignProducts, Padded, ResponseProducts, Structure
from .errors import ConvergenceError, ConvergenceWarning, SingularFitWarning, check_bool, check_count
from .inference.satterthwaite import vcov_beta_jacobian
from .runtime import code_memory, cpu_threads

from .results import LMMResult

if TYPE_CHECKING:
    from .batched.batch import BatchResult

# More than one core for this process: a fit compiles its summary's kernels on a second thread
SPARE_CORES = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) > 1


class LMM:
    """A linear mixed model in lme4 syntax, ready to fit.

    Args:
        formula: e.g. ``"Reaction ~ Days + (Days | Subject)"``; see the README
            for the supported syntax (``||``, ``/``, ``:``, ``0 +``).
        data: a pandas DataFrame (or a dict of equal-length arrays).

    Attributes:
        formula: the formula text.
        design: the evaluated :class:`~lmm_jax.build.design.Design`.
        structure: static shapes (terms' columns and levels, p).
        products, response: the cross-products of the design and of y.
        padded: the same, padded to size buckets
            (:func:`~lmm_jax.build.crossprod.pad_products`): what the compiled
            fit and its inference run on, so models of one structure share
            compiled code whatever their sizes.

    Example:
        >>> import lmm_jax
        >>> m = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> fit = m.fit(reml=True)
    """

    def __init__(self, formula: str, data: Any):
        code_memory.check()  # an entry point: free compiled code near the OS cap (code_memory.py)
        self.formula = formula
        self.design: Design = build_design(formula, data)
        self.structure: Structure = structure_of(self.design)
        self.products: DesignProducts = design_products(self.design)
        self.response: ResponseProducts = response_products_host(self.design.y, self.design)
        self.padded: Padded = pad_products(self.products, self.response, self.structure)
        cpu_threads.check()  # scipy's LAPACK has loaded with the design: single-threaded (cpu_threads.py)

    def __repr__(self) -> str:
        d = self.design
        groups = ", ".join(f"{t.group}: {t.m}" for t in d.terms)
        return f"LMM({self.formula!r}; n={d.n}, p={d.p}, groups {groups})"

    @cached_property
    def arrays(self) -> DesignArrays:
        """X, each term's level codes and Z on the device: what functions of a
        response need (simulation, batches of responses); formed on first use."""
        return design_arrays(self.design)

    @property
    def n_theta(self) -> int:
        return n_theta(self.structure.ks)

    def fit_batch(self, Y: Any, reml: bool = True, **kwargs):
        """Fit every column of ``Y`` (n_obs x B) on this design in one vmapped
        call; see :func:`lmm_jax.batched.batch.fit_batch` (returns a ``BatchResult``)."""
        from .batched.batch import fit_batch

        code_memory.check()
        return fit_batch(self, Y, reml=reml, **kwargs)

    def response_products(self, y: jnp.ndarray) -> ResponseProducts:
        """Z'y, X'y, y'y for another response on this design (pure, vmappable)."""
        return response_products(y, self.arrays, self.structure)

    def fit(self, reml: bool = True, *, start: np.ndarray | None = None, max_iter: int = 200,
            throw: bool = False) -> "LMMResult":
        """Fit by REML (default) or ML.

        Args:
            reml: REML criterion if True, maximum likelihood otherwise.
            start: starting theta (lme4's layout). Default: the MIVQUE(0)
                moment estimates (:mod:`lmm_jax.core.start`: fewer Newton steps,
                the same optimum); lme4's identity is
                ``lmm_jax.parametrization.theta_start(model.structure.ks)``.
            max_iter: Newton iteration limit.
            throw: raise :class:`~lmm_jax.errors.ConvergenceError` instead of
                warning when not converged or the convergence diagnostics fail.

        Returns:
            An immutable :class:`~lmm_jax.results.LMMResult`.
        """
        code_memory.check()
        reml, throw = check_bool(reml, "reml"), check_bool(throw, "throw")
        max_iter = check_count(max_iter, "max_iter")
        reml = reml and self.design.p > 0     # no fixed effects: the REML criterion is the deviance (lme4: ML)
        cpu_threads.check()
        ks = self.structure.ks
        theta0 = default_start(self) if start is None else np.asarray(start, dtype=float)
        if theta0.shape != (self.n_theta,):
            raise ValueError(f"start must have {self.n_theta} entries (lme4's theta layout), got {theta0.shape}")
        if not np.isfinite(theta0).all():
            raise ValueError(f"start must be finite, got {theta0.tolist()}: give lme4's theta, e.g. "
                             "lmm_jax.parametrization.theta_start(model.structure.ks), or leave start out")
        phi0, active0 = phi_from_theta(theta0, ks)
        pad = self.padded
        if SPARE_CORES:
            # summary()'s kernels compile beside the Newton loop (their shapes are known before the optimum)
            vp = jax.ShapeDtypeStruct((self.n_theta + 1,), np.float64)
            varpar_hessian.prepare(vp, pad.products, pad.response, pad.structure, bool(reml))
            vcov_beta_jacobian.prepare(vp, pad.products, pad.response, pad.structure)
        opt, est = fit_and_estimate(pad.products, pad.response, phi0, active0, pad.structure, bool(reml), max_iter)
        opt = jax.tree_util.tree_map(np.asarray, opt)
        result = LMMResult.from_estimates(self, opt.theta, unpad_estimates(est, self.design), reml=bool(reml),
                                          optimizer=opt)
        diag = diagnose_newton(opt, self.structure.ks)
        result = dataclasses.replace(result, diagnostics=diag)
        problems = []
        if not result.converged:
            problems.append(f"the optimiser stopped after {int(opt.iterations)} iterations without meeting its "
                            f"criterion (Newton decrement {float(opt.decrement):.2g}, |grad| "
                            f"{float(opt.gradient_norm):.2g})")
        problems.extend(diag.messages)
        if problems:
            msg = ("; ".join(problems) + "; try rescaling or centering covariates, or a simpler random-effects "
                   "structure (see result.diagnostics)")
            if throw:
                raise ConvergenceError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=2)
        if result.singular:
            warnings.warn("boundary (singular) fit: a variance component is estimated at zero or a correlation "
                          "at +-1; see result.singular and consider simplifying the random effects",
                          SingularFitWarning, stacklevel=2)
        return result

    def deviance_function(self, reml: bool = True, param: Literal["phi", "theta"] = "phi") -> Callable:
        """See :func:`make_deviance`."""
        return make_deviance(self, reml=reml, param=param)


def make_deviance(model: LMM, reml: bool = True, param: Literal["phi", "theta"] = "phi") -> Callable:
    """The profiled objective as a pure, jit-able function of one vector.

    Args:
        model: an :class:`LMM`.
        reml: REML criterion (True) or ML deviance (-2 log-likelihood).
        param: ``"phi"``: unconstrained log-Cholesky parameters (log of each
            Lambda diagonal, raw off-diagonals); ``"theta"``: lme4's theta.

    Returns:
        ``f(x) -> scalar``, differentiable with ``jax.grad``/``jax.hessian``
        and batchable with ``jax.vmap``. For lme4's theta,
        ``make_deviance(m, param="theta")(theta)`` equals lme4's
        ``devFunOnly`` value.
    """
    dp, rp, s = model.products, model.response, model.structure
    reml = check_bool(reml, "reml")
    if param == "theta":
        return lambda theta: profiled_deviance(theta, dp, rp, s, reml)
    if param == "phi":
        return lambda phi: profiled_deviance(theta_from_phi(phi, s.ks), dp, rp, s, reml)
    raise ValueError(f"param must be 'phi' or 'theta', got {param!r}")


def fit(formula: str, data: Any, reml: bool = True, **kwargs) -> "LMMResult":
    """Shorthand for ``LMM(formula, data).fit(reml=reml, **kwargs)``."""
    check_bool(reml, "reml")                  # before the design is built
    return LMM(formula, data).fit(reml=reml, **kwargs)


def fit_many(specs: "Sequence[tuple[str, Any]] | Sequence[LMM]", reml: bool = True, *, max_iter: int = 200,
             method: str = "bfgs") -> "list[BatchResult]":
    """Fit many (formula, data) pairs, one compiled vmapped call per shape.

    Models whose padded products share a structure (terms' columns, levels
    rounded up to size buckets, p; the number of observations is a runtime
    value) are stacked and fitted together, so a power analysis over a few
    numbers of subjects compiles once per size bucket, not once per dataset
    (:func:`lmm_jax.batched.batch.fit_models`).

    Args:
        specs: (formula, data) pairs, or :class:`LMM` objects.
        reml: REML (default) or ML.
        max_iter: iterations per fit before it is reported unconverged.
        method: ``"bfgs"`` or ``"newton"``, as for :meth:`LMM.fit_batch`.

    Returns:
        One single-fit :class:`~lmm_jax.batched.batch.BatchResult` per spec,
        in the input order (``pd.concat([r.table for r in out])`` gives one
        table).
    """
    from .batched.batch import fit_models

    check_bool(reml, "reml")
    models = [sp if isinstance(sp, LMM) else LMM(*sp) for sp in specs]
    return fit_models(models, reml, max_iter=max_iter, method=method)

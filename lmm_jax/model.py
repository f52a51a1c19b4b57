"""The model object and the fit: ``LMM(formula, data).fit(reml=True)``.

``LMM`` holds the design and its cross-products and never changes; ``fit``
returns a new immutable :class:`~lmm_jax.results.LMMResult`. The compiled
pieces are module-level functions of (cross-products, static structure), so
every model of the same shape shares one compilation, and the bootstrap vmaps
the very same function over simulated responses.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import warnings
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .build.crossprod import (design_arrays, design_products, pad_products, repad_response, response_products,
                              response_products_host, structure_of)
from .build.design import UNCHANGED, Design, build_design, response_rows, with_response
from .build.formula import update_formula
from .core.diagnostics import diagnose_newton
from .core.estimates import Estimates, estimates, fit_and_estimate, unpad_estimates, varpar_derivatives
from .core.likelihood import profiled_deviance
from .core.parametrization import n_theta, phi_from_theta, theta_from_phi
from .core.sparse import SparseA21
from .core.start import MomentEquations, default_start, moment_equations, pad_moment_equations
from .core.types import CrossProducts, DesignArrays, DesignProducts, Padded, ResponseProducts, Structure
from .errors import (ConvergenceError, ConvergenceWarning, DataError, PrecisionError, SingularFitWarning, check_bool,
                     check_count)
from .runtime import kernel as kernel_module
from .runtime.kernel import traced_sets
from .runtime.scope import entry_point

from .results import LMMResult

if TYPE_CHECKING:
    from .batched.batch import BatchResult
    from .glmm.results import GLMMResult


@entry_point
class LMM:
    """A linear mixed model in lme4 syntax, ready to fit.

    Args:
        formula: e.g. ``"Reaction ~ Days + (Days | Subject)"``; see the README
            for the supported syntax (``||``, ``/``, ``:``, ``0 +``).
        data: a pandas or polars DataFrame (polars needs no pyarrow; Enum columns keep their order of
            levels), or a dict of equal-length arrays.
        weights: prior weights (lme4's ``weights``): a column name or an
            array with one entry per row of ``data``; observation i has
            residual variance sigma^2 / w_i. Rows of weight 0 are dropped.
        offset: a known term of the linear predictor with no coefficient
            (lme4's ``offset``): a column name or an array, added to the
            formula's ``offset(expr)`` terms.
        planned: a planned design (simr's ``makeLmer``): ``data`` holds the
            covariates and grouping columns and may lack the response, which
            is then simulated (:func:`lmm_jax.simulate` with ``params``,
            :func:`lmm_jax.power`); such a model cannot be fitted itself.

    Attributes:
        formula: the formula text.
        weights, offset: the arguments as given (what :meth:`update` reuses).
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

    def __init__(self, formula: str, data: Any, *, weights: Any = None, offset: Any = None, planned: bool = False):
        self.formula = formula
        self.weights, self.offset = weights, offset
        self.design: Design = build_design(formula, data, weights=weights, offset=offset,
                                           planned=check_bool(planned, "planned"))
        self.structure: Structure = structure_of(self.design)
        self.products: DesignProducts = design_products(self.design)
        wk = self.design.working
        self.response: ResponseProducts = response_products_host(wk.y, self.design, wk.shift)
        self.padded: Padded = pad_products(self.products, self.response, self.structure)

    def __repr__(self) -> str:
        d = self.design
        groups = ", ".join(f"{t.group}: {t.m}" for t in d.terms)
        return f"LMM({self.formula!r}; n={d.n}, p={d.p}, groups {groups})"

    def update(self, formula: str | None = None, data: Any = None, *, weights: Any = UNCHANGED,
               offset: Any = UNCHANGED) -> "LMM":
        """The model of another formula or data (R's ``update``, unfitted).

        Args:
            formula: the new formula, in which ``.`` is the old formula's
                side (``". ~ . - Days"``, ``". ~ . + (1 | h)"``, ``"log(.) ~ ."``;
                :func:`lmm_jax.build.formula.update_formula`); None keeps it.
            data: the new data; None re-reads this model's data, every row
                of it (rows dropped for missing values in a column the new
                formula no longer uses come back, as in R).
            weights, offset: as for :class:`LMM`; by default this model's
                (a column name, or an array over the rows of its data); None
                for none.

        Raises:
            FormulaError: see :func:`~lmm_jax.build.formula.update_formula`.
            DataError: this model's weights or offset are an array and
                ``data`` has another number of rows (pass them for the new data).
        """
        text = self.formula if formula is None else update_formula(self.design.formula, formula)
        if data is None:
            data = self.design.source if self.design.source is not None else self.design.data
        args = {"weights": weights, "offset": offset}
        for name, value in list(args.items()):
            if value is not UNCHANGED:
                continue
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and len(value) != len(data):
                raise DataError(f"this model's {name} are an array over the {len(value)} rows of its data, the new "
                                f"data has {len(data)}: pass {name}= (a column name or an array) for the new data")
            args[name] = value
        return LMM(text, data, weights=args["weights"], offset=args["offset"],
                   planned=not self.design.has_response)

    def with_response(self, y: Any) -> "LMM":
        """This model with another response on the same rows (the model of
        lme4's ``refit``): the formula is not parsed again, X and Z are not
        rebuilt, and the design's products and compiled code are reused; only
        the response's products are formed.

        Args:
            y: one value per row the model uses (``design.n``), or per row of
                its data (rows dropped for missing values are left out, as
                lme4 does); a pandas Series is matched by index labels.
                See :func:`lmm_jax.build.design.response_rows`.

        Returns:
            A new :class:`LMM` (this one is unchanged). Its data hold ``y`` in
            the response's column (:func:`lmm_jax.build.design.with_response`).
        """
        design = with_response(self.design, response_rows(self.design, y))
        new = copy.copy(self)           # the design's cached arrays, moment equations, response map are kept
        new.design = design
        if design.formula is not self.design.formula:      # an expression response became a column's name
            new.formula = design.formula.text
        wk = design.working
        new.response = response_products_host(wk.y, design, wk.shift)
        new.padded = repad_response(self.padded, new.response, self.structure)
        return new

    @cached_property
    def arrays(self) -> DesignArrays:
        """X, each term's level codes and Z on the device: what functions of a
        response need (simulation, batches of responses); formed on first use,
        as concrete arrays even when that use is inside a user's ``jit`` (a
        cached tracer would leak into later calls)."""
        with jax.ensure_compile_time_eval():
            return design_arrays(self.design)

    @cached_property
    def moment_equations(self) -> MomentEquations | None:
        """The MIVQUE(0) moment equations of the design
        (:func:`lmm_jax.core.start.moment_equations`; None when singular):
        the start of every fit on this design, formed on first use."""
        return moment_equations(self.design)

    @cached_property
    def padded_moment_equations(self) -> MomentEquations | None:
        """:attr:`moment_equations` in the layout of :attr:`padded`
        (:func:`lmm_jax.core.start.pad_moment_equations`)."""
        eq = self.moment_equations
        return None if eq is None else pad_moment_equations(eq, self.structure, self.padded.structure)

    @cached_property
    def response_map(self) -> jnp.ndarray | None:
        """The dense map G from a response to its products, on the device
        (:func:`lmm_jax.batched.batch.response_map`; None when too large):
        batches of responses on this design multiply by it."""
        from .batched.batch import response_map

        G = response_map(self.design)
        with jax.ensure_compile_time_eval():       # concrete, also when first used inside a trace
            return None if G is None else jnp.asarray(G)

    @property
    def n_theta(self) -> int:
        """The number of covariance parameters theta (lme4's ``length(getME(fit, "theta"))``):
        k (k + 1) / 2 per random-effects term of k columns, k per ``||`` term."""
        return self.design.theta_layout.n_theta

    def fit_batch(self, Y: Any, reml: bool = True, **kwargs):
        """Fit every column of ``Y`` on this design in one vmapped call
        (:func:`lmm_jax.batched.batch.fit_batch`).

        Args:
            Y: (n_obs, B) responses, one per column, rows in the model's row
                order; a 1-d array is one response.
            reml: REML (default) or ML.
            **kwargs: ``start``, ``max_iter``, ``method``, ``ddf`` of
                :func:`~lmm_jax.batched.batch.fit_batch`.

        Returns:
            A :class:`~lmm_jax.batched.batch.BatchResult`, one fit per column.

        Example:
            >>> Y = np.column_stack([m.design.y, m.design.y * 2])
            >>> m.fit_batch(Y).table  # doctest: +SKIP
        """
        from .batched.batch import fit_batch

        return fit_batch(self, Y, reml=reml, **kwargs)

    def response_products(self, y: jnp.ndarray) -> ResponseProducts:
        """Z'y, X'y, y'y of another response on this design, on the working
        scale (weights and offset applied, :mod:`lmm_jax.build.working`;
        pure, vmappable).

        Args:
            y: a response (n_obs,) in the model's row order (``design.y``'s).

        Returns:
            The :class:`~lmm_jax.core.types.ResponseProducts` of ``y``.
        """
        return response_products(self.design.working.response(y), self.arrays, self.structure)

    def cross_products(self, y: jnp.ndarray | None = None) -> CrossProducts:
        """The data as the likelihood sees it, a pytree: the second argument of
        the pure deviance and estimates (:func:`make_deviance` and
        :func:`make_estimates` with ``data="argument"``).

        Args:
            y: a response (n_obs,) on this design, rows in the model's order
                (``model.design.y``'s: after rows with missing values were
                dropped); None for the model's own response.

        Returns:
            A :class:`~lmm_jax.core.types.CrossProducts`: the design's products
            (formed once with the model) and the response's. A pure function of
            ``y``, traceable: called inside ``jax.vmap`` over ``y`` only the
            response part is batched (``jax.vmap(model.cross_products)`` on its
            own would broadcast a copy of the design's products per response).
        """
        return CrossProducts(self.products, self.response if y is None else self.response_products(y))

    def fit(self, reml: bool = True, *, start: np.ndarray | None = None, max_iter: int = 200,
            throw: bool = False) -> "LMMResult":
        """Fit by REML (default) or ML.

        Args:
            reml: REML criterion if True, maximum likelihood otherwise.
            start: starting theta (lme4's layout). Default: the MIVQUE(0)
                moment estimates (:mod:`lmm_jax.core.start`: fewer Newton steps,
                the same optimum); lme4's identity is
                ``lmm_jax.core.parametrization.theta_start(model.structure.ks)``.
            max_iter: Newton iteration limit.
            throw: raise :class:`~lmm_jax.errors.ConvergenceError` instead of
                warning when not converged or the convergence diagnostics fail.

        Returns:
            An immutable :class:`~lmm_jax.results.LMMResult`.
        """
        reml, throw = check_bool(reml, "reml"), check_bool(throw, "throw")
        max_iter = check_count(max_iter, "max_iter")
        if not self.design.has_response:
            raise DataError(f"this planned model has no response ({self.design.formula.response!r} is not a column "
                            "of its data): simulate responses (lmm_jax.simulate(model, n, key, params=...)) and fit "
                            "them with model.fit_batch(Y), or build the LMM on data with the response")
        reml = reml and self.design.p > 0     # no fixed effects: the REML criterion is the deviance (lme4: ML)
        ks = self.structure.ks
        theta0 = default_start(self) if start is None else np.asarray(start, dtype=float)
        if theta0.shape != (self.n_theta,):
            raise ValueError(f"start must have {self.n_theta} entries (lme4's theta layout), got {theta0.shape}")
        if not np.isfinite(theta0).all():
            raise ValueError(f"start must be finite, got {theta0.tolist()}: give lme4's theta, e.g. "
                             "lmm_jax.parametrization.theta_start(model.structure.ks), or leave start out")
        phi0, active0 = phi_from_theta(theta0, ks)
        pad = self.padded
        traced = threading.Event()
        if kernel_module.SPARE_CORES:
            # summary()'s kernel compiles beside the Newton loop (its shapes are known before the optimum),
            # traced once the Newton loop is: tracing holds Python's lock, and the loop is needed first
            vp = jax.ShapeDtypeStruct((self.n_theta + 1,), np.float64)
            varpar_derivatives.prepare(vp, pad.products, pad.response, pad.structure, bool(reml), after=traced)
        with traced_sets(traced):
            opt, est = fit_and_estimate(pad.products, pad.response, phi0, active0, pad.structure, bool(reml),
                                        max_iter)
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

    def deviance_function(self, reml: bool = True, param: Literal["phi", "theta"] = "phi", *,
                          data: Literal["fixed", "argument"] = "fixed") -> Callable:
        """The profiled objective as a pure, jit-able function: :func:`make_deviance` of this model.

        Args:
            reml: REML criterion (True) or ML deviance (-2 log-likelihood).
            param: ``"phi"`` (log-Cholesky) or ``"theta"`` (lme4's theta).
            data: ``"fixed"``: ``f(x)``; ``"argument"``: ``f(x, products)``.

        Returns:
            ``f(x) -> scalar`` or ``f(x, products) -> scalar`` (see :func:`make_deviance`).
        """
        return make_deviance(self, reml=reml, param=param, data=data)


_X64_HELP = ("call it inside `with jax.enable_x64(True):` (around your jax.jit as well as the call), or set "
            "jax.config.update('jax_enable_x64', True) at the start of your program")


def _parameter_map(param: str, ks: tuple[int, ...]) -> Callable:
    """theta from the user's parameter vector (see :func:`make_deviance`)."""
    if param == "theta":
        return lambda theta: theta
    if param == "phi":
        return lambda phi: theta_from_phi(phi, ks)
    raise ValueError(f"param must be 'phi' or 'theta', got {param!r}")


def _expected_shapes(s: Structure) -> dict[str, tuple[int, ...]]:
    """The products' shapes for structure ``s`` (one dataset; the coupling
    block A21 is checked apart, it may be stored sparse)."""
    (m1, *_), (k1, *_), p, qr = s.ms, s.ks, s.p, s.q_rest
    return {"design.A11": (m1, k1, k1), "design.A22": (qr, qr), "design.Z1X": (m1, k1, p), "design.ZrX": (qr, p),
            "design.XtX": (p, p), "design.nobs": (), "design.rank": (), "design.basis": (p, p),
            "design.log_det_basis": (), "design.log_weights": (), "response.Z1y": (m1, k1),
            "response.Zry": (qr,), "response.Xy": (p,), "response.yy": (), "response.shift": (p,)}


def _checked(name: str, x: Any, products: CrossProducts | None, s: Structure) -> jnp.ndarray:
    """``x`` as a float64 array, after checking what the pure functions are
    given inside a user's code: 64-bit types on, float64 parameters and
    products, and products of this model's structure, one dataset at a time.
    Shapes and dtypes are static, so under ``jit`` this runs once, at tracing.

    Raises:
        PrecisionError: (a TypeError) 64-bit types are off, or an input is
            float32 (or another float narrower than float64).
        DataError: ``products`` are not a :class:`CrossProducts` of the
            model's structure, or carry a batch axis that was not vmapped over.
    """
    if not jax.config.jax_enable_x64:
        raise PrecisionError(f"{name} computes in float64, but JAX's 64-bit types are off where it was called: "
                             + _X64_HELP)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float64)          # integers: exact in float64
    n = n_theta(s.ks)
    if x.shape != (n,):
        raise DataError(f"{name}: the parameter vector must have shape ({n},), got {x.shape}; for many vectors, "
                        "jax.vmap over them")
    leaves = [("the parameter vector", x)]
    if products is not None:
        if not isinstance(products, CrossProducts):
            raise DataError(f"{name}: products must be a CrossProducts (model.cross_products(y)), got "
                            f"{type(products).__name__}")
        expected = _expected_shapes(s)
        for part in ("design", "response"):
            for field, leaf in getattr(products, part)._asdict().items():
                key = f"{part}.{field}"
                if key in expected and jnp.shape(leaf) != expected[key]:
                    raise DataError(f"{name}: products.{key} has shape {jnp.shape(leaf)}, but the model's structure "
                                    f"(levels per term {s.ms}, columns per term {s.ks}, p = {s.p}) needs "
                                    f"{expected[key]}. Products of another structure cannot be used; stacked "
                                    "products carry a leading batch axis: jax.vmap over it")
        a21 = products.design.A21
        if not isinstance(a21, SparseA21) and jnp.shape(a21) != (s.q_rest, s.ms[0], s.ks[0]):
            raise DataError(f"{name}: products.design.A21 has shape {jnp.shape(a21)}, the model's structure needs "
                            f"{(s.q_rest, s.ms[0], s.ks[0])}")
        leaves += [(f"products{jax.tree_util.keystr(path)}", leaf)
                   for path, leaf in jax.tree_util.tree_flatten_with_path(products)[0]]
    for what, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating) and dtype != jnp.float64:
            raise PrecisionError(f"{name} computes in float64, but {what} has dtype {dtype}: pass float64 arrays "
                                 "(created while JAX's 64-bit types are on)")
    return x


@entry_point
def make_deviance(model: LMM, reml: bool = True, param: Literal["phi", "theta"] = "phi", *,
                  data: Literal["fixed", "argument"] = "fixed") -> Callable:
    """The profiled objective as a pure, jit-able function: lme4's ``devFunOnly``.

    The REML criterion or ML deviance (-2 log-likelihood) with beta and
    sigma profiled out (Bates et al. 2015, JSS 67(1), eqs. 34 and 41;
    :mod:`lmm_jax.core.likelihood`), evaluated from the cross-products of
    ``[Z X y]``: one evaluation costs nothing in n.

    Two forms, both pure JAX functions (differentiable with ``jax.grad`` /
    ``jax.hessian``, batchable with ``jax.vmap``, usable inside your own
    ``jax.jit``); the model's static structure (terms' columns and levels,
    p) and ``reml`` are closed over in both:

    * ``data="fixed"``: ``f(x) -> scalar`` closes over this model's data,
      for optimisers and autodiff in the parameters.
    * ``data="argument"``: ``f(x, products) -> scalar`` takes the data as a
      :class:`~lmm_jax.core.types.CrossProducts` pytree
      (:meth:`LMM.cross_products`), so you can vmap or differentiate over
      responses and datasets in your own code. Responses on this design:
      vmap over ``y`` in ``f(x, model.cross_products(y))``. Datasets of the
      same structure (levels per term, columns, p; n may differ), e.g. other
      :class:`LMM` objects: stack their ``cross_products()`` with
      ``jax.tree.map(lambda *a: jnp.stack(a), *cps)`` and vmap over both
      arguments. These are the unpadded products, the model's own sizes;
      a crossed design whose coupling block is stored sparse
      (:mod:`lmm_jax.core.sparse`) has its own number of stored pairs, so
      such datasets stack only if their patterns of co-occurring levels
      have the same size.

    lmm_jax computes in float64, and these functions run inside your code:
    call them with JAX's 64-bit types on (``jax.config.update(
    "jax_enable_x64", True)``, or inside ``with jax.enable_x64(True):``,
    around your ``jit`` as well). They raise
    :class:`~lmm_jax.errors.PrecisionError` (a ``TypeError``) otherwise, or
    when given float32 inputs.

    Args:
        model: an :class:`LMM`.
        reml: REML criterion (True) or ML deviance (-2 log-likelihood).
        param: ``"phi"``: unconstrained log-Cholesky parameters (log of each
            Lambda diagonal, raw off-diagonals); ``"theta"``: lme4's theta
            (lower triangles of the relative covariance factors, column-major).
        data: ``"fixed"``: ``f(x)``; ``"argument"``: ``f(x, products)``.

    Returns:
        ``f(x) -> scalar`` or ``f(x, products) -> scalar``. With
        ``param="theta"`` its value is lme4's ``devFunOnly`` value at theta.

    Raises:
        ValueError: ``param`` or ``data`` not one of the choices (at once).
        PrecisionError: (a TypeError) when ``f`` is called or traced with
            64-bit types off or float32 inputs.
        DataError: when ``f`` is given products of another structure, or
            stacked products without a ``vmap`` over their batch axis.

    Example:
        >>> import jax, jax.numpy as jnp, lmm_jax
        >>> m = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> f = lmm_jax.make_deviance(m, reml=True, param="theta", data="argument")
        >>> theta = jnp.array([0.9, -0.05, 0.25])
        >>> round(float(f(theta, m.cross_products())), 6)    # lme4: lmer(..., devFunOnly = TRUE)(theta)
        1744.703881
        >>> grad = jax.grad(f)(theta, m.cross_products())
        >>> Y = lmm_jax.simulate(m.fit(), 100, key=0)           # (180, 100) responses
        >>> devs = jax.jit(jax.vmap(lambda y: f(theta, m.cross_products(y)), in_axes=1))(Y)   # (100,)
    """
    s, reml = model.structure, check_bool(reml, "reml")
    to_theta = _parameter_map(param, s.ks)
    if data == "fixed":
        dp, rp = model.products, model.response

        def deviance(x: jnp.ndarray) -> jnp.ndarray:
            theta = to_theta(_checked("the function from make_deviance", x, None, s))
            return profiled_deviance(theta, dp, rp, s, reml)

        return deviance
    if data == "argument":
        def deviance_of(x: jnp.ndarray, products: CrossProducts) -> jnp.ndarray:
            theta = to_theta(_checked("the function from make_deviance", x, products, s))
            return profiled_deviance(theta, products.design, products.response, s, reml)

        return deviance_of
    raise ValueError(f"data must be 'fixed' (f(x)) or 'argument' (f(x, products)), got {data!r}")


@entry_point
def make_estimates(model: LMM, reml: bool = True, param: Literal["theta", "phi"] = "theta", *,
                   data: Literal["fixed", "argument"] = "fixed") -> Callable:
    """The estimates at given covariance parameters as a pure, jit-able function.

    At theta, beta is the GLS estimate, sigma its profiled value and vcov
    lme4's ``vcov``: what a fit reports, at any theta (the fit's own, a
    simulated dataset's, a value under test). Pure JAX, for ``jit``,
    ``vmap`` and ``grad`` in your code, like :func:`make_deviance`, whose
    ``data`` forms and float64 requirement it shares: ``g(x)`` closes over
    the model's data, ``g(x, products)`` takes a
    :class:`~lmm_jax.core.types.CrossProducts` (:meth:`LMM.cross_products`).

    Args:
        model: an :class:`LMM`.
        reml: sigma (and the deviance) by REML (True) or ML.
        param: ``"theta"`` (default here: results report theta, and a
            boundary fit's zero has no finite ``"phi"``) or ``"phi"``, as for
            :func:`make_deviance`.
        data: ``"fixed"``: ``g(x)``; ``"argument"``: ``g(x, products)``.

    Returns:
        ``g -> Estimates``: a pytree (NamedTuple) of ``theta`` (lme4's,
        also for ``param="phi"``), ``beta`` (p,), ``sigma``, ``vcov`` (p, p),
        ``b`` (conditional modes, one (m_t, k_t) array per term of
        ``model.design.terms``) and ``deviance``
        (:class:`~lmm_jax.core.estimates.Estimates`). Under ``vmap`` every
        field gets the batch axis.

    Raises:
        ValueError, PrecisionError, DataError: as :func:`make_deviance`.

    Example:
        >>> import jax, jax.numpy as jnp, lmm_jax
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> m = fit.model
        >>> est = lmm_jax.make_estimates(m, reml=True, data="argument")
        >>> @jax.jit
        ... def days_t(Y, thetas):     # t statistic of Days for each column of Y, at its own theta
        ...     def one(y, theta):
        ...         e = est(theta, m.cross_products(y))
        ...         return e.beta[1] / jnp.sqrt(e.vcov[1, 1])
        ...     return jax.vmap(one, in_axes=(1, 0))(Y, thetas)
        >>> Y = lmm_jax.simulate(fit, 100, key=0)
        >>> t = days_t(Y, jnp.asarray(m.fit_batch(Y).theta))   # (100,)
    """
    s, reml = model.structure, check_bool(reml, "reml")
    to_theta = _parameter_map(param, s.ks)
    if data == "fixed":
        dp, rp = model.products, model.response

        def estimates_fixed(x: jnp.ndarray) -> Estimates:
            theta = to_theta(_checked("the function from make_estimates", x, None, s))
            return estimates(theta, dp, rp, s, reml)

        return estimates_fixed
    if data == "argument":
        def estimates_of(x: jnp.ndarray, products: CrossProducts) -> Estimates:
            theta = to_theta(_checked("the function from make_estimates", x, products, s))
            return estimates(theta, products.design, products.response, s, reml)

        return estimates_of
    raise ValueError(f"data must be 'fixed' (g(x)) or 'argument' (g(x, products)), got {data!r}")


@entry_point
def fit(formula: str, data: Any, reml: bool = True, *, weights: Any = None, offset: Any = None,
        family: str | None = None, link: str | None = None, nAGQ: int = 1, **kwargs) -> "LMMResult | GLMMResult":
    """Fit a linear mixed model (lme4's ``lmer``): shorthand for
    ``LMM(formula, data, weights=weights, offset=offset).fit(reml=reml, **kwargs)``;
    with ``family="binomial"`` or ``"poisson"`` a generalized linear mixed
    model (lme4's ``glmer``): ``GLMM(formula, data, family, link, weights=weights,
    offset=offset).fit(nAGQ=nAGQ, **kwargs)`` (:class:`~lmm_jax.glmm.model.GLMM`).

    Args:
        formula: lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``
            (see :class:`LMM`); for a GLMM also ``cbind(successes, failures) ~ ...``.
        data: a pandas or polars DataFrame, or a dict of equal-length arrays.
        reml: REML (default, lme4's) or ML; GLMMs are fitted by maximum
            likelihood and ignore it.
        weights: prior weights, a column name or an array (see :class:`LMM`);
            for a binomial proportion, the number of trials.
        offset: a known term of the linear predictor, a column name or an array.
        family: None or ``"gaussian"`` (a linear mixed model), ``"binomial"``
            or ``"poisson"`` (a GLMM).
        link: the GLMM's link: ``"logit"`` (binomial default), ``"probit"``,
            ``"cloglog"``; ``"log"`` (poisson); ``"identity"`` (gaussian).
        nAGQ: a GLMM's quadrature points: 1 (Laplace) or up to 25 for a single
            scalar random-effects term.
        **kwargs: ``start``, ``max_iter``, ``throw`` of :meth:`LMM.fit` /
            :meth:`GLMM.fit <lmm_jax.glmm.model.GLMM.fit>`.

    Returns:
        The :class:`~lmm_jax.results.LMMResult`, or for a GLMM the
        :class:`~lmm_jax.glmm.results.GLMMResult`.

    Raises:
        FormulaError: a formula lmm_jax cannot parse or evaluate.
        DataError: missing columns, non-finite values, too few levels, ...
        ValueError: ``reml`` not a bool (before the design is built).

    Example:
        >>> import lmm_jax
        >>> fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
        >>> fit.fixef.round(3).tolist()
        [251.405, 10.467]
    """
    check_bool(reml, "reml")                  # before the design is built
    if family is not None and str(family).lower() != "gaussian":
        from .glmm.model import GLMM

        return GLMM(formula, data, family, link, weights=weights, offset=offset).fit(nAGQ=nAGQ, **kwargs)
    if link not in (None, "identity"):
        raise ValueError(f"link {link!r} is not supported for the gaussian family (a linear mixed model has the "
                         "identity link); for a GLMM give family='binomial' or 'poisson'")
    if nAGQ != 1:
        raise ValueError(f"nAGQ applies to GLMMs (family='binomial' or 'poisson'); a linear mixed model's "
                         f"likelihood is exact, got nAGQ={nAGQ!r}")
    return LMM(formula, data, weights=weights, offset=offset).fit(reml=reml, **kwargs)


@entry_point
def fit_many(specs: "Sequence[tuple[str, Any]] | Sequence[LMM]", reml: bool = True, *, max_iter: int = 200,
             method: str = "bfgs", ddf: str = "satterthwaite", chunk_size: int | None = None) -> "list[BatchResult]":
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
        ddf: the coefficients' denominator df (``"satterthwaite"``,
            ``"residual"`` or ``"none"``), as for :meth:`LMM.fit_batch`.
        chunk_size: models per compiled call (default: each group of one
            shape whole). After ``jax.distributed.initialize()`` the calls are
            shared out between the processes and every process returns all
            the fits, the same bits as one process (docs/distributed.md).

    Returns:
        One single-fit :class:`~lmm_jax.batched.batch.BatchResult` per spec,
        in the input order (``pd.concat([r.table for r in out])`` gives one
        table; ``r.coef_table()`` a fit's t tests).

    Example:
        >>> data = lmm_jax.datasets.load("sleepstudy")
        >>> out = lmm_jax.fit_many([("Reaction ~ Days + (Days | Subject)", data[data.Days < k]) for k in (6, 8, 10)])
        >>> pd.concat([r.table for r in out])  # doctest: +SKIP
    """
    from .batched.batch import fit_models

    check_bool(reml, "reml")
    models = [sp if isinstance(sp, LMM) else LMM(*sp) for sp in specs]
    return fit_models(models, reml, max_iter=max_iter, method=method, ddf=ddf, chunk_size=chunk_size)

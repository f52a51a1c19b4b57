"""Typed errors and warnings of lmm_jax.

Structure problems (a bad formula, unusable data) raise eagerly with a typed
error whose message names the offending value and the fix. Numerical problems
found while fitting (no convergence, a variance estimated at zero) are reported
in the fit result and as warnings, which callers may turn into errors with the
standard ``warnings`` filters.
"""

from __future__ import annotations


class LMMError(Exception):
    """Base class of every error raised by lmm_jax."""


class FormulaError(LMMError, ValueError):
    """A model formula that cannot be parsed or does not make sense.

    Attributes:
        formula: the formula text.
        token: the offending piece of the formula (may be empty).
        position: index of ``token`` in ``formula`` (or None).
    """

    def __init__(self, message: str, formula: str = "", token: str = "", position: int | None = None):
        self.formula = formula
        self.token = token
        self.position = position
        text = message
        if formula:
            text += f"\n  formula: {formula}"
            if position is not None and position >= 0:
                text += "\n" + " " * (11 + position) + "^" * max(1, len(token))
        super().__init__(text)


class DataError(LMMError, ValueError):
    """Data that cannot be used with the given formula (missing columns,
    non-numeric response, too few levels, ...)."""


class InferenceError(LMMError, ValueError):
    """A test or interval that cannot be computed as asked (bad ``ddf``,
    a contrast of the wrong shape, Kenward-Roger on an ML fit, ...)."""


class ConvergenceError(LMMError, RuntimeError):
    """The fit did not converge and the caller asked to raise
    (``LMM.fit(throw=True)``) instead of warning."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped without meeting its convergence criteria."""


class SingularFitWarning(UserWarning):
    """A variance component (or a correlation's remainder) is estimated at the
    boundary: the fit is singular, like lme4's ``isSingular``."""


class ScalingWarning(UserWarning):
    """A covariate or the response lies so far from zero relative to its
    spread that the cross-products lose digits: center it."""


class RankDeficiencyWarning(UserWarning):
    """Fixed-effects columns were dropped because X is rank deficient."""


class CompiledCodeWarning(UserWarning):
    """lmm_jax emptied JAX's in-memory compilation caches to keep the process
    under its memory-mapping limit (``vm.max_map_count``); models fitted
    afterwards compile again. See :mod:`lmm_jax.runtime.code_memory`."""


class PrecisionError(LMMError, RuntimeError):
    """lmm_jax could not compute in float64: JAX's 64-bit types cannot be
    enabled for its entry points (see :mod:`lmm_jax.runtime.scope`), or a
    function it returned (:func:`lmm_jax.make_deviance`) was called with
    32-bit inputs."""


class ConfigurationWarning(UserWarning):
    """:func:`lmm_jax.runtime.configure` could not apply a process setting
    (most often because JAX's backends had already started)."""

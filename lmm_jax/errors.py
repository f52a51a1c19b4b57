"""Typed errors and warnings of lmm_jax.

Structure problems (a bad formula, unusable data) raise eagerly with a typed
error whose message names the offending value and the fix. Numerical problems
found while fitting (no convergence, a variance estimated at zero) are reported
in the fit result and as warnings, which callers may turn into errors with the
standard ``warnings`` filters.
"""

from __future__ import annotations

import operator

import numpy as np


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


class ForkError(LMMError, RuntimeError):
    """lmm_jax was called in a child process forked after JAX had started in
    its parent (JAX is not fork-safe: the call would hang); start worker
    processes with multiprocessing's "spawn" or "forkserver" method."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped without meeting its convergence criteria."""


class SingularFitWarning(UserWarning):
    """A variance component (or a correlation's remainder) is estimated at the
    boundary: the fit is singular, like lme4's ``isSingular``."""


class SeparationWarning(UserWarning):
    """A GLMM's fixed-effect estimate drifts to infinity: the data separate
    the outcomes of some level or range of a covariate (complete or
    quasi-complete separation), so the estimate and its SE are not meaningful."""


class ScalingWarning(UserWarning):
    """A covariate or the response lies so far from zero relative to its
    spread that the cross-products lose digits: center it."""


class RankDeficiencyWarning(UserWarning):
    """Fixed-effects columns were dropped because X is rank deficient."""


class CompiledCodeWarning(UserWarning):
    """lmm_jax emptied JAX's in-memory compilation caches to keep the process
    under its memory-mapping limit (``vm.max_map_count``); models fitted
    afterwards compile again. See :mod:`lmm_jax.runtime.code_memory`."""


class PrecisionError(LMMError, TypeError, RuntimeError):
    """lmm_jax could not compute in float64: JAX's 64-bit types cannot be
    enabled for its entry points (see :mod:`lmm_jax.runtime.scope`), or a
    function it returned (:func:`lmm_jax.make_deviance`,
    :func:`lmm_jax.make_estimates`) was called or traced with 64-bit types
    off or with float32 inputs. A TypeError (inputs of the wrong precision)
    and a RuntimeError (JAX's state)."""


class ConfigurationWarning(UserWarning):
    """:func:`lmm_jax.runtime.configure` could not apply a process setting
    (most often because JAX's backends had already started)."""


# -- argument checks of public functions ----------------------------------------
def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool (Python's or numpy's); else a TypeError naming
    the argument: ``bool("no")`` is True, so a string, number or None passed
    for a flag such as ``reml`` would silently mean something else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` if it is an integer (Python's or
    numpy's, not a bool); else a TypeError (a float such as 10.7, a string)
    or a ValueError (below ``minimum``) naming the argument."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        hint = f"; write int({value!r}) if that is meant" if isinstance(value, float) and value.is_integer() else ""
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}){hint}") from None
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {count}")
    return count


DDF_METHODS = ("satterthwaite", "kenward-roger", "residual", "none")


def normalize_ddf(ddf: str) -> str:
    """A denominator-df method of :data:`DDF_METHODS` from lmerTest's spellings
    too (``"Satterthwaite"``, ``"Kenward-Roger"``, ``"kr"``; ``"lme4"``, ``"z"``
    for ``"none"``); an InferenceError naming the methods otherwise."""
    key = str(ddf).lower().replace("_", "-").replace(" ", "-")
    key = {"kr": "kenward-roger", "kenwardroger": "kenward-roger", "lme4": "none", "asymptotic": "none",
           "z": "none"}.get(key, key)
    if key not in DDF_METHODS:
        raise InferenceError(f"ddf must be one of {list(DDF_METHODS)}, got {ddf!r}")
    return key

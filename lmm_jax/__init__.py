"""lmm_jax: lme4-style linear mixed models with a pure-JAX likelihood.

Quick start::

    import lmm_jax
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    print(fit.summary())

Importing or using lmm_jax leaves the process's JAX as the user set it: lmm_jax computes in
float64 inside its own calls (:mod:`lmm_jax.runtime.scope`), and process-wide tuning is the
user's explicit call, ``lmm_jax.runtime.configure()`` (:mod:`lmm_jax.runtime.process`).
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import (CompiledCodeWarning, ConfigurationWarning, ConvergenceError, ConvergenceWarning, DataError,
                     ForkError, FormulaError, InferenceError, LMMError, PrecisionError, RankDeficiencyWarning,
                     ScalingWarning, SeparationWarning, SingularFitWarning)
from .runtime import fork as _fork  # noqa: F401  (at-fork hook: ForkError, not a hang, in a child forked after JAX ran)

if _TYPE_CHECKING:
    from . import datasets
    from .batched.batch import BatchResult
    from .batched.bootstrap import BootstrapResult
    from .batched.modcomp import PBModComp, pb_modcomp
    from .planning import extend, power, power_curve, simulate
    from .build.formula import parse_formula
    from .core.estimates import Estimates
    from .core.types import CrossProducts
    from .inference.anova import anova
    from .inference.emmeans import emmeans
    from .glmm.model import GLMM
    from .glmm.results import GLMMResult
    from .model import LMM, fit, fit_many, make_deviance, make_estimates
    from .results import LMMResult
    from .runtime.code_memory import clear_caches

__version__ = "0.1.0"

__all__ = ["LMM", "fit", "make_deviance", "LMMResult", "anova", "datasets", "parse_formula", "LMMError", "FormulaError",
           "DataError", "InferenceError", "ConvergenceError", "ConvergenceWarning", "SingularFitWarning",
           "RankDeficiencyWarning", "ScalingWarning", "CompiledCodeWarning", "ForkError", "PrecisionError",
           "ConfigurationWarning", "clear_caches", "simulate", "BootstrapResult", "BatchResult", "fit_many",
           "make_estimates", "CrossProducts", "Estimates", "power", "power_curve", "extend", "emmeans", "pb_modcomp",
           "PBModComp", "GLMM", "GLMMResult", "SeparationWarning"]

# Public names and the modules that define them. A module loads on the first access of one of its names
# (PEP 562), so ``import lmm_jax`` loads its errors and the fork guard only; JAX, pandas, formulaic and scipy load
# with the code that uses them.
_LAZY = {"LMM": "model", "fit": "model", "make_deviance": "model", "fit_many": "model", "LMMResult": "results",
         "anova": "inference.anova", "emmeans": "inference.emmeans", "parse_formula": "build.formula",
         "simulate": "planning", "power": "planning", "power_curve": "planning", "extend": "planning",
         "BootstrapResult": "batched.bootstrap", "BatchResult": "batched.batch",
         "pb_modcomp": "batched.modcomp", "PBModComp": "batched.modcomp",
         "make_estimates": "model", "CrossProducts": "core.types", "Estimates": "core.estimates",
         "clear_caches": "runtime.code_memory", "GLMM": "glmm.model", "GLMMResult": "glmm.results"}
# Public modules that live in a subpackage: ``from lmm_jax import plotting``.
_MODULES = {"plotting": "report.plotting"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        value = _importlib.import_module(f"{__name__}.{_MODULES[name]}")
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a subpackage or module: lmm_jax.datasets, lmm_jax.core, ...
        try:
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

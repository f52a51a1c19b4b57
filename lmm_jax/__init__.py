"""lmm_jax: lme4-style linear mixed models with a pure-JAX likelihood.

Quick start::

    import lmm_jax
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    print(fit.summary())
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .runtime.cpu_memory import enable_by_default as _keep_cpu_scratch  # noqa: E402

_keep_cpu_scratch()  # before anything starts JAX's backends; LMM_JAX_CPU_MEMORY=system turns it off (see its docstring)

from .runtime.cpu_compile import enable_by_default as _fast_cpu_compile  # noqa: E402

_fast_cpu_compile()  # XLA:CPU's older fusion emitters (compile ~40% faster); LMM_JAX_CPU_COMPILE=default turns it off

from .runtime.cpu_threads import enable_by_default as _cpu_threads  # noqa: E402

_cpu_threads()  # single-threaded LAPACK (OpenBLAS spins on busy machines); LMM_JAX_CPU_THREADS=N caps XLA's pool

from .runtime.compilation_cache import enable_by_default as _enable_compilation_cache  # noqa: E402

_enable_compilation_cache()  # persistent XLA cache in ~/.cache/lmm_jax/xla; LMM_JAX_COMPILATION_CACHE=0 turns it off

from .runtime.code_memory import clear_caches  # noqa: E402  (importing it starts the compiled-code guard)

from .errors import (ConvergenceError, ConvergenceWarning, DataError, FormulaError, InferenceError,  # noqa: E402
                     LMMError, RankDeficiencyWarning, ScalingWarning, SingularFitWarning, CompiledCodeWarning,
                     ForkError)

if _TYPE_CHECKING:
    from . import datasets
    from .batched.batch import BatchResult
    from .batched.bootstrap import BootstrapResult
    from .batched.simulate import simulate
    from .build.formula import parse_formula
    from .core.estimates import Estimates
    from .core.types import CrossProducts
    from .inference.anova import anova
    from .model import LMM, fit, fit_many, make_deviance, make_estimates
    from .results import LMMResult

__version__ = "0.1.0"

__all__ = ["LMM", "fit", "make_deviance", "LMMResult", "anova", "datasets", "parse_formula", "LMMError", "FormulaError",
           "DataError", "InferenceError", "ConvergenceError", "ConvergenceWarning", "SingularFitWarning",
           "RankDeficiencyWarning", "ScalingWarning", "CompiledCodeWarning", "ForkError", "clear_caches",
           "simulate", "BootstrapResult", "BatchResult", "fit_many",
           "make_estimates", "CrossProducts", "Estimates"]

# Public names and the modules that define them. A module loads on the first access of one of its names
# (PEP 562), so ``import lmm_jax`` costs JAX and the settings above; pandas, formulaic and scipy load with the
# code that uses them.
_LAZY = {"LMM": "model", "fit": "model", "make_deviance": "model", "fit_many": "model", "LMMResult": "results",
         "anova": "inference.anova", "parse_formula": "build.formula", "simulate": "batched.simulate",
         "BootstrapResult": "batched.bootstrap", "BatchResult": "batched.batch",
         "make_estimates": "model", "CrossProducts": "core.types", "Estimates": "core.estimates"}
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

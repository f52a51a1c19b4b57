"""lmm_jax: lme4-style linear mixed models with a pure-JAX likelihood.

Quick start::

    import lmm_jax
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    print(fit.summary())
"""

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING as _TYPE_CHECKING

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .cpu_memory import enable_by_default as _keep_cpu_scratch  # noqa: E402

_keep_cpu_scratch()  # before anything starts JAX's backends; LMM_JAX_CPU_MEMORY=system turns it off (see its docstring)

from .cpu_compile import enable_by_default as _fast_cpu_compile  # noqa: E402

_fast_cpu_compile()  # XLA:CPU's older fusion emitters (compile ~40% faster); LMM_JAX_CPU_COMPILE=default turns it off

from .cpu_threads import enable_by_default as _cpu_threads  # noqa: E402

_cpu_threads()  # single-threaded LAPACK (OpenBLAS spins on busy machines); LMM_JAX_CPU_THREADS=N caps XLA's pool

from .compilation_cache import enable_by_default as _enable_compilation_cache  # noqa: E402

_enable_compilation_cache()  # persistent XLA cache in ~/.cache/lmm_jax/xla; LMM_JAX_COMPILATION_CACHE=0 turns it off

from .code_memory import clear_caches  # noqa: E402  (importing it starts the compiled-code guard)

from .errors import (ConvergenceError, ConvergenceWarning, DataError, FormulaError, LMMError,  # noqa: E402
                     RankDeficiencyWarning, ScalingWarning, SingularFitWarning, CompiledCodeWarning)

if _TYPE_CHECKING:
    from . import datasets
    from .anova import anova
    from .batch import BatchResult, fit_many
    from .bootstrap import BootstrapResult
    from .formula import parse_formula
    from .model import LMM, fit, make_deviance
    from .results import LMMResult
    from .simulate import simulate

__version__ = "0.1.0"

__all__ = ["LMM", "fit", "make_deviance", "LMMResult", "anova", "datasets", "parse_formula", "LMMError", "FormulaError",
           "DataError", "ConvergenceError", "ConvergenceWarning", "SingularFitWarning", "RankDeficiencyWarning",
           "ScalingWarning", "CompiledCodeWarning", "clear_caches",
           "simulate", "BootstrapResult", "BatchResult", "fit_many"]

# Public names and the submodules that define them. A submodule loads on the first access of one of its names
# (PEP 562), so ``import lmm_jax`` costs JAX and the settings above; pandas, formulaic and scipy load with the
# code that uses them.
_LAZY = {"LMM": "model", "fit": "model", "make_deviance": "model", "LMMResult": "results", "anova": "anova",
         "parse_formula": "formula", "simulate": "simulate", "BootstrapResult": "bootstrap", "BatchResult": "batch",
         "fit_many": "batch"}
# Functions named like the submodule that defines them: ``lmm_jax.anova`` is the function, not the module.
_SHADOWED = ("anova", "simulate")


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # any submodule: lmm_jax.datasets, lmm_jax.design, ...
        try:
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # The import system binds each submodule it loads as an attribute of this package; for the shadowed
        # names the attribute stays the function, whichever code imports the submodule first.
        if name in _SHADOWED and isinstance(value, _types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

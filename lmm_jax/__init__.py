"""lmm_jax: lme4-style linear mixed models with a pure-JAX likelihood.

Quick start::

    import lmm_jax
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    print(fit.summary())
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from .cpu_memory import enable_by_default as _keep_cpu_scratch  # noqa: E402

_keep_cpu_scratch()  # before anything starts JAX's backends; LMM_JAX_CPU_MEMORY=system turns it off (see its docstring)

from .cpu_compile import enable_by_default as _fast_cpu_compile  # noqa: E402

_fast_cpu_compile()  # XLA:CPU's older fusion emitters (compile ~40% faster); LMM_JAX_CPU_COMPILE=default turns it off

from .compilation_cache import enable_by_default as _enable_compilation_cache  # noqa: E402

_enable_compilation_cache()  # persistent XLA cache in ~/.cache/lmm_jax/xla; LMM_JAX_COMPILATION_CACHE=0 turns it off

from .code_memory import clear_caches  # noqa: E402  (importing it starts the compiled-code guard)

from . import datasets  # noqa: E402
from .errors import (ConvergenceError, ConvergenceWarning, DataError, FormulaError, LMMError,  # noqa: E402
                     RankDeficiencyWarning, ScalingWarning, SingularFitWarning, CompiledCodeWarning)
from .formula import parse_formula  # noqa: E402
from .model import LMM, fit, make_deviance  # noqa: E402
from .results import LMMResult  # noqa: E402
from .anova import anova  # noqa: E402
from .simulate import simulate  # noqa: E402
from .bootstrap import BootstrapResult  # noqa: E402
from .batch import BatchResult, fit_many  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LMM", "fit", "make_deviance", "LMMResult", "anova", "datasets", "parse_formula", "LMMError", "FormulaError",
           "DataError", "ConvergenceError", "ConvergenceWarning", "SingularFitWarning", "RankDeficiencyWarning",
           "ScalingWarning", "CompiledCodeWarning", "clear_caches",
           "simulate", "BootstrapResult", "BatchResult", "fit_many"]

"""lmm_jax: lme4-style linear mixed models with a pure-JAX likelihood.

Quick start::

    import lmm_jax
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    print(fit.summary())
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from . import datasets  # noqa: E402
from .errors import (ConvergenceWarning, DataError, FormulaError, LMMError, RankDeficiencyWarning,  # noqa: E402
                     SingularFitWarning)
from .formula import parse_formula  # noqa: E402
from .model import LMM, fit, make_deviance  # noqa: E402
from .results import LMMResult  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LMM", "fit", "make_deviance", "LMMResult", "datasets", "parse_formula", "LMMError", "FormulaError",
           "DataError", "ConvergenceWarning", "SingularFitWarning", "RankDeficiencyWarning"]

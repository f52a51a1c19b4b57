"""Inference on a fit: t and F tests with Satterthwaite or Kenward-Roger df, anova, profiles, prediction.

The functions of :mod:`lmm_jax.inference.tests` (``coefs``, ``contrast``,
``confint``, ``varcorr_table``, ...) are also names of this package, loaded
on first use.
"""

import importlib as _importlib

_TESTS = ("normalize_ddf", "t_tests", "f_test", "contrast", "coefs", "varcorr_table", "wald_confint", "confint")


def __getattr__(name: str):
    if name in _TESTS:
        return getattr(_importlib.import_module(f"{__name__}.tests"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

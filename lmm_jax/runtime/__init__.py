"""Process plumbing: the scope of lmm_jax's entry points, kernels kept on disk, the fork guard, and the
process-wide tuning that :func:`configure` applies when asked (never on import).

Modules load on first use (PEP 562): ``import lmm_jax`` loads :mod:`.fork` only, whose at-fork hook must
be in place before a fork, and not JAX.
"""

import importlib as _importlib

__all__ = ["configure", "configured"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(_importlib.import_module(f"{__name__}.process"), name)
    if not name.startswith("__"):  # a module: lmm_jax.runtime.cpu_memory, ...
        try:
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

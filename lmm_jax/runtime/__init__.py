"""Process plumbing: the scope of lmm_jax's entry points, kernels kept on disk, and the
process-wide tuning that :func:`configure` applies when asked (never on import)."""

from .process import configure, configured

__all__ = ["configure", "configured"]

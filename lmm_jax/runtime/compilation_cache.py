"""Where compiled code is kept between processes: lmm_jax's own folder, and JAX's cache on request.

A model's first fit compiles the Newton loop (value, gradient and exact
Hessian of the deviance) and the inference helpers: seconds of work that
depend only on the model's shapes. Two stores let a later process skip it:

1. lmm_jax's own folder, on by default: ``$LMM_JAX_CACHE_DIR`` if set, else
   ``~/.cache/lmm_jax`` (:func:`own_cache_dir`). :mod:`lmm_jax.runtime.kernel`
   keeps lmm_jax's own kernels there, exported programs and compiled
   executables; nothing else of the process is written there, and JAX's
   configuration is not touched.
   ``LMM_JAX_COMPILATION_CACHE=0`` turns it off.
2. JAX's persistent compilation cache (jax docs, "Persistent compilation
   cache"), only when asked: ``lmm_jax.runtime.configure(compilation_cache=True)``
   calls :func:`enable_jax_cache`, which points ``jax_compilation_cache_dir``
   at ``<folder>/xla`` and sets ``jax_persistent_cache_min_compile_time_secs``
   to 0. That is process-wide: every compilation of the process is cached
   there, the user's own functions included. A cache directory the user has
   already configured in JAX is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from .switches import env_switch

ENV_SWITCH = "LMM_JAX_COMPILATION_CACHE"
ENV_DIR = "LMM_JAX_CACHE_DIR"
# With JAX's cache: cache every compilation, however short. Results' helpers run many small eager ops, each its
# own executable; caching them too took a second process's sleepstudy fit + summary from 3.7 s + 6.4 s to
# 1.3 s + 1.1 s (a 0.8 MB cache of about 100 entries).
MIN_COMPILE_SECONDS = 0.0


def default_cache_dir() -> Path:
    """lmm_jax's folder: ``$LMM_JAX_CACHE_DIR`` or ``~/.cache/lmm_jax``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmm_jax"


def enabled() -> bool:
    """Whether lmm_jax keeps its compiled kernels on disk (``LMM_JAX_COMPILATION_CACHE`` not off)."""
    return env_switch(ENV_SWITCH) is not False


def own_cache_dir() -> Path | None:
    """lmm_jax's own cache folder (:func:`default_cache_dir`), or None when ``LMM_JAX_COMPILATION_CACHE``
    turns it off. Reads nothing of JAX's configuration."""
    return default_cache_dir() if enabled() else None


def enable_jax_cache(path: str | os.PathLike | None = None) -> dict[str, object]:
    """Point JAX's persistent compilation cache at ``path`` for the whole process.

    Args:
        path: cache directory; default ``<folder>/xla`` (:func:`default_cache_dir`).

    Returns:
        ``{"enabled": bool, "dir": str | None, "reason": str}``: the directory in use, or why none
        (a directory the user configured stands; an unwritable one leaves the cache off: fits still
        work, they compile again).
    """
    target = Path(path).expanduser() if path is not None else default_cache_dir() / "xla"
    current = jax.config.jax_compilation_cache_dir
    if current:                                 # set by the user, or by an earlier call
        return {"enabled": True, "dir": current,
                "reason": "" if Path(current) == target else "jax_compilation_cache_dir was set: left as the user chose"}
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return {"enabled": False, "dir": None, "reason": f"{target} could not be created ({e.strerror})"}
    if not os.access(target, os.W_OK):
        return {"enabled": False, "dir": None, "reason": f"{target} is not writable"}
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return {"enabled": True, "dir": str(target), "reason": ""}

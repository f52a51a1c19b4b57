"""Refuse to run in a child forked from a process that had started JAX.

JAX is multithreaded and not fork-safe: a child made by ``os.fork`` (or by
multiprocessing's ``"fork"`` start method, Linux's default up to Python 3.13)
after the parent ran JAX computations inherits the locks of threads that do not
exist in the child, and its first JAX computation hangs forever
(``multiprocessing.Pool().map(fit_one, datasets)`` after a fit in the parent).
At fork time this module records whether the parent's JAX backends had
started; lmm_jax's entry points call :func:`check`, which in such a child
raises :class:`~lmm_jax.errors.ForkError` at once, saying to start the workers
with ``"spawn"`` or ``"forkserver"``. A child forked before any JAX
computation in the parent is safe and runs normally.
"""

from __future__ import annotations

import os
import sys

from ..errors import ForkError

_jax_started_at_fork = False   # set in the parent just before a fork
_forked_after_jax = False      # set in the child: its parent had started JAX


def _jax_started() -> bool:
    """Whether JAX has initialised its backends (threads, device clients) in this process (never before
    JAX is imported: the hook must not import it at fork time)."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if xla_bridge is None:
        return False
    try:
        backends = getattr(xla_bridge, "_backends", None)   # read without the lock: we are about to fork
        return bool(backends) if backends is not None else bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - another JAX layout: do not block children
        return False


def _before_fork() -> None:
    global _jax_started_at_fork
    _jax_started_at_fork = _jax_started()


def _after_fork_in_child() -> None:
    global _forked_after_jax
    _forked_after_jax = _forked_after_jax or _jax_started_at_fork


def check() -> None:
    """Raise :class:`~lmm_jax.errors.ForkError` in a child forked after JAX started in its parent."""
    if _forked_after_jax:
        raise ForkError(
            "lmm_jax cannot run in this process: it was forked (os.fork, or multiprocessing's 'fork' start method, "
            "Linux's default) from a process that had already run JAX, and JAX is not fork-safe (this call would "
            "hang). Start the worker processes with 'spawn' or 'forkserver' instead, e.g. "
            "multiprocessing.get_context('spawn').Pool(4) or concurrent.futures.ProcessPoolExecutor("
            "mp_context=multiprocessing.get_context('spawn')); see 'Parallel processes' in the README")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)

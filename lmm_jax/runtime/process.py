"""Process-wide tuning, applied only when asked: :func:`configure`.

Importing or using lmm_jax changes nothing of the process beyond lmm_jax's
own computations (:mod:`lmm_jax.runtime.scope`). Some settings make lmm_jax
faster but act on the whole process, so they are the user's call, made once
at the start of a program or notebook, before any JAX computation:

=====================  ==============================================================  ====================
switch                 what it changes for the whole process                            environment default
=====================  ==============================================================  ====================
``cpu_memory``         CPU dispatch synchronous; glibc malloc keeps freed memory        ``LMM_JAX_CPU_MEMORY``
                       (:mod:`~lmm_jax.runtime.cpu_memory`); before JAX's backends
``cpu_compile``        ``XLA_FLAGS`` += XLA:CPU's older fusion emitters, for every      ``LMM_JAX_CPU_COMPILE``
                       CPU compilation (:mod:`~lmm_jax.runtime.cpu_compile`); before
                       JAX's backends start
``cpu_threads``        scipy's OpenBLAS single-threaded; with N, ``PJRT_NPROC=N``      ``LMM_JAX_CPU_THREADS``
                       caps XLA's pool (before JAX's backends start)
                       (:mod:`~lmm_jax.runtime.cpu_threads`)
``compilation_cache``  JAX's persistent cache at ``~/.cache/lmm_jax/xla`` (or a       ``LMM_JAX_COMPILATION_CACHE``
                       path), every compilation of the process cached
                       (:mod:`~lmm_jax.runtime.compilation_cache`)
=====================  ==============================================================  ====================

``docs/performance.md`` measures what each buys. An argument left at None
takes the environment switch's value, and a switch that is unset means on:
``configure()`` alone applies all four. A setting that must precede JAX's
backends and comes too late is skipped with a
:class:`~lmm_jax.errors.ConfigurationWarning`; settings the user made
(``XLA_FLAGS``'s extra options, ``OPENBLAS_NUM_THREADS``, ``PJRT_NPROC``,
``JAX_CPU_ENABLE_ASYNC_DISPATCH``, ``jax_compilation_cache_dir``) stand.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

from .compilation_cache import ENV_SWITCH as CACHE_SWITCH, enable_jax_cache
from .cpu_compile import ENV_SWITCH as COMPILE_SWITCH, enable as enable_cpu_compile
from .cpu_memory import ENV_SWITCH as MEMORY_SWITCH, enable as enable_cpu_memory
from .cpu_threads import ENV_SWITCH as THREADS_SWITCH, enable as enable_cpu_threads
from .switches import TOO_LATE, env_switch
from ..errors import ConfigurationWarning

_done: dict[str, dict[str, Any]] = {}


def configure(*, cpu_memory: bool | None = None, cpu_compile: bool | None = None,
              cpu_threads: bool | int | None = None,
              compilation_cache: bool | str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Apply lmm_jax's process-wide tuning (module docstring); call it before any JAX computation.

    Args:
        cpu_memory: keep XLA's CPU scratch memory resident (synchronous CPU dispatch, ``mallopt``).
        cpu_compile: XLA:CPU's older fusion emitters through ``XLA_FLAGS`` (compiles ~40% faster).
        cpu_threads: True: scipy's OpenBLAS single-threaded; an int N: that, and XLA's CPU pool of
            N threads; False: neither.
        compilation_cache: JAX's persistent compilation cache for the whole process: True for
            ``<lmm_jax cache folder>/xla``, or a directory.

        None (the default) takes ``LMM_JAX_CPU_MEMORY``, ``LMM_JAX_CPU_COMPILE``,
        ``LMM_JAX_CPU_THREADS``, ``LMM_JAX_COMPILATION_CACHE``; unset, on.

    Returns:
        What each setting did, as :func:`configured` reports it: ``{"cpu_memory": {"enabled",
        "reason"}, "cpu_compile": {...}, "cpu_threads": {"lapack": {...}, "xla": {...}},
        "compilation_cache": {"enabled", "dir", "reason"}}``.

    Raises:
        ValueError: a setting (or its environment switch) that is neither on, off nor, for
            ``cpu_threads``, a positive number.

    Warns:
        ConfigurationWarning: for a setting that came too late (JAX's backends had started).

    Example:
        >>> import lmm_jax.runtime
        >>> done = lmm_jax.runtime.configure(cpu_threads=2, compilation_cache=False)  # before JAX runs
        >>> done["cpu_threads"]["xla"]["enabled"]  # doctest: +SKIP
    """
    mem, mem_from = _on_off(*_choice("cpu_memory", cpu_memory, MEMORY_SWITCH, ("system",)))
    comp, comp_from = _on_off(*_choice("cpu_compile", cpu_compile, COMPILE_SWITCH, ("default",)))
    threads, threads_from = _choice("cpu_threads", cpu_threads, THREADS_SWITCH, ("default",), counts=True)
    if not isinstance(threads, bool):
        threads = _thread_count(threads, threads_from)
    cache, cache_from = _choice("compilation_cache", compilation_cache, CACHE_SWITCH)
    if compilation_cache is None:                       # the switch is on or off; LMM_JAX_CACHE_DIR names the folder
        cache, cache_from = _on_off(cache, cache_from)
    # every value checked: now apply
    done: dict[str, dict[str, Any]] = {
        "cpu_memory": enable_cpu_memory() if mem else {"enabled": False, "reason": mem_from},
        "cpu_compile": enable_cpu_compile() if comp else {"enabled": False, "reason": comp_from},
    }
    if threads is False:
        done["cpu_threads"] = {"lapack": {"single_threaded": False, "reason": threads_from, "library": None},
                               "xla": {"threads": None, "reason": threads_from}}
    else:
        done["cpu_threads"] = enable_cpu_threads(None if threads is True else threads)
    if cache is False:
        done["compilation_cache"] = {"enabled": False, "dir": None, "reason": cache_from}
    else:
        done["compilation_cache"] = enable_jax_cache(None if cache is True else cache)

    late = [name for name, d in done.items() if TOO_LATE in repr(d)]
    if late:
        warnings.warn(f"lmm_jax.runtime.configure: {', '.join(late)} could not take effect because JAX's backends "
                      "had started (a JAX computation ran first); call configure() at the start of the program, "
                      "before any JAX computation", ConfigurationWarning, stacklevel=2)
    _done.clear()
    _done.update(done)
    return configured()


def configured() -> dict[str, dict[str, Any]]:
    """What the last :func:`configure` did (``{}`` before any call)."""
    return copy.deepcopy(_done)


def _choice(name: str, value: Any, env: str, off: tuple[str, ...] = (), counts: bool = False) -> tuple[Any, str]:
    """(the setting, where it came from): the argument, else the environment switch, else on."""
    if value is not None:
        return value, f"configure({name}={value!r})"
    got = env_switch(env, off, counts)
    return (True, "default") if got is None else (got, f"{env}={os.environ[env]}")


def _on_off(value: Any, source: str) -> tuple[bool, str]:
    if not isinstance(value, bool):
        raise ValueError(f"{source}: expected on or off (true/false, 1/0), got {value!r}")
    return value, source


def _thread_count(value: Any, source: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: cpu_threads must be True, False or a positive number of threads, "
                         f"got {value!r}")
    return value

"""Threads of lmm_jax's compiled CPU code: LAPACK single-threaded, XLA's pool capped on request.

Why. XLA:CPU runs a compiled fit on its intra-op thread pool (``tf_XLAEigen``
threads, one per core the process may use). JAX's CPU kernels for Cholesky
factorisations and triangular solves call LAPACK through
``scipy.linalg.cython_lapack``, from one of those pool threads; with scipy's
wheels that LAPACK is OpenBLAS, which keeps a pool of its own, one thread per
core, and synchronises it by busy-waiting: its workers spin for a while after
each call (``blas_thread_server``) and the calling thread spins until they
have finished (``exec_blas_async_wait``). Those spinning threads take the
cores XLA's pool needs, and on a busy machine the calling thread spins while
the worker it waits for is not running. Measured on InstEval's warm fit
(2-core VM, interleaved processes, medians; docs/performance.md has the
table): idle 0.88 s with OpenBLAS's default threads and 0.64 s with one;
beside one CPU-bound process 5.8 s (2.1-8.8) and 1.23 s. XLA's own pool
blocks rather than spins (under 0.1% of its ``perf`` samples), and a
one-thread pool (``PJRT_NPROC=1``) made the idle fit 1.15 s.

What:

1. LAPACK, on by default: at the first lmm_jax entry point after scipy has
   loaded its OpenBLAS (it loads with a model's design), :func:`check` sets
   that library to one thread (its ``openblas_set_num_threads``), once, for
   the whole process: scipy's own ``scipy.linalg`` calls run single-threaded
   too. The library is the loaded OpenBLAS with 32-bit LAPACK integers, the
   one scipy's ``cython_lapack`` (and so JAX) calls; numpy's 64-bit-integer
   OpenBLAS of the same wheels is left alone (where numpy and scipy share one
   OpenBLAS, as conda-forge's builds do, numpy's calls go single-threaded too).
2. XLA's pool, on request: ``LMM_JAX_CPU_THREADS=N`` sets ``PJRT_NPROC=N``
   before JAX's backends start (XLA sizes its pool from it when the CPU
   client is created): N threads instead of one per core, for sharing a
   machine. It costs speed on an idle one.

Switches, read on import of :mod:`lmm_jax` (:func:`enable_by_default`):
``LMM_JAX_CPU_THREADS`` unset or ``auto``: 1 only; a positive integer N: 1
and 2; ``default`` (or ``0``/``off``): neither (XLA's and OpenBLAS's own
defaults). The user's own settings stand: with ``OPENBLAS_NUM_THREADS``,
``GOTO_NUM_THREADS`` or ``OMP_NUM_THREADS`` in the environment LAPACK is left
alone, with ``PJRT_NPROC`` or ``NPROC`` the pool. :func:`state` says what
was done.
"""

from __future__ import annotations

import ctypes
import os
import sys

from .cpu_memory import _backends_started

ENV_SWITCH = "LMM_JAX_CPU_THREADS"
OFF = ("0", "off", "false", "no", "default")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
POOL_ENV = ("PJRT_NPROC", "NPROC")
# OpenBLAS's thread setter: the name in scipy's wheels (symbols prefixed ``scipy_``) and elsewhere
SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")

_lapack: dict[str, object] = {"single_threaded": False, "reason": "not attempted", "library": None}
_xla: dict[str, object] = {"threads": None, "reason": "not attempted"}
_pending = False       # LAPACK to be set single-threaded at the next entry point where scipy is loaded


def _loaded_openblas() -> list[str] | None:
    """Paths of the loaded shared libraries whose file name mentions OpenBLAS; None without ``/proc``."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    return sorted(p for p in paths if p.startswith("/") and "openblas" in os.path.basename(p).lower())


def _set_lapack_single_threaded() -> dict[str, object]:
    paths = _loaded_openblas()
    if paths is None:
        return {"single_threaded": False, "reason": "no /proc/self/maps to find OpenBLAS in: left alone",
                "library": None}
    for path in paths:
        try:
            lib = ctypes.CDLL(path)             # already loaded: the same handle, nothing is re-initialised
        except OSError:
            continue
        for name in SETTERS:                    # the 32-bit-integer library exports these; numpy's ILP64 one
            setter = getattr(lib, name, None)   # only ``..._set_num_threads64_``
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                setter(1)
                return {"single_threaded": True, "reason": "", "library": path}
    return {"single_threaded": False, "reason": "no OpenBLAS with 32-bit LAPACK integers is loaded "
            "(scipy's LAPACK is another library): left alone", "library": None}


def check() -> None:
    """At an entry point: make LAPACK single-threaded once scipy has loaded it (see the module docstring)."""
    global _pending, _lapack
    if _pending and "scipy.linalg" in sys.modules:
        _pending = False
        _lapack = _set_lapack_single_threaded()


def enable(threads: int | None = None) -> dict[str, object]:
    """Single-threaded LAPACK at the next entry point; with ``threads``, XLA's pool of that many threads.

    Returns:
        :func:`state`.
    """
    global _pending, _lapack, _xla
    blas = [k for k in BLAS_ENV if k in os.environ]
    if blas:
        _lapack = {"single_threaded": False, "reason": f"{blas[0]} is set: left as the user chose", "library": None}
    else:
        _pending = True
        _lapack = {"single_threaded": False, "reason": "pending: scipy's LAPACK is not loaded yet", "library": None}
        check()
    pool = [k for k in POOL_ENV if k in os.environ]
    if threads is None:
        _xla = {"threads": None, "reason": f"{ENV_SWITCH} not set: one thread per core"}
    elif pool:
        _xla = {"threads": None, "reason": f"{pool[0]} is set: left as the user chose"}
    elif _backends_started():
        _xla = {"threads": None, "reason": "JAX's backends had started before lmm_jax was imported"}
    else:
        os.environ["PJRT_NPROC"] = str(threads)
        _xla = {"threads": threads, "reason": ""}
    return state()


def enable_by_default() -> dict[str, object]:
    """Called on import: :func:`enable` as ``LMM_JAX_CPU_THREADS`` says."""
    global _lapack, _xla
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in OFF:
        why = f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        _lapack = {"single_threaded": False, "reason": why, "library": None}
        _xla = {"threads": None, "reason": why}
        return state()
    if value in ("", "auto"):
        return enable()
    try:
        threads = int(value)
        if threads < 1:
            raise ValueError
    except ValueError:
        import warnings
        warnings.warn(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not a positive integer, 'auto' or 'default': "
                      f"XLA's thread pool left as it is", stacklevel=2)
        return enable()
    return enable(threads)


def state() -> dict[str, object]:
    """What was done, and why not: ``{"lapack": {"single_threaded", "reason", "library"},
    "xla": {"threads", "reason"}}``."""
    return {"lapack": dict(_lapack), "xla": dict(_xla)}

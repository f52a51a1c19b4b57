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

What :func:`enable` does, when asked (``lmm_jax.runtime.configure(cpu_threads=...)``;
nothing on import), for the whole process:

1. LAPACK: it loads scipy's LAPACK (``import scipy.linalg``) and sets that
   library to one thread (its ``openblas_set_num_threads``): JAX's CPU
   Cholesky and triangular solves run single-threaded inside XLA's pool, and
   so do the process's own ``scipy.linalg`` calls. The library is the loaded
   OpenBLAS with 32-bit LAPACK integers, the one scipy's ``cython_lapack``
   (and so JAX) calls; numpy's 64-bit-integer OpenBLAS of the same wheels is
   left alone (where numpy and scipy share one OpenBLAS, as conda-forge's
   builds do, numpy's calls go single-threaded too). lmm_jax's own calls run
   single-threaded LAPACK without it (:mod:`lmm_jax.runtime.openblas`, the
   count restored when they return); this makes it the library's setting for
   the rest of the process: the user's JAX code and scipy calls.
2. XLA's pool, with ``threads=N``: sets ``PJRT_NPROC=N`` before JAX's
   backends start (XLA sizes its pool from it when the CPU client is
   created): N threads instead of one per core, for every JAX computation
   of the process, for sharing a machine. It costs speed on an idle one.

The user's own settings stand: with ``OPENBLAS_NUM_THREADS``,
``GOTO_NUM_THREADS`` or ``OMP_NUM_THREADS`` in the environment LAPACK is left
alone, with ``PJRT_NPROC`` or ``NPROC`` the pool. :func:`state` says what was
done. ``LMM_JAX_CPU_THREADS`` is :func:`lmm_jax.runtime.configure`'s default:
unset or ``auto``, 1 only; a positive integer N, 1 and 2; ``default`` (or
``0``/``off``), neither (XLA's and OpenBLAS's own defaults).
"""

from __future__ import annotations

import os

from . import openblas
from .switches import TOO_LATE, backends_started

ENV_SWITCH = "LMM_JAX_CPU_THREADS"
BLAS_ENV = openblas.BLAS_ENV
POOL_ENV = ("PJRT_NPROC", "NPROC")

NOT_CONFIGURED = "not configured (lmm_jax.runtime.configure turns it on)"
_lapack: dict[str, object] = {"single_threaded": False, "reason": NOT_CONFIGURED, "library": None}
_xla: dict[str, object] = {"threads": None, "reason": NOT_CONFIGURED}


def _set_lapack_single_threaded() -> dict[str, object]:
    if openblas.loaded_openblas() is None:
        return {"single_threaded": False, "reason": "no /proc/self/maps to find OpenBLAS in: left alone",
                "library": None}
    found = openblas.lapack_library()
    if found is None:
        return {"single_threaded": False, "reason": "no OpenBLAS with 32-bit LAPACK integers is loaded "
                "(scipy's LAPACK is another library): left alone", "library": None}
    path, setter, _ = found
    setter(1)
    return {"single_threaded": True, "reason": "", "library": path}


def enable(threads: int | None = None) -> dict[str, object]:
    """Single-threaded LAPACK; with ``threads``, XLA's pool of that many threads (module docstring).

    Returns:
        :func:`state`.
    """
    global _lapack, _xla
    blas = [k for k in BLAS_ENV if k in os.environ]
    if blas:
        _lapack = {"single_threaded": False, "reason": f"{blas[0]} is set: left as the user chose", "library": None}
    elif not _lapack["single_threaded"]:
        import scipy.linalg  # noqa: F401  (loads the LAPACK library that JAX's CPU kernels call)

        _lapack = _set_lapack_single_threaded()
    pool = [k for k in POOL_ENV if k in os.environ]
    if threads is None or _xla["threads"] == threads:     # nothing asked, or applied by an earlier call
        if _xla["threads"] is None:
            _xla = {"threads": None, "reason": "no thread count asked for: one thread per core"}
    elif pool:
        _xla = {"threads": None, "reason": f"{pool[0]} is set: left as the user chose"}
    elif backends_started():
        _xla = {"threads": None, "reason": TOO_LATE}
    else:
        os.environ["PJRT_NPROC"] = str(threads)
        _xla = {"threads": threads, "reason": ""}
    return state()


def state() -> dict[str, object]:
    """What was done, and why not: ``{"lapack": {"single_threaded", "reason", "library"},
    "xla": {"threads", "reason"}}``."""
    return {"lapack": dict(_lapack), "xla": dict(_xla)}

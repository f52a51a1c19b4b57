"""scipy's OpenBLAS, the LAPACK that JAX's CPU kernels call: one thread while lmm_jax computes.

Why. JAX's CPU Cholesky factorisations and triangular solves call LAPACK
through ``scipy.linalg.cython_lapack``, from XLA's own thread pool; with
scipy's wheels that LAPACK is OpenBLAS, whose worker threads busy-wait after
each call and take the cores XLA's pool and lmm_jax's background compiles
need (:mod:`lmm_jax.runtime.cpu_threads` has the measurements: InstEval's
warm fit, idle 0.88 s with OpenBLAS's default threads and 0.64 s with one;
beside one CPU-bound process 5.8 s and 1.23 s). LAPACK is about a tenth of
that fit's work, so a second LAPACK thread gains little; where it would (a
dense block of thousands of columns on many cores), ``OPENBLAS_NUM_THREADS``
keeps the count the user sets.

What. Every entry point (:func:`lmm_jax.runtime.scope.entry_point`) calls
:func:`enter` and :func:`leave` around its call (a generator's step runs in
:func:`single_threaded`, the same pair): while at least one lmm_jax call is running
in the process, the library computes with one thread; when the last one
returns, its thread count is what it was before (a process-wide count, as
OpenBLAS keeps it). So a fit's LAPACK calls are single-threaded, and its
results do not depend on the machine's number of cores (OpenBLAS's threaded
and single-threaded factorisations differ in the last bits), while the
user's own scipy calls keep OpenBLAS's threads. The user's scipy calls made
from another thread while an lmm_jax call runs are single-threaded too.

JAX loads the library when it first lowers or loads a kernel with a LAPACK
call; until then there is nothing to set, and the kernel layer calls
:func:`refresh` once a kernel is ready, which applies the setting to the
call in progress.

Left alone: with ``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS`` or
``OMP_NUM_THREADS`` in the environment (the user's choice), with
``LMM_JAX_CPU_THREADS=default`` (or ``0``/``off``: OpenBLAS's and XLA's own
defaults), and where scipy's LAPACK is not an OpenBLAS with 32-bit integers
(MKL, Accelerate) or there is no ``/proc/self/maps`` to find it in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from typing import Callable, Iterator

from .switches import env_switch

BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
THREADS_SWITCH = "LMM_JAX_CPU_THREADS"
# OpenBLAS's thread count, set and read: the names in scipy's wheels (symbols prefixed ``scipy_``) and elsewhere;
# numpy's 64-bit-integer library of the same wheels exports only ``..._num_threads64_``
FUNCTIONS = (("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
             ("openblas_set_num_threads", "openblas_get_num_threads"))
# JAX's LAPACK kernels import this module when they initialise: before it is loaded, the library may not be
LAPACK_MODULE = "scipy.linalg.cython_lapack"

_lock = threading.Lock()
_depth = 0                       # lmm_jax calls running in the process
_saved: int | None = None        # the thread count to restore, while one is set
_library: tuple | None = None    # (path, set, get) once found
_searched = False                # whether the library was looked for after LAPACK_MODULE loaded


def loaded_openblas() -> list[str] | None:
    """Paths of the loaded shared libraries whose file name mentions OpenBLAS; None without ``/proc``."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    return sorted(p for p in paths if p.startswith("/") and "openblas" in os.path.basename(p).lower())


def lapack_library() -> tuple[str, Callable[[int], None], Callable[[], int]] | None:
    """(path, set_num_threads, get_num_threads) of the loaded OpenBLAS with 32-bit LAPACK integers, the
    one scipy's ``cython_lapack`` (and so JAX) calls; None when none is loaded or it cannot be found."""
    for path in loaded_openblas() or ():
        try:
            lib = ctypes.CDLL(path)             # already loaded: the same handle, nothing is re-initialised
        except OSError:
            continue
        for set_name, get_name in FUNCTIONS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return path, setter, getter
    return None


def wanted() -> bool:
    """Whether lmm_jax sets the thread count within its calls (module docstring: not when the user chose)."""
    return not any(k in os.environ for k in BLAS_ENV) and env_switch(THREADS_SWITCH, ("default",), True) is not False


def _find() -> None:
    """Look for the library once JAX's LAPACK kernels have loaded it (called with the lock held)."""
    global _library, _searched
    if _searched or LAPACK_MODULE not in sys.modules:
        return
    _searched = True
    _library = lapack_library() if wanted() else None


def _apply() -> None:
    """One thread for the calls in progress, the count before kept (called with the lock held)."""
    global _saved
    if _saved is None and _library is not None:
        _, setter, getter = _library
        _saved = getter()
        if _saved != 1:
            setter(1)


def refresh() -> None:
    """Set the thread count for the calls in progress if the library has loaded since they began."""
    if _searched:
        return
    with _lock:
        _find()
        if _depth:
            _apply()


def enter() -> None:
    """An lmm_jax call begins: the first of those running sets one thread (module docstring)."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _find()
            _apply()


def leave() -> None:
    """An lmm_jax call ends: when it was the last one running, the count before is restored."""
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            if _saved != 1:
                _library[1](_saved)
            _saved = None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block as an lmm_jax call: scipy's OpenBLAS single-threaded (module docstring);
    nestable, and safe from several threads: the count before the outermost block is restored
    when the last one ends."""
    enter()
    try:
        yield
    finally:
        leave()


def state() -> dict[str, object]:
    """``{"library": path or None, "searched": bool, "calls": running lmm_jax calls, "restore_to": count or None}``."""
    with _lock:
        return {"library": _library[0] if _library else None, "searched": _searched, "calls": _depth,
                "restore_to": _saved}

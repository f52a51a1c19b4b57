"""Keep XLA's per-call scratch memory resident on Linux (glibc) CPUs.

Why. XLA's CPU runtime gives every execution of a compiled function one
temporary buffer, allocated with ``posix_memalign`` before the call and freed
after it: for InstEval's Newton fit 700 MB at stop 11 (the exact Hessian of
a 1,156-column Schur block, its pair sums and the line search; 247 MB since
the pair-sum jet of :mod:`lmm_jax.core.likelihood`), about 1.8 GB for the crossed
200,000-row design (460,000 faults of 4 kB per fit). glibc serves every request above 32 MB (its largest mmap
threshold) with a fresh ``mmap`` and returns it with ``munmap``, so each call
page-faults its whole scratch space again: 176,000 minor faults per InstEval
fit (about 3.6 us each on the benchmark VM: 0.4 s of a 1.8 s fit), 460,000 per
crossed-200k fit. MixedModels.jl (Julia's GC) and PyTorch (its caching
allocator) keep such memory instead of returning it to the kernel.

What :func:`enable` does, for the whole process, when asked
(``lmm_jax.runtime.configure(cpu_memory=True)``; nothing on import):

1. ``jax_cpu_enable_async_dispatch = False``: CPU computations run on the
   calling thread rather than on one of XLA's worker threads. The scratch
   buffer is then allocated by the caller, normally Python's main thread,
   from glibc's main arena. (A worker thread allocates from its own arena,
   whose heaps are capped at 64 MB, so glibc mmaps anything bigger whatever
   ``mallopt`` says.) XLA still spreads each operation over its thread pool;
   only the dispatch is synchronous, which a fit waits for anyway.
2. ``mallopt(M_MMAP_MAX, 0)``: the main arena grows with ``brk`` instead of
   mapping large blocks, and
3. ``mallopt(M_TRIM_THRESHOLD, -1)`` (``man mallopt``: -1 disables trimming):
   freed memory at the top of the heap stays with the process for the next
   call. The process keeps its peak heap
   (the largest fit's scratch) until :func:`release` hands it back.

Measured (stop 12, same machine and session, medians of 7 refits): InstEval
fit 1.87 s -> 1.46 s with 173,000 -> 100 faults per fit; crossed 200k 5.0 s
-> 3.9 s (460,000 -> 30 faults); the sleepstudy bootstrap (small scratch)
unchanged. ``benchmarks/RESULTS.md`` has the side-by-side runs.

What it changes beyond lmm_jax: every JAX computation of the process on
the CPU is dispatched synchronously (a caller no longer overlaps Python work
with a running computation), and glibc's malloc keeps freed memory instead
of returning large blocks at once, for all of the process's allocations.

Only when it can take effect: on Linux with glibc, before JAX's backends
start (the dispatch mode is fixed when the CPU client is created), and
unless the user set ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` themselves.
:func:`state` says what was done. ``LMM_JAX_CPU_MEMORY=system`` (or
``0``/``off``) keeps :func:`lmm_jax.runtime.configure` from calling it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import jax

from .switches import TOO_LATE, backends_started

ENV_SWITCH = "LMM_JAX_CPU_MEMORY"
M_TRIM_THRESHOLD = -1     # glibc <malloc.h>
M_MMAP_MAX = -4
NO_TRIM = -1              # man mallopt: "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

_state: dict[str, object] = {"enabled": False, "reason": "not configured (lmm_jax.runtime.configure turns it on)"}


def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def enable() -> dict[str, object]:
    """Apply steps 1-3 of the module docstring if they can take effect.

    Returns:
        :func:`state`: ``enabled`` and, when not enabled, ``reason``.
    """
    global _state
    if _state["enabled"]:                       # applied by an earlier call
        return state()
    libc = _libc()
    if libc is None:
        _state = {"enabled": False, "reason": f"not glibc Linux ({sys.platform}, {platform.libc_ver()[0] or 'no libc'})"}
    elif "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        _state = {"enabled": False, "reason": "JAX_CPU_ENABLE_ASYNC_DISPATCH is set: left as the user chose"}
    elif backends_started():
        _state = {"enabled": False, "reason": TOO_LATE}
    else:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM) == 1
        _state = {"enabled": ok, "reason": "" if ok else "mallopt refused"}
    return state()


def state() -> dict[str, object]:
    """``{"enabled": bool, "reason": str}``: whether the settings are in effect, and why not."""
    return dict(_state)


def release() -> bool:
    """Return the free memory the process holds to the kernel (``malloc_trim(0)``).

    For long sessions after a large fit. Returns True if memory was released.
    The next large call faults its scratch in again, once.
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))

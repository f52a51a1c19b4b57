"""Compiled code's share of the process's memory mappings, kept under the OS limit.

XLA:CPU loads every compiled kernel through LLVM's JIT into memory mappings of
its own (code, read-only data, data): about 680 mappings for a sleepstudy
fit's Newton loop and 720 more for its summary. JAX keeps each executable as
long as its jitted function lives, and lmm_jax's jitted functions live for the
session. Linux caps a process at ``vm.max_map_count`` mappings (65,530 by
default); past the cap ``mmap`` fails inside the JIT and the process dies with
a segmentation fault, not a Python error. A session that fits about 40 models
of distinct shapes gets there: our test suite did, 15 minutes in.

The guard: from the first lmm_jax entry point on (not on import), a
``jax.monitoring`` listener counts the process's backend compilations (O(1)
each) and, every :data:`CHECK_EVERY` of them, reads the mapping count from
``/proc/self/maps`` (about 1 ms per 1,000 mappings). It only counts: the
user's own compilations are neither changed nor delayed. Above
:data:`HEADROOM` of the cap it marks the caches for clearing, and the next
lmm_jax entry point (:func:`lmm_jax.runtime.scope.entry_point`: a new
:class:`lmm_jax.LMM`, a fit, a result's summary, tests, intervals,
predictions, bootstrap) empties JAX's in-memory compilation caches
(``jax.clear_caches``), which unmaps the executables nothing else holds, the
user's own included, and says so with a
:class:`~lmm_jax.errors.CompiledCodeWarning`: past the cap the process would
crash. The clearing waits for an entry point because JAX may be
mid-compilation when the listener runs. Later calls compile again, or load
from disk (:mod:`lmm_jax.runtime.compilation_cache`). Off Linux (no
``/proc``) the guard does nothing. :func:`clear_caches` does the same on
demand; ``LMM_JAX_CODE_GUARD=0`` (read when the guard starts) or
:func:`stop` leaves the guard off.
"""

from __future__ import annotations

import gc
import threading
import warnings
from pathlib import Path

import jax

from . import fork, kernel
from .switches import env_switch
from ..errors import CompiledCodeWarning

# Backend compilations between two looks at /proc/self/maps (a look costs ~20-50 ms near the cap,
# 100 compilations several seconds): a sleepstudy fit and summary make 1,400 mappings in all.
CHECK_EVERY = 100
# Clear when the mappings reach this share of vm.max_map_count; leaves ~15,000 mappings (10+ fits) spare.
HEADROOM = 0.75
DEFAULT_MAX_MAP_COUNT = 65530
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_MAPS = Path("/proc/self/maps")


_lock = threading.Lock()
_compiles_since_check = 0
_pending: tuple[int, int] | None = None     # (mappings, cap) seen over the headroom, not yet cleared
_listening = False
_started = False                            # start() has run: the guard listens, or was switched off
ENV_SWITCH = "LMM_JAX_CODE_GUARD"


def _count_compile(event: str, duration: float, **_: object) -> None:
    global _compiles_since_check
    if event != _BACKEND_COMPILE_EVENT:
        return
    _compiles_since_check += 1
    if _compiles_since_check >= CHECK_EVERY:
        scan()


def start(enabled: bool | None = None) -> bool:
    """Start counting backend compilations (idempotent; the first entry point calls it).

    Args:
        enabled: False leaves the guard off (and stops a running one); None: on unless
            ``LMM_JAX_CODE_GUARD`` is off.

    Returns:
        Whether the guard listens (never off Linux: there is no ``/proc/self/maps`` to read).
    """
    global _listening, _started
    on = env_switch(ENV_SWITCH) is not False if enabled is None else bool(enabled)
    with _lock:
        _started = True
        if on and not _listening and _MAPS.exists():
            jax.monitoring.register_event_duration_secs_listener(_count_compile)
            _listening = True
        elif not on and _listening:
            jax.monitoring.unregister_event_duration_listener(_count_compile)
            _listening = False
        return _listening


def stop() -> None:
    """Stop counting compilations: the guard stays off for the rest of the process."""
    start(enabled=False)


def max_map_count() -> int:
    """The kernel's per-process mapping cap (``/proc/sys/vm/max_map_count``)."""
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return DEFAULT_MAX_MAP_COUNT


def mapping_count() -> int:
    """Memory mappings of this process now (0 where ``/proc`` is missing)."""
    try:
        with open(_MAPS, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def scan(limit: int | None = None, headroom: float = HEADROOM) -> bool:
    """Count the mappings now; mark the caches for clearing at the next entry
    point when they exceed ``headroom`` of the cap (``limit``, default
    ``vm.max_map_count``). Returns whether they do."""
    global _compiles_since_check, _pending
    _compiles_since_check = 0
    cap = limit if limit is not None else max_map_count()
    used = mapping_count()
    if used >= headroom * cap:
        _pending = (used, cap)
        return True
    return False


def clear_caches() -> None:
    """Drop every executable JAX holds in memory (``jax.clear_caches``) and
    collect, which unmaps their code. Fitted results stay valid; the next call
    of any jitted function compiles again (or loads from the persistent cache).

    Example:
        >>> lmm_jax.clear_caches()  # between many models of different shapes
    """
    global _compiles_since_check, _pending
    kernel.clear_all()
    jax.clear_caches()
    gc.collect()
    _compiles_since_check = 0
    _pending = None


def check() -> bool:
    """At an entry point: clear JAX's caches if :func:`scan` found compiled
    code near the mapping cap (O(1) otherwise); the first call starts the
    guard. Returns True when it cleared. Every entry point calls this first,
    so it also refuses to run in a child forked after JAX started in its
    parent (:func:`lmm_jax.runtime.fork.check`)."""
    fork.check()
    if not _started:
        start()
    if _pending is None:
        return False
    used, cap = _pending
    clear_caches()
    warnings.warn(f"{used} memory mappings of the process's limit of {cap} (vm.max_map_count) were in use, most "
                  "of them compiled code; lmm_jax emptied JAX's in-memory compilation caches so that the process "
                  "does not crash, and what runs next compiles again. To keep the compiled code, raise the limit "
                  f"(sysctl -w vm.max_map_count={4 * cap}) or fit fewer distinct model shapes per process.",
                  CompiledCodeWarning, stacklevel=3)
    return True

"""Compiled kernels kept on disk: the exported program and its executable.

A fresh process that fits a model pays three things before its first
result: tracing the kernel's Python into a jaxpr, lowering it to StableHLO,
and compiling it with XLA. :class:`Kernel` keeps the outcome of all three in
lmm_jax's own cache folder, without JAX's global persistent compilation
cache (which would cache the user's own functions too). The first time a
kernel runs for a given structure and set of argument shapes it is exported
with :func:`jax.export.export` (``<name>-<digest>.bin``), compiled, and its
executable serialized (:mod:`jax.experimental.serialize_executable`,
``<name>-<digest>.xla``). A later process reads both and runs the
executable: no tracing and no compilation. The exported module supplies the
argument and result pytrees, which a serialized executable does not carry.
Where an executable cannot be serialized or loaded (a backend without
executable serialization), the exported module is loaded and compiled: a
single call primitive is traced instead of the Newton loop.

Entries are keyed by the kernel's name, its static arguments, the argument
shapes and dtypes, the JAX settings a call traces under (x64, default
device, matmul precision, dtype and rank promotion), the JAX version, the
backend and a digest of lmm_jax's own source, so a change of any of them
writes a new entry instead of running a stale one. An executable's key adds
what compiled code depends on: jaxlib's version, the device kind and runtime
version, ``XLA_FLAGS``, and on CPU the host's instruction-set flags. An
executable entry carries its key and a checksum of its bytes, and loads only
if its argument and result types are the exported module's; an unreadable,
corrupt, stale or unloadable entry is ignored and rewritten. Writes are
atomic (a temporary file renamed into place). A kernel that cannot be
exported runs as a plain ``jax.jit`` function. Inside another trace
(``vmap``, ``grad`` or a user's ``jit``), or with arguments laid out over
several devices, a kernel is its plain ``jax.jit`` function.

Two tiers on CPU, for kernels made with ``quick=True`` (a single fit's:
its start, Newton loop, estimates and summary; a GLMM profile's
constrained fit, which the profile calls a few dozen times). Such a kernel's first
executable is compiled with LLVM at -O0 and XLA:CPU's elemental IR emitter
for fusions (:data:`QUICK_OPTIONS`; ``<name>-<digest>.quick.xla``): XLA's
own HLO optimisations are the same, and the compile takes about half the
time, so a new model's first fit and summary come sooner (trace, export and
compile of a fresh process's first fit, 2-core VM: sleepstudy 4.5 s ->
2.1 s, Penicillin 5.0 s -> 3.0 s, InstEval 9.3 s -> 5.5 s); its code runs
up to 1.4x slower where arithmetic dominates (an InstEval refit: 0.94 s
-> 1.31 s; a sleepstudy fit: 8 ms either way). A compiler option that
``XLA_FLAGS`` sets is left as the user set it. Once a quick executable has been
called :data:`TIER_UP_CALLS` times and has run for :data:`TIER_UP_SECONDS`
in all (a kernel in a loop of refits whose run time matters), the kernel
compiles its optimised executable (``<name>-<digest>.xla``, the process's
own XLA options) on a background thread and swaps it in; a later process
loads the optimised one when it is stored. A model fitted once never waits
for that compilation, which a process would wait for at exit. ``LMM_JAX_QUICK_COMPILE=0`` compiles optimised code from the start,
and an optimisation level the user sets in ``XLA_FLAGS`` stands (one tier).
The two tiers' results may differ in the last bits (LLVM fuses multiplies
and adds at -O2), so the batched kernels (bootstraps, simulations, batched
fits), whose replicates are reproducible bit for bit whatever the chunking
and the number of processes, compile one tier only: optimised code, or
quick code for the small calls of kernels that an analysis runs once or a
few times (``fit_many``'s, a profile's;
:func:`lmm_jax.core.types.one_off_options`).

In a multi-process JAX program (``jax.distributed``) executables are not
stored or loaded (one is bound to its process's devices): the exported
module is compiled in each process.

A loaded executable is code: the folder must be as trusted as the Python
that reads it (:func:`jax.experimental.serialize_executable.deserialize_and_load`).

Where: ``<lmm_jax cache folder>/export``
(:func:`lmm_jax.runtime.compilation_cache.own_cache_dir`: ``$LMM_JAX_CACHE_DIR``
or ``~/.cache/lmm_jax``); nothing is kept when
``LMM_JAX_COMPILATION_CACHE=0`` or the folder is not writable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import platform
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import jax
import jaxlib
import numpy as np
from jax.experimental import serialize_executable

from . import compilation_cache, openblas
from .switches import env_switch

_SOURCE_DIGEST: str | None = None
_HOST: str | None = None
_KERNELS: "weakref.WeakSet[Kernel]" = weakref.WeakSet()
# First line of an executable entry: this tag, the entry's key digest and a sha256 of the rest.
_EXECUTABLE_TAG = b"lmm_jax-executable-1"
# JAX settings that change what a kernel traces and compiles to: each is thread-local when entered
# with its context manager ``jax.<name>(value)``, and read (thread-local, else global) from
# ``jax.config.jax_<name>``.
# The first tier's compiler options (module docstring): LLVM without optimisation passes, and XLA:CPU's
# elemental IR emitter for fusions instead of its MLIR fusion emitters.
QUICK_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
# Calls of a quick executable, and their run time (seconds, summed), after which its optimised one is compiled.
TIER_UP_CALLS = 3
TIER_UP_SECONDS = 0.5
QUICK_SWITCH = "LMM_JAX_QUICK_COMPILE"
# Longest a prepared build waits for its ``after`` event (a safety net: traced_sets always sets it).
PREPARE_WAIT = 60.0
# More than one core for this process: callers :meth:`Kernel.prepare` the kernels they will need next
# (a fit's summary, a batch's t tests) on a second thread while their first kernel compiles.
SPARE_CORES = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) > 1
OPTIMIZE_THREAD = "lmm_jax-optimize"
SETTINGS = ("enable_x64", "default_device", "default_matmul_precision", "numpy_dtype_promotion",
            "numpy_rank_promotion")


def _dtype_name(dtype) -> str:
    """A dtype's name in a kernel's key: numpy's ``str`` (byte order and size), or for JAX's extended
    dtypes, which numpy does not know (a typed PRNG key's ``key<fry>``), its name."""
    try:
        return np.dtype(dtype).str
    except TypeError:
        return str(dtype)


def clear_all() -> None:
    """:meth:`Kernel.clear` for every kernel (part of :func:`lmm_jax.clear_caches`)."""
    for k in list(_KERNELS):
        k.clear()


def source_files() -> list[Path]:
    """Every Python file of the lmm_jax package (all its layers: a kernel's
    code is in core, its callers' in the layers above), sorted."""
    return sorted(Path(__file__).parent.parent.rglob("*.py"))


def source_digest() -> str:
    """A digest of lmm_jax's Python source (:func:`source_files`): part of every entry's key."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        h = hashlib.sha256()
        root = Path(__file__).parent.parent
        for path in source_files():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


def host_digest() -> str:
    """The host's architecture and, on Linux, its CPU's instruction-set flags
    (``/proc/cpuinfo``), elsewhere its processor's name: XLA:CPU compiles for
    the CPU it runs on, so an executable from another machine sharing the
    folder must not load. (``platform.processor()`` runs ``uname -p`` in a
    subprocess on Linux, where the flags say more.)"""
    global _HOST
    if _HOST is None:
        flags = ""
        with contextlib.suppress(OSError):
            flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith(("flags", "Features"))), "")
        cpu = flags or platform.processor()
        _HOST = hashlib.sha256(f"{platform.machine()} {cpu}".encode()).hexdigest()[:16]
    return _HOST


def export_dir() -> Path | None:
    """Where kernels are kept: ``export`` in lmm_jax's own cache folder
    (:func:`lmm_jax.runtime.compilation_cache.own_cache_dir`), whether or not
    JAX's global persistent cache is on; None when lmm_jax's cache is off."""
    root = compilation_cache.own_cache_dir()
    return None if root is None else root / "export"


def settings() -> tuple[tuple[str, Any], ...]:
    """The calling thread's values of :data:`SETTINGS`: part of a call's key,
    and entered by :meth:`Kernel.prepare`'s thread (a new thread starts from
    JAX's global settings, not from its creator's context managers)."""
    return tuple((name, getattr(jax.config, f"jax_{name}")) for name in SETTINGS)


@contextlib.contextmanager
def entered(values: tuple[tuple[str, Any], ...]):
    """Enter :func:`settings`' ``values`` in this thread, as ``jax.<name>(value)``."""
    with contextlib.ExitStack() as stack:
        for name, value in values:
            stack.enter_context(getattr(jax, name)(value))
        yield


def _platform(values: tuple[tuple[str, Any], ...]) -> str:
    """The platform a call under these settings compiles for (the default device's, else the default backend)."""
    device = dict(values).get("default_device")
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def tiered(backend: str) -> bool:
    """Whether kernels compiled for ``backend`` start with a quick executable
    (module docstring): on CPU, unless ``LMM_JAX_QUICK_COMPILE`` is off or
    ``XLA_FLAGS`` sets an optimisation level."""
    return (backend == "cpu" and env_switch(QUICK_SWITCH) is not False
            and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""))


def _quick_options() -> dict:
    """:data:`QUICK_OPTIONS` less those ``XLA_FLAGS`` sets (the user's choice stands)."""
    return _unset(QUICK_OPTIONS)


def _unset(options: dict) -> dict:
    """``options`` less those ``XLA_FLAGS`` sets."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in options.items() if k not in flags}


_tracing = threading.local()


@contextlib.contextmanager
def traced_sets(event: threading.Event):
    """Set ``event`` once this thread's next kernel build is left to XLA's
    compiler (traced, exported and lowered) or loaded from disk, or when the block ends:
    what :meth:`Kernel.prepare`'s ``after`` waits for, so that kernels
    prepared for later trace after the one the caller needs first."""
    _tracing.event = event
    try:
        yield
    finally:
        _tracing.event = None
        event.set()


def _traced() -> None:
    event = getattr(_tracing, "event", None)
    if event is not None:
        _tracing.event = None
        event.set()


def wait_for_optimised(timeout: float | None = None) -> None:
    """Wait until the optimised executables being compiled on background
    threads (:class:`_Executable`) are in place: for timing warm calls."""
    for t in threading.enumerate():
        if t.name == OPTIMIZE_THREAD:
            t.join(timeout)


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_sharded(x: Any) -> bool:
    """An array laid out over several devices: its call runs as plain ``jax.jit`` (an exported
    module is bound to its number of devices, which the entry's key does not record)."""
    return isinstance(x, jax.Array) and len(x.sharding.device_set) > 1


class Kernel:
    """``jax.jit(fun, static_argnames=...)`` whose exported program and
    compiled executable are cached on disk (module docstring). Called like
    the function it wraps; :meth:`prepare` compiles it ahead of a call, on a
    background thread."""

    def __init__(self, fun: Callable, static_argnames: tuple[str, ...], quick: bool = False,
                 cpu_options: Callable[[dict], dict] | None = None):
        self.fun = fun
        self.static_argnames = tuple(static_argnames)
        self.quick = quick
        self.cpu_options = cpu_options
        self.jitted = jax.jit(fun, static_argnames=self.static_argnames)
        self.signature = inspect.signature(fun)
        self._calls: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, fun)
        _KERNELS.add(self)

    def clear(self) -> None:
        """Drop the compiled calls this kernel holds (their code is unmapped
        once nothing else refers to them); the next call builds again."""
        with self._lock:
            self._calls.clear()

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        """Compiled calls held (as ``jax.jit``'s ``_cache_size``): one per
        set of static arguments, argument shapes and settings called."""
        with self._lock:
            return len(self._calls)

    def __call__(self, *args, **kwargs):
        key, statics, dynamic = self._key(args, kwargs)
        if key is None:
            return self.jitted(*args, **kwargs)
        compiled = self._compiled(key, statics, dynamic)
        openblas.refresh()                         # JAX may have loaded its LAPACK for this kernel
        return compiled(*dynamic)

    def prepare(self, *args, after: threading.Event | None = None, **kwargs) -> None:
        """Compile this kernel for these arguments (arrays, or
        ``jax.ShapeDtypeStruct`` for the ones whose values are not known
        yet) on a background thread: XLA compiles without holding Python's
        lock, so a fit's Newton loop and its summary's kernels compile side
        by side. The thread runs under the caller's :func:`settings` (x64,
        default device, ...). A later call with arguments of the same shapes
        under the same settings waits for it and runs it; an error surfaces
        there. The thread is not a daemon: a process that exits while it
        compiles waits for it (ending a thread inside XLA's compiler at exit
        aborts the process).

        Args:
            after: an event the thread waits for before it traces (set by
                :func:`traced_sets`): tracing holds Python's lock, so a
                kernel the caller traces meanwhile would trace no sooner
                for the thread's, and would start compiling later.
        """
        key, statics, dynamic = self._key(args, kwargs)
        if key is None:
            return
        with self._lock:
            if key in self._calls:
                return
            future = self._calls[key] = Future()       # a call from now on waits for this build
        thread = threading.Thread(target=self._prepared, args=(key, statics, dynamic, future, after),
                                  name=f"lmm_jax-prepare-{self.fun.__name__}")
        try:
            thread.start()
        except RuntimeError as e:                     # no thread to be had: the next call builds
            with self._lock:
                self._calls.pop(key, None)
            future.set_exception(e)

    def _prepared(self, key: tuple, statics: tuple, dynamic: list, future: Future,
                  after: threading.Event | None) -> None:
        if after is not None:
            after.wait(PREPARE_WAIT)
        with entered(key[-1]):
            self._fulfil(key, statics, dynamic, future)

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """(key, static arguments, dynamic arguments); key None inside a trace.
        The key ends with the caller's :func:`settings`."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        statics = tuple((k, bound.arguments[k]) for k in self.static_argnames)
        dynamic = [v for k, v in bound.arguments.items() if k not in self.static_argnames]
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if any(_is_tracer(x) or _is_sharded(x) for x in leaves):
            return None, statics, dynamic
        avals = tuple((tuple(x.shape) if hasattr(x, "shape") else np.shape(x),
                       _dtype_name(x.dtype if hasattr(x, "dtype") else np.result_type(x))) for x in leaves)
        return (statics, tree, avals, settings()), statics, dynamic

    def _compiled(self, key: tuple, statics: tuple, dynamic: list) -> Callable:
        """The compiled call for ``key``, built once (by whichever thread asks first)."""
        with self._lock:
            future = self._calls.get(key)
            owner = future is None
            if owner:
                future = self._calls[key] = Future()
        if owner:
            self._fulfil(key, statics, dynamic, future)
        return future.result()

    def _fulfil(self, key: tuple, statics: tuple, dynamic: list, future: Future) -> None:
        """Build ``key``'s call into ``future``; a failed build is forgotten
        (the next call retries) and its error handed to those waiting."""
        try:
            future.set_result(self._build(statics, dynamic, key))
        except BaseException as e:                # noqa: BLE001 - handed to the caller; the next call retries
            with self._lock:
                self._calls.pop(key, None)
            future.set_exception(e)

    def _of_dynamic(self, statics: tuple) -> Callable:
        """``fun`` with ``statics`` fixed, a function of the dynamic arguments
        in the signature's order (a static may come before a dynamic one)."""
        names = [k for k in self.signature.parameters if k not in self.static_argnames]
        fixed = dict(statics)

        def of_dynamic(*dynamic):
            return self.fun(**dict(zip(names, dynamic)), **fixed)

        of_dynamic.__name__ = of_dynamic.__qualname__ = self.fun.__name__     # the name in JAX's logs and dumps
        return of_dynamic

    def _build(self, statics: tuple, dynamic: list, key: tuple) -> Callable:
        """The compiled function of the dynamic arguments: the stored
        optimised executable; else, on CPU, the quick one (stored, or
        compiled and stored), which compiles the optimised one once it has
        run long enough (:class:`_Executable`); else the exported kernel
        (loaded, or exported now) compiled and its executable stored; the
        plain jitted one when the cache is off or export fails."""
        fixed = jax.jit(self._of_dynamic(statics))
        backend = _platform(key[-1])
        quick = self.quick and tiered(backend)
        quick_options = _quick_options()
        # the optimised executable's options (None: XLA's defaults)
        optimised = (_unset(self.cpu_options(dict(statics))) or None) if self.cpu_options and backend == "cpu" else None
        folder = export_dir()
        if folder is None:
            def compile_fixed(args: list, options: dict | None = optimised) -> Callable:
                lowered = fixed.lower(*args)
                _traced()
                return lowered.compile(compiler_options=options)
            if not quick:
                return compile_fixed(dynamic)
            return _Executable(compile_fixed(dynamic, quick_options), key[-1], optimize=compile_fixed)
        digest = hashlib.sha256(repr((self.fun.__module__, self.fun.__qualname__, key, jax.__version__,
                                      backend, source_digest())).encode()).hexdigest()[:32]
        stem = folder / f"{self.fun.__name__}-{digest}"
        exported = _load(stem.with_suffix(".bin"))
        if exported is None:
            try:
                exported = jax.export.export(fixed)(*dynamic)
            except Exception:                      # a kernel JAX cannot export still runs, as plain jit
                lowered = fixed.lower(*dynamic)
                _traced()
                return lowered.compile(compiler_options=optimised)
            with contextlib.suppress(Exception):   # not serializable here: the next process exports again
                _store(stem.with_suffix(".bin"), exported.serialize())
        else:
            _traced()                              # read from disk: nothing to trace, executables load side by side
        device = jax.devices(backend)[0]

        def machine(options: dict | None) -> str:
            return hashlib.sha256(repr((digest, jaxlib.__version__, device.device_kind,
                                        device.client.platform_version, os.environ.get("XLA_FLAGS", ""),
                                        host_digest(), options)).encode()).hexdigest()[:32]

        def compile_and_store(args: list, tier: str = "optimised") -> Callable:
            options = quick_options if tier == "quick" else optimised
            compiled, fresh = _compile(exported, args, options)
            if fresh:
                _store_executable(paths[tier], machine(options), compiled)
            return compiled

        paths = {"optimised": stem.with_suffix(".xla"), "quick": stem.with_suffix(".quick.xla")}
        if jax.process_count() > 1:              # stored executables are bound to one process's devices
            return _compile(exported, dynamic, optimised)[0]
        loaded = _load_executable(paths["optimised"], machine(optimised), exported, backend)
        if loaded is not None:
            return _Executable(loaded, key[-1], path=paths["optimised"], rebuild=compile_and_store)
        if not quick:
            return compile_and_store(dynamic)
        loaded = _load_executable(paths["quick"], machine(quick_options), exported, backend)
        if loaded is None:
            return _Executable(compile_and_store(dynamic, "quick"), key[-1], optimize=compile_and_store)
        return _Executable(loaded, key[-1], path=paths["quick"],
                           rebuild=lambda args: compile_and_store(args, "quick"), optimize=compile_and_store)


class _Executable:
    """A compiled kernel with what may still happen to it.

    ``path`` and ``rebuild``: an executable loaded from disk whose first
    call is checked. Should it fail at run time (an entry that passed every
    check at load but cannot run here), the entry is removed, the kernel
    compiled and stored again, and the call repeated. Kernels are pure
    functions of their arguments, so the repeat is the call that should
    have happened.

    ``optimize``: a quick executable (module docstring). Its calls are timed
    (each waits for its result); once there have been :data:`TIER_UP_CALLS`
    and they have taken :data:`TIER_UP_SECONDS` in all, ``optimize(args)`` compiles the optimised executable on a
    background thread, under the settings of the call that built the kernel,
    and it replaces the quick one when it is ready. The thread is not a
    daemon: a process that exits while it compiles waits for it."""

    def __init__(self, compiled, settings: tuple, *, path: Path | None = None,
                 rebuild: Callable[[list], Callable] | None = None, optimize: Callable | None = None):
        self.compiled = compiled
        self._settings = settings
        self._path = path
        self._rebuild = rebuild
        self._optimize = optimize
        self._spent = 0.0
        self._calls = 0

    def __call__(self, *args):
        if self._rebuild is None and self._optimize is None:
            return self.compiled(*args)
        start = time.perf_counter()
        if self._rebuild is None:
            out = jax.block_until_ready(self.compiled(*args))
        else:
            try:
                out = jax.block_until_ready(self.compiled(*args))
            except jax.errors.JaxRuntimeError:
                with contextlib.suppress(OSError):
                    self._path.unlink()
                self.compiled = self._rebuild(list(args))
                out = jax.block_until_ready(self.compiled(*args))
            self._rebuild = None                   # checked: keep neither the exported module nor a closure
        self._spent += time.perf_counter() - start
        self._calls += 1
        optimize = self._optimize
        if optimize is not None and self._calls >= TIER_UP_CALLS and self._spent >= TIER_UP_SECONDS:
            self._optimize = None
            threading.Thread(target=self._tier_up, args=(optimize, list(args)),
                             name=OPTIMIZE_THREAD).start()
        return out

    def _tier_up(self, optimize: Callable, args: list) -> None:
        try:
            with entered(self._settings):
                self.compiled = optimize(args)
        except BaseException:                      # noqa: BLE001 - the quick executable stays in use
            pass


def _load(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception:                              # corrupt or from another serialization version: rebuild
        return None


def _types(avals) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(a.shape), _dtype_name(a.dtype)) for a in avals]


_READY: set[str] = set()
_READY_LOCK = threading.Lock()
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_compiling = threading.local()
_listening = False


def _count_cache_hit(event: str, **_: Any) -> None:
    if event == _CACHE_HIT and getattr(_compiling, "hits", None) is not None:
        _compiling.hits += 1


def _compile(exported, dynamic: list, options: dict | None = None):
    """(``exported``'s call compiled for these arguments, whether XLA
    compiled it here). Where JAX's global persistent cache is on, the
    executable may come from it instead, deserialized; serializing such an
    executable again writes an entry without its machine code, which loads
    and then fails at run time ("Function ... not found"), so it is not
    stored. JAX records a hit on the compiling thread: a thread-local count
    tells this compile's hits from another thread's."""
    global _listening
    with _READY_LOCK:
        if not _listening:
            jax.monitoring.register_event_listener(_count_cache_hit)
            _listening = True
    _compiling.hits = 0
    try:
        lowered = jax.jit(exported.call).lower(*dynamic)
        _traced()                                 # what is left is XLA's, which runs without Python's lock
        compiled = lowered.compile(compiler_options=options)
        return compiled, _compiling.hits == 0
    finally:
        _compiling.hits = None


def _runtime_ready(backend: str) -> None:
    """Initialize what a deserialized executable calls into but does not
    initialize itself. On CPU that is jaxlib's LAPACK kernels (Cholesky,
    solves, eigendecompositions), whose function pointers are set when a
    program using them is lowered: a fresh process that only loads an
    executable would call null pointers and die (jax-ml/jax#28908). Lowering
    a call of an exported module initializes them (as ``Exported.call``
    does); a trivial one costs about 30 ms, once per process."""
    with _READY_LOCK:
        if backend in _READY:
            return
        if backend == "cpu":
            scalar = jax.ShapeDtypeStruct((), np.float32)
            jax.jit(jax.export.export(jax.jit(lambda x: x), platforms=("cpu",))(scalar).call).lower(scalar)
        _READY.add(backend)


def _calls_lapack(exported) -> bool:
    """Whether ``exported``'s module calls jaxlib's LAPACK kernels (a custom
    call ``lapack_...``), which a loaded executable needs initialized
    (:func:`_runtime_ready`); a module that holds none, such as the kernels
    of a model with small blocks, loads without importing scipy.linalg."""
    return b"lapack_" in exported.mlir_module_serialized


class _RuntimeReady:
    """:func:`_runtime_ready` on a thread of its own while the caller
    deserializes an executable (which runs without Python's lock: a cached
    process's first load, 0.1 s, and the runtime's initialization, 0.05-0.08
    s of imports and lowering, overlap); nothing to do once the backend is
    ready, or for a ``backend`` of None (an executable that needs none).
    :meth:`wait` before the executable runs; ``error``: what initialization
    raised."""

    def __init__(self, backend: str | None):
        self.error: BaseException | None = None
        self._thread = None
        if backend is None or backend in _READY:
            return
        self._thread = threading.Thread(target=self._run, args=(backend,), name="lmm_jax-runtime-ready")
        try:
            self._thread.start()
        except RuntimeError:                       # no thread to be had: initialize here
            self._thread = None
            self._run(backend)

    def _run(self, backend: str) -> None:
        try:
            _runtime_ready(backend)
        except Exception as e:                     # noqa: BLE001 - the load is then refused, as before
            self.error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _load_executable(path: Path, key: str, exported, backend: str):
    """The executable stored at ``path`` for ``key``, loaded onto ``backend``
    with ``exported``'s pytrees; None when it is missing, corrupt, stored for
    another key, of other argument or result types than ``exported``'s, or
    not loadable here."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, _, payload = data.partition(b"\n")
    if header != b" ".join((_EXECUTABLE_TAG, key.encode(), hashlib.sha256(payload).hexdigest().encode())):
        return None                                # truncated, overwritten or another entry's bytes
    ready = _RuntimeReady(backend if _calls_lapack(exported) else None)
    try:
        compiled = serialize_executable.deserialize_and_load(payload, exported.in_tree, exported.out_tree,
                                                             backend=backend)
        ins = _types(jax.tree_util.tree_leaves(compiled.args_info))
        outs = _types(jax.tree_util.tree_leaves(compiled.out_info))
    except Exception:                              # another jaxlib or runtime, or no executable serialization here
        return None
    finally:
        ready.wait()
    if ready.error is not None:
        return None
    if ins != _types(exported.in_avals) or outs != _types(exported.out_avals):
        return None
    return compiled


def _store_executable(path: Path, key: str, compiled) -> None:
    """Serialize ``compiled`` and write it for ``key``; a backend that cannot
    serialize executables writes nothing (the next process compiles again)."""
    try:
        payload, _, _ = serialize_executable.serialize(compiled)
    except Exception:
        return
    header = b" ".join((_EXECUTABLE_TAG, key.encode(), hashlib.sha256(payload).hexdigest().encode()))
    _store(path, header + b"\n" + payload)


def _store(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file renamed into place); a failure to
    write only means the next process builds again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:                                # no writable folder
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def serializable(cls: type) -> type:
    """Class decorator for a NamedTuple that enters or leaves a kernel: its
    pytree nodes can then be written into an exported module
    (``jax.export.register_namedtuple_serialization``)."""
    try:
        jax.export.register_namedtuple_serialization(cls, serialized_name=f"lmm_jax.{cls.__qualname__}")
    except ValueError:                             # registered already (a module imported twice)
        pass
    return cls


def kernel(*, static_argnames: tuple[str, ...], quick: bool = False,
           cpu_options: Callable[[dict], dict] | None = None) -> Callable[[Callable], Kernel]:
    """Decorator: ``@kernel(static_argnames=("s", "reml"))`` in place of
    ``@partial(jax.jit, static_argnames=...)`` (see :class:`Kernel`);
    ``quick=True``: two tiers on CPU (module docstring); ``cpu_options``:
    the XLA compiler options of the optimised executable on CPU, a function
    of the static arguments (by name), less any ``XLA_FLAGS`` sets."""
    return lambda fun: Kernel(fun, static_argnames, quick, cpu_options)

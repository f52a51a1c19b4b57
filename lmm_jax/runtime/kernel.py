"""Compiled kernels whose traced and lowered form is kept on disk.

A fresh process that fits a model pays three things before its first
result: tracing the kernel's Python into a jaxpr, lowering it to StableHLO,
and compiling it with XLA. JAX's persistent compilation cache
(:mod:`lmm_jax.runtime.compilation_cache`) saves the last; :class:`Kernel` saves the
first two. The first time a kernel runs for a given structure and set of
argument shapes, it is exported with :func:`jax.export.export` and the
serialized module is written next to the compilation cache; a later process
deserializes it and calls it (``Exported.call``), which traces a single
call primitive instead of the Newton loop, and whose compilation then hits
the persistent cache.

Entries are keyed by the kernel's name, its static arguments, the argument
shapes and dtypes, the JAX version, the backend and a digest of lmm_jax's
own source, so a change of any of them writes a new entry instead of running
a stale one. An unreadable or corrupt entry is ignored and rewritten; a
kernel that cannot be exported runs as a plain ``jax.jit`` function. Inside
another trace (``vmap``, ``grad`` or a user's ``jit``) a kernel is its plain
``jax.jit`` function.

Where: ``<cache dir>/export`` (the compilation cache's directory, see
:func:`lmm_jax.runtime.compilation_cache.default_cache_dir`); nothing is kept when
the cache is off (``LMM_JAX_COMPILATION_CACHE=0``) or not writable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import tempfile
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from . import compilation_cache

_SOURCE_DIGEST: str | None = None
_KERNELS: "weakref.WeakSet[Kernel]" = weakref.WeakSet()


def clear_all() -> None:
    """:meth:`Kernel.clear` for every kernel (part of :func:`lmm_jax.clear_caches`)."""
    for k in list(_KERNELS):
        k.clear()


def source_digest() -> str:
    """A digest of lmm_jax's Python source: part of every entry's key."""
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        h = hashlib.sha256()
        root = Path(__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_DIGEST = h.hexdigest()[:16]
    return _SOURCE_DIGEST


def export_dir() -> Path | None:
    """Where kernels are kept: ``export`` in lmm_jax's own cache folder
    (:func:`lmm_jax.runtime.compilation_cache.own_cache_dir`), whether or not
    JAX's global persistent cache is on; None when lmm_jax's cache is off."""
    root = compilation_cache.own_cache_dir()
    return None if root is None else root / "export"


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


class Kernel:
    """``jax.jit(fun, static_argnames=...)`` whose lowered form is cached on
    disk (module docstring). Called like the function it wraps;
    :meth:`prepare` compiles it ahead of a call, on a background thread."""

    def __init__(self, fun: Callable, static_argnames: tuple[str, ...]):
        self.fun = fun
        self.static_argnames = tuple(static_argnames)
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

    def __call__(self, *args, **kwargs):
        key, statics, dynamic = self._key(args, kwargs)
        if key is None:
            return self.jitted(*args, **kwargs)
        return self._compiled(key, statics, dynamic)(*dynamic)

    def prepare(self, *args, **kwargs) -> None:
        """Compile this kernel for these arguments (arrays, or
        ``jax.ShapeDtypeStruct`` for the ones whose values are not known
        yet) on a background thread: XLA compiles without holding Python's
        lock, so a fit's Newton loop and its summary's kernels compile side
        by side. A later call with arguments of the same shapes waits for it
        and runs it; an error surfaces there. The thread is not a daemon: a
        process that exits while it compiles waits for it (ending a thread
        inside XLA's compiler at exit aborts the process)."""
        key, statics, dynamic = self._key(args, kwargs)
        if key is None or key in self._calls:
            return
        threading.Thread(target=self._prepared, args=(key, statics, dynamic),
                         name=f"lmm_jax-prepare-{self.fun.__name__}").start()

    def _prepared(self, key: tuple, statics: tuple, dynamic: list) -> None:
        try:
            self._compiled(key, statics, dynamic)
        except BaseException:                     # noqa: BLE001 - raised again by the call that needs it
            pass

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """(key, static arguments, dynamic arguments); key None inside a trace."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        statics = tuple((k, bound.arguments[k]) for k in self.static_argnames)
        dynamic = [v for k, v in bound.arguments.items() if k not in self.static_argnames]
        leaves, tree = jax.tree_util.tree_flatten(dynamic)
        if any(_is_tracer(x) for x in leaves):
            return None, statics, dynamic
        avals = tuple((tuple(x.shape) if hasattr(x, "shape") else np.shape(x),
                       (x.dtype if hasattr(x, "dtype") else np.result_type(x)).str) for x in leaves)
        return (statics, tree, avals), statics, dynamic

    def _compiled(self, key: tuple, statics: tuple, dynamic: list) -> Callable:
        """The compiled call for ``key``, built once (by whichever thread asks first)."""
        with self._lock:
            future = self._calls.get(key)
            owner = future is None
            if owner:
                future = self._calls[key] = Future()
        if owner:
            try:
                future.set_result(self._build(statics, dynamic, key))
            except BaseException as e:            # noqa: BLE001 - handed to the caller; the next call retries
                with self._lock:
                    self._calls.pop(key, None)
                future.set_exception(e)
        return future.result()

    def _build(self, statics: tuple, dynamic: list, key: tuple) -> Callable:
        """The compiled function of the dynamic arguments: the exported kernel
        (loaded, or exported now), or the plain jitted one when export is off
        or fails."""
        fixed = jax.jit(functools.partial(self.fun, **dict(statics)))
        target = fixed
        folder = export_dir()
        if folder is not None:
            digest = hashlib.sha256(repr((self.fun.__module__, self.fun.__qualname__, key, jax.__version__,
                                          jax.default_backend(), source_digest())).encode()).hexdigest()[:32]
            path = folder / f"{self.fun.__name__}-{digest}.bin"
            exported = _load(path)
            if exported is None:
                try:
                    exported = jax.export.export(fixed)(*dynamic)
                except Exception:                  # a kernel JAX cannot export still runs, as plain jit
                    exported = None
                else:
                    _store(path, exported)
            if exported is not None:
                target = jax.jit(exported.call)
        return target.lower(*dynamic).compile()


def _load(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception:                              # corrupt or from another serialization version: rebuild
        return None


def _store(path: Path, exported) -> None:
    """Write atomically (a temporary file renamed into place); a failure to
    write only means the next process exports again."""
    try:
        data = exported.serialize()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except Exception:                              # not serializable here, or no writable folder
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


def kernel(*, static_argnames: tuple[str, ...]) -> Callable[[Callable], Kernel]:
    """Decorator: ``@kernel(static_argnames=("s", "reml"))`` in place of
    ``@partial(jax.jit, static_argnames=...)`` (see :class:`Kernel`)."""
    return lambda fun: Kernel(fun, static_argnames)

"""The scope every public entry point of lmm_jax runs in: float64, the compiled-code guard, one LAPACK thread.

lmm_jax computes in float64 (REML criteria agree with lme4 to 1e-10; float32
loses the optimum's digits), but does not turn on JAX's 64-bit mode for the
process: the user's own JAX code keeps its defaults (float32 unless the user
enabled x64). Every public function, method and property of lmm_jax runs
inside :func:`float64`, JAX's thread-local ``jax.enable_x64(True)``, entered
by the :func:`entry_point` decorator; arrays created there are float64, and
jitted functions traced there compile for float64 (JAX keys its caches on the
setting). Results are numpy arrays and pandas tables; the JAX arrays that
reach the user (:func:`lmm_jax.simulate`'s responses, a bootstrap's
``params``) are float64 and are taken as they are by lmm_jax's functions.
Outside x64 JAX computes on them in float32, so convert them with
``np.asarray`` first for float64 arithmetic of one's own.

The decorator also runs :func:`lmm_jax.runtime.code_memory.check`, the
compiled-code guard (O(1) unless compiled code nears the process's
memory-mapping cap), at every entry point, and runs the call with scipy's
OpenBLAS single-threaded (:mod:`lmm_jax.runtime.openblas`: the LAPACK that
JAX's CPU kernels call; its thread count comes back when the last lmm_jax
call returns). Inside a JAX trace (a user's ``jit``, ``vmap`` or ``grad``
around, say, :meth:`lmm_jax.LMM.cross_products`) an entry point does none of
these: the function runs under the user's settings, as pure JAX code does,
and nothing is cleared mid-trace.

Where x64 cannot be enabled (a JAX without a scoped switch, or one that
refuses it), lmm_jax raises :class:`~lmm_jax.errors.PrecisionError` naming
the fix rather than fit in float32.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from functools import cached_property
from typing import Any, Callable, Iterator, TypeVar

import jax
import numpy as np

from . import code_memory, openblas
from ..errors import PrecisionError

T = TypeVar("T")
FIX = ("enable JAX's 64-bit types for the process before using lmm_jax: "
       "jax.config.update('jax_enable_x64', True) or JAX_ENABLE_X64=1 in the environment")
# methods besides the public ones that compute: the constructor, and calls of a callable object
DUNDERS = ("__init__", "__call__")


def _x64_switch() -> Callable[[bool], contextlib.AbstractContextManager] | None:
    """This JAX's thread-local x64 switch: ``jax.enable_x64`` (newer JAX) or
    ``jax.experimental.enable_x64``; None where there is neither."""
    switch = getattr(jax, "enable_x64", None)
    if callable(switch):
        return switch
    try:
        from jax.experimental import enable_x64
    except ImportError:
        return None
    return enable_x64


_SWITCH = _x64_switch()


def x64_enabled() -> bool:
    """Whether JAX creates float64 arrays here and now (this thread, this context)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Run the block with JAX's 64-bit types enabled in this thread.

    Raises:
        PrecisionError: when this JAX cannot enable them here.
    """
    if x64_enabled():                           # the user's setting, or an enclosing entry point
        yield
        return
    if _SWITCH is None:
        raise PrecisionError(f"lmm_jax computes in float64, and this JAX (version {jax.__version__}) has no scoped "
                             f"switch for 64-bit types; {FIX}")
    with _SWITCH(True):
        if not x64_enabled():
            raise PrecisionError(f"lmm_jax computes in float64, and JAX refused to enable 64-bit types for "
                                 f"its call (jax.enable_x64(True)); {FIX}")
        yield


def _tracing() -> Callable[[], bool]:
    """A probe of whether JAX is tracing in this thread (private in this JAX: ``trace_state_clean``);
    where the probe is missing, never tracing."""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:
        return lambda: False
    return lambda: not trace_state_clean()


_TRACING = _tracing()


def _wrap_function(fn: Callable) -> Callable:
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            it = fn(*args, **kwargs)
            while True:
                with float64(), openblas.single_threaded():   # each step of the generator computes in the scope
                    code_memory.check()
                    try:
                        item = next(it)
                    except StopIteration as stop:
                        return stop.value
                yield item

        generator.__lmm_jax_entry_point__ = True
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _TRACING():                          # inside the user's jit, vmap or grad: the user's settings
            return fn(*args, **kwargs)
        openblas.enter()
        try:
            if x64_enabled():
                code_memory.check()
                return fn(*args, **kwargs)
            with float64():
                code_memory.check()
                return fn(*args, **kwargs)
        finally:
            openblas.leave()

    wrapper.__lmm_jax_entry_point__ = True
    return wrapper


def _wrap_class(cls: type) -> type:
    for name, attr in list(vars(cls).items()):
        if name.startswith("_") and name not in DUNDERS:
            continue
        if isinstance(attr, property):
            new: Any = property(_wrap_function(attr.fget) if attr.fget else None, attr.fset, attr.fdel, attr.__doc__)
        elif isinstance(attr, cached_property):
            new = cached_property(_wrap_function(attr.func))
            new.__set_name__(cls, name)
        elif isinstance(attr, classmethod):
            new = classmethod(_wrap_function(attr.__func__))
        elif isinstance(attr, staticmethod):
            new = staticmethod(_wrap_function(attr.__func__))
        elif inspect.isfunction(attr):
            new = _wrap_function(attr)
        else:
            continue
        setattr(cls, name, new)
    return cls


def entry_point(obj: T) -> T:
    """Decorator of lmm_jax's public functions and classes: the call runs in :func:`float64`
    after :func:`~lmm_jax.runtime.code_memory.check`, with scipy's OpenBLAS single-threaded
    (:func:`lmm_jax.runtime.openblas.enter`).

    On a class it wraps every public method, property and cached property (and ``__init__``,
    ``__call__``); on a generator function, every step of the generator.
    """
    if isinstance(obj, type):
        return _wrap_class(obj)  # type: ignore[return-value]
    return _wrap_function(obj)  # type: ignore[arg-type,return-value]

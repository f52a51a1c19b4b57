"""Compile XLA:CPU fusions with its long-standing emitters: about 40% less compile time.

Why. A model's first fit in a process is mostly compilation of its Newton
loop (value, gradient and exact Hessian of the deviance, with the line search
and the boundary tests). XLA:CPU generates each fused kernel with one of two
code generators: its newer MLIR-based fusion emitters (the default in
jaxlib 0.10) or its older elemental LLVM IR emitter. For these programs, many
small fusions over vectors of a few thousand entries, the older emitter
compiles much faster and the kernels run as fast. Measured on InstEval's Newton
loop (stop 13, same process setup, interleaved runs, 2-core VM): XLA compile
7.6-9.2 s -> 4.9-5.3 s; the compiled fit 0.79-0.86 s with either. Crossed
200k: compile 8.8 -> 5.5 s, fit 2.45 s either way; crossed 20k: 7.4-9.2 ->
4.7-5.6 s, fit 0.027-0.042 s and 0.034-0.040 s (within this VM's noise).
XLA's boolean ``xla_cpu_use_fusion_emitters=false``, which a single ``jit``
can take as a compiler option, is not the same switch: it compiled in 5.1-6.1
s but made the crossed fits 8-40% slower.

What :func:`enable` does, when asked (``lmm_jax.runtime.configure(cpu_compile=True)``;
nothing on import): appends
``--xla_backend_extra_options=xla_cpu_disable_new_fusion_emitters=true`` to
``XLA_FLAGS``, which XLA reads when JAX's backends start. It is a map-valued
option, which JAX's per-function ``compiler_options`` cannot carry, so it
applies to the whole process: every CPU compilation of the process, the
user's own functions included, uses the older emitters. GPU compilation does
not read it.

Only when it can take effect: before JAX's backends start, and unless
``XLA_FLAGS`` already sets ``xla_backend_extra_options`` (the user's choice
stands). :func:`state` says what was done. ``LMM_JAX_CPU_COMPILE=default``
(or ``0``/``off``) keeps :func:`lmm_jax.runtime.configure` from calling it.
"""

from __future__ import annotations

import os

from .switches import TOO_LATE, backends_started

ENV_SWITCH = "LMM_JAX_CPU_COMPILE"
FLAG = "--xla_backend_extra_options=xla_cpu_disable_new_fusion_emitters=true"

_state: dict[str, object] = {"enabled": False, "reason": "not configured (lmm_jax.runtime.configure turns it on)"}


def enable() -> dict[str, object]:
    """Append :data:`FLAG` to ``XLA_FLAGS`` if it can take effect.

    Returns:
        :func:`state`: ``enabled`` and, when not enabled, ``reason``.
    """
    global _state
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        _state = {"enabled": True, "reason": ""}
    elif "xla_backend_extra_options" in flags:
        _state = {"enabled": False, "reason": "XLA_FLAGS sets xla_backend_extra_options: left as the user chose"}
    elif backends_started():
        _state = {"enabled": False, "reason": TOO_LATE}
    else:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
        _state = {"enabled": True, "reason": ""}
    return state()


def state() -> dict[str, object]:
    """``{"enabled": bool, "reason": str}``: whether the flag is in effect, and why not."""
    return dict(_state)

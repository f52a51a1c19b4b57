"""What the runtime modules share: the reading of ``LMM_JAX_*`` switches, and whether it is too late.

The environment switches are inputs to :func:`lmm_jax.runtime.configure` (and the code guard reads
``LMM_JAX_CODE_GUARD`` when it starts); nothing reads them on import.
"""

from __future__ import annotations

import os

OFF = ("0", "off", "false", "no")
ON = ("1", "on", "true", "yes")
TOO_LATE = "JAX's backends had started before lmm_jax.runtime.configure() was called"


def env_switch(name: str, off: tuple[str, ...] = (), counts: bool = False) -> bool | int | str | None:
    """The value of the environment switch ``name``.

    Args:
        name: the variable, e.g. ``"LMM_JAX_CPU_MEMORY"``.
        off: words besides ``0/off/false/no`` that turn it off (``"system"``, ``"default"``).
        counts: a positive integer is a count (``LMM_JAX_CPU_THREADS=1``: one thread), not "on".

    Returns:
        None when unset, empty or ``auto``; False for an off word; with ``counts``, a positive
        integer as an int; True for ``1/on/true/yes``; otherwise the stripped text, for the caller
        to interpret (or reject).
    """
    raw = os.environ.get(name, "").strip()
    value = raw.lower()
    if value in ("", "auto"):
        return None
    if value in OFF or value in off:
        return False
    if counts and value.isdigit():
        return int(value)
    if value in ON:
        return True
    return raw


def backends_started() -> bool:
    """Whether JAX's backends (the CPU client, XLA's thread pool) exist yet: settings read when
    they start (``XLA_FLAGS``, ``PJRT_NPROC``, CPU dispatch) can no longer take effect once they do."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):     # an older or newer JAX without the probe: assume started
        return True

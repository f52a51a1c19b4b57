"""Batched work split across processes: many machines after ``jax.distributed.initialize()``.

A bootstrap, a power simulation, :func:`~lmm_jax.fit_many` and a parametric-bootstrap
LRT are lists of independent *units*: chunks of replicates (each one compiled call of
a fixed shape) or groups of models of one padded shape. Every process plans the same
units from the same arguments, computes the units :func:`owners` gives it, and
:func:`exchange` hands every process the results of all of them, so every process
returns the whole result.

The units do not depend on the number of processes: a chunk's replicates, its shape
and its keys (replicate ``i`` draws from ``fold_in(key, i)``) are the same in one
process as in many, and a compiled call returns the same bits for the same inputs
on the same kind of device, so P processes return exactly what one returns. (The
unit matters: a replicate refitted in a chunk of 16 can differ from its refit in a
chunk of 64 in the last bits, 1e-13 for sleepstudy, because XLA compiles each batch
shape to its own code.) A run with fewer units than processes leaves processes
idle; :func:`owners` warns and says which ``chunk_size`` would split it.

The exchange is an all-gather of each process's results as one byte buffer
(``jax.experimental.multihost_utils.process_allgather``), through JAX's collectives:
NCCL on GPUs, gloo on CPUs (``jax.config.update("jax_cpu_collectives_implementation",
"gloo")`` before ``jax.distributed.initialize``). Every process must make the same
calls in the same order, as in any multi-controller JAX program.
"""

from __future__ import annotations

import io
import warnings
from typing import Mapping, Sequence

import jax
import numpy as np

Arrays = dict[str, np.ndarray]


def owners(costs: Sequence[float], what: str = "this run", hint: str = "") -> np.ndarray:
    """The process (``jax.process_index()``) that computes each unit.

    Greedy longest-processing-time: units in decreasing ``costs`` (ties in
    their order), each to the process with the least work so far (ties to
    the lowest index), so units of one cost go round-robin: 0, 1, ..., P-1,
    0, ... The assignment depends only on ``costs`` and the number of
    processes, so every process computes the same one.

    Args:
        costs: work of each unit (replicates, models).
        what: the run, for the warning.
        hint: how to get more units, for the warning.

    Returns:
        (len(costs),) int array; all 0 in one process. Warns
        (``UserWarning``) when there are fewer units than processes.
    """
    n_proc = jax.process_count()
    costs = np.asarray(costs, dtype=float)
    out = np.zeros(costs.shape, dtype=np.int32)
    if n_proc == 1:
        return out
    if costs.size < n_proc:
        warnings.warn(f"{what} has {costs.size} unit(s) of work (chunks of replicates or groups of models) for "
                      f"{n_proc} processes: {n_proc - costs.size} of them have nothing to do. {hint}",
                      UserWarning, stacklevel=3)
    load = np.zeros(n_proc)
    for u in np.argsort(-costs, kind="stable"):
        p = int(np.argmin(load))
        out[u] = p
        load[p] += costs[u]
    return out


def mine(owner: np.ndarray) -> list[int]:
    """The units of :func:`owners` that this process computes, in order."""
    return [int(u) for u in np.flatnonzero(owner == jax.process_index())]


def exchange(local: Mapping[int, Arrays]) -> dict[int, Arrays]:
    """Every process's units, on every process.

    Args:
        local: this process's results, unit -> {name: NumPy array}; object
            arrays (of strings) travel as NumPy strings.

    Returns:
        The union of every process's ``local`` (in one process, ``local``
        itself). Every process must call it, the same number of times.
    """
    if jax.process_count() == 1:
        return dict(local)
    from jax.experimental import multihost_utils

    buf = io.BytesIO()
    np.savez(buf, **{f"{u}/{name}": (v.astype(str) if v.dtype == object else v)
                     for u, arrays in local.items() for name, v in ((k, np.asarray(a)) for k, a in arrays.items())})
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    header = np.frombuffer(np.int64(data.size).tobytes(), dtype=np.uint8)   # bytes: no dependence on x64
    sizes = [int(np.frombuffer(h.tobytes(), dtype=np.int64)[0])
             for h in np.asarray(multihost_utils.process_allgather(header))]
    width = 1 << max(sizes).bit_length()          # a power of two: few shapes for the gather to compile
    padded = np.zeros(width, dtype=np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    out: dict[int, Arrays] = {}
    for row, size in zip(gathered, sizes):
        with np.load(io.BytesIO(row[:size].tobytes()), allow_pickle=False) as z:
            for name in z.files:
                u, key = name.split("/", 1)
                v = z[name]
                out.setdefault(int(u), {})[key] = v.astype(object) if v.dtype.kind == "U" else v
    return out


def put_rows(out: Arrays, n: int, start: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a unit's per-replicate ``arrays`` into rows ``start:start + len``
    of ``out``'s arrays of ``n`` rows (allocated at the first unit seen)."""
    for k, v in arrays.items():
        v = np.asarray(v)
        if k not in out:
            out[k] = np.empty((n,) + v.shape[1:], dtype=v.dtype)
        out[k][start:start + v.shape[0]] = v

"""Warm fits on a busy machine: quiet, beside one CPU-bound process, and pinned to one core.

One process per thread setting (XLA reads its thread settings when JAX's backends start); inside
it, after a first fit (compilation, or a load from the persistent cache), each round times one
warm fit under every condition in turn:

  quiet    nothing of ours running beside the fit
  loaded   one competitor, ``python -c "while True: pass"``, started before the fit and ended after,
           in a session of its own (with ``kernel.sched_autogroup_enabled``, Linux shares CPU time
           between sessions first: as another user's job would be), free to run on every CPU
           (also when this process was started under ``taskset``)
  pinned   the same competitor, and every thread of this process pinned to CPU 1
           (``sched_setaffinity`` on each of its threads; XLA's pools keep the size they started with)

For each fit it records the wall time; the CPU seconds, voluntary and involuntary context
switches of each kind of thread (``/proc/self/task``, grouped by thread name: ``tf_XLAEigen`` is
XLA:CPU's intra-op pool, ``python3`` the main thread and the rest, OpenBLAS's workers among them;
a thread takes the name of the thread that created it); and the CPU seconds the rest of the
machine used (``/proc/stat`` minus this process and the competitor): the machine is shared.

Usage (one line of JSON per process, on stdout and appended to ``--out``,
default ``benchmarks/threads_results.jsonl``):

    PYTHONPATH=. LMM_JAX_CACHE_DIR=/tmp/cache python benchmarks/bench_threads.py --case insteval --rounds 5
    LMM_JAX_CPU_THREADS=default PYTHONPATH=. ... python benchmarks/bench_threads.py ...   # another setting
    taskset -c 1 env PYTHONPATH=. ... python benchmarks/bench_threads.py ...             # started pinned

Run the settings' processes one after another, several times (interleaved), and compare medians.
benchmarks/RESULTS.md ("Threads on a busy machine") has the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def _threads() -> dict[int, tuple[str, float, int, int]]:
    """tid -> (name, CPU seconds, voluntary, involuntary context switches)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            base = f"/proc/self/task/{tid}"
            stat = open(f"{base}/stat").read()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / HZ          # utime + stime
            vol = invol = 0
            for line in open(f"{base}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol = int(line.split()[1])
            out[int(tid)] = (name, cpu, vol, invol)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out


def _machine_busy() -> float:
    """CPU seconds all CPUs spent busy (not idle or iowait) since boot."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / HZ


def _pid_cpu(pid: int) -> float:
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def _pin_all(cpus: set[int]) -> None:
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, OSError):
            pass


def _data(case: str):
    import numpy as np
    import pandas as pd
    if case == "insteval":
        df = pd.read_csv(ROOT / "tests" / "reference" / "InstEval.csv.gz", dtype={"s": str, "d": str, "dept": str})
        return "y ~ service + (1|s) + (1|d) + (1|dept:service)", df
    n, ma, mb = {"crossed200k": (200_000, 5_000, 2_000), "crossed20k": (20_000, 500, 200)}[case]
    rng = np.random.default_rng(2)                             # bench_scale.crossed_data
    a, b = rng.integers(0, ma, n), rng.integers(0, mb, n)
    x1 = rng.normal(size=n)
    y = 2.0 + 0.4 * x1 + 0.8 * rng.normal(size=ma)[a] + 0.5 * rng.normal(size=mb)[b] + rng.normal(size=n)
    return "y ~ x1 + (1|A) + (1|B)", pd.DataFrame({"y": y, "x1": x1, "A": a.astype(np.int64), "B": b.astype(np.int64)})


def timed_fit(model, competitor: bool, pin: set[int] | None, own_cpus: set[int], all_cpus: set[int]) -> dict:
    """One warm fit. ``own_cpus``: this process's CPUs (restored after pinning); ``all_cpus``: the competitor's."""
    comp = None
    if competitor:
        # no preexec_fn: a fork would run OpenBLAS's atfork handler, which ends its threads here (to be
        # re-created by the next call, from an XLA pool thread, whose name they would then carry)
        comp = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {sorted(all_cpus)})\n"
                                 "while True: pass"], start_new_session=True)
        time.sleep(0.3)                                        # running before the fit starts
    if pin is not None:
        _pin_all(pin)
    t0, m0 = _threads(), _machine_busy()
    c0 = _pid_cpu(comp.pid) if comp else 0.0
    t = time.perf_counter()
    fit = model.fit(reml=True)
    wall = time.perf_counter() - t
    t1, m1 = _threads(), _machine_busy()
    c1 = _pid_cpu(comp.pid) if comp else 0.0
    if comp is not None:
        comp.kill()
        comp.wait()
    if pin is not None:
        _pin_all(own_cpus)
    by = defaultdict(lambda: [0.0, 0, 0, 0])
    own = 0.0
    for tid, (name, cpu, vol, invol) in t1.items():
        n0 = t0.get(tid, (name, 0.0, 0, 0))
        g = by[name]
        g[0] += cpu - n0[1]
        g[1] += vol - n0[2]
        g[2] += invol - n0[3]
        g[3] += 1
        own += cpu - n0[1]
    return dict(wall=wall, objective=float(fit.objective), own_cpu=own, competitor_cpu=c1 - c0,
                others_cpu=(m1 - m0) - own - (c1 - c0),
                threads={k: dict(cpu=round(v[0], 3), vol=v[1], invol=v[2], n=v[3]) for k, v in by.items()})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="insteval", choices=["insteval", "crossed200k", "crossed20k"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conditions", default="quiet,loaded,pinned")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "threads_results.jsonl"),
                    help="JSON-lines file this process's line is appended to")
    args = ap.parse_args(argv)

    import jax
    import lmm_jax

    configured = lmm_jax.runtime.configure()     # LMM_JAX_CPU_THREADS and the user's settings choose what it does
    formula, df = _data(args.case)
    all_cpus, own_cpus = set(range(os.cpu_count())), os.sched_getaffinity(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lmm_jax.LMM(formula, df)
        jax.block_until_ready(model.products)
        t = time.perf_counter()
        first = model.fit(reml=True)
        first_s = time.perf_counter() - t
        conds = args.conditions.split(",")
        runs = defaultdict(list)
        for _ in range(args.rounds):
            for c in conds:
                runs[c].append(timed_fit(model, competitor=c != "quiet", pin={max(own_cpus)} if c == "pinned" else None,
                                         own_cpus=own_cpus, all_cpus=all_cpus))
    names = {}
    for tid in os.listdir("/proc/self/task"):
        n = open(f"/proc/self/task/{tid}/comm").read().strip()
        names[n] = names.get(n, 0) + 1
    out = dict(label=args.label, case=args.case, lmm_jax=lmm_jax.__file__, first_s=first_s,
               objective=float(first.objective), xla_flags=os.environ.get("XLA_FLAGS", ""),
               env={k: os.environ[k] for k in ("PJRT_NPROC", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                "LMM_JAX_CPU_THREADS") if k in os.environ},
               configured=configured, affinity=sorted(own_cpus), thread_names=names,
               median={c: statistics.median(r["wall"] for r in v) for c, v in runs.items()}, runs=runs)
    print(json.dumps(out))
    with open(args.out, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()

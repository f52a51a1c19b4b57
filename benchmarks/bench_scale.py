"""Scale benchmark: lmm_jax beside lme4 and the Rust-backed peers, in one run.

Cases (REML throughout):
  insteval   y ~ service + (1|s) + (1|d) + (1|dept:service)   73,421 rows, 2,972 x 1,128 crossed
  slope1m    y ~ x1 + x2 + (x1|g)                              1,000,000 rows, 10,000 groups
  crossed200k y ~ x1 + (1|A) + (1|B)                           200,000 rows, 5,000 x 2,000 crossed
  slope100k  y ~ x1 + x2 + (x1|g)                              100,000 rows, 1,000 groups (PEERS.md)
  crossed20k y ~ x1 + (1|A) + (1|B)                            20,000 rows, 500 x 200 crossed (PEERS.md)

For lmm_jax it reports separately: ``build`` (design and cross-products),
``first`` (first fit in the process: compile + run, a cold compile when
``$LMM_JAX_CACHE_DIR`` names an empty directory), ``quick warm`` (median of --reps
refits right after it, on the quick code a new structure compiles first), ``warm``
(median of --reps refits once the fit's optimised code, compiled on a background
thread, has replaced the quick code), the Newton
iterations, the REML criterion and, for the big cases, the peak memory:
tracemalloc's peak of Python/numpy allocations while building and fitting
(a second build and fit after the timed ones: tracemalloc slows tracing),
and the growth of the process's maximum RSS. Peers are timed the same way
(first call, then the median of warm calls). lme4 runs in one Rscript per
case on a CSV of the same data (its time excludes reading the CSV).

OpenBLAS threads are set to 1 before numpy is imported: on a 2-core machine
shared with other jobs, JAX's CPU Cholesky (LAPACK through scipy's OpenBLAS)
runs 4-6x slower with OpenBLAS's default threading fighting XLA's own thread
pool (1,156 x 1,156: 0.30 s against 0.05 s; docs/performance.md, "Threads on a
busy machine").

On a GPU (``pip install -e ".[cuda]"``) lmm_jax runs on it as JAX's default
device; each row records the device, and the accelerator's peak memory
(``memory_stats()``) beside the host-side figures. ``--peers "" --no-lme4``
times lmm_jax alone.

Usage: python benchmarks/bench_scale.py [--cases insteval,slope1m,...] [--reps 3] [--no-lme4]
       [--json benchmarks/scale_results.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTEVAL = ROOT / "tests" / "reference" / "InstEval.csv.gz"


# -- data ------------------------------------------------------------------------------------------------------------

def slope_data(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    """y = 1 + 0.5 x1 - 0.3 x2 + b0_g + b1_g x1 + e, (b0, b1) correlated."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    b = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 0.5]], size=groups)
    y = 1.0 + 0.5 * x1 - 0.3 * x2 + b[g, 0] + b[g, 1] * x1 + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "g": g.astype(np.int64)})


def crossed_data(n: int, ma: int, mb: int, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, ma, n), rng.integers(0, mb, n)
    x1 = rng.normal(size=n)
    y = 2.0 + 0.4 * x1 + 0.8 * rng.normal(size=ma)[a] + 0.5 * rng.normal(size=mb)[b] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x1, "A": a.astype(np.int64), "B": b.astype(np.int64)})


def insteval_data() -> pd.DataFrame:
    return pd.read_csv(INSTEVAL, dtype={"s": str, "d": str, "dept": str})


CASES = {
    "insteval": dict(formula="y ~ service + (1|s) + (1|d) + (1|dept:service)", data=insteval_data,
                     peers_formula="y ~ service + (1|s) + (1|d) + (1|dept:service)", memory=True),
    "slope1m": dict(formula="y ~ x1 + x2 + (x1|g)", data=lambda: slope_data(1_000_000, 10_000), memory=True,
                    peers_formula="y ~ x1 + x2 + (1 + x1 | g)"),
    "crossed200k": dict(formula="y ~ x1 + (1|A) + (1|B)", data=lambda: crossed_data(200_000, 5_000, 2_000),
                        memory=True, peers_formula="y ~ x1 + (1|A) + (1|B)"),
    "slope100k": dict(formula="y ~ x1 + x2 + (x1|g)", data=lambda: slope_data(100_000, 1_000), memory=False,
                      peers_formula="y ~ x1 + x2 + (1 + x1 | g)"),
    "crossed20k": dict(formula="y ~ x1 + (1|A) + (1|B)", data=lambda: crossed_data(20_000, 500, 200), memory=False,
                       peers_formula="y ~ x1 + (1|A) + (1|B)"),
}
GROUPS = {"insteval": ["s", "d", "dept", "service"], "slope1m": ["g"], "slope100k": ["g"],
          "crossed200k": ["A", "B"], "crossed20k": ["A", "B"]}


# -- timing helpers --------------------------------------------------------------------------------------------------

def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(f, reps: int):
    """(first-call seconds, median warm seconds, last value)."""
    t = time.perf_counter()
    out = f()
    first = time.perf_counter() - t
    return first, _median_time(f, reps), out


def _median_time(f, reps: int) -> float:
    """Median seconds of ``reps`` calls of ``f``."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) if times else float("nan")


def _settle(f, budget_s: float = 60.0) -> int:
    """Refit until the fit's kernels run their optimised code; the refits it took. lmm_jax compiles a
    new structure's single-fit kernels as quick code first and the optimised code on a background thread
    once an executable has run ``TIER_UP_CALLS`` times for ``TIER_UP_SECONDS`` in all, so once that many
    refits, that long in all, have started no such compilation, none of the fit's executables is left
    quick (or ``budget_s`` has passed)."""
    from lmm_jax.runtime import kernel

    if not kernel.tiered("cpu"):
        return 0
    t0, n, quiet_calls, quiet_s = time.perf_counter(), 0, 0, 0.0
    while time.perf_counter() - t0 < budget_s:
        t = time.perf_counter()
        f()
        n, dt = n + 1, time.perf_counter() - t
        compiling = [th for th in threading.enumerate() if th.name == kernel.OPTIMIZE_THREAD]
        for th in compiling:
            th.join()
        quiet_calls, quiet_s = (0, 0.0) if compiling else (quiet_calls + 1, quiet_s + dt)
        if quiet_calls >= kernel.TIER_UP_CALLS and quiet_s >= kernel.TIER_UP_SECONDS:
            break
    return n


def bench_lmm_jax(formula: str, df: pd.DataFrame, reps: int, memory: bool) -> dict:
    import jax

    import lmm_jax

    gc.collect()
    rss0 = _maxrss_mb()
    t = time.perf_counter()
    model = lmm_jax.LMM(formula, df)
    jax.block_until_ready(model.products)
    build = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, quick, fit = _time(lambda: model.fit(reml=True), reps)          # refits on the quick code
        settle = _settle(lambda: model.fit(reml=True))
        warm = _median_time(lambda: model.fit(reml=True), reps)                # on the optimised code
    out = dict(build_s=build, first_s=first, quick_warm_s=quick, settle_refits=settle, warm_s=warm,
               iterations=fit.iterations, objective=fit.objective, loglik=fit.loglik, converged=fit.converged)
    if memory:
        # a second build and fit under tracemalloc (it slows Python-side work, so not during the
        # timings above; what it traces, Python/numpy allocations, does not depend on compilation)
        del model
        gc.collect()
        tracemalloc.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lmm_jax.LMM(formula, df)
            model.fit(reml=True)
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        out["maxrss_growth_mb"] = _maxrss_mb() - rss0
    dev = jax.devices()[0]
    out["device"] = dev.platform if dev.platform == "cpu" else f"{dev.platform}: {dev.device_kind}"
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:               # the accelerator's own high-water mark
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 1e6
    sparse = type(model.products.A21).__name__ == "SparseA21"
    out["coupling"] = "sparse" if sparse else ("dense" if model.structure.q_rest else "none")
    if sparse:
        from lmm_jax.core.sparse import n_pairs
        out["pairs"] = n_pairs(model.products.A21)
    return out


def bench_peer(name: str, formula: str, df: pd.DataFrame, reps: int, timeout: float = 600.0) -> dict:
    """Time a peer in a child process (spawned: no JAX state is inherited), given up after ``timeout``
    seconds: lme-python ran for 900 s on InstEval without a result, and a Rust call cannot be
    interrupted from Python."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        job = pool.apply_async(_bench_peer_here, (name, formula, df, reps, sorted(_GROUP_COLS)))
        return job.get(timeout)
    except multiprocessing.TimeoutError:
        return dict(error=f"no result in {timeout:g} s")
    finally:
        pool.terminate()


def _bench_peer_here(name: str, formula: str, df: pd.DataFrame, reps: int, groups: list[str]) -> dict:
    _GROUP_COLS.clear()
    _GROUP_COLS.update(groups)
    try:
        if name == "glmm":
            import glmm
            data = {c: (df[c].astype(str).to_numpy() if c in groups_of(df) else df[c].to_numpy()) for c in df.columns}
            f = lambda: glmm.fit(data, formula, reml=True, satterthwaite=False)  # noqa: E731
        elif name == "lme-python":
            import lme_python
            import polars as pl
            pdf = pl.DataFrame({c: (df[c].astype(str).tolist() if c in groups_of(df) else df[c].to_numpy())
                                for c in df.columns})
            f = lambda: lme_python.lmer(formula, pdf, reml=True)  # noqa: E731
        elif name == "mixedlm":
            import mixedlm
            sdf = df.astype({c: str for c in groups_of(df)})
            f = lambda: mixedlm.lmer(formula, sdf, REML=True)  # noqa: E731
        else:
            raise ValueError(name)
        first, warm, res = _time(f, reps)
        return dict(first_s=first, warm_s=warm, objective=_peer_objective(res))
    except Exception as e:  # a peer that cannot fit the case is reported, not fatal
        return dict(error=f"{type(e).__name__}: {str(e)[:120]}")


_GROUP_COLS: set[str] = set()


def groups_of(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c in _GROUP_COLS]


def _peer_objective(res) -> float | None:
    """-2 x the peer's reported (REML) log-likelihood, to check it reached the same optimum."""
    for attr in ("loglik", "logLik", "log_likelihood", "llf"):
        v = getattr(res, attr, None)
        if callable(v):
            try:
                v = v()
            except Exception:
                v = None
        try:
            return -2.0 * float(v)
        except (TypeError, ValueError):
            continue
    return None


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
for (g in strsplit(args[3], ",")[[1]]) d[[g]] <- factor(d[[g]])
reps <- as.integer(args[4])
f <- as.formula(args[2])
t0 <- proc.time()[["elapsed"]]; fit <- lmer(f, d, REML = TRUE); first <- proc.time()[["elapsed"]] - t0
warm <- c()
for (i in seq_len(reps)) { t0 <- proc.time()[["elapsed"]]; fit <- lmer(f, d, REML = TRUE)
  warm <- c(warm, proc.time()[["elapsed"]] - t0) }
cat(sprintf('{"first_s": %.4f, "warm_s": %s, "objective": %.10f}\n', first,
    if (reps > 0) sprintf("%.4f", median(warm)) else "null", REMLcrit(fit)))
"""


def bench_lme4(formula: str, df: pd.DataFrame, groups: list[str], reps: int) -> dict:
    if shutil.which("Rscript") is None:
        return dict(error="Rscript not found")
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = Path(tmp) / "d.csv", Path(tmp) / "fit.R"
        df.to_csv(csv, index=False)
        script.write_text(R_SCRIPT)
        r = subprocess.run(["Rscript", str(script), str(csv), formula, ",".join(groups), str(reps)],
                           capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        return dict(error=r.stderr.strip()[-200:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def markdown(results: dict) -> str:
    """The RESULTS.md table: seconds (first call / warm median), ratio to lmm_jax's warm time."""
    peers = ["glmm", "lme-python", "mixedlm", "lme4"]
    lines = ["| case | rows | lmm_jax build | lmm_jax first | lmm_jax quick-code refits | lmm_jax warm | iters | "
             + " | ".join(f"{p} first / warm (x lmm_jax)" for p in peers) + " |",
             "|---" * (7 + len(peers)) + "|"]
    for case, row in results.items():
        lj = row["lmm_jax"]
        quick = lj.get("quick_warm_s")
        cells = [case, f"{row['n']:,}", _fmt(lj["build_s"]), _fmt(lj["first_s"]),
                 "-" if quick is None else _fmt(quick), _fmt(lj["warm_s"]), str(lj["iterations"])]
        for p in peers:
            r = row.get(p)
            if r is None:
                cells.append("not run")
            elif "error" in r:
                cells.append("failed")
            else:
                warm = r.get("warm_s")
                if warm is None:   # lme4 run once: no compilation, its one fit is its warm time
                    cells.append(f"{_fmt(r['first_s'])} (1 run, {r['first_s'] / lj['warm_s']:.2g}x)")
                else:
                    cells.append(f"{_fmt(r['first_s'])} / {_fmt(warm)} ({warm / lj['warm_s']:.2g}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import lmm_jax

    lmm_jax.runtime.configure()    # the process-wide tuning these benchmarks measure lmm_jax with (docs/performance.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--reps", type=int, default=3, help="warm repetitions (median reported)")
    ap.add_argument("--peers", default="glmm,lme-python,mixedlm")
    ap.add_argument("--no-lme4", action="store_true")
    ap.add_argument("--peer-timeout", type=float, default=600.0, help="seconds before a peer is given up")
    ap.add_argument("--lme4-reps", type=int, default=0, help="warm lme4 repetitions (0: first call only)")
    ap.add_argument("--json", default=str(Path(__file__).with_name("scale_results.json")),
                    help="raw results (benchmarks/RESULTS.md, Scale, points to the default)")
    ap.add_argument("--markdown", nargs="+", default=None, metavar="JSON",
                    help="print the RESULTS.md table of earlier --json outputs and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        merged = {}
        for f in args.markdown:
            merged.update(json.loads(Path(f).read_text()))
        print(markdown(merged))
        return merged
    results = {}
    for case in args.cases.split(","):
        spec = CASES[case]
        df = spec["data"]()
        _GROUP_COLS.clear()
        _GROUP_COLS.update(GROUPS[case])
        data_mb = df.memory_usage(deep=False, index=False).sum() / 1e6
        row = dict(n=len(df), data_mb=data_mb)
        print(f"== {case}: {len(df)} rows, {data_mb:.1f} MB", flush=True)
        row["lmm_jax"] = bench_lmm_jax(spec["formula"], df, args.reps, spec["memory"])
        print("  lmm_jax", row["lmm_jax"], flush=True)
        for peer in [p for p in args.peers.split(",") if p]:
            row[peer] = bench_peer(peer, spec["peers_formula"], df, args.reps, args.peer_timeout)
            print(f"  {peer}", row[peer], flush=True)
        if not args.no_lme4:
            row["lme4"] = bench_lme4(spec["formula"], df, GROUPS[case], args.lme4_reps)
            print("  lme4", row["lme4"], flush=True)
        results[case] = row
    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

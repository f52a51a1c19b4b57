"""Parametric bootstrap throughput: lmm_jax beside lme4, glmm, mixedlm, statsmodels.

All in one run on the same machine. lmm_jax's compile time (first call of a
shape) and warm time (median of several calls) are reported separately; the
peers' rates come from a few hundred replicates (statsmodels a few) and are
scaled to the replicate count of lmm_jax.

Usage: python benchmarks/bench_bootstrap.py [--quick] [--out benchmarks/bootstrap_results.json]
       [--cases sleepstudy,...] [--peers lme4,glmm,mixedlm,statsmodels] [--n sleepstudy=100000,...]
       [--chunk-size N] [--no-newton]

On a GPU (``pip install -e ".[cuda]"``) the same script times the CUDA path:
JAX's default device is the GPU; ``--peers ""`` skips the CPU-only peers.
Each JSON row records the device it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

import lmm_jax

RSCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1]); nsim <- as.integer(args[3])
for (v in strsplit(args[4], ",")[[1]]) d[[v]] <- factor(d[[v]])
f <- lmer(as.formula(args[2]), d, REML = TRUE)
invisible(bootMer(f, fixef, nsim = 5, seed = 1))          # warm-up
t <- system.time(b <- bootMer(f, function(x) c(fixef(x), sigma(x)), nsim = nsim, seed = 1))[["elapsed"]]
cat(sprintf("%.6f\n", t / nsim))
"""


def crossed_design(n_subj: int = 50, n_item: int = 20, seed: int = 1) -> pd.DataFrame:
    """(1|subj) + (1|item): every subject sees every item once, y simulated."""
    rng = np.random.default_rng(seed)
    subj, item = np.meshgrid(np.arange(n_subj), np.arange(n_item), indexing="ij")
    subj, item = subj.ravel(), item.ravel()
    x = rng.normal(size=subj.size)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.8, n_subj)[subj] + rng.normal(0, 0.5, n_item)[item] + rng.normal(size=subj.size)
    return pd.DataFrame({"y": y, "x": x, "subj": [f"s{i}" for i in subj], "item": [f"i{i}" for i in item]})


CASES = {
    "sleepstudy": dict(formula="Reaction ~ Days + (Days | Subject)", glmm="Reaction ~ Days + (1 + Days | Subject)",
                       data=lambda: lmm_jax.datasets.load("sleepstudy"), factors=["Subject"], n=10_000,
                       statsmodels=dict(formula="Reaction ~ Days", groups="Subject", re_formula="~Days")),
    "crossed 50x20": dict(formula="y ~ x + (1 | subj) + (1 | item)", glmm="y ~ x + (1 | subj) + (1 | item)",
                          data=crossed_design, factors=["subj", "item"], n=1_000, statsmodels=None),
    "Penicillin": dict(formula="diameter ~ 1 + (1 | plate) + (1 | sample)",
                       glmm="diameter ~ 1 + (1 | plate) + (1 | sample)",
                       data=lambda: lmm_jax.datasets.load("Penicillin"), factors=["plate", "sample"], n=1_000,
                       statsmodels=None),
}


def time_lmm_jax(fit, n: int, repeats: int, chunk_size: int | None = None, newton: bool = True) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = fit.bootstrap(n, key=0, chunk_size=chunk_size)
        compile_s = time.perf_counter() - t0
        warm = []
        for r in range(repeats):
            t0 = time.perf_counter()
            boot = fit.bootstrap(n, key=r + 1, chunk_size=chunk_size)
            warm.append(time.perf_counter() - t0)
        it = boot.replicates.iterations
        out = dict(first_call_s=compile_s, warm_s=float(np.median(warm)), warm_all_s=warm, n=n,
                   chunk_size=boot.chunk_size, nonconverged=boot.n_nonconverged, failed=boot.n_failed,
                   iterations_median=float(np.median(it)), iterations_max=int(it.max()), device=device_name())
        if newton:
            # the exact-Hessian Newton path (the single fit's optimiser), for comparison
            fit.bootstrap(n, key=0, method="newton", chunk_size=chunk_size)
            times = []
            for r in range(2):
                t0 = time.perf_counter()
                fit.bootstrap(n, key=r + 1, method="newton", chunk_size=chunk_size)
                times.append(time.perf_counter() - t0)
            out.update(newton_warm_s=float(np.median(times)), newton_warm_all_s=times)
    return out


def device_name() -> str:
    """JAX's default device, e.g. 'cpu' or 'gpu: NVIDIA H100 80GB HBM3'."""
    import jax

    d = jax.devices()[0]
    return d.platform if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"


def time_lme4(data: pd.DataFrame, formula: str, factors: list[str], nsim: int) -> float | None:
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = os.path.join(tmp, "d.csv"), os.path.join(tmp, "b.R")
        data.to_csv(csv, index=False)
        open(script, "w").write(RSCRIPT)
        try:
            out = subprocess.run(["Rscript", script, csv, formula, str(nsim), ",".join(factors)], capture_output=True,
                                 text=True, timeout=900)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            print("lme4 failed:", out.stderr[-500:], file=sys.stderr)
            return None
        return float(out.stdout.strip().splitlines()[-1])


def time_refit_loop(refit, Y: np.ndarray, reps: int) -> float:
    refit(Y[:, 0])                                          # warm-up
    t0 = time.perf_counter()
    for i in range(reps):
        refit(Y[:, i])
    return (time.perf_counter() - t0) / reps


def time_glmm(data, formula, response, Y, reps):
    import glmm

    cols = {c: (data[c].astype(str).to_numpy() if data[c].dtype == object else data[c].to_numpy()) for c in data}

    def refit(y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return glmm.fit({**cols, response: y}, formula, reml=True, satterthwaite=False)

    return time_refit_loop(refit, Y, reps)


def time_mixedlm(data, formula, reps):
    import mixedlm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = mixedlm.lmer(formula, data, REML=True)
        mixedlm.bootMer(f, nsim=3, seed=1)
        t0 = time.perf_counter()
        mixedlm.bootMer(f, nsim=reps, seed=1)
    return (time.perf_counter() - t0) / reps


def time_statsmodels(data, spec, response, Y, reps):
    import statsmodels.formula.api as smf

    def refit(y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = data.assign(**{response: y})
            return smf.mixedlm(spec["formula"], d, groups=spec["groups"], re_formula=spec["re_formula"]).fit(reml=True)

    return time_refit_loop(refit, Y, reps)


def main() -> None:
    lmm_jax.runtime.configure()    # the process-wide tuning these benchmarks measure lmm_jax with (docs/performance.md)
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer peer replicates")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "bootstrap_results.json"))
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ",".join(CASES))
    ap.add_argument("--peers", default="lme4,glmm,mixedlm,statsmodels", help='comma-separated; "" for none')
    ap.add_argument("--n", default="", help="replicate counts, e.g. sleepstudy=100000 (default: each case's)")
    ap.add_argument("--chunk-size", type=int, default=None, help="replicates per compiled call (default: lmm_jax's)")
    ap.add_argument("--no-newton", action="store_true", help="skip the Newton-path comparison")
    args = ap.parse_args()
    peer_reps = 50 if args.quick else 200
    peers = {p for p in args.peers.split(",") if p}
    n_of = {k: int(v) for k, v in (kv.split("=") for kv in args.n.split(",") if kv)}
    results = {}
    for name in args.cases.split(","):
        c = CASES[name]
        data = c["data"]()
        fit = lmm_jax.fit(c["formula"], data)
        response = c["formula"].split("~")[0].strip()
        row = dict(lmm_jax=time_lmm_jax(fit, n_of.get(name, c["n"]), args.repeats, args.chunk_size,
                                        not args.no_newton))
        print(name, "lmm_jax", row["lmm_jax"], flush=True)
        Y = np.asarray(lmm_jax.simulate(fit, peer_reps + 1, key=99))
        row["lme4_s_per_rep"] = time_lme4(data, c["formula"], c["factors"], peer_reps) if "lme4" in peers else None
        try:
            row["glmm_s_per_rep"] = time_glmm(data, c["glmm"], response, Y, peer_reps) if "glmm" in peers else None
        except Exception as e:                              # peer missing or unable: say so
            row["glmm_s_per_rep"], row["glmm_error"] = None, repr(e)[:200]
        try:
            row["mixedlm_s_per_rep"] = (time_mixedlm(data, c["formula"], max(20, peer_reps // 4))
                                        if "mixedlm" in peers else None)
        except Exception as e:
            row["mixedlm_s_per_rep"], row["mixedlm_error"] = None, repr(e)[:200]
        if c["statsmodels"] is not None and "statsmodels" in peers:
            try:
                row["statsmodels_s_per_rep"] = time_statsmodels(data, c["statsmodels"], response, Y, 5)
            except Exception as e:
                row["statsmodels_s_per_rep"], row["statsmodels_error"] = None, repr(e)[:200]
        print(name, {k: v for k, v in row.items() if k != "lmm_jax"}, flush=True)
        results[name] = row
    json.dump(results, open(args.out, "w"), indent=1)
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| model | replicates | lmm_jax compile+first (s) | lmm_jax warm (s) | lme4 bootMer (s, scaled) | "
             "glmm refit loop (s, scaled) | mixedlm bootMer (s, scaled) | statsmodels (s, scaled) | "
             "lme4 / lmm_jax | glmm / lmm_jax |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        j = r["lmm_jax"]
        n, warm = j["n"], j["warm_s"]

        def scaled(key):
            v = r.get(key)
            return None if v is None else v * n

        def fmt(v):
            return "n/a" if v is None else f"{v:.3g}"

        lme4, glmm_, mlm, sm = (scaled(k) for k in ("lme4_s_per_rep", "glmm_s_per_rep", "mixedlm_s_per_rep",
                                                     "statsmodels_s_per_rep"))
        lines.append(f"| {name} | {n:,} | {j['first_call_s']:.1f} | {warm:.2f} | {fmt(lme4)} | {fmt(glmm_)} | "
                     f"{fmt(mlm)} | {fmt(sm)} | {fmt(None if lme4 is None else lme4 / warm)} | "
                     f"{fmt(None if glmm_ is None else glmm_ / warm)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Power curve of a planned sleepstudy design: lmm_jax beside an lme4 + lmerTest refit loop in R.

The design is sleepstudy's (10 days per subject) with 20, 30, 40, 50 and 60 subjects and the
slope of Days set to 3 (the other parameters are sleepstudy's REML estimates), so the power of the
Satterthwaite t test of Days runs through 50-95%. lmm_jax runs ``lmm_jax.power_curve`` (each size
one vmapped fit of all its simulated responses): its first call (compilation included) and the
median of warm calls are reported apart. R simulates with lme4's ``simulate(newparams=)`` and
refits each response with ``lmerTest::lmer`` (simr's loop), for fewer simulations per size; its
time per refit is scaled to the same count. Both estimate power, each with its Monte Carlo SE.

Usage: python benchmarks/bench_power.py [--n 1000] [--r-sims 200] [--repeats 3]
       [--out benchmarks/power_results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

import lmm_jax

SIZES = (20, 30, 40, 50, 60)
SLOPE = 3.0
FORMULA = "Reaction ~ Days + (Days | Subject)"

RSCRIPT = r"""
suppressMessages({library(lme4); library(lmerTest)})
args <- commandArgs(TRUE)
nsim <- as.integer(args[1]); sizes <- as.integer(strsplit(args[2], ",")[[1]])
beta <- as.numeric(strsplit(args[3], ",")[[1]]); theta <- as.numeric(strsplit(args[4], ",")[[1]])
sigma <- as.numeric(args[5])
set.seed(20261203)
out <- NULL
for (n in sizes) {
  d <- data.frame(Subject = factor(rep(seq_len(n), each = 10)), Days = rep(0:9, n))
  Y <- simulate(~ Days + (Days | Subject), nsim = nsim, newdata = d,
                newparams = list(beta = beta, theta = theta, sigma = sigma))
  t <- system.time(p <- sapply(Y, function(y) {
    d$Reaction <- y
    m <- suppressMessages(suppressWarnings(lmer(Reaction ~ Days + (Days | Subject), d)))
    summary(m)$coefficients["Days", "Pr(>|t|)"]
  }))[["elapsed"]]
  out <- rbind(out, data.frame(size = n, power = mean(p < 0.05), seconds = t, nsim = nsim))
}
write.csv(out, stdout(), row.names = FALSE)
"""


def planned_design(subjects: int) -> pd.DataFrame:
    return pd.DataFrame({"Subject": np.repeat([f"s{i}" for i in range(subjects)], 10),
                         "Days": np.tile(np.arange(10), subjects)})


def run_lme4(params: dict, nsim: int) -> pd.DataFrame | None:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "power.R")
        open(script, "w").write(RSCRIPT)
        beta = ",".join(str(v) for v in params["beta"].values())
        theta = ",".join(repr(float(v)) for v in params["theta"])
        try:
            out = subprocess.run(["Rscript", script, str(nsim), ",".join(map(str, SIZES)), beta, theta,
                                  repr(params["sigma"])], capture_output=True, text=True, timeout=3600)
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            print("lme4 loop failed:", e, file=sys.stderr)
            return None
        if out.returncode != 0:
            print("lme4 loop failed:", out.stderr[-800:], file=sys.stderr)
            return None
        from io import StringIO
        return pd.read_csv(StringIO(out.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="simulations per size (lmm_jax)")
    ap.add_argument("--r-sims", type=int, default=200, help="simulations per size (the lme4 loop)")
    ap.add_argument("--repeats", type=int, default=3, help="warm calls (median reported)")
    ap.add_argument("--out", default="benchmarks/power_results.json")
    args = ap.parse_args()

    fit = lmm_jax.fit(FORMULA, lmm_jax.datasets.load("sleepstudy"))
    params = {"beta": {"(Intercept)": float(fit.beta[0]), "Days": SLOPE}, "theta": np.asarray(fit.theta),
              "sigma": float(fit.sigma)}
    spec = (FORMULA, planned_design(SIZES[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        first = lmm_jax.power_curve(spec, "Days", along="Subject", sizes=SIZES, n=args.n, key=0, params=params)
        first_s = time.perf_counter() - t0
        warm = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            curve = lmm_jax.power_curve(spec, "Days", along="Subject", sizes=SIZES, n=args.n, key=r + 1,
                                        params=params)
            warm.append(time.perf_counter() - t0)
    curve = curve.assign(mc_se=np.sqrt(curve["power"] * (1 - curve["power"]) / curve["n"]))
    r = run_lme4(params, args.r_sims)
    rows = []
    for i, size in enumerate(SIZES):
        row = {"size": size, "lmm_jax_power": float(curve["power"].iloc[i]),
               "lmm_jax_mc_se": float(curve["mc_se"].iloc[i]), "lmm_jax_failed": int(curve["n_failed"].iloc[i])}
        if r is not None:
            rp = float(r["power"].iloc[i])
            row.update(lme4_power=rp, lme4_mc_se=float(np.sqrt(rp * (1 - rp) / args.r_sims)),
                       lme4_seconds=float(r["seconds"].iloc[i]), lme4_sims=args.r_sims)
        rows.append(row)
    lme4_total = None if r is None else float(r["seconds"].sum()) * args.n / args.r_sims
    result = {
        "benchmark": "power curve, sleepstudy design (10 days x 20..60 subjects), slope of Days = 3, Satterthwaite t",
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "lmm_jax": {"n_per_size": args.n, "first_call_s": first_s, "warm_s": float(np.median(warm)),
                    "warm_all_s": warm, "first_call_power": first["power"].tolist()},
        "lme4_loop_scaled_s": lme4_total,
        "speedup_warm": None if lme4_total is None else lme4_total / float(np.median(warm)),
        "sizes": rows,
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""Time inference on sleepstudy / cake beside lmerTest, pbkrtest and lme4 in the same run.

    LMM_JAX_CACHE_DIR=$(mktemp -d) python benchmarks/bench_inference.py [--reps 5] [--json benchmarks/inference_results.json]

lmm_jax: the first call (its kernels' compilation included, with an empty
``LMM_JAX_CACHE_DIR``) and the median of ``reps``
warm calls on fresh fit results (nothing cached from the previous call). R:
the median of ``reps`` calls in one Rscript process (lmerTest's
Satterthwaite cost is its ``as_lmerModLmerTest`` step, the numDeriv Hessian
and Jacobian, plus ``summary``; lme4's fit itself is timed apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import lmm_jax

DATA = Path("/work/shared/data")

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE); reps <- as.integer(args[2])
sleep <- read.csv(file.path(args[1], "sleepstudy.csv"), stringsAsFactors = TRUE)
cake <- read.csv(file.path(args[1], "cake.csv"), stringsAsFactors = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa")
tm <- function(f) { t <- numeric(reps); for (i in seq_len(reps)) { t0 <- proc.time()[["elapsed"]]; f();
  t[i] <- proc.time()[["elapsed"]] - t0 }; median(t) }
fit <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleep, control = ctrl)
fitc <- lme4::lmer(angle ~ recipe * temp + (1 | recipe:replicate), cake, control = ctrl)
res <- list(
  lme4_fit = tm(function() lme4::lmer(Reaction ~ Days + (Days | Subject), sleep, control = ctrl)),
  satterthwaite = tm(function() summary(lmerTest::as_lmerModLmerTest(fit))$coefficients),
  kenward_roger = tm(function() summary(lmerTest::as_lmerModLmerTest(fit), ddf = "Kenward-Roger")$coefficients),
  anova_cake_satterthwaite = tm(function() anova(lmerTest::as_lmerModLmerTest(fitc))),
  anova_cake_kenward_roger = tm(function() anova(lmerTest::as_lmerModLmerTest(fitc), ddf = "Kenward-Roger")),
  profile = tm(function() suppressMessages(confint(fit, method = "profile", oldNames = FALSE))))
cat(toJSON(res, auto_unbox = TRUE, digits = NA))
"""


def r_timings(reps: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
    out = subprocess.run(["Rscript", f.name, str(DATA), str(reps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_first_and_warm(make_fit, call, reps: int) -> tuple[float, float]:
    """(first call incl. compilation, median warm call on fresh results)."""
    fit = make_fit()
    t0 = time.perf_counter()
    call(fit)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(reps):
        fit = make_fit()
        t0 = time.perf_counter()
        call(fit)
        warm.append(time.perf_counter() - t0)
    return first, float(np.median(warm))


def main() -> None:
    lmm_jax.runtime.configure()    # the process-wide tuning these benchmarks measure lmm_jax with (docs/performance.md)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("inference_results.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sleep = lmm_jax.datasets.load("sleepstudy")
    cake = lmm_jax.datasets.load("cake")
    m_sleep = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", sleep)
    m_cake = lmm_jax.LMM("angle ~ recipe * temp + (1 | recipe:replicate)", cake)
    m_sleep.fit()
    m_cake.fit()

    def fresh(model):
        return lambda: model.fit()

    ours = {}
    ours["satterthwaite"] = time_first_and_warm(fresh(m_sleep), lambda f: f.coefs("satterthwaite"), args.reps)
    ours["kenward_roger"] = time_first_and_warm(fresh(m_sleep), lambda f: f.coefs("kenward-roger"), args.reps)
    ours["anova_cake_satterthwaite"] = time_first_and_warm(fresh(m_cake), lambda f: f.anova("satterthwaite"),
                                                           args.reps)
    ours["anova_cake_kenward_roger"] = time_first_and_warm(fresh(m_cake), lambda f: f.anova("kenward-roger"),
                                                           args.reps)
    ours["profile"] = time_first_and_warm(fresh(m_sleep), lambda f: f.confint(method="profile"), args.reps)
    fit = m_sleep.fit()
    t0 = time.perf_counter()
    for _ in range(args.reps):
        m_sleep.fit()
    fit_warm = (time.perf_counter() - t0) / args.reps
    ci = fit.confint(method="profile")
    r = r_timings(args.reps)
    rows = []
    print(f"{'task':28s} {'lmm_jax first':>14s} {'lmm_jax warm':>13s} {'R':>9s} {'R / warm':>9s}")
    for key, (first, warm) in ours.items():
        ratio = r[key] / warm if warm > 0 else float("nan")
        rows.append(dict(task=key, lmm_jax_first_s=first, lmm_jax_warm_s=warm, r_s=r[key], ratio=ratio))
        print(f"{key:28s} {first:14.3f} {warm:13.4f} {r[key]:9.3f} {ratio:9.1f}")
    print(f"(sleepstudy fit: lmm_jax warm {fit_warm:.4f} s, lme4 {r['lme4_fit']:.3f} s; profile solved "
          f"{ci.attrs['evaluations']} constrained fits)")
    r_version = subprocess.run(["Rscript", "-e", "cat(R.version.string, as.character(packageVersion('lme4')))"],
                               capture_output=True, text=True).stdout.strip()
    run = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpus=os.cpu_count(),
               loadavg_after=list(os.getloadavg()), reps=args.reps, cache_dir=os.environ.get("LMM_JAX_CACHE_DIR"),
               versions=dict(python=platform.python_version(), jax=jax.__version__, numpy=np.__version__,
                             R_and_lme4=r_version))
    args.json.write_text(json.dumps(dict(run=run, rows=rows, fit_warm=fit_warm, lme4_fit=r["lme4_fit"],
                                         profile_evaluations=ci.attrs["evaluations"]), indent=2))


if __name__ == "__main__":
    main()

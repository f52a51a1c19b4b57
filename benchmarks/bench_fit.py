"""Single-fit timings: lmm_jax beside its peers on the same data, in one run.

    python benchmarks/bench_fit.py [--repeats 7] [--out benchmarks/results_fit.json]

lmm_jax is timed twice: the first call (tracing + XLA compilation + fit) and
warm refits (median of ``repeats``), for a full ``LMM(...).fit()`` (design,
cross-products, optimisation and the result's tables) and for the compiled
optimiser alone. Peers: statsmodels (always), lme4 through Rscript (if
installed; timed inside R so R's start-up is excluded), and the Rust-backed
glmm, lme-python and mixedlm from PyPI (if installed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax

import lmm_jax
from lmm_jax.core.estimates import fit_theta
from lmm_jax.core.parametrization import phi_from_theta, theta_start
from lmm_jax.runtime.scope import float64

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy",
                   dict(sm=("Reaction ~ Days", "Subject", "~Days", None))),
    "Penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin",
                   dict(sm=("diameter ~ 1", "all", None, {"plate": "0 + C(plate)", "sample": "0 + C(sample)"}))),
}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_lmm_jax(formula, data, repeats):
    jax.clear_caches()
    t = time.perf_counter()
    fit = lmm_jax.fit(formula, data)
    _ = fit.coef_table, fit.varcorr
    first = time.perf_counter() - t

    def full():
        f = lmm_jax.fit(formula, data)
        _ = f.coef_table, f.varcorr

    warm = median_time(full, repeats)
    m = lmm_jax.LMM(formula, data)
    phi0, act0 = phi_from_theta(theta_start(m.structure.ks), m.structure.ks)

    def opt():
        with float64():                          # lmm_jax's optimiser alone, outside its entry points
            jax.block_until_ready(fit_theta(m.products, m.response, phi0, act0, m.structure, True))

    opt()
    optimiser = median_time(opt, max(repeats, 20))
    return dict(first_call_s=first, warm_fit_s=warm, warm_optimiser_s=optimiser, loglik=fit.loglik)


def time_statsmodels(spec, data, repeats):
    import statsmodels.formula.api as smf

    fixed, groups, re_formula, vc = spec
    d = data.copy()
    if groups == "all":
        d["all"] = 1

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return smf.mixedlm(fixed, d, groups=groups, re_formula=re_formula, vc_formula=vc).fit(reml=True)

    r = run()
    return dict(warm_fit_s=median_time(run, repeats), loglik=float(r.llf))


def time_lme4(formula, data, repeats):
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "d.csv"
        data.to_csv(csv, index=False)
        script = f"""
suppressPackageStartupMessages(library(lme4))
d <- read.csv("{csv}", stringsAsFactors = TRUE)
f <- {formula}
m <- lmer(f, d, REML = TRUE)
ts <- replicate({repeats}, system.time(lmer(f, d, REML = TRUE))[["elapsed"]])
cat(median(ts), as.numeric(logLik(m)), "\\n")
"""
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return dict(error=out.stderr[-300:])
        t, ll = map(float, out.stdout.split())
        return dict(warm_fit_s=t, loglik=ll)


def time_glmm(formula, data, repeats):
    try:
        import glmm
    except ImportError:
        return None
    f = formula.replace("(Days | Subject)", "(1 + Days | Subject)")
    d = {c: (data[c].to_numpy() if data[c].dtype != object else data[c].astype(str).to_numpy()) for c in data}
    run = lambda: glmm.fit(d, f, reml=True, satterthwaite=False)  # noqa: E731
    r = run()
    ll = getattr(r, "loglik", None) or getattr(r, "log_likelihood", None)
    return dict(warm_fit_s=median_time(run, repeats), loglik=float(ll) if ll is not None else None)


def time_lme_python(formula, data, repeats):
    try:
        import lme_python
        import polars as pl
    except ImportError:
        return None
    d = pl.from_pandas(data)
    run = lambda: lme_python.lmer(formula, d, reml=True)  # noqa: E731
    run()
    return dict(warm_fit_s=median_time(run, repeats))


def time_mixedlm(formula, data, repeats):
    try:
        import mixedlm
    except ImportError:
        return None
    run = lambda: mixedlm.lmer(formula, data, REML=True)  # noqa: E731
    run()
    return dict(warm_fit_s=median_time(run, repeats))


def main(argv=None):
    lmm_jax.runtime.configure()    # the process-wide tuning these benchmarks measure lmm_jax with (docs/performance.md)
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_fit.json")))
    args = ap.parse_args(argv)
    results = {"machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
               "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "cases": {}}
    for name, (formula, dname, extra) in CASES.items():
        data = lmm_jax.datasets.load(dname)
        row = {"lmm_jax": time_lmm_jax(formula, data, args.repeats),
               "statsmodels": time_statsmodels(extra["sm"], data, args.repeats)}
        for peer, fn in (("lme4", time_lme4), ("glmm", time_glmm), ("lme-python", time_lme_python),
                         ("mixedlm", time_mixedlm)):
            try:
                row[peer] = fn(formula, data, args.repeats)
            except Exception as e:  # a peer's failure is reported, not fatal
                row[peer] = dict(error=f"{type(e).__name__}: {e}"[:300])
        results["cases"][name] = row
        print(name, json.dumps(row, indent=1), file=sys.stderr)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(format_markdown(results))


def format_markdown(results):
    lines = [f"Machine: {results['machine']}; jax {results['jax']}; {results['date']}.", "",
             "| data | lmm_jax first call | lmm_jax warm fit | lmm_jax optimiser only | statsmodels | lme4 | glmm | "
             "lme-python | mixedlm |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["cases"].items():
        lj = row["lmm_jax"]
        cells = [name, f"{lj['first_call_s']:.2f} s", f"{lj['warm_fit_s'] * 1e3:.1f} ms",
                 f"{lj['warm_optimiser_s'] * 1e3:.2f} ms"]
        for peer in ("statsmodels", "lme4", "glmm", "lme-python", "mixedlm"):
            r = row.get(peer)
            if not r or "warm_fit_s" not in r:
                cells.append("n/a" if not r else "error")
                continue
            ratio = r["warm_fit_s"] / lj["warm_fit_s"]
            cells.append(f"{r['warm_fit_s'] * 1e3:.1f} ms ({ratio:.2g}x)")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios in brackets: peer's warm time / lmm_jax's warm full fit (>1: lmm_jax is faster).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Latency as users pay it: fresh processes, empty and warm compilation caches, beside lme4 and glmm.

    python benchmarks/bench_latency.py [--repeats 3] [--warm-reps 20] [--instevel] [--out benchmarks/latency_results.json]

Every measurement runs in fresh processes (``sys.executable -c ...``, or a fresh ``Rscript``), started
from a scratch directory so that the *installed* lmm_jax is imported (not a checkout that happens to
be the working directory; set ``PYTHONPATH`` to measure another tree). ``wall`` is the process's
wall time as the parent sees it (interpreter start-up, imports, work, exit); the parts are timed
inside the child with ``time.perf_counter`` (R: ``proc.time()``). Each child gets its own
``LMM_JAX_CACHE_DIR`` (temp dirs, removed at the end) so the user's cache is neither read nor
written; ``JAX_COMPILATION_CACHE_DIR`` and ``LMM_JAX_COMPILATION_CACHE`` are removed from the
children's environment, nothing else is set (no OPENBLAS_NUM_THREADS: latency as a user gets it).
Before the children run, lmm_jax's bytecode is written (``compileall``), as an install writes it.

Measurements (each repeated in ``--repeats`` fresh processes, interleaved: repeat 1 of everything,
then repeat 2, ...; median, min and max reported):
  1 import      ``python -c pass``, ``import jax``, ``import lmm_jax``: wall and in-process import time.
  2 cold        empty cache: import lmm_jax + ``datasets.load("sleepstudy")`` + ``fit("Reaction ~ Days
                + (Days | Subject)")`` + ``.summary()``, each part timed. Peers: ``Rscript -e`` loading
                lme4 + lmerTest, reading the CSV, ``lmer`` + ``print(summary(...))``; a fresh Python
                with glmm (``glmm.fit`` + ``.summary()``, Satterthwaite df as lmerTest's).
  3 warm cache  the same, with the cache the cold sleepstudy process (2) left.
  4 other sizes cache left by sleepstudy only (restored from a saved copy each repeat), fitting 14
                subjects, Days < 8 (112 rows: other shapes, so compiles anew). Peers as in 2, on the subset.
                3 and 4 record how many cache files the process added (its cache misses). They run at
                the cache path of 2 because JAX's cache keys contain the cache directory's path: a
                copy of a full cache elsewhere missed every entry here (see one_repeat).
  5 in-process  warm ``fit(...).summary()`` (and ``fit`` alone), median of ``--warm-reps`` calls after
                one warm-up call, in a fresh process; lme4 + lmerTest timed inside R
                (``system.time`` per call, ``print(summary())`` captured), glmm, statsmodels
                (``smf.mixedlm(...).fit(reml=True).summary()``).
  6 fit_many    50 sleepstudy-derived datasets in 3 shapes (18 subjects x 10 days, 12 x 10, 8 x 7;
                Reaction + N(0, 10^2) noise, seed = dataset index), ``lmm_jax.fit_many`` in a fresh
                process with an empty cache (and a second, warm call in that process); beside a
                statsmodels MixedLM loop and a glmm loop (``satterthwaite=False``) over the same 50.
  7 InstEval    (``--instevel``; slow) empty cache: ``y ~ service + (1|s) + (1|d) + (1|dept:service)``,
                data loaded as ``bench_scale.py`` does; fit and summary timed apart. Peers: fresh
                Rscript lme4 + lmerTest, fresh glmm.
  8 new shapes   a running process that has fitted sleepstudy and printed its summary (empty cache)
                fits and summarizes three new structures, each timed: ``Reaction ~ Days + (1 | Subject)``,
                ``Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)`` (sleepstudy) and ``diameter ~ 1 +
                (1 | plate) + (1 | sample)`` (Penicillin); the headline is the slowest. Peer: the same
                in one R process after its own sleepstudy fit (lme4's built-in data).
  9 GLMM        empty cache: import lmm_jax + ``datasets.load("cbpp")`` + ``fit("incidence/size ~ period +
                (1 | herd)", family="binomial", link=..., weights="size")`` + ``.summary()``, for the logit and
                the probit link. Peer: ``Rscript -e`` loading lme4, ``glmer(cbind(incidence, size -
                incidence) ~ period + (1 | herd), cbpp, binomial(link))`` + ``print(summary(...))``.

A peer that is not installed is reported as missing, one that fails as failed (its error in the
JSON); neither stops the run. The JSON (``--out``) holds every run's raw figures, the summaries
and the machine (CPU model, cores, load average before and after), date and versions (Python,
jax, jaxlib, lmm_jax and where it was imported from, R, lme4, lmerTest, glmm, statsmodels).
``--markdown JSON`` prints the table of an earlier run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"
GLMM_SLEEP_FORMULA = "Reaction ~ Days + (1 + Days | Subject)"   # glmm has no implicit intercept in a bar term
INSTEVAL_FORMULA = "y ~ service + (1|s) + (1|d) + (1|dept:service)"
INSTEVAL_GROUPS = ["s", "d", "dept", "service"]
N_MANY = 50
MANY_SHAPES = [(18, 10), (12, 10), (8, 7)]                      # (subjects, days) of fit_many's 3 shapes
SUBSET = (14, 8)                                                # measurement 4: 14 subjects, Days < 8
INSTEVAL = HERE.parent / "tests" / "reference" / "InstEval.csv.gz"  # bench_scale.INSTEVAL (not imported here: it
                                                                    # sets OPENBLAS_NUM_THREADS, which children inherit)

# -- child programs (kept to what each measures: a child imports nothing it does not time) --------------------------

PY_IMPORT = """
import time, json
t0 = time.perf_counter()
{stmt}
print(json.dumps({{"import_s": time.perf_counter() - t0}}))
"""

# data selection shared by the lmm_jax, glmm and statsmodels children (pandas frame `base` -> frame)
# what every child that reads its settings starts with: cfg is the JSON of its first argument
CHILD_HEAD = """
import time, json, sys, warnings
warnings.simplefilter("ignore")
cfg = json.loads(sys.argv[1])
"""

PY_SUBSET = CHILD_HEAD + """
def subset(base, n_subjects, n_days):
    keep = sorted(base["Subject"].unique())[:n_subjects]
    return base[base["Subject"].isin(keep) & (base["Days"] < n_days)].reset_index(drop=True)
"""

PY_MANY = PY_SUBSET + """
def many(base, n, shapes):
    import numpy as np
    out = []
    for i in range(n):
        d = subset(base, *shapes[i % len(shapes)]).copy()
        d["Reaction"] = d["Reaction"] + np.random.default_rng(i).normal(0.0, 10.0, len(d))
        out.append(d)
    return out
"""

LMM_JAX_FRESH = PY_SUBSET + """
t0 = time.perf_counter()
import lmm_jax
t1 = time.perf_counter()
if cfg["data"] == "insteval":
    import os
    sys.path.insert(0, cfg["benchmarks"])
    blas = os.environ.get("OPENBLAS_NUM_THREADS")
    from bench_scale import insteval_data      # bench_scale's loader (tests/reference/InstEval.csv.gz)
    if blas is None:                           # bench_scale sets it on import; not a setting a user has
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
    data = insteval_data()
else:
    data = lmm_jax.datasets.load("sleepstudy")
    if cfg["subset"]:
        data = subset(data, *cfg["subset"])
t2 = time.perf_counter()
fit = lmm_jax.fit(cfg["formula"], data)
t3 = time.perf_counter()
text = fit.summary()
t4 = time.perf_counter()
print(text)
from lmm_jax.runtime.compilation_cache import own_cache_dir
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, fit_s=t3 - t2, summary_s=t4 - t3, total_s=t4 - t0,
                      objective=float(fit.objective), converged=bool(fit.converged), nobs=len(data),
                      cache_dir=str(own_cache_dir()))))
"""

GLMM_FRESH = PY_SUBSET + """
t0 = time.perf_counter()
import glmm
t1 = time.perf_counter()
import pandas as pd
data = pd.read_csv(cfg["csv"], dtype={g: str for g in cfg["groups"]})
if cfg["subset"]:
    data = subset(data, *cfg["subset"])
t2 = time.perf_counter()
fit = glmm.fit(data, cfg["formula"], reml=True)
t3 = time.perf_counter()
text = fit.summary()
t4 = time.perf_counter()
print(text)
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, fit_s=t3 - t2, summary_s=t4 - t3, total_s=t4 - t0,
                      objective=-2.0 * float(fit.loglik), nobs=len(data))))
"""

R_FRESH = r"""
t0 <- proc.time()[["elapsed"]]
suppressPackageStartupMessages({ library(lme4); library(lmerTest) })
t1 <- proc.time()[["elapsed"]]
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
for (g in strsplit(args[3], ",")[[1]]) d[[g]] <- factor(d[[g]])
n_subj <- as.integer(args[4]); n_days <- as.integer(args[5])
if (n_subj > 0) { keep <- sort(unique(as.character(d$Subject)))[seq_len(n_subj)]
  d <- droplevels(d[as.character(d$Subject) %in% keep & d$Days < n_days, ]) }
t2 <- proc.time()[["elapsed"]]
m <- lmer(as.formula(args[2]), d, REML = TRUE)
t3 <- proc.time()[["elapsed"]]
print(summary(m))
t4 <- proc.time()[["elapsed"]]
cat(sprintf('\n{"import_s": %.4f, "data_s": %.4f, "fit_s": %.4f, "summary_s": %.4f, "total_s": %.4f, "objective": %.10f, "nobs": %d}\n',
    t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, REMLcrit(m), nrow(d)))
"""

GLMM_LINKS = ("logit", "probit")
CBPP_FORMULA = "incidence/size ~ period + (1 | herd)"

LMM_JAX_GLMM_FRESH = CHILD_HEAD + """
t0 = time.perf_counter()
import lmm_jax
t1 = time.perf_counter()
data = lmm_jax.datasets.load("cbpp")
t2 = time.perf_counter()
fit = lmm_jax.fit(cfg["formula"], data, family="binomial", link=cfg["link"], weights="size")
t3 = time.perf_counter()
text = fit.summary()
t4 = time.perf_counter()
print(text)
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, fit_s=t3 - t2, summary_s=t4 - t3, total_s=t4 - t0,
                      objective=float(fit.objective), converged=bool(fit.converged), nobs=len(data))))
"""

R_GLMM_FRESH = r"""
t0 <- proc.time()[["elapsed"]]
suppressPackageStartupMessages(library(lme4))
t1 <- proc.time()[["elapsed"]]
link <- commandArgs(trailingOnly = TRUE)[1]
d <- cbpp
t2 <- proc.time()[["elapsed"]]
m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), d, family = binomial(link = link))
t3 <- proc.time()[["elapsed"]]
print(summary(m))
t4 <- proc.time()[["elapsed"]]
cat(sprintf('\n{"import_s": %.4f, "data_s": %.4f, "fit_s": %.4f, "summary_s": %.4f, "total_s": %.4f, "objective": %.10f, "nobs": %d}\n',
    t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, -2 * as.numeric(logLik(m)), nrow(d)))
"""

# the warm children (measurement 5): HEAD + what each times + TAIL
WARM_HEAD = CHILD_HEAD + """
import statistics
def timed(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)
"""
WARM_TAIL = """
print(json.dumps(dict(fit_summary_s=fs, fit_summary_min_s=fs_min, fit_s=f, fit_min_s=f_min, reps=cfg["reps"])))
"""

NEW_SHAPES = [("intercept", "Reaction ~ Days + (1 | Subject)", "sleepstudy"),
              ("two terms", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", "sleepstudy"),
              ("crossed", "diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin")]

LMM_JAX_NEW_SHAPES = CHILD_HEAD + """
import lmm_jax
data = {name: lmm_jax.datasets.load(name) for name in ("sleepstudy", "Penicillin")}
str(lmm_jax.fit("Reaction ~ Days + (Days | Subject)", data["sleepstudy"]).summary())
out = {}
for label, formula, name in cfg["shapes"]:
    t = time.perf_counter()
    str(lmm_jax.fit(formula, data[name]).summary())
    out[label.replace(" ", "_") + "_s"] = time.perf_counter() - t
out["slowest_s"] = max(out.values())
print(json.dumps(out))
"""

R_NEW_SHAPES = r"""
suppressMessages({library(lme4); library(lmerTest)})
invisible(capture.output(print(summary(lmer(Reaction ~ Days + (Days | Subject), sleepstudy)))))
t <- function(f, d) system.time(capture.output(print(summary(lmer(f, d)))))[["elapsed"]]
a <- t(Reaction ~ Days + (1 | Subject), sleepstudy)
b <- t(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sleepstudy)
c <- t(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin)
cat(sprintf('{"intercept_s": %.4f, "two_terms_s": %.4f, "crossed_s": %.4f, "slowest_s": %.4f}\n', a, b, c, max(a, b, c)))
"""

LMM_JAX_WARM = WARM_HEAD + """
import lmm_jax
data = lmm_jax.datasets.load("sleepstudy")
fs, fs_min = timed(lambda: lmm_jax.fit(cfg["formula"], data).summary(), cfg["reps"])
f, f_min = timed(lambda: lmm_jax.fit(cfg["formula"], data), cfg["reps"])
""" + WARM_TAIL

GLMM_WARM = WARM_HEAD + """
import io, contextlib
import glmm
import pandas as pd
data = pd.read_csv(cfg["csv"], dtype={"Subject": str})
def fit_summary():
    with contextlib.redirect_stdout(io.StringIO()):   # glmm's summary() prints as well as returning the text
        return glmm.fit(data, cfg["formula"], reml=True).summary()
fs, fs_min = timed(fit_summary, cfg["reps"])
f, f_min = timed(lambda: glmm.fit(data, cfg["formula"], reml=True), cfg["reps"])
""" + WARM_TAIL

STATSMODELS_WARM = WARM_HEAD + """
import statsmodels.formula.api as smf
import pandas as pd
data = pd.read_csv(cfg["csv"], dtype={"Subject": str})
fit = lambda: smf.mixedlm("Reaction ~ Days", data, groups="Subject", re_formula="~Days").fit(reml=True)
fs, fs_min = timed(lambda: str(fit().summary()), cfg["reps"])
f, f_min = timed(fit, cfg["reps"])
""" + WARM_TAIL

R_WARM = r"""
suppressPackageStartupMessages({ library(lme4); library(lmerTest) })
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); d$Subject <- factor(d$Subject)
reps <- as.integer(args[2])
f <- Reaction ~ Days + (Days | Subject)
fit_summary <- function() capture.output(print(summary(lmer(f, d, REML = TRUE))))
fit_only <- function() lmer(f, d, REML = TRUE)
timed <- function(g) { g(); replicate(reps, system.time(g())[["elapsed"]]) }
a <- timed(fit_summary); b <- timed(fit_only)
cat(sprintf('{"fit_summary_s": %.5f, "fit_summary_min_s": %.5f, "fit_s": %.5f, "fit_min_s": %.5f, "reps": %d}\n',
    median(a), min(a), median(b), min(b), reps))
"""

LMM_JAX_MANY = PY_MANY + """
t0 = time.perf_counter()
import lmm_jax
t1 = time.perf_counter()
import pandas as pd
datasets = many(pd.read_csv(cfg["csv"], dtype={"Subject": str}), cfg["n"], cfg["shapes"])
t2 = time.perf_counter()
res = lmm_jax.fit_many([(cfg["formula"], d) for d in datasets])
t3 = time.perf_counter()
lmm_jax.fit_many([(cfg["formula"], d) for d in datasets])
t4 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, fit_many_s=t3 - t2, total_s=t3 - t0, fit_many_warm_s=t4 - t3,
                      n=len(res), converged=int(sum(bool(r.converged[0]) for r in res)),
                      objective=[float(r.objective[0]) for r in res])))
"""

STATSMODELS_MANY = PY_MANY + """
t0 = time.perf_counter()
import statsmodels.formula.api as smf
t1 = time.perf_counter()
import pandas as pd
datasets = many(pd.read_csv(cfg["csv"], dtype={"Subject": str}), cfg["n"], cfg["shapes"])
t2 = time.perf_counter()
res = [smf.mixedlm("Reaction ~ Days", d, groups="Subject", re_formula="~Days").fit(reml=True) for d in datasets]
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, loop_s=t3 - t2, total_s=t3 - t0, n=len(res),
                      converged=int(sum(bool(r.converged) for r in res)))))
"""

GLMM_MANY = PY_MANY + """
t0 = time.perf_counter()
import glmm
t1 = time.perf_counter()
import pandas as pd
datasets = many(pd.read_csv(cfg["csv"], dtype={"Subject": str}), cfg["n"], cfg["shapes"])
t2 = time.perf_counter()
res = [glmm.fit(d, cfg["formula"], reml=True, satterthwaite=False) for d in datasets]
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, data_s=t2 - t1, loop_s=t3 - t2, total_s=t3 - t0, n=len(res),
                      converged=int(sum(bool(r.converged) for r in res)),
                      objective=[-2.0 * float(r.loglik) for r in res])))
"""

PY_INFO = """
import json, sys, importlib.metadata as md
import lmm_jax, jax, jaxlib, numpy
lmm_jax.datasets.load("sleepstudy").to_csv(sys.argv[1], index=False)
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps(dict(python=sys.version.split()[0], jax=jax.__version__, jaxlib=jaxlib.__version__,
                      numpy=numpy.__version__, lmm_jax=v("lmm_jax"), lmm_jax_path=lmm_jax.__file__,
                      glmm=v("glmm"), statsmodels=v("statsmodels"), pandas=v("pandas"),
                      device=str(jax.devices()[0]), cpu_compile=lmm_jax.runtime.cpu_compile.state())))
"""

R_INFO = r"""
v <- function(p) if (requireNamespace(p, quietly = TRUE)) as.character(packageVersion(p)) else "missing"
cat(sprintf('{"R": "%s", "lme4": "%s", "lmerTest": "%s"}\n', R.version.string, v("lme4"), v("lmerTest")))
"""


# -- running children ------------------------------------------------------------------------------------------------

class Runner:
    """Starts the children: each from a scratch working directory, with its own cache dir."""

    def __init__(self, scratch: Path, timeout: float):
        self.scratch, self.timeout = scratch, timeout
        self.workdir = scratch / "cwd"
        self.workdir.mkdir()
        self._n = 0

    def new_cache(self, copy_of: Path | None = None) -> Path:
        self._n += 1
        path = self.scratch / f"cache{self._n:03d}"
        if copy_of is None:
            path.mkdir()
        else:
            shutil.copytree(copy_of, path)
        return path

    def env(self, cache: Path | None) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("JAX_COMPILATION_CACHE_DIR", "LMM_JAX_COMPILATION_CACHE", "LMM_JAX_CACHE_DIR")}
        env["LMM_JAX_CACHE_DIR"] = str(cache if cache is not None else self.new_cache())
        return env

    def run(self, argv: list[str], cache: Path | None = None) -> dict:
        """Run one child; its last stdout line that parses as a JSON object, plus ``wall_s``, or ``error``."""
        t = time.perf_counter()
        try:
            r = subprocess.run(argv, cwd=self.workdir, env=self.env(cache), capture_output=True, text=True,
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return dict(error=f"no result in {self.timeout:g} s")
        except OSError as e:
            return dict(error=f"{type(e).__name__}: {e}")
        wall = time.perf_counter() - t
        if r.returncode != 0:
            return dict(error=f"exit {r.returncode}: " + (r.stderr.strip() or r.stdout.strip())[-600:], wall_s=wall)
        for line in reversed(r.stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    out = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out["wall_s"] = wall
                return out
        return dict(error="no JSON line in the output: " + r.stdout[-300:], wall_s=wall)

    def python(self, code: str, cfg: dict | None = None, cache: Path | None = None) -> dict:
        return self.run([sys.executable, "-c", code] + ([json.dumps(cfg)] if cfg is not None else []), cache)

    def rscript(self, code: str, *args: str) -> dict:
        return self.run(["Rscript", "-e", code, *map(str, args)])


def cache_size(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    return dict(cache_files=len(files), cache_mb=sum(p.stat().st_size for p in files) / 1e6)


def peer_status(r_info: dict) -> dict:
    """'ok' or why a peer cannot run (reported as missing; nothing is attempted)."""
    def py(mod):
        return "ok" if importlib.util.find_spec(mod) is not None else f"missing: {mod} not installed"
    if shutil.which("Rscript") is None:
        lme4 = "missing: Rscript not found"
    elif "error" in r_info:
        lme4 = "missing: R failed: " + r_info["error"][:200]
    else:
        gone = [p for p in ("lme4", "lmerTest") if r_info.get(p) == "missing"]
        lme4 = f"missing: R package(s) {', '.join(gone)} not installed" if gone else "ok"
    return {"lme4": lme4, "glmm": py("glmm"), "statsmodels": py("statsmodels")}


# -- the measurements ------------------------------------------------------------------------------------------------

def one_repeat(run: Runner, peers: dict, csv: Path, insteval_csv: Path | None, which: set[int],
               warm_reps: int) -> dict[str, dict[str, dict]]:
    """One fresh-process run of every selected measurement: {measurement: {tool: raw result}}."""
    out: dict[str, dict[str, dict]] = {}

    def peer(name, fn):
        return {"missing": peers[name]} if peers[name] != "ok" else fn()

    if 1 in which:
        out["1 import"] = {
            "python (no import)": run.python(PY_IMPORT.format(stmt="pass")),
            "import jax": run.python(PY_IMPORT.format(stmt="import jax")),
            "import lmm_jax": run.python(PY_IMPORT.format(stmt="import lmm_jax")),
        }

    sleep_cfg = dict(formula=SLEEP_FORMULA, data="sleepstudy", subset=None)
    glmm_cfg = dict(csv=str(csv), formula=GLMM_SLEEP_FORMULA, groups=["Subject"], subset=None)
    if which & {2, 3, 4}:
        # 2, 3 and 4 use one cache path, refilled from a saved copy: JAX's cache keys contain the cache
        # directory's path (jax 0.10: compiler.py puts xla_gpu_per_fusion_autotune_cache_dir, a path
        # under it, into the compile options that cache_key.py hashes, on CPU too), so a copy of a full
        # cache at another path misses every entry.
        live, saved = run.scratch / "cache_sleepstudy", run.scratch / "cache_sleepstudy_saved"
        for p in (live, saved):
            shutil.rmtree(p, ignore_errors=True)
        live.mkdir()
        row = {"lmm_jax": run.python(LMM_JAX_FRESH, sleep_cfg, live)}
        row["lmm_jax"].update(cache_size(live))
        shutil.copytree(live, saved)
        if 2 in which:
            row["lme4 (Rscript)"] = peer("lme4", lambda: run.rscript(R_FRESH, csv, SLEEP_FORMULA, "Subject", 0, 0))
            row["glmm"] = peer("glmm", lambda: run.python(GLMM_FRESH, glmm_cfg))
            out["2 fresh, empty cache"] = row
        if 3 in which:
            r = run.python(LMM_JAX_FRESH, sleep_cfg, live)
            r["new_cache_files"] = cache_size(live)["cache_files"] - row["lmm_jax"].get("cache_files", 0)
            out["3 fresh, cache full"] = {"lmm_jax": r}
        if 4 in which:
            shutil.rmtree(live)
            shutil.copytree(saved, live)
            r = run.python(LMM_JAX_FRESH, dict(sleep_cfg, subset=SUBSET), live)
            r["new_cache_files"] = cache_size(live)["cache_files"] - row["lmm_jax"].get("cache_files", 0)
            out["4 fresh, sleepstudy's cache, 14 x 8 subset"] = {
                "lmm_jax": r,
                "lme4 (Rscript)": peer("lme4", lambda: run.rscript(R_FRESH, csv, SLEEP_FORMULA, "Subject", *SUBSET)),
                "glmm": peer("glmm", lambda: run.python(GLMM_FRESH, dict(glmm_cfg, subset=SUBSET))),
            }

    if 5 in which:
        out["5 warm in-process fit + summary"] = {
            "lmm_jax": run.python(LMM_JAX_WARM, dict(formula=SLEEP_FORMULA, reps=warm_reps)),
            "lme4 (in R)": peer("lme4", lambda: run.rscript(R_WARM, csv, warm_reps)),
            "glmm": peer("glmm", lambda: run.python(GLMM_WARM, dict(csv=str(csv), formula=GLMM_SLEEP_FORMULA,
                                                                     reps=warm_reps))),
            "statsmodels": peer("statsmodels", lambda: run.python(STATSMODELS_WARM, dict(csv=str(csv),
                                                                                         reps=warm_reps))),
        }

    if 6 in which:
        cfg = dict(csv=str(csv), n=N_MANY, shapes=MANY_SHAPES, formula=SLEEP_FORMULA)
        out["6 fit_many, 50 datasets in 3 shapes, empty cache"] = {
            "lmm_jax.fit_many": run.python(LMM_JAX_MANY, cfg),
            "statsmodels loop": peer("statsmodels", lambda: run.python(STATSMODELS_MANY, cfg)),
            "glmm loop": peer("glmm", lambda: run.python(GLMM_MANY, dict(cfg, formula=GLMM_SLEEP_FORMULA))),
        }

    if 7 in which and insteval_csv is not None:
        ie_cfg = dict(formula=INSTEVAL_FORMULA, data="insteval", subset=None, benchmarks=str(HERE))
        out["7 InstEval, fresh, empty cache"] = {
            "lmm_jax": run.python(LMM_JAX_FRESH, ie_cfg),
            "lme4 (Rscript)": peer("lme4", lambda: run.rscript(R_FRESH, insteval_csv, INSTEVAL_FORMULA,
                                                               ",".join(INSTEVAL_GROUPS), 0, 0)),
            "glmm": peer("glmm", lambda: run.python(GLMM_FRESH, dict(csv=str(insteval_csv), formula=INSTEVAL_FORMULA,
                                                                     groups=INSTEVAL_GROUPS, subset=None))),
        }
    if 8 in which:
        out["8 new shapes in a running process"] = {
            "lmm_jax": run.python(LMM_JAX_NEW_SHAPES, dict(shapes=NEW_SHAPES)),
            "lme4 (in R)": peer("lme4", lambda: run.rscript(R_NEW_SHAPES)),
        }
    if 9 in which:
        for link in GLMM_LINKS:
            out[f"9 GLMM cbpp {link}, fresh, empty cache"] = {
                "lmm_jax": run.python(LMM_JAX_GLMM_FRESH, dict(formula=CBPP_FORMULA, link=link)),
                "lme4 glmer (Rscript)": peer("lme4", lambda: run.rscript(R_GLMM_FRESH, link)),
            }
    return out


def summarize(runs: list[dict]) -> dict:
    """Median, min and max of every numeric field over the runs that did not fail."""
    if runs and all("missing" in r for r in runs):
        return {"missing": runs[0]["missing"]}
    ok = [r for r in runs if "error" not in r and "missing" not in r]
    out: dict = {"runs": len(runs), "failed": len(runs) - len(ok)}
    if len(ok) < len(runs):
        out["errors"] = sorted({r["error"] for r in runs if "error" in r})
    for key in (ok[0] if ok else {}):
        vals = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if len(vals) == len(ok):
            out[key] = dict(median=statistics.median(vals), min=min(vals), max=max(vals))
    return out


# -- table -----------------------------------------------------------------------------------------------------------

def _t(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.3g} µs"
    if x < 1.0:
        return f"{x * 1e3:.3g} ms"
    return f"{x:.3g} s" if x < 100 else f"{x:.0f} s"


# the headline figure of each measurement (what a user waits for) and the parts shown beside it
HEADLINE = {"1": "wall_s", "2": "wall_s", "3": "wall_s", "4": "wall_s", "5": "fit_summary_s", "6": "wall_s",
            "7": "wall_s", "8": "slowest_s", "9": "wall_s"}
PARTS = ["import_s", "data_s", "fit_s", "summary_s", "fit_many_s", "fit_many_warm_s", "loop_s", "fit_summary_s",
         "intercept_s", "two_terms_s", "crossed_s"]


def markdown(results: dict) -> str:
    m = results["machine"]
    v = results["versions"]
    lines = [f"Machine: {m['cpu']}, {m['nproc']} cores (load average {m['loadavg_before'][0]:.2f} before, "
             f"{m['loadavg_after'][0]:.2f} after); {results['date']}; repeats {results['repeats']} "
             f"(fresh processes), warm reps {results['warm_reps']}.",
             f"Python {v.get('python')}, jax {v.get('jax')}, lmm_jax {v.get('lmm_jax')} ({v.get('lmm_jax_path')}), "
             f"{v.get('R', 'R missing')}, lme4 {v.get('lme4')}, lmerTest {v.get('lmerTest')}, glmm {v.get('glmm')}, "
             f"statsmodels {v.get('statsmodels')}.", "",
             "| measurement | tool | median | min - max | parts (medians) | note |", "|---|---|---|---|---|---|"]
    for meas, row in results["summary"].items():
        key = HEADLINE[meas.split()[0]]
        for tool, s in row.items():
            if "missing" in s:
                lines.append(f"| {meas} | {tool} | missing | | | {s['missing']} |")
                continue
            if key not in s:
                err = "; ".join(s.get("errors", ["no result"]))[:150].replace("|", "/").replace("\n", " ")
                lines.append(f"| {meas} | {tool} | failed | | | {err} |")
                continue
            h = s[key]
            parts = []
            for p in PARTS:
                if p in s and p != key:
                    parts.append(f"{p[:-2].replace('_', ' ')} {_t(s[p]['median'])}")
            if meas.startswith("1") and "import_s" in s:
                parts = [f"in-process import {_t(s['import_s']['median'])}"]
            if meas.startswith("5") and "fit_s" in s:
                parts = [f"fit alone {_t(s['fit_s']['median'])}"]
            notes = []
            if "converged" in s and "n" in s:
                notes.append(f"{s['converged']['median']:g}/{s['n']['median']:g} converged")
            if "cache_files" in s:
                notes.append(f"cache left: {s['cache_files']['median']:g} files, {s['cache_mb']['median']:.2g} MB")
            if "new_cache_files" in s:
                notes.append(f"{s['new_cache_files']['median']:g} new cache files (misses)")
            if s.get("failed"):
                notes.append(f"{s['failed']} of {s['runs']} runs failed")
            if meas.startswith("5"):
                notes.append("median of in-process calls; min - max over processes")
            elif meas.startswith("8"):
                notes.append("the slowest of the three fit + summary calls")
            else:
                notes.append("process wall")
            lines.append(f"| {meas} | {tool} | {_t(h['median'])} | {_t(h['min'])} - {_t(h['max'])} | "
                         f"{', '.join(parts)} | {'; '.join(notes)} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(cpu=cpu, nproc=nproc, cpu_count=os.cpu_count(), platform=platform.platform(),
                loadavg_before=list(os.getloadavg()))


def compile_bytecode() -> str:
    """Write the bytecode of the lmm_jax the children import (``compileall``), as ``pip install`` does for
    an installed package and a first import does for an editable one: with ``PYTHONDONTWRITEBYTECODE``
    set and no ``__pycache__``, every child would compile lmm_jax's sources anew (jax, scipy and pandas
    have theirs from their install). Returns the package folder compiled."""
    import importlib.util

    spec = importlib.util.find_spec("lmm_jax")
    folder = str(Path(spec.origin).parent) if spec and spec.origin else ""
    if folder:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([sys.executable, "-m", "compileall", "-q", folder], env=env, capture_output=True)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (median, min, max)")
    ap.add_argument("--warm-reps", type=int, default=20, help="in-process calls per process in measurement 5")
    ap.add_argument("--only", default="1,2,3,4,5,6,8,9", help="measurements to run (7 needs --instevel too)")
    ap.add_argument("--instevel", "--insteval", dest="insteval", action="store_true",
                    help="also InstEval's first fit with an empty cache (slow)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a child is given up")
    ap.add_argument("--out", default=str(HERE / "latency_results.json"))
    ap.add_argument("--markdown", metavar="JSON", default=None, help="print the table of an earlier --out and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        results = json.loads(Path(args.markdown).read_text())
        print(markdown(results))
        return results

    which = {int(x) for x in args.only.split(",") if x.strip()}
    if args.insteval:
        which.add(7)
    started = time.time()
    results: dict = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine=machine(), repeats=args.repeats,
                         warm_reps=args.warm_reps, measurements=sorted(which), command=[sys.executable] + sys.argv,
                         env={k: os.environ[k] for k in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "PYTHONPATH",
                                                         "JAX_PLATFORMS") if k in os.environ})
    results["bytecode"] = compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="lmm_jax_latency_") as tmp:
        run = Runner(Path(tmp), args.timeout)
        csv = Path(tmp) / "sleepstudy.csv"
        info = run.run([sys.executable, "-c", PY_INFO, str(csv)])
        if "error" in info:
            sys.exit(f"lmm_jax cannot be imported or sleepstudy loaded in a fresh process: {info['error']}")
        r_info = run.rscript(R_INFO) if shutil.which("Rscript") else {"error": "Rscript not found"}
        results["versions"] = {k: v for k, v in info.items() if k != "wall_s"}
        results["versions"].update({k: v for k, v in r_info.items() if k not in ("wall_s", "error")})
        peers = peer_status(r_info)
        results["peers"] = peers
        insteval_csv = None
        if 7 in which:
            insteval_csv = INSTEVAL if INSTEVAL.exists() else None
            if insteval_csv is None:
                results["insteval"] = f"missing: {INSTEVAL}"
        print(f"peers: {peers}", file=sys.stderr, flush=True)

        raw: dict[str, dict[str, list]] = {}
        for rep in range(args.repeats):
            for meas, row in one_repeat(run, peers, csv, insteval_csv, which, args.warm_reps).items():
                for tool, r in row.items():
                    raw.setdefault(meas, {}).setdefault(tool, []).append(r)
                    brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                             if k not in ("objective", "cache_dir")}
                    print(f"[{rep + 1}/{args.repeats}] {meas} | {tool}: {brief}", file=sys.stderr, flush=True)
        # the cache each lmm_jax child used (lmm_jax's own folder) was the one it was given, not the user's
        for meas, row in raw.items():
            for r in row.get("lmm_jax", []):
                if "cache_dir" in r and not str(r["cache_dir"]).startswith(tmp):
                    r["cache_warning"] = "lmm_jax used a cache outside this run's temp dirs"
    results["raw"] = raw
    results["summary"] = {meas: {tool: summarize(runs) for tool, runs in row.items()} for meas, row in raw.items()}
    results["machine"]["loadavg_after"] = list(os.getloadavg())
    results["elapsed_s"] = time.time() - started
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(markdown(results))
    print(f"\n(raw figures: {args.out}; this run took {results['elapsed_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

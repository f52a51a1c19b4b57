"""What each switch of ``lmm_jax.runtime.configure()`` buys, in fresh processes.

    python benchmarks/bench_configure.py [--repeats 3] [--cases sleepstudy,insteval] [--out benchmarks/configure_results.json]

1. sleepstudy: a fresh process imports lmm_jax, calls ``configure`` with one switch on (or all, or
   none: lmm_jax's default, which changes nothing of the process), fits ``Reaction ~ Days + (Days |
   Subject)`` and prints its summary. "cold": an empty lmm_jax cache folder (``LMM_JAX_CACHE_DIR``,
   a temp dir per run; JAX's own cache, when ``compilation_cache`` is on, lives inside it); "warm": a
   second process with the folder the cold one left. Interleaved repeats, medians.
2. InstEval (in ``--cases``; slower): ``y ~ service + (1|s) + (1|d) + (1|dept:service)``, a fresh
   process per setting and repeat, empty cache: the first fit, then the median of 5 warm refits of the model.

Children start from a scratch directory with ``LMM_JAX_*``, ``XLA_FLAGS``, ``JAX_*``, ``PJRT_NPROC``
and ``OPENBLAS_NUM_THREADS`` removed from their environment; ``PYTHONPATH`` names this checkout.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
INSTEVAL = ROOT / "tests" / "reference" / "InstEval.csv.gz"
SWITCHES = ("cpu_memory", "cpu_compile", "cpu_threads", "compilation_cache")
SETTINGS = {"none": None, **{name: {name: True} for name in SWITCHES}, "all": {}}
WARM = ("none", "compilation_cache", "all")

SLEEPSTUDY = """
import json, sys, time
t0 = time.perf_counter()
import lmm_jax
cfg = json.loads(sys.argv[1])
done = None if cfg is None else lmm_jax.runtime.configure(**{k: cfg.get(k, False) for k in
        ("cpu_memory", "cpu_compile", "cpu_threads", "compilation_cache")} if cfg else {})
t1 = time.perf_counter()
data = lmm_jax.datasets.load("sleepstudy")
fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", data)
t2 = time.perf_counter()
text = fit.summary()
t3 = time.perf_counter()
print(json.dumps({"import_configure_s": t1 - t0, "fit_s": t2 - t1, "summary_s": t3 - t2, "total_s": t3 - t0,
                  "objective": fit.objective, "configured": done}))
"""

# JAX is imported before the timed fit in every row: configure() imports it, and a row without configure()
# would otherwise count JAX's import (about 0.9 s) in its first fit
INSTEVAL_CHILD = """
import json, statistics, sys, time
import jax
import lmm_jax
cfg = json.loads(sys.argv[1])
if cfg is not None:
    lmm_jax.runtime.configure(**{k: cfg.get(k, False) for k in
                                 ("cpu_memory", "cpu_compile", "cpu_threads", "compilation_cache")} if cfg else {})
import pandas as pd
data = pd.read_csv(sys.argv[2], dtype={"s": str, "d": str, "dept": str})
t0 = time.perf_counter()
model = lmm_jax.LMM("y ~ service + (1|s) + (1|d) + (1|dept:service)", data)
fit = model.fit()
first = time.perf_counter() - t0
warm = []
for _ in range(5):
    t = time.perf_counter()
    model.fit()
    warm.append(time.perf_counter() - t)
print(json.dumps({"first_fit_s": first, "warm_fit_s": statistics.median(warm), "warm_all_s": warm,
                  "objective": fit.objective}))
"""


def child_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LMM_JAX_", "XLA_FLAGS", "JAX_", "PJRT_NPROC", "OPENBLAS_NUM_THREADS"))}
    env.update(PYTHONPATH=str(ROOT), LMM_JAX_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    return env


def run(code: str, args: list[str], cache: Path, scratch: Path) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=scratch,
                         env=child_env(cache), timeout=1800, check=False)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        return {"error": out.stderr[-2000:], "wall_s": wall}
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["wall_s"] = wall
    return got


def summarize(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if k.endswith("_s") and isinstance(runs[0][k], float)]
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys if all(k in r for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="sleepstudy", help="comma-separated: sleepstudy, insteval")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "configure_results.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "cwd"
        scratch.mkdir()
        cases = args.cases.split(",")
        for rep in range(args.repeats if "sleepstudy" in cases else 0):
            for name, cfg in SETTINGS.items():
                cache = Path(tmp) / f"{name}-{rep}"
                got = run(SLEEPSTUDY, [json.dumps(cfg)], cache, scratch)
                runs.setdefault(f"sleepstudy cold {name}", []).append(got)
                print(f"repeat {rep} cold {name}: {got.get('total_s', got.get('error'))}", flush=True)
                if name in WARM:
                    got = run(SLEEPSTUDY, [json.dumps(cfg)], cache, scratch)
                    runs.setdefault(f"sleepstudy warm {name}", []).append(got)
                    print(f"repeat {rep} warm {name}: {got.get('total_s', got.get('error'))}", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
        for rep in range(args.repeats if "insteval" in cases else 0):
            for name in ("none", "cpu_memory", "cpu_compile", "cpu_threads", "all"):
                cache = Path(tmp) / f"insteval-{name}-{rep}"
                got = run(INSTEVAL_CHILD, [json.dumps(SETTINGS[name]), str(INSTEVAL)], cache, scratch)
                runs.setdefault(f"insteval {name}", []).append(got)
                print(f"repeat {rep} insteval {name}: {got.get('warm_fit_s', got.get('error'))}", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                          "load_before": load_before, "load_after": os.getloadavg(),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "summary": {k: summarize([r for r in v if "error" not in r]) for k, v in runs.items()
                          if any("error" not in r for r in v)},
              "runs": runs}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for k, v in result["summary"].items():
        print(k, {m: round(s["median"], 3) for m, s in v.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

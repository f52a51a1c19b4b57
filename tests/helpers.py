"""Shared test helpers: lme4 reference fits and their data, fresh interpreters, fit comparisons.

Test modules import these (``from tests.helpers import load_data``); pytest's fixtures live in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
import pandas as pd

import lmm_jax
from lmm_jax import ConvergenceWarning, RankDeficiencyWarning, SingularFitWarning

REF_DIR = Path(__file__).parent / "reference"
ROBUST = REF_DIR / "robust"
CASES = [line.split("\t")[0] for line in (REF_DIR / "cases.tsv").read_text().splitlines()[1:] if line.strip()]
EXTRA_CASES = ["extra/" + line.split("\t")[0] for line in
               (REF_DIR / "extra" / "cases.tsv").read_text().splitlines()[1:] if line.strip()]
SMALL_CASES = [c for c in CASES if c != "insteval_crossed"] + EXTRA_CASES
RTOL = 1e-5        # fixed effects, sigma, variance components against lme4 (relative)
LOGLIK_TOL = 1e-6  # log-likelihood against lme4 (absolute)
# The XLA options conftest.py adds to XLA_FLAGS (before lmm_jax.runtime.configure() appends its own):
# LLVM at -O0, and each module compiled whole (conftest.py says why).
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_parallel_codegen_split_count=1"


def load_reference(case: str) -> dict:
    return json.loads((REF_DIR / f"{case}.json").read_text())


def load_data(name: str) -> pd.DataFrame:
    if name == "InstEval":
        return pd.read_csv(REF_DIR / "InstEval.csv.gz", dtype={"s": str, "d": str, "dept": str})
    return lmm_jax.datasets.load(name)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def run_python(code: str, *, drop: tuple[str, ...] = (), timeout_s: float = 600, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter that imports this lmm_jax (the package root on PYTHONPATH),
    without the environment variables ``drop`` and with ``env`` added; return its last line of JSON.
    A run longer than ``timeout_s`` is killed (``subprocess.TimeoutExpired``)."""
    root = str(Path(lmm_jax.__file__).resolve().parents[1])
    base = {k: v for k, v in os.environ.items() if k not in drop}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                         env={**base, **env}, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def quiet_fit(formula, data, **kwargs) -> lmm_jax.LMMResult:
    """Fit with every lmm_jax warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", SingularFitWarning)
        warnings.simplefilter("error", RankDeficiencyWarning)
        return lmm_jax.fit(formula, data, **kwargs)


def assert_same_fit(a: lmm_jax.LMMResult, b: lmm_jax.LMMResult, rtol: float = 1e-9) -> None:
    assert a.nobs == b.nobs
    np.testing.assert_allclose(a.objective, b.objective, rtol=rtol)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e3 * rtol)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e3 * rtol)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e3 * rtol)


def load_robust(case: str) -> tuple[dict, pd.DataFrame]:
    ref = json.loads((ROBUST / f"{case}.json").read_text())
    return ref, pd.read_csv(ROBUST / f"{case}.csv")



_robust_fits: dict[str, lmm_jax.LMMResult] = {}


def robust_fit(case: str, expect_singular: bool | None = None) -> tuple[dict, lmm_jax.LMMResult]:
    ref, data = load_robust(case)
    if case not in _robust_fits:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _robust_fits[case] = lmm_jax.fit(ref["formula"], data, reml=ref["reml"])
        kinds = {w.category for w in caught}
        assert ConvergenceWarning not in kinds, [str(w.message) for w in caught]
        assert (SingularFitWarning in kinds) == bool(ref["singular"])
    fit = _robust_fits[case]
    assert fit.converged and fit.diagnostics.ok, fit.diagnostics.messages
    assert fit.singular == bool(ref["singular"])
    return ref, fit


def varcomp(fit: lmm_jax.LMMResult) -> np.ndarray:
    """lme4's as.data.frame(VarCorr(fit))$vcov order."""
    return fit.varcorr["vcov"].to_numpy()


def assert_matches_lme4(fit: lmm_jax.LMMResult, ref: dict, varcomp_rtol: float = RTOL) -> None:
    assert list(fit.fixef.index) == ref["beta_names"]
    assert abs(fit.loglik - ref["logLik"]) < LOGLIK_TOL
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=RTOL)
    np.testing.assert_allclose(fit.sigma, ref["sigma"], rtol=RTOL)
    vc_ref = np.asarray(ref["varcomp"], dtype=float)
    np.testing.assert_allclose(varcomp(fit), vc_ref, rtol=varcomp_rtol, atol=1e-12 * np.max(np.abs(vc_ref)))
    assert np.all(np.isfinite(fit.std_errors))


@contextmanager
def count_compilations() -> Iterator[dict[str, int]]:
    """Count JAX's traces of jitted functions and backend compilations in the
    block (a function called at shapes it has seen before adds to neither)."""
    events = {"trace": 0, "compile": 0}
    names = {"/jax/core/compile/jaxpr_trace_duration": "trace",
             "/jax/core/compile/backend_compile_duration": "compile"}

    def listen(event, duration, **_):
        if event in names:
            events[names[event]] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)

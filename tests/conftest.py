"""Shared test helpers: reference fits from lme4 and their data."""

from __future__ import annotations

import json
from pathlib import Path

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

import lmm_jax
from lmm_jax.runtime.scope import float64

# The suite is lmm_jax's own process: it takes the process-wide tuning a user opts into (faster compiles,
# resident scratch memory, JAX's persistent cache). It does not turn on x64 for the process: lmm_jax's entry
# points compute in float64 on their own, and a leak shows as float32 results failing the reference tolerances.
# Tests that call lmm_jax's internals directly run them inside ``with float64():`` (or the ``x64`` fixture).
lmm_jax.runtime.configure()

# Property tests draw the same examples on every run (CI must not fail on a new random draw);
# HYPOTHESIS_PROFILE=explore searches fresh examples, with Hypothesis's example database.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REF_DIR = Path(__file__).parent / "reference"
CASES = [line.split("\t")[0] for line in (REF_DIR / "cases.tsv").read_text().splitlines()[1:] if line.strip()]
EXTRA_CASES = ["extra/" + line.split("\t")[0] for line in
               (REF_DIR / "extra" / "cases.tsv").read_text().splitlines()[1:] if line.strip()]
SMALL_CASES = [c for c in CASES if c != "insteval_crossed"] + EXTRA_CASES


def load_reference(case: str) -> dict:
    return json.loads((REF_DIR / f"{case}.json").read_text())


def load_data(name: str) -> pd.DataFrame:
    if name == "InstEval":
        return pd.read_csv(REF_DIR / "InstEval.csv.gz", dtype={"s": str, "d": str, "dept": str})
    return lmm_jax.datasets.load(name)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.fixture
def x64():
    """JAX's 64-bit types for a test that calls lmm_jax's internals (not entry points) directly."""
    with float64():
        yield


@pytest.fixture(scope="session")
def fits():
    """Fitted results of the small reference cases, fitted once per session."""
    cache: dict[str, lmm_jax.LMMResult] = {}

    def get(case: str):
        if case not in cache:
            ref = load_reference(case)
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
                cache[case] = lmm_jax.fit(ref["formula"], load_data(ref["dataset"]), reml=ref["reml"])
        return cache[case]

    return get

"""pytest's set-up for the suite: the process settings, Hypothesis's profile and the shared fixtures
(helper functions are in tests/helpers.py)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

import lmm_jax
import lmm_jax.runtime.kernel
from lmm_jax.runtime.scope import float64

from tests.helpers import SUITE_XLA_FLAGS, load_data, load_reference, quiet_fit

# The suite is lmm_jax's own process: it takes the process-wide tuning a user opts into (faster compiles,
# resident scratch memory, JAX's persistent cache). It does not turn on x64 for the process: lmm_jax's entry
# points compute in float64 on their own, and a leak shows as float32 results failing the reference tolerances.
# Tests that call lmm_jax's internals directly run them inside ``with float64():`` (or the ``x64`` fixture).
# XLA:CPU's LLVM backend at -O0 as well: the suite's models are small, so compiling is most of its time,
# and -O0 compiles about 40% faster and computes the same numbers (the same HLO; LLVM does not reassociate
# floating point without fast-math). The benchmarks measure the optimised code users run. And each program's
# LLVM module compiled whole rather than split for parallel code generation: the workers keep both cores
# busy, and the split costs about 5% more CPU (the same code, cut in pieces).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()
# The processes the suite starts (notebook kernels, fresh interpreters) run with one OpenBLAS thread: they do not
# call configure(), and OpenBLAS's workers spin after each call and take the core the other xdist worker needs
# (notebook 03 beside one CPU-bound process: 33.8 s and 32 CPU s with OpenBLAS's default threads, 19.0 s and
# 17.9 CPU s with one). Tests of the thread settings themselves start their processes without it.
if not any(name in os.environ for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")):
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
lmm_jax.runtime.configure()
# A fit compiles its summary's kernels (fit_many its t tests) beside the Newton loop when the machine has a
# spare core; the suite's workers (pytest -n 2 on 2 cores) have none, and most tests never ask for a summary:
# here those kernels compile when a test first needs them (fresh processes the tests start still compile them ahead).
lmm_jax.runtime.kernel.SPARE_CORES = False

# Property tests draw the same examples on every run (CI must not fail on a new random draw);
# HYPOTHESIS_PROFILE=explore searches fresh examples, with Hypothesis's example database.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The notebooks' work unit (their file under --dist loadfile, their xdist group under loadgroup) runs after the tests
# of the package's layers (tests/<layer>/), whose kernels it then loads from the suite's cache instead of compiling
# them (the five notebooks, 2 cores: 85 s with an empty cache, 59 s after those tests), and before the top-level
# modules, about 100 s of tests left for the other worker meanwhile. pytest-xdist would otherwise hand out its
# largest work unit, the notebooks, first.
NOTEBOOKS_MODULE = "test_notebooks.py"


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):      # pytest-xdist: work units in the order collected
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    notebooks = [item for item in items if item.path.name == NOTEBOOKS_MODULE]
    if not notebooks:
        return
    rest = [item for item in items if item.path.name != NOTEBOOKS_MODULE]
    tests_dir = notebooks[0].path.parent
    top_level = next((i for i, item in enumerate(rest) if item.path.parent == tests_dir), len(rest))
    items[:] = rest[:top_level] + notebooks + rest[top_level:]


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
                cache[case] = lmm_jax.fit(ref["formula"], load_data(ref["dataset"]), reml=ref["reml"])
        return cache[case]

    return get


@pytest.fixture(scope="session")
def sleepstudy_fit() -> lmm_jax.LMMResult:
    """lme4's sleepstudy model, ``Reaction ~ Days + (Days | Subject)`` by REML."""
    return lmm_jax.fit("Reaction ~ Days + (Days | Subject)", load_data("sleepstudy"))


@pytest.fixture(scope="session")
def frame() -> pd.DataFrame:
    """80 rows, 8 groups of 10, y = 1 + 0.5 x + group effect + noise."""
    rng = np.random.default_rng(20261122)
    g = np.repeat(np.arange(8), 10)
    x = rng.normal(size=80)
    y = 1.0 + 0.5 * x + rng.normal(size=8)[g] + rng.normal(size=80)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})


@pytest.fixture(scope="session")
def base_fit(frame) -> lmm_jax.LMMResult:
    """``y ~ x + (1 | g)`` on :func:`frame`, with no warning."""
    return quiet_fit("y ~ x + (1 | g)", frame)

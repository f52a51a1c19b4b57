"""lmm_jax.runtime.cpu_threads: with configure(), single-threaded LAPACK, and XLA's pool capped by LMM_JAX_CPU_THREADS.

Each case runs in a fresh Python process: XLA sizes its pool when JAX's
backends start, and OpenBLAS reads its environment when it loads, both long
done in the test process.
"""

import sys

import pytest

from tests.helpers import run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/task and /proc/self/maps")

# a crossed design with a 200-column dense block, which the fit factors with LAPACK (dpotrf): the number
# of XLA pool threads, the LAPACK library's thread count and the deviance
PROBE = """
import json, os
import numpy as np, pandas as pd
import warnings
import lmm_jax
with warnings.catch_warnings():
    warnings.simplefilter("ignore", lmm_jax.ConfigurationWarning)   # the test that starts JAX first expects one
    done = lmm_jax.runtime.configure()["cpu_threads"]
rng = np.random.default_rng(2)
a, b = rng.integers(0, 500, 20000), rng.integers(0, 200, 20000)
y = 0.8 * rng.normal(size=500)[a] + 0.5 * rng.normal(size=200)[b] + rng.normal(size=20000)
fit = lmm_jax.LMM("y ~ 1 + (1|A) + (1|B)", pd.DataFrame({"y": y, "A": a, "B": b})).fit()
tasks = os.listdir("/proc/self/task")
pool = sum(open(f"/proc/self/task/{t}/comm").read().strip() == "tf_XLAEigen" for t in tasks)
lapack = lmm_jax.runtime.openblas.lapack_library()
blas = lapack[2]() if lapack else None
print(json.dumps({"state": lmm_jax.runtime.cpu_threads.state(), "done": done, "pjrt_nproc": os.environ.get("PJRT_NPROC"),
                  "pool": pool, "blas": blas, "cpus": len(os.sched_getaffinity(0)), "deviance": fit.deviance}))
"""


def _run(code: str, **env) -> dict:
    return run_python(code, drop=("LMM_JAX_CPU_THREADS", "PJRT_NPROC", "NPROC", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                  "OMP_NUM_THREADS"), JAX_PLATFORMS="cpu", **env)


def test_lapack_single_threaded_and_the_pool_capped_with_the_same_fit():
    auto = _run(PROBE)
    one = _run(PROBE, LMM_JAX_CPU_THREADS="1")
    off = _run(PROBE, LMM_JAX_CPU_THREADS="default")
    if auto["blas"] is None:
        pytest.skip("scipy's LAPACK here is not the OpenBLAS of scipy's wheels")
    assert auto["state"]["lapack"]["single_threaded"] is True and auto["blas"] == 1
    assert auto["state"]["xla"]["threads"] is None and auto["pjrt_nproc"] is None
    assert auto["pool"] == auto["cpus"]                                 # XLA's default: one thread per core
    assert one["state"] == {"lapack": auto["state"]["lapack"], "xla": {"threads": 1, "reason": ""}}
    assert one["pjrt_nproc"] == "1" and one["pool"] == 1 and one["blas"] == 1
    assert off["done"]["lapack"] == {"single_threaded": False, "reason": "LMM_JAX_CPU_THREADS=default",
                                     "library": None}
    assert off["pool"] == off["cpus"] and (off["blas"] > 1 or off["cpus"] == 1)   # XLA's and OpenBLAS's defaults
    assert one["deviance"] == pytest.approx(auto["deviance"], rel=1e-12, abs=0)
    assert off["deviance"] == pytest.approx(auto["deviance"], rel=1e-10, abs=0)


def test_the_users_thread_settings_stand():
    got = _run(PROBE, LMM_JAX_CPU_THREADS="1", OPENBLAS_NUM_THREADS="2", PJRT_NPROC="2")
    assert got["state"]["lapack"]["single_threaded"] is False
    assert got["state"]["lapack"]["reason"] == "OPENBLAS_NUM_THREADS is set: left as the user chose"
    assert got["state"]["xla"] == {"threads": None, "reason": "PJRT_NPROC is set: left as the user chose"}
    assert got["pjrt_nproc"] == "2" and got["pool"] == 2
    if got["blas"] is not None:
        assert got["blas"] == min(2, got["cpus"])


def test_pool_left_alone_once_backends_have_started():
    got = _run("import jax; jax.devices()\n" + PROBE, LMM_JAX_CPU_THREADS="1")
    assert got["state"]["xla"] == {"threads": None,
                                   "reason": "JAX's backends had started before lmm_jax.runtime.configure() was called"}
    assert got["pjrt_nproc"] is None and got["pool"] == got["cpus"]

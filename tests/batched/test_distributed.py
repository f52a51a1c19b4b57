"""Work split across processes (lmm_jax.batched.distributed): two local CPU processes joined by
``jax.distributed.initialize`` (gloo collectives) return the bootstrap (with a statistic), the power
simulation and power curve, the parametric-bootstrap LRT and the fit_many fits of one process, bit
for bit, each doing half the work.

The workers are fresh interpreters running :func:`compute` (``python -c``); the parent runs it too,
in one process, and compares. Every run uses the process tuning of the suite (conftest.py:
``lmm_jax.runtime.configure()``), so the three processes compile the same code. The workers compile
everything (JAX's persistent cache does not serve CPU executables across processes): 48 s for the
test on 2 cores with the parent's kernels cached, 65 s without."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import lmm_jax

FORMULA = "Reaction ~ Days + (Days | Subject)"
PARAMS = {"beta": {"(Intercept)": 250.0, "Days": 3.0}, "sd_(Intercept)|Subject": 25.0, "sd_Days|Subject": 6.0,
          "cor_Days.(Intercept)|Subject": 0.1, "sigma": 25.0}
TIMEOUT = 240   # seconds for the two workers together: a hang fails the test instead of blocking the suite
WORKER = """
import sys
import jax
import lmm_jax
lmm_jax.runtime.configure()
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                           initialization_timeout=60)
from tests.batched.test_distributed import compute, save
save(compute(), sys.argv[3])
jax.distributed.shutdown()
"""


def slope_t(e: lmm_jax.Estimates):
    """A bootstrap statistic: the slope's t value."""
    return e.beta[1] / e.vcov[1, 1] ** 0.5


def compute() -> dict[str, np.ndarray]:
    """sleepstudy's ML fit bootstrapped (64 replicates in 4 chunks of 16) with its intervals and a
    statistic, the power of its slope's t test (32 simulations in 2 chunks) and a power curve
    (2 sizes of one chunk), a parametric-bootstrap LRT against
    random intercepts (2 chunks; its large model's refits share the power's compiled fit), and
    fit_many of 4 datasets in 2 calls: every number, and which process computed what."""
    sleep = lmm_jax.datasets.load("sleepstudy")
    large = lmm_jax.fit(FORMULA, sleep, reml=False)
    small = lmm_jax.fit("Reaction ~ Days + (1 | Subject)", sleep, reml=False)
    boot = large.bootstrap(64, key=1, chunk_size=16, statistic=slope_t)
    params = {**PARAMS, "beta": [250.0, 1.0]}
    pw = lmm_jax.power(large, "Days", n=32, key=3, params=params, reml=False, ddf="none", chunk_size=16)
    curve = lmm_jax.power_curve(large, "Days", along="Subject", sizes=[18, 18], n=16, key=4, params=params,
                                reml=False, ddf="none", chunk_size=16)     # 18 subjects: the power's shapes
    pb = lmm_jax.pb_modcomp(large, small, n=32, key=5, chunk_size=16)
    subjects = sleep["Subject"].astype(str).unique()
    specs = [("Reaction ~ Days + (1 | Subject)", sleep[sleep["Subject"].astype(str).isin(subjects[i::4])])
             for i in range(4)]
    many = lmm_jax.fit_many(specs, chunk_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        large.bootstrap(16, key=2, chunk_size=16)          # one chunk: a second process has nothing to do
    idle = [str(w.message) for w in caught if "nothing to do" in str(w.message)]
    r = boot.replicates
    return {"boot_theta": r.theta, "boot_beta": r.beta, "boot_sigma": r.sigma, "boot_objective": r.objective,
            "boot_converged": r.converged, "boot_iterations": r.iterations, "boot_process": r.process,
            "boot_ci": boot.confint().to_numpy(), "boot_t": boot.statistic, "boot_t0": boot.statistic_estimate,
            "curve": curve.to_numpy(dtype=float), "power_p": pw.p_values, "power_t": pw.statistic,
            "power": np.asarray([pw.power]), "power_process": pw.process,
            "pb_reference": pb.reference, "pb_p": np.asarray([pb.p_value]), "pb_process": pb.large_refits.process,
            "many_theta": np.concatenate([m.theta for m in many]), "many_beta": np.concatenate([m.beta for m in many]),
            "many_df": np.concatenate([m.df for m in many]), "many_process": np.concatenate([m.process for m in many]),
            "idle_process": np.asarray([len(idle) == 1 and "chunk_size=8 or less" in idle[0]])}


def save(arrays: dict[str, np.ndarray], path: str) -> None:
    np.savez(path, **arrays)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_return_one_process_numbers(tmp_path):
    """The three processes compute the same numbers to the last bit; each worker computed half
    of the replicates, simulations and fits (whole chunks, round-robin)."""
    one = compute()
    root = str(Path(lmm_jax.__file__).resolve().parents[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    address = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(tmp_path / f"p{i}.npz")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
             for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=max(1.0, TIMEOUT - (time.perf_counter() - t0))) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    for i in (0, 1):
        with np.load(tmp_path / f"p{i}.npz") as z:
            got = dict(z)
        assert set(got) == set(one)
        for name, v in one.items():
            if not name.endswith("process"):
                assert got[name].dtype == v.dtype and got[name].shape == v.shape, name
                assert got[name].tobytes() == v.tobytes(), (name, got[name], v)          # bit for bit
        for name in ("boot_process", "power_process", "pb_process", "many_process", "idle_process"):
            assert not np.any(one[name])
        assert got["idle_process"][0]
        np.testing.assert_array_equal(got["boot_process"], np.repeat([0, 1, 0, 1], 16))
        np.testing.assert_array_equal(got["power_process"], np.repeat([0, 1], 16))
        np.testing.assert_array_equal(got["pb_process"], np.repeat([0, 1], 16))
        np.testing.assert_array_equal(got["many_process"], [0, 0, 1, 1])


def test_units_go_to_the_least_loaded_process(monkeypatch):
    """Longest-processing-time assignment: equal chunks round-robin, unequal ones largest first to
    the least loaded process; fewer units than processes warn with the caller's hint."""
    from lmm_jax.batched import distributed

    assert distributed.owners([16] * 5).tolist() == [0] * 5          # one process: everything here
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 3)
    assert distributed.owners([16] * 5).tolist() == [0, 1, 2, 0, 1]
    assert distributed.owners([5, 1, 1, 3]).tolist() == [0, 2, 2, 1]
    with pytest.warns(UserWarning, match=r"1 unit\(s\) of work .* for 3 processes: 2 of them .* Pass chunk_size"):
        assert distributed.owners([64], "a bootstrap", "Pass chunk_size=16.").tolist() == [0]

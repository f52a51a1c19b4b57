"""Importing and using lmm_jax leaves the user's JAX process as the user set it.

lmm_jax computes in float64 inside its own entry points (:mod:`lmm_jax.runtime.scope`); process-wide
tuning happens only through ``lmm_jax.runtime.configure()``. The first test runs a user's program in
a fresh interpreter (x64 off, XLA flags, a compilation cache and OpenBLAS threads of the user's own)
and compares everything lmm_jax used to change before and after ``import lmm_jax`` and a fit, its
summary, a bootstrap and ``fit_many`` (of sleepstudy's random-intercept model: the process compiles
every kernel it runs, and this reference fit compiles in two thirds of the time of the random slope's).
The others run in the suite's process, whose JAX does not have x64 on either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.runtime import cpu_compile, scope

from tests.helpers import load_reference

FORMULA = "Reaction ~ Days + (Days | Subject)"
# The user's own XLA flags, among them XLA:CPU's older fusion emitters set by hand (what configure() would
# add): the program compiles every kernel it runs, about 40% faster with them.
USER_XLA_FLAGS = f"--xla_cpu_enable_fast_math=false {cpu_compile.FLAG}"

USER_PROGRAM = """
import ctypes, json, os, sys
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])          # the user's own cache, and its threshold
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
import scipy.linalg                                                   # the user's scipy, with OpenBLAS's threads


def blas_threads():
    with open("/proc/self/maps") as f:
        paths = sorted({l.split(None, 5)[-1].strip() for l in f if "openblas" in l.lower() and "/" in l})
    for p in paths:
        get = getattr(ctypes.CDLL(p), "scipy_openblas_get_num_threads", None)
        if get is not None:
            return get()
    return None


def state():
    return {"x64": jax.config.jax_enable_x64, "async_dispatch": jax.config.read("jax_cpu_enable_async_dispatch"),
            "cache_dir": jax.config.jax_compilation_cache_dir,
            "min_compile_secs": jax.config.jax_persistent_cache_min_compile_time_secs,
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("XLA", "JAX", "PJRT", "NPROC", "OPENBLAS", "OMP", "TF_"))},
            "blas_threads": blas_threads()}


before = state()
import lmm_jax
after_import = state()
import jax.numpy as jnp
mine = jax.jit(lambda x: x * 2.0 + 1.0)
before_dtype = [str(jnp.ones(1).dtype), str(mine(jnp.ones(3)).dtype)]

d = lmm_jax.datasets.load("sleepstudy")
fit = lmm_jax.fit("Reaction ~ Days + (1 | Subject)", d)
text = fit.summary()
boot = fit.bootstrap(20)
many = lmm_jax.fit_many([("Reaction ~ Days + (1 | Subject)", d)])
after = state()
after_dtype = [str(jnp.ones(1).dtype), str(mine(jnp.ones(3)).dtype)]
print(json.dumps({"before": before, "after_import": after_import, "after": after, "before_dtype": before_dtype,
                  "after_dtype": after_dtype, "loglik": fit.loglik, "reml": fit.reml_criterion,
                  "theta": fit.theta.tolist(), "beta": fit.beta.tolist(), "sigma": fit.sigma,
                  "summary": text, "boot_ok": int(boot.replicates.ok.sum()),
                  "boot_dtype": str(boot.replicates.theta.dtype), "many": float(many[0].objective[0]),
                  "configured": lmm_jax.runtime.configured(),
                  "cpu_memory": lmm_jax.runtime.cpu_memory.state()}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads OpenBLAS's thread count through /proc/self/maps")
def test_importing_and_fitting_leave_the_users_jax_as_it_was(tmp_path):
    ref = load_reference("sleepstudy_intercept")
    root = str(Path(lmm_jax.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LMM_JAX_", "XLA_", "JAX_", "PJRT", "NPROC", "OPENBLAS_", "OMP_", "GOTO_"))}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               XLA_FLAGS=USER_XLA_FLAGS, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu",
               LMM_JAX_CACHE_DIR=str(tmp_path / "lmm_jax"))
    out = subprocess.run([sys.executable, "-c", USER_PROGRAM, str(tmp_path / "users_cache")], capture_output=True,
                         text=True, timeout=900, env=env, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])

    assert got["before"]["x64"] is False and got["before"]["env"]["XLA_FLAGS"] == USER_XLA_FLAGS
    assert got["after_import"] == got["before"]             # import: nothing
    assert got["after"] == got["before"]                    # fit, summary, bootstrap, fit_many: nothing
    assert got["before_dtype"] == got["after_dtype"] == ["float32", "float32"]
    assert got["configured"] == {} and got["cpu_memory"]["enabled"] is False
    # ... while lmm_jax computed in float64: lme4's numbers
    assert got["loglik"] == pytest.approx(ref["logLik"], rel=1e-6, abs=0)
    assert got["reml"] == pytest.approx(ref["reml_criterion"], rel=1e-6, abs=0)
    assert round(got["loglik"], 4) == -893.2325 and "REML criterion at convergence: 1786.4651" in got["summary"]
    np.testing.assert_allclose(got["theta"], ref["theta"], rtol=1e-5)
    np.testing.assert_allclose(got["beta"], ref["beta"], rtol=1e-6)
    assert got["many"] == pytest.approx(ref["reml_criterion"], rel=1e-6, abs=0)
    assert got["boot_ok"] == 20 and got["boot_dtype"] == "float64"
    # lmm_jax's own kernels went to its own folder, not to the user's JAX cache settings
    assert (tmp_path / "lmm_jax" / "export").is_dir()


@pytest.mark.parametrize("users_x64", [False, True])
def test_a_users_x64_block_gets_float64_results_and_keeps_its_setting(fits, users_x64):
    ref = load_reference("sleepstudy_reml")
    d = lmm_jax.datasets.load("sleepstudy")
    with jax.enable_x64(users_x64):
        fit = lmm_jax.fit(FORMULA, d)
        table = fit.coef_table
        Y = lmm_jax.simulate(fit, 4, key=3)
        batch = fit.model.fit_batch(Y)                      # lmm_jax's own float64 array, taken as it is
        assert jax.config.jax_enable_x64 is users_x64
        assert jnp.ones(1).dtype == (np.float64 if users_x64 else np.float32)
    assert fit.objective == pytest.approx(ref["reml_criterion"], rel=1e-10, abs=0)
    assert fit.objective == pytest.approx(fits("sleepstudy_reml").objective, rel=1e-12, abs=0)
    np.testing.assert_allclose(table["df"], ref["df_satterthwaite"], rtol=1e-6)
    assert Y.dtype == np.float64 and batch.theta.dtype == np.float64
    np.testing.assert_allclose(np.asarray(Y), np.asarray(lmm_jax.simulate(fit, 4, key=3)), rtol=0, atol=0)


def test_simulated_chunks_are_float64_outside_x64(fits):
    fit = fits("sleepstudy_reml")
    chunks = list(lmm_jax.simulate(fit, 5, key=1, chunk_size=2))   # a generator: each step runs in the scope
    assert [c.shape[1] for c in chunks] == [2, 2, 1] and all(c.dtype == np.float64 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([np.asarray(c) for c in chunks], axis=1),
                                  np.asarray(lmm_jax.simulate(fit, 5, key=1)))


def test_make_deviance_needs_float64_and_says_so(fits):
    fit = fits("sleepstudy_reml")
    f = lmm_jax.make_deviance(fit.model, param="theta")
    with pytest.raises(lmm_jax.PrecisionError, match="jax.enable_x64"):
        jax.jit(f)(jnp.asarray(fit.theta))                  # traced in float32 in a process without x64
    with pytest.raises(lmm_jax.PrecisionError, match="float32"):
        with jax.enable_x64(True):
            f(jnp.asarray(fit.theta, dtype=jnp.float32))
    with jax.enable_x64(True):
        value = float(jax.jit(f)(jnp.asarray(fit.theta)))  # the user's jit, in the user's x64 block
    assert value == pytest.approx(fit.objective, rel=1e-12)


@pytest.mark.skipif(scope.x64_enabled(), reason="x64 is on for the whole process: lmm_jax needs no switch")
def test_without_a_scoped_x64_switch_lmm_jax_raises_rather_than_fit_in_float32(monkeypatch):
    monkeypatch.setattr(scope, "_SWITCH", None)
    with pytest.raises(lmm_jax.PrecisionError, match="jax_enable_x64"):
        lmm_jax.fit(FORMULA, lmm_jax.datasets.load("sleepstudy"))


def test_every_public_callable_is_an_entry_point():
    from lmm_jax.batched.batch import BatchResult
    from lmm_jax.batched.bootstrap import BootstrapResult
    from lmm_jax.inference.emmeans import EMMeans

    for cls in (lmm_jax.LMM, lmm_jax.LMMResult, BatchResult, BootstrapResult, EMMeans):
        for name, attr in vars(cls).items():
            if name.startswith("_") and name not in scope.DUNDERS:
                continue
            fn = getattr(attr, "fget", None) or getattr(attr, "func", None) or getattr(attr, "__func__", attr)
            if callable(fn):
                assert getattr(fn, "__lmm_jax_entry_point__", False), f"{cls.__name__}.{name}"
    import lmm_jax.inference as inference
    from lmm_jax import plotting
    from lmm_jax.inference import predict, profile
    from lmm_jax.report import cli

    functions = [lmm_jax.fit, lmm_jax.fit_many, lmm_jax.make_deviance, lmm_jax.simulate, lmm_jax.anova,
                 lmm_jax.emmeans, predict.predict, profile.profile_confint, profile.profile_zeta, cli.main]
    functions += [getattr(inference, n) for n in inference._TESTS if n != "normalize_ddf"]
    functions += [getattr(plotting, n) for n in plotting.__all__]
    for fn in functions:
        assert getattr(fn, "__lmm_jax_entry_point__", False), fn.__qualname__


def test_configure_reports_and_repeats_without_changing_anything():
    first = lmm_jax.runtime.configured()                    # what conftest's configure() did
    assert set(first) == {"cpu_memory", "cpu_compile", "cpu_threads", "compilation_cache"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = lmm_jax.runtime.configure()                 # applied already: no warning, the same report
    assert again == first == lmm_jax.runtime.configured()
    with pytest.raises(ValueError, match="positive number of threads"):
        lmm_jax.runtime.configure(cpu_threads=0)

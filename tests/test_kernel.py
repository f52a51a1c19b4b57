"""Kernels kept on disk in exported form (lmm_jax/runtime/kernel.py).

Each check runs fits in fresh processes sharing one cache directory: the
first exports the kernels, the second runs them without tracing their
Python, a corrupt entry is rebuilt, and the numbers never change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import lmm_jax
from lmm_jax.runtime.kernel import Kernel
from lmm_jax.core.estimates import deviance_at

FIT_SCRIPT = textwrap.dedent("""
    import json, sys
    import lmm_jax
    from lmm_jax.core import estimates, start
    from lmm_jax.inference import satterthwaite
    from lmm_jax.runtime import kernel

    traced = []
    kernels = [k for mod in (estimates, satterthwaite, start) for k in vars(mod).values() if isinstance(k, kernel.Kernel)]
    for k in kernels:
        k.fun = (lambda f: lambda *a, **kw: (traced.append(f.__name__), f(*a, **kw))[1])(k.fun)
    d = lmm_jax.datasets.load("sleepstudy")
    r = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", d)
    ct = r.coef_table
    print(json.dumps({"traced": sorted(set(traced)), "objective": r.objective, "theta": r.theta.tolist(),
                      "df": ct["df"].tolist(), "se": r.varcomp_se.tolist()}))
""")


def run_fit(cache_dir) -> dict:
    env = dict(os.environ, LMM_JAX_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", FIT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_process_runs_exported_kernels_without_tracing_them(tmp_path):
    first = run_fit(tmp_path)
    assert {"fit_and_estimate", "moment_theta", "varpar_hessian", "vcov_beta_jacobian"} <= set(first["traced"])
    entries = sorted((tmp_path / "export").glob("*.bin"))
    assert len(entries) >= 4
    second = run_fit(tmp_path)
    assert second["traced"] == []
    for key in ("objective", "theta", "df", "se"):
        np.testing.assert_allclose(second[key], first[key], rtol=1e-13, atol=0)
    # corrupt entries are ignored and rewritten; the fit is the same
    for path in entries:
        path.write_bytes(b"not an exported module")
    third = run_fit(tmp_path)
    assert set(third["traced"]) == set(first["traced"])
    np.testing.assert_allclose(third["objective"], first["objective"], rtol=1e-13)
    for path in entries:                            # rewritten: each is an exported module again
        assert jax.export.deserialize(bytearray(path.read_bytes())).fun_name


def test_without_the_cache_nothing_is_written(tmp_path):
    env = dict(os.environ, LMM_JAX_CACHE_DIR=str(tmp_path), LMM_JAX_COMPILATION_CACHE="0")
    code = "import lmm_jax; lmm_jax.fit('Reaction ~ Days + (Days | Subject)', lmm_jax.datasets.load('sleepstudy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "export").exists()


def test_inside_a_trace_a_kernel_is_its_jitted_function():
    m = lmm_jax.LMM("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
    pad = m.padded
    assert isinstance(deviance_at, Kernel)
    thetas = jnp.asarray([[1.0, 0.1, 0.2], [0.9, 0.0, 0.3]])
    batched = jax.vmap(lambda th: deviance_at(th, pad.products, pad.response, pad.structure, True))(thetas)
    one_by_one = [float(deviance_at(th, pad.products, pad.response, pad.structure, True)) for th in thetas]
    np.testing.assert_allclose(np.asarray(batched), one_by_one, rtol=1e-12)
    g = jax.grad(lambda th: deviance_at(th, pad.products, pad.response, pad.structure, True))(thetas[0])
    assert np.all(np.isfinite(np.asarray(g)))


def test_prepare_compiles_ahead_on_a_thread_and_the_call_uses_it(tmp_path, monkeypatch):
    from lmm_jax.runtime import kernel as kernel_module
    from lmm_jax.runtime.kernel import kernel

    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)   # an empty store: the first build traces

    builds = []

    @kernel(static_argnames=("scale",))
    def scaled_sum(x, y, scale):
        builds.append(x.shape)                      # runs once per trace
        return scale * jnp.sum(x * y)

    x, y = np.arange(5.0), np.ones(5)
    scaled_sum.prepare(jax.ShapeDtypeStruct((5,), np.float64), y, scale=2.0)
    assert float(scaled_sum(x, y, scale=2.0)) == 20.0
    assert float(scaled_sum(x + 1, y, scale=2.0)) == 30.0
    assert len(builds) == 1                         # the prepared build served both calls
    assert float(scaled_sum(x, y, scale=3.0)) == 30.0 and len(builds) == 2   # another static: another build
    with np.testing.assert_raises(TypeError):       # a bad call raises at the call, and is not cached
        scaled_sum(x, np.ones(4), scale=2.0)
    with np.testing.assert_raises(TypeError):
        scaled_sum(x, np.ones(4), scale=2.0)

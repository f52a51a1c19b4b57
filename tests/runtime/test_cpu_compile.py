"""lmm_jax.runtime.cpu_compile: with configure(), XLA:CPU compiles fusions with its older emitters.

Each case runs in a fresh Python process: XLA reads ``XLA_FLAGS`` when JAX's
backends start, which in the test process they long have. The processes that
fit start from the suite's XLA options (conftest.py) and share its cache folder:
with the flag appended, their ``XLA_FLAGS`` are the suite's own, so the fit
loads the kernels the suite compiled.
"""

import pytest

from lmm_jax.runtime.cpu_compile import FLAG

from tests.helpers import SUITE_XLA_FLAGS, run_python

# the compiled (optimised) HLO of a segment sum and a cumulative sum differs between XLA:CPU's two
# fusion code generators, so it shows whether the flag reached the compiler; and a small fit's deviance
PROBE = """
import json, os
import warnings
import jax, jax.numpy as jnp
import lmm_jax
with warnings.catch_warnings(record=True) as warned:
    warnings.simplefilter("always")
    done = lmm_jax.runtime.configure()["cpu_compile"]
f = lambda x, i: jax.ops.segment_sum(jnp.sin(x) * x, i, num_segments=10).sum() + jnp.cumsum(x)[-1]
hlo = jax.jit(f).lower(jnp.ones(1000), jnp.zeros(1000, jnp.int32)).compile().as_text()
fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy")) if FIT else None
print(json.dumps({"state": lmm_jax.runtime.cpu_compile.state(), "done": done,
                  "flags": os.environ.get("XLA_FLAGS", ""), "hlo": hlo, "deviance": fit and fit.deviance,
                  "warned": [str(w.message) for w in warned]}))
"""


def _run(code: str, fit: bool = False, **env) -> dict:
    return run_python(f"FIT = {fit}\n" + code, drop=("XLA_FLAGS", "LMM_JAX_CPU_COMPILE"), JAX_PLATFORMS="cpu", **env)


def test_the_flag_reaches_xla_and_changes_no_fit():
    on = _run(PROBE, fit=True, XLA_FLAGS=SUITE_XLA_FLAGS)
    off = _run(PROBE, fit=True, XLA_FLAGS=SUITE_XLA_FLAGS, LMM_JAX_CPU_COMPILE="default")
    assert on["state"] == on["done"] == {"enabled": True, "reason": ""}
    assert on["flags"] == f"{SUITE_XLA_FLAGS} {FLAG}"
    assert "xla_cpu_disable_new_fusion_emitters=true" in FLAG
    assert off["done"] == {"enabled": False, "reason": "LMM_JAX_CPU_COMPILE=default"}
    assert off["flags"] == SUITE_XLA_FLAGS
    assert on["hlo"] != off["hlo"]                      # a different code generator compiled it
    assert on["deviance"] == pytest.approx(off["deviance"], rel=1e-12, abs=0)


def test_the_users_xla_flags_stand():
    mine = "--xla_backend_extra_options=xla_cpu_disable_tiled_emitter=true"
    got = _run(PROBE, XLA_FLAGS=f"--xla_cpu_enable_fast_math=false {mine}")
    assert got["state"]["enabled"] is False and "left as the user chose" in got["state"]["reason"]
    assert got["flags"] == f"--xla_cpu_enable_fast_math=false {mine}"
    other = _run(PROBE, XLA_FLAGS="--xla_cpu_enable_fast_math=false")     # appended to other flags
    assert other["state"] == {"enabled": True, "reason": ""}
    assert other["flags"].startswith("--xla_cpu_enable_fast_math=false --xla_backend_extra_options=")


def test_left_alone_once_backends_have_started():
    code = "import jax; jax.devices()\n" + PROBE
    got = _run(code)
    assert got["state"] == {"enabled": False,
                            "reason": "JAX's backends had started before lmm_jax.runtime.configure() was called"}
    assert got["flags"] == ""
    assert len(got["warned"]) == 1 and "cpu_compile" in got["warned"][0]

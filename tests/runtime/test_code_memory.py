"""The compiled-code guard: JAX's executables are unmapped before the process
reaches vm.max_map_count (where XLA:CPU's JIT segfaults instead of raising)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
import lmm_jax.results  # noqa: F401  (a fit's modules, and the shared libraries they map, load before a baseline)
from lmm_jax.runtime import code_memory

from tests.helpers import load_data

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def test_compilations_are_counted(monkeypatch):
    assert code_memory.start()                  # what the first entry point does (idempotent)
    monkeypatch.setattr(code_memory, "_compiles_since_check", 0)
    jax.jit(lambda x: jnp.cos(x) * 3.25)(jnp.arange(7.0)).block_until_ready()   # a function never seen
    assert code_memory._compiles_since_check >= 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a GPU's kernels are loaded on the device, not mapped "
                    "into the process (about 40 mappings for a fit there, against hundreds on the CPU)")
def test_clear_caches_unmaps_a_fits_compiled_code():
    lmm_jax.clear_caches()
    base = code_memory.mapping_count()
    d = load_data("sleepstudy")
    d = d[d["Subject"].astype(str).isin(d["Subject"].astype(str).unique()[:7])].reset_index(drop=True)
    fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", d)     # 7 subjects: shapes no other test uses
    grown = code_memory.mapping_count() - base
    assert grown > 100                                               # hundreds of kernels, 3 mappings each
    lmm_jax.clear_caches()
    assert code_memory.mapping_count() - base < grown / 4
    np.testing.assert_allclose(fit.theta, lmm_jax.fit(fit.model.formula, d).theta, rtol=1e-12)


def test_scan_marks_and_entry_points_clear(monkeypatch):
    f = jax.jit(lambda x: x + 1.5)
    f(jnp.ones(3))
    monkeypatch.setattr(code_memory, "_pending", None)
    assert not code_memory.scan(limit=10 ** 9)                     # far below the cap: nothing to do
    assert not code_memory.check() and f._cache_size() == 1
    assert code_memory.scan(limit=code_memory.mapping_count())     # at the cap: marked, not yet cleared
    assert f._cache_size() == 1
    with pytest.warns(lmm_jax.CompiledCodeWarning, match="vm.max_map_count"):
        lmm_jax.LMM("Reaction ~ Days + (1 | Subject)", load_data("sleepstudy"))   # an entry point clears
    assert f._cache_size() == 0 and code_memory._pending is None


def test_the_listener_scans_every_check_every_compilations(monkeypatch):
    scans = []

    def fake_scan(*args, **kwargs):
        scans.append(code_memory._compiles_since_check)
        monkeypatch.setattr(code_memory, "_compiles_since_check", 0)
        return False

    x = jnp.arange(5.0)
    assert code_memory.start()
    monkeypatch.setattr(code_memory, "scan", fake_scan)
    monkeypatch.setattr(code_memory, "_compiles_since_check", code_memory.CHECK_EVERY - 2)
    jax.jit(lambda v: jnp.sin(v) + 1.25)(x)
    assert scans == []
    jax.jit(lambda v: jnp.sin(v) + 2.25)(x)
    assert scans == [code_memory.CHECK_EVERY]


def test_stop_leaves_the_users_compilations_uncounted(monkeypatch):
    code_memory.stop()
    try:
        monkeypatch.setattr(code_memory, "_compiles_since_check", 0)
        jax.jit(lambda x: jnp.tan(x) * 1.75)(jnp.arange(3.0)).block_until_ready()
        assert code_memory._compiles_since_check == 0 and not code_memory._listening
    finally:
        assert code_memory.start()

"""Kernels kept on disk, exported and compiled (lmm_jax/runtime/kernel.py).

Each check runs fits in fresh processes sharing one cache directory, with
JAX's global persistent compilation cache off: the first exports and
compiles the kernels, the second loads their executables and neither traces
nor compiles, corrupt or stale entries are rebuilt, and the numbers never
change.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmm_jax
from lmm_jax.core import estimates, start            # noqa: F401 - registers the pytrees stored entries name
from lmm_jax.core.estimates import deviance_at
from lmm_jax.inference import satterthwaite          # noqa: F401
from lmm_jax.runtime import kernel as kernel_module
from lmm_jax.runtime.kernel import Kernel, kernel

# a fit, its summary, its ML deviance and a result at a given theta (a single fit's start is numpy's); the last two
# take the same arguments
KERNELS = {"fit_and_estimate", "varpar_derivatives", "deviance_at", "estimates_at"}
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

FIT_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax
    import lmm_jax

    # JAX's global persistent cache off before anything compiles (lmm_jax's import still points it at
    # LMM_JAX_CACHE_DIR): what a second process does not compile, lmm_jax's own kernel cache saved
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    import lmm_jax.model
    from lmm_jax.core import estimates, start
    from lmm_jax.inference import satterthwaite
    from lmm_jax.runtime import kernel
    traced, compiled = [], []
    kernels = [k for mod in (estimates, satterthwaite, start) for k in vars(mod).values() if isinstance(k, kernel.Kernel)]
    for k in kernels:
        k.fun = (lambda f: functools.wraps(f)(lambda *a, **kw: (traced.append(f.__name__), f(*a, **kw))[1]))(k.fun)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, fun_name="", **_: compiled.append(fun_name) if event == "%s" else None)
    d = lmm_jax.datasets.load("sleepstudy")
    r = lmm_jax.fit("Reaction ~ Days + (1 | Subject)", d)     # the reference fit quickest to compile
    ct = r.coef_table
    se, deviance = r.varcomp_se.tolist(), r.deviance
    at = lmm_jax.LMMResult.from_theta(r.model, r.theta * 1.5, reml=True)
    print(json.dumps({"traced": sorted(set(traced)), "compiled": compiled, "objective": r.objective,
                      "theta": r.theta.tolist(), "df": ct["df"].tolist(), "se": se, "deviance": deviance,
                      "at": at.objective}))
""" % BACKEND_COMPILE)


def run_fit(cache_dir) -> dict:
    env = dict(os.environ, LMM_JAX_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", FIT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def entry(path) -> tuple[bytes, bytes, bytes]:
    """An executable entry's (key, sha256 of the payload, payload)."""
    header, _, payload = path.read_bytes().partition(b"\n")
    tag, key, sha = header.split(b" ")
    assert tag == kernel_module._EXECUTABLE_TAG
    return key, sha, payload


def test_a_fresh_process_loads_the_compiled_kernels_and_neither_traces_nor_compiles(tmp_path):
    first = run_fit(tmp_path)
    assert KERNELS <= set(first["traced"])
    assert len(first["compiled"]) >= len(KERNELS)
    store = tmp_path / "export"
    names = sorted(p.stem for p in store.glob("*.bin"))
    assert len(names) >= len(KERNELS) and sorted(p.stem for p in store.glob("*.xla")) == names
    second = run_fit(tmp_path)
    assert second["traced"] == [] and second["compiled"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]   # JAX's own cache wrote nothing here
    for key in ("objective", "theta", "df", "se", "deviance", "at"):
        np.testing.assert_allclose(second[key], first[key], rtol=1e-13, atol=0)

    # corrupt, truncated and stale entries are ignored and rewritten; the fit is the same
    bins = {n: store / f"{n}.bin" for n in names}
    xlas = {n: store / f"{n}.xla" for n in names}
    by_kernel = {n.rsplit("-", 1)[0]: n for n in names}
    fit, summary = by_kernel["fit_and_estimate"], by_kernel["varpar_derivatives"]
    for n in (fit, summary):
        bins[n].write_bytes(b"not an exported module")
    xlas[fit].write_bytes(b"not an executable")
    xlas[summary].write_bytes(xlas[summary].read_bytes()[:-1000])
    dev, est = by_kernel["deviance_at"], by_kernel["estimates_at"]
    key, _, payload = entry(xlas[est])                  # another kernel's executable (same arguments,
    _, sha, other = entry(xlas[dev])                    # other results) under this kernel's key
    xlas[est].write_bytes(b" ".join((kernel_module._EXECUTABLE_TAG, key, sha)) + b"\n" + other)
    xlas[dev].write_bytes(b" ".join((kernel_module._EXECUTABLE_TAG, b"0" * 32, sha)) + b"\n" + other)
    third = run_fit(tmp_path)
    assert set(third["traced"]) == {"fit_and_estimate", "varpar_derivatives"}
    assert len(third["compiled"]) == len(names)
    for key in ("objective", "theta", "df", "se", "deviance", "at"):
        np.testing.assert_allclose(third[key], first[key], rtol=1e-13, atol=0)
    for n in names:                                     # rewritten: each loads again
        exported = jax.export.deserialize(bytearray(bins[n].read_bytes()))
        key, sha, payload = entry(xlas[n])
        assert hashlib.sha256(payload).hexdigest().encode() == sha
        assert kernel_module._load_executable(xlas[n], key.decode(), exported, "cpu") is not None


def test_without_the_cache_nothing_is_written(tmp_path, monkeypatch, x64):
    monkeypatch.setenv("LMM_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LMM_JAX_COMPILATION_CACHE", "0")
    assert kernel_module.export_dir() is None

    @kernel(static_argnames=())
    def cubed_sum(x):
        return jnp.sum(x ** 3)

    x = np.arange(float(np.random.default_rng().integers(16, 1 << 20)))  # a shape JAX's own cache cannot serve
    assert float(cubed_sum(x)) == pytest.approx(np.sum(x ** 3), rel=1e-12)
    cubed_sum.clear()                                        # built again: still nothing written
    assert float(cubed_sum(x)) == pytest.approx(np.sum(x ** 3), rel=1e-12)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.delenv("LMM_JAX_COMPILATION_CACHE")         # the same kernel with the cache on: written
    cubed_sum.clear()
    assert float(cubed_sum(x)) == pytest.approx(np.sum(x ** 3), rel=1e-12)
    assert sorted(p.suffix for p in (tmp_path / "export").iterdir()) == [".bin", ".xla"]


def test_inside_a_trace_a_kernel_is_its_jitted_function(x64):
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


def test_prepare_compiles_under_the_callers_thread_local_settings(tmp_path, monkeypatch):
    """A new thread starts from JAX's global settings: prepare's thread enters the caller's
    (here float64 and a default device entered by context managers, with x64 off globally), so
    the call finds the executable it needs and nothing compiles twice."""
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    seen, compiles = [], []

    @kernel(static_argnames=())
    def total(x):
        seen.append((threading.current_thread().name, jax.config.jax_enable_x64, jax.config.jax_default_device))
        return jnp.sum(x * 2)

    def count(event, duration, **_):
        if event == BACKEND_COMPILE:
            compiles.append(event)

    cpu = jax.devices("cpu")[0]
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        with jax.enable_x64(True), jax.default_device(cpu):
            total.prepare(jax.ShapeDtypeStruct((4,), np.float64))
            out = total(np.arange(4.0))
        assert out.dtype == np.float64 and float(out) == 12.0
        assert len(seen) == 1 and seen[0][0].startswith("lmm_jax-prepare") and seen[0][1:] == (True, cpu)
        assert len(compiles) == 1
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
        jax.config.update("jax_enable_x64", x64)


def test_a_prepared_build_waits_for_its_event_and_a_call_meanwhile_waits_for_it(tmp_path, monkeypatch):
    """prepare(after=event): the thread traces only once the event is set (traced_sets sets it when the
    caller's next build has its exported program, or when the block ends), and a call made before then
    waits for that build instead of starting a second one."""
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    traces = []

    @kernel(static_argnames=())
    def double(x):
        traces.append(threading.current_thread().name)
        return 2 * x

    @kernel(static_argnames=())
    def first(x):
        traces.append("first")
        return x + 1

    event = threading.Event()
    double.prepare(jax.ShapeDtypeStruct((3,), np.float64), after=event)
    time.sleep(0.2)
    assert traces == []                                  # waiting for the event
    with kernel_module.traced_sets(event):
        assert float(jnp.sum(first(np.ones(3)))) == 6.0  # its export sets the event
        assert event.is_set()
    assert float(jnp.sum(double(np.ones(3)))) == 6.0
    assert traces[0] == "first" and traces[1].startswith("lmm_jax-prepare") and len(traces) == 2

    unused = threading.Event()
    with kernel_module.traced_sets(unused):              # no build in the block: set when it ends
        pass
    assert unused.is_set()


def test_a_prepare_without_a_thread_leaves_the_build_to_the_call(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)

    @kernel(static_argnames=())
    def triple(x):
        return 3 * x

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    triple.prepare(jax.ShapeDtypeStruct((2,), np.float64))
    assert triple._cache_size() == 0                     # nothing registered that no thread would fulfil
    monkeypatch.undo()
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    assert float(jnp.sum(triple(np.ones(2)))) == 6.0


def recorded_compiles(monkeypatch) -> list:
    """The compiler options of each XLA compile of a kernel from here on (None: XLA's defaults)."""
    compiles = []
    real_compile = kernel_module._compile

    def counted(exported, dynamic, options=None):
        compiles.append(options)
        return real_compile(exported, dynamic, options)

    monkeypatch.setattr(kernel_module, "_compile", counted)
    return compiles


def test_cpu_options_compile_the_optimised_executable_and_are_keyed(tmp_path, monkeypatch, x64):
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    compiles = recorded_compiles(monkeypatch)
    salt = float(time.time_ns() % 1_000_003)             # JAX's global persistent cache cannot hold it

    def options_demo(x, scale):
        return jnp.cumsum(jnp.exp(x) * scale) + salt

    def elemental(statics):
        return {"xla_cpu_use_fusion_emitters": False} if statics["scale"] < 10 else {}

    x = np.linspace(0.0, 1.0, 7)
    one = Kernel(options_demo, ("scale",), cpu_options=elemental)
    small, large = np.asarray(one(x, scale=2.0)), np.asarray(one(x, scale=20.0))
    np.testing.assert_allclose(large, 10.0 * (small - salt) + salt, rtol=1e-13)
    assert compiles == [{"xla_cpu_use_fusion_emitters": False}, None]
    again = Kernel(options_demo, ("scale",), cpu_options=elemental)   # as a fresh process: both load
    np.testing.assert_array_equal(np.asarray(again(x, scale=2.0)), small)
    assert len(compiles) == 2
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")  # the user's setting stands
    Kernel(options_demo, ("scale",), cpu_options=elemental)(x, scale=2.0)
    assert compiles[-1] is None


def test_a_typed_prng_key_is_an_argument_like_a_raw_one(tmp_path, monkeypatch, x64):
    """``jax.random.key(0)`` (an extended dtype numpy has no name for) keys, exports, compiles and
    loads; its draws are the raw ``PRNGKey(0)``'s, as in a bootstrap given either."""
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    compiles = recorded_compiles(monkeypatch)
    salt = float(time.time_ns() % 1_000_003)             # JAX's global persistent cache cannot hold it

    def draws(key, n):
        return jax.random.normal(jax.random.fold_in(key, 3), (n,)) + salt

    typed = Kernel(draws, ("n",))(jax.random.key(0), n=4)
    raw = Kernel(draws, ("n",))(jax.random.PRNGKey(0), n=4)
    np.testing.assert_array_equal(np.asarray(typed), np.asarray(raw))
    assert len(compiles) == 2 and len(list(tmp_path.glob("draws-*.xla"))) == 2
    again = Kernel(draws, ("n",))(jax.random.key(0), n=4)              # as a fresh process: it loads
    np.testing.assert_array_equal(np.asarray(again), np.asarray(typed))
    assert len(compiles) == 2


def test_batched_kernels_use_the_elemental_emitter_below_a_dense_block_of_128_columns():
    from lmm_jax.core.types import Structure, batch_options
    assert batch_options({"s": Structure(ks=(2,), ms=(32,), p=2)}) == \
        {"xla_cpu_use_fusion_emitters": False}
    assert batch_options({"s": Structure(ks=(1, 1), ms=(512, 128), p=2)}) == \
        {"xla_cpu_use_fusion_emitters": False}
    assert batch_options({"s": Structure(ks=(1, 1), ms=(512, 256), p=2)}) == {}


def test_small_one_off_batches_compile_quick_code_in_one_tier(monkeypatch):
    """fit_many's and the profile's kernels: quick code for a call of at most QUICK_BATCH_WORK fits x
    random-effect columns, the batched kernels' options above it, never a second tier."""
    from lmm_jax.batched.batch import _fit_stacked, _stacked_inference
    from lmm_jax.core.types import QUICK_BATCH_WORK, Structure, batch_options, one_off_options, quick_batch
    from lmm_jax.inference.profile import solve_constrained
    s = Structure(ks=(2, 1), ms=(32, 64), p=2)                         # 128 random-effect columns
    for k in (_fit_stacked, _stacked_inference, solve_constrained):
        assert k.cpu_options is one_off_options and not k.quick and "quick_code" in k.static_argnames
    assert quick_batch(QUICK_BATCH_WORK // 128, s) and not quick_batch(QUICK_BATCH_WORK // 128 + 1, s)
    assert one_off_options({"s": s, "quick_code": True}) == kernel_module.QUICK_OPTIONS
    assert one_off_options({"s": s, "quick_code": False}) == batch_options({"s": s})
    monkeypatch.setenv(kernel_module.QUICK_SWITCH, "0")
    assert one_off_options({"s": s, "quick_code": True}) == batch_options({"s": s})


def test_without_executable_serialization_the_exported_kernel_is_compiled(tmp_path, monkeypatch):
    """A backend that cannot serialize or load executables: export + compile, no executable entry."""
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)

    def unavailable(*args, **kwargs):
        raise ValueError("Compilation does not support serialization")

    monkeypatch.setattr(kernel_module.serialize_executable, "serialize", unavailable)
    monkeypatch.setattr(kernel_module.serialize_executable, "deserialize_and_load", unavailable)

    @kernel(static_argnames=("power",))
    def moment(x, power):
        return jnp.mean(x ** power)

    assert float(moment(np.arange(4.0), power=2)) == 3.5
    assert [p.suffix for p in tmp_path.iterdir()] == [".bin"]
    moment.clear()
    assert float(moment(np.arange(4.0), power=2)) == 3.5        # loaded from the exported entry


def test_an_executable_of_other_types_than_its_exported_module_is_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)

    @kernel(static_argnames=())
    def doubled(x):
        return 2 * x

    @kernel(static_argnames=())
    def head(x):
        return x[:2]

    x = np.arange(float(np.random.default_rng().integers(16, 1 << 20)))  # a shape JAX's own cache cannot serve
    doubled(x), head(x)
    [stored] = tmp_path.glob("doubled-*.xla")
    [other] = tmp_path.glob("head-*.xla")
    key, _, _ = entry(stored)
    _, sha, payload = entry(other)                      # same pytrees, another result shape
    stored.write_bytes(b" ".join((kernel_module._EXECUTABLE_TAG, key, sha)) + b"\n" + payload)
    exported = jax.export.deserialize(bytearray(stored.with_suffix(".bin").read_bytes()))
    assert kernel_module._load_executable(stored, key.decode(), exported, "cpu") is None
    doubled.clear()
    np.testing.assert_array_equal(doubled(x), 2 * x)   # compiled again


def test_host_digest_follows_the_cpu_flags_without_a_subprocess(monkeypatch):
    import platform

    def no_subprocess():
        raise AssertionError("platform.processor() runs uname -p in a subprocess")

    def digest(cpuinfo):
        monkeypatch.setattr(kernel_module, "_HOST", None)
        monkeypatch.setattr(kernel_module.Path, "read_text", lambda self: cpuinfo)
        return kernel_module.host_digest()

    monkeypatch.setattr(platform, "processor", no_subprocess)
    avx2 = digest("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert avx2 == digest("processor\t: 1\nflags\t\t: fpu sse2 avx2\n")
    assert avx2 != digest("processor\t: 0\nflags\t\t: fpu sse2\n")
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert digest("no flags here\n") != digest("flags : x\n")                # elsewhere: the processor's name


def test_a_runtime_that_cannot_initialize_refuses_the_load(tmp_path, monkeypatch):
    # the runtime (jaxlib's LAPACK kernels) initializes on a thread beside the deserialization of an executable
    # that calls LAPACK; its failure refuses the entry, as the deserialization's own would (the kernel then
    # compiles). An executable without LAPACK calls loads without it.
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)

    @kernel(static_argnames=())
    def tripled(x):
        return 3 * x

    rng = np.random.default_rng()              # a new shape and constant: no entry of JAX's own persistent cache
    shift = float(rng.uniform())               # serves them

    @kernel(static_argnames=())
    def eigenvalues(a):
        return jnp.linalg.eigh(a)[0] + shift

    x = np.arange(float(rng.integers(16, 1 << 20)))
    tripled(x)
    eigenvalues(np.diag(x[:12]))
    loads = {}
    for name in ("tripled", "eigenvalues"):
        [stored] = tmp_path.glob(f"{name}-*.xla")
        key, _, _ = entry(stored)
        exported = jax.export.deserialize(bytearray(stored.with_suffix(".bin").read_bytes()))
        assert kernel_module._load_executable(stored, key.decode(), exported, "cpu") is not None
        loads[name] = (stored, key.decode(), exported)

    def broken(backend):
        raise RuntimeError("no LAPACK here")

    monkeypatch.setattr(kernel_module, "_READY", set())
    monkeypatch.setattr(kernel_module, "_runtime_ready", broken)
    assert kernel_module._load_executable(*loads["eigenvalues"], "cpu") is None
    assert kernel_module._load_executable(*loads["tripled"], "cpu") is not None


GLOBAL_CACHE_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import jax, jax.numpy as jnp, numpy as np
    import lmm_jax
    from lmm_jax.runtime import kernel as K

    root = pathlib.Path(sys.argv[1])
    jax.config.update("jax_compilation_cache_dir", str(root / "jax"))    # JAX's global cache on, every compile
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    K.export_dir = lambda: root / "kernels"

    @K.kernel(static_argnames=())
    def f(a):
        return jnp.sum(jnp.tanh(a @ a.T @ a) ** 2) + jnp.exp(a.reshape(-1)[::-1]).sum()

    a = np.random.default_rng(0).normal(size=(20, 20))
    expected = float(f(a))                       # compiled by XLA (JAX's cache missed): stored
    [entry] = (root / "kernels").glob("*.xla")
    key = entry.read_bytes().split(b" ")[1].decode()
    entry.unlink(); f.clear(); jax.clear_caches()
    again = float(f(a))                          # served by JAX's cache: not stored
    stored_after_hit = entry.exists()
    # what storing it would have written: an entry without machine code, which fails at run time
    exported = jax.export.deserialize(bytearray(entry.with_suffix(".bin").read_bytes()))
    compiled, fresh = K._compile(exported, [a])
    K._store_executable(entry, key, compiled)
    f.clear(); jax.clear_caches()
    loaded = K._load_executable(entry, key, exported, "cpu") is not None
    rebuilt = float(f(a))                        # its first call fails: removed, compiled again, repeated
    print(json.dumps({"expected": expected, "again": again, "stored_after_hit": stored_after_hit, "fresh": fresh,
                      "loaded": loaded, "rebuilt": rebuilt, "entry_left": entry.exists()}))
""")


def test_an_executable_from_jaxs_global_cache_is_not_stored_and_a_bad_entry_is_rebuilt(tmp_path):
    """JAX's persistent cache returns deserialized executables; serialized again they lose their
    machine code (they load, then fail at run time). Such a compile is not stored, and an entry
    that fails on its first call is removed and the call compiled again."""
    env = dict(os.environ, LMM_JAX_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", GLOBAL_CACHE_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["again"] == r["expected"] and r["rebuilt"] == r["expected"]
    assert not r["stored_after_hit"] and not r["fresh"]
    assert r["loaded"] and not r["entry_left"]


def test_a_quick_executable_runs_first_and_the_optimised_one_replaces_it(tmp_path, monkeypatch, x64):
    """CPU kernels compile at LLVM -O0 first; once the quick code has been called often and long
    enough (here: twice) the optimised executable compiles on a thread and is swapped in, and both are stored:
    a new kernel of the same function loads the optimised one and compiles nothing."""
    monkeypatch.setattr(kernel_module, "export_dir", lambda: tmp_path)
    monkeypatch.setattr(kernel_module, "tiered", lambda backend: True)
    monkeypatch.setattr(kernel_module, "TIER_UP_SECONDS", 0.0)
    monkeypatch.setattr(kernel_module, "TIER_UP_CALLS", 2)
    compiles = recorded_compiles(monkeypatch)
    # a constant of this run: JAX's global persistent cache (on in the suite) cannot have the program,
    # whose executables are then compiled here and stored (one from JAX's cache is not stored)
    salt = float(time.time_ns() % 1_000_003)

    def tiers_demo(x):
        return jnp.cumsum(jnp.sin(x) * x) + salt

    x = np.linspace(0.0, 2.0, 9)
    first = Kernel(tiers_demo, (), quick=True)
    quick = np.asarray(first(x))
    kernel_module.wait_for_optimised(timeout=120)
    assert compiles == [kernel_module._quick_options()]   # one call: a model fitted once stays quick
    np.testing.assert_allclose(np.asarray(first(x)), quick, rtol=1e-15, atol=0)
    kernel_module.wait_for_optimised(timeout=120)
    assert compiles == [kernel_module._quick_options(), None]
    np.testing.assert_allclose(np.asarray(first(x)), quick, rtol=1e-15, atol=0)
    (call,) = first._calls.values()
    assert call.result()._optimize is None
    stored = sorted(p.name.split("-", 1)[1].split(".", 1)[1] for p in tmp_path.iterdir())
    assert stored == ["bin", "quick.xla", "xla"]

    again = Kernel(tiers_demo, (), quick=True)                # as a fresh process would: the optimised executable
    np.testing.assert_allclose(np.asarray(again(x)), quick, rtol=1e-15, atol=0)
    assert compiles == [kernel_module._quick_options(), None]
    assert next(iter(again._calls.values())).result()._optimize is None


def test_quick_compilation_is_for_cpu_unless_switched_off_or_the_level_is_set(monkeypatch):
    monkeypatch.delenv("LMM_JAX_QUICK_COMPILE", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert kernel_module.tiered("cpu") and not kernel_module.tiered("gpu")
    monkeypatch.setenv("LMM_JAX_QUICK_COMPILE", "0")
    assert not kernel_module.tiered("cpu")
    monkeypatch.delenv("LMM_JAX_QUICK_COMPILE")
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert not kernel_module.tiered("cpu")


def test_the_quick_tier_leaves_compiler_options_the_user_set_in_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert kernel_module._quick_options() == {"xla_backend_optimization_level": 0,
                                              "xla_cpu_use_fusion_emitters": False}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert kernel_module._quick_options() == {"xla_backend_optimization_level": 0}


def test_the_source_digest_covers_every_layer():
    # the kernels' code lives in core (and their callers above): a change there must give new cache entries
    files = {p.relative_to(Path(lmm_jax.__file__).parent).as_posix() for p in kernel_module.source_files()}
    assert {"core/likelihood.py", "core/optimize.py", "runtime/kernel.py", "model.py"} <= files

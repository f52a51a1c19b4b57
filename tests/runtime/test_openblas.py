"""lmm_jax.runtime.openblas: scipy's OpenBLAS computes with one thread while an lmm_jax call runs, and
with the thread count it had before once the last one returns.

The bookkeeping is checked here against a stand-in library; a fresh process (the suite's own sets
``OPENBLAS_NUM_THREADS``, which lmm_jax leaves alone) checks the real one during and after a fit.
"""

import sys
import threading

import pytest

from lmm_jax.runtime import openblas, scope
from tests.helpers import run_python


class FakeLibrary:
    """OpenBLAS's thread count, set and read, with the calls that set it."""

    def __init__(self, threads: int):
        self.threads, self.sets = threads, []

    def set(self, n: int) -> None:
        self.threads = n
        self.sets.append(n)

    def get(self) -> int:
        return self.threads


@pytest.fixture
def library(monkeypatch):
    fake = FakeLibrary(4)
    monkeypatch.setattr(openblas, "_library", ("fake", fake.set, fake.get))
    monkeypatch.setattr(openblas, "_searched", True)
    monkeypatch.setattr(openblas, "_depth", 0)
    monkeypatch.setattr(openblas, "_saved", None)
    return fake


def test_one_thread_inside_nested_calls_and_the_count_restored_after(library):
    @scope.entry_point
    def inner():
        return library.threads

    @scope.entry_point
    def outer():
        return library.threads, inner(), library.threads

    assert outer() == (1, 1, 1)
    assert library.threads == 4 and library.sets == [1, 4]          # set once, restored once
    with pytest.raises(ZeroDivisionError):
        scope.entry_point(lambda: 1 / 0)()
    assert library.threads == 4 and openblas.state()["calls"] == 0   # restored after an error too


def test_a_generators_steps_run_single_threaded(library):
    @scope.entry_point
    def steps():
        for _ in range(2):
            yield library.threads

    it = steps()
    assert next(it) == 1 and library.threads == 4
    assert next(it) == 1 and library.threads == 4


def test_overlapping_calls_in_two_threads_restore_once_the_last_returns(library):
    started, release = threading.Event(), threading.Event()

    @scope.entry_point
    def waits():
        started.set()
        release.wait(10)
        return library.threads

    results = []
    t = threading.Thread(target=lambda: results.append(waits()))
    t.start()
    started.wait(10)
    assert scope.entry_point(lambda: library.threads)() == 1 and library.threads == 1   # the other call still runs
    release.set()
    t.join(10)
    assert results == [1] and library.threads == 4 and library.sets == [1, 4]


def test_a_library_already_single_threaded_is_not_set(library):
    library.threads = 1
    assert scope.entry_point(lambda: library.threads)() == 1
    assert library.sets == []


@pytest.mark.parametrize("env", [{"OPENBLAS_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "2"},
                                 {"LMM_JAX_CPU_THREADS": "default"}, {"LMM_JAX_CPU_THREADS": "0"}])
def test_the_users_choice_stands(monkeypatch, env):
    for name in (*openblas.BLAS_ENV, openblas.THREADS_SWITCH):
        monkeypatch.delenv(name, raising=False)
    assert openblas.wanted()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not openblas.wanted()


# a fresh process fits sleepstudy; the kernel layer's refresh, recorded at each kernel call, reads the
# thread count while the fit runs (the library loads during the first one) and the count kept to restore;
# then the count after it
PROBE = """
import json, os
import lmm_jax
from lmm_jax.runtime import openblas
seen, kept, refresh = [], [], openblas.refresh
def recording():
    refresh()
    found = openblas.lapack_library()
    seen.append(found[2]() if found else None)
    kept.append(openblas.state()["restore_to"])
openblas.refresh = recording
fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", lmm_jax.datasets.load("sleepstudy"))
str(fit.summary())
found = openblas.lapack_library()
print(json.dumps({"during": seen, "kept": kept, "after": found[2]() if found else None, "state": openblas.state(),
                  "cpus": len(os.sched_getaffinity(0))}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_a_fits_lapack_is_single_threaded_and_the_users_count_comes_back():
    got = run_python(PROBE, drop=(*openblas.BLAS_ENV, openblas.THREADS_SWITCH), JAX_PLATFORMS="cpu")
    if got["after"] is None:
        pytest.skip("scipy's LAPACK here is not the OpenBLAS of scipy's wheels")
    assert got["during"] and set(got["during"]) == {1}, got
    assert set(got["kept"]) == {got["after"]}, got          # the count before the fit, back after it
    assert got["after"] > 1 or got["cpus"] == 1, got        # OpenBLAS's own default: threads on a multi-core machine
    assert got["state"]["calls"] == 0 and got["state"]["restore_to"] is None

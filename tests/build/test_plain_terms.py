"""Plain expressions (lmm_jax/build/design.py: _plain_terms): sums of numeric
columns and intercept markers are read without formulaic, to the same design
formulaic builds, and the fixed part's formulaic spec is built on first use."""

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.build import design as design_module
from lmm_jax.build.design import _plain_terms, build_design


def frame(n=60, seed=1):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 6, n)
    return pd.DataFrame({
        "y": rng.normal(size=n), "x": rng.normal(size=n), "w": rng.integers(0, 9, n),
        "u8": rng.integers(0, 5, n).astype(np.uint8), "f32": rng.normal(size=n).astype(np.float32),
        "flag": rng.random(n) < 0.5, "cat": pd.Categorical(rng.choice(["a", "b", "c"], n)),
        "txt": rng.choice(["p", "q"], n), "x.1": rng.normal(size=n), "Intercept": rng.normal(size=n),
        "g": g, "h": rng.integers(0, 4, n)})


@pytest.mark.parametrize("expr, expected", [
    ("x", (True, ("x",))), ("1 + x", (True, ("x",))), ("x + 1", (True, ("x",))),
    ("0 + x + w", (False, ("x", "w"))), ("x + w - 1", (False, ("x", "w"))), ("-1 + x", (False, ("x",))),
    ("x + 0", (False, ("x",))), ("0 + x + 1", (True, ("x",))), ("x - 0", (True, ("x",))),
    ("x + 1 - 1", (False, ("x",))), ("1", (True, ())), ("0", (False, ())), ("x + w + x", (True, ("x", "w"))),
    ("u8 + f32", (True, ("u8", "f32"))),
    # formulaic's: factors, booleans, interactions, calls, removals, odd names, unknown columns
    ("cat", None), ("txt", None), ("flag", None), ("x:w", None), ("x * w", None), ("log(w + 1)", None),
    ("I(x ** 2)", None), ("x - w", None), ("x.1", None), ("`x.1`", None), ("Intercept", None), ("z", None),
    ("x + + w", None), ("x +", None), ("", None), ("2", None), ("x + C(w)", None), (".", None)])
def test_plain_terms_reads_what_formulaic_reads(expr, expected):
    assert _plain_terms(expr, frame()) == expected


def _formulaic_design(formula, data, **kw):
    """The design formulaic builds for every expression."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(design_module, "_plain_terms", lambda expr, df: None)
        return build_design(formula, data, **kw)


@pytest.mark.parametrize("formula", [
    "y ~ x + w + (1 | g)", "y ~ 0 + x + u8 + (x | g)", "y ~ f32 - 1 + (0 + x + w | g) + (1 | h)",
    "y ~ x + (x || g)", "w ~ x + x + (1 + x | g:h)", "y ~ 1 + (w | g)",
    # one part plain, the other through formulaic
    "y ~ x + cat + (x | g)", "y ~ x + (cat | g)", "log(w + 1) ~ x + (1 | g)"])
def test_plain_design_equals_formulaic_design(formula):
    data = frame()
    plain, full = build_design(formula, data), _formulaic_design(formula, data)
    np.testing.assert_array_equal(plain.y, full.y)
    np.testing.assert_array_equal(plain.X, full.X)
    assert plain.fixef_names == full.fixef_names and plain.kept_columns == full.kept_columns
    assert len(plain.terms) == len(full.terms)
    for a, b in zip(plain.terms, full.terms):
        assert (a.group, a.columns, a.expr, a.factors) == (b.group, b.columns, b.expr, b.factors)
        np.testing.assert_array_equal(a.Z, b.Z)
        np.testing.assert_array_equal(a.codes, b.codes)
    # the spec built on first use reads new data as formulaic's own
    assert plain.fixed_spec.column_names == full.fixed_spec.column_names
    new = frame(n=7, seed=2)
    np.testing.assert_array_equal(np.asarray(plain.fixed_spec.get_model_matrix(new)),
                                  np.asarray(full.fixed_spec.get_model_matrix(new)))


def test_plain_design_does_not_call_formulaic_until_new_data_needs_it(monkeypatch):
    calls = []
    original = design_module._model_matrix

    def recorded(text, data):
        calls.append(text)
        return original(text, data)

    monkeypatch.setattr(design_module, "_model_matrix", recorded)
    monkeypatch.setattr(design_module, "_required", lambda *a: pytest.fail("formulaic parsed a plain expression"))
    sl = lmm_jax.datasets.load("sleepstudy")
    d = build_design("Reaction ~ Days + (Days | Subject)", sl)
    assert calls == [] and d.fixef_names == ("(Intercept)", "Days")
    assert d.fixed_spec.column_names == ("Intercept", "Days")
    assert calls == ["Days"]
    assert d.fixed_spec is d.fixed_spec and calls == ["Days"]          # built once


def test_planned_plain_design_has_a_zero_response():
    data = frame().drop(columns="y")
    d = build_design("y ~ x + (1 | g)", data, planned=True)
    assert not d.has_response and np.all(d.y == 0) and d.fixef_names == ("(Intercept)", "x")


def test_unknown_plain_name_is_reported_as_before():
    with pytest.raises(lmm_jax.DataError, match="'z' is not a column"):
        build_design("y ~ x + z + (1 | g)", frame())
    with pytest.raises(lmm_jax.DataError, match="'zz' is not a column"):
        build_design("y ~ x + (zz | g)", frame())

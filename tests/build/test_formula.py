"""lme4 formula syntax: bars, nesting, interactions, uncorrelated terms."""

from __future__ import annotations

import numpy as np
import pytest

import lmm_jax
from lmm_jax.build.formula import RandomTerm, parse_formula


@pytest.mark.parametrize("formula, fixed, terms", [
    ("y ~ x + (x | g)", "x", [("x", ("g",), False)]),
    ("y ~ x + (0 + x | g)", "x", [("0 + x", ("g",), False)]),
    ("y ~ x + (-1 + x | g)", "x", [("-1 + x", ("g",), False)]),
    ("y ~ x + (x || g)", "x", [("x", ("g",), True)]),
    ("y ~ 1 + (1 | a/b)", "1", [("1", ("a",), False), ("1", ("b", "a"), False)]),
    ("y ~ (1 | a/b/c)", "1", [("1", ("a",), False), ("1", ("b", "a"), False), ("1", ("c", "b", "a"), False)]),
    ("y ~ x + (1 | a:b)", "x", [("1", ("a", "b"), False)]),
    ("y ~ (1 | a) + x * z + (1 | b)", "x * z", [("1", ("a",), False), ("1", ("b",), False)]),
    ("log(y) ~ C(f) + I(x**2) + (1 + x | g)", "C(f) + I(x**2)", [("1 + x", ("g",), False)]),
    ("y ~ x + (1 | `my group`)", "x", [("1", ("`my group`",), False)]),
])
def test_parse_bars_and_fixed_part(formula, fixed, terms):
    pf = parse_formula(formula)
    assert pf.fixed == fixed
    assert [(t.expr, t.factors, t.uncorrelated) for t in pf.random] == terms


def test_group_names_follow_lme4():
    pf = parse_formula("strength ~ 1 + (1 | batch/cask)")
    assert [t.group for t in pf.random] == ["batch", "cask:batch"]
    assert str(RandomTerm("x", ("g",), True)) == "(x || g)"


@pytest.mark.parametrize("bad, token", [
    ("y ~ x + (x | )", "|"), ("y ~ x + ( | g)", "|"), ("y ~ x + (x | g", "("), ("y ~ x + x | g)", ")"),
    ("y  x + (1 | g)", "~"), ("y ~ x", ""), ("y ~ x + (1 | g | h)", "|"), ("y ~ x + (1 | g+h)", "g+h"),
])
def test_malformed_formula_raises_formula_error_naming_token(bad, token):
    with pytest.raises(lmm_jax.FormulaError) as err:
        parse_formula(bad)
    assert err.value.token == token


def test_nested_equals_explicit_terms():
    data = lmm_jax.datasets.load("Pastes")
    a = lmm_jax.fit("strength ~ 1 + (1 | batch/cask)", data)
    b = lmm_jax.fit("strength ~ 1 + (1 | batch) + (1 | batch:cask)", data)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    np.testing.assert_allclose(a.varcorr.vcov, b.varcorr.vcov, rtol=1e-7)


def test_double_bar_equals_two_terms():
    data = lmm_jax.datasets.load("sleepstudy")
    a = lmm_jax.fit("Reaction ~ Days + (Days || Subject)", data)
    b = lmm_jax.fit("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", data)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    assert list(a.varcorr.grp) == ["Subject", "Subject.1", "Residual"]


def test_numeric_grouping_column_is_categorical():
    data = lmm_jax.datasets.load("ingot")
    data["ingot"] = data["ingot"].astype(int)
    fit = lmm_jax.fit("pres ~ metal + (1 | ingot)", data)
    assert fit.ngroups == {"ingot": 7}
    assert fit.fixef.index.tolist() == ["(Intercept)", "metali", "metaln"]

"""Fuzzing the formula parser: whatever the text, the only error is ours.

``parse_formula`` may accept a string or raise :class:`FormulaError`; building
a model from a formula on a small frame may raise any :class:`LMMError`
(FormulaError or DataError) but never an IndexError, a formulaic exception, a
JAX shape error or anything else. Random strings are drawn from the
characters formulas are made of, and valid formulas are mutated by
inserting, deleting and replacing characters and pieces.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmm_jax
from lmm_jax import FormulaError, LMMError, parse_formula

# Characters and pieces of lme4 formulas. Letters are limited to the names in
# the test frame and a few R/formulaic functions, so that mutated formulas
# stay formulas (and formulaic never evaluates arbitrary Python calls).
CHARS = "yxgh01 ~+-*:/|()`.^"
PIECES = ["y", "x", "g", "h", "1", "0", " ", "~", "+", "-", "*", ":", "/", "|", "||", "(", ")", "`", ".",
          "^", "I(", "C(", "log(", "x.y", "(1 | g)", "(x || h)", "(0 + x | g/h)", "x:h", "I(x^2)", "%in%"]
VALID = ["y ~ x + (1 | g)", "y ~ x + (x | g)", "y ~ (1 | g/h)", "y ~ x * h + (0 + x || g)",
         "y ~ 1 + (1 | g) + (1 | h)", "log(y) ~ I(x^2) + (1 | g:h)", "y ~ C(h) + (x | g)"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(6)
    n = 24
    return pd.DataFrame({"y": rng.gamma(2.0, size=n) + 0.5, "x": rng.normal(size=n),
                         "g": np.repeat(list("abcdef"), 4), "h": np.tile(list("uvw"), 8),
                         "x.y": rng.normal(size=n)})


def mutate(data, formula: str) -> str:
    """Apply 1-4 random edits (insert, delete, replace, duplicate) to formula."""
    text = formula
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 4)))
        if op == "insert":
            text = text[:i] + data.draw(st.sampled_from(PIECES)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "replace":
            text = text[:i] + data.draw(st.sampled_from(PIECES)) + text[j:]
        else:
            text = text[:i] + text[i:j] + text[i:]
    return text


def parse_or_formula_error(text: str) -> None:
    try:
        parsed = parse_formula(text)
    except FormulaError as e:
        assert str(e), "FormulaError without a message"
        return
    assert parsed.random, "a parsed formula has random-effects terms"
    assert parsed.response.strip()


def build_or_lmm_error(text: str, frame: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank deficiency warnings are fine here
        try:
            lmm_jax.LMM(text, frame)
        except LMMError as e:
            assert str(e)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=CHARS, max_size=40))
def test_random_strings_raise_only_formula_error(text):
    parse_or_formula_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_random_piece_sequences_raise_only_formula_error(text):
    parse_or_formula_error(text)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_formulas_raise_only_formula_error(data):
    parse_or_formula_error(mutate(data, data.draw(st.sampled_from(VALID))))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_formulas_on_data_raise_only_lmm_errors(frame, data):
    build_or_lmm_error(mutate(data, data.draw(st.sampled_from(VALID))), frame)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=CHARS, max_size=30))
def test_random_strings_on_data_raise_only_lmm_errors(frame, text):
    build_or_lmm_error(text, frame)


@pytest.mark.parametrize("text", [123, None, b"y ~ x + (1 | g)", ["y ~ x + (1 | g)"]])
def test_non_string_formula_is_a_formula_error(text):
    with pytest.raises(FormulaError, match="formula must be a string"):
        parse_formula(text)


@pytest.mark.parametrize("text", ["", "~", "y ~", "~ (1 | g)", "y ~ ()", "y ~ (|)", "y ~ (1 | g) +", "y ~ ((1 | g)",
                                  "y ~ x + (1 | g))", "y ~ (1 | g | h)", "y ~ (1 ||| g)", "y ~ (1 | )",
                                  "y ~ ( | g)", "y ~~ x + (1 | g)", "y ~ x | g", "y | g ~ x + (1 | g)",
                                  "y ~ (1 | g/)", "y ~ (1 | /g)", "y ~ (1 | g:)", "y ~ (1 | g h)"])
def test_known_malformed_formulas(text):
    with pytest.raises(FormulaError):
        parse_formula(text)

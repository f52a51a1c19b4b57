"""The bundled datasets load with their R shapes, and their factors give
lme4's treatment-contrast columns (same reference levels as R)."""

import pandas as pd
import pytest

import lmm_jax
from lmm_jax.build.design import build_design

SHAPES = {"sleepstudy": (180, 3), "cbpp": (56, 4), "grouseticks": (403, 7), "VerbAgg": (7584, 9),
          "Contraception": (1934, 6)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dataset_loads_with_its_shape(name):
    assert lmm_jax.datasets.load(name).shape == SHAPES[name]


@pytest.mark.parametrize("name, formula, lme4_names", [
    ("cbpp", "incidence ~ period + (1 | herd)", ["(Intercept)", "period2", "period3", "period4"]),
    ("grouseticks", "TICKS ~ YEAR + HEIGHT + (1 | BROOD)", ["(Intercept)", "YEAR96", "YEAR97", "HEIGHT"]),
    ("VerbAgg", "Anger ~ Gender + btype + situ + mode + resp + (1 | item)",
     ["(Intercept)", "GenderM", "btypescold", "btypeshout", "situself", "modedo", "resp.L", "resp.Q"]),
    ("Contraception", "age ~ urban + I(age^2) + livch + (urban | district)",
     ["(Intercept)", "urbanY", "I(age^2)", "livch1", "livch2", "livch3+"]),
])
def test_factor_columns_give_lme4s_fixed_effect_names(name, formula, lme4_names):
    assert list(build_design(formula, lmm_jax.datasets.load(name)).fixef_names) == lme4_names


def test_grouping_columns_are_text_and_counts_match_r():
    ticks = lmm_jax.datasets.load("grouseticks")
    assert [ticks[c].nunique() for c in ("INDEX", "BROOD", "LOCATION", "YEAR")] == [403, 118, 63, 3]
    verb = lmm_jax.datasets.load("VerbAgg")
    assert (verb.id.nunique(), verb.item.nunique()) == (316, 24)
    assert list(verb["mode"].cat.categories) == ["want", "do"] and verb["resp"].cat.ordered
    contra = lmm_jax.datasets.load("Contraception")
    assert contra.district.nunique() == 60 and (contra.use == "Y").sum() == 759
    assert isinstance(contra.district.iloc[0], str)
    assert pd.api.types.is_float_dtype(contra.age)

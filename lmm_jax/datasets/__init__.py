"""Small example datasets shipped with lmm_jax (from R's lme4, mlmRev and Littell 2006).

=============  =====================================================
name           contents
=============  =====================================================
sleepstudy     reaction times over 10 days of sleep deprivation, 18 subjects
ingot          pressure of 3 metals on 7 ingots (Littell et al. 2006)
Dyestuff       yield of dyestuff, 6 batches x 5 preparations
Dyestuff2      simulated Dyestuff with a zero batch variance (singular fit)
Penicillin     inhibition-zone diameters, 24 plates x 6 samples (crossed)
Pastes         paste strength, 10 batches / 3 casks (nested)
cake           breakage angle of chocolate cakes: recipe x temperature
cbpp           contagious bovine pleuropneumonia: incidence out of size
               cattle, 15 herds x up to 4 periods (binomial GLMM)
grouseticks    tick counts on 403 red grouse chicks in 118 broods at
               63 locations, 1995-97 (Poisson GLMM; cHEIGHT is HEIGHT
               centred)
VerbAgg        verbal aggression: 316 people x 24 items, ordinal resp
               no/perhaps/yes and its dichotomy r2 N/Y (binary GLMM)
Contraception  contraceptive use (use N/Y) of 1934 Bangladeshi women
               in 60 districts; age centred (mlmRev)
=============  =====================================================

Factor columns are text, so formulas give them R's treatment contrasts with
the alphabetically first level as reference; that is R's reference level for
all of them (cbpp's period "1", grouseticks' YEAR "95", VerbAgg's Gender "F",
btype "curse", situ "other", r2 "N", Contraception's use "N", urban "N",
livch "0": "3+" sorts after "2", as in R) except VerbAgg's mode, whose R
levels are want, do: it loads as a pandas Categorical in that order, and resp
as an ordered Categorical no < perhaps < yes (R's ordered factor).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

NAMES = ("sleepstudy", "ingot", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes", "cake",
         "cbpp", "grouseticks", "VerbAgg", "Contraception")

# grouping columns hold labels even where they look like numbers
_CATEGORICAL = {"sleepstudy": ["Subject"], "ingot": ["ingot"], "cake": ["replicate", "temperature"],
                "cbpp": ["herd", "period"], "grouseticks": ["INDEX", "BROOD", "YEAR", "LOCATION"],
                "VerbAgg": ["id"], "Contraception": ["woman", "district", "livch"]}

# factors whose R level order is not alphabetical: (categories in R's order, ordered)
_LEVELS = {"VerbAgg": {"mode": (["want", "do"], False), "resp": (["no", "perhaps", "yes"], True)}}


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset by name (case-insensitive).

    Args:
        name: one of :data:`NAMES`.

    Returns:
        A DataFrame; grouping and factor columns are strings, except the
        factors whose R level order is not alphabetical (VerbAgg's mode and
        resp), which are pandas Categoricals in R's order.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    lookup = {n.lower(): n for n in NAMES}
    key = lookup.get(str(name).lower())
    if key is None:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(NAMES)}")
    with resources.files(__package__).joinpath(f"{key}.csv").open("r") as fh:
        df = pd.read_csv(fh)
    for col in _CATEGORICAL.get(key, []):
        df[col] = df[col].astype(str)
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].astype(str)
    for col, (categories, ordered) in _LEVELS.get(key, {}).items():
        df[col] = pd.Categorical(df[col], categories=categories, ordered=ordered)
    return df

"""Small example datasets shipped with lmm_jax (from R's lme4 and Littell 2006).

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
=============  =====================================================
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

NAMES = ("sleepstudy", "ingot", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes", "cake")

# grouping columns hold labels even where they look like numbers
_CATEGORICAL = {"sleepstudy": ["Subject"], "ingot": ["ingot"], "cake": ["replicate", "temperature"]}


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset by name (case-insensitive).

    Args:
        name: one of :data:`NAMES`.

    Returns:
        A DataFrame; grouping columns are strings.

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
    return df

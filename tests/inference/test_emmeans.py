"""Estimated marginal means and contrasts against R's emmeans (lmerTest fits, lmer.df = "satterthwaite" and
"kenward-roger").

Reference: tests/reference/emmeans.json from make_emmeans_reference.R (cake, nlme's Machines balanced and
Pinheiro & Bates's unbalanced subset, nlme's Oats with nitro numeric, an unbalanced cake and a cake model with
an aliased covariate).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.errors import DataError, InferenceError
from lmm_jax.inference.emmeans import EMMeans, emmeans, p_adjust

from tests.helpers import REF_DIR, load_data

REF = json.loads((REF_DIR / "emmeans.json").read_text())
RTOL = 1e-6          # means, SEs, estimates, t ratios, interval ends
DF_RTOL = 1e-6       # lmerTest's Satterthwaite df come from numerical derivatives (7e-9 here)
P_RTOL = 1e-4        # adjusted p-values (R's ptukey and scipy's studentized range differ by up to 2e-6)
P_ATOL = 1e-10       # R's ptukey gives upper tails as 1 - lower: its p-values below ~1e-9 carry no digits


def _names(x) -> list:
    return x if isinstance(x, list) else ([] if x in (None, {}) else [x])


def _ref_data(model: str) -> pd.DataFrame:
    m = REF["models"][model]
    df = load_data("cake") if m["data"] == "cake" else pd.read_csv(REF_DIR / f"{m['data']}.csv",
                                                                  dtype={"Worker": str, "Block": str})
    drop = np.atleast_1d(np.asarray(m["drop"], dtype=int)) - 1
    return df.drop(index=df.index[drop]).reset_index(drop=True) if drop.size else df


@pytest.fixture(scope="module")
def emm_fit():
    """Each reference model at lme4's theta (REML): the means are checked without the optimizer's own error,
    and the two-term Machines and Oats models compile no optimizer of their own (lmm_jax's fits of them agree
    with lme4's theta to 2e-7)."""
    cache: dict[str, lmm_jax.LMMResult] = {}

    def get(model: str) -> lmm_jax.LMMResult:
        if model not in cache:
            m = REF["models"][model]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lmm_jax.RankDeficiencyWarning)
                lmm = lmm_jax.LMM(m["formula"], _ref_data(model))
            cache[model] = lmm_jax.LMMResult.from_theta(lmm, np.atleast_1d(m["theta"]), reml=True)
            np.testing.assert_allclose(cache[model].beta, m["beta"], rtol=1e-7)
        return cache[model]

    return get


def _close(got, want, rtol: float, atol: float = 0.0) -> None:
    got = np.asarray(got, dtype=float)
    want = np.atleast_1d(np.asarray([np.nan if w is None else w for w in np.atleast_1d(want)], dtype=float))
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    assert np.all(err <= rtol * np.abs(want[ok]) + atol), np.max(err / np.maximum(np.abs(want[ok]), 1e-300))


def _query_id(q: dict) -> str:
    method = q["method"] if isinstance(q["method"], (str, type(None))) else "custom"
    at = "-at" if isinstance(q["at"], dict) else ""
    return "-".join(str(x) for x in [q["model"], "*".join(_names(q["specs"])), "|".join(_names(q["by"])),
                                     q["weights"], method, q["adjust"] or "default"] if x) + at


QUERIES = [(i, ddf) for i in range(len(REF["queries"])) for ddf in ("satterthwaite", "kenward_roger")]


@pytest.mark.parametrize("i,ddf", QUERIES, ids=[f"{_query_id(REF['queries'][i])}-{d}" for i, d in QUERIES])
def test_emmeans_and_contrasts_match_r(emm_fit, i, ddf):
    q = REF["queries"][i]
    r = q[ddf]
    fit = emm_fit(q["model"])
    e = fit.emmeans(_names(q["specs"]), by=_names(q["by"]) or None, at=q["at"] if isinstance(q["at"], dict) else None,
                    weights=q["weights"], ddf=ddf.replace("_", "-"))
    want = r["emmeans"]
    table = e.table
    for v in _names(q["specs"]) + _names(q["by"]):
        got_v = table[v].tolist()
        assert [str(x) for x in got_v] == [str(x) for x in want[v]] or np.allclose(np.asarray(got_v, float),
                                                                                 want[v])
    lower, upper = ("lower.CL", "upper.CL") if "lower.CL" in want else ("asymp.LCL", "asymp.UCL")
    scale = np.nanmax(np.abs(table["emmean"])) if table["emmean"].notna().any() else 1.0
    _close(table["emmean"], want["emmean"], RTOL, 1e-9 * scale)
    _close(table["SE"], want["SE"], RTOL)
    _close(table["df"], want["df"], DF_RTOL)
    _close(table["lower"], want[lower], RTOL, 1e-9 * scale)
    _close(table["upper"], want[upper], RTOL, 1e-9 * scale)
    if q["method"] is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # emmeans' notes (tukey -> sidak) are warnings here
        con = e.contrast(q["method"], q["adjust"])
    want = r["contrast"]
    assert con["contrast"].tolist() == list(np.atleast_1d(want["contrast"]))
    for v in _names(q["by"]):
        assert [str(x) for x in con[v]] == [str(x) for x in want[v]] or np.allclose(con[v].astype(float), want[v])
    assert con.attrs["adjust"] == r["adjust"]
    ratio = "t.ratio" if "t.ratio" in want else "z.ratio"
    scale = np.nanmax(np.abs(con["estimate"])) if con["estimate"].notna().any() else 1.0
    _close(con["estimate"], want["estimate"], RTOL, 1e-9 * scale)
    _close(con["SE"], want["SE"], RTOL)
    _close(con["df"], want["df"], DF_RTOL)
    _close(con["t.ratio"], want[ratio], RTOL, 1e-9 * np.nanmax(np.abs(np.r_[con["t.ratio"], 1.0])))
    _close(con["p.value"], want["p.value"], P_RTOL, P_ATOL)


@pytest.mark.parametrize("method", ["holm", "hochberg", "bonferroni", "BH", "BY"])
def test_p_adjust_matches_r(method):
    ref = REF["p_adjust"]
    np.testing.assert_allclose(p_adjust(np.asarray(ref["p"]), method), ref[method], rtol=1e-12)


def test_emmeans_entry_points_and_errors(emm_fit):
    fit = emm_fit("cake")
    e = lmm_jax.emmeans(fit, "temperature | recipe")
    assert isinstance(e, EMMeans) and e.specs == ("temperature",) and e.by == ("recipe",)
    pd.testing.assert_frame_equal(e.table, emmeans(fit, ["temperature"], by="recipe").table)
    # the means are the model's predictions averaged over the grid: recipe A's is the mean of its 6 cells
    cells = fit.emmeans(["recipe", "temperature"]).table
    a = fit.emmeans("recipe").table
    assert a["emmean"].iloc[0] == pytest.approx(cells.loc[cells["recipe"] == "A", "emmean"].mean(), rel=1e-12)
    grand = fit.emmeans("1").table
    assert grand["1"].tolist() == ["overall"]
    assert grand["emmean"].iloc[0] == pytest.approx(a["emmean"].mean(), rel=1e-12)
    pd.testing.assert_frame_equal(e.pairs(), e.contrast("pairwise"))
    assert "Averaged over" not in repr(e) and "satterthwaite" in repr(e)
    trt = fit.emmeans("recipe").contrast("trt.vs.ctrl", ref="C")
    assert trt["contrast"].tolist() == ["A - C", "B - C"]
    with pytest.warns(UserWarning, match="sidak"):
        custom = fit.emmeans("recipe").contrast({"A - B": [1, -1, 0], "B - C": [0, 1, -1]}, adjust="tukey")
    assert custom.attrs["adjust"] == "sidak"
    with pytest.raises(InferenceError, match="mvt"):
        fit.emmeans("recipe").contrast("consec")
    with pytest.raises(InferenceError, match="not variables of the fixed part"):
        fit.emmeans("replicate")
    with pytest.raises(InferenceError, match="weights must be"):
        fit.emmeans("recipe", weights="cell")
    with pytest.raises(InferenceError, match="adjust must be"):
        fit.emmeans("recipe").contrast("pairwise", adjust="dunnett")
    with pytest.raises(InferenceError, match="needs 3 finite"):
        fit.emmeans("recipe").contrast({"x": [1, -1]})
    with pytest.raises(DataError, match="not a level"):
        fit.emmeans("recipe", at={"temperature": ["175", "999"]})
    with pytest.raises(InferenceError, match="ddf must be"):
        fit.emmeans("recipe", ddf="bogus")
    sub = fit.emmeans("recipe", at={"temperature": "175"}).table          # at restricts a factor's levels
    assert sub["emmean"].tolist() == pytest.approx(cells["emmean"].iloc[:3].tolist(), rel=1e-12)

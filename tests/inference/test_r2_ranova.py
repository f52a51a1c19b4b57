"""R-squared and ICC against R's performance, ranova and drop1 against lmerTest.

References: tests/reference/r2_ranova.json (make_r2_ranova_reference.R): lme4 fits of sleepstudy (a
correlated and an uncorrelated random slope, and a rank-deficient X), Penicillin (crossed), Pastes
(nested), cake (factorial), mlmRev's Exam (tests/reference/exam.csv.gz; a random slope by ML, a random
intercept by REML), Exam's weighted cell means, Spruce with weights and an offset, and Dyestuff2 (singular).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.build.formula import parse_formula
from lmm_jax.errors import InferenceError, SingularFitWarning
from lmm_jax.inference.ranova import findbars, reduced_bars

from tests.helpers import REF_DIR, load_data

REF = json.loads((REF_DIR / "r2_ranova.json").read_text())["cases"]
CASES = list(REF)
TOL = 1e-6          # R2, ICC, variances, logLik, LRT (relative)
TOL_F = 1e-4        # F and its denominator df (relative)


def _frame(name: str) -> tuple[pd.DataFrame, np.ndarray | str | None]:
    if name == "exam":
        return pd.read_csv(REF_DIR / "exam.csv.gz", dtype={"school": str}), None
    if name == "exam_cells":
        return pd.read_csv(REF_DIR / "weights" / "exam_cells.csv", dtype={"school": str}), "n"
    if name == "spruce":
        df = pd.read_csv(REF_DIR / "weights" / "spruce.csv", dtype={"plot": str})
        return df, np.resize([1.0, 2.0], len(df))
    if name == "sleep_cells":
        df = load_data("sleepstudy")
        df["f"] = (df["Days"] % 3).astype(str)
        df["g"] = np.where(df["Days"] < 5, "a", "b")
        return df[~((df["f"] == "0") & (df["g"] == "b"))].reset_index(drop=True), None
    return load_data(name), None


@pytest.fixture(scope="module")
def case_fit():
    cache: dict[str, lmm_jax.LMMResult] = {}

    def get(case: str) -> lmm_jax.LMMResult:
        if case not in cache:
            ref = REF[case]
            data, weights = _frame(ref["data"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SingularFitWarning)
                warnings.simplefilter("ignore", lmm_jax.RankDeficiencyWarning)
                cache[case] = lmm_jax.LMM(ref["formula"], data, weights=weights).fit(reml=ref["reml"])
        return cache[case]

    return get


def _close(a, b, tol: float = TOL, atol: float = 1e-12) -> bool:
    """Within ``tol`` relative to |b| plus ``atol``; None (R's NA) matches NaN."""
    a = np.atleast_1d(np.asarray(a, dtype=float))
    b = np.atleast_1d(np.asarray([np.nan if v is None else v for v in np.atleast_1d(b)], dtype=float))
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = ~np.isnan(b)
    return bool(np.all(np.abs(a[ok] - b[ok]) <= tol * np.abs(b[ok]) + atol))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _rtable(ref: dict) -> pd.DataFrame:
    values = [np.atleast_1d(np.asarray([np.nan if v is None else v for v in np.atleast_1d(col)], dtype=float))
              for col in ref["values"]]
    rows = np.atleast_1d(ref["rows"]).tolist() if len(ref["rows"]) else []
    return pd.DataFrame(dict(zip(np.atleast_1d(ref["columns"]), values)) if rows else {}, index=rows)


# -- R-squared and ICC (performance) -----------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_r2_and_icc_match_performance(case_fit, case):
    fit, ref = case_fit(case), REF[case]
    r2 = _quiet(fit.r2)
    icc = _quiet(fit.icc)
    v = r2.attrs["variances"]
    assert _close(v.var_fixed, ref["variance"]["var_fixed"])
    assert _close(v.var_random, ref["variance"]["var_random"])
    assert _close(v.var_residual, ref["variance"]["var_residual"])
    assert list(v.var_intercept) == np.atleast_1d(ref["variance"]["intercept_names"]).tolist()
    assert _close(list(v.var_intercept.values()), ref["variance"]["var_intercept"])
    assert _close(r2[["R2_conditional", "R2_marginal"]], [ref["r2"]["conditional"], ref["r2"]["marginal"]])
    assert _close(icc[["ICC_adjusted", "ICC_unadjusted"]], [ref["icc"]["adjusted"], ref["icc"]["unadjusted"]])


@pytest.mark.parametrize("case", [c for c in CASES if "icc_by_group" in REF[c]])
def test_icc_by_group_matches_performance(case_fit, case):
    out = _quiet(case_fit(case).icc, by_group=True)
    ref = REF[case]["icc_by_group"]
    assert out["Group"].tolist() == np.atleast_1d(ref["group"]).tolist()
    assert _close(out["ICC"], ref["icc"])


@pytest.mark.parametrize("case", ["penicillin", "exam_intercept", "spruce_offset_weighted", "sleep_slope"])
def test_r2_by_group_matches_performance(case_fit, case):
    out = _quiet(case_fit(case).r2, by_group=True)
    ref = REF[case]["r2_by_group"]
    assert out["Level"].tolist() == ref["level"]
    # sleep_slope's Level 1 is 1 - sigma^2 / sigma0^2 with sigma0 = sigma in theory: lme4 gives -2e-8 (its
    # optimiser's tolerance), hence an absolute 1e-6 besides the relative one
    assert _close(out["R2"], ref["r2"], atol=1e-6)


def test_r2_warnings_and_errors(case_fit):
    slope = case_fit("sleep_slope")
    with pytest.warns(UserWarning, match="random slopes: the ICCs by grouping factor are not accurate"):
        slope.icc(by_group=True)
    with pytest.warns(SingularFitWarning, match="tolerance=1e-05"):
        r2 = case_fit("dyestuff2_singular").r2()
    assert np.isnan(r2["R2_conditional"]) and r2["R2_marginal"] == 0.0
    with pytest.raises(InferenceError, match=r"\['cask'\] \(nested"):
        case_fit("pastes").r2(by_group=True)
    with pytest.raises(InferenceError, match="tolerance must be"):
        slope.icc(tolerance=-1)
    data = load_data("sleepstudy")
    no_fixed_slope = lmm_jax.fit("Reaction ~ 1 + (Days | Subject)", data)
    with pytest.warns(UserWarning, match="random slopes are not present as fixed effects"):
        no_fixed_slope.r2()


# -- ranova (lmerTest) -----------------------------------------------------------------------
@pytest.mark.parametrize("reduce_terms", [True, False], ids=["reduced", "whole"])
@pytest.mark.parametrize("case", CASES)
def test_ranova_matches_lmertest(case_fit, case, reduce_terms):
    ref = _rtable(REF[case]["ranova" if reduce_terms else "ranova_whole_terms"])
    table = _quiet(case_fit(case).ranova, reduce_terms=reduce_terms)
    assert table.index.tolist() == ref.index.tolist()
    assert table["npar"].tolist() == ref["npar"].astype(int).tolist()
    for col in ("logLik", "AIC", "LRT", "Df"):
        assert _close(table[col], ref[col]), col
    assert _close(table["Pr(>Chisq)"], ref["Pr(>Chisq)"], 1e-5)


def test_findbars_expands_as_lme4():
    pf = parse_formula("y ~ x + (1 | a/b) + (x + z || g) + (0 + x | h)")
    assert [b.text for b in findbars(pf.random)] == ["(1 | b:a)", "(1 | a)", "(1 | g)", "(0 + x | g)",
                                                     "(0 + z | g)", "(0 + x | h)"]
    bar = findbars(parse_formula("y ~ (x * z | g)").random)[0]
    assert [(name, new.text) for name, new in reduced_bars(bar, True)] == [("x:z in (x * z | g)", "(x + z | g)")]
    bar = findbars(parse_formula("y ~ (0 + x + z | g)").random)[0]
    assert [(name, new.text) for name, new in reduced_bars(bar, True)] == [
        ("x in (0 + x + z | g)", "(0 + z | g)"), ("z in (0 + x + z | g)", "(0 + x | g)")]
    assert reduced_bars(bar, False) == [("(0 + x + z | g)", None)]


# -- drop1 (lmerTest) ------------------------------------------------------------------------
DROP1 = [(c, "satterthwaite") for c in CASES] + [(c, "kenward-roger") for c in CASES
                                                  if "drop1_kenward_roger" in REF[c]]


@pytest.mark.parametrize("case,ddf", DROP1)
def test_drop1_matches_lmertest(case_fit, case, ddf):
    ref = _rtable(REF[case]["drop1_" + ddf.replace("-", "_")])
    table = case_fit(case).drop1(ddf=ddf)
    assert table.index.tolist() == ref.index.tolist()
    if not len(ref):
        return
    assert _close(table["NumDF"], ref["NumDF"], 0.0)
    for col in ("F value", "DenDF", "Pr(>F)", "Sum Sq"):
        assert _close(table[col], ref[col], TOL_F), col

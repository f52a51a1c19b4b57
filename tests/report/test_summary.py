"""``fit.summary()``: lme4's text (a ``str``) with its tables as DataFrames and an HTML
rendering, the t tests under the chosen ddf; numbers checked against lme4 and lmerTest."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax.report.summary import Summary
from tests.conftest import load_reference

SLEEPSTUDY_TEXT = """\
Linear mixed model fit by REML [lmm_jax]
Formula: Reaction ~ Days + (Days | Subject)

REML criterion at convergence: 1743.6283

Scaled residuals:
    Min      1Q Median     3Q    Max
-3.9536 -0.4634 0.0231 0.4634 5.1793

Random effects:
 Groups   Name        Variance Std.Dev. Corr
 Subject  (Intercept)    612.1    24.74
          Days           35.07    5.922 0.07
 Residual                654.9    25.59
Number of obs: 180, groups:  Subject, 18

Fixed effects:
            Estimate Std. Error    df t value Pr(>|t|)
(Intercept)    251.4      6.825 17.00  36.838  < 2e-16 ***
Days           10.47      1.546 17.00   6.771 3.26e-06 ***
---
Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1
Degrees of freedom: Satterthwaite's method (exact derivatives)

Correlation of Fixed Effects:
     (Intr)
Days -0.138"""


def test_summary_is_lme4s_text_as_a_str(sleepstudy_fit, capsys):
    s = sleepstudy_fit.summary()
    assert isinstance(s, Summary) and isinstance(s, str)
    assert s == SLEEPSTUDY_TEXT and str(s) == SLEEPSTUDY_TEXT and type(str(s)) is str
    assert repr(s) == SLEEPSTUDY_TEXT                     # the prompt shows the layout, not a quoted string
    print(s)
    assert capsys.readouterr().out == SLEEPSTUDY_TEXT + "\n"
    assert s + "!" == SLEEPSTUDY_TEXT + "!" and "REML criterion" in s and len(s.splitlines()) == 27
    assert json.loads(json.dumps(s)) == SLEEPSTUDY_TEXT


def test_summary_tables_hold_lme4s_numbers(sleepstudy_fit):
    ref = load_reference("sleepstudy_reml")
    s = sleepstudy_fit.summary()
    assert s.ddf == "satterthwaite"

    ct = s.coefficients
    assert list(ct.columns) == ["estimate", "std_error", "df", "t", "p"] and list(ct.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(ct.estimate, ref["beta"], rtol=1e-6)
    np.testing.assert_allclose(ct.std_error, ref["beta_se"], rtol=1e-5)
    np.testing.assert_allclose(ct.df, ref["df_satterthwaite"], rtol=1e-4)
    np.testing.assert_allclose(ct.p, ref["p_satterthwaite"], rtol=1e-4)

    re = s.random_effects
    assert list(re.columns) == ["group", "name", "name2", "parameter", "variance", "std_dev", "correlation",
                                "n_groups"]
    assert list(re.group) == ["Subject", "Subject", "Subject", "Residual"]
    assert list(re.name) == ["(Intercept)", "Days", "(Intercept)", ""] and list(re.name2) == ["", "", "Days", ""]
    assert list(re.parameter) == ["sd_(Intercept)|Subject", "sd_Days|Subject", "cor_Days.(Intercept)|Subject",
                                  "sigma"]
    np.testing.assert_allclose(re.variance, [r["vcov"] for r in ref["varcorr"]], rtol=1e-4)
    sdcor = [r["sdcor"] for r in ref["varcorr"]]        # 24.74, 5.922, 0.0656, 25.59
    np.testing.assert_allclose(re.std_dev, [sdcor[0], sdcor[1], np.nan, sdcor[3]], rtol=1e-4)
    np.testing.assert_allclose(re.correlation, [np.nan, np.nan, sdcor[2], np.nan], rtol=1e-3)
    assert re.n_groups.tolist() == [18, 18, 18, pd.NA]

    fs = s.fit_statistics
    assert list(fs.columns) == ["method", "nobs", "df_resid", "sigma", "loglik", "aic", "bic", "deviance",
                                "reml_criterion"]
    row = fs.iloc[0]
    assert (row.method, row.nobs, row.df_resid) == ("REML", 180, 174) and np.isnan(row.deviance)
    np.testing.assert_allclose([row.sigma, row.loglik, row.aic, row.bic, row.reml_criterion],
                               [ref["sigma"], ref["logLik"], ref["AIC"], ref["BIC"], ref["reml_criterion"]],
                               rtol=1e-7)

    back = pickle.loads(pickle.dumps(s))                # the text and the tables, without the fit
    assert type(back) is Summary and back == s and back.ddf == s.ddf
    pd.testing.assert_frame_equal(back.random_effects, re)
    pd.testing.assert_frame_equal(back.fit_statistics, fs)
    assert back._repr_html_() == s._repr_html_()


def test_ml_summary_statistics_and_html(fits):
    ref = load_reference("ingot_ml")
    s = fits("ingot_ml").summary()
    row = s.fit_statistics.iloc[0]
    assert (row.method, row.nobs, row.df_resid) == ("ML", 21, 16) and np.isnan(row.reml_criterion)
    np.testing.assert_allclose([row.loglik, row.aic, row.bic, row.deviance],
                               [ref["logLik"], ref["AIC"], ref["BIC"], ref["deviance_ml"]], rtol=1e-8)
    assert s.random_effects.n_groups.tolist() == [7, pd.NA]

    html = s._repr_html_()
    assert html.startswith('<div class="lmm-jax-summary">') and html.endswith("</div>")
    assert "<b>Linear mixed model fit by maximum likelihood [lmm_jax]</b>" in html
    assert "Formula: pres ~ metal + (1|ingot)" in html
    # fit statistics, random effects and fixed effects: three tables, 1 + 2 + 3 body rows
    assert html.count("<table") == 3 and html.count("<tbody><tr>") == 3 and html.count("</tr>") == 3 + 1 + 2 + 3
    for cell in ("AIC", "125.7", "130.9", "-57.9", "115.7", "groups: ingot", ">7<", "9.812", "2.982",
                 "Pr(&gt;|t|)", "Std. Error", "metali", "t value", "Satterthwaite&#x27;s method"):
        assert cell in html, cell


def test_summary_follows_ddf(sleepstudy_fit):
    ref = load_reference("sleepstudy_reml")
    kr = sleepstudy_fit.summary(ddf="kenward-roger")
    assert kr.ddf == "kenward-roger" and sleepstudy_fit.summary(ddf="Kenward-Roger").ddf == "kenward-roger"
    np.testing.assert_allclose(kr.coefficients.df, ref["df_kenward_roger"], rtol=1e-5)
    np.testing.assert_allclose(kr.coefficients.std_error, ref["se_kenward_roger"], rtol=1e-5)
    assert "Degrees of freedom: Kenward-Roger's method (standard errors from the adjusted covariance)" in kr
    assert "Satterthwaite" not in kr and "Kenward-Roger" in kr._repr_html_()
    # everything but the fixed-effects block is the default summary's
    assert kr.splitlines()[:16] == SLEEPSTUDY_TEXT.splitlines()[:16]

    res = sleepstudy_fit.summary(ddf="residual")        # n - p = 178 df: the table is the chosen ddf's
    assert "Days           10.47      1.546 178.00   6.771 1.79e-10 ***" in res   # R: 2 * pt(-6.771485, 178)
    assert "Degrees of freedom: residual, n - p = 178" in res
    np.testing.assert_array_equal(res.coefficients.df, [178.0, 178.0])
    with pytest.raises(lmm_jax.InferenceError, match="ddf must be one of"):
        sleepstudy_fit.summary(ddf="containment")

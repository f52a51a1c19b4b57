"""Bad input gets a clear, typed error; hard but valid input just works.

One test per kind of input: first the inputs that must raise (a
:class:`~lmm_jax.FormulaError` or :class:`~lmm_jax.DataError` whose message
names the problem), then the inputs that must fit. The numerically hard cases
are compared with lme4 fits made by ``reference/make_robustness_reference.R``
(data and fits in ``reference/robust/``): logLik within 1e-6, fixed effects,
sigma and variance components within 1e-5 relative.

Fits share shapes (80 rows, 8 groups of 10 for the synthetic frame; 120 rows,
12 groups for most lme4 cases) so that each compiled fit is reused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lmm_jax
from lmm_jax import (ConvergenceError, ConvergenceWarning, DataError, FormulaError, LMMError,
                     RankDeficiencyWarning, SingularFitWarning)
from lmm_jax.core.diagnostics import assess
from lmm_jax.errors import ScalingWarning

ROBUST = Path(__file__).parent / "reference" / "robust"
RTOL = 1e-5        # fixed effects, sigma, variance components (relative)
LOGLIK_TOL = 1e-6  # log-likelihood (absolute)


# -- shared data and fits --------------------------------------------------------
@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """80 rows, 8 groups of 10, y = 1 + 0.5 x + group effect + noise."""
    rng = np.random.default_rng(20261122)
    g = np.repeat(np.arange(8), 10)
    x = rng.normal(size=80)
    y = 1.0 + 0.5 * x + rng.normal(size=8)[g] + rng.normal(size=80)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})


def quiet_fit(formula, data, **kwargs) -> lmm_jax.LMMResult:
    """Fit with every lmm_jax warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", SingularFitWarning)
        warnings.simplefilter("error", RankDeficiencyWarning)
        return lmm_jax.fit(formula, data, **kwargs)


@pytest.fixture(scope="module")
def base_fit(frame) -> lmm_jax.LMMResult:
    return quiet_fit("y ~ x + (1 | g)", frame)


def assert_same_fit(a: lmm_jax.LMMResult, b: lmm_jax.LMMResult, rtol: float = 1e-9) -> None:
    assert a.nobs == b.nobs
    np.testing.assert_allclose(a.objective, b.objective, rtol=rtol)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e3 * rtol)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e3 * rtol)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e3 * rtol)


def load_robust(case: str) -> tuple[dict, pd.DataFrame]:
    ref = json.loads((ROBUST / f"{case}.json").read_text())
    return ref, pd.read_csv(ROBUST / f"{case}.csv")


_robust_fits: dict[str, lmm_jax.LMMResult] = {}


def robust_fit(case: str, expect_singular: bool | None = None) -> tuple[dict, lmm_jax.LMMResult]:
    ref, data = load_robust(case)
    if case not in _robust_fits:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _robust_fits[case] = lmm_jax.fit(ref["formula"], data, reml=ref["reml"])
        kinds = {w.category for w in caught}
        assert ConvergenceWarning not in kinds, [str(w.message) for w in caught]
        assert (SingularFitWarning in kinds) == bool(ref["singular"])
    fit = _robust_fits[case]
    assert fit.converged and fit.diagnostics.ok, fit.diagnostics.messages
    assert fit.singular == bool(ref["singular"])
    return ref, fit


def varcomp(fit: lmm_jax.LMMResult) -> np.ndarray:
    """lme4's as.data.frame(VarCorr(fit))$vcov order."""
    return fit.varcorr["vcov"].to_numpy()


def assert_matches_lme4(fit: lmm_jax.LMMResult, ref: dict, varcomp_rtol: float = RTOL) -> None:
    assert list(fit.fixef.index) == ref["beta_names"]
    assert abs(fit.loglik - ref["logLik"]) < LOGLIK_TOL
    np.testing.assert_allclose(fit.beta, ref["beta"], rtol=RTOL)
    np.testing.assert_allclose(fit.sigma, ref["sigma"], rtol=RTOL)
    vc_ref = np.asarray(ref["varcomp"], dtype=float)
    np.testing.assert_allclose(varcomp(fit), vc_ref, rtol=varcomp_rtol, atol=1e-12 * np.max(np.abs(vc_ref)))
    assert np.all(np.isfinite(fit.std_errors))


# == 2. inputs that must give a clear error ========================================
def test_unknown_column(frame):
    with pytest.raises(DataError, match=r"'xx' is not a column of the data; did you mean 'x'"):
        lmm_jax.LMM("y ~ xx + (1 | g)", frame)
    with pytest.raises(DataError, match=r"grouping factor .*'G' is not a column.*did you mean 'g'"):
        lmm_jax.LMM("y ~ x + (1 | G)", frame)
    with pytest.raises(DataError, match=r"the response 'yy' is not a column.*did you mean 'y'"):
        lmm_jax.LMM("yy ~ x + (1 | g)", frame)


@pytest.mark.parametrize("column, dtype", [(["a", "b"] * 40, "str"), (["a", "b"] * 40, "category"),
                                           (np.arange(80.0), "category"), (np.arange(80.0), "object")])
def test_response_not_numeric(frame, column, dtype):
    data = frame.assign(y=pd.Series(column).astype(dtype))
    with pytest.raises(DataError, match=r"the response 'y' is not numeric \(dtype .*\).*numeric response"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


def test_response_constant(frame):
    with pytest.raises(DataError, match=r"the response 'y' is constant"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(y=3.5))


def test_empty_data(frame):
    with pytest.raises(DataError, match="no rows"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.iloc[:0])
    with pytest.raises(DataError, match="no rows"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": [], "x": [], "g": []})


def test_all_rows_dropped_by_missing_values(frame):
    data = frame.assign(x=np.where(np.arange(80) % 2 == 0, np.nan, frame.x),
                        y=np.where(np.arange(80) % 2 == 1, np.nan, frame.y))
    with pytest.raises(DataError, match=r"all 80 rows have a missing value.*'x': 40.*'y': 40"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


def test_inf_in_response(frame):
    y = frame.y.to_numpy().copy()
    y[5] = np.inf
    with pytest.raises(DataError, match=r"the response 'y' has 1 infinite"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(y=y))


def test_inf_in_covariates(frame):
    x = frame.x.to_numpy().copy()
    x[7] = -np.inf
    with pytest.raises(DataError, match=r"fixed-effects column\(s\) \['x'\] have infinite"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(x=x))
    with pytest.raises(DataError, match=r"random-effects term \(0 \+ x \| g\) has infinite.*\['x'\]"):
        lmm_jax.LMM("y ~ 1 + (0 + x | g)", frame.assign(x=x))
    with pytest.raises(DataError, match=r"infinite or NaN values \(after transforms"), np.errstate(divide="ignore"):
        lmm_jax.LMM("y ~ np.log(x) + (1 | g)", frame.assign(x=frame.x.abs().where(frame.index != 3, 0.0)))


def test_grouping_factor_with_one_level(frame):
    with pytest.raises(DataError, match=r"grouping factor 'g' has 1 level\(s\).*at least 2 levels"):
        lmm_jax.LMM("y ~ x + (1 | g)", frame.assign(g="only"))


def test_term_with_as_many_levels_as_observations(frame):
    with pytest.raises(DataError, match=r"grouping factor 'id' has 80 levels for 80 observations"):
        lmm_jax.LMM("y ~ x + (1 | id)", frame.assign(id=np.arange(80)))


def test_more_random_effects_than_data_can_identify(frame):
    # 40 levels x 2 columns = 80 random effects for 80 observations (lme4: nobs > nRE)
    with pytest.raises(DataError, match=r"term \(x \| h\) has 80 random effects \(40 levels x 2 columns\)"):
        lmm_jax.LMM("y ~ x + (x | h)", frame.assign(h=np.arange(80) // 2))
    with pytest.raises(DataError, match=r"80 fixed-effects columns for 80 observations"):
        lmm_jax.LMM("y ~ label + (1 | g)", frame.assign(label=[f"r{i}" for i in range(80)]))


def test_random_slope_variable_not_in_the_data(frame):
    with pytest.raises(DataError, match=r"variable of the random-effects term \(z \| g\): 'z' is not a column"):
        lmm_jax.LMM("y ~ x + (z | g)", frame)


@pytest.mark.parametrize("formula, message", [
    ("y ~ x + (x | )", "no grouping factor after '|'"),
    ("y ~ x + ( | g)", "nothing before '|'"),
    ("y ~ x + (x | g", r"unbalanced parentheses: '\(' is never closed"),
    ("y ~ x + x | g)", r"unbalanced parentheses: '\)' without a matching"),
    ("y ~ x + (x ||| g)", "more than one bar"),
    ("y ~ x + (x || g || h)", "more than one bar"),
    ("y ~ x || g", "'|' outside parentheses"),
])
def test_malformed_bars(frame, formula, message):
    with pytest.raises(FormulaError, match=message) as info:
        lmm_jax.LMM(formula, frame)
    assert info.value.formula == formula and info.value.position is not None
    assert "^" in str(info.value)  # points at the token


def test_formula_without_tilde(frame):
    with pytest.raises(FormulaError, match="formula has no '~'"):
        lmm_jax.LMM("y x + (1 | g)", frame)
    with pytest.raises(FormulaError, match="more than one '~'"):
        lmm_jax.LMM("y ~ x ~ (1 | g)", frame)


def test_duplicated_column_names(frame):
    data = pd.concat([frame, frame[["x"]]], axis=1)
    with pytest.raises(DataError, match=r"duplicated column names \['x'\]"):
        lmm_jax.LMM("y ~ x + (1 | g)", data)


@pytest.mark.parametrize("bad", [[1, 2, 3], np.zeros((80, 3)), "data.csv", 42, None])
def test_non_dataframe_data(frame, base_fit, bad):
    with pytest.raises(DataError, match="must be a pandas DataFrame or a dict of equal-length arrays"):
        lmm_jax.LMM("y ~ x + (1 | g)", bad)
    with pytest.raises(DataError, match="equal length"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": frame.y.to_numpy(), "x": frame.x.to_numpy()[:5], "g": frame.g})
    with pytest.raises(DataError, match="1-dimensional"):
        lmm_jax.LMM("y ~ x + (1 | g)", {"y": np.zeros((80, 2)), "x": frame.x.to_numpy(), "g": frame.g})
    as_dict = {c: frame[c].to_numpy() for c in frame.columns}
    assert_same_fit(quiet_fit("y ~ x + (1 | g)", as_dict), base_fit)


def test_errors_are_lmm_errors():
    assert issubclass(FormulaError, LMMError) and issubclass(DataError, LMMError)
    assert issubclass(ConvergenceError, LMMError)
    assert issubclass(FormulaError, ValueError) and issubclass(DataError, ValueError)


# == 3. inputs that must just work =================================================
def test_missing_values_in_used_columns(frame, base_fit):
    extra = pd.DataFrame({"y": [np.nan, 1.0, 2.0, 3.0], "x": [0.1, np.nan, 0.3, 0.4], "g": ["g0", "g1", None, "g2"]})
    extra.loc[3, "y"] = np.nan
    data = pd.concat([frame, extra], ignore_index=True)
    data["unused"] = np.where(np.arange(len(data)) % 3 == 0, np.nan, 1.0)  # ignored: not in the formula
    fit = quiet_fit("y ~ x + (1 | g)", data)
    assert fit.n_dropped == 4 and fit.nobs == 80
    assert_same_fit(fit, base_fit)


@pytest.mark.parametrize("dtype", ["int", "float", "str", "category", "object"])
def test_grouping_columns_of_any_dtype(frame, base_fit, dtype):
    codes = pd.Series(frame.g.str[1:].astype(int))
    g = codes.astype(dtype) if dtype != "object" else codes.map(lambda c: c if c % 2 else f"level{c}")
    fit = quiet_fit("y ~ x + (1 | g)", frame.assign(g=g))
    assert_same_fit(fit, base_fit)
    assert fit.ngroups == {"g": 8}


def test_boolean_grouping_column(frame):
    """A boolean grouping factor has the levels False and True and gives the
    same design as the same factor written as text."""
    flag = (frame.x > 0).to_numpy()
    m_bool = lmm_jax.LMM("y ~ x + (1 | g) + (1 | flag)", frame.assign(flag=flag))
    m_text = lmm_jax.LMM("y ~ x + (1 | g) + (1 | flag)", frame.assign(flag=np.where(flag, "True", "False")))
    term = [t for t in m_bool.design.terms if t.group == "flag"][0]
    assert list(term.levels) == ["False", "True"]
    np.testing.assert_array_equal(term.codes, flag.astype(int))
    for a, b in zip(jax.tree_util.tree_leaves(m_bool.products), jax.tree_util.tree_leaves(m_text.products)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_column_names_with_spaces_or_dots(frame, base_fit):
    data = frame.rename(columns={"y": "reaction time", "x": "dose.mg", "g": "subject id"})
    for formula in ["`reaction time` ~ dose.mg + (1 | `subject id`)",
                    "`reaction time` ~ `dose.mg` + (1 | `subject id`)",
                    "Q('reaction time') ~ Q('dose.mg') + (1 | `subject id`)"]:
        fit = quiet_fit(formula, data)
        assert_same_fit(fit, base_fit)
        assert fit.ngroups == {"subject id": 8}
    dotted = frame.rename(columns={"x": "x.1", "g": "g.id"}).assign(**{"x.1.sq": frame.x ** 2})
    fit = quiet_fit("y ~ x.1 + (1 | g.id)", dotted)  # x.1.sq is not mistaken for x.1
    assert_same_fit(fit, base_fit)
    assert list(fit.fixef.index) == ["(Intercept)", "x.1"]


def test_covariates_on_very_different_scales():
    ref, fit = robust_fit("scales")
    assert_matches_lme4(fit, ref)


# x = 1e4 + N(0, 1): the cross-products X'X, X'y, y'y of uncentred data carry rounding errors of about
# eps * n * offset^2, so the Schur complements behind pwrss and log|L_X| lose digits: the profiled
# objective is noisy at the 1e-6 level (measured: the deviance at theta * (1 +- 1e-8) scatters over
# 3-4e-6, where the true change is 1e-16). logLik is held to that noise floor; theta, sigma and beta,
# which the noise does not move measurably (1e-8), to the usual 1e-5. Removing the noise itself would
# take products formed in a QR basis of X, with y minus its OLS fit (a change of basis of beta).
CANCELLATION_LOGLIK_TOL = 4e-6


@pytest.mark.parametrize("case", ["offsets_years", "offsets_years_ml", "offsets", "offsets_ml"])
def test_covariates_and_response_with_large_offsets(case):
    """x = 2000 + N(0, 9) (years) with y about 500, and the extreme
    x = 1e4 + N(0, 1) with y about 1e3. lme4 itself loses digits on the raw
    data, so the reference is lme4's fit of the shifted data (x - shift,
    y - shift), to which theta, sigma, the slope and the criterion are
    invariant; the intercept moves by shift_y - shift_x * slope."""
    ref, fit = robust_fit(case)
    sh = ref["shifted"]
    assert abs(fit.loglik - sh["logLik"]) < (LOGLIK_TOL if "years" in case else CANCELLATION_LOGLIK_TOL)
    np.testing.assert_allclose(fit.sigma, sh["sigma"], rtol=RTOL)
    np.testing.assert_allclose(varcomp(fit), sh["varcomp"], rtol=RTOL)
    slope = sh["beta"][1]
    np.testing.assert_allclose(fit.beta, [sh["beta"][0] + sh["shift"]["y"] - sh["shift"]["x"] * slope, slope],
                               rtol=RTOL)


def test_large_offsets_warn_with_a_fix():
    """Beyond 1e3 SDs from zero the loss of digits is announced (the extreme
    case above); the years case (about 670 SDs) fits silently."""
    ref, data = load_robust("offsets")
    with pytest.warns(ScalingWarning, match=r"x \(mean 1e\+04, SD .*lie more than 1000 SDs from zero.*center"):
        lmm_jax.LMM(ref["formula"], data)
    ref, data = load_robust("offsets_years")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalingWarning)
        lmm_jax.LMM(ref["formula"], data)
        lmm_jax.LMM("y ~ 0 + x + (1 | g)", data.assign(x=data.x + 1e6))  # no intercept: nothing to center


def test_rank_deficient_X(frame, base_fit):
    data = frame.assign(x2=2.0 * frame.x - 1.0, x3=frame.x)
    with pytest.warns(RankDeficiencyWarning, match=r"dropping 2 column\(s\): \['x2', 'x3'\]"):
        fit = lmm_jax.fit("y ~ x + x2 + x3 + (1 | g)", data)
    assert fit.design.dropped_columns == ("x2", "x3")
    assert list(fit.fixef.index) == ["(Intercept)", "x"]
    assert_same_fit(fit, base_fit)


def test_perfectly_balanced_groups():
    ref, fit = robust_fit("balanced")
    assert_matches_lme4(fit, ref)


def test_very_unbalanced_groups():
    for case in ["unbalanced", "unbalanced_slope"]:
        ref, fit = robust_fit(case)
        assert_matches_lme4(fit, ref)


def test_groups_of_size_one():
    ref, fit = robust_fit("singletons")
    assert_matches_lme4(fit, ref)
    assert (fit.design.terms[0].m, fit.ngroups["g"]) == (39, 39)


def test_near_zero_variance_component():
    ref, fit = robust_fit("near_zero_var")
    assert 0 < fit.theta[0] < 0.1 and not fit.singular
    assert_matches_lme4(fit, ref)


def test_exactly_zero_variance_component():
    ref, fit = robust_fit("zero_var")
    assert fit.singular and fit.theta[0] == 0.0
    assert_matches_lme4(fit, ref)
    vc = fit.varcorr
    assert vc.loc[0, "vcov"] == 0.0 and np.isnan(vc.loc[0, "se"])  # no SE at the boundary, as lme4
    assert np.isfinite(vc.loc[1, "se"])
    assert np.all(np.isfinite(fit.ranef["g"].to_numpy())) and np.all(fit.ranef["g"].to_numpy() == 0.0)
    assert np.all(np.isfinite(fit.fitted))
    assert "boundary" not in " ".join(fit.diagnostics.messages)


def test_residual_variance_near_zero():
    """Residual SD 1e-3 of the group SD (theta about 1000)."""
    ref, fit = robust_fit("tiny_residual")
    assert fit.theta[0] > 500
    # at theta ~ 1000 pwrss is 1e-6 of y'y and the REML criterion is accurate to only ~2e-7 (its
    # scatter over theta * (1 +- 1e-9): 1.5-2.3e-7), so criteria cannot rank points closer than that.
    # Newton ends where the gradient vanishes (|g| 3e-11; at lme4's theta, 982.3469, 4e-8), with a
    # criterion within that noise of lme4's; logLik matches, and the group variance to 2e-5
    with jax.enable_x64(True):       # make_deviance's function computes in float64, as its docstring says
        grad = jax.grad(fit.model.deviance_function(reml=True, param="theta"))(jnp.asarray(fit.theta))
    assert abs(float(grad[0])) < 1e-9
    assert fit.objective <= ref["objective"] + 2.5e-7
    assert_matches_lme4(fit, ref, varcomp_rtol=5e-5)


# == 4. convergence diagnostics ====================================================
def test_diagnostics_at_a_converged_fit(base_fit):
    d = base_fit.diagnostics
    assert d.ok and d.messages == ()
    assert d.max_gradient < 1e-4 and d.min_eigenvalue > 0
    assert d.as_dict()["ok"] is True


def test_diagnostics_flag_a_stopped_fit(frame):
    model = lmm_jax.LMM("y ~ x + (1 | g)", frame)
    with pytest.warns(ConvergenceWarning, match=r"max\|grad\|"):
        fit = model.fit(start=np.array([20.0]), max_iter=1)
    assert not fit.diagnostics.gradient_ok and fit.diagnostics.max_gradient > 2e-3
    with pytest.raises(ConvergenceError, match="stopped after 1 iterations"):
        model.fit(start=np.array([20.0]), max_iter=1, throw=True)


def test_diagnostics_hessian_checks():
    g = np.array([1e-5, 2e-5])
    assert assess(g, np.diag([2.0, 3.0]), np.array([False, False])).ok
    bad = assess(g, np.array([[1.0, 0.0], [0.0, -2.0]]), np.array([False, False]))
    assert not bad.hessian_ok and "1 negative eigenvalue" in bad.messages[-1]
    flat = assess(g, np.diag([1e-9, 3.0]), np.array([False, False]))
    assert not flat.hessian_ok and "close to zero" in flat.messages[-1]
    # a boundary entry is excluded: its gradient need not vanish
    at_boundary = assess(np.array([5.0, 1e-6]), np.diag([-1.0, 3.0]), np.array([True, False]))
    assert at_boundary.ok and at_boundary.gradient[0] == 0.0


def test_diagnostics_from_newton_equal_autodiff_in_theta(x64):
    """Fast path (the optimiser's phi derivatives mapped to theta) against the
    slow one (autodiff of the objective in theta), for a 2x2 term."""
    import jax.numpy as jnp

    from lmm_jax.core.diagnostics import check_convergence, theta_derivatives, theta_derivatives_from_phi
    from lmm_jax.core.estimates import fit_theta
    from lmm_jax.core.parametrization import phi_from_theta
    from lmm_jax.core.start import default_start

    ref, fit = robust_fit("balanced")
    m = fit.model
    phi0, active0 = phi_from_theta(default_start(m), m.structure.ks)        # the fit's own start
    opt = fit_theta(m.products, m.response, jnp.asarray(phi0), jnp.asarray(active0), m.structure, True, 200)
    g_fast, H_fast = theta_derivatives_from_phi(np.asarray(opt.theta), np.asarray(opt.gradient),
                                                np.asarray(opt.hessian), m.structure.ks)
    g_slow, H_slow = theta_derivatives(opt.theta, m.products, m.response, m.structure, True)
    np.testing.assert_allclose(g_fast, np.asarray(g_slow), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(H_fast, np.asarray(H_slow), rtol=1e-8, atol=1e-8)
    slow = check_convergence(opt.theta, m.products, m.response, m.structure, True)
    np.testing.assert_allclose(fit.diagnostics.hessian_eigenvalues, slow.hessian_eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(fit.diagnostics.max_gradient, slow.max_gradient, rtol=1e-6, atol=1e-12)

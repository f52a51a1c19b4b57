"""ThetaLayout: golden positions and lme4 names of theta's entries, and one
naming of a repeated grouping factor across varcorr, Wald, profile and bootstrap tables."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_reference
from lmm_jax.core.parametrization import lambdas_host
from lmm_jax.core.theta_layout import ThetaLayout, make_unique
from lmm_jax.inference.profile import parameters

SUBJECT_SLOPE = (("(Intercept)", "Days"),)


def test_one_scalar_term():
    lay = ThetaLayout((1,), (("(Intercept)",),), ("Batch",))
    assert lay.n_theta == 1 and lay.slices == (slice(0, 1),)
    assert lay.entries == ((0, 0, 0),)
    assert lay.diagonal.tolist() == [True]
    assert lay.names == ("sd_(Intercept)|Batch",)
    assert lay.parameter_names == ("sd_(Intercept)|Batch", "sigma")


def test_one_term_k2_and_k3():
    lay = ThetaLayout((2,), SUBJECT_SLOPE, ("Subject",))
    assert lay.entries == ((0, 0, 0), (0, 1, 0), (0, 1, 1))
    assert lay.diagonal.tolist() == [True, False, True]
    assert lay.names == ("sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject")
    assert lay.varcorr_order.tolist() == [0, 2, 1]          # lme4's VarCorr rows: variances, then covariances
    assert lay.position(0, 0, 1) == lay.position(0, 1, 0) == 1

    lay = ThetaLayout((3,), (("(Intercept)", "Days", "I(Days^2)"),), ("Subject",))
    assert lay.entries == ((0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 1, 1), (0, 2, 1), (0, 2, 2))
    assert lay.names == ("sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject",
                         "cor_I(Days^2).(Intercept)|Subject", "sd_Days|Subject", "cor_I(Days^2).Days|Subject",
                         "sd_I(Days^2)|Subject")
    assert lay.varcorr_order.tolist() == [0, 3, 5, 1, 2, 4]
    assert lay.stacked_row.tolist() == [0, 1, 2, 1, 2, 2]


def test_three_terms():
    lay = ThetaLayout((2, 1, 3), (("(Intercept)", "x"), ("(Intercept)",), ("a", "b", "c")), ("g", "h", "f"))
    assert lay.n_theta == 10 and lay.sizes == (3, 1, 6)
    assert lay.slices == (slice(0, 3), slice(3, 4), slice(4, 10))
    assert lay.term.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    assert lay.row.tolist() == [0, 1, 1, 0, 0, 1, 2, 1, 2, 2]
    assert lay.col.tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 1, 2]
    assert lay.diagonal.tolist() == [True, False, True, True, True, False, False, True, False, True]
    assert lay.stacked_row.tolist() == [0, 1, 1, 2, 3, 4, 5, 4, 5, 5]
    assert lay.position(2, 0, 2) == 6
    assert lay.names[3:5] == ("sd_(Intercept)|h", "sd_a|f")
    for t in range(3):
        r, c = lay.tri(t)
        assert np.all(r >= c) and len(r) == lay.sizes[t]
    # lambdas_host places each slice by (row, col)
    theta = np.arange(1.0, 11.0)
    for t, L in enumerate(lambdas_host(theta, lay.ks)):
        for n in range(lay.slices[t].start, lay.slices[t].stop):
            assert L[lay.row[n], lay.col[n]] == theta[n]
    assert ThetaLayout.of((2, 1, 3)).diagonal.tolist() == lay.diagonal.tolist()
    assert not lay.diagonal.flags.writeable


def test_repeated_grouping_factor():
    """(1 | Subject) + (0 + Days | Subject), as (Days || Subject) expands: R's make.unique suffixes,
    lme4's as.data.frame(VarCorr(fit))$grp."""
    lay = ThetaLayout((1, 1), (("(Intercept)",), ("Days",)), ("Subject", "Subject"))
    assert lay.group_names == ("Subject", "Subject.1")
    assert lay.names == ("sd_(Intercept)|Subject", "sd_Days|Subject.1")
    # (1 | g) + (1 | g): lme4's confint names would collide; these stay distinct
    lay = ThetaLayout((1, 1, 2), (("(Intercept)",), ("(Intercept)",), ("(Intercept)", "x")), ("g", "g", "g"))
    assert lay.names == ("sd_(Intercept)|g", "sd_(Intercept)|g.1", "sd_(Intercept)|g.2", "cor_x.(Intercept)|g.2",
                         "sd_x|g.2")
    assert len(set(lay.names)) == lay.n_theta
    assert make_unique(("a", "a", "a.1")) == ("a", "a.2", "a.1")       # R: make.unique(c("a", "a", "a.1"))


def test_names_need_columns_and_groups():
    with pytest.raises(ValueError, match="column names"):
        ThetaLayout.of((1,)).names
    with pytest.raises(ValueError, match="column counts"):
        ThetaLayout((2,), (("(Intercept)",),), ("g",))
    with pytest.raises(ValueError, match="groups"):
        ThetaLayout((1, 1), (("a",), ("b",)), ("g",))


def test_double_bar_names_agree_across_tables(fits):
    """(Days || Subject): varcorr's grp is lme4's, and Wald, profile and bootstrap names carry the same group."""
    fit = fits("sleepstudy_zerocorr")
    ref = load_reference("sleepstudy_zerocorr")
    assert list(fit.varcorr.grp) == [r["grp"] for r in ref["varcorr"]] == ["Subject", "Subject.1", "Residual"]
    vc = fit.varcorr.iloc[:-1]
    from_varcorr = [f"sd_{v}|{g}" for g, v in zip(vc.grp, vc.var1)] + ["sigma"]
    assert from_varcorr == ["sd_(Intercept)|Subject", "sd_Days|Subject.1", "sigma"]
    wald = fit.confint(method="wald")
    profile_names = [p.name for p in parameters(fit)]
    assert list(wald.index) == profile_names == from_varcorr + list(fit.design.fixef_names)
    assert list(fit.varcorr_table().index) == from_varcorr
    assert fit.design.theta_layout is fit.design.theta_layout           # built once per design
    batch = fit.model.fit_batch(np.asarray(fit.design.y), ddf="none")   # the names only: no t tests compiled
    assert list(batch.estimates().columns) == profile_names

"""Plots render headless to PNG and draw the numbers of the fit (not just
something): the plotted points are read back from the axes and compared with
the result's conditional modes, residuals and intervals."""

from __future__ import annotations

import sys
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

import lmm_jax  # noqa: E402
from lmm_jax import plotting  # noqa: E402


@pytest.fixture(scope="module")
def penicillin():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lmm_jax.SingularFitWarning)
        return lmm_jax.fit("diameter ~ 1 + (1|plate) + (1|sample)", lmm_jax.datasets.load("Penicillin"))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _render(fig, path) -> np.ndarray:
    fig.savefig(path, dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert float(np.std(img[..., :3])) > 0.05, "blank image"
    return img


def _errorbar_data(ax):
    """(x of the points, half widths) of the first errorbar container."""
    container = ax.containers[0]
    x, y = container.lines[0].get_data()
    segs = container.lines[2][0].get_segments()
    half = np.array([(s[1][0] - s[0][0]) / 2 for s in segs])
    return np.asarray(x), np.asarray(y), half


def test_caterpillar_draws_modes_and_condsd_intervals(sleepstudy_fit, tmp_path):
    fig = plotting.caterpillar(sleepstudy_fit, level=0.9)
    _render(fig, tmp_path / "caterpillar.png")
    assert len(fig.axes) == 2
    b, sd = sleepstudy_fit.ranef["Subject"], sleepstudy_fit.ranef_sd["Subject"]
    order = np.argsort(b["(Intercept)"].to_numpy(), kind="stable")
    z = stats.norm.ppf(0.95)
    for ax, col in zip(fig.axes, ["(Intercept)", "Days"]):
        x, y, half = _errorbar_data(ax)
        np.testing.assert_allclose(x, b[col].to_numpy()[order])
        np.testing.assert_allclose(half, z * sd[col].to_numpy()[order])
        np.testing.assert_array_equal(y, np.arange(18))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(b.index[order])
    assert fig.axes[0].get_title() == "Subject: (Intercept)"


def test_caterpillar_one_row_per_factor(penicillin, tmp_path):
    fig = plotting.caterpillar(penicillin)
    _render(fig, tmp_path / "caterpillar2.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["plate: (Intercept)", "sample: (Intercept)"]
    fig = plotting.caterpillar(penicillin, group="sample")
    assert len(fig.axes) == 1 and len(_errorbar_data(fig.axes[0])[0]) == 6
    with pytest.raises(KeyError, match="'batch'.*plate, sample"):
        plotting.caterpillar(penicillin, group="batch")
    with pytest.raises(ValueError, match="level"):
        plotting.caterpillar(penicillin, level=95)


def test_diagnostics_plots_residuals_and_quantiles(sleepstudy_fit, tmp_path):
    fig = plotting.diagnostics(sleepstudy_fit)
    _render(fig, tmp_path / "diagnostics.png")
    left, right = fig.axes
    pts = np.vstack([c.get_offsets() for c in left.collections])
    expect = np.column_stack([sleepstudy_fit.fitted, sleepstudy_fit.residuals])
    assert pts.shape == expect.shape
    np.testing.assert_allclose(np.sort(pts, axis=0), np.sort(expect, axis=0))
    assert len(left.collections) == 18  # one colour per subject
    qq_pts = np.vstack([c.get_offsets() for c in right.collections])
    scaled = np.sort(sleepstudy_fit.residuals / sleepstudy_fit.sigma)
    theo = stats.norm.ppf((np.arange(1, 181) - 0.5) / 180)
    np.testing.assert_allclose(np.sort(qq_pts[:, 1]), scaled)
    np.testing.assert_allclose(np.sort(qq_pts[:, 0]), theo)
    # each QQ point pairs the k-th smallest residual with the k-th normal quantile
    pairs = qq_pts[np.argsort(qq_pts[:, 0])]
    np.testing.assert_allclose(pairs[:, 1], scaled)


def test_diagnostics_colour_by_other_factor_or_none(penicillin, tmp_path):
    fig = plotting.diagnostics(penicillin, group="sample")
    _render(fig, tmp_path / "diag_sample.png")
    assert len(fig.axes[0].collections) == 6
    assert fig.axes[0].get_legend() is not None
    fig = plotting.residuals_vs_fitted(penicillin, group=False, smooth=False)
    assert len(fig.axes[0].collections) == 1 and len(fig.axes[0].lines) == 1  # points + zero line
    many = plotting.qq(penicillin, group="plate")  # 24 levels: colour map, no legend
    assert len(many.axes[0].collections) == 1 and many.axes[0].get_legend() is None


def test_forest_draws_t_intervals(sleepstudy_fit, tmp_path):
    fig = plotting.forest(sleepstudy_fit, intercept=True, level=0.9)
    _render(fig, tmp_path / "forest.png")
    ct = sleepstudy_fit.coef_table
    x, y, half = _errorbar_data(fig.axes[0])
    np.testing.assert_allclose(x, ct["estimate"].to_numpy())
    np.testing.assert_allclose(half, stats.t.ppf(0.95, ct["df"].to_numpy()) * ct["std_error"].to_numpy(),
                               rtol=1e-6)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["(Intercept)", "Days"]
    default = plotting.forest(sleepstudy_fit)  # intercept left out beside other effects
    assert [t.get_text() for t in default.axes[0].get_yticklabels()] == ["Days"]


def test_overview_has_four_panels(sleepstudy_fit, tmp_path):
    fig = plotting.overview(sleepstudy_fit)
    img = _render(fig, tmp_path / "overview.png")
    assert len(fig.axes) >= 4 and img.shape[1] > img.shape[0]
    assert "Reaction ~ Days" in fig._suptitle.get_text()


def test_missing_matplotlib_says_how_to_install(sleepstudy_fit, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'lmm_jax\[plot\]'"):
        plotting.caterpillar(sleepstudy_fit)


def test_bootstrap_histograms_mark_estimate_and_interval(sleepstudy_fit, tmp_path):
    boot = sleepstudy_fit.bootstrap(20, 3)          # the chunk shape test_bootstrap's sleepstudy refits compile
    fig = plotting.bootstrap(boot, level=0.9)
    _render(fig, tmp_path / "bootstrap.png")
    ci = boot.confint(level=0.9)
    est = boot.replicates.estimates()[boot.replicates.ok]
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in visible] == list(ci.index)
    for ax in visible:
        name = ax.get_title()
        counts = sum(bar.get_height() for container in ax.containers for bar in container)  # the histogram
        assert counts == np.isfinite(est[name]).sum()
        xs = sorted(line.get_xdata()[0] for line in ax.lines)
        expect = sorted([ci.loc[name, "lower"], ci.loc[name, "upper"], boot.estimate[name]])
        np.testing.assert_allclose(xs, expect)
    with pytest.raises(KeyError, match="sd_Days"):
        plotting.bootstrap(boot, which=["sd_Days"])


def test_profile_traces_cross_z_at_the_profile_interval(sleepstudy_fit, tmp_path):
    from lmm_jax.inference.profile import profile_confint
    fig = plotting.profile(sleepstudy_fit, which=["sd_Days|Subject", "sigma", "Days"], points=9)
    _render(fig, tmp_path / "profile.png")
    ci = profile_confint(sleepstudy_fit, which=["sd_Days|Subject", "sigma", "Days"])
    z = stats.norm.ppf(0.975)
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == list(ci.index)
    for ax in visible:
        x, zeta = (np.asarray(a) for a in ax.lines[0].get_data())
        assert np.all(np.diff(zeta) > 0)  # zeta increases through 0 at the estimate
        lo, hi = ci.loc[ax.get_title()]
        # the trace, interpolated between profile points, crosses -+z at the interval ends
        assert abs(np.interp(lo, x, zeta) + z) < 0.05 and abs(np.interp(hi, x, zeta) - z) < 0.05

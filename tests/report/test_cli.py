"""The command line: in-process ``main([...])`` runs checked against lme4's
numbers, every kind of bad input answered with exit status 2 and one message
(no traceback), and one real ``python -m lmm_jax example`` process."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import lmm_jax
from lmm_jax.report.cli import main
from tests.conftest import load_reference

pytestmark = pytest.mark.filterwarnings("ignore::lmm_jax.SingularFitWarning")


@pytest.fixture(scope="module")
def ingot_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "ingot.csv"
    lmm_jax.datasets.load("ingot").to_csv(path, index=False)
    return path


def test_example_prints_lme4_summary_and_writes_json_and_png(tmp_path, capsys):
    ref = load_reference("sleepstudy_reml")
    out_json, out_png = tmp_path / "fit.json", tmp_path / "fit.png"
    rc = main(["example", "--json", str(out_json), "--plot", str(out_png)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"REML criterion at convergence: {ref['reml_criterion']:.4f}" in captured.out
    assert "Fixed effects with satterthwaite df and 95% confidence intervals" in captured.out
    assert "Degrees of freedom: Satterthwaite's method" in captured.out

    got = json.loads(out_json.read_text())
    assert got["formula"].replace(" ", "") == ref["formula"].replace(" ", "")
    np.testing.assert_allclose(got["loglik"], ref["logLik"], rtol=1e-8)
    np.testing.assert_allclose(got["theta"], ref["theta"], rtol=1e-5)
    est = [row["estimate"] for row in got["coefficients"]]
    np.testing.assert_allclose(est, ref["beta"], rtol=1e-6)
    df = np.array([row["df"] for row in got["coefficients"]])
    np.testing.assert_allclose(df, ref["df_satterthwaite"], rtol=1e-4)
    # the interval is the t interval with the Satterthwaite df
    from scipy import stats
    se = np.array(ref["beta_se"])
    lower = np.array([row["lower"] for row in got["coefficients"]])
    np.testing.assert_allclose(lower, np.array(ref["beta"]) - stats.t.ppf(0.975, df) * se, rtol=1e-5)

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    img = mpimg.imread(out_png)
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert float(np.std(img[..., :3])) > 0.05  # something was drawn


def test_kenward_roger_and_bootstrap(tmp_path, capsys):
    ref = load_reference("sleepstudy_reml")
    outs = []
    for run in range(2):
        out_json = tmp_path / f"kr{run}.json"
        rc = main(["example", "--ddf", "kenward-roger", "--bootstrap", "25", "--seed", "7", "--json", str(out_json)])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        outs.append(json.loads(out_json.read_text()))
    assert "Fixed effects with kenward-roger df" in captured.out
    # the summary's t tests follow --ddf too
    assert "Degrees of freedom: Kenward-Roger's method" in captured.out and "Satterthwaite" not in captured.out
    assert "Parametric bootstrap (25 replicates, seed 7" in captured.out
    assert "bootstrap:" not in captured.err          # one chunk (of 32): no progress bar
    got = outs[0]
    assert got["ddf"] == "kenward-roger"
    np.testing.assert_allclose([r["df"] for r in got["coefficients"]], ref["df_kenward_roger"], rtol=1e-5)
    np.testing.assert_allclose([r["std_error"] for r in got["coefficients"]], ref["se_kenward_roger"], rtol=1e-5)
    boot = got["bootstrap"]
    assert boot["n"] == 25 and boot["seed"] == 7
    names = [r["parameter"] for r in boot["confint"]]
    assert names == ["sd_(Intercept)|Subject", "cor_Days.(Intercept)|Subject", "sd_Days|Subject", "sigma",
                     "(Intercept)", "Days"]
    for r in boot["confint"]:
        assert r["lower"] < r["upper"]
    if jax.default_backend() == "cpu":
        assert outs[1]["bootstrap"]["confint"] == boot["confint"]  # same seed, same replicates, bitwise
    else:  # a GPU's scatter-adds (Z'y) sum in no fixed order: the same replicates, to rounding
        for a, b in zip(outs[1]["bootstrap"]["confint"], boot["confint"]):
            np.testing.assert_allclose([a["lower"], a["upper"]], [b["lower"], b["upper"]], rtol=1e-6)


def test_bootstrap_in_chunks_shows_progress(tmp_path, capsys):
    """40 replicates in chunks of 32 (the chunk the other bootstrap tests compile): two chunks, a
    progress bar on stderr, the estimates of all 40 kept and summarised."""
    out_json = tmp_path / "boot.json"
    rc = main(["example", "--bootstrap", "40", "--chunk-size", "32", "--seed", "7", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "bootstrap: 100%" in captured.err and "2/2" in captured.err
    assert "Parametric bootstrap (40 replicates, seed 7" in captured.out
    boot = json.loads(out_json.read_text())["bootstrap"]
    assert (boot["n"], boot["chunk_size"], boot["n_failed"]) == (40, 32, 0)
    assert len(boot["confint"]) == 6


def test_bootstrap_that_cannot_fit_in_memory_is_refused_before_the_fit(capsys):
    """--bootstrap 10^12 would keep 221 TB of sleepstudy estimates (221 bytes per replicate):
    exit status 2 and one message naming the number, the limit and the largest that fits,
    before anything is fitted or printed."""
    from lmm_jax.report.cli import InputError, check_bootstrap_memory

    rc = main(["example", "--bootstrap", str(10**12)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.startswith("lmm-jax: --bootstrap 1000000000000 would hold about 221.0 TB of replicate "
                                   "estimates (221 bytes each), more than half of this machine's ")
    assert "give --bootstrap " in captured.err and " or fewer" in captured.err
    # the limit is half the memory: 921 x 217 = 199,857 bytes fit in 200,000, 922 do not
    check_bootstrap_memory(921, 217, 400_000)
    with pytest.raises(InputError, match=r"--bootstrap 922 would hold about 200.1 kB .* 400.0 kB of memory "
                                         r"\(200.0 kB\); give --bootstrap 921 or fewer"):
        check_bootstrap_memory(922, 217, 400_000)
    check_bootstrap_memory(10**15, 217, None)            # the OS does not say: no check


def test_fit_csv_by_ml_matches_lme4(ingot_csv, tmp_path, capsys):
    ref = load_reference("ingot_ml")
    out_json = tmp_path / "ingot.json"
    rc = main(["fit", str(ingot_csv), ref["formula"], "--ml", "--level", "0.9", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Linear mixed model fit by maximum likelihood" in captured.out
    assert "90% confidence intervals" in captured.out
    got = json.loads(out_json.read_text())
    assert got["reml"] is False and got["level"] == 0.9
    np.testing.assert_allclose(got["loglik"], ref["logLik"], rtol=1e-8)
    np.testing.assert_allclose(got["objective"], ref["deviance_ml"], rtol=1e-8)
    np.testing.assert_allclose([r["estimate"] for r in got["fixef"]], ref["beta"], rtol=1e-6)
    vc = {(r["grp"], r["var1"]): r["vcov"] for r in got["varcorr"]}
    np.testing.assert_allclose([vc[("ingot", "(Intercept)")], vc[("Residual", "")]], ref["varcomp"], rtol=1e-5)


def _write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "header_only", "binary", "no_bar", "unclosed",
                                  "unknown_column", "unknown_group", "bad_json_dir", "bad_plot_dir"])
def test_bad_input_exits_2_with_one_message(case, tmp_path, ingot_csv, capsys):
    csv = str(ingot_csv)
    args, expect = {
        "missing": (["fit", str(tmp_path / "nope.csv"), "y ~ x + (1|g)"], "no such file"),
        "directory": (["fit", str(tmp_path), "y ~ x + (1|g)"], "is a directory"),
        "empty": (["fit", _write(tmp_path, "e.csv", b""), "y ~ x + (1|g)"], "is empty"),
        "header_only": (["fit", _write(tmp_path, "h.csv", b"y,x,g\n"), "y ~ x + (1|g)"], "no data rows"),
        "binary": (["fit", _write(tmp_path, "b.csv", b"\xff\xfe\x00\x81bad"), "y ~ x + (1|g)"], "cannot read"),
        "no_bar": (["fit", csv, "pres ~ metal"], "FormulaError: no random-effects terms"),
        "unclosed": (["fit", csv, "pres ~ metal + (1|ingot"], "FormulaError: unbalanced parentheses"),
        "unknown_column": (["fit", csv, "pres ~ alloy + (1|ingot)"], "'alloy'"),
        "unknown_group": (["fit", csv, "pres ~ metal + (1|furnace)"], "'furnace'"),
        "bad_json_dir": (["fit", csv, "pres ~ metal + (1|ingot)", "--json", str(tmp_path / "no" / "x.json")],
                         "does not exist"),
        "bad_plot_dir": (["example", "--plot", str(tmp_path / "no" / "x.png")], "does not exist"),
    }[case]
    rc = main(args)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("lmm-jax: ")
    assert expect in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""  # nothing fitted, nothing printed


@pytest.mark.parametrize("args, expect", [(["example", "--bootstrap", "0"], "positive whole number"),
                                          (["example", "--bootstrap", "1e8"], "positive whole number"),
                                          (["example", "--bootstrap", "10", "--chunk-size", "-1"],
                                           "positive whole number"),
                                          (["example", "--level", "1.5"], "number in (0, 1)"),
                                          (["example", "--ddf", "containment"], "invalid choice")])
def test_bad_options_exit_2(args, expect, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert expect in capsys.readouterr().err


def test_debug_flag_shows_the_exception(tmp_path):
    with pytest.raises(lmm_jax.FormulaError):
        main(["fit", str(_write(tmp_path, "d.csv", b"y,x,g\n1,2,a\n")), "y ~ x", "--debug"])


def test_python_dash_m_runs_the_example():
    proc = subprocess.run([sys.executable, "-m", "lmm_jax", "example"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "REML criterion at convergence: 1743.6283" in proc.stdout
    assert "Subject  (Intercept)" in proc.stdout

CELLS = [
("md", r"""
# 01 · The ingot data: OLS, two stages, ML and REML, three ways

This notebook redoes the *Linear Mixed Model* tutorial on the Littell et al. (2006) ingot data
(pressure needed to break 3 metals, each cast in 7 ingots) with `lmm_jax`, and checks every
number against statsmodels (run here) and lme4 + lmerTest + pbkrtest (quoted from the reference
fits in `tests/reference/`, made by `tests/reference/make_reference.R`).

The model: `pres ~ metal + (1 | ingot)`, i.e. $y = X\beta + Zu + e$ with
$u \sim N(0, \sigma^2_{\text{ingot}} I_7)$ and $e \sim N(0, \sigma^2 I_{21})$.
"""),
("code", r"""
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # timings below: one BLAS thread (this machine is shared)

import json, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import statsmodels.formula.api as smf
from scipy.optimize import minimize

import lmm_jax
from lmm_jax import inference, plotting

# This notebook is its own process: take lmm_jax's process-wide tuning (faster XLA:CPU compiles, JAX's
# persistent cache for every compilation, resident scratch memory; docs/performance.md)
lmm_jax.runtime.configure()

ROOT = Path.cwd().resolve()
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent
lme4 = {case: json.loads((ROOT / "tests" / "reference" / f"ingot_{case}.json").read_text()) for case in ("reml", "ml")}

df = lmm_jax.datasets.load("ingot")
df.pivot(index="ingot", columns="metal", values="pres")
"""),
("md", r"""
## 1. Ordinary least squares (ignores the ingots)

OLS gets the fixed effects right here (the design is balanced) but treats the 21 measurements as
independent: its standard errors mix the between-ingot and within-ingot variation.
"""),
("code", r"""
ols = smf.ols("pres ~ metal", df).fit()
print(ols.params.round(4).to_string())
print(f"residual variance (MSE) {ols.mse_resid:.4f}")
assert np.allclose(ols.params, [70.185714, 5.714286, 0.914286], atol=1e-5)   # the tutorial's numbers
"""),
("md", r"""
## 2. The two-stage approach

Stage 1 fits one intercept per ingot (ingot as a fixed factor, plus the metal effects). Stage 2
treats the 7 ingot intercepts as a sample: their mean estimates the overall level, and their
variance, minus the part due to measurement noise ($\hat\sigma^2/3$, three measurements per
ingot), estimates the between-ingot variance. For a balanced design this method-of-moments
(ANOVA) estimate is exactly the REML estimate, as long as it is positive.
"""),
("code", r"""
stage1 = smf.ols("pres ~ 0 + C(ingot) + metal", df).fit()
intercepts = stage1.params.filter(like="C(ingot)")
sigma2_within = stage1.mse_resid                       # 12 residual df
sigma2_ingot_2stage = intercepts.var(ddof=1) - sigma2_within / 3
print(f"stage 1: residual variance {sigma2_within:.4f} on {stage1.df_resid:.0f} df")
print(f"stage 2: ingot variance {intercepts.var(ddof=1):.4f} - {sigma2_within:.4f}/3 = {sigma2_ingot_2stage:.4f}")
"""),
("md", r"""
## 3. ML and REML with lmm_jax

One line each. The summary is lme4's layout with lmerTest's Satterthwaite degrees of freedom.
"""),
("code", r"""
reml = lmm_jax.fit("pres ~ metal + (1 | ingot)", df, reml=True)
print(reml.summary())
"""),
("code", r"""
ml = lmm_jax.fit("pres ~ metal + (1 | ingot)", df, reml=False)
print(ml.summary())
"""),
("md", r"""
## 4. The same numbers from statsmodels and lme4

statsmodels is run here; lme4's numbers are those of its reference fits. The variance-component
SEs of lmm_jax come from the exact (autodiff) Hessian, on the variance scale, as lmerTest's
`vcov_varpar` by the delta method. (statsmodels prints 3.273 beside the group variance, which is
on another scale: the SE of the variance relative to the residual variance.)
"""),
("code", r"""
def sm_fit(reml_flag):
    return smf.mixedlm("pres ~ metal", df, groups=df["ingot"]).fit(reml=reml_flag, method=["lbfgs"])

rows = []
for label, ours, reml_flag in [("REML", reml, True), ("ML", ml, False)]:
    sm, ref = sm_fit(reml_flag), lme4[label.lower()]
    vc = ours.varcorr.set_index("grp")["vcov"]
    rows += [
        (label, "ingot variance", vc["ingot"], float(sm.cov_re.iloc[0, 0]), ref["varcomp"][0]),
        (label, "residual variance", vc["Residual"], sm.scale, ref["varcomp"][1]),
        (label, "logLik", ours.loglik, sm.llf, ref["logLik"]),
        (label, "(Intercept)", ours.fixef["(Intercept)"], sm.params["Intercept"], ref["beta"][0]),
        (label, "SE (Intercept)", ours.std_errors["(Intercept)"], sm.bse["Intercept"], ref["beta_se"][0]),
        (label, "SE ingot variance", ours.varcomp_se[0], np.nan, ref["varcomp_se"][0]),
    ]
table = pd.DataFrame(rows, columns=["fit", "quantity", "lmm_jax", "statsmodels", "lme4"])
table["max rel. diff vs lme4"] = (table[["lmm_jax", "statsmodels"]].sub(table["lme4"], axis=0).abs()
                                  .div(table["lme4"].abs(), axis=0).max(axis=1))
table.round(6)
"""),
("code", r"""
vc = reml.varcorr.set_index("grp")["vcov"]
assert round(vc["ingot"], 3) == 11.448 and round(vc["Residual"], 4) == 10.3716
assert round(reml.loglik, 4) == -53.8951
assert abs(vc["ingot"] / sigma2_ingot_2stage - 1) < 1e-5  # balanced: REML = two-stage (ANOVA) estimate
assert np.allclose(ml.varcomp, lme4["ml"]["varcomp"], rtol=1e-5)
print("REML ingot variance 11.448, residual 10.3716, logLik -53.8951: as statsmodels and lme4")
"""),
("md", r"""
### Degrees of freedom: Satterthwaite and Kenward-Roger

The intercept is compared with the between-ingot variation (df about 11.6); the metal
differences are within-ingot contrasts, with the 12 residual df of the two-way layout. lmerTest
and pbkrtest give 11.61 / 12 / 12.
"""),
("code", r"""
ct = reml.coef_table
kr = inference.coefs(reml, ddf="kenward-roger")
dfs = pd.DataFrame({"Satterthwaite (lmm_jax)": ct["df"], "Satterthwaite (lmerTest)": lme4["reml"]["df_satterthwaite"],
                    "Kenward-Roger (lmm_jax)": kr["df"], "Kenward-Roger (pbkrtest)": lme4["reml"]["df_kenward_roger"]},
                   index=ct.index)
assert np.allclose(dfs.iloc[:, 0], dfs.iloc[:, 1], rtol=1e-5) and np.allclose(dfs.iloc[:, 2], dfs.iloc[:, 3], rtol=1e-5)
dfs.round(3)
"""),
("code", r"""
fig = plotting.forest(reml, intercept=True)
"""),
("md", r"""
## 5. The tutorial's hand-written likelihood, and why lmm_jax is organised differently

The tutorial minimises $-2\log L$ with Nelder-Mead, forming the $21 \times 21$ marginal covariance
$V = \sigma^2_{\text{ingot}} ZZ' + \sigma^2 I$ and inverting it at every evaluation. (Its code,
below as written there, with `x[0]`, `x[1]` for the two variances, and without the constant
$n\log 2\pi$, resp. $(n-p)\log 2\pi$ for REML.)
"""),
("code", r"""
X = np.column_stack([np.ones(21), (df.metal == "i").to_numpy(float), (df.metal == "n").to_numpy(float)])
Z = pd.get_dummies(df.ingot).to_numpy(float)
y = df.pres.to_numpy()

def log_ml(x, X=X, Z=Z, y=y):
    V = x[0] * Z @ Z.T + x[1] * np.eye(len(y))
    V_inv = np.linalg.inv(V)
    B = np.linalg.inv(X.T @ V_inv @ X) @ X.T @ V_inv @ y
    r = y - X @ B
    return np.log(np.linalg.det(V)) + r @ V_inv @ r

def log_reml(x, X=X, Z=Z, y=y):
    V = x[0] * Z @ Z.T + x[1] * np.eye(len(y))
    V_inv = np.linalg.inv(V)
    B = np.linalg.inv(X.T @ V_inv @ X) @ X.T @ V_inv @ y
    r = y - X @ B
    return np.log(np.linalg.det(V)) + np.log(np.linalg.det(X.T @ V_inv @ X)) + r @ V_inv @ r

nm = {}
for name, f in [("ML", log_ml), ("REML", log_reml)]:
    t0 = time.perf_counter()
    nm[name] = minimize(f, x0=np.array([1.0, 1.0]), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 2000})
    nm[name + " seconds"] = time.perf_counter() - t0
    print(f"{name}: variances {nm[name].x.round(5)}, -2logL + const = {nm[name].fun:.5f}, {nm[name].nfev} evaluations, "
          f"{nm[name + ' seconds'] * 1e3:.1f} ms")

n, p = X.shape
assert np.allclose(nm["REML"].x, reml.varcomp, rtol=1e-5) and np.allclose(nm["ML"].x, ml.varcomp, rtol=1e-5)
assert abs(nm["REML"].fun + (n - p) * np.log(2 * np.pi) - reml.objective) < 1e-6
assert abs(nm["ML"].fun + n * np.log(2 * np.pi) - ml.objective) < 1e-6
print("the dense likelihood and lmm_jax agree (after adding the constants)")
"""),
("md", r"""
lmm_jax never forms $V$. It computes the cross-products of $[Z\ X\ y]$ once; after that one
evaluation of the profiled deviance costs nothing in $n$ (Bates et al. 2015), and Newton's method
with the exact Hessian converges in a handful of steps. Timings on this machine (warm: after the
one-off JAX compilation; medians of repeated runs):
"""),
("code", r"""
def median_time(f, repeat=7, number=1):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))

model = lmm_jax.LMM("pres ~ metal + (1 | ingot)", df)
t_nm = median_time(lambda: minimize(log_reml, x0=np.array([1.0, 1.0]), method="Nelder-Mead",
                                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 2000}), repeat=3)
t_fit = median_time(lambda: model.fit(reml=True), number=5)
t_all = median_time(lambda: lmm_jax.fit("pres ~ metal + (1 | ingot)", df), number=3)
print(f"hand-written dense REML + Nelder-Mead : {t_nm * 1e3:8.2f} ms")
print(f"lmm_jax LMM.fit (design built)         : {t_fit * 1e3:8.2f} ms   ({t_nm / t_fit:.0f}x faster)")
print(f"lmm_jax.fit incl. formula and design   : {t_all * 1e3:8.2f} ms")
"""),
("md", r"""
On 21 rows both are quick. The difference is how they grow. The dense likelihood inverts an
$n \times n$ matrix at every evaluation, $O(n^3)$; the tutorial's `np.log(np.linalg.det(V))` also
overflows to infinity beyond a few hundred rows, so the version timed below uses `slogdet` and
`solve` (the same $O(n^3)$ work). The blocked likelihood works on the cross-products: its cost
depends on the number of ingots (here growing with $n$: 3 measurements per ingot), not on $n$.
One evaluation each, the JAX one jit-compiled once per shape; medians of a few runs, one BLAS
thread, on a shared and noisy 2-core machine.
"""),
("code", r"""
import jax

def log_reml_stable(x, X, Z, y):
    V = x[0] * Z @ Z.T + x[1] * np.eye(len(y))
    Vi_X, Vi_y = np.linalg.solve(V, X), np.linalg.solve(V, y)
    XtViX = X.T @ Vi_X
    B = np.linalg.solve(XtViX, X.T @ Vi_y)
    r = y - X @ B
    return np.linalg.slogdet(V)[1] + np.linalg.slogdet(XtViX)[1] + r @ np.linalg.solve(V, r)

assert abs(log_reml_stable(nm["REML"].x, X, Z, y) - log_reml(nm["REML"].x)) < 1e-9
rng = np.random.default_rng(1)
rows = []
for n_ingots in (7, 35, 175, 700):
    d = pd.DataFrame({"ingot": np.repeat([f"i{k}" for k in range(n_ingots)], 3), "metal": np.tile(["c", "i", "n"], n_ingots)})
    d["pres"] = (70 + 5.7 * (d.metal == "i") + 0.9 * (d.metal == "n") + np.repeat(rng.normal(0, 3.4, n_ingots), 3)
                 + rng.normal(0, 3.2, len(d)))
    Xd = np.column_stack([np.ones(len(d)), (d.metal == "i").to_numpy(float), (d.metal == "n").to_numpy(float)])
    Zd = pd.get_dummies(d.ingot).to_numpy(float)
    dense = median_time(lambda: log_reml_stable(np.array([11.4, 10.4]), Xd, Zd, d.pres.to_numpy()), repeat=3)
    with jax.enable_x64(True):   # make_deviance's function computes in float64: call it where x64 is on
        dev = jax.jit(lmm_jax.make_deviance(lmm_jax.LMM("pres ~ metal + (1 | ingot)", d), reml=True, param="theta"))
        th = jax.numpy.asarray([1.05])
        dev(th).block_until_ready()
        blocked = median_time(lambda: dev(th).block_until_ready(), number=20)
    rows.append((len(d), n_ingots, dense * 1e3, blocked * 1e3, dense / blocked))
pd.DataFrame(rows, columns=["n", "ingots", "dense ms / evaluation", "lmm_jax ms / evaluation", "ratio"]).round(3)
"""),
("md", r"""
## 6. Random effects and diagnostics

The conditional modes (BLUPs) of the ingot effects with 95% prediction intervals (lme4's
`dotplot(ranef(fit, condVar = TRUE))`), and the residual checks, coloured by ingot.
"""),
("code", r"""
fig = plotting.caterpillar(reml)
"""),
("code", r"""
fig = plotting.diagnostics(reml)
"""),
]

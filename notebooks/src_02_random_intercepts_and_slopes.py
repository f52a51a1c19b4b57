CELLS = [
("md", r"""
# 02 · Random intercepts and slopes: students in classrooms

The *Linear Mixed Models* tutorial studies `score` against parents' education `edu` for 60
students in 3 classrooms, and compares seven ways of handling the classroom. Its data set is not
public, so we simulate a comparable one (same sizes, classroom shifts, slope and noise), redo every
model, and put them in one table. Then: the singular random-slope fit and what to do about it, and
the diagnostics plots.
"""),
("code", r"""
import warnings

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import statsmodels.formula.api as smf
from scipy import stats

import lmm_jax
from lmm_jax import plotting
from lmm_jax.inference.anova import likelihood_ratio_table

# This notebook is its own process: take lmm_jax's process-wide tuning (faster XLA:CPU compiles, JAX's
# persistent cache for every compilation, resident scratch memory; docs/performance.md)
lmm_jax.runtime.configure()

def simulate_classrooms(n_class, n_per_class, intercepts, slope=0.13, slope_sd=0.0, sigma=0.93, seed=0):
    # score = intercept_j + (slope + u_j) * edu + e; edu: parents' education, 0..10 years
    rng = np.random.default_rng(seed)
    classroom = np.repeat([f"c{j}" for j in range(n_class)], n_per_class)
    edu = rng.integers(0, 11, size=n_class * n_per_class)
    u = rng.normal(0.0, slope_sd, n_class)
    score = (np.repeat(intercepts, n_per_class) + (slope + np.repeat(u, n_per_class)) * edu
             + rng.normal(0.0, sigma, n_class * n_per_class))
    return pd.DataFrame({"classroom": classroom, "edu": edu, "score": score})

df = simulate_classrooms(3, 20, intercepts=[7.0, 9.6, 13.1], seed=0)
df.groupby("classroom").agg(n=("score", "size"), mean_edu=("edu", "mean"), mean_score=("score", "mean")).round(2)
"""),
("code", r"""
fig, ax = plt.subplots(figsize=(5, 3.5))
for j, (name, g) in enumerate(df.groupby("classroom")):
    ax.scatter(g.edu, g.score, s=18, color=f"C{j}", label=name)
ax.set_xlabel("edu (parents' education)"); ax.set_ylabel("score"); ax.legend(title="classroom");
"""),
("md", r"""
## Seven models of the same data

| model | formula | what it assumes |
|---|---|---|
| global OLS | `score ~ edu` | students independent: ignores the classroom (wrong SE) |
| ANCOVA | `score ~ edu + classroom` | a fixed shift per classroom: these 3 classrooms only |
| aggregation | classroom means, `score ~ edu` | 3 data points: the within-classroom slope is lost |
| per-group regressions | `score ~ edu` in each classroom, then `beta ~ 1` | 3 slopes, each from 20 students |
| random intercept (LMM) | `score ~ edu + (1 \| classroom)` | classrooms sampled from a population |
| ANCOVA with interaction | `score ~ edu * classroom` | a fixed slope per classroom |
| random slope (LMM) | `score ~ edu + (edu \| classroom)` | slopes vary randomly between classrooms |

The tutorial's table reports, for the `edu` slope, the estimate, its test statistic and p-value,
and the RMSE of the residuals. We add the SE and the degrees of freedom behind the p-value.
statsmodels' `mixedlm` reports z tests (infinite df); lmm_jax reports lmerTest's Satterthwaite t
tests, which with 3 classrooms matter.
"""),
("code", r"""
rows = []
def add(model, fitted_resid, est, se, stat, dof, p):
    rows.append(dict(model=model, rmse=float(np.sqrt(np.mean(np.square(fitted_resid)))), edu=est, se=se,
                     stat=stat, df=dof, p=p))

ols = smf.ols("score ~ edu", df).fit()
add("global OLS", ols.resid, ols.params["edu"], ols.bse["edu"], ols.tvalues["edu"], ols.df_resid, ols.pvalues["edu"])

ancova = smf.ols("score ~ edu + classroom", df).fit()
add("ANCOVA", ancova.resid, ancova.params["edu"], ancova.bse["edu"], ancova.tvalues["edu"], ancova.df_resid,
    ancova.pvalues["edu"])

agg = df.groupby("classroom").mean(numeric_only=True)
aggr = smf.ols("score ~ edu", agg).fit()
add("aggregation", aggr.resid, aggr.params["edu"], aggr.bse["edu"], aggr.tvalues["edu"], aggr.df_resid,
    aggr.pvalues["edu"])

slopes = pd.DataFrame({"beta": [smf.ols("score ~ edu", g).fit().params["edu"] for _, g in df.groupby("classroom")]})
hier = smf.ols("beta ~ 1", slopes).fit()
add("per-group regressions", hier.resid, hier.params["Intercept"], hier.bse["Intercept"], hier.tvalues["Intercept"],
    hier.df_resid, hier.pvalues["Intercept"])

inter = lmm_jax.fit("score ~ edu + (1 | classroom)", df)
c = inter.coef_table.loc["edu"]
add("random intercept (lmm_jax)", inter.residuals, c.estimate, c.std_error, c.t, c.df, c.p)

sm_inter = smf.mixedlm("score ~ edu", df, groups=df["classroom"]).fit(reml=True)
add("random intercept (statsmodels, z)", sm_inter.resid, sm_inter.params["edu"], sm_inter.bse["edu"],
    sm_inter.tvalues["edu"], np.inf, sm_inter.pvalues["edu"])

full_ancova = smf.ols("score ~ edu * classroom", df).fit()
add("ANCOVA with interaction", full_ancova.resid, full_ancova.params["edu"], full_ancova.bse["edu"],
    full_ancova.tvalues["edu"], full_ancova.df_resid, full_ancova.pvalues["edu"])

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    full = lmm_jax.fit("score ~ edu + (edu | classroom)", df)
c = full.coef_table.loc["edu"]
add("random slope (lmm_jax)", full.residuals, c.estimate, c.std_error, c.t, c.df, c.p)

results = pd.DataFrame(rows).set_index("model")
results.round(4)
"""),
("md", r"""
Reading the table as the tutorial does:

* global OLS has the largest error and a slope mixed with the between-classroom differences;
* ANCOVA, the per-group regressions and the random-intercept LMM agree on the slope; the LMM is the
  one that is both honest about the sampling of classrooms and efficient;
* aggregation estimates something else entirely (the between-classroom slope, from 3 points);
* with only 3 classrooms the denominator df matter: statsmodels' z test ignores that the residual
  variance and the classroom variance are estimated. For the within-classroom slope the
  Satterthwaite df are close to the 56 residual df of the ANCOVA, so t and z p-values are of the
  same size; for between-classroom quantities, such as the intercept (about 2 df), they are not:
"""),
("code", r"""
pd.DataFrame({"lmm_jax t": inter.coef_table["t"], "Satterthwaite df": inter.coef_table["df"],
              "lmm_jax p": inter.coef_table["p"],
              "statsmodels z p": sm_inter.pvalues[["Intercept", "edu"]].to_numpy()}).round(5)
"""),
("code", r"""
print(inter.summary())
# the same fit as statsmodels (REML), to optimiser precision
assert np.allclose(inter.fixef.to_numpy(), sm_inter.fe_params.to_numpy(), rtol=1e-5)
assert np.isclose(inter.sigma ** 2, sm_inter.scale, rtol=1e-4)
"""),
("md", r"""
## The singular random-slope fit

Letting the slope vary by classroom gives a *singular* (boundary) fit, exactly as in the tutorial
(statsmodels: "Random effects covariance is singular", "The MLE may be on the boundary of the
parameter space"). lmm_jax says so in one warning, sets `fit.singular`, and prints it in the
summary:
"""),
("code", r"""
for w in caught:
    print(f"{w.category.__name__}: {w.message}")
print("singular:", full.singular)
assert full.singular
full.varcorr.round(4)
"""),
("md", r"""
Either the slope variance is estimated at zero or the intercept-slope correlation at $\pm 1$:
the data cannot separate a classroom's slope from its intercept. With 3 classrooms a variance is
estimated from 3 values, so this is the expected outcome, not a numerical accident.

What to do about it:

1. **Keep the simpler model.** The likelihood-ratio test (REML, same fixed effects) finds no
   evidence for the extra two parameters. (The p-value is conservative: the null value of a
   variance lies on the boundary, where the $\chi^2$ reference overstates it.)
"""),
("code", r"""
likelihood_ratio_table(inter, full, refit=False, names=["random intercept", "random slope"]).round(4)
"""),
("md", r"""
2. **Look at the estimates, not only the test.** The fixed slope barely changes between the two
   models, and its SE is only slightly larger: the random-slope term adds nothing.
3. **Get more classrooms if slope variation is the question.** With 40 classrooms of 20
   students and a real slope SD of 0.06, the same formula is estimable and not singular:
"""),
("code", r"""
rng = np.random.default_rng(7)
big = simulate_classrooms(40, 20, intercepts=rng.normal(10.0, 2.5, 40), slope_sd=0.06, seed=11)
big_fit = lmm_jax.fit("score ~ edu + (edu | classroom)", big)
print("singular:", big_fit.singular)
assert not big_fit.singular
big_fit.varcorr.round(4)
"""),
("code", r"""
fig = plotting.caterpillar(big_fit)
"""),
("md", r"""
Other remedies, when the design can't change: drop the correlation (`(edu || classroom)`, one
parameter fewer), rescale or centre `edu` so that intercept and slope are less confounded, or
report the boundary fit as it is: the fixed effects and their tests remain valid.

## Diagnostics

Residuals against fitted values and a normal QQ plot, coloured by classroom (the tutorial's
`plot_lm_diagnosis`), and the conditional modes of the classroom intercepts with their 95%
prediction intervals:
"""),
("code", r"""
fig = plotting.diagnostics(inter)
"""),
("code", r"""
fig = plotting.caterpillar(inter)
"""),
("md", r"""
And the fitted lines: one common slope, a shift per classroom shrunk towards the overall line
(dashed: the ANCOVA's unshrunk fixed shifts; with 20 students per classroom the shrinkage is
small).
"""),
("code", r"""
fig, ax = plt.subplots(figsize=(5.5, 4))
grid = np.linspace(0, 10, 2)
b = inter.ranef["classroom"]["(Intercept)"]
for j, (name, g) in enumerate(df.groupby("classroom")):
    ax.scatter(g.edu, g.score, s=16, color=f"C{j}", alpha=0.7)
    ax.plot(grid, inter.fixef["(Intercept)"] + b[name] + inter.fixef["edu"] * grid, color=f"C{j}", label=name)
    shift = ancova.params.get(f"classroom[T.{name}]", 0.0)
    ax.plot(grid, ancova.params["Intercept"] + shift + ancova.params["edu"] * grid, color=f"C{j}", ls="--", lw=0.8)
ax.plot(grid, inter.fixef["(Intercept)"] + inter.fixef["edu"] * grid, color="k", lw=1.5, label="population")
ax.set_xlabel("edu"); ax.set_ylabel("score"); ax.legend(title="classroom", fontsize=8);
"""),
("code", r"""
fig = plotting.forest(inter, intercept=True)
"""),
("md", r"""
## After the fit: tables, R², random-effect tests, updates, marginal means

The summary is also a set of tables (`coefficients`, `random_effects`, `fit_statistics`; in a
notebook it renders as HTML); `r2()` and `icc()` are R's `performance`; `ranova()` and `drop1()`
lmerTest's; `update()` R's formula arithmetic; `coef()` lme4's per-classroom coefficients;
`resid()` a Series on the data's index. Each equals R on the reference cases (tests/inference,
tests/test_update_coef.py).
"""),
("code", r"""
s = inter.summary()
s.coefficients.round(4)
"""),
("code", r"""
pd.concat([inter.r2(), inter.icc()]).round(4)
"""),
("code", r"""
full.ranova().round(4)
"""),
("code", r"""
no_edu = inter.update(". ~ . - edu")
lmm_jax.anova(no_edu, inter)
"""),
("code", r"""
inter.coef()["classroom"].round(3)
"""),
("code", r"""
inter.resid(type="pearson", scaled=True).head()
"""),
("md", r"""
Estimated marginal means (R's emmeans) need factors: lme4's cake data, breaking angle by recipe
and baking temperature, with Tukey-adjusted pairwise differences of the recipes.
"""),
("code", r"""
cake = lmm_jax.fit("angle ~ recipe + temperature + (1 | recipe:replicate)", lmm_jax.datasets.load("cake"))
emm = cake.emmeans("recipe")
display(emm.table.round(3))
emm.contrast("pairwise").round(4)
"""),
]

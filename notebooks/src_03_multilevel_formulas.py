CELLS = [
("md", r"""
# 03 · Multilevel formulas: classrooms in schools in provinces

The *Introduction to Mixed-Effects Regression in Python* tutorial writes lme4 formulas such as
`test_score ~ age + sex + (1|classroom) + (1|school) + (1|province)` and passes them to
statsmodels' `mixedlm` together with `groups=`, `vc_formula=` and `re_formula=` arguments. statsmodels
does not understand the `( | )` bars, and its arguments mean something else than the tutorial says.
This notebook fits the tutorial's formulas with lmm_jax, says what each means, and shows the
statsmodels spelling that fits the same model, with the numbers side by side.

The data are simulated: 4 provinces, 5 schools per province, 4 classrooms per school, 12 students
per classroom (960 students); the classroom effect has a random slope on age; and, to have a
genuinely *crossed* factor, each student's test is marked by one of 15 graders who work across all
schools.
"""),
("code", r"""
import time, warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

import lmm_jax
from lmm_jax import plotting

# This notebook is its own process: take lmm_jax's process-wide tuning (faster XLA:CPU compiles, JAX's
# persistent cache for every compilation, resident scratch memory; docs/performance.md)
lmm_jax.runtime.configure()

rng = np.random.default_rng(3)
n_prov, n_school, n_class, n_stud, n_grader = 4, 5, 4, 12, 15
rows = []
prov_eff = rng.normal(0, 3.0, n_prov)
for p in range(n_prov):
    for s in range(n_school):
        school_eff = rng.normal(0, 2.0)
        for c in range(n_class):
            # classroom intercept and age slope, correlation 0.3
            b0, b1 = rng.multivariate_normal([0, 0], [[1.5**2, 0.3 * 1.5 * 0.5], [0.3 * 1.5 * 0.5, 0.5**2]])
            for i in range(n_stud):
                rows.append(dict(province=f"P{p + 1}", school=f"S{p + 1}{s + 1}", classroom="ABCD"[c],
                                 sex=rng.choice(["F", "M"]), age=rng.uniform(10, 14),
                                 grader=f"g{rng.integers(n_grader):02d}",
                                 effect=prov_eff[p] + school_eff + b0, slope=b1))
data = pd.DataFrame(rows)
grader_eff = dict(zip(sorted(data.grader.unique()), rng.normal(0, 1.5, n_grader)))
data["age"] = data["age"] - 12.0                                  # centred: intercept = a 12-year-old
data["test_score"] = (60 + 1.5 * data.age + 2.0 * (data.sex == "M") + data.effect + data.slope * data.age
                      + data.grader.map(grader_eff) + rng.normal(0, 4.0, len(data)))
data["class_id"] = data.school + data.classroom                  # a label unique across schools
data = data.drop(columns=["effect", "slope"])
data.head()
"""),
("md", r"""
Note the classroom labels: `A`-`D` are reused in every school (as in most real data), so
`classroom` alone does not identify a classroom; `class_id` does.

## 1. Random intercepts for classroom, school and province

`(1|class_id) + (1|school) + (1|province)`: a score varies around the fixed part by a province
shift, plus a school shift, plus a classroom shift, plus the student's own noise; four variances
are estimated. Because schools and classrooms have unique labels, writing the three terms
separately already gives the nested model. Spelled with lme4's nesting operator, `(1|school/classroom)`
expands to `(1|school) + (1|classroom:school)`, which builds the unique label for you:
"""),
("code", r"""
t0 = time.perf_counter()
m1 = lmm_jax.fit("test_score ~ age + sex + (1|class_id) + (1|school) + (1|province)", data)
print(f"fitted in {time.perf_counter() - t0:.1f} s (including JAX compilation)")
m1_nested = lmm_jax.fit("test_score ~ age + sex + (1|school/classroom) + (1|province)", data)
print(m1.summary())
assert abs(m1.objective - m1_nested.objective) < 1e-6
print(f"\n(1|school/classroom): REML criterion {m1_nested.objective:.4f}, the same model")
"""),
("md", r"""
The pitfall: with reused labels, `(1|classroom)` is a factor with 4 levels ("all the A
classrooms", "all the B classrooms", ...) *crossed* with school, not 80 classrooms nested in
schools. lmm_jax counts the levels, so the model says what it would fit:
"""),
("code", r"""
print(lmm_jax.LMM("test_score ~ age + sex + (1|classroom) + (1|school) + (1|province)", data))
print(lmm_jax.LMM("test_score ~ age + sex + (1|school/classroom) + (1|province)", data))
"""),
("md", r"""
### The same model in statsmodels

statsmodels has one grouping factor, `groups`: observations in different groups are independent,
and `re_formula` gives the random effects that vary *by that group* (default: an intercept).
Further factors nested inside the groups are *variance components*, `vc_formula`: a dict from a
name to a formula whose columns are indicator variables, one variance per name. So the nested
intercepts are: groups = province, `re_formula="1"` for the province intercept, and two variance
components for the schools and classrooms within a province. The values of `vc_formula` are
formulas, not `'diag'`, and `re_formula` is one string, not a dict (both as the tutorial has
them would fail).
"""),
("code", r"""
t0 = time.perf_counter()
sm1 = smf.mixedlm("test_score ~ age + sex", data, groups="province", re_formula="1",
                  vc_formula={"school": "0 + C(school)", "classroom": "0 + C(class_id)"}).fit(reml=True)
sm1_seconds = time.perf_counter() - t0
print(sm1.summary())
"""),
("code", r"""
vc = m1.varcorr.set_index("grp")["vcov"]
side = pd.DataFrame({
    "lmm_jax": [vc["province"], vc["school"], vc["class_id"], vc["Residual"], m1.fixef["age"], m1.fixef["sexM"], m1.loglik],
    "statsmodels": [sm1.cov_re.iloc[0, 0], sm1.vcomp[list(sm1.model.exog_vc.names).index("school")],
                    sm1.vcomp[list(sm1.model.exog_vc.names).index("classroom")], sm1.scale,
                    sm1.fe_params["age"], sm1.fe_params["sex[T.M]"], sm1.llf]},
    index=["province variance", "school variance", "classroom variance", "residual variance", "age", "sexM", "REML logLik"])
side["rel. diff"] = (side.lmm_jax - side.statsmodels).abs() / side.statsmodels.abs()
# the same maximum (to optimiser precision); the province variance, from 4 provinces, sits on a flat ridge
assert side.loc["REML logLik", "rel. diff"] < 1e-8 and side["rel. diff"].max() < 1e-2
side.round(5)
"""),
("code", r"""
model = lmm_jax.LMM("test_score ~ age + sex + (1|class_id) + (1|school) + (1|province)", data)
times = []
for _ in range(5):
    t0 = time.perf_counter(); model.fit(); times.append(time.perf_counter() - t0)
print(f"statsmodels fit: {sm1_seconds:.2f} s;  lmm_jax fit (warm, median of 5): {np.median(times) * 1e3:.1f} ms")
"""),
("md", r"""
## 2. A random slope: `(age|classroom)`

`(age|class_id)` gives every classroom its own intercept *and* its own age slope, drawn from a
bivariate normal: two variances and their correlation. (The tutorial calls this "a random slope
for age nested within each classroom"; nothing is nested here: the slope *varies by* classroom.)
"""),
("code", r"""
m2 = lmm_jax.fit("test_score ~ age + sex + (age|class_id) + (1|school) + (1|province)", data)
print(m2.summary())
"""),
("code", r"""
fig = plotting.caterpillar(m2, group="class_id")
"""),
("md", r"""
statsmodels can fit a correlated random slope only for its single `groups` factor
(`groups="class_id", re_formula="~age"`), which leaves out school and province. Inside province
groups, a slope can only be an extra *independent* variance component
(`vc_formula={..., "classroom_age": "0 + C(class_id):age"}`), which is lme4's uncorrelated
`(age || class_id)`: the correlation of this model has no statsmodels spelling.
"""),
("md", r"""
## 3. Nested versus crossed

*Nested*: every classroom belongs to one school, every school to one province. *Crossed*: the
graders mark tests in every school, so grader and school (and classroom) are crossed; a grader
effect is shared by students in different schools. lme4's spelling is simply another term:
"""),
("code", r"""
m3 = lmm_jax.fit("test_score ~ age + sex + (1|school/classroom) + (1|province) + (1|grader)", data)
print(m3)
m3.varcorr.round(4)
"""),
("md", r"""
statsmodels has no crossed factors as such: the documented device is a single group containing
every observation, with every factor as a variance component. It is the same model (the province
intercept becomes a variance component as well):
"""),
("code", r"""
t0 = time.perf_counter()
sm3 = smf.mixedlm("test_score ~ age + sex", data.assign(one=1), groups="one", re_formula="0",
                  vc_formula={"province": "0 + C(province)", "school": "0 + C(school)",
                              "classroom": "0 + C(class_id)", "grader": "0 + C(grader)"}).fit(reml=True)
sm3_seconds = time.perf_counter() - t0
names = list(sm3.model.exog_vc.names)
vc3 = m3.varcorr.set_index("grp")["vcov"]
side3 = pd.DataFrame({"lmm_jax": [vc3["classroom:school"], vc3["school"], vc3["province"], vc3["grader"], vc3["Residual"], m3.loglik],
                      "statsmodels": [sm3.vcomp[names.index("classroom")], sm3.vcomp[names.index("school")],
                                      sm3.vcomp[names.index("province")], sm3.vcomp[names.index("grader")], sm3.scale, sm3.llf]},
                     index=["classroom var", "school var", "province var", "grader var", "residual var", "REML logLik"])
side3["rel. diff"] = (side3.lmm_jax - side3.statsmodels).abs() / side3.statsmodels.abs()
print(f"statsmodels (one group, 4 variance components): {sm3_seconds:.1f} s")
assert side3.loc["REML logLik", "rel. diff"] < 1e-8 and side3["rel. diff"].max() < 1e-2
side3.round(5)
"""),
("md", r"""
## Cheat sheet

| lme4 / lmm_jax | meaning | statsmodels `mixedlm` |
|---|---|---|
| `y ~ x + (1 \| g)` | random intercept per `g` | `mixedlm("y ~ x", d, groups="g")` |
| `y ~ x + (x \| g)` | correlated intercept and slope per `g` | `groups="g", re_formula="~x"` |
| `y ~ x + (x \|\| g)` | uncorrelated intercept and slope | `groups="g", re_formula="1", vc_formula={"x": "0 + x"}` |
| `(1 \| a/b)` = `(1 \| a) + (1 \| b:a)` | `b` nested in `a` | `groups="a", vc_formula={"b": "0 + C(b)"}` |
| `(1 \| a) + (1 \| b) + (1 \| c)`, `c` in `b` in `a`, unique labels | nested, 3 levels | `groups="a", vc_formula={"b": "0 + C(b)", "c": "0 + C(c)"}` |
| `(x \| c) + (1 \| b) + (1 \| a)` | correlated slope below the top level | not expressible (only uncorrelated: `"c_x": "0 + C(c):x"`) |
| `(1 \| a) + (1 \| g)`, crossed | crossed factors | `groups=<one group>, re_formula="0", vc_formula` for each factor |

In statsmodels, a formula with bars, e.g. `mixedlm("y ~ x + (1|g)", ...)` as the tutorial
writes it, is not an lme4 formula: patsy evaluates `1|g` as Python's bitwise "or". With text
labels that is an error; with numeric codes it silently becomes a covariate:
"""),
("code", r"""
try:
    smf.mixedlm("test_score ~ age + sex + (1|school)", data, groups="province").fit()
except Exception as e:
    print(type(e).__name__, str(e).splitlines()[0])
numeric = data.assign(school_no=data.school.str[1:].astype(int))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    wrong = smf.mixedlm("test_score ~ age + sex + (1|school_no)", numeric, groups="province").fit()
wrong.params.round(3)
"""),
]

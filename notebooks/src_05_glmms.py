CELLS = [
("md", r"""
# 05 · Generalized linear mixed models: glmer's fits, a bootstrap and a power curve

`lmm_jax.fit(..., family="binomial" | "poisson")` fits a GLMM as lme4's `glmer` does: the Laplace
approximation (or adaptive Gauss-Hermite quadrature, `nAGQ`) of the marginal likelihood, with the
conditional modes found by PIRLS inside the compiled deviance and (theta, beta) optimised jointly by
Newton's method with exact derivatives. Because the whole fit is one JAX function of the response,
`jax.vmap` fits many responses at once: simulation, `GLMM.fit_batch`, the parametric bootstrap and
power simulations are each one compiled call. This notebook:

1. fits a logistic GLMM (Contraception, a correlated random intercept and slope) and a Poisson GLMM
   with three crossed/nested intercepts (grouseticks) beside lme4's numbers;
2. fits cbpp by adaptive quadrature (nAGQ = 9);
3. runs a 1,000-replicate parametric bootstrap of cbpp and compares its percentile intervals with
   lme4's `bootMer`;
4. draws a power curve for a binary outcome from batched simulated fits.

The replicate counts are small (stated below) so that the notebook runs in well under a minute.
"""),
("code", r"""
import json, time
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

import lmm_jax

N_BOOT = 1_000    # bootstrap replicates of cbpp
N_POWER = 100     # simulated data sets per effect size in the power curve

ROOT = Path.cwd().resolve()
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent
REF = ROOT / "tests" / "reference" / "glmm"


def lme4(case):
    # glmer's fit of the case (tests/reference/make_glmm_reference.R, lme4 1.1-31)
    return json.loads((REF / f"{case}.json").read_text())


def compare(fit, ref):
    # lmm_jax beside glmer: fixed effects with their SEs, and the deviance
    table = pd.DataFrame({"lmm_jax": fit.beta, "lme4": ref["beta"], "SE lmm_jax": fit.std_errors.to_numpy(),
                          "SE lme4": ref["beta_se"]}, index=list(fit.design.fixef_names))
    print(f"deviance: lmm_jax {fit.deviance:.4f}, lme4 {ref['deviance']:.4f}")
    return table
"""),
("md", r"""
## 1. Logistic and Poisson GLMMs

Contraception (mlmRev): whether a woman uses contraception, by urban residence, age and number of
living children, with a random intercept and urban effect per district (correlated).
"""),
("code", r"""
ref = lme4("contraception")
t0 = time.perf_counter()
contra = lmm_jax.fit(ref["lmm_jax_formula"], lmm_jax.datasets.load("Contraception"), family="binomial")
print(f"fitted in {time.perf_counter() - t0:.1f} s (first call: includes compilation)")
print(contra.summary())
table = compare(contra, ref)
assert abs(contra.deviance - ref["deviance"]) < 1e-4
np.testing.assert_allclose(contra.beta, ref["beta"], rtol=1e-3, atol=1e-6)
np.testing.assert_allclose(contra.varcorr.sdcor, ref["varcorr"]["values"], atol=1e-3)
np.testing.assert_allclose(contra.std_errors, ref["beta_se"], rtol=5e-3)
table
"""),
("md", r"""
grouseticks (lme4): tick counts on red grouse chicks by year and centred height, with random intercepts
for the chick (an observation-level effect: overdispersion), its brood and the location.
glmer's PIRLS stops slightly short of the mode on this model (its deviance is up to 1e-4 higher; see
tests/glmm/test_reference.py), so the deviance is compared to that tolerance.
"""),
("code", r"""
ref = lme4("grouseticks_poisson")
ticks = lmm_jax.fit(ref["lmm_jax_formula"], lmm_jax.datasets.load("grouseticks"), family="poisson")
table = compare(ticks, ref)
assert ref["deviance"] - 2e-4 < ticks.deviance < ref["deviance"] + 1e-4
np.testing.assert_allclose(ticks.beta, ref["beta"], rtol=1e-3, atol=1e-6)
np.testing.assert_allclose(ticks.varcorr.sdcor, ref["varcorr"]["values"], atol=1e-3)
print(ticks.varcorr[["grp", "var1", "sdcor"]].assign(lme4=ref["varcorr"]["values"]))
table
"""),
("md", r"""
## 2. Adaptive Gauss-Hermite quadrature

For a single scalar random effect, `nAGQ > 1` replaces the Laplace approximation by adaptive quadrature
with that many nodes per level (glmer's `nAGQ = 9`). The AGQ deviance, like lme4's, leaves out the
saturated model's constant, so it is not comparable with the Laplace deviance.
"""),
("code", r"""
cbpp_data = lmm_jax.datasets.load("cbpp")
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
ref = lme4("cbpp_binomial_agq9")
agq = lmm_jax.fit(CBPP, cbpp_data, family="binomial", nAGQ=9)
table = compare(agq, ref)
assert abs(agq.deviance - ref["deviance"]) < 1e-4
np.testing.assert_allclose(agq.beta, ref["beta"], rtol=1e-3, atol=1e-6)
np.testing.assert_allclose(agq.theta, ref["theta"], atol=1e-3)
table
"""),
("md", r"""
## 3. A parametric bootstrap of cbpp

`fit.bootstrap(n, key)` simulates `n` responses at the estimates (new herd effects, then binomial
counts out of each row's `size`), refits them all in compiled, vmapped chunks (warm-started at the
fit) and `confint()` gives percentile intervals in lme4's names. lme4's `bootMer` numbers are from one
run of benchmarks/bench_glmm_r.R (1,000 replicates, seed 20261122); the two use different random
streams, so they agree to Monte Carlo error: the 2.5% and 97.5% quantiles of 1,000 replicates have an
SE of about 0.1 replicate SDs each.
"""),
("code", r"""
fit = lmm_jax.fit(CBPP, cbpp_data, family="binomial")
t0 = time.perf_counter()
boot = fit.bootstrap(N_BOOT, key=20261122)
print(f"{N_BOOT} replicates in {time.perf_counter() - t0:.2f} s (a first call: with compiling or loading the "
      f"chunk's code); {boot!r}")
BOOTMER = pd.DataFrame({"lower": [0.158915723797454, -1.88154599086577, -1.62402700611541, -1.84150606480782,
                                  -2.52862903567678],
                        "upper": [0.953241146698647, -0.962891563977687, -0.44182480651886, -0.561512235992561,
                                  -0.944300813099882]},
                       index=["sd_(Intercept)|herd", "(Intercept)", "period2", "period3", "period4"])
ci = boot.confint()
sd = boot.replicates.estimates().std()
assert ((ci - BOOTMER).abs().max(axis=1) < 0.4 * sd[ci.index]).all()
pd.concat({"lmm_jax": ci, "bootMer": BOOTMER, "Wald": fit.confint().set_axis(["lower", "upper"], axis=1)}, axis=1)
"""),
("md", r"""
## 4. A power curve for a binary outcome

A planned study: 30 subjects, half treated (`x`), 8 binary outcomes each over time `t`, a subject
SD of 0.8 on the logit scale. `lmm_jax.power(..., family="binomial")` simulates `N_POWER` data sets at
the given parameters, fits them all in one vmapped call and counts the Wald z tests of `x` rejected at
5%; every effect size uses the same compiled batch. At `x = 0` the rejection rate is the test's size.
"""),
("code", r"""
subject = np.repeat(np.arange(30), 8)
design = pd.DataFrame({"subject": [f"s{i}" for i in subject], "x": (subject % 2).astype(float),
                       "t": np.tile(np.arange(8), 30) / 7.0})
rows = []
t0 = time.perf_counter()
for j, effect in enumerate([0.0, 0.5, 1.0, 1.5]):
    params = {"beta": {"(Intercept)": -0.5, "x": effect, "t": 0.5}, "sd_(Intercept)|subject": 0.8}
    res = lmm_jax.power(("y ~ x + t + (1 | subject)", design), "x", n=N_POWER, key=j, params=params,
                        family="binomial")
    rows.append({"effect": effect, "power": res.power, "lower": res.interval[0], "upper": res.interval[1],
                 "failed": res.n_failed})
curve = pd.DataFrame(rows)
print(f"{4 * N_POWER} simulated fits in {time.perf_counter() - t0:.1f} s")
assert curve.power.is_monotonic_increasing and curve.power.iloc[0] < 0.15 and curve.power.iloc[-1] > 0.7
fig, ax = plt.subplots(figsize=(5, 3))
ax.errorbar(curve.effect, curve.power, yerr=[curve.power - curve.lower, curve.upper - curve.power], marker="o")
ax.axhline(0.05, color="grey", lw=0.5)
ax.set_xlabel("treatment effect (log odds)")
ax.set_ylabel("power")
curve
"""),
]

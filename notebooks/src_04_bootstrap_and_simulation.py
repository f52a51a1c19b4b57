CELLS = [
("md", r"""
# 04 · Bootstrap and simulation: thousands of fits in one compiled call

Across bootstrap replicates or simulated data sets with the same design, only the response
changes. lmm_jax computes the cross-products of the design once and fits all responses with one
`jax.vmap`-ed, jit-compiled quasi-Newton (BFGS) optimiser, started for a bootstrap from the fitted
model's exact Hessian. This notebook:

1. runs a 10,000-replicate parametric bootstrap of the sleepstudy model and compares the interval
   types (Wald, profile likelihood, bootstrap) with lme4's;
2. draws a power curve for the `Days` effect from batched simulated fits (`lmm_jax.simulate`,
   `LMM.fit_batch`);
3. checks the coverage of 95% Wald and bootstrap intervals over 1,000 simulated data sets.

Sizes are kept modest so that the notebook runs in a minute or two on a laptop CPU; every number
of replicates is a parameter below.
"""),
("code", r"""
import json, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import jax
import jax.numpy as jnp
from scipy import stats

import lmm_jax
from lmm_jax import plotting

# This notebook is its own process: take lmm_jax's process-wide tuning (faster XLA:CPU compiles, JAX's
# persistent cache for every compilation, resident scratch memory; docs/performance.md)
lmm_jax.runtime.configure()

# Our own JAX code below (section 2) calls lmm_jax's pure functions, which compute in float64
jax.config.update("jax_enable_x64", True)

N_BOOT = 10_000        # bootstrap replicates
N_POWER = 125          # simulated data sets per effect size (8 effects: 1,000 in all, as N_COVERAGE)
N_COVERAGE = 1_000     # simulated data sets in the coverage study (Wald intervals)
N_COVERAGE_BOOT = 200  # of those, data sets that also get a bootstrap interval
B_INNER = 50           # bootstrap replicates per such data set

ROOT = Path.cwd().resolve()
while not (ROOT / "pyproject.toml").exists():
    ROOT = ROOT.parent
lme4 = json.loads((ROOT / "tests" / "reference" / "sleepstudy_reml.json").read_text())

data = lmm_jax.datasets.load("sleepstudy")
fit = lmm_jax.fit("Reaction ~ Days + (Days | Subject)", data)
print(fit.summary())
"""),
("md", r"""
## 1. A 10,000-replicate parametric bootstrap

`fit.bootstrap(n, key)` simulates `n` responses at the estimates (lme4's `bootMer`, with new random
effects and new noise for each) and refits them all. Replicate `i` uses `fold_in(key, i)`, so the
result does not depend on how the replicates are chunked.
"""),
("code", r"""
t0 = time.perf_counter()
boot = fit.bootstrap(N_BOOT, key=1)
boot_seconds = time.perf_counter() - t0
print(boot)
print(f"{N_BOOT} replicates in {boot_seconds:.1f} s, including compilation "
      f"({boot_seconds / N_BOOT * 1e3:.2f} ms per replicate); "
      f"lme4's bootMer took {lme4['boot_seconds_2000']:.1f} s for 2,000 here "
      f"({lme4['boot_seconds_2000'] / 2000 * 1e3:.1f} ms per replicate)")
boot.table.head()
"""),
("code", r"""
fig = plotting.bootstrap(boot)
"""),
("md", r"""
### The intervals compared

Wald intervals use the Hessian SEs (on the SD / correlation scale for the variance parameters);
profile intervals invert the likelihood-ratio test (lme4's `confint(method = "profile")`, on the ML
deviance); bootstrap intervals are percentiles of the replicates. lme4's profile and 2,000-replicate
bootstrap intervals are quoted from the reference file.
"""),
("code", r"""
wald = fit.confint(method="wald")
prof = fit.confint(method="profile")
perc = boot.confint()
ref_prof = pd.DataFrame(lme4["confint_profile"]).set_index("names")
ref_boot = pd.DataFrame(lme4["confint_boot_perc_2000"]).set_index("names")
cis = pd.concat({"Wald": wald, "profile": prof, "profile (lme4)": ref_prof.loc[prof.index],
                 f"bootstrap {N_BOOT}": perc, "bootstrap 2000 (lme4)": ref_boot.loc[perc.index]}, axis=1)
assert np.allclose(prof.to_numpy(), ref_prof.loc[prof.index].to_numpy(), rtol=1e-4)
cis.round(3)
"""),
("md", r"""
The profile intervals agree with lme4's to 4 digits. The bootstrap intervals agree with lme4's to
Monte Carlo error (lme4 used 2,000 replicates and another random stream). The Wald interval of the
correlation is symmetric on the Fisher-z scale, but the bootstrap and profile show how skewed its
distribution is, with mass piled up at +1 (the replicates with a singular fit).

The profile traces: straight lines where the Wald approximation is good (fixed effects), curved
for the SDs.
"""),
("code", r"""
fig = plotting.profile(fit)
"""),
("md", r"""
## 2. A power curve from batched simulated fits

How large a `Days` effect would this design (18 subjects, 10 days each) detect? Simulate
`N_POWER` data sets for each effect size, with the variance components of the fit, refit all of
them in one `fit_batch` call (1,000 responses, the size of section 3's batches: one compilation
serves both), and count how often the t test of `Days` rejects at 5%. The
t statistic of every fit comes from `lmm_jax.make_estimates`: the estimates at theta (beta, sigma,
vcov of beta) as a pure JAX function of theta and the data's cross-products (a pytree,
`model.cross_products(y)`), here vmapped over the simulated responses and their fitted theta
inside our own jitted function. Its df, 17, is the Satterthwaite df of this balanced design (see
the summary).
"""),
("code", r"""
model = fit.model
estimates = lmm_jax.make_estimates(model, reml=True, data="argument")   # estimates(theta, products)

@jax.jit
def days_t(Y, theta):
    def one(y, th):
        est = estimates(th, model.cross_products(y))
        return est.beta[1] / jnp.sqrt(est.vcov[1, 1])
    return jax.vmap(one, in_axes=(1, 0))(Y, theta)

effects = np.arange(8.0)
Y = jnp.concatenate([lmm_jax.simulate(fit, N_POWER, key=10 + i,
                                      params=dict(beta=[fit.beta[0], d], theta=fit.theta, sigma=fit.sigma))
                     for i, d in enumerate(effects)], axis=1)
t0 = time.perf_counter()
sims = model.fit_batch(Y)
t = np.asarray(days_t(Y, jnp.asarray(sims.theta)))
power_seconds = time.perf_counter() - t0
crit = stats.t.ppf(0.975, df=17)
reject = (np.abs(t) > crit) & sims.ok
power = reject.reshape(len(effects), N_POWER).mean(axis=1)
print(f"{Y.shape[1]} fits in {power_seconds:.1f} s including compilation; {int(np.sum(~sims.ok))} not converged")
pd.DataFrame({"Days effect": effects, "power": power}).set_index("Days effect").T.round(3)
"""),
("code", r"""
# the exact t-test power at the fit's SE, for reference (noncentral t)
se = fit.std_errors["Days"]
exact = [stats.nct.sf(crit, 17, d / se) + stats.nct.cdf(-crit, 17, d / se) for d in effects]
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.plot(effects, power, "o-", label=f"simulated ({N_POWER} per point)")
ax.plot(effects, exact, "--", color="0.4", label="noncentral t at the fitted SE")
ax.axhline(0.05, color="0.7", lw=0.8); ax.axhline(0.8, color="0.7", lw=0.8)
ax.set_xlabel("true Days effect (ms per day)"); ax.set_ylabel("power of the 5% t test")
ax.legend(fontsize=8);
assert abs(power[0] - 0.05) < 0.05        # size under the null, within Monte Carlo error
"""),
("md", r"""
## 3. Coverage of 95% Wald and bootstrap intervals

Take the fit's estimates as the truth, simulate `N_COVERAGE` data sets, and for each compute the
95% Wald interval of the `Days` effect (t with 17 df); for the first `N_COVERAGE_BOOT` of them
also a percentile bootstrap interval from `B_INNER` replicates simulated at that data set's own
estimates (`N_COVERAGE_BOOT x B_INNER` more fits; kept small for a CPU run: raise them on a GPU).
How often does each interval contain the true value?
"""),
("code", r"""
true = fit.beta[1]
Y = lmm_jax.simulate(fit, N_COVERAGE, key=2024)
t0 = time.perf_counter()
outer = model.fit_batch(Y)
se_outer = np.asarray(outer.beta[:, 1] / days_t(Y, jnp.asarray(outer.theta)))
wald_lo, wald_hi = outer.beta[:, 1] - crit * se_outer, outer.beta[:, 1] + crit * se_outer

# inner bootstraps: B_INNER responses at each data set's estimates, refitted in chunks of 20 data sets
boot_lo, boot_hi = np.full(N_COVERAGE, np.nan), np.full(N_COVERAGE, np.nan)
CHUNK = 20
for start in range(0, N_COVERAGE_BOOT, CHUNK):
    idx = range(start, min(start + CHUNK, N_COVERAGE_BOOT))
    Yb = jnp.concatenate([lmm_jax.simulate(model, B_INNER, key=100_000 + j,
                                           params=dict(beta=outer.beta[j], theta=outer.theta[j], sigma=outer.sigma[j]))
                          for j in idx], axis=1)
    inner = model.fit_batch(Yb)
    slopes = np.where(inner.ok, inner.beta[:, 1], np.nan).reshape(len(idx), B_INNER)
    boot_lo[start:start + len(idx)] = np.nanquantile(slopes, 0.025, axis=1)
    boot_hi[start:start + len(idx)] = np.nanquantile(slopes, 0.975, axis=1)
coverage_seconds = time.perf_counter() - t0
ok = outer.ok
bok = ok & np.isfinite(boot_lo)
cover = pd.DataFrame({
    "interval": ["Wald (t, 17 df)", f"bootstrap percentile ({B_INNER})"],
    "coverage": [np.mean(((wald_lo <= true) & (true <= wald_hi))[ok]),
                 np.mean(((boot_lo <= true) & (true <= boot_hi))[bok])],
    "data sets": [ok.sum(), bok.sum()],
    "Monte Carlo SE": [np.sqrt(0.95 * 0.05 / ok.sum()), np.sqrt(0.95 * 0.05 / bok.sum())],
    "mean width": [np.mean((wald_hi - wald_lo)[ok]), np.mean((boot_hi - boot_lo)[bok])]})
print(f"{N_COVERAGE + N_COVERAGE_BOOT * B_INNER:,} fits in {coverage_seconds:.1f} s including compilation")
cover.round(3)
"""),
("code", r"""
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
for ax, (name, lo, hi, use) in zip(axes, [("Wald", wald_lo, wald_hi, ok), ("bootstrap percentile", boot_lo, boot_hi, bok)]):
    order = np.argsort(np.where(use, outer.beta[:, 1], np.inf))[:use.sum()][:: max(1, use.sum() // 100)]
    miss = (lo[order] > true) | (hi[order] < true)
    ax.vlines(np.arange(len(order)), lo[order], hi[order], color=np.where(miss, "C3", "C0"), lw=1)
    ax.axhline(true, color="k", lw=1)
    ax.set_title(f"{name}: coverage {np.mean(((lo <= true) & (true <= hi))[use]):.3f} of {use.sum()}", fontsize=10)
    ax.set_xlabel("simulated data sets (up to 100, sorted by estimate)")
axes[0].set_ylabel("95% interval for the Days effect");
"""),
("md", r"""
The Wald t interval with the Satterthwaite df covers at its nominal 95% here. The percentile
bootstrap from 50 replicates undercovers (about 0.89 ± 0.015): its intervals are short, both
because 50 replicates put the 2.5% and 97.5% quantiles too close together and because the
percentile method, like a z interval, ignores that the slope's SE is estimated from only 18
subjects (17 df). This is the small-sample weakness of percentile intervals, not a bootstrap
failure; more inner replicates narrow the first gap, a studentized bootstrap closes the second.
"""),
]

# pbkrtest's parametric-bootstrap likelihood-ratio test (PBmodcomp), checked by tests/batched/test_modcomp.py.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_pbmodcomp_reference.R tests/reference/pbmodcomp.json
#
# PBmodcomp refits both models by ML, simulates nsim responses from the small (null) model's ML fit, refits
# both to each (lme4's refit, warm-started), and compares the observed LRT with the simulated ones:
# p_PB = (1 + #{LRT* > LRT}) / (1 + #{LRT* > 0}). Cases: ingot (21 rows), where the small sample moves the
# reference distribution away from chi^2 (mean about 2.4 for df 2), and cake (270 rows), a null effect.
suppressPackageStartupMessages({library(lme4); library(pbkrtest); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "tests/reference/pbmodcomp.json"
data_dir <- "lmm_jax/datasets"
nsim <- 1000
seed <- 20261122

ingot <- read.csv(file.path(data_dir, "ingot.csv"))
ingot$ingot <- factor(ingot$ingot)
cake <- read.csv(file.path(data_dir, "cake.csv"))
cake$replicate <- factor(cake$replicate)

record <- function(dataset, large, small, data) {
  lg <- lmer(as.formula(large), data, REML = FALSE)
  sm <- lmer(as.formula(small), data, REML = FALSE)
  set.seed(seed)
  seconds <- system.time(pb <- PBmodcomp(lg, sm, nsim = nsim))[["elapsed"]]
  s <- summary(pb)
  tab <- s$test
  list(dataset = dataset, large = large, small = small, nsim = nsim, seed = seed,
       loglik_large = as.numeric(logLik(lg)), loglik_small = as.numeric(logLik(sm)),
       lrt = tab["LRT", "stat"], df = tab["LRT", "df"], p_chisq = tab["LRT", "p.value"],
       p_pb = tab["PBtest", "p.value"], p_gamma = tab["Gamma", "p.value"], p_bartlett = tab["Bartlett", "p.value"],
       bartlett = tab["Bartlett", "stat"], f_ddf = tab["F", "ddf"], p_f = tab["F", "p.value"],
       npos = unname(s$samples["npos"]), n_extreme = s$n.extreme,
       ref_mean = unname(s$moment["mean"]), ref_var = unname(s$moment["var"]), seconds = seconds)
}

cases <- list()
cases$ingot_metal <- record("ingot", "pres ~ metal + (1 | ingot)", "pres ~ 1 + (1 | ingot)", ingot)
cases$cake_recipe <- record("cake", "angle ~ recipe + temp + (1 | recipe:replicate)",
                            "angle ~ temp + (1 | recipe:replicate)", cake)
cases$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                       pbkrtest = as.character(packageVersion("pbkrtest")))
writeLines(toJSON(cases, auto_unbox = TRUE, digits = NA, pretty = TRUE), out)

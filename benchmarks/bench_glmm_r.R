# lme4's side of the GLMM benchmark (issue 20), in one R process, with glmer's default control (what users run):
# - a warm glmer fit of VerbAgg (r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), binomial, Laplace):
#   median elapsed seconds of 5 fits after one warm-up, and the same for cbpp;
# - bootMer of the cbpp fit (cbind(incidence, size - incidence) ~ period + (1 | herd), binomial), FUN = fixed
#   effects and theta, seed 20261122: nsim replicates in one run after a 5-replicate warm-up. When a 20-replicate
#   pilot projects more than 180 s, it runs 200 and reports the time scaled to nsim (`scaled = true`).
# Writes one JSON object to stdout.
#
# Usage (from the repository root):
#   Rscript benchmarks/bench_glmm_r.R [data_dir = lmm_jax/datasets] [nsim = 1000]
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) > 0) args[1] else "lmm_jax/datasets"
nsim <- if (length(args) > 1) as.integer(args[2]) else 1000L
SEED <- 20261122
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
verb <- rd("VerbAgg")
verb$id <- factor(verb$id)
cbpp <- rd("cbpp")
cbpp$herd <- factor(cbpp$herd)
cbpp$period <- factor(cbpp$period)

warm_median <- function(make, reps = 5) {
  m <- make()                                   # warm-up
  t <- vapply(seq_len(reps), function(i) system.time(make())[["elapsed"]], 0)
  list(median_seconds = median(t), seconds = t, logLik = as.numeric(logLik(m)))
}
verb_fit <- function() glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), verb, binomial)
cbpp_fit <- function() glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)

out <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
            cores = parallel::detectCores(),
            verbagg_fit = warm_median(verb_fit), cbpp_fit = warm_median(cbpp_fit))

fit <- cbpp_fit()
stat <- function(x) c(fixef(x), getME(x, "theta"))
n_warn <- 0
boot <- function(n) withCallingHandlers(bootMer(fit, stat, nsim = n, seed = SEED),
                                        warning = function(w) { n_warn <<- n_warn + 1; invokeRestart("muffleWarning") })
invisible(boot(5))
pilot <- system.time(boot(20))[["elapsed"]]
run_n <- if (pilot / 20 * nsim > 180) 200L else nsim
n_warn <- 0
secs <- system.time(b <- boot(run_n))[["elapsed"]]
ci <- apply(b$t, 2, quantile, probs = c(0.025, 0.975), na.rm = TRUE)
out$cbpp_bootmer <- list(nsim = nsim, replicates_run = run_n, scaled = run_n != nsim, seed = SEED,
                         seconds = secs, seconds_scaled_to_nsim = secs * nsim / run_n, seconds_per_replicate = secs / run_n,
                         pilot_seconds_20 = pilot, failed_replicates = sum(!stats::complete.cases(b$t)),
                         warnings = n_warn, statistic = names(b$t0), t0 = unname(b$t0),
                         percentile_lower = unname(ci[1, ]), percentile_upper = unname(ci[2, ]))
cat(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "\n")

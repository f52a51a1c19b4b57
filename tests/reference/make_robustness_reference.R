# Reference fits from lme4 for the numerically hard inputs of tests/test_robustness.py
# (covariates on very different scales, large offsets, near-zero / zero
# variance components, tiny residual variance, unbalanced groups, groups of
# size 1). Each case writes CASE.csv (the simulated data) and CASE.json (the
# lme4 fit) into the output directory.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_robustness_reference.R tests/reference/robust
#
# lme4's bobyqa is run with a tight final trust radius (rhoend 1e-12) so that
# the reference optimum is accurate to well below the test tolerances
# (logLik 1e-6, beta and variance components 1e-5 relative).
`%||%` <- function(a, b) if (is.null(a)) b else a
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
out_dir <- if (length(args)) args[1] else "tests/reference/robust"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12),
                    check.conv.singular = "ignore", calc.derivs = TRUE)
set.seed(20261122)

cases <- list()
add <- function(id, data, formula, reml = TRUE, note = "", shift = NULL) {
  cases[[length(cases) + 1]] <<- list(id = id, data = data, formula = formula, reml = reml, note = note,
                                      shift = shift)
}
group_effects <- function(g, sd) rnorm(nlevels(g), sd = sd)[as.integer(g)]

# Most cases share one shape (120 observations, 12 groups of 10, y ~ x + (1 | g))
# so that the tests compile the fit once for all of them.
set.seed(20261122 + 1)
# 1. covariates on very different scales: 1e-6 and 1e6
n <- 120; g <- factor(sprintf("g%02d", rep(1:12, each = 10)))
x_small <- rnorm(n, sd = 1e-6); x_big <- rnorm(n, sd = 1e6)
y <- 2 + 3e5 * x_small + 4e-7 * x_big + group_effects(g, 1) + rnorm(n)
add("scales", data.frame(y, x_small, x_big, g), "y ~ x_small + x_big + (1 | g)",
    note = "covariate SDs 1e-6 and 1e6")

set.seed(20261122 + 2)
# 2. large offsets in a covariate and in the response, with a random slope
x <- 1e4 + rnorm(n)
y <- 1e3 + 0.5 * (x - 1e4) + group_effects(g, 1) + group_effects(g, 0.5) * (x - 1e4) + rnorm(n, sd = 0.5)
# lme4 itself loses digits here (it forms X'X and y'y); the fit of the shifted
# data (x - 1e4, y - 1e3) is recorded as "shifted": theta, sigma, the slope
# and the REML criterion / deviance are invariant to the shifts, the
# intercept moves by 1e3 - 1e4 * slope.
add("offsets", data.frame(y, x, g), "y ~ x + (1 | g)", note = "x = 1e4 + N(0,1), y about 1e3",
    shift = c(x = 1e4, y = 1e3))
add("offsets_ml", data.frame(y, x, g), "y ~ x + (1 | g)", reml = FALSE, note = "as offsets, by ML",
    shift = c(x = 1e4, y = 1e3))
set.seed(20261122 + 20)
# a realistic offset: calendar years as a covariate, a response around 500
x <- 2000 + rnorm(n, sd = 3)
y <- 500 + 0.8 * (x - 2000) + group_effects(g, 2) + rnorm(n, sd = 1.5)
add("offsets_years", data.frame(y, x, g), "y ~ x + (1 | g)", note = "x = 2000 + N(0, 9), y about 500",
    shift = c(x = 2000, y = 500))
add("offsets_years_ml", data.frame(y, x, g), "y ~ x + (1 | g)", reml = FALSE, note = "as offsets_years, by ML",
    shift = c(x = 2000, y = 500))

set.seed(20261122 + 3)
# 3. a near-zero variance component: within-group noise with group means
#    exactly 0, plus group effects whose variance barely exceeds sigma^2 / 10
#    (the part of the group-mean variance the residual explains)
x <- rnorm(n); x <- x - ave(x, g)   # within-group covariate: the group means carry only a
e <- rnorm(n); e <- e - ave(e, g)
e <- resid(lm(e ~ x))                 # so that the within-group mean square is sum(e^2) / (n - 12 - 1)
a <- rnorm(12); a <- (a - mean(a)) / sd(a) * sqrt(sum(e^2) / (n - 13) / 10 * 1.08)
y <- 1 + x + a[as.integer(g)] + e
add("near_zero_var", data.frame(y, x, g), "y ~ x + (1 | g)", note = "group variance just above sigma^2 / 10: estimate near 0")

set.seed(20261122 + 4)
# 4. an exactly zero variance component: group means of y are all equal
e <- rnorm(n); e <- e - ave(e, g)
y <- 5 + e
add("zero_var", data.frame(y, x, g), "y ~ x + (1 | g)",
    note = "y has identical group means: REML estimate of the group variance is exactly 0")

set.seed(20261122 + 5)
# 5. a residual variance near zero (residual SD 1e-3 of the group SD)
x <- rnorm(n)
y <- 1 + 2 * x + group_effects(g, 1) + rnorm(n, sd = 1e-3)
add("tiny_residual", data.frame(y, x, g), "y ~ x + (1 | g)", note = "residual SD 1e-3, group SD 1")

set.seed(20261122 + 6)
# 6. very unbalanced groups: one group of 60, the rest of 1 to 3 observations
sizes <- c(60, rep(1:3, length.out = 30))
g <- factor(sprintf("g%02d", rep(seq_along(sizes), sizes)))
n <- length(g); x <- rnorm(n)
y <- 1 + 0.5 * x + group_effects(g, 0.8) + rnorm(n)
add("unbalanced", data.frame(y, x, g), "y ~ x + (1 | g)", note = "group sizes 60 and 1..3")
add("unbalanced_slope", data.frame(y, x, g), "y ~ x + (x | g)", note = "as unbalanced, random slope")

set.seed(20261122 + 7)
# 7. groups of size 1 beside larger groups, crossed with a second factor
sizes <- c(rep(10, 9), rep(1, 30))
g <- factor(sprintf("g%02d", rep(seq_along(sizes), sizes)))
n <- length(g); h <- factor(sample(letters[1:6], n, replace = TRUE)); x <- rnorm(n)
y <- 1 + 0.5 * x + group_effects(g, 1) + group_effects(h, 0.7) + rnorm(n)
add("singletons", data.frame(y, x, g, h), "y ~ x + (1 | g) + (1 | h)", note = "30 groups of size 1")

set.seed(20261122 + 8)
# 8. perfectly balanced: 12 groups x 10, a covariate with a random slope
g <- factor(sprintf("g%02d", rep(1:12, each = 10))); x <- rep(0:9, 12); n <- length(g)
y <- 3 + 0.4 * x + group_effects(g, 1) + group_effects(g, 0.3) * x + rnorm(n, sd = 0.6)
add("balanced", data.frame(y, x, g), "y ~ x + (x | g)", note = "12 groups of 10")

for (cs in cases) {
  d <- cs$data
  write.csv(d, file.path(out_dir, paste0(cs$id, ".csv")), row.names = FALSE)
  fit <- lmer(as.formula(cs$formula), data = d, REML = cs$reml, control = ctrl)
  vc <- as.data.frame(VarCorr(fit))
  varcomp <- vc$vcov  # lme4's order: per term variances and covariances, then the residual
  res <- list(id = cs$id, formula = cs$formula, reml = cs$reml, note = cs$note, nobs = nobs(fit),
              theta = unname(getME(fit, "theta")), beta = unname(fixef(fit)), beta_names = names(fixef(fit)),
              beta_se = unname(sqrt(diag(as.matrix(vcov(fit))))),
              sigma = sigma(fit), logLik = as.numeric(logLik(fit)),
              objective = if (cs$reml) unname(REMLcrit(fit)) else deviance(fit),
              varcomp = varcomp, singular = isSingular(fit),
              lme4_messages = unlist(fit@optinfo$conv$lme4$messages) %||% character(0),
              lme4_version = as.character(packageVersion("lme4")))
  if (!is.null(cs$shift)) {
    ds <- d
    for (v in names(cs$shift)) ds[[v]] <- ds[[v]] - cs$shift[[v]]
    fs <- lmer(as.formula(cs$formula), data = ds, REML = cs$reml, control = ctrl)
    res$shifted <- list(shift = as.list(cs$shift), theta = unname(getME(fs, "theta")), beta = unname(fixef(fs)),
                        sigma = sigma(fs), logLik = as.numeric(logLik(fs)),
                        objective = if (cs$reml) unname(REMLcrit(fs)) else deviance(fs),
                        varcomp = as.data.frame(VarCorr(fs))$vcov)
  }
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE),
             file.path(out_dir, paste0(cs$id, ".json")))
  cat(sprintf("%-18s %s logLik %.8f singular %s %s\n", cs$id, cs$formula, res$logLik, res$singular,
              paste(res$lme4_messages, collapse = "; ")))
}

# References for lmm_jax's GLMMs (issue 20): lme4 1.1-31 glmer fits of binomial and Poisson models by Laplace
# (nAGQ = 1) and adaptive Gauss-Hermite quadrature (nAGQ = 9), one JSON per case in tests/reference/glmm/.
#
# Two fits per case:
# - the reference fit (top-level fields): glmer with bobyqa in both stages, rhoend 1e-10 and tolPwrss 1e-10,
#   so the values are those of the optimum. lme4's default tolPwrss (1e-7) leaves the Laplace deviance itself
#   inaccurate: for cbpp its devfun gives 184.05313 at lme4's default optimum where the converged penalised
#   IRLS gives 184.05257, and the tight optimum is 184.052564 (an independent Laplace evaluation in this
#   script, `check_laplace`, agrees to 1e-7).
# - `lme4_default`: glmer with its default control (bobyqa then Nelder_Mead), what a user sees: logLik,
#   estimates, SEs, convergence messages and warnings, and the median elapsed seconds of 5 warm fits.
#
# lme4's deviance for nAGQ > 1 leaves out the saturated model's -2 log-likelihood: for those fits the true
# -2 log-likelihood is deviance + `saturated_aic` (family$aic at mu = y), recorded per case.
#
# Data: the CSVs in lmm_jax/datasets (cbpp, grouseticks, VerbAgg, Contraception) and MASS's Insurance, written
# by this script to tests/reference/glmm/insurance.csv (Group and Age as unordered factors, R's level order).
#
# Usage (from the repository root):
#   Rscript tests/reference/make_glmm_reference.R lmm_jax/datasets tests/reference/glmm
suppressPackageStartupMessages({library(lme4); library(jsonlite); library(MASS)})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) > 0) args[1] else "lmm_jax/datasets"
out_dir <- if (length(args) > 1) args[2] else "tests/reference/glmm"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)

TIGHT <- glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-10), tolPwrss = 1e-10)
HEAD <- 500          # rows of the per-observation vectors stored for the larger sets (all where n <= 2000)

as_factors <- function(d, cols) { for (c in cols) d[[c]] <- factor(d[[c]]); d }
cbpp <- as_factors(rd("cbpp"), c("herd", "period"))
ticks <- as_factors(rd("grouseticks"), c("INDEX", "BROOD", "YEAR", "LOCATION"))
verb <- as_factors(rd("VerbAgg"), c("id"))
verb$mode <- factor(verb$mode, levels = c("want", "do"))
contra <- as_factors(rd("Contraception"), c("woman", "district", "livch"))
ins <- data.frame(District = factor(Insurance$District), Group = factor(Insurance$Group, ordered = FALSE),
                  Age = factor(Insurance$Age, ordered = FALSE), Holders = Insurance$Holders, Claims = Insurance$Claims)
write.csv(ins, file.path(out_dir, "insurance.csv"), row.names = FALSE)
frames <- list(cbpp = cbpp, grouseticks = ticks, VerbAgg = verb, Contraception = contra, insurance = ins)

CBPP_R <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CBPP_PY <- "incidence/size ~ period + (1 | herd)"
kw <- function(family, link, weights = NULL, nAGQ = 1) list(family = family, link = link, weights = weights, nAGQ = nAGQ)
cases <- list(
  cbpp_binomial = list(data = "cbpp", formula = CBPP_R, family = "binomial", link = "logit", nAGQ = 1,
                       lmm_jax_formula = CBPP_PY, lmm_jax_kwargs = kw("binomial", "logit", "size"),
                       note = "proportion form: incidence/size with prior weights size is the same fit as cbind()"),
  cbpp_binomial_agq9 = list(data = "cbpp", formula = CBPP_R, family = "binomial", link = "logit", nAGQ = 9,
                            lmm_jax_formula = CBPP_PY, lmm_jax_kwargs = kw("binomial", "logit", "size", 9)),
  cbpp_probit = list(data = "cbpp", formula = CBPP_R, family = "binomial", link = "probit", nAGQ = 1,
                     lmm_jax_formula = CBPP_PY, lmm_jax_kwargs = kw("binomial", "probit", "size")),
  cbpp_cloglog = list(data = "cbpp", formula = CBPP_R, family = "binomial", link = "cloglog", nAGQ = 1,
                      lmm_jax_formula = CBPP_PY, lmm_jax_kwargs = kw("binomial", "cloglog", "size")),
  grouseticks_poisson = list(
    data = "grouseticks", formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
    family = "poisson", link = "log", nAGQ = 1,
    lmm_jax_formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
    lmm_jax_kwargs = kw("poisson", "log"),
    note = paste("cHEIGHT is HEIGHT minus its mean (the data's column); ?grouseticks' formula with HEIGHT",
                 "makes lme4 warn (uncentred_warnings) at the same logLik")),
  verbagg_binary = list(
    data = "VerbAgg", formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
    family = "binomial", link = "logit", nAGQ = 1,
    lmm_jax_formula = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", lmm_jax_kwargs = kw("binomial", "logit"),
    note = "r2 is text N/Y: R's factor response, first level N = 0, Y = 1"),
  contraception = list(
    data = "Contraception", formula = "use ~ urban + age + I(age^2) + livch + (urban | district)",
    family = "binomial", link = "logit", nAGQ = 1,
    lmm_jax_formula = "use ~ urban + age + I(age^2) + livch + (urban | district)", lmm_jax_kwargs = kw("binomial", "logit"),
    note = "use is text N/Y: R's factor response, first level N = 0, Y = 1; lme4's default fit warns (age^2 scale)"),
  insurance_offset = list(
    data = "insurance", formula = "Claims ~ Group + Age + offset(log(Holders)) + (1 | District)",
    family = "poisson", link = "log", nAGQ = 1,
    lmm_jax_formula = "Claims ~ Group + Age + offset(log(Holders)) + (1 | District)", lmm_jax_kwargs = kw("poisson", "log"),
    levels = list(Group = levels(ins$Group), Age = levels(ins$Age)),   # R's order, not alphabetical
    note = paste("MASS::Insurance (insurance.csv here); Group and Age are R factors in the order of `levels`,",
                 "not alphabetical: load them as pd.Categorical(categories = levels[...]), unordered")))

fam <- function(cs) get(cs$family)(link = cs$link)
fit <- function(cs, control = TIGHT, nAGQ = cs$nAGQ, formula = cs$formula) {
  d <- frames[[cs$data]]
  glmer(as.formula(formula), d, family = fam(cs), nAGQ = nAGQ, control = control)
}
catching <- function(expr) {
  warns <- character(0)
  value <- withCallingHandlers(expr, warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") })
  list(value = value, warnings = warns)
}
arr <- function(v) I(unname(v))      # a JSON array even of length 1
cut_rows <- function(v) { v <- unname(v); if (length(v) > 2000) head(v, HEAD) else v }
mat <- function(a) list(rows = rownames(a), columns = colnames(a), values = unname(lapply(seq_len(ncol(a)), function(j) unname(a[, j]))))

re_table <- function(m) {
  re <- ranef(m, condVar = TRUE)
  lapply(names(re), function(g) {
    r <- re[[g]]; pv <- attr(r, "postVar")
    sd <- t(sqrt(matrix(apply(pv, 3, function(M) diag(as.matrix(M))), nrow = dim(pv)[1])))
    list(group = g, levels = arr(rownames(r)), columns = arr(colnames(r)),
         values = unname(lapply(seq_len(ncol(r)), function(j) arr(r[[j]]))),
         condsd = unname(lapply(seq_len(ncol(sd)), function(j) arr(sd[, j]))))
  })
}

devfun_points <- function(m, nAGQ) {
  th <- getME(m, "theta"); b <- fixef(m); se <- sqrt(diag(as.matrix(vcov(m))))
  pts <- list(optimum = c(th, b), theta_up = c(th * 1.1, b), shifted = c(th * 0.9, b + 0.1 * se))
  lapply(pts, function(p) {
    dfun <- update(m, devFunOnly = TRUE, nAGQ = nAGQ, control = TIGHT)   # a fresh one per point: no carried state
    list(theta = arr(p[seq_along(th)]), beta = arr(p[-seq_along(th)]), deviance = dfun(unname(p)))
  })
}

summary_fields <- function(m) {
  s <- summary(m)
  co <- coef(s)
  vc <- as.data.frame(VarCorr(m))
  list(logLik = as.numeric(logLik(m)), deviance = unname(s$AICtab["deviance"]), AIC = AIC(m), BIC = BIC(m),
       df_resid = df.residual(m), conditional_deviance = deviance(m),
       beta_names = arr(names(fixef(m))), beta = arr(fixef(m)), beta_se = arr(co[, 2]), z = arr(co[, 3]),
       p = arr(co[, 4]), vcov = unname(as.matrix(vcov(m))), vcov_rx = unname(as.matrix(suppressWarnings(vcov(m, use.hessian = FALSE)))),
       theta_names = arr(names(getME(m, "theta"))), theta = arr(getME(m, "theta")),
       varcorr = list(names = arr(ifelse(is.na(vc$var2), paste0("sd_", vc$var1, "|", vc$grp),
                                         paste0("cor_", vc$var2, ".", vc$var1, "|", vc$grp))),
                      values = arr(vc$sdcor)),
       singular = isSingular(m))
}

timed <- function(cs, reps = 5) {
  fit(cs, control = glmerControl())    # warm-up
  t <- vapply(seq_len(reps), function(i) system.time(suppressWarnings(fit(cs, control = glmerControl())))[["elapsed"]], 0)
  list(median_seconds = median(t), seconds = t)
}

res_versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     Matrix = as.character(packageVersion("Matrix")))
for (id in names(cases)) {
  cs <- cases[[id]]
  cat(id, "\n")
  d <- frames[[cs$data]]
  got <- catching(fit(cs))
  m <- got$value
  out <- c(list(case = id, versions = res_versions, n = nobs(m), dataset = cs$data,
                control = "glmerControl(optimizer = 'bobyqa', optCtrl = list(maxfun = 1e5, rhoend = 1e-10), tolPwrss = 1e-10)"),
           cs[setdiff(names(cs), "data")], summary_fields(m),
           list(conv_messages = m@optinfo$conv$lme4$messages, warnings = got$warnings))
  out$saturated_aic <- with(m@resp, family$aic(y, n, y, weights, 0))
  dflt <- catching(fit(cs, control = glmerControl()))
  out$lme4_default <- c(summary_fields(dflt$value)[c("logLik", "deviance", "AIC", "BIC", "beta", "beta_se", "theta", "varcorr")],
                        list(conv_messages = dflt$value@optinfo$conv$lme4$messages, warnings = dflt$warnings), timed(cs))
  out$ranef <- re_table(m)
  out$rows_stored <- length(cut_rows(fitted(m)))
  out$fitted <- cut_rows(fitted(m))
  out$eta <- cut_rows(predict(m, type = "link"))
  types <- c("deviance", "pearson", "response", "working")
  out$residuals <- setNames(lapply(types, function(t) cut_rows(residuals(m, type = t))), types)
  out$residuals_sum_sq <- setNames(lapply(types, function(t) sum(residuals(m, type = t)^2)), types)
  out$devfun_laplace <- devfun_points(m, 1)
  if (cs$nAGQ > 1) out$devfun_agq <- devfun_points(m, cs$nAGQ)
  w <- confint(m, method = "Wald", oldNames = FALSE)
  keep <- !is.na(w[, 1])
  out$confint_wald <- list(names = arr(rownames(w)[keep]), lower = arr(w[keep, 1]), upper = arr(w[keep, 2]))
  rows <- head(seq_len(nrow(d)), 5)
  nd <- d[rows, ]
  out$predict <- list(rows = rows, link = unname(predict(m, newdata = nd, type = "link")),
                      response = unname(predict(m, newdata = nd, type = "response")),
                      link_fixed_only = unname(predict(m, newdata = nd, type = "link", re.form = NA)),
                      response_fixed_only = unname(predict(m, newdata = nd, type = "response", re.form = NA)))
  if (id == "grouseticks_poisson") {
    u <- catching(fit(cs, control = glmerControl(),
                      formula = "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)"))
    out$uncentred <- list(formula = "TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                          logLik = as.numeric(logLik(u$value)), beta_names = names(fixef(u$value)),
                          beta = arr(fixef(u$value)), theta = arr(getME(u$value, "theta")),
                          warnings = u$warnings)
  }
  if (id == "cbpp_binomial") {
    prop <- glmer(incidence / size ~ period + (1 | herd), cbpp, binomial, weights = size, control = TIGHT)
    stopifnot(abs(logLik(prop) - logLik(m)) < 1e-8, max(abs(fixef(prop) - fixef(m))) < 1e-6)
    out$check_laplace <- local({
      X <- model.matrix(~period, cbpp); th <- getME(m, "theta"); eta0 <- drop(X %*% fixef(m)); tot <- 0
      for (h in levels(cbpp$herd)) {
        i <- cbpp$herd == h; y <- cbpp$incidence[i]; n <- cbpp$size[i]; e <- eta0[i]
        g <- function(u) -sum(dbinom(y, n, plogis(e + th * u), log = TRUE)) + u^2 / 2
        u <- optimize(g, c(-10, 10), tol = 1e-12)$minimum
        for (k in 1:50) { pr <- plogis(e + th * u); u <- u - (-th * sum(y - n * pr) + u) / (1 + th^2 * sum(n * pr * (1 - pr))) }
        pr <- plogis(e + th * u)
        tot <- tot + 2 * g(u) + log(1 + th^2 * sum(n * pr * (1 - pr)))
      }
      list(what = "Laplace deviance at the reference optimum by a per-herd Newton solve, independent of lme4", deviance = tot)
    })
    pr <- profile(m, signames = FALSE)
    ci <- confint(pr)
    out$confint_profile <- list(names = arr(rownames(ci)), lower = arr(ci[, 1]), upper = arr(ci[, 2]))
    m0 <- fit(cs, formula = "cbind(incidence, size - incidence) ~ 1 + (1 | herd)")
    a <- anova(m0, m)
    out$anova_period <- list(formula0 = "cbind(incidence, size - incidence) ~ 1 + (1 | herd)",
                             lmm_jax_formula0 = "incidence/size ~ 1 + (1 | herd)",
                             npar = a$npar, AIC = a$AIC, BIC = a$BIC, logLik = a$logLik, deviance = a$deviance,
                             Chisq = a$Chisq, Df = a$Df, p = a[["Pr(>Chisq)"]])
  }
  writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = FALSE),
             file.path(out_dir, paste0(id, ".json")))
  cat("  logLik", format(out$logLik, digits = 12), " default", format(out$lme4_default$logLik, digits = 12),
      " warnings:", length(out$warnings), length(out$lme4_default$warnings), "\n")
}

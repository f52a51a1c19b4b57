# lme4 fits for the input-handling cases of issue 17 ("no silent wrong answers"),
# checked by tests/test_inputs.py: lme4's sleepstudy, and cake (whose temperature is an
# ordered factor) with lmerTest's type III table.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_inputs_reference.R tests/reference/inputs.json
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "tests/reference/inputs.json"
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12),
                    check.conv.singular = "ignore")

fit_record <- function(m) {
  list(formula = deparse(formula(m), width.cutoff = 500L), reml = isREML(m),
       fixef_names = names(fixef(m)), fixef = unname(fixef(m)), loglik = as.numeric(logLik(m)),
       theta = unname(getME(m, "theta")), sigma = sigma(m))
}
d <- sleepstudy
cases <- list()

# a column named Intercept is a covariate beside the intercept
d$Intercept <- d$Days
cases$intercept_column <- fit_record(lmer(Reaction ~ Intercept + (1 | Subject), d, control = ctrl))

# Days %in% f is Days:f
d$f <- ifelse(d$Days < 5, "a", "b")
cases$in_operator <- fit_record(lmer(Reaction ~ Days %in% f + (1 | Subject), d, REML = FALSE, control = ctrl))

# no fixed effects: lme4 fits by ML whatever REML says (the REML criterion is the deviance)
m0 <- lmer(Reaction ~ 0 + (1 | Subject), d, REML = TRUE, control = ctrl)
cases$no_fixed <- fit_record(m0)
ci <- confint(m0, oldNames = FALSE, quiet = TRUE)
cases$no_fixed$confint_profile <- list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
cases$no_fixed$ranef <- unname(ranef(m0)$Subject[, 1])

# functions in the fixed part: lme4's coefficient names are R's deparse of the call
cases$functions <- fit_record(lmer(Reaction ~ abs(Days - 4) + sqrt(Days) + exp(Days/10) + log1p(Days * 2) +
                                     I(Days^2) + floor(Days/3) + (1 | Subject), d, control = ctrl))
cases$function_slope <- fit_record(lmer(Reaction ~ sqrt(Days) + (sqrt(Days) | Subject), d, control = ctrl))

# an ordered factor: polynomial contrasts (temperature.L, .Q, .C, ^4, ^5); type III F tests
mc <- lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, control = ctrl)
cases$ordered_factor <- fit_record(mc)
a <- anova(mc)
cases$ordered_factor$anova <- list(terms = rownames(a), F = unname(a[["F value"]]), NumDF = unname(a$NumDF),
                                   DenDF = unname(a$DenDF))

writeLines(toJSON(cases, auto_unbox = TRUE, digits = NA, pretty = TRUE), out)

# lme4 / lmerTest fits with prior weights and offsets (issue 16), checked by tests/build/test_weights.py.
# Writes the data sets it fits (CSV) and the fits (weights.json) into tests/reference/weights/.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_weights_reference.R tests/reference/weights
#
# Data: school means of mlmRev's Chem97 (A-level chemistry scores of 31,022 students) weighted by the
# number of students averaged; school-by-intake-by-sex cell means of mlmRev's Exam weighted likewise; nlme's Spruce
# (log size of 79 Sitka spruce trees over 13 occasions) with each tree's first log size as an offset.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(mlmRev); library(nlme); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
dir <- if (length(args)) args[1] else "tests/reference/weights"
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12),
                    check.conv.singular = "ignore")

record <- function(m, data, weights = NULL) {
  out <- list(formula = deparse(formula(m), width.cutoff = 500L), reml = isREML(m),
              fixef_names = names(fixef(m)), fixef = unname(fixef(m)),
              se = unname(sqrt(diag(as.matrix(vcov(m))))), loglik = as.numeric(logLik(m)),
              theta = unname(getME(m, "theta")), sigma = sigma(m),
              varcorr_sdcor = as.data.frame(VarCorr(m))$sdcor,
              fitted_head = unname(head(fitted(m), 10)), residuals_head = unname(head(residuals(m), 10)))
  out$criterion <- if (isREML(m)) REMLcrit(m) else deviance(m)
  if (isREML(m)) {
    mt <- as_lmerModLmerTest(m)
    co <- summary(mt)$coefficients
    out$df_satterthwaite <- unname(co[, "df"])
  }
  out
}

# -- Chem97: school means --------------------------------------------------------------------------
g <- split(Chem97, Chem97$school)
chem <- do.call(rbind, lapply(g, function(d) data.frame(school = d$school[1], lea = d$lea[1],
  score = mean(d$score), gcsescore = mean(d$gcsescore), n = nrow(d))))
write.csv(chem, file.path(dir, "chem97_schools.csv"), row.names = FALSE)
cases <- list()
cases$chem97_reml <- record(lmer(score ~ gcsescore + (1 | lea), chem, weights = n, control = ctrl))
cases$chem97_ml <- record(lmer(score ~ gcsescore + (1 | lea), chem, weights = n, REML = FALSE, control = ctrl))
dv <- lmer(score ~ gcsescore + (1 | lea), chem, weights = n, devFunOnly = TRUE, control = ctrl)
cases$chem97_reml$devfun_at_1 <- dv(1.0)

# -- Exam: school x intake x sex cell means, a random slope ---------------------------------------------
g <- split(Exam, interaction(Exam$school, Exam$intake, Exam$sex, drop = TRUE))
exam <- do.call(rbind, lapply(g, function(d) data.frame(school = d$school[1], intake = d$intake[1], sex = d$sex[1],
  normexam = mean(d$normexam), standLRT = mean(d$standLRT), n = nrow(d))))
write.csv(exam, file.path(dir, "exam_cells.csv"), row.names = FALSE)
cases$exam_reml <- record(lmer(normexam ~ standLRT + sex + intake + (standLRT | school), exam, weights = n,
                               control = ctrl))
cases$exam_ml <- record(lmer(normexam ~ standLRT + sex + intake + (standLRT | school), exam, weights = n,
                             REML = FALSE, control = ctrl))

# -- Spruce: the first log size of each tree as an offset ---------------------------------------------
sp <- as.data.frame(Spruce)
sp$Tree <- as.character(sp$Tree)
first <- tapply(sp$logSize, sp$Tree, function(v) v[1])
sp$base <- unname(first[sp$Tree])
sp$years <- sp$days / 365
sp <- sp[sp$days > min(sp$days), ]
write.csv(sp[, c("Tree", "plot", "days", "years", "logSize", "base")], file.path(dir, "spruce.csv"), row.names = FALSE)
m_form <- lmer(logSize ~ years + offset(base) + (years | Tree), sp, control = ctrl)
m_arg <- lmer(logSize ~ years + (years | Tree), sp, offset = base, control = ctrl)
cases$spruce_offset <- record(m_form)
cases$spruce_offset_argument <- record(m_arg)
nd <- data.frame(years = c(0.6, 0.7), base = c(4, 5), Tree = c(sp$Tree[1], "new"))
cases$spruce_offset$predict_newdata <- unname(predict(m_form, newdata = nd, allow.new.levels = TRUE))
cases$spruce_offset$predict_newdata_trees <- nd$Tree
# a weighted fit with an offset
cases$spruce_offset_weighted <- record(lmer(logSize ~ years + offset(base) + (1 | Tree), sp,
                                            weights = rep(c(1, 2), length.out = nrow(sp)), control = ctrl))

writeLines(toJSON(cases, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(dir, "weights.json"))

# Inference references from lme4 / lmerTest / pbkrtest for tests/inference/test_inference.py:
# type III anova tables (Satterthwaite and Kenward-Roger), contrast tests,
# likelihood-ratio anova between nested models, and predictions.
# Usage (from the repository root):
#   Rscript tests/reference/make_inference_reference.R /work/shared/data tests/reference/inference.json
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- args[1]; out <- args[2]
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
tab <- function(a) list(terms = rownames(a), columns = colnames(a),
                        values = unname(lapply(seq_len(ncol(a)), function(j) unname(a[[j]]))))
res <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                            lmerTest = as.character(packageVersion("lmerTest")),
                            pbkrtest = as.character(packageVersion("pbkrtest"))))

cake <- rd("cake")
cake$temperature <- factor(cake$temperature)
sleep <- rd("sleepstudy")

fits <- list(
  cake_numeric = lmer(angle ~ recipe * temp + (1 | recipe:replicate), cake, REML = TRUE, control = ctrl),
  cake_factorial = lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, REML = TRUE, control = ctrl),
  sleepstudy = lmer(Reaction ~ Days + (Days | Subject), sleep, REML = TRUE, control = ctrl))
res$anova <- lapply(names(fits), function(nm) {
  f <- fits[[nm]]
  list(id = nm, formula = deparse(formula(f)), data = if (grepl("cake", nm)) "cake" else "sleepstudy",
       satterthwaite = tab(anova(f, type = 3, ddf = "Satterthwaite")),
       kenward_roger = tab(anova(f, type = 3, ddf = "Kenward-Roger")))
})
names(res$anova) <- names(fits)

# multi-row and one-row contrasts on cake (recipe * temp)
f <- fits$cake_numeric
L2 <- rbind(c(0, 1, 0, 0, 0, 0), c(0, 0, 1, 0, 0, 0))
L1 <- matrix(c(0, 1, -1, 0, 10, -10), nrow = 1)
res$contrast <- list(
  L_multi = L2, L_one = L1,
  multi_satterthwaite = tab(contest(f, L2, joint = TRUE, ddf = "Satterthwaite")),
  multi_kenward_roger = tab(contest(f, L2, joint = TRUE, ddf = "Kenward-Roger")),
  one_satterthwaite = tab(contest(f, L1, joint = FALSE, ddf = "Satterthwaite")),
  one_kenward_roger = tab(contest(f, L1, joint = FALSE, ddf = "Kenward-Roger")))

# likelihood-ratio tests: lme4 refits REML fits by ML
m0 <- lmer(Reaction ~ Days + (1 | Subject), sleep, REML = TRUE, control = ctrl)
m1 <- fits$sleepstudy
a <- suppressMessages(anova(m0, m1))
res$lrt_sleepstudy <- list(models = c("Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"),
                           table = tab(as.data.frame(a)))
m2 <- lmer(Reaction ~ 1 + (Days | Subject), sleep, REML = FALSE, control = ctrl)
m3 <- lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE, control = ctrl)
res$lrt_fixed_ml <- list(models = c("Reaction ~ 1 + (Days | Subject)", "Reaction ~ Days + (Days | Subject)"),
                         table = tab(as.data.frame(anova(m2, m3))))

# predictions: existing subjects, a new subject, with and without random effects
nd <- data.frame(Days = c(0, 3.5, 9, 2, 12), Subject = c("308", "335", "372", "999", "999"))
res$predict_sleepstudy <- list(
  newdata = nd,
  conditional = unname(predict(m1, newdata = nd, allow.new.levels = TRUE)),
  population = unname(predict(m1, newdata = nd, re.form = NA)),
  se_fixed = unname(sqrt(diag(model.matrix(~ Days, nd) %*% as.matrix(vcov(m1)) %*% t(model.matrix(~ Days, nd))))))
nd_cake <- data.frame(recipe = c("A", "B", "C", "B"), replicate = c(1, 2, 15, 99), temp = c(175, 200, 225, 190))
res$predict_cake <- list(
  newdata = nd_cake,
  conditional = unname(predict(fits$cake_numeric, newdata = nd_cake, allow.new.levels = TRUE)),
  population = unname(predict(fits$cake_numeric, newdata = nd_cake, re.form = NA)))

# lme4's profile tables (zeta at lme4's own grid points, for a pointwise check of zeta)
# and profile intervals at the boundary (Dyestuff2: sd estimated at 0)
prof_tab <- function(f) {
  pp <- as.data.frame(profile(f, signames = FALSE))
  list(par = as.character(pp$.par), zeta = pp$.zeta, value = pp$.focal)
}
ingot <- rd("ingot")
res$profile_ingot_ml <- prof_tab(lmer(pres ~ metal + (1 | ingot), ingot, REML = FALSE, control = ctrl))
res$profile_sleepstudy_ml <- prof_tab(lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE, control = ctrl))
dy2 <- lmer(Yield ~ 1 + (1 | Batch), rd("Dyestuff2"), REML = TRUE, control = ctrl)
ci <- suppressWarnings(confint(dy2, method = "profile", oldNames = FALSE))
res$confint_dyestuff2 <- list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
ci <- suppressWarnings(confint(dy2, method = "profile", oldNames = FALSE, level = 0.9))
res$confint_dyestuff2_90 <- list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))

writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE), out)
cat("wrote", out, "\n")

# References for tests/inference/test_r2_ranova.py: performance's r2_nakagawa and icc (with insight's
# get_variance), lmerTest's ranova and drop1, on lme4 fits of the bundled data sets and of mlmRev's Exam.
# Writes r2_ranova.json and exam.csv.gz (mlmRev's Exam: school, normexam, standLRT, sex) into its directory.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_r2_ranova_reference.R lmm_jax/datasets tests/reference
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(performance); library(mlmRev)
                                library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) > 0) args[1] else "lmm_jax/datasets"
out_dir <- if (length(args) > 1) args[2] else "tests/reference"
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12),
                    check.conv.singular = "ignore")
tab <- function(a) list(rows = rownames(a), columns = colnames(a),
                        values = unname(lapply(seq_len(ncol(a)), function(j) unname(a[[j]]))))
quiet <- function(expr) suppressWarnings(suppressMessages(expr))

exam <- Exam[, c("school", "normexam", "standLRT", "sex")]
exam$school <- as.character(exam$school)
gz <- gzfile(file.path(out_dir, "exam.csv.gz"), "w")
write.csv(exam, gz, row.names = FALSE)
close(gz)
exam <- read.csv(file.path(out_dir, "exam.csv.gz"), stringsAsFactors = TRUE)
exam$school <- factor(exam$school)

sleep <- rd("sleepstudy")
sleep$Subject <- factor(sleep$Subject)
cake <- rd("cake")
cake$temperature <- factor(cake$temperature)
cake$replicate <- factor(cake$replicate)
cells <- read.csv(file.path(out_dir, "weights", "exam_cells.csv"), stringsAsFactors = TRUE)
cells$school <- factor(cells$school)
spruce <- read.csv(file.path(out_dir, "weights", "spruce.csv"), stringsAsFactors = TRUE)
spruce$w <- rep(c(1, 2), length.out = nrow(spruce))
# a rank-deficient X: the f:g cell (0, b) is empty, lme4 drops f2:gb
sleep$f <- factor(sleep$Days %% 3)
sleep$g <- factor(ifelse(sleep$Days < 5, "a", "b"))
sleep_cells <- sleep[!(sleep$f == "0" & sleep$g == "b"), ]

cases <- list(
  sleep_slope = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", reml = TRUE),
  sleep_uncorrelated = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days || Subject)", reml = TRUE),
  penicillin = list(data = "Penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = TRUE),
  pastes = list(data = "Pastes", formula = "strength ~ 1 + (1 | batch/cask)", reml = TRUE),
  cake = list(data = "cake", formula = "angle ~ recipe * temperature + (1 | recipe:replicate)", reml = TRUE),
  exam_slope_ml = list(data = "exam", formula = "normexam ~ standLRT + sex + (standLRT | school)", reml = FALSE),
  exam_intercept = list(data = "exam", formula = "normexam ~ standLRT + sex + (1 | school)", reml = TRUE),
  exam_cells_weighted = list(data = "exam_cells", formula = "normexam ~ standLRT + sex + intake + (standLRT | school)",
                             reml = TRUE, weights = "n"),
  spruce_offset_weighted = list(data = "spruce", formula = "logSize ~ years + offset(base) + (1 | Tree)",
                                reml = TRUE, weights = "w"),
  sleep_rank_deficient = list(data = "sleep_cells", formula = "Reaction ~ f * g + Days + (1 | Subject)", reml = TRUE),
  dyestuff2_singular = list(data = "Dyestuff2", formula = "Yield ~ 1 + (1 | Batch)", reml = TRUE))
frames <- list(sleepstudy = sleep, Penicillin = rd("Penicillin"), Pastes = rd("Pastes"), cake = cake, exam = exam,
               exam_cells = cells, spruce = spruce, sleep_cells = sleep_cells, Dyestuff2 = rd("Dyestuff2"))

res <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                            lmerTest = as.character(packageVersion("lmerTest")),
                            performance = as.character(packageVersion("performance")),
                            insight = as.character(packageVersion("insight"))))
for (id in names(cases)) {
  cs <- cases[[id]]
  d <- frames[[cs$data]]
  m <- if (is.null(cs$weights)) {
    lmer(as.formula(cs$formula), d, REML = cs$reml, control = ctrl)
  } else {
    d$.w <- d[[cs$weights]]
    lmer(as.formula(cs$formula), d, REML = cs$reml, weights = .w, control = ctrl)
  }
  out <- cs
  out$loglik <- as.numeric(logLik(m))
  out$nobs <- nobs(m)
  v <- quiet(insight::get_variance(m))
  out$variance <- list(var_fixed = v$var.fixed, var_random = if (is.null(v$var.random)) NA else v$var.random,
                       var_residual = v$var.residual, intercept_names = names(v$var.intercept),
                       var_intercept = unname(v$var.intercept))
  r2 <- quiet(r2_nakagawa(m))
  out$r2 <- list(conditional = unname(r2$R2_conditional), marginal = unname(r2$R2_marginal))
  ic <- quiet(icc(m))
  out$icc <- if (is.data.frame(ic)) list(adjusted = ic$ICC_adjusted, unadjusted = ic$ICC_unadjusted) else
    list(adjusted = NA, unadjusted = NA)
  ig <- quiet(icc(m, by_group = TRUE))
  if (is.data.frame(ig)) out$icc_by_group <- list(group = ig$Group, icc = ig$ICC)
  rg <- tryCatch(quiet(r2_nakagawa(m, by_group = TRUE)), error = function(e) NULL)
  if (is.data.frame(rg) && !anyNA(rg$R2)) out$r2_by_group <- list(level = rg$Level, r2 = rg$R2)
  out$ranova <- tab(quiet(ranova(m)))
  out$ranova_whole_terms <- tab(quiet(ranova(m, reduce.terms = FALSE)))
  out$drop1_satterthwaite <- tab(quiet(drop1(m, ddf = "Satterthwaite")))
  # pbkrtest's Kenward-Roger takes the residual covariance as sigma^2 I whatever the prior weights: no reference
  # for weighted fits
  if (cs$reml && nrow(d) < 1000 && is.null(cs$weights))
    out$drop1_kenward_roger <- tab(quiet(drop1(m, ddf = "Kenward-Roger")))
  res$cases[[id]] <- out
}
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           file.path(out_dir, "r2_ranova.json"))

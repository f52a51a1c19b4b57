# References for tests/test_update_coef.py: lme4's coef, residuals (each type, scaled), fitted and predict
# (na.exclude), update (formula arithmetic, REML, weights) and refit, on sleepstudy (a correlated random slope;
# a copy with missing values fitted with na.exclude), Penicillin (crossed), cake (factorial) and nlme's Spruce
# with prior weights 1, 2, 1, 2, ... and an offset (tests/reference/weights/spruce.csv).
#
# refit: lme4 1.1-31's refit() of a REML fit with more than one fixed effect optimises the REML criterion with
# p = 1 (refit.merMod calls mkRespMod(REML = isREML(object)), TRUE, where lmer stores p): its logLik is neither the
# REML nor the ML one. The reference of refit(fit, y) is therefore the fit of the same call with y as the
# response, which is what refit means; where lme4's refit is right (ML fits, and REML with p = 1) the script
# checks that it agrees.
#
# Usage (from the repository root):
#   Rscript tests/reference/make_update_coef_reference.R lmm_jax/datasets tests/reference
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
data_dir <- if (length(args) > 0) args[1] else "lmm_jax/datasets"
out_dir <- if (length(args) > 1) args[2] else "tests/reference"
rd <- function(name) read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12),
                    check.conv.singular = "ignore")
tab <- function(a) list(rows = rownames(a), columns = colnames(a),
                        values = unname(lapply(seq_len(ncol(a)), function(j) unname(a[[j]]))))
HEAD <- 20

summarise <- function(m) list(formula = paste(deparse(formula(m), width.cutoff = 500L), collapse = ""),
                              reml = isREML(m), loglik = as.numeric(logLik(m)), nobs = nobs(m),
                              fixef_names = names(fixef(m)), fixef = unname(fixef(m)),
                              theta = unname(getME(m, "theta")), sigma = sigma(m))

sleep <- rd("sleepstudy")
sleep$Subject <- factor(sleep$Subject)
cake <- rd("cake")
cake$temperature <- factor(cake$temperature)
cake$replicate <- factor(cake$replicate)
spruce <- read.csv(file.path(out_dir, "weights", "spruce.csv"), stringsAsFactors = TRUE)
spruce$w <- rep(c(1, 2), length.out = nrow(spruce))
frames <- list(sleepstudy = sleep, Penicillin = rd("Penicillin"), cake = cake, spruce = spruce)

cases <- list(
  sleep = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", response = "Reaction",
               updates = c(". ~ . - Days", ". ~ . - 1", "log(.) ~ .", ". ~ . - (Days | Subject) + (Days || Subject)",
                           ". ~ . - (Days | Subject) + (1 | Subject)")),
  penicillin = list(data = "Penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)",
                    response = "diameter", updates = c(". ~ . - (1 | sample)", ". ~ . + sample - (1 | sample)")),
  cake = list(data = "cake", formula = "angle ~ recipe * temperature + (1 | recipe:replicate)", response = "angle",
              updates = c(". ~ . - recipe:temperature", "log(.) ~ recipe + temperature + (1 | recipe:replicate)")),
  spruce_weighted = list(data = "spruce", formula = "logSize ~ years + offset(base) + (1 | Tree)",
                         response = "logSize", weights = "w",
                         updates = c(". ~ . - years", "exp(.) ~ .")))

res <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))))
for (id in names(cases)) {
  cs <- cases[[id]]
  d <- frames[[cs$data]]
  m <- if (is.null(cs$weights)) lmer(as.formula(cs$formula), d, control = ctrl) else
    lmer(as.formula(cs$formula), d, weights = w, control = ctrl)
  out <- cs
  out$fit <- summarise(m)
  out$coef <- lapply(coef(m), tab)
  out$fitted_head <- unname(head(fitted(m), HEAD))
  out$residuals_head <- list()
  for (type in c("response", "working", "pearson", "deviance"))
    out$residuals_head[[type]] <- unname(head(residuals(m, type = type), HEAD))
  out$residuals_head$response_scaled <- unname(head(residuals(m, scaled = TRUE), HEAD))
  out$residuals_head$pearson_scaled <- unname(head(residuals(m, type = "pearson", scaled = TRUE), HEAD))
  out$update <- lapply(cs$updates, function(f) summarise(update(m, as.formula(f))))
  out$update_ml <- summarise(update(m, REML = FALSE))
  if (!is.null(cs$weights)) out$update_unweighted <- summarise(update(m, weights = NULL))
  # the new response: a deterministic perturbation, given in full to the test
  y <- d[[cs$response]] * 1.1 + sd(d[[cs$response]]) * 0.2 * cos(seq_len(nrow(d)))
  out$refit_response <- y
  d2 <- d
  d2[[cs$response]] <- y
  out$refit <- summarise(update(m, data = d2))
  ml <- update(m, REML = FALSE)
  refit_ml <- refit(ml, y)
  stopifnot(isTRUE(all.equal(as.numeric(logLik(refit_ml)), as.numeric(logLik(update(ml, data = d2))),
                             tolerance = 1e-7)))
  out$refit_ml <- summarise(refit_ml)
  if (length(fixef(m)) == 1)
    stopifnot(isTRUE(all.equal(as.numeric(logLik(refit(m, y))), out$refit$loglik, tolerance = 1e-7)))
  res$cases[[id]] <- out
}

# missing values with na.exclude: residuals, fitted and predict padded with NA on the rows dropped
sn <- sleep
sn$Reaction[c(3, 50)] <- NA
sn$Days[7] <- NA
fn <- lmer(Reaction ~ Days + (Days | Subject), sn, na.action = na.exclude, control = ctrl)
res$sleep_na_exclude <- list(missing_reaction = c(3, 50), missing_days = 7, fit = summarise(fn),
                             residuals = unname(residuals(fn)), fitted = unname(fitted(fn)),
                             predict = unname(predict(fn)), pearson_scaled = unname(residuals(fn, "pearson",
                                                                                              scaled = TRUE)),
                             update_without_days = summarise(update(fn, . ~ 1 + (1 | Subject))))
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           file.path(out_dir, "update_coef.json"))

# Estimated marginal means and their contrasts from R's emmeans, for tests/inference/test_emmeans.py.
# Usage (from the repository root):
#   Rscript tests/reference/make_emmeans_reference.R
# Writes tests/reference/machines.csv and oats.csv (nlme's Machines and Oats, factors as text) and
# tests/reference/emmeans.json. Models are fitted by lmerTest::lmer with a tight bobyqa tolerance, so the
# reference digits are those of the optimum; every query is run with lmer.df = "satterthwaite" and
# "kenward-roger" (emmeans' own default for an lmerMod is recorded in `lmer_df_default`).
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(emmeans); library(jsonlite)})
ref_dir <- "tests/reference"
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5, rhoend = 1e-12))

machines <- data.frame(Worker = as.character(nlme::Machines$Worker), Machine = as.character(nlme::Machines$Machine),
                       score = nlme::Machines$score)
oats <- data.frame(Block = as.character(nlme::Oats$Block), Variety = as.character(nlme::Oats$Variety),
                   nitro = nlme::Oats$nitro, yield = nlme::Oats$yield)
write.csv(machines, file.path(ref_dir, "machines.csv"), row.names = FALSE)
write.csv(oats, file.path(ref_dir, "oats.csv"), row.names = FALSE)

as_factors <- function(d, cols) { for (c in cols) d[[c]] <- factor(d[[c]]); d }
cake <- as_factors(read.csv("lmm_jax/datasets/cake.csv"), c("recipe", "replicate", "temperature"))
machines <- as_factors(read.csv(file.path(ref_dir, "machines.csv")), c("Worker", "Machine"))
oats <- as_factors(read.csv(file.path(ref_dir, "oats.csv")), c("Block", "Variety"))
# Pinheiro & Bates (2000, sec. 1.4)'s unbalanced Machines; cake without every 7th row (unequal cell counts)
machines_drop <- c(2, 3, 6, 8, 9, 12, 19, 20, 27, 33)
cake_drop <- seq(1, nrow(cake), by = 7)

models <- list(
  cake = list(data = "cake", drop = integer(0),
              formula = "angle ~ recipe * temperature + (1 | recipe:replicate)"),
  cake_unbalanced = list(data = "cake", drop = cake_drop,
                         formula = "angle ~ recipe * temperature + (1 | recipe:replicate)"),
  machines = list(data = "machines", drop = integer(0),
                  formula = "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
  machines_unbalanced = list(data = "machines", drop = machines_drop,
                             formula = "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
  oats = list(data = "oats", drop = integer(0), formula = "yield ~ Variety * nitro + (1 | Block/Variety)"),
  # temp is temperature as a number: aliased with the temperature factor, so lmer drops it; the grid puts
  # temp at its mean, so the means of single temperatures are not estimable, those averaged over all are
  cake_aliased = list(data = "cake", drop = integer(0),
                      formula = "angle ~ recipe * temperature + temp + (1 | recipe:replicate)"))
frames <- list(cake = cake, machines = machines, oats = oats)
fits <- lapply(models, function(m) {
  d <- frames[[m$data]]
  if (length(m$drop)) d <- d[-m$drop, ]
  lmerTest::lmer(as.formula(m$formula), d, REML = TRUE, control = ctrl)
})

# one query: the EMMs of `specs` (by `by`) and, optionally, a contrast of them
query <- function(model, specs, by = character(0), at = list(), weights = "equal", method = NULL, adjust = NULL) {
  list(model = model, specs = specs, by = by, at = at, weights = weights, method = method, adjust = adjust)
}
queries <- list(
  query("cake", "recipe"),
  query("cake", "recipe", method = "pairwise"),
  query("cake", "recipe", method = "pairwise", adjust = "holm"),
  query("cake", "recipe", method = "pairwise", adjust = "bonferroni"),
  query("cake", "recipe", method = "pairwise", adjust = "none"),
  query("cake", "recipe", method = "pairwise", adjust = "sidak"),
  query("cake", "recipe", method = "pairwise", adjust = "scheffe"),
  query("cake", "recipe", method = "revpairwise"),
  query("cake", "recipe", method = "trt.vs.ctrl"),
  query("cake", "recipe", method = "consec", adjust = "holm"),
  query("cake", "recipe", method = list("A - (B+C)/2" = c(1, -0.5, -0.5), "B - C" = c(0, 1, -1))),
  query("cake", "recipe", method = list("A - (B+C)/2" = c(1, -0.5, -0.5), "B - C" = c(0, 1, -1)),
        adjust = "bonferroni"),
  query("cake", "temperature", method = "pairwise"),
  query("cake", "temperature", by = "recipe"),
  query("cake", "temperature", by = "recipe", method = "pairwise"),
  query("cake", "temperature", by = "recipe", method = "trt.vs.ctrl"),
  query("cake", "temperature", by = "recipe", method = "consec", adjust = "holm"),
  query("cake", c("recipe", "temperature"), method = "pairwise"),
  query("cake_unbalanced", "recipe", method = "pairwise"),
  query("cake_unbalanced", "recipe", weights = "proportional", method = "pairwise"),
  query("cake_unbalanced", "recipe", weights = "outer"),
  query("cake_unbalanced", "recipe", weights = "cells"),
  query("cake_unbalanced", "recipe", weights = "flat"),
  query("cake_unbalanced", "temperature", weights = "proportional", method = "trt.vs.ctrl"),
  query("cake_unbalanced", "temperature", by = "recipe", method = "pairwise", adjust = "holm"),
  query("machines", "Machine", method = "pairwise"),
  query("machines_unbalanced", "Machine", method = "pairwise"),
  query("machines_unbalanced", "Machine", method = "trt.vs.ctrl"),
  query("oats", "Variety", method = "pairwise"),
  query("oats", "Variety", at = list(nitro = 0.6), method = "pairwise"),
  query("oats", "Variety", by = "nitro", at = list(nitro = c(0, 0.6)), method = "pairwise"),
  query("oats", "nitro", by = "Variety", at = list(nitro = c(0, 0.2, 0.4, 0.6)), method = "consec",
        adjust = "bonferroni"),
  query("cake_aliased", "recipe", method = "pairwise"),
  query("cake_aliased", "temperature", method = "pairwise", adjust = "holm"),
  query("cake", "temperature", method = "pairwise", adjust = "hochberg"),
  query("cake", "temperature", method = "pairwise", adjust = "BH"),
  query("cake", "temperature", method = "pairwise", adjust = "BY"))

columns <- function(s) {
  s <- as.data.frame(s)
  lapply(s, function(col) if (is.factor(col) || is.character(col)) as.character(col) else as.numeric(col))
}
run <- function(q, lmer_df) {
  f <- fits[[q$model]]
  args <- list(f, specs = q$specs, lmer.df = lmer_df)
  if (length(q$by)) args$by <- q$by
  if (length(q$at)) args$at <- q$at
  if (q$weights != "equal") args$weights <- q$weights
  e <- suppressMessages(do.call(emmeans, args))
  out <- list(emmeans = columns(summary(e)))
  if (!is.null(q$method)) {
    cargs <- list(e, method = q$method)
    if (!is.null(q$adjust)) cargs$adjust <- q$adjust
    con <- suppressMessages(do.call(contrast, cargs))
    sc <- summary(con)
    out$contrast <- columns(sc)
    out$adjust <- attr(sc, "adjust")
    if (is.null(out$adjust)) out$adjust <- sub("^P value adjustment: (\\S+) .*$", "\\1",
                                               grep("^P value adjustment", attr(sc, "mesg"), value = TRUE))
  }
  out
}
results <- lapply(queries, function(q) {
  q$satterthwaite <- run(q, "satterthwaite")
  q$kenward_roger <- run(q, "kenward-roger")
  q
})

e0 <- emmeans(fits$cake, ~ recipe)
p_raw <- c(0.01, 0.04, 0.04, 0.2, 0.003, 0.5, 0.03, 0.9)    # R's p.adjust, ties included
res <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  lmerTest = as.character(packageVersion("lmerTest")),
                  pbkrtest = as.character(packageVersion("pbkrtest")),
                  emmeans = as.character(packageVersion("emmeans"))),
  lmer_df_default = attr(e0@dffun, "mesg"),
  models = lapply(names(models), function(nm) c(models[[nm]], list(id = nm, beta = unname(fixef(fits[[nm]])),
                                                                     theta = unname(getME(fits[[nm]], "theta"))))),
  queries = results,
  p_adjust = c(list(p = p_raw), lapply(setNames(nm = c("holm", "hochberg", "bonferroni", "BH", "BY")),
                                       function(m) p.adjust(p_raw, m))))
names(res$models) <- names(models)
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = FALSE),
           file.path(ref_dir, "emmeans.json"))

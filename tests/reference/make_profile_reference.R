# Independent profile-likelihood checks for tests/inference/test_profile_boundary.py: profiles whose
# constrained optima sit on the boundary (a random-slope SD at 0, a correlation at +-1).
# Usage (from the repository root):
#   Rscript tests/reference/make_profile_reference.R tests/reference
# Writes orthodont.csv (nlme's Orthodont), slope_singular.csv (two simulated sets, a and b, each an ML fit
# whose correlation is estimated at +1) and profile_boundary.json.
#
# The profiles here do not use lme4's profile(): each point minimises the ML deviance (as lme4's profile,
# a REML fit refitted by ML) at the fixed parameter with optim's L-BFGS-B, whose box constraints include
# the boundary itself (an SD of exactly 0, a correlation of exactly -1 or 1), from several starts, and
# keeps the lowest deviance. The ML deviance at (theta, sigma) is lmerTest's devfun_vp (beta profiled
# out by lme4's devfun). Parametrisations:
#   sigma fixed:          free theta, theta_1 >= 0 and theta_3 >= 0 (the diagonal of Lambda);
#   an SD or cor fixed:   free (sd_1, cor, sd_2, sigma) with sd >= 0, -1 <= cor <= 1, sigma > 0, and
#                         theta = (sd_1, cor sd_2, sd_2 sqrt(1 - cor^2)) / sigma.
# zeta = sign(value - estimate) sqrt(deviance - deviance at the ML fit); each interval end is the root of
# zeta = -+ qnorm(0.975) (uniroot), with the slope d zeta / d value there (a test can turn its tolerance
# on zeta into one on the value). A correlation whose zeta stays inside +-qnorm(0.975) over [-1, 1] gets
# the boundary (-1 or 1) and the largest |zeta| found on that side.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(nlme); library(jsonlite)})
out_dir <- commandArgs(trailingOnly = TRUE)[1]
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
z <- qnorm(0.975)

data(Orthodont, package = "nlme")
orth <- data.frame(distance = Orthodont$distance, age = Orthodont$age,
                   Subject = as.character(Orthodont$Subject), Sex = as.character(Orthodont$Sex))
write.csv(orth, file.path(out_dir, "orthodont.csv"), row.names = FALSE)

# 8 groups of 5 whose random intercept and slope are one effect: lme4's ML fit has theta_3 = 0 (correlation
# +1); seed 30 in set "a", seed 29 in set "b" (where the slope SD's zero is within the cutoff)
simulate <- function(seed) {
  set.seed(seed)
  g <- factor(rep(sprintf("g%d", 1:8), each = 5)); x <- rep(0:4, 8)
  b0 <- rnorm(8)
  data.frame(y = 1 + 0.5 * x + b0[as.integer(g)] * (1 + 0.3 * x) + rnorm(40), x = x, g = as.character(g))
}
sing <- rbind(cbind(simulate(30), set = "a"), cbind(simulate(29), set = "b"))
write.csv(sing, file.path(out_dir, "slope_singular.csv"), row.names = FALSE)

independent <- function(formula, data, reml_fit) {
  fr <- lmer(formula, data, REML = reml_fit, control = ctrl)
  fm <- lmer(formula, data, REML = FALSE, control = ctrl)
  devfun <- lmer(formula, data, REML = FALSE, control = ctrl, devFunOnly = TRUE)
  dev <- function(theta, sigma) lmerTest:::devfun_vp(c(theta, sigma), devfun, reml = FALSE)
  th_hat <- unname(getME(fm, "theta")); s_hat <- sigma(fm)
  base <- dev(th_hat, s_hat)
  S <- VarCorr(fm)[[1]]
  v_hat <- c(sqrt(S[1, 1]), S[2, 1] / sqrt(S[1, 1] * S[2, 2]), sqrt(S[2, 2]), s_hat)
  names(v_hat) <- c(sprintf("sd_%s|%s", colnames(S)[1], names(fm@cnms)),
                    sprintf("cor_%s.%s|%s", colnames(S)[2], colnames(S)[1], names(fm@cnms)),
                    sprintf("sd_%s|%s", colnames(S)[2], names(fm@cnms)), "sigma")
  theta_of <- function(v) c(v[1], v[2] * v[3], v[3] * sqrt(max(1 - v[2]^2, 0))) / v[4]
  opt <- function(f, starts, lower, upper) {
    best <- Inf
    for (st in starts) {
      o <- optim(pmin(pmax(st, lower), upper), f, method = "L-BFGS-B", lower = lower, upper = upper,
                 control = list(factr = 10, pgtol = 0, maxit = 10000))
      best <- min(best, o$value)
    }
    best
  }
  # minimum ML deviance with parameter a (1..4 of v) fixed at value
  prof_dev <- function(a, value) {
    if (a == 4) {    # sigma: over theta, as lmerTest's devfun_vp takes it
      f <- function(th) dev(th, value)
      starts <- list(th_hat, th_hat * s_hat / value, c(th_hat[1:2], 0), c(th_hat[1], 0, th_hat[3]))
      return(opt(f, starts, c(0, -Inf, 0), c(Inf, Inf, Inf)))
    }
    f <- function(w) { v <- append(w, value, after = a - 1); dev(theta_of(v), v[4]) }
    lower <- c(0, -1, 0, 1e-3)[-a]; upper <- c(Inf, 1, Inf, Inf)[-a]
    w0 <- v_hat[-a]
    starts <- list(w0)
    for (b in seq_along(w0)) for (m in c(0, 0.5, 2)) { w <- w0; w[b] <- w[b] * m; starts[[length(starts) + 1]] <- w }
    if (a != 2) for (r in c(-0.99, 0, 0.99)) { w <- w0; w[2] <- r; starts[[length(starts) + 1]] <- w }
    opt(f, starts, lower, upper)
  }
  zeta <- function(a, value) sign(value - v_hat[a]) * sqrt(max(prof_dev(a, value) - base, 0))
  end <- function(a, side) {
    target <- side * z
    if (a == 2) {                             # correlation: search [-1, 1]
      edge <- side * 1
      if (abs(v_hat[2] - edge) < 1e-8) return(list(value = edge, zeta = 0, slope = NA, kind = "estimate"))
      grid <- v_hat[2] + (edge - v_hat[2]) * c(seq(0.05, 0.95, by = 0.05), 0.99, 0.999, 1)
      zs <- sapply(grid, function(r) zeta(a, r))
      k <- which(side * zs >= z)[1]
      if (is.na(k)) return(list(value = edge, zeta = zs[which.max(abs(zs))], slope = NA, kind = "boundary"))
      lo <- if (k == 1) v_hat[2] else grid[k - 1]
      interval <- sort(c(lo, grid[k]))
    } else {
      est <- v_hat[a]
      if (side < 0 && a != 4) {
        if (est == 0 || zeta(a, 0) > target) return(list(value = 0, zeta = zeta(a, 0), slope = NA, kind = "boundary"))
        interval <- c(0, est)
      } else if (side < 0) {
        lo <- est / 1.5
        while (zeta(a, lo) > target) lo <- lo / 1.5
        interval <- c(lo, est)
      } else {
        hi <- est * 1.5
        while (zeta(a, hi) < target) hi <- hi * 1.5
        interval <- c(est, hi)
      }
    }
    r <- uniroot(function(x) zeta(a, x) - target, interval, tol = 1e-11)$root
    h <- 1e-5 * max(abs(r), 1e-3)
    list(value = r, zeta = zeta(a, r), slope = (zeta(a, r + h) - zeta(a, r - h)) / (2 * h), kind = "root")
  }
  ends <- lapply(1:4, function(a) list(lower = end(a, -1), upper = end(a, 1)))
  names(ends) <- names(v_hat)
  ci <- suppressWarnings(suppressMessages(confint(fr, method = "profile", oldNames = FALSE)))
  list(formula = deparse(formula), reml_fit = reml_fit, theta_ml = th_hat, estimate = as.list(v_hat),
       deviance_ml = base, independent = ends,
       lme4_confint = list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2])),
       zeta_sd_zero = sapply(c(1, 3), function(a) zeta(a, 0)))
}

res <- list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                            lmerTest = as.character(packageVersion("lmerTest"))), level = 0.95)
res$orthodont <- independent(distance ~ age * Sex + (age | Subject), orth, TRUE)
# the issue's figures come from the REML criterion's profile of sigma (devfun_vp with reml = TRUE,
# which lme4's profile does not use): its upper root, for the record
devr <- lmer(distance ~ age * Sex + (age | Subject), orth, REML = TRUE, control = ctrl, devFunOnly = TRUE)
fr <- lmer(distance ~ age * Sex + (age | Subject), orth, REML = TRUE, control = ctrl)
base_r <- lmerTest:::devfun_vp(c(getME(fr, "theta"), sigma(fr)), devr, reml = TRUE)
zr <- function(s) {
  th <- getME(fr, "theta")
  o <- optim(c(th[1:2], 0.05), function(t) lmerTest:::devfun_vp(c(t, s), devr, reml = TRUE), method = "L-BFGS-B",
             lower = c(0, -Inf, 0), control = list(factr = 10, pgtol = 0))
  sqrt(max(o$value - base_r, 0))
}
res$orthodont$sigma_upper_reml_criterion <- uniroot(function(s) zr(s) - z, c(sigma(fr), 2), tol = 1e-11)$root
res$slope_singular_a <- independent(y ~ x + (x | g), sing[sing$set == "a", 1:3], FALSE)
res$slope_singular_b <- independent(y ~ x + (x | g), sing[sing$set == "b", 1:3], FALSE)
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           file.path(out_dir, "profile_boundary.json"))

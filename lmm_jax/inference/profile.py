r"""Profile-likelihood confidence intervals (lme4's ``confint(method = "profile")``).

As in lme4's ``profile.merMod``, REML fits are refitted by maximum likelihood
first and every profile is of the ML deviance. For a parameter psi (an SD, a
correlation, sigma, or a fixed effect) with the others re-optimised,

    zeta(psi) = sign(psi - psi_hat) sqrt(d(psi) - d(psi_hat)),

and the interval at ``level`` is where zeta = -+ z, z = Phi^{-1}((1 + level)/2).
lme4 tabulates zeta on a grid and interpolates a spline; here each end is a
root of zeta found directly (secant / regula falsi on a scale where zeta is
nearly linear: log for SDs and sigma, atanh for correlations), each step
solving all constrained problems of one kind at once with ``jax.vmap`` over a
single compiled Newton solve.

The constrained problems are reparametrised so that the constraint disappears:

* SD of column i of term t fixed at c: the free parameters are all of theta
  and ``sigma = c / |row i of Lambda_t|`` (the SD is sigma |Lambda_t[i, :]|);
  sigma fixed at c is the same with a row norm of 1.
* correlation (i, 0) of term t fixed at rho: ``Lambda_t[i, 0] =
  rho |Lambda_t[i, 1:]| / sqrt(1 - rho^2)``, sigma profiled out. A
  correlation (i, j), j > 0, is handled the same way in a permuted order of
  the term's columns, with theta_t recovered by a Cholesky factorisation.
* fixed effect j at c: the response becomes ``y - c x_j`` and column j of X
  is replaced by a neutral column (zero products, unit ``x_j'x_j``), so one
  compiled function profiles every fixed effect.

Boundaries: an SD whose deviance at 0 stays within the cutoff gets lower
limit 0 (Dyestuff2, Pastes); a correlation whose profile never reaches the
cutoff gets the limit -1 or 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from ..runtime.scope import entry_point
from ..core.likelihood import LOG_2PI, factorize, log_det_LZ2, pwrss
from ..core.linalg import batched_cholesky
from ..core.optimize import newton_minimize
from ..core.parametrization import phi_from_theta
from ..core.theta_layout import ThetaLayout
from ..core.types import DesignProducts, ResponseProducts, Structure
from ..build.crossprod import user_basis_products
from ..errors import InferenceError, SingularFitWarning

if TYPE_CHECKING:
    from ..results import LMMResult


@dataclass(frozen=True)
class ProfileParameter:
    """One profiled parameter, in lme4's naming.

    Attributes:
        name: ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``,
            ``sigma`` or a fixed-effect name.
        kind: ``"sd"``, ``"cor"``, ``"sigma"`` or ``"fixed"``.
        estimate: the ML estimate.
        index: row index (sd / sigma), (term, i, j) for a correlation, column (fixed).
    """

    name: str
    kind: str
    estimate: float
    index: tuple


def _ml_fit(result: "LMMResult") -> "LMMResult":
    """The ML fit that lme4 profiles: a REML fit is refitted by ML (its singular-fit
    warning was already given for the fit itself)."""
    if not result.reml:
        return result

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SingularFitWarning)
        return result.model.fit(reml=False)


def parameters(fit: "LMMResult") -> list[ProfileParameter]:
    """lme4's profile parameters of an (ML) fit, in its order, named by
    :attr:`~lmm_jax.core.theta_layout.ThetaLayout.parameter_names`."""
    lay = fit.design.theta_layout
    out = []
    for name, (t, i, j), row in zip(lay.names, lay.entries, lay.stacked_row):
        S = fit.covariances[t]
        sd_i, sd_j = np.sqrt(S[i, i]), np.sqrt(S[j, j])
        if i == j:
            out.append(ProfileParameter(name, "sd", float(sd_i), (int(row),)))
        else:
            cor = S[i, j] / (sd_i * sd_j) if sd_i * sd_j > 0 else np.nan
            out.append(ProfileParameter(name, "cor", float(cor), (t, i, j)))
    out.append(ProfileParameter("sigma", "sigma", float(fit.sigma), (sum(lay.ks),)))
    for j, name in enumerate(fit.design.fixef_names):
        out.append(ProfileParameter(name, "fixed", float(fit.beta[j]), (j,)))
    return out


def _row_layout(ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For every row of every Lambda_t (then one pseudo-row for sigma): the
    positions of its entries in theta and a mask of valid positions."""
    lay = ThetaLayout.of(ks)
    kmax = max(ks)
    idx, mask = [], []
    for row in range(sum(ks)):
        pos = np.flatnonzero(lay.stacked_row == row).tolist()
        idx.append(pos + [0] * (kmax - len(pos)))
        mask.append([True] * len(pos) + [False] * (kmax - len(pos)))
    idx.append([0] * kmax)
    mask.append([False] * kmax)
    return np.asarray(idx, dtype=np.int32), np.asarray(mask)


SD, ZERO, COR, FIXED = 0, 1, 2, 3
NEWTON_TOL = 1e-10      # Newton decrement (deviance units) of the constrained fits: zeta to ~1e-10
RHO_MAX = 1.0 - 1e-10   # a correlation of exactly +-1 is evaluated just inside the boundary


class Constraint(NamedTuple):
    """One constrained problem (arrays; a batch stacks them on a leading axis).

    Attributes:
        kind: SD (an SD row or sigma fixed at c), ZERO (theta entries where
            ``keep`` is 0 held at 0), COR (a correlation fixed at c) or FIXED
            (beta_j fixed at c).
        c: the fixed value.
        row: SD row (rows of all Lambda_t, then sigma).
        keep: (n_theta,) 1/0 mask (ZERO).
        target, rest: COR: theta position set from the norm of the ``rest`` positions.
        perm: COR for terms with k > 2: one (k, k) permutation per such term
            (identity where unused).
        j: FIXED column (p for none).
    """

    kind: jnp.ndarray
    c: jnp.ndarray
    row: jnp.ndarray
    keep: jnp.ndarray
    target: jnp.ndarray
    rest: jnp.ndarray
    perm: tuple
    j: jnp.ndarray


def _fix_fixed_effect(con: Constraint, dp: DesignProducts, rp: ResponseProducts, s: Structure, is_fixed):
    """Fixed effect j held at c: move c x_j to the response and neutralise column j."""
    dtype = dp.XtX.dtype
    e = jnp.arange(s.p) == con.j
    keepx = (~e).astype(dtype)
    cf = jnp.where(is_fixed, con.c, 0.0)
    jj = jnp.minimum(con.j, s.p - 1)
    xj_X = dp.XtX[:, jj] * is_fixed
    dpj = dp._replace(Z1X=dp.Z1X * keepx, ZrX=dp.ZrX * keepx,
                      XtX=dp.XtX * keepx[:, None] * keepx[None, :] + jnp.diag(e.astype(dtype)))
    rpj = ResponseProducts(Z1y=rp.Z1y - cf * dp.Z1X[..., jj], Zry=rp.Zry - cf * dp.ZrX[:, jj],
                           Xy=(rp.Xy - cf * xj_X) * keepx, yy=rp.yy - 2 * cf * rp.Xy[jj] + cf ** 2 * xj_X[jj],
                           shift=rp.shift)
    return dpj, rpj


def constrained_deviance(theta: jnp.ndarray, con: Constraint, row_idx: jnp.ndarray, row_mask: jnp.ndarray,
                         dp: DesignProducts, rp: ResponseProducts, s: Structure) -> jnp.ndarray:
    """ML deviance of the free parameters theta under one constraint (module docstring)."""
    dtype = theta.dtype
    is_cor, is_sd, is_fixed = con.kind == COR, con.kind == SD, con.kind == FIXED
    th = theta * con.keep
    # correlation: set the target entry of the (permuted) term block from its row's other entries
    rho = jnp.where(is_cor, con.c, 0.0)
    other = jnp.sqrt(jnp.maximum(jnp.sum(jnp.where(con.rest, th, 0.0) ** 2), 1e-300))
    th = jnp.where(is_cor, th.at[con.target].set(rho * other / jnp.sqrt(1.0 - rho ** 2)), th)
    lay = ThetaLayout.of(s.ks)
    big = 0
    for t, k in enumerate(s.ks):
        if k > 2:
            sl, (r, c) = lay.slices[t], lay.tri(t)
            Pm = con.perm[big]
            Lp = jnp.zeros((k, k), dtype).at[r, c].set(th[sl])
            used = is_cor & jnp.any(Pm != jnp.eye(k, dtype=dtype))
            Sig = Pm.T @ Lp @ Lp.T @ Pm
            Lo = batched_cholesky(jnp.where(used, Sig, jnp.eye(k, dtype=dtype)))
            th = th.at[sl].set(jnp.where(used, Lo[r, c], th[sl]))
            big += 1
    dpj, rpj = _fix_fixed_effect(con, dp, rp, s, is_fixed) if s.p else (dp, rp)  # p = 0: y ~ 0 + (1 | g)
    F = factorize(th, dpj, rpj, s)
    ldz, rss = log_det_LZ2(F), pwrss(F)
    # SD / sigma fixed: sigma = c / |row of Lambda_t| (norm 1 for the sigma pseudo-row)
    vals = jnp.where(row_mask[con.row], th[row_idx[con.row]], 0.0)
    # (every branch stays finite, also where it is not selected: jnp.where passes 0 * its gradient)
    norm = jnp.where(is_sd & jnp.any(row_mask[con.row]), jnp.sqrt(jnp.maximum(jnp.sum(vals ** 2), 1e-300)), 1.0)
    sigma2 = (jnp.where(is_sd, con.c, 1.0) / norm) ** 2
    n = dp.nobs
    dev_sigma = ldz + rss / sigma2 + n * (LOG_2PI + jnp.log(sigma2))
    dev_profiled = ldz + n * (1.0 + LOG_2PI + jnp.log(rss / n))
    return jnp.where(is_sd, dev_sigma, dev_profiled) - dp.log_weights    # prior weights: lme4's -sum(log w)


@partial(jax.jit, static_argnames=("s",))
def solve_constrained(cons: Constraint, row_idx, row_mask, phi0, active0, dp: DesignProducts,
                      rp: ResponseProducts, s: Structure):
    """Minimum ML deviance of a batch of constrained problems: one compiled
    Newton solve (:func:`lmm_jax.core.optimize.newton_minimize`) vmapped over the
    batch (``cons`` and the starting points ``phi0`` carry the batch axis).

    Returns:
        (deviance, theta of the free parameters, converged), each batched.
    """
    def one(con, phi0):
        res = newton_minimize(lambda th: constrained_deviance(th, con, row_idx, row_mask, dp, rp, s), phi0,
                              active0, s.ks, max_iter=200, tol=NEWTON_TOL)
        return res.objective, res.theta, res.converged
    return jax.vmap(one)(cons, phi0)


class _Profiler:
    """Evaluates zeta for batches of (parameter, value) pairs of one ML fit,
    padded to a fixed batch size so one compilation serves every call."""

    def __init__(self, fit: "LMMResult", batch: int):
        m = fit.model
        self.fit = fit
        # a fixed effect is profiled by moving its column into the response: the user's basis
        self.dp, self.rp = user_basis_products(m.products, m.response)
        self.s = m.structure
        self.layout = fit.design.theta_layout
        phi, active = phi_from_theta(np.asarray(fit.theta), self.s.ks)
        # start every constrained problem in the interior, next to the optimum
        self.phi0 = jnp.asarray(np.where(active, phi, np.log(1e-2)))
        self.active0 = jnp.ones(len(phi), dtype=bool)
        self.base = float(fit.objective)
        self.row_idx, self.row_mask = (jnp.asarray(a) for a in _row_layout(self.s.ks))
        self.batch = batch
        self.evaluations = 0
        self.not_converged = 0

    def _constraint(self, p: ProfileParameter, value: float) -> dict:
        s = self.s
        nt = len(self.fit.theta)
        d = dict(kind=SD, c=float(value), row=0, keep=np.ones(nt), target=0, rest=np.zeros(nt, bool),
                 perm=[np.eye(k) for k in s.ks if k > 2], j=s.p)
        d["phi0"] = np.asarray(self.phi0)
        if p.kind in ("sd", "sigma"):
            d["row"] = p.index[0]
            if p.kind == "sd" and value > 0 and p.estimate > 0:
                # start with the row scaled by c / estimate, so that sigma starts at its estimate
                pos = np.asarray(self.row_idx[p.index[0]])[np.asarray(self.row_mask[p.index[0]])]
                diag = self.layout.diagonal
                phi0 = d["phi0"].copy()
                ratio = value / p.estimate
                phi0[pos] = np.where(diag[pos], phi0[pos] + np.log(ratio), phi0[pos] * ratio)
                d["phi0"] = phi0
            if value <= 0:
                pos = np.asarray(self.row_idx[p.index[0]])[np.asarray(self.row_mask[p.index[0]])]
                d["kind"], d["c"] = ZERO, 0.0
                d["keep"][pos] = 0.0
        elif p.kind == "cor":
            t, i, j = p.index
            k = s.ks[t]
            perm = [j] + [a for a in range(k) if a != j]
            pi = perm.index(i)
            r, c = self.layout.tri(t)
            d["kind"] = COR
            d["c"] = float(np.clip(value, -RHO_MAX, RHO_MAX))
            d["target"] = self.layout.position(t, pi, 0)
            d["rest"][self.layout.slices[t]] = (r == pi) & (c > 0)
            if k > 2:
                d["perm"][sum(1 for kk in s.ks[:t] if kk > 2)] = np.eye(k)[perm]
        else:
            d["kind"], d["j"] = FIXED, p.index[0]
        return d

    def deviance(self, items: list[tuple[ProfileParameter, float]]) -> np.ndarray:
        """ML deviance minimised under each (parameter, value) constraint."""
        out = []
        for lo in range(0, len(items), self.batch):
            chunk = items[lo:lo + self.batch]
            ds = [self._constraint(p, v) for p, v in chunk]
            ds += [ds[-1]] * (self.batch - len(ds))
            cons = Constraint(kind=jnp.asarray([d["kind"] for d in ds], dtype=jnp.int32),
                              c=jnp.asarray([d["c"] for d in ds]), row=jnp.asarray([d["row"] for d in ds],
                                                                                   dtype=jnp.int32),
                              keep=jnp.asarray(np.stack([d["keep"] for d in ds])),
                              target=jnp.asarray([d["target"] for d in ds], dtype=jnp.int32),
                              rest=jnp.asarray(np.stack([d["rest"] for d in ds])),
                              perm=tuple(jnp.asarray(np.stack([d["perm"][b] for d in ds]))
                                         for b in range(len(ds[0]["perm"]))),
                              j=jnp.asarray([d["j"] for d in ds], dtype=jnp.int32))
            phi0 = jnp.asarray(np.stack([d["phi0"] for d in ds]))
            dev, _, conv = solve_constrained(cons, self.row_idx, self.row_mask, phi0, self.active0,
                                             self.dp, self.rp, self.s)
            self.not_converged += int(np.sum(~np.asarray(conv)[:len(chunk)]))
            out.append(np.asarray(dev)[:len(chunk)])
        self.evaluations += len(items)
        return np.concatenate(out) if out else np.zeros(0)

    def zeta(self, items: list[tuple[ProfileParameter, float]]) -> np.ndarray:
        dev = self.deviance(items)
        sign = np.sign([v - p.estimate for p, v in items])
        return sign * np.sqrt(np.maximum(dev - self.base, 0.0))


def _to_u(p: ProfileParameter, v):
    if p.kind in ("sd", "sigma"):
        return np.log(v)
    if p.kind == "cor":
        return np.arctanh(v)
    return np.asarray(v, dtype=float)


def _from_u(p: ProfileParameter, u):
    if p.kind in ("sd", "sigma"):
        return np.exp(u)
    if p.kind == "cor":
        return np.tanh(u)
    return np.asarray(u, dtype=float)


U_MAX_COR = float(np.arctanh(1 - 1e-10))
U_MIN_SD = 25.0        # an SD below exp(-25) times its estimate is treated as 0


class _End:
    """Root search for one end of one interval: zeta(u) = side * z on the
    search scale u (secant / extrapolation until bracketed, then secant
    inside the bracket with bisection every third step)."""

    def __init__(self, p: ProfileParameter, side: int, z: float, step: float, sigma: float, tol: float):
        self.p, self.side, self.target, self.tol = p, side, side * z, tol
        self.done, self.value = False, np.nan
        self.pts: list[tuple[float, float]] = []
        self.zero_pending = False
        self.steps_in_bracket = 0
        if p.kind == "sd" and p.estimate <= 0:          # estimated at the boundary
            self.u_hat = float(np.log(max(sigma, 1e-12) * 1e-3))
            if side < 0:
                self.done, self.value = True, 0.0
            self.next_u = self.u_hat + 2.0
        else:
            self.u_hat = float(_to_u(p, p.estimate))
            self.pts.append((self.u_hat, 0.0))
            self.next_u = self.u_hat + side * step

    def proposal(self) -> float:
        return 0.0 if self.zero_pending else float(_from_u(self.p, self.next_u))

    def update(self, zeta: float) -> None:
        if self.zero_pending:                    # the SD at exactly 0
            self.zero_pending = False
            if zeta > self.target:
                self.done, self.value = True, 0.0
            else:
                self.next_u = self.u_hat - U_MIN_SD
            return
        u = self.next_u
        self.pts.append((u, zeta))
        if abs(zeta - self.target) < self.tol:
            self.done, self.value = True, float(_from_u(self.p, u))
            return
        side, target = self.side, self.target
        arr = np.array(self.pts)
        before = arr[side * (arr[:, 1] - target) < 0]
        past = arr[side * (arr[:, 1] - target) > 0]
        if len(past) and len(before):
            a = before[np.argmax(side * before[:, 0])]
            b = past[np.argmin(side * past[:, 0])]
            self.steps_in_bracket += 1
            cand = a[0] + (target - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            lo, hi = min(a[0], b[0]), max(a[0], b[0])
            if not lo < cand < hi or self.steps_in_bracket % 3 == 0:
                cand = 0.5 * (a[0] + b[0])
        elif len(before) >= 2:
            order = np.argsort(side * before[:, 0])
            a, b = before[order[-2]], before[order[-1]]
            width = max(abs(b[0] - self.u_hat), 0.1)
            slope = (b[1] - a[1]) / (b[0] - a[0]) if b[0] != a[0] else 0.0
            if side * slope > 0 and np.isfinite(slope):
                cand = b[0] + float(np.clip((target - b[1]) / slope, -4 * width, 4 * width))
            else:
                cand = b[0] + side * 2 * width
        else:
            cand = u + side * 1.0
        if self.p.kind == "cor" and abs(cand) > U_MAX_COR:
            if abs(u) >= U_MAX_COR - 1e-9:
                self.done, self.value = True, float(np.sign(cand))
                return
            cand = float(np.sign(cand)) * U_MAX_COR
        if self.p.kind == "sd" and side < 0 and cand < self.u_hat - U_MIN_SD:
            if len(past) == 0:
                self.zero_pending = True
            cand = max(cand, self.u_hat - U_MIN_SD)
        self.next_u = cand


def _first_step(fit: "LMMResult", p: ProfileParameter, z: float) -> float:
    """Wald-type first probe on the search scale."""
    if p.kind == "fixed":
        se = float(fit.std_errors.iloc[p.index[0]])
        return z * se if np.isfinite(se) and se > 0 else 1.0
    return z * (0.15 if p.kind == "cor" else 0.1)


@entry_point
def profile_confint(result: "LMMResult", level: float = 0.95, which: list[str] | None = None,
                    tol: float = 1e-7, max_iter: int = 60) -> pd.DataFrame:
    """lme4's profile confidence intervals, each end solved to |zeta -+ z| < tol.

    Args:
        result: a fit (REML fits are refitted by ML first, as lme4 does).
        level: confidence level.
        which: parameter names to profile (default all, in lme4's order).
        tol: tolerance on zeta at each end.
        max_iter: root-search steps per end.

    Returns:
        DataFrame indexed by lme4's names with columns ``lower, upper``;
        ``attrs`` holds the level, the number of constrained fits solved and
        how many stopped short of the strict Newton-decrement criterion
        (``not_converged``; in flat directions the objective is still accurate
        to ~1e-9, which is what zeta needs).
    """

    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level}")
    fit = _ml_fit(result)
    params = parameters(fit)
    if which is not None:
        names = [p.name for p in params]
        unknown = [w for w in which if w not in names]
        if unknown:
            raise InferenceError(f"cannot profile {unknown}: parameters are {names}")
        params = [p for p in params if p.name in which]
    prof = _Profiler(fit, batch=2 * len(parameters(fit)))   # fixed batch: one compilation per model
    params = [p for p in params if np.isfinite(p.estimate)]
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    ends = [_End(p, side, z, _first_step(fit, p, z), fit.sigma, tol) for p in params for side in (-1, 1)]
    for _ in range(max_iter):
        todo = [e for e in ends if not e.done]
        if not todo:
            break
        zetas = prof.zeta([(e.p, e.proposal()) for e in todo])
        for e, zt in zip(todo, zetas):
            e.update(float(zt))
    values = {(e.p.name, e.side): e.value for e in ends}
    names = [p.name for p in parameters(fit)] if which is None else [p.name for p in params]
    out = pd.DataFrame([(values.get((n, -1), np.nan), values.get((n, 1), np.nan)) for n in names],
                       index=names, columns=["lower", "upper"])
    out.attrs.update(level=level, method="profile", evaluations=prof.evaluations,
                     not_converged=prof.not_converged, refitted_ml=bool(result.reml))
    return out


@entry_point
def profile_zeta(result: "LMMResult", name: str, values: np.ndarray) -> pd.DataFrame:
    """zeta (lme4's ``as.data.frame(profile(fit))$.zeta``) and the ML deviance
    of one parameter at the given values, solved as one vmapped batch."""

    fit = _ml_fit(result)
    params = {p.name: p for p in parameters(fit)}
    if name not in params:
        raise InferenceError(f"cannot profile {name!r}: parameters are {list(params)}")
    values = np.atleast_1d(np.asarray(values, dtype=float))
    prof = _Profiler(fit, batch=2 * len(params))      # the batch of profile_confint: one compilation
    items = [(params[name], float(v)) for v in values]
    dev = prof.deviance(items)
    zeta = np.sign(values - params[name].estimate) * np.sqrt(np.maximum(dev - prof.base, 0.0))
    return pd.DataFrame({"value": values, "zeta": zeta, "deviance": dev})

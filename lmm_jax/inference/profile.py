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

Boundaries. Each constrained fit runs the optimiser's boundary rule, so its
optimum may have diagonal entries of Lambda at exactly 0 (Orthodont's sigma
at its upper limit 1.5884 has the age SD at 0). An SD whose deviance at 0
stays within the cutoff gets lower limit 0 (Dyestuff2, Pastes). A
correlation's profile is capped by the deviance with either of its two SDs
at 0 (where every correlation gives the same fit): if that is within the
cutoff, its limits are -1 and 1 (Orthodont: the age SD at 0 has zeta =
-0.913); a correlation estimated at -1 or 1 has that limit on its side and
is searched on the correlation scale on the other; one whose term has an
SD estimated at 0 is not identified and gets -1 and 1.

Each search follows one branch of constrained optima outward from the
estimate: a point starts from the solution at the nearest point tried
between it and the estimate (lme4 continues its profile likewise). The
work is bounded (``max_iter`` steps per end, each constrained fit at most
:data:`NEWTON_MAX_ITER` Newton steps), and every end is a number; how it
was found is in the table's ``attrs["status"]`` and ``attrs["notes"]``
(:func:`profile_confint`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..distributions import norm_ppf
from ..runtime.kernel import kernel, serializable
from ..runtime.scope import entry_point
from ..core.likelihood import LOG_2PI, factorize, log_det_LZ2, pwrss
from ..core.linalg import batched_cholesky
from ..core.optimize import newton_minimize
from ..core.parametrization import phi_from_theta
from ..core.theta_layout import ThetaLayout
from ..core.types import DesignProducts, ResponseProducts, Structure, one_off_options, quick_batch
from ..build.crossprod import user_basis_products
from ..errors import ConvergenceWarning, InferenceError, SingularFitWarning, check_bool, check_count

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
            cor = float(np.clip(S[i, j] / (sd_i * sd_j), -1.0, 1.0)) if sd_i * sd_j > 0 else np.nan
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
NEWTON_MAX_ITER = 200   # Newton steps per constrained fit
RHO_MAX = 1.0 - 1e-10   # a correlation of exactly +-1 is evaluated just inside the boundary


@serializable
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


# Calls of its batch that a profile makes, about (sleepstudy's six parameters: 79 constrained solves in 7 calls
# of 12): the count :func:`~lmm_jax.core.types.quick_batch` weighs for the choice of quick code.
PROFILE_CALLS = 10


@kernel(static_argnames=("s", "quick_code"), cpu_options=one_off_options)
def solve_constrained(cons: Constraint, row_idx, row_mask, phi0, active0, dp: DesignProducts,
                      rp: ResponseProducts, s: Structure, quick_code: bool = False):
    """Minimum ML deviance of a batch of constrained problems: one compiled
    Newton solve (:func:`lmm_jax.core.optimize.newton_minimize`, with its
    boundary rule: a diagonal entry of Lambda reaches exactly 0) vmapped over
    the batch (``cons``, the starting points ``phi0`` and their active masks
    ``active0`` carry the batch axis), each at most :data:`NEWTON_MAX_ITER` steps.
    ``quick_code``: compile quick code (:func:`~lmm_jax.core.types.one_off_options`).

    Returns:
        (deviance, phi and active mask of the free parameters, converged), each batched.
    """
    def one(con, phi0, active0):
        res = newton_minimize(lambda th: constrained_deviance(th, con, row_idx, row_mask, dp, rp, s), phi0,
                              active0, s.ks, max_iter=NEWTON_MAX_ITER, tol=NEWTON_TOL)
        return res.objective, res.phi, res.active, res.converged
    return jax.vmap(one)(cons, phi0, active0)


class Start(NamedTuple):
    """Where a constrained solve starts: free parameters phi, their active
    mask, and the parameter's value they solved (or its estimate)."""

    phi: np.ndarray
    active: np.ndarray
    value: float


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
        self.phi0 = np.where(active, phi, np.log(1e-2))
        self.active0 = np.ones(len(phi), dtype=bool)
        self.base = float(fit.objective)
        # host arrays throughout (the kernel takes numpy): indexing device arrays here compiled a
        # one-op program per operation, a tenth of a sleepstudy profile's time
        self.row_idx, self.row_mask = _row_layout(self.s.ks)
        self.batch = batch
        # quick code unless the profile's calls are large (a profile makes about PROFILE_CALLS of its batch)
        self.quick_code = quick_batch(PROFILE_CALLS * batch, self.s)
        self.evaluations = 0
        self.not_converged = 0
        self.caps: dict[str, tuple[float, str]] = {}

    def _constraint(self, p: ProfileParameter, value: float, start: Start | None = None) -> dict:
        """The arrays of one constrained problem and its start: ``start`` (the
        solution at a neighbouring value of the same parameter), else the ML fit."""
        s = self.s
        nt = len(self.fit.theta)
        d = dict(kind=SD, c=float(value), row=0, keep=np.ones(nt), target=0, rest=np.zeros(nt, bool),
                 perm=[np.eye(k) for k in s.ks if k > 2], j=s.p)
        if start is None or (p.kind == "sd" and value <= 0):
            start = Start(self.phi0, self.active0, p.estimate)
        d["phi0"], d["active0"] = np.asarray(start.phi), np.asarray(start.active)
        if p.kind in ("sd", "sigma"):
            d["row"] = p.index[0]
            if p.kind == "sd" and value > 0 and start.value > 0:
                # start with the row scaled by c / (the start's value), so that sigma starts where it was
                pos = self.row_idx[p.index[0]][self.row_mask[p.index[0]]]
                diag = self.layout.diagonal
                phi0 = d["phi0"].copy()
                ratio = value / start.value
                phi0[pos] = np.where(diag[pos], phi0[pos] + np.log(ratio), phi0[pos] * ratio)
                d["phi0"] = phi0
            if value <= 0:
                pos = self.row_idx[p.index[0]][self.row_mask[p.index[0]]]
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

    def _solve(self, items: list[tuple[ProfileParameter, float]],
               starts: list[Start | None] | None = None) -> tuple[np.ndarray, list[Start]]:
        """ML deviance minimised under each (parameter, value) constraint, as
        solved from ``starts`` (None: from the ML fit), and the solutions."""
        starts = [None] * len(items) if starts is None else starts
        out, sols = [], []
        for lo in range(0, len(items), self.batch):
            chunk = items[lo:lo + self.batch]
            ds = [self._constraint(p, v, st) for (p, v), st in zip(chunk, starts[lo:lo + self.batch])]
            ds += [ds[-1]] * (self.batch - len(ds))
            cons = Constraint(kind=np.asarray([d["kind"] for d in ds], dtype=np.int32),
                              c=np.asarray([d["c"] for d in ds], dtype=np.float64),
                              row=np.asarray([d["row"] for d in ds], dtype=np.int32),
                              keep=np.stack([d["keep"] for d in ds]).astype(np.float64),
                              target=np.asarray([d["target"] for d in ds], dtype=np.int32),
                              rest=np.stack([d["rest"] for d in ds]),
                              perm=tuple(np.stack([d["perm"][b] for d in ds]).astype(np.float64)
                                         for b in range(len(ds[0]["perm"]))),
                              j=np.asarray([d["j"] for d in ds], dtype=np.int32))
            phi0 = np.stack([d["phi0"] for d in ds]).astype(np.float64)
            active0 = np.stack([d["active0"] for d in ds])
            dev, phi, active, conv = solve_constrained(cons, self.row_idx, self.row_mask, phi0, active0,
                                                       self.dp, self.rp, self.s, self.quick_code)
            self.not_converged += int(np.sum(~np.asarray(conv)[:len(chunk)]))
            out.append(np.asarray(dev)[:len(chunk)])
            phi, active = np.asarray(phi), np.asarray(active)
            sols += [Start(phi[b], active[b], v) for b, (_, v) in enumerate(chunk)]
        self.evaluations += len(items)
        return (np.concatenate(out) if out else np.zeros(0)), sols

    def correlation_caps(self, params: list[ProfileParameter]) -> None:
        """For each correlation (i, j) of a term: the least ML deviance with the
        SD of column i or of column j at 0 (row i or j of Lambda_t zero), and
        that SD's name, in ``self.caps``.

        A correlation fixed at rho is still free to have either SD tend to 0,
        where the deviance tends to that of the zero-SD problem whatever rho
        is: the profile of rho is the least of its interior optimum and this
        cap, and never rises above the cap. The interior problem cannot see
        it (its optimum is separated from the boundary by a ridge: Orthodont's
        ``cor_age.(Intercept)|Subject`` at -0.914 has an interior optimum at
        zeta = -1.96 and the boundary at zeta = -0.913).
        """
        need = [p for p in params if p.kind == "cor" and p.name not in self.caps]
        if not need:
            return
        lay = self.layout
        first = np.cumsum((0,) + lay.ks)[:-1]
        sd_name = {int(first[t] + i): name for name, (t, i, j) in zip(lay.names, lay.entries) if i == j}
        rows = sorted({int(first[p.index[0]] + a) for p in need for a in p.index[1:]})
        dev, _ = self._solve([(ProfileParameter(sd_name[r], "sd", 1.0, (r,)), 0.0) for r in rows])
        at = dict(zip(rows, dev))
        for p in need:
            t, i, j = p.index
            r = min((int(first[t] + i), int(first[t] + j)), key=lambda row: at[row])
            self.caps[p.name] = (float(at[r]), sd_name[r])

    def deviance(self, items: list[tuple[ProfileParameter, float]],
                 starts: list[Start | None] | None = None) -> tuple[np.ndarray, list[Start]]:
        """The profile's ML deviance at each (parameter, value): the constrained
        minimum (from ``starts``), for a correlation capped by
        :meth:`correlation_caps`; and the constrained solutions."""
        self.correlation_caps([p for p, _ in items])
        dev, sols = self._solve(items, starts)
        for n, (p, _) in enumerate(items):
            if p.kind == "cor":
                dev[n] = min(dev[n], self.caps[p.name][0])
        return dev, sols

    def zeta(self, items: list[tuple[ProfileParameter, float]],
             starts: list[Start | None] | None = None) -> tuple[np.ndarray, list[Start]]:
        dev, sols = self.deviance(items, starts)
        sign = np.array([np.sign(v - p.estimate) if np.isfinite(p.estimate) else 0.0 for p, v in items])
        return sign * np.sqrt(np.maximum(dev - self.base, 0.0)), sols


U_MAX_COR = float(np.arctanh(RHO_MAX))
U_MIN_SD = 25.0        # an SD below exp(-25) times its estimate is treated as 0

# How an end was found (``attrs["status"]`` of :func:`profile_confint`'s table)
ROOT = "root"           # zeta = -+z to within tol
ESTIMATE = "estimate"   # the estimate is on the boundary of the parameter's range, on this side
BOUNDARY = "boundary"   # the profile stays within the cutoff up to the boundary (SD 0, correlation -+1)
BUDGET = "budget"       # not found within the root-search budget (see the note)


class _End:
    """Root search for one end of one interval: zeta(u) = side * z on the
    search scale u (secant / extrapolation until bracketed, then secant
    inside the bracket with bisection every third step).

    Scales: log for SDs and sigma, atanh for correlations, the correlation
    itself for one estimated at -1 or 1 (whose atanh is infinite), the value
    for fixed effects."""

    def __init__(self, p: ProfileParameter, side: int, z: float, step: float, sigma: float, tol: float):
        self.p, self.side, self.target, self.tol = p, side, side * z, tol
        self.done, self.value, self.status, self.note = False, np.nan, "", ""
        self.pts: list[tuple[float, float]] = []
        self.sols: list[tuple[float, Start]] = []       # (u, constrained solution) of the points tried
        self.zero_pending = False
        self.steps_in_bracket = 0
        self.scale = {"sd": "log", "sigma": "log", "cor": "atanh", "fixed": "linear"}[p.kind]
        self.u_max = U_MAX_COR
        if p.kind == "cor" and not np.isfinite(p.estimate):     # an SD of the term estimated at 0
            self.finish(float(side), BOUNDARY, "an SD of its term is estimated at 0: the correlation is "
                                               "not identified")
            return
        if p.kind == "cor" and abs(p.estimate) >= RHO_MAX:     # estimated at -1 or 1
            self.scale, self.u_max = "rho", RHO_MAX
            edge = float(np.sign(p.estimate))
            if side == edge:
                self.finish(edge, ESTIMATE, f"estimated at {edge:+g}")
            self.u_hat = edge
            self.pts.append((self.u_hat, 0.0))
            self.next_u = self.u_hat + side * step
        elif p.kind == "sd" and p.estimate <= 0:          # estimated at the boundary
            self.u_hat = float(np.log(max(sigma, 1e-12) * 1e-3))
            if side < 0:
                self.finish(0.0, ESTIMATE, "estimated at 0")
            self.next_u = self.u_hat + 2.0
        else:
            self.u_hat = float(self.to_u(p.estimate))
            self.pts.append((self.u_hat, 0.0))
            self.next_u = self.u_hat + side * step

    def to_u(self, v):
        return {"log": np.log, "atanh": np.arctanh}.get(self.scale, lambda x: np.asarray(x, dtype=float))(v)

    def from_u(self, u):
        return {"log": np.exp, "atanh": np.tanh}.get(self.scale, lambda x: np.asarray(x, dtype=float))(u)

    def finish(self, value: float, status: str, note: str = "") -> None:
        self.done, self.value, self.status, self.note = True, float(value), status, note

    def proposal(self) -> float:
        return 0.0 if self.zero_pending else float(self.from_u(self.next_u))

    def start(self) -> Start | None:
        """The solution at the point tried nearest to the next one on the
        estimate's side of it (None: there is none, start from the fit): the
        search follows one branch of constrained optima outward from the
        estimate, as lme4's profile does, instead of jumping between local
        optima (a start past the next point may sit on another branch)."""
        inner = [(u, sol) for u, sol in self.sols if self.side * (self.next_u - u) > 0]
        if self.zero_pending or not inner:
            return None
        return max(inner, key=lambda us: self.side * us[0])[1]

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """The points tried so far, short of the target and past it."""
        arr = np.array(self.pts).reshape(-1, 2)
        gap = self.side * (arr[:, 1] - self.target)
        return arr[gap < 0], arr[gap > 0]

    def _bracket(self, before: np.ndarray, past: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """The innermost bracket (a short of the target, b past it) and the secant root inside it."""
        side, target = self.side, self.target
        a = before[np.argmax(side * before[:, 0])]
        b = past[np.argmin(side * past[:, 0])]
        return a, b, float(a[0] + (target - a[1]) * (b[0] - a[0]) / (b[1] - a[1]))

    def update(self, zeta: float, sol: Start) -> None:
        if self.zero_pending:                    # the SD at exactly 0
            self.zero_pending = False
            if zeta > self.target:
                self.finish(0.0, BOUNDARY, f"the profile at 0 is within the cutoff (zeta = {zeta:.4g})")
            else:
                self.next_u = self.u_hat - U_MIN_SD
            return
        u = self.next_u
        self.pts.append((u, zeta))
        self.sols.append((u, sol))
        if abs(zeta - self.target) < self.tol:
            self.finish(float(self.from_u(u)), ROOT)
            return
        side, target = self.side, self.target
        before, past = self._split()
        if len(past) and len(before):
            a, b, cand = self._bracket(before, past)
            self.steps_in_bracket += 1
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
        if self.p.kind == "cor" and abs(cand) > self.u_max:
            if abs(u) >= self.u_max - 1e-9:
                edge = float(np.sign(cand))
                self.finish(edge, BOUNDARY, f"the profile is within the cutoff at {edge:+g} (zeta = {zeta:.4g})")
                return
            cand = float(np.sign(cand)) * self.u_max
        if self.p.kind == "sd" and side < 0 and cand < self.u_hat - U_MIN_SD:
            if len(past) == 0:
                self.zero_pending = True
            cand = max(cand, self.u_hat - U_MIN_SD)
        self.next_u = cand

    def give_up(self, steps: int) -> None:
        """The end after ``steps`` root-search steps without reaching tol: the
        secant root of the innermost bracket, or where there is none, the end
        of the parameter's range on this side (the profile stays within the
        cutoff as far as the search went)."""
        before, past = self._split()
        if len(before) and len(past):
            a, b, cand = self._bracket(before, past)
            lo, hi = sorted((float(self.from_u(a[0])), float(self.from_u(b[0]))))
            self.finish(float(self.from_u(cand)), BUDGET,
                        f"not converged in {steps} steps: between {lo:.6g} and {hi:.6g} (secant root reported)")
            return
        far = before[np.argmax(self.side * before[:, 0])] if len(before) else (self.u_hat, 0.0)
        edge = {"sd": 0.0 if self.side < 0 else np.inf, "sigma": 0.0 if self.side < 0 else np.inf,
                "cor": float(self.side), "fixed": self.side * np.inf}[self.p.kind]
        self.finish(edge, BUDGET, f"not reached in {steps} steps: zeta = {far[1]:.4g} at "
                                  f"{float(self.from_u(far[0])):.6g}, the farthest value tried")


def _first_step(fit: "LMMResult", p: ProfileParameter, z: float) -> float:
    """Wald-type first probe on the search scale."""
    if p.kind == "fixed":
        se = float(fit.std_errors.iloc[p.index[0]])
        return z * se if np.isfinite(se) and se > 0 else 1.0
    return z * (0.15 if p.kind == "cor" else 0.1)


@entry_point
def profile_confint(result: "LMMResult", level: float = 0.95, which: list[str] | None = None,
                    tol: float = 1e-7, max_iter: int = 60, progress: bool = False) -> pd.DataFrame:
    """lme4's profile confidence intervals, each end solved to |zeta -+ z| < tol.

    Every end is a number: a root of zeta, or the end of the parameter's
    range (an SD's 0, a correlation's -1 or 1) where the profile stays within
    the cutoff up to it, or where the estimate itself lies there. The work is
    bounded: at most ``max_iter`` root-search steps per end (each one
    vmapped batch of constrained Newton solves, each at most 200 Newton
    steps); an end the budget does not reach is reported as the secant root
    of its bracket, or without one as the range's end on that side (0, inf,
    -1 or 1, -inf / inf for a fixed effect), with a note and a
    :class:`~lmm_jax.errors.ConvergenceWarning`.

    Args:
        result: a fit (REML fits are refitted by ML first, as lme4 does).
        level: confidence level.
        which: parameter names to profile (default all, in lme4's order).
        tol: tolerance on zeta at each end.
        max_iter: root-search steps per end.
        progress: show a tqdm bar over the root-search steps.

    Returns:
        DataFrame indexed by lme4's names with columns ``lower, upper``;
        ``attrs`` holds the level, the number of constrained fits solved,
        how many stopped short of the strict Newton-decrement criterion
        (``not_converged``; in flat directions the objective is still
        accurate to ~1e-9, which is what zeta needs), ``status``: per name
        the pair (lower, upper) of ``"root"``, ``"estimate"``,
        ``"boundary"`` or ``"budget"`` (module constants ROOT, ...), and
        ``notes``: per name, what the ends that are not roots mean.
    """

    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level}")
    max_iter = check_count(max_iter, "max_iter")
    progress = check_bool(progress, "progress")
    fit = _ml_fit(result)
    params = parameters(fit)
    if which is not None:
        names = [p.name for p in params]
        unknown = [w for w in which if w not in names]
        if unknown:
            raise InferenceError(f"cannot profile {unknown}: parameters are {names}")
        params = [p for p in params if p.name in which]
    prof = _Profiler(fit, batch=2 * len(parameters(fit)))   # fixed batch: one compilation per model
    z = float(norm_ppf(0.5 + level / 2.0))
    ends = [_End(p, side, z, _first_step(fit, p, z), fit.sigma, tol) for p in params for side in (-1, 1)]
    searched = [e.p for e in ends if not e.done]
    prof.correlation_caps(searched)
    for e in ends:
        if e.p.kind == "cor" and not e.done:
            cap, sd = prof.caps[e.p.name]
            zeta_cap = float(np.sqrt(max(cap - prof.base, 0.0)))
            if zeta_cap < z:
                e.finish(float(e.side), BOUNDARY, f"the profile stays within the cutoff: {sd} can be 0 "
                                                  f"(|zeta| = {zeta_cap:.4g}), where the correlation is undefined")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="profile", unit="step")
    try:
        for _ in range(max_iter):
            todo = [e for e in ends if not e.done]
            if not todo:
                break
            zetas, sols = prof.zeta([(e.p, e.proposal()) for e in todo], [e.start() for e in todo])
            for e, zt, sol in zip(todo, zetas, sols):
                e.update(float(zt), sol)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(open_ends=sum(not e.done for e in ends))
    finally:
        if bar is not None:
            bar.close()
    short = [e for e in ends if not e.done]
    for e in short:
        e.give_up(max_iter)
    by = {(e.p.name, e.side): e for e in ends}
    names = [p.name for p in parameters(fit)] if which is None else [p.name for p in params]
    out = pd.DataFrame([(by[(n, -1)].value, by[(n, 1)].value) for n in names], index=names,
                       columns=["lower", "upper"])
    notes = {}
    for n in names:
        text = "; ".join(f"{s}: {by[(n, side)].note}" for s, side in (("lower", -1), ("upper", 1))
                         if by[(n, side)].note)
        if text:
            notes[n] = text
    out.attrs.update(level=level, method="profile", evaluations=prof.evaluations,
                     not_converged=prof.not_converged, refitted_ml=bool(result.reml),
                     status={n: (by[(n, -1)].status, by[(n, 1)].status) for n in names}, notes=notes)
    if short:
        listed = ", ".join(f"{e.p.name} ({'lower' if e.side < 0 else 'upper'}: {e.note})" for e in short)
        warnings.warn(f"profile ends not found to tol={tol:g} within max_iter={max_iter} steps: {listed}; "
                      f"raise max_iter or tol", ConvergenceWarning, stacklevel=3)
    return out


@entry_point
def profile_zeta(result: "LMMResult", name: str, values: np.ndarray) -> pd.DataFrame:
    """zeta (lme4's ``as.data.frame(profile(fit))$.zeta``) and the ML deviance
    of one parameter at the given values (a correlation's deviance capped as
    in :meth:`_Profiler.correlation_caps`; zeta of a correlation whose term
    has an SD estimated at 0 is 0).

    As in :func:`profile_confint`'s search, the values on each side of the
    estimate are solved outward from it, each from the solution at the one
    before: round r solves the r-th nearest value of each side, as one
    vmapped batch."""

    fit = _ml_fit(result)
    params = {p.name: p for p in parameters(fit)}
    if name not in params:
        raise InferenceError(f"cannot profile {name!r}: parameters are {list(params)}")
    values = np.atleast_1d(np.asarray(values, dtype=float))
    prof = _Profiler(fit, batch=2 * len(params))      # the batch of profile_confint: one compilation
    p = params[name]
    est = p.estimate if np.isfinite(p.estimate) else 0.0
    sides = [sorted(np.flatnonzero(values < est), key=lambda n: -values[n]),
             sorted(np.flatnonzero(values >= est), key=lambda n: values[n])]
    dev = np.zeros(len(values))
    last: list[Start | None] = [None, None]
    for r in range(max(map(len, sides))):
        idx = [(k, side[r]) for k, side in enumerate(sides) if r < len(side)]
        d, sols = prof.deviance([(p, float(values[n])) for _, n in idx], [last[k] for k, _ in idx])
        for (k, n), dn, sol in zip(idx, d, sols):
            dev[n], last[k] = dn, sol
    sign = np.sign(values - p.estimate) if np.isfinite(p.estimate) else np.zeros_like(values)
    zeta = sign * np.sqrt(np.maximum(dev - prof.base, 0.0))
    return pd.DataFrame({"value": values, "zeta": zeta, "deviance": dev})

"""Profile-likelihood intervals of a GLMM (lme4's ``confint(profile(glmer_fit))``).

For a parameter psi (a fixed effect, or the SD of a scalar random-effects
term, which for a GLMM is its theta entry) the profile is

    zeta(v) = sign(v - psi_hat) sqrt(D(v) - D_hat),

with ``D(v)`` the Laplace (or AGQ) deviance minimised over every other
parameter at ``psi = v`` (theta and beta jointly, as glmer's profile does
for ``nAGQ > 0``) and ``D_hat`` the fit's deviance. The interval's ends are
the roots of ``zeta(v) = -+ z_{(1 + level)/2}``, found here by Brent's method
on the profile itself; lme4 interpolates a spline through ~20 profile points
per parameter and inverts it, so its ends differ from the roots by its
interpolation error (1e-4 to 1e-3 on cbpp). An SD whose profile stays above
``-z`` down to 0 gets the lower end 0, as lme4.

Each constrained fit is the joint Newton fit with the profiled entry held
at v (inserted at a dynamic position of (theta, beta), so one compiled
function serves every fixed effect, and one every scalar SD of a term
layout), started at the fit's estimates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import ndtri

from ..core.family import Family
from ..core.laplace import GLMMData, deviance
from ..core.optimize import newton_minimize
from ..core.parametrization import diagonal_mask, phi_from_theta
from ..core.types import Structure
from ..errors import InferenceError
from ..runtime.kernel import kernel
from ..runtime.scope import entry_point

if TYPE_CHECKING:
    from .results import GLMMResult

STEPS = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)   # multiples of the Wald SE (fixed effects) or the SD searched outward
XTOL = 1e-7


def _insert(x_rest: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """``x_rest`` with ``v`` inserted at (dynamic) position ``k``."""
    n = x_rest.shape[0] + 1
    i = jnp.arange(n)
    src = jnp.clip(i - (i > k), 0, max(n - 2, 0))
    return jnp.where(i == k, v, x_rest[src] if n > 1 else v)


@kernel(static_argnames=("fam", "s", "n_agq", "ks_rest", "n_theta"), quick=True)
def constrained_deviance(k: jnp.ndarray, v: jnp.ndarray, phi0: jnp.ndarray, active0: jnp.ndarray,
                         beta0: jnp.ndarray, S_inv: jnp.ndarray, data: GLMMData, fam: Family, s: Structure,
                         n_agq: int, ks_rest: tuple[int, ...], n_theta: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The deviance minimised over (theta, beta) with entry ``k`` of
    ``(theta, beta_user)`` held at ``v``: theta's other entries follow the
    layout ``ks_rest`` (log-Cholesky, ``phi0``), the free beta entries ``beta0``
    (user's columns). Returns ``(deviance, converged)``."""
    def f(x):
        full = _insert(x, k, v)
        return deviance(full[:n_theta], S_inv @ full[n_theta:], data, fam, s, n_agq)

    active = jnp.concatenate([active0, jnp.ones(beta0.shape[0], dtype=bool)])
    opt = newton_minimize(f, jnp.concatenate([phi0, beta0]), active, ks_rest, free=beta0.shape[0])
    return opt.objective, opt.converged


def _parameters(result: "GLMMResult") -> list[tuple[str, int, str]]:
    """(lme4 name, position in (theta, beta), kind) of every profilable parameter, in confint's order."""
    lay = result.design.theta_layout
    out = []
    for n in lay.varcorr_order:
        t, i, j = lay.entries[n]
        if result.model.structure.ks[t] == 1:
            out.append((lay.names[n], n, "sd"))
    nt = len(result.theta)
    out += [(name, nt + j, "beta") for j, name in enumerate(result.design.fixef_names)]
    return out


@entry_point
def profile_confint(result: "GLMMResult", level: float = 0.95, which: Sequence[str] | None = None) -> pd.DataFrame:
    """Profile-likelihood intervals (module docstring) of the fixed effects and
    the SDs of scalar random-effects terms, in lme4's names and order.

    Args:
        result: the fit.
        level: confidence level.
        which: the parameters' names (default all that can be profiled).

    Raises:
        InferenceError: ``level`` out of (0, 1), an unknown name, or the SD or
            correlation of a vector-valued term (profiles of those are not
            available: use ``method="boot"`` or ``"Wald"``).
    """
    if not 0 < level < 1:
        raise InferenceError(f"level must be in (0, 1), got {level!r}")
    params = _parameters(result)
    names = [p[0] for p in params]
    lay = result.design.theta_layout
    if which is None:
        vector_terms = [lay.names[n] for n in lay.varcorr_order if result.model.structure.ks[lay.entries[n][0]] > 1]
        if vector_terms:
            raise InferenceError(f"profile intervals of a GLMM cover the fixed effects and the SDs of scalar terms; "
                                 f"{vector_terms} belong to vector-valued terms: pass which={names} for the others, "
                                 "or use method='boot' (parametric bootstrap) or 'Wald'")
        chosen = params
    else:
        unknown = [w for w in which if w not in names]
        if unknown:
            raise InferenceError(f"cannot profile {unknown}: the profilable parameters are {names} (SDs and "
                                 "correlations of vector-valued terms: use method='boot')")
        chosen = [p for p in params if p[0] in which]
    z = float(ndtri((1 + level) / 2))
    rows = {name: _interval(result, pos, kind, z) for name, pos, kind in chosen}
    lo, hi = f"{100 * (1 - level) / 2:.1f} %", f"{100 * (1 + level) / 2:.1f} %"
    return pd.DataFrame.from_dict(rows, orient="index", columns=[lo, hi])


def _zeta_function(result: "GLMMResult", pos: int, kind: str):
    m = result.model
    ks, nt = m.structure.ks, len(result.theta)
    if kind == "sd":
        t = result.design.theta_layout.entries[pos][0]
        ks_rest = tuple(k for i, k in enumerate(ks) if i != t)
        theta_rest = np.delete(result.theta, pos)
        beta0 = result.beta
    else:
        ks_rest = ks
        theta_rest = result.theta
        beta0 = np.delete(result.beta, pos - nt)
    theta_rest = np.where(diagonal_mask(ks_rest) & (theta_rest == 0), 0.1, theta_rest)   # 0 would stay fixed
    phi0, active0 = phi_from_theta(theta_rest, ks_rest)
    S_inv = jnp.asarray(np.linalg.inv(m.basis) if m.structure.p else m.basis)
    args = (jnp.asarray(phi0), jnp.asarray(active0), jnp.asarray(beta0, dtype=jnp.float64), S_inv, m.data,
            m.family, m.structure, result.n_agq, ks_rest, nt)
    est = float(np.concatenate([result.theta, result.beta])[pos])

    def zeta(v: float) -> float:
        dev, _ = constrained_deviance(jnp.asarray(pos), jnp.asarray(v, dtype=jnp.float64), *args)
        return float(np.sign(v - est) * np.sqrt(max(float(dev) - result.objective, 0.0)))

    return zeta, est


def _interval(result: "GLMMResult", pos: int, kind: str, z: float) -> tuple[float, float]:
    zeta, est = _zeta_function(result, pos, kind)
    nt = len(result.theta)
    scale = float(result.std_errors.iloc[pos - nt]) if kind == "beta" else max(est, 0.1)
    ends = []
    for sign in (-1.0, 1.0):
        target = sign * z
        found = None
        for step in STEPS:
            v = est + sign * step * scale
            if kind == "sd" and v <= 0:
                if zeta(0.0) > target:            # the profile stays above -z down to sd = 0: lme4's lower end 0
                    found = 0.0
                    break
                found = brentq(lambda x: zeta(x) - target, 0.0, est, xtol=XTOL)
                break
            if sign * zeta(v) >= z:
                inner = est + sign * (STEPS[STEPS.index(step) - 1] if step != STEPS[0] else 0.0) * scale
                a, b = sorted((inner, v))
                found = brentq(lambda x: zeta(x) - target, a, b, xtol=XTOL)
                break
        ends.append(np.nan if found is None else found)
    return ends[0], ends[1]


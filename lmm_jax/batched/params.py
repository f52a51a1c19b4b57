"""Model parameters given by name, as lme4 prints them: what a simulation runs at.

A simulation or power analysis states its parameters the way a fit reports
them (simr's ``makeLmer(fixef=, VarCorr=, sigma=)``):

    {"beta": {"(Intercept)": 250, "Days": 10},          # or an array in fixef order
     "sd_(Intercept)|Subject": 25, "sd_Days|Subject": 6,
     "cor_Days.(Intercept)|Subject": 0.1,               # absent correlations are 0
     "sigma": 25}

or with lme4's relative covariance factor ``"theta"`` (an array in lme4's
layout) instead of the SDs and correlations. Names are those of
``fit.confint()`` (:attr:`lmm_jax.core.theta_layout.ThetaLayout.names`).
Per term, ``Sigma_t = D R D`` (D the SDs, R the correlations) and
``Lambda_t`` is the Cholesky factor of ``Sigma_t / sigma^2``, with a zero
column where an SD is zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..core.theta_layout import ThetaLayout

if TYPE_CHECKING:
    from ..build.design import Design


def fixed_effects_vector(beta: Any, names: tuple[str, ...]) -> np.ndarray:
    """``beta`` as an array in the order of ``names`` (from a mapping by name, or an array)."""
    if isinstance(beta, Mapping):
        unknown = sorted(set(beta) - set(names))
        missing = [n for n in names if n not in beta]
        if unknown or missing:
            raise ValueError(f"params['beta'] must name every fixed effect of the model {list(names)}; "
                             + (f"unknown: {unknown}" if unknown else f"missing: {missing}"))
        return np.array([float(beta[n]) for n in names])
    out = np.asarray(beta, dtype=float).reshape(-1)
    if out.shape != (len(names),):
        raise ValueError(f"params['beta'] must have {len(names)} entries ({list(names)}), got {out.shape[0]}")
    return out


def theta_from_sd_cor(values: Mapping[str, float], layout: ThetaLayout, sigma: float) -> np.ndarray:
    """lme4's theta from SDs and correlations named as in :attr:`ThetaLayout.names`.

    Raises:
        ValueError: a missing SD, an unknown name, a negative SD, a
            correlation outside [-1, 1], or correlations that are not a
            valid (positive semi-definite) correlation matrix.
    """
    names = layout.names
    sd_names = [n for n in names if n.startswith("sd_")]
    missing = [n for n in sd_names if n not in values]
    if missing:
        raise ValueError(f"params is missing the SD(s) {missing}; give every random-effects SD ({sd_names}), "
                         "correlations (cor_...) where not 0, and sigma, or theta (lme4's layout)")
    theta = np.zeros(len(names))
    for t, k in enumerate(layout.ks):
        sd = np.zeros(k)
        R = np.eye(k)
        for n, (tt, i, j) in zip(names, layout.entries):
            if tt != t:
                continue
            v = float(values.get(n, 0.0))
            if i == j:
                if not v >= 0:
                    raise ValueError(f"params[{n!r}] must be a non-negative SD, got {v!r}")
                sd[i] = v
            else:
                if not -1.0 <= v <= 1.0:
                    raise ValueError(f"params[{n!r}] must be a correlation in [-1, 1], got {v!r}")
                R[i, j] = R[j, i] = v
        L = _semidefinite_cholesky((sd[:, None] * R * sd[None, :]) / sigma ** 2)
        if L is None:
            raise ValueError(f"the correlations given for {layout.group_names[t]!r} do not form a valid "
                             f"correlation matrix:\n{R}")
        r, c = layout.tri(t)
        theta[layout.slices[t]] = L[r, c]
    return theta


def _semidefinite_cholesky(S: np.ndarray, tol: float = 1e-12) -> np.ndarray | None:
    """Lower-triangular L with ``L L' = S`` for a positive semi-definite S
    (a zero pivot gives a zero column); None if S is not semi-definite."""
    k = S.shape[0]
    L = np.zeros_like(S)
    scale = max(float(np.max(np.abs(np.diagonal(S)))), 1e-300)
    for j in range(k):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d < -tol * scale:
            return None
        if d <= tol * scale:
            if np.any(np.abs(S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) > 1e-8 * scale):
                return None
            continue
        L[j, j] = np.sqrt(d)
        L[j + 1:, j] = (S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return L


def named_params(params: Mapping[str, Any], design: "Design") -> tuple[np.ndarray, np.ndarray, float]:
    """(beta, theta, sigma) from ``params`` (module docstring) for ``design``.

    Raises:
        ValueError: a missing or unknown entry, or an invalid value (named).
    """
    layout = design.theta_layout
    allowed = {"beta", "theta", "sigma", *layout.names}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"params has unknown entries {unknown}; the model's are beta, sigma and either theta or "
                         f"{list(layout.names)}")
    if "beta" not in params or "sigma" not in params:
        missing = [k for k in ("beta", "sigma") if k not in params]
        raise ValueError(f"params is missing {missing}; give beta (by name or in the order "
                         f"{list(design.fixef_names)}), sigma, and theta or the SDs {list(layout.names)}")
    sigma = np.asarray(params["sigma"], dtype=float)
    if sigma.shape != () or not float(sigma) > 0:
        raise ValueError(f"params['sigma'] must be a positive scalar, got {params['sigma']!r}")
    beta = fixed_effects_vector(params["beta"], tuple(design.fixef_names))
    named = {k: v for k, v in params.items() if k in layout.names}
    if "theta" in params:
        if named:
            raise ValueError(f"params gives both theta and {sorted(named)}: give one of the two")
        theta = np.asarray(params["theta"], dtype=float).reshape(-1)
        if theta.shape != (layout.n_theta,):
            raise ValueError(f"params['theta'] must have {layout.n_theta} entries (lme4's theta layout), "
                             f"got {theta.shape[0]}")
    else:
        theta = theta_from_sd_cor(named, layout, float(sigma))
    return beta, theta, float(sigma)

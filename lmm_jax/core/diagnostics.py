"""Convergence diagnostics at the optimum, like lme4's ``checkConv``.

After the optimiser stops, the profiled objective d(theta) (REML criterion or
ML deviance, lme4's scale) is differentiated exactly by autodiff in lme4's
theta parametrisation, over the entries not held at the boundary (a diagonal
entry of Lambda fixed at 0 is a constrained optimum, where the gradient need
not vanish). Two checks follow lme4 (``lme4:::checkConv``, defaults of
``lmerControl``):

* gradient: with ``H = R'R`` (Cholesky), the scaled gradient is
  ``R^{-1} g`` (``solve(chol(H), g)``); lme4 compares
  ``max(min(|R^{-1} g|, |g|))`` with ``check.conv.grad`` tol 0.002;
* Hessian: H must be positive definite: no eigenvalue below
  ``-check.conv.hess`` tol 1e-6 and none within it of zero (a flat direction:
  the model is nearly unidentifiable), and a largest/smallest eigenvalue ratio
  below 1e6.

lme4 uses finite differences; exact derivatives make the checks sharper but
the same tolerances apply. :func:`diagnose_newton` takes the derivatives the
Newton optimiser already has at its last iterate (in phi) and maps them to
theta, so a fit pays no extra compilation; :func:`check_convergence`
differentiates the objective in theta directly (the slow path it is tested
against, and usable at any theta).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .types import DesignProducts, ResponseProducts, Structure
from .likelihood import profiled_deviance
from .parametrization import diagonal_mask

GRAD_TOL = 2e-3   # lme4's check.conv.grad tolerance
HESS_TOL = 1e-6   # lme4's check.conv.hess tolerance


@dataclass(frozen=True)
class ConvergenceDiagnostics:
    """Derivative checks of the objective at the reported optimum.

    Attributes:
        gradient: d objective / d theta (0 for entries at the boundary).
        scaled_gradient: ``R^{-1} g`` with ``H = R'R`` over the free entries
            (NaN where H is not positive definite).
        max_gradient: lme4's criterion ``max(min(|R^{-1} g|, |g|))`` (``|g|``
            alone when H is not positive definite).
        hessian_eigenvalues: eigenvalues of the Hessian over the free entries,
            ascending.
        boundary: True for theta entries held at exactly 0.
        messages: lme4-style descriptions of the failed checks (empty if none).
        grad_tol: tolerance of the gradient check.
        hess_tol: tolerance of the Hessian check.
    """

    gradient: np.ndarray
    scaled_gradient: np.ndarray
    max_gradient: float
    hessian_eigenvalues: np.ndarray
    boundary: np.ndarray
    messages: tuple[str, ...]
    grad_tol: float = GRAD_TOL
    hess_tol: float = HESS_TOL

    @property
    def gradient_ok(self) -> bool:
        """The (scaled) gradient check passed."""
        return bool(np.isfinite(self.max_gradient) and self.max_gradient <= self.grad_tol)

    @property
    def hessian_ok(self) -> bool:
        """The Hessian over the free entries is positive definite and not
        nearly singular."""
        ev = self.hessian_eigenvalues
        if ev.size == 0:
            return True
        return bool(np.all(np.isfinite(ev)) and ev[0] > self.hess_tol and ev[-1] < ev[0] / self.hess_tol)

    @property
    def ok(self) -> bool:
        """Both checks passed."""
        return self.gradient_ok and self.hessian_ok

    @property
    def min_eigenvalue(self) -> float:
        """Smallest Hessian eigenvalue over the free entries (inf if none)."""
        return float(self.hessian_eigenvalues[0]) if self.hessian_eigenvalues.size else float("inf")

    def as_dict(self) -> dict:
        """Plain-Python summary (for JSON output)."""
        return {"ok": self.ok, "gradient_ok": self.gradient_ok, "hessian_ok": self.hessian_ok,
                "max_gradient": float(self.max_gradient), "min_eigenvalue": self.min_eigenvalue,
                "gradient": self.gradient.tolist(), "hessian_eigenvalues": self.hessian_eigenvalues.tolist(),
                "boundary": self.boundary.tolist(), "messages": list(self.messages)}


@partial(jax.jit, static_argnames=("s",))
def theta_derivatives(theta: jnp.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure,
                      reml: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Exact gradient and Hessian of the profiled objective in lme4's theta.

    Args:
        theta: lme4's covariance parameters.
        dp, rp: design and response cross-products.
        s: static structure.
        reml: REML criterion if True, ML deviance otherwise.

    Returns:
        ``(g, H)`` of shapes (n_theta,) and (n_theta, n_theta).
    """
    def f(th):
        return profiled_deviance(th, dp, rp, s, reml)

    return jax.grad(f)(theta), jax.hessian(f)(theta)


def assess(gradient: np.ndarray, hessian: np.ndarray, boundary: np.ndarray, *, grad_tol: float = GRAD_TOL,
           hess_tol: float = HESS_TOL, names: tuple[str, ...] | None = None) -> ConvergenceDiagnostics:
    """lme4's ``checkConv`` on given derivatives (pure numpy).

    Args:
        gradient: (t,) gradient of the objective in theta.
        hessian: (t, t) Hessian in theta.
        boundary: (t,) True for entries held at the boundary (excluded).
        grad_tol: tolerance on ``max(min(|R^{-1} g|, |g|))``.
        hess_tol: eigenvalue tolerance.
        names: the parameters' names, for the messages (default: "theta component i").

    Returns:
        The :class:`ConvergenceDiagnostics`.
    """
    g_all = np.where(boundary, 0.0, np.asarray(gradient, dtype=float))
    free = ~np.asarray(boundary, dtype=bool)
    g = g_all[free]
    H = np.asarray(hessian, dtype=float)[np.ix_(free, free)]
    H = (H + H.T) / 2.0
    messages: list[str] = []
    scaled = np.full(g.shape, np.nan)
    if g.size == 0:
        return ConvergenceDiagnostics(gradient=g_all, scaled_gradient=scaled, max_gradient=0.0,
                                      hessian_eigenvalues=np.zeros(0), boundary=np.asarray(boundary, bool),
                                      messages=(), grad_tol=grad_tol, hess_tol=hess_tol)
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        return ConvergenceDiagnostics(gradient=g_all, scaled_gradient=scaled, max_gradient=float("nan"),
                                      hessian_eigenvalues=np.full(g.shape, np.nan),
                                      boundary=np.asarray(boundary, bool),
                                      messages=("gradient or Hessian of the objective is not finite at the "
                                                "optimum",), grad_tol=grad_tol, hess_tol=hess_tol)
    try:
        R = np.linalg.cholesky(H).T               # H = R'R, R upper triangular
        scaled = np.linalg.solve(R, g)
        max_grad = float(np.max(np.minimum(np.abs(scaled), np.abs(g))))
    except np.linalg.LinAlgError:
        max_grad = float(np.max(np.abs(g)))
        messages.append("unable to evaluate the scaled gradient (Hessian not positive definite)")
    if max_grad > grad_tol:
        w = int(np.argmax(np.minimum(np.abs(scaled), np.abs(g)) if np.all(np.isfinite(scaled)) else np.abs(g)))
        component = int(np.flatnonzero(free)[w])
        where = f"theta component {component}" if names is None else names[component]
        messages.append(f"model failed to converge with max|grad| = {max_grad:.3g} (tol = {grad_tol:g}, {where})")
    ev = np.linalg.eigvalsh(H)
    negative = int(np.sum(ev < -hess_tol))
    if negative:
        messages.append(f"model failed to converge: degenerate Hessian with {negative} negative eigenvalue(s) "
                        f"(smallest {ev[0]:.3g})")
    elif np.any(np.abs(ev) <= hess_tol):
        messages.append(f"model may not have converged: {int(np.sum(np.abs(ev) <= hess_tol))} Hessian "
                        "eigenvalue(s) close to zero (a flat direction: nearly unidentifiable)")
    elif ev[-1] >= ev[0] / hess_tol:
        messages.append(f"model is nearly unidentifiable: large Hessian eigenvalue ratio {ev[-1] / ev[0]:.3g}; "
                        "rescale variables?")
    return ConvergenceDiagnostics(gradient=g_all, scaled_gradient=scaled, max_gradient=max_grad,
                                  hessian_eigenvalues=ev, boundary=np.asarray(boundary, bool),
                                  messages=tuple(messages), grad_tol=grad_tol, hess_tol=hess_tol)


def theta_derivatives_from_phi(theta: np.ndarray, gradient_phi: np.ndarray, hessian_phi: np.ndarray,
                               ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Map the optimiser's derivatives in phi to lme4's theta (chain rule).

    With theta_i = exp(phi_i) on the diagonal entries (c_i = theta_i) and
    theta_i = phi_i elsewhere (c_i = 1),

        g_phi = c * g_theta,
        H_phi = diag(c) H_theta diag(c) + diag(g_theta * c''),  c''_i = theta_i (diagonal) or 0,

    so ``g_theta = g_phi / c`` and ``H_theta = (H_phi - diag(g_phi [diagonal])) / (c c')``.
    Entries at the boundary (theta exactly 0 on the diagonal) are returned as 0.

    Args:
        theta: lme4's theta at the optimum.
        gradient_phi: (t,) gradient in phi (:attr:`NewtonResult.gradient`).
        hessian_phi: (t, t) Hessian in phi (:attr:`NewtonResult.hessian`).
        ks: columns per term.

    Returns:
        ``(g_theta, H_theta)``.
    """
    theta = np.asarray(theta, dtype=float)
    diag = diagonal_mask(ks)
    boundary = diag & (theta == 0.0)
    c = np.where(diag & ~boundary, theta, 1.0)
    g_phi = np.where(boundary, 0.0, np.asarray(gradient_phi, dtype=float))
    H_phi = np.asarray(hessian_phi, dtype=float) - np.diag(np.where(diag & ~boundary, g_phi, 0.0))
    H = H_phi / np.outer(c, c)
    H[boundary, :] = 0.0
    H[:, boundary] = 0.0
    return g_phi / c, H


def diagnose_newton(opt, ks: tuple[int, ...], *, grad_tol: float = GRAD_TOL,
                    hess_tol: float = HESS_TOL) -> ConvergenceDiagnostics:
    """lme4's checks from the optimiser's own final derivatives (no extra
    compilation): :func:`theta_derivatives_from_phi`, then :func:`assess`.

    Args:
        opt: the :class:`~lmm_jax.core.optimize.NewtonResult` of one fit.
        ks: columns per term.
        grad_tol: lme4's ``check.conv.grad`` tolerance (0.002).
        hess_tol: lme4's ``check.conv.hess`` tolerance (1e-6).
    """
    theta = np.asarray(opt.theta, dtype=float)
    g, H = theta_derivatives_from_phi(theta, np.asarray(opt.gradient), np.asarray(opt.hessian), ks)
    boundary = diagonal_mask(ks) & (theta == 0.0)
    return assess(g, H, boundary, grad_tol=grad_tol, hess_tol=hess_tol)


def check_convergence(theta: np.ndarray, dp: DesignProducts, rp: ResponseProducts, s: Structure, reml: bool,
                      *, grad_tol: float = GRAD_TOL, hess_tol: float = HESS_TOL) -> ConvergenceDiagnostics:
    """Gradient and Hessian checks of the objective at ``theta``.

    Args:
        theta: lme4's theta at the reported optimum (boundary entries exactly 0).
        dp, rp: design and response cross-products.
        s: static structure.
        reml: REML criterion if True, ML deviance otherwise.
        grad_tol: lme4's ``check.conv.grad`` tolerance (0.002).
        hess_tol: lme4's ``check.conv.hess`` tolerance (1e-6).

    Returns:
        The :class:`ConvergenceDiagnostics`.
    """
    theta = np.asarray(theta, dtype=float)
    boundary = diagonal_mask(s.ks) & (theta == 0.0)
    g, H = theta_derivatives(jnp.asarray(theta), dp, rp, s, bool(reml))
    return assess(np.asarray(g), np.asarray(H), boundary, grad_tol=grad_tol, hess_tol=hess_tol)

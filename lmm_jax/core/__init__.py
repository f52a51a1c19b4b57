"""The math: parametrization, the profiled likelihood, its optimiser and kernels. Pure JAX and numpy (no pandas)."""

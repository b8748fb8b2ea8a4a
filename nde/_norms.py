"""Norms of PyTrees, used by adaptive step size controllers."""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


def _widest_dtype(leaves):
    # A state may mix float32 and float64 leaves; strict dtype promotion refuses to
    # combine them implicitly, so the norm is taken in the widest dtype explicitly.
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*leaves)


def rms_norm(x: PyTree[Array]) -> Array:
    """Root mean square over every element of every leaf: `sqrt(mean(x**2))`."""
    leaves = [jnp.abs(leaf) for leaf in jtu.tree_leaves(x)]
    if not leaves:
        return jnp.asarray(0.0)
    dtype = _widest_dtype(leaves)
    size = sum(leaf.size for leaf in leaves)
    total = sum(jnp.sum(leaf.astype(dtype) ** 2) for leaf in leaves)
    return jnp.sqrt(total / size)


def max_norm(x: PyTree[Array]) -> Array:
    """Largest absolute value over every element of every leaf."""
    leaves = [jnp.max(jnp.abs(leaf)) for leaf in jtu.tree_leaves(x) if leaf.size]
    if not leaves:
        return jnp.asarray(0.0)
    dtype = _widest_dtype(leaves)
    return jnp.max(jnp.stack([leaf.astype(dtype) for leaf in leaves]))

"""Reductions over the `vmap` batch: `unvmap_any(x)`, `unvmap_max(x)`, and
`batch_sum_like(x, like)`.

Outside `vmap` these are `jnp.any` and `jnp.max`. Under `vmap` they also reduce over
the batch axis, and their result is *not* batched. Why: a `lax.while_loop` whose
condition is batched (one solve per batch element, each stopping at its own step)
is batched by JAX as "run while any element runs, and select each carry between
its old and new value" -- which copies every carried buffer (save buffers,
checkpoints) at every iteration. With an unbatched condition there is no select:
the loop body itself must then leave finished elements unchanged, which the step
of `_loop.py` does.
"""

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


def _make(name, reduce):
    prim = Primitive(name)
    prim.def_impl(lambda x: reduce(x))
    prim.def_abstract_eval(lambda x: x.update(shape=(), weak_type=False))
    mlir.register_lowering(prim, mlir.lower_fun(reduce, multiple_results=False))

    def batch(args, dims):
        (x,), (dim,) = args, dims
        # Reduce over everything, the batch axis included: the result is unbatched.
        del dim
        return prim.bind(x), None  # None: not batched

    def jvp(primals, tangents):
        # Used on integers and booleans only: there is no tangent to carry.
        out = prim.bind(*primals)
        return out, ad.Zero(out.aval.to_tangent_aval())

    batching.primitive_batchers[prim] = batch
    ad.primitive_jvps[prim] = jvp
    return prim


_any_p = _make("nde_unvmap_any", lambda x: jnp.any(x))
_max_p = _make("nde_unvmap_max", lambda x: jnp.max(x))


def unvmap_any(x):
    """Whether any element of `x`, across the `vmap` batch too, is true."""
    return _any_p.bind(jnp.asarray(x, bool))


def unvmap_max(x):
    """The largest element of `x`, across the `vmap` batch too."""
    return _max_p.bind(jnp.asarray(x))


# `batch_sum_like(x, like)`: `x`, summed over each `vmap` batch axis that `like` does
# not have. Why: when a solve is `vmap`ped over a batch with shared parameters, the
# backward pass of an adjoint (a custom VJP, batched by JAX) computes per-sample
# cotangents of the parameters, and accumulating them step by step in a loop
# means adding `batch x parameters` arrays at every step (e.g. 8 MiB per step for a
# 256-sample batch of a 32k-parameter network) -- only to sum them over the batch at
# the end. Summed at once, each step adds a `parameters`-sized array, and XLA
# contracts the batch axis as it forms the per-sample products.

_sum_like_p = Primitive("nde_batch_sum_like")
_sum_like_p.def_impl(lambda x, like: x)
_sum_like_p.def_abstract_eval(lambda x, like: x)
mlir.register_lowering(
    _sum_like_p, mlir.lower_fun(lambda x, like: x, multiple_results=False)
)


def _sum_like_batch(args, dims):
    (x, like), (x_dim, like_dim) = args, dims
    if x_dim is None:
        return x, x_dim
    if like_dim is None:
        # `like` is shared over this batch: so is `x`'s total.
        return _sum_like_p.bind(jnp.sum(x, axis=x_dim), like), None
    like = jnp.moveaxis(like, like_dim, x_dim)
    return _sum_like_p.bind(x, like), x_dim


def _sum_like_jvp(primals, tangents):
    (x, like), (tx, _) = primals, tangents
    out = _sum_like_p.bind(x, like)
    if type(tx) is ad.Zero:
        return out, ad.Zero(out.aval.to_tangent_aval())
    return out, _sum_like_p.bind(tx, like)  # linear in `x`


batching.primitive_batchers[_sum_like_p] = _sum_like_batch
ad.primitive_jvps[_sum_like_p] = _sum_like_jvp


def batch_sum_like(x, like):
    """`x` (a PyTree), summed over every `vmap` batch axis that `like` (a PyTree of
    the same structure, e.g. the parameters `x` is a cotangent of) does not have.
    Outside `vmap`, the identity. `None` leaves of `x` stay `None`."""

    def leaf(a, b):
        return None if a is None else _sum_like_p.bind(a, jnp.asarray(b))

    return jax.tree_util.tree_map(leaf, x, like, is_leaf=lambda a: a is None)


# `batch_spread(x, ref)`: the inverse bookkeeping of `batch_sum_like`, for the end of
# a custom VJP's backward pass. JAX batches a custom VJP's backward pass per element
# and then sums the cotangents of shared inputs over the batch (an unbatched output
# is first broadcast to every element). A total already summed over the batch must
# therefore be returned as one element's share: the total in the first element and
# zeros in the others, so that JAX's sum gives it back exactly.

_spread_p = Primitive("nde_batch_spread")
_spread_p.def_impl(lambda x, ref: x)
_spread_p.def_abstract_eval(lambda x, ref: x)
mlir.register_lowering(
    _spread_p, mlir.lower_fun(lambda x, ref: x, multiple_results=False)
)


def _spread_batch(args, dims):
    (x, ref), (x_dim, ref_dim) = args, dims
    if x_dim is not None or ref_dim is None:
        return _spread_p.bind(x, ref if ref_dim is None else jnp.zeros(())), x_dim
    size = ref.shape[ref_dim]
    first = jnp.arange(size) == 0
    spread = jnp.where(first.reshape((size,) + (1,) * x.ndim), x[None], 0)
    return spread.astype(x.dtype), 0


batching.primitive_batchers[_spread_p] = _spread_batch


def batch_spread(x, ref):
    """`x` (a PyTree, e.g. totals from `batch_sum_like`) as a share of each `vmap`
    batch that the array `ref` has and `x` does not: all of it in the first element,
    zeros in the others. Outside `vmap`, the identity."""
    ref = jnp.asarray(ref)

    def leaf(a):
        return None if a is None else _spread_p.bind(a, ref)

    return jax.tree_util.tree_map(leaf, x, is_leaf=lambda a: a is None)

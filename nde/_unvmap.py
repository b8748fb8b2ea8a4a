"""Reductions over the `vmap` batch: `unvmap_any(x)`, `unvmap_max(x)`.

Outside `vmap` these are `jnp.any` and `jnp.max`. Under `vmap` they also reduce over
the batch axis, and their result is *not* batched. Why: a `lax.while_loop` whose
condition is batched (one solve per batch element, each stopping at its own step)
is batched by JAX as "run while any element runs, and select each carry between
its old and new value" -- which copies every carried buffer (save buffers,
checkpoints) at every iteration. With an unbatched condition there is no select:
the loop body itself must then leave finished elements unchanged, which the step
of `_loop.py` does.
"""

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

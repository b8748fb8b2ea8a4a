"""The Milstein correction shared by `ItoMilstein` and `StratonovichMilstein`."""

import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu


def directional_derivative(diffusion, t0, y0, args, control):
    """`(d/dy [g(t0, y) dW]) (g(t0, y0) dW)` by a Jacobian-vector product, without
    forming the derivative of `g`; also returns `g(t0, y0) dW`.

    For commutative noise (`g_j' g_k = g_k' g_j`, including diagonal and scalar
    noise) this is `sum_jk g_j' g_k dW_j dW_k`, the Milstein term's double integral
    written with increments only.
    """
    g_dw = diffusion.vf_prod(t0, y0, args, control)
    _, derivative = jax.jvp(
        lambda y: diffusion.vf_prod(t0, y, args, control), (y0,), (g_dw,)
    )
    return g_dw, derivative


def ito_correction(diffusion, t0, y0, args, control):
    """`sum_j g_j' g_j`, one Jacobian-vector product per Brownian dimension: the
    Itô--Stratonovich correction (times `dt / 2`)."""
    flat, unflatten = jfu.ravel_pytree(control)
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)

    def column(e):
        return directional_derivative(diffusion, t0, y0, args, unflatten(e))[1]

    per_column = jax.vmap(column)(basis)
    return jtu.tree_map(lambda x: jnp.sum(x, axis=0), per_column)

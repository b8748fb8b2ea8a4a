"""The augmented system that `BacksolveAdjoint` solves backwards in time.

For `dy = f(t, y, args; theta) dX(t)` (an ODE when `X(t) = t`; a Stratonovich SDE
or a CDE otherwise) and a loss `L(y(t1))`, the adjoint `a(t) = dL/dy(t)` and the
gradients `a_args`, `a_theta` with respect to `args` and the parameters `theta` of
the terms satisfy, backwards from `t1`,

    dy      = f dX,
    da      = -a . (df/dy) dX,
    da_args = -a . (df/dargs) dX,       a_args(t1) = 0,
    da_theta= -a . (df/dtheta) dX,      a_theta(t1) = 0,

and `a(t0)`, `a_args(t0)`, `a_theta(t0)` are the gradients (Pontryagin; Chen,
Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018). Each right-hand side is one vector-Jacobian product of
`term.vf_prod`, so one term serves every kind of control.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._norms import rms_norm
from .._terms import AbstractTerm


def adjoint_rms_seminorm(x) -> jax.Array:
    """A norm for the adjoint state `(y, a_y, a_args, a_terms)` of
    `BacksolveAdjoint` that measures only `(y, a_y)`.

    The parameter gradients `a_args`, `a_terms` are integrals that feed back into
    nothing, so their error need not limit the step size. Excluding them takes fewer
    backward steps for the same accuracy of the state and its adjoint (Kidger, Chen
    & Lyons, "'Hey, that's not an ODE': Faster ODE Adjoints via Seminorms", ICML
    2021).

    **Example:**

        adjoint = BacksolveAdjoint(
            stepsize_controller=PIDController(rtol=1e-6, atol=1e-6,
                                              norm=adjoint_rms_seminorm)
        )
    """
    if not (isinstance(x, tuple) and len(x) == 4):
        raise ValueError(
            "`adjoint_rms_seminorm` expects the adjoint state `(y, a_y, a_args, "
            f"a_terms)` of `BacksolveAdjoint`; got {type(x).__name__}. Use it only as "
            "the norm of `BacksolveAdjoint(stepsize_controller=PIDController(..., "
            "norm=adjoint_rms_seminorm))`."
        )
    y, a_y, _, _ = x
    return rms_norm((y, a_y))


def _neg(tree):
    return jtu.tree_map(jnp.negative, tree)


class AdjointTerm(AbstractTerm):
    """The augmented term above, on the state `(y, a_y, a_args, a_terms)`.

    **Arguments:**

    - `term_rest`: the original terms without the arrays being differentiated
      (`eqx.partition(terms, perturbed)[1]`).

    The solve's `args` are `(args_diff, args_rest, term_diff)`: the arrays of `args`
    and of the terms that are differentiated, and the rest of `args`. `a_args` and
    `a_terms` have the structure of `args_diff` and `term_diff`: only what is
    differentiated is carried.
    """

    term_rest: AbstractTerm

    def vf_prod(self, t, y, args, control):
        y, a_y, _, _ = y
        args_diff, args_rest, term_diff = args

        def increment(y, args_diff, term_diff):
            term = eqx.combine(term_diff, self.term_rest)
            return term.vf_prod(t, y, eqx.combine(args_diff, args_rest), control)

        dy, vjp_fn = jax.vjp(increment, y, args_diff, term_diff)
        da_y, da_args, da_terms = vjp_fn(a_y)
        return dy, _neg(da_y), _neg(da_args), _neg(da_terms)

    def contr(self, t0, t1, **kwargs):
        return self.term_rest.contr(t0, t1, **kwargs)

    # The increment is linear in the control, so the vector field (the increment
    # per unit of control) is `vf_prod` at each basis vector of the control: one
    # evaluation for a scalar control (an ODE), one per channel otherwise.

    def vf(self, t, y, args):
        control = jax.eval_shape(self.term_rest.contr, t, t)
        leaves, treedef = jtu.tree_flatten(control)
        sizes = [leaf.size for leaf in leaves]
        dtype = jnp.result_type(*[leaf.dtype for leaf in leaves])
        if sum(sizes) == 1:
            unit = treedef.unflatten([jnp.ones(x.shape, x.dtype) for x in leaves])
            return self.vf_prod(t, y, args, unit)
        basis = jnp.eye(sum(sizes), dtype=dtype)
        return jax.vmap(
            lambda e: self.vf_prod(t, y, args, _unflat(e, leaves, treedef))
        )(basis)

    def prod(self, vf, control):
        leaves = jtu.tree_leaves(control)
        flat = jnp.concatenate([jnp.ravel(x) for x in leaves])
        if flat.size == 1:
            return jtu.tree_map(lambda v: v * flat[0].astype(v.dtype), vf)
        return jtu.tree_map(
            lambda v: jnp.tensordot(flat.astype(v.dtype), v, axes=1), vf
        )


def _unflat(vector, leaves, treedef):
    out, start = [], 0
    for leaf in leaves:
        out.append(
            vector[start : start + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        )
        start += leaf.size
    return treedef.unflatten(out)

"""`ForwardMode`: a plain while loop, differentiable in forward mode only.

JAX cannot transpose a `lax.while_loop`; its own error for `jax.grad` through one
("Reverse-mode differentiation does not work for lax.while_loop ...") does not say
what to change in a `diffeqsolve` call. So the tangents leaving the loop pass
through `_forward_only`, an identity whose transpose rule raises nde's error.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.tree_util as jtu
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .._loop import run
from ._base import AbstractAdjoint

_MESSAGE = (
    "`diffeqsolve(..., adjoint=ForwardMode())` supports forward-mode derivatives "
    "(`jax.jvp`, `jax.jacfwd`) only, but reverse mode (`jax.grad`, `jax.vjp`, "
    "`jax.jacrev`) was requested. Use `adjoint=RecursiveCheckpointAdjoint()` (the "
    "default) for reverse mode, or `DirectAdjoint()` for both."
)

_forward_only_p = Primitive("nde_forward_only")
_forward_only_p.def_impl(lambda x: x)
_forward_only_p.def_abstract_eval(lambda x: x)
mlir.register_lowering(
    _forward_only_p, mlir.lower_fun(lambda x: x, multiple_results=False)
)
batching.primitive_batchers[_forward_only_p] = lambda args, dims: (
    _forward_only_p.bind(*args),
    dims[0],
)
ad.deflinear2(_forward_only_p, lambda ct, x: _raise())


def _raise():
    raise ValueError(_MESSAGE)


def _forward_only(tree):
    def leaf(x):
        return _forward_only_p.bind(x) if isinstance(x, jax.Array) else x

    return jtu.tree_map(leaf, tree)


def forward_only_while_loop(
    cond_fun, body_fun, init_state, *, consts, max_steps, buffers
):
    """`lax.while_loop`, forward-mode differentiable, with a clear error in reverse
    mode."""
    del max_steps, buffers  # `cond_fun` checks the number of steps

    dynamic, static = eqx.partition((consts, init_state), eqx.is_array)

    def loop(dynamic):
        consts, init = eqx.combine(dynamic, static)
        return lax.while_loop(
            lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), init
        )

    @jax.custom_jvp
    def guarded(dynamic):
        return loop(dynamic)

    @guarded.defjvp
    def guarded_jvp(primals, tangents):
        out, out_dot = jax.jvp(loop, primals, tangents)
        return out, _forward_only(out_dot)

    return guarded(dynamic)


class ForwardMode(AbstractAdjoint):
    """Forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) through the solver's
    own steps.

    The loop is a plain `lax.while_loop`, so a derivative costs about as much as the
    forward solve and `max_steps=None` works. The efficient choice when there are
    fewer inputs than outputs (e.g. the Jacobian of many outputs with respect to a
    few parameters). Reverse mode (`jax.grad`) raises an error: use
    `RecursiveCheckpointAdjoint` (the default) for that, or `DirectAdjoint` for
    both modes.

    **Example:**

        jac = jax.jacfwd(lambda p: diffeqsolve(..., args=p,
                                               adjoint=ForwardMode()).ys)(p)
    """

    def loop(self, problem):
        return run(problem, forward_only_while_loop)

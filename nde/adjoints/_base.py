"""The adjoint interface: a strategy that runs (and differentiates) the loop."""

import abc

import equinox as eqx
import jax.lax as lax

from .._loop import Problem, State


def plain_while_loop(cond_fun, body_fun, init_state, *, consts, max_steps, buffers):
    """`lax.while_loop`, stopping after `max_steps` iterations at most."""
    del max_steps, buffers  # `cond_fun` already checks the number of steps
    return lax.while_loop(
        lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), init_state
    )


class AbstractAdjoint(eqx.Module):
    """How `diffeqsolve` is differentiated.

    `loop(problem)` runs the solve and returns the final loop state; a subclass
    chooses the while loop (and any custom derivative rule) that makes its kind of
    differentiation work and efficient.
    """

    @abc.abstractmethod
    def loop(self, problem: Problem) -> State:
        """Solve `problem`; the result must be differentiable as this adjoint says."""

    def validate(self, problem: Problem) -> None:
        """Raise a clear error for a combination this adjoint cannot differentiate."""

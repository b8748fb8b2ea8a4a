import abc

import jax.lax as lax
import jax.tree_util as jtu

from .._results import RESULTS
from ._base import AbstractAdaptiveSolver, AbstractSolver
from ._local_linear import linear_dense_info


class AbstractReversibleSolver(AbstractSolver):
    """A solver whose step can be inverted exactly (up to round-off): from the end of
    a step and its solver state, `backward_step` recovers the start. This is what
    `ReversibleAdjoint` needs to backpropagate in O(1) memory."""

    @abc.abstractmethod
    def backward_step(self, terms, t0, t1, y1, args, solver_state1):
        """Invert `step` over `[t0, t1]`: **returns** `(y0, solver_state0)`."""


class ReversibleHeun(AbstractReversibleSolver, AbstractAdaptiveSolver):
    """The reversible Heun method: algebraically reversible, second order on ODEs,
    strong order 0.5 on Stratonovich SDEs, one vector field evaluation per step.

    It carries a second state `z` and the vector field there, `v = f(t0, z0)`; with
    `P(v) = prod(v, control)` (`v dt` for an ODE, drift `dt` + diffusion `dW` for an
    SDE):

        z1 = 2 y0 - z0 + P(v0)
        v1 = f(t1, z1)
        y1 = y0 + (P(v0) + P(v1)) / 2

    and, exactly inverted (`backward_step`),

        z0 = 2 y1 - z1 - P(v1),   v0 = f(t0, z0),   y0 = y1 - (P(v0) + P(v1)) / 2.

    The error estimate is the difference with the Euler-like step `y0 + P(v0)`, so
    it can adapt its step size (on SDEs, over a `VirtualBrownianTree`). Dense output
    is linear. Works with any terms (ODE, CDE, `MultiTerm` SDE); use it with
    `ReversibleAdjoint` for gradients in O(1) memory.

    Reference: Kidger, Foster, Li & Lyons, "Efficient and accurate gradients for
    neural SDEs", NeurIPS 2021, sec. 3.
    """

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return y0, terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        z0, v0 = solver_state
        if made_jump is not False:
            # After a discontinuity the stored v0 = f(t0-, z0) is stale.
            v0 = lax.cond(made_jump, lambda: terms.vf(t0, z0, args), lambda: v0)
        control = terms.contr(t0, t1)
        p0 = terms.prod(v0, control)
        z1 = jtu.tree_map(lambda y, z, p: 2 * y - z + p, y0, z0, p0)
        v1 = terms.vf(t1, z1, args)
        p1 = terms.prod(v1, control)
        y1 = jtu.tree_map(lambda y, a, b: y + (a + b) / 2, y0, p0, p1)
        y_error = jtu.tree_map(lambda a, b: (b - a) / 2, p0, p1)
        dense_info = linear_dense_info(y0, y1)
        return y1, y_error, dense_info, (z1, v1), RESULTS.successful

    def backward_step(self, terms, t0, t1, y1, args, solver_state1):
        z1, v1 = solver_state1
        control = terms.contr(t0, t1)
        p1 = terms.prod(v1, control)
        z0 = jtu.tree_map(lambda y, z, p: 2 * y - z - p, y1, z1, p1)
        v0 = terms.vf(t0, z0, args)
        p0 = terms.prod(v0, control)
        y0 = jtu.tree_map(lambda y, a, b: y - (a + b) / 2, y1, p0, p1)
        return y0, (z0, v0)

"""The solver interface: `init` once, then `step` over `[t0, t1]` repeatedly."""

import abc

import equinox as eqx

from .._control_terms import has_control_term, is_sde
from .._custom_types import VF, Args, BoolScalarLike, DenseInfo, RealScalarLike, Y
from .._results import Result
from .._terms import AbstractTerm


class AbstractSolver(eqx.Module):
    """A numerical method for `diffeqsolve`.

    State goes in and comes out explicitly, so a solve can also be stepped by hand:

        state = solver.init(terms, t0, t1, y0, args)
        y1, y_error, dense_info, state, result = solver.step(
            terms, t0, t1, y0, args, state, made_jump=False
        )
    """

    @abc.abstractmethod
    def order(self, terms: AbstractTerm) -> int | None:
        """Order of convergence on ODEs (`None` where not meaningful)."""

    def strong_order(self, terms: AbstractTerm) -> float | None:
        """Strong order of convergence on SDEs (`None` where not meaningful)."""
        return None

    def error_order(self, terms: AbstractTerm) -> float | None:
        """Order of the local error estimate, used by adaptive controllers.

        The estimate is the difference of a method of order `p` and an embedded one
        of order `p - 1`, whose local error is `O(dt**p)`; hence `p` on ODEs. On an
        SDE both have strong order `q` and their difference is `O(dt**(q + 1/2))`
        (the usual heuristic, e.g. Burrage & Burrage, "A variable stepsize
        implementation for stochastic differential equations", SIAM J. Sci.
        Comput. 2002).
        """
        if is_sde(terms):
            order = self.strong_order(terms)
            return None if order is None else order + 0.5
        return self.order(terms)

    @abc.abstractmethod
    def init(
        self,
        terms: AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: Y,
        args: Args,
    ):
        """The solver state before the first step."""

    @abc.abstractmethod
    def step(
        self,
        terms: AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: Y,
        args: Args,
        solver_state,
        made_jump: BoolScalarLike,
    ) -> tuple[Y, Y | None, DenseInfo, object, Result]:
        """Make one step from `t0` to `t1`.

        **Returns:** `(y1, y_error, dense_info, solver_state, result)`; `y_error` is
        `None` for a method without an error estimate.
        """

    def func(self, terms: AbstractTerm, t0: RealScalarLike, y0: Y, args: Args) -> VF:
        """The vector field at `(t0, y0)`, e.g. for initial step size selection."""
        if has_control_term(terms):
            raise ValueError(
                "`diffeqsolve(..., dt0=None)` chooses the first step from dy/dt, which "
                "an SDE or a CDE does not have. Pass an initial step size, e.g. "
                "`dt0=0.01`."
            )
        return terms.vf(t0, y0, args)


class AbstractAdaptiveSolver(AbstractSolver):
    """A solver that returns an error estimate, so it can adapt its step size."""

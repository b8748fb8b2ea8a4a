"""The step size controller interface."""

import abc

import equinox as eqx

from .._custom_types import RealScalarLike


class AbstractStepSizeController(eqx.Module):
    """Chooses where each step ends, and whether a step is accepted.

    Used by the loop as

        tnext, state = controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        keep, tprev, tnext, made_jump, state, result = controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )

    A controller that always accepts returns the Python constant `True` for
    `keep_step`, which lets the loop skip the rejection bookkeeping entirely.
    """

    @abc.abstractmethod
    def wrap(self, direction: RealScalarLike) -> "AbstractStepSizeController":
        """This controller in the forward time variable `direction * t`."""

    @abc.abstractmethod
    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        """**Returns:** `(tnext, controller_state)`: the end of the first step."""

    @abc.abstractmethod
    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        """**Returns:** `(keep_step, next_t0, next_t1, made_jump, state, result)`."""

    def traced_input_result(self, t0, t1):
        """A check of this controller's inputs that is only possible at run time
        (traced under `jit`): `None` if there is nothing to check, else an int32
        result code (`RESULTS.successful` or the failure), from which the solve
        starts: a failure takes no step, and `throw=True` raises its message.
        Called on the wrapped controller, with `t0`, `t1` in the forward time
        variable. Concrete inputs are checked with a `ValueError` instead, before
        anything is traced."""
        return None

    @property
    def is_adaptive(self) -> bool:
        """Whether this controller needs the solver's error estimate."""
        return False

    @property
    def may_jump(self) -> bool:
        """Whether this controller can report discontinuities (`made_jump`)."""
        return False

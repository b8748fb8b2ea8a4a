import jax.numpy as jnp

from .._results import RESULTS
from ._base import AbstractStepSizeController


class ConstantStepSize(AbstractStepSizeController):
    """Steps of constant size `dt0` (the last step is shortened to end at `t1`)."""

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            raise ValueError(
                "`diffeqsolve(..., dt0=None)` needs an adaptive controller to choose "
                "the first step, but `stepsize_controller=ConstantStepSize()`. Pass a "
                "step size, e.g. `dt0=0.01`, or use "
                "`stepsize_controller=PIDController(rtol=..., atol=...)`."
            )
        return t0 + dt0, jnp.asarray(dt0, dtype=jnp.result_type(t0))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        dt = controller_state
        return True, t1, t1 + dt, False, dt, RESULTS.successful

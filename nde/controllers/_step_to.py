import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from .._results import RESULTS
from ._base import AbstractStepSizeController


class StepTo(AbstractStepSizeController):
    """Steps to each of the given times in turn.

    **Arguments:**

    - `ts`: the times to step to, starting at `t0` and ending at `t1` (increasing for
      a forward solve, decreasing for a reverse-time one). Use with `dt0=None`.
    """

    ts: Real[ArrayLike, " times"]  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)

    def __check_init__(self):
        ts = self.ts
        if isinstance(ts, (np.ndarray, list, tuple)) and np.ndim(ts) != 1:
            raise ValueError(f"`StepTo(ts=...)` must be one-dimensional, got {ts!r}.")
        if isinstance(ts, (np.ndarray, list, tuple)) and len(ts) < 2:
            raise ValueError(
                f"`StepTo(ts=...)` needs at least two times (t0 and t1), got {ts!r}."
            )

    def wrap(self, direction):
        return StepTo(jnp.asarray(self.ts) * direction)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is not None:
            raise ValueError(
                "`StepTo(ts)` decides every step itself, so `diffeqsolve(..., dt0=...)` "
                f"must be None; got dt0={dt0!r}. Pass `dt0=None`."
            )
        ts = jnp.asarray(self.ts, dtype=jnp.result_type(t0))
        return ts[1], jnp.asarray(2, dtype=jnp.int32)

    def traced_input_result(self, t0, t1):
        # Concrete times were checked by `diffeqsolve` before tracing (with a
        # `ValueError`); this is for traced ones (for concrete ones XLA folds it).
        ts = jnp.asarray(self.ts, dtype=jnp.result_type(t0))
        code = jnp.where(
            jnp.any(ts[1:] <= ts[:-1]),
            RESULTS.stepto_not_monotonic._value,
            RESULTS.successful._value,
        )
        return jnp.where(
            (ts[0] != t0) | (ts[-1] != t1), RESULTS.stepto_ends._value, code
        ).astype(jnp.int32)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        ts = jnp.asarray(self.ts, dtype=jnp.result_type(t1))
        index = jnp.minimum(controller_state, len(ts) - 1)
        return True, t1, ts[index], False, controller_state + 1, RESULTS.successful

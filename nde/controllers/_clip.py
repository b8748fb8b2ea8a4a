import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Real

from ._base import AbstractStepSizeController


def _next_after(ts, t):
    """The first element of sorted `ts` strictly greater than `t` (inf if none)."""
    index = jnp.searchsorted(ts, t, side="right")
    padded = jnp.concatenate([ts, jnp.full((1,), jnp.inf, ts.dtype)])
    return padded[index]


class ClipStepSizeController(AbstractStepSizeController):
    """Wraps a controller so that steps never cross given times.

    **Arguments:**

    - `controller`: the controller to wrap, e.g. a `PIDController`.
    - `step_ts`: times every step must land on (e.g. observation times).
    - `jump_ts`: times of discontinuities of the vector field. Steps land just
      before them, and the next step restarts just after them (`made_jump`), so
      that an FSAL solver re-evaluates the vector field on the other side.
    """

    controller: AbstractStepSizeController
    step_ts: Real[ArrayLike, " steps"] | None = None  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
    jump_ts: Real[ArrayLike, " jumps"] | None = None  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)

    @property
    def is_adaptive(self) -> bool:
        return self.controller.is_adaptive

    @property
    def may_jump(self) -> bool:
        return self.jump_ts is not None

    def wrap(self, direction):
        sort = lambda ts: None if ts is None else jnp.sort(jnp.asarray(ts) * direction)
        return ClipStepSizeController(
            self.controller.wrap(direction), sort(self.step_ts), sort(self.jump_ts)
        )

    def traced_input_result(self, t0, t1):
        return self.controller.traced_input_result(t0, t1)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(
            terms, t0, t1, y0, dt0, args, func, error_order
        )
        tnext, at_jump = self._clip(t0, tnext)
        return tnext, (state, at_jump)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        inner_state, at_jump = controller_state
        keep, next_t0, next_t1, _, inner_state, result = (
            self.controller.adapt_step_size(
                t0, t1, y0, y1_candidate, args, y_error, error_order, inner_state
            )
        )
        made_jump = jnp.asarray(keep) & at_jump
        # The step ended just before a jump: restart just after it. The jump time
        # itself is skipped, as the vector field may be continuous from either side
        # there (`t <= jump` or `t < jump`). (As Diffrax does.)
        after = _ulps_up(next_t0, 2)
        next_t0 = jnp.where(made_jump, after, next_t0)
        next_t1 = jnp.maximum(next_t1, _ulps_up(next_t0, 1))
        next_t1, at_jump = self._clip(next_t0, next_t1)
        return keep, next_t0, next_t1, made_jump, (inner_state, at_jump), result

    def _clip(self, t0, t1):
        at_jump = jnp.asarray(False)
        if self.step_ts is not None:
            t1 = jnp.minimum(t1, _next_after(jnp.asarray(self.step_ts, t1.dtype), t0))
        if self.jump_ts is not None:
            jump = _next_after(jnp.asarray(self.jump_ts, t1.dtype), t0)
            before = _ulps_up(jump, -1)
            at_jump = before <= t1
            t1 = jnp.where(at_jump, before, t1)
        return t1, at_jump


def _ulps_up(t, n: int):
    """`t` moved by `n` floating-point spacings (down for negative `n`), with the
    derivative of `t` itself: `nextafter` has no derivative rule, and a shift by
    a few spacings is a constant as far as gradients with respect to times go."""
    direction = jnp.inf if n > 0 else -jnp.inf
    t_stopped = lax.stop_gradient(t)
    moved = t_stopped
    for _ in range(abs(n)):
        moved = jnp.nextafter(moved, direction)
    return t + (moved - t_stopped)

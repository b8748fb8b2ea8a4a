"""Result codes of a solve: why it stopped, and what the user should change.

Inside the solve a result is a scalar int32 array (cheap to carry through `jit`,
`vmap` and `while_loop`). Failures are never raised inside the loop: they are
recorded, the loop stops, and `diffeqsolve(..., throw=True)` raises the message once
at the end. So are inputs that are only known at run time (a traced `dt0`,
`SaveAt(ts)`, `PIDController` tolerances or `StepTo` times, or an interval that
leaves a `VirtualBrownianTree`) and invalid: the loop does not start. With
`throw=False` a solve therefore contains no host callback, which would make every
call of the compiled program synchronous and keep it out of JAX's persistent
compilation cache.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int

_MESSAGES: dict[str, str] = {
    "successful": "",
    "max_steps_reached": (
        "The maximum number of solver steps was reached. Pass a larger "
        "`diffeqsolve(..., max_steps=...)`, loosen `PIDController(rtol=..., "
        "atol=...)`, or use a solver better suited to the problem (a stiff problem "
        "takes many tiny steps with an explicit solver)."
    ),
    "dt_min_reached": (
        "The step size became too small to make progress (it fell below "
        "`PIDController(dtmin=...)` or below the resolution of the time variable). "
        "The problem may be stiff or singular here: loosen rtol/atol, switch to "
        "64-bit precision (`jax.config.update('jax_enable_x64', True)`), or check "
        "the vector field."
    ),
    "nonfinite": (
        "The solution became NaN or inf: the vector field returned a non-finite "
        "value (or the solution blew up). Check the vector field for divisions by "
        "zero, logs of negatives or overflow; try 64-bit precision or an adaptive "
        "step size controller with tighter tolerances."
    ),
    "event_occurred": "",
    # Inputs known only at run time (traced under `jit`), found invalid before the
    # first step: the loop does not run.
    "invalid_dt0": (
        "`diffeqsolve(..., dt0=...)` must be non-zero and have the sign of t1 - t0 "
        "(negative for a reverse-time solve)."
    ),
    "saveat_ts_outside": (
        "`SaveAt(ts=...)` must lie within [t0, t1]. Clip the save times or widen "
        "the interval."
    ),
    "saveat_ts_not_monotonic": (
        "`SaveAt(ts=...)` must be monotonic in the direction of integration. Sort it."
    ),
    "brownian_outside": (
        "A `VirtualBrownianTree(t0, t1, ...)` was queried outside [t0, t1]. Create "
        "it over an interval that contains the whole solve."
    ),
    "invalid_tolerances": (
        "`PIDController(rtol=..., atol=...)` needs rtol > 0 and atol >= 0 (traced "
        "values were not)."
    ),
    "stepto_ends": (
        "`StepTo(ts)` must start at `t0` and end at `t1` of `diffeqsolve`. Use e.g. "
        "`StepTo(jnp.linspace(t0, t1, n))`."
    ),
    "stepto_not_monotonic": (
        "`StepTo(ts)` must be strictly monotonic in the direction of integration. "
        "Sort it and drop repeated times."
    ),
}


class Result(eqx.Module):
    """A result code. Compare with `==` against a member of `RESULTS`."""

    _value: Int[ArrayLike, "..."]

    def __eq__(self, other) -> Bool[Array, "..."]:  # pyright: ignore[reportIncompatibleMethodOverride]
        if not isinstance(other, Result):
            return NotImplemented
        return jnp.asarray(self._value) == jnp.asarray(other._value)

    def __ne__(self, other) -> Bool[Array, "..."]:  # pyright: ignore[reportIncompatibleMethodOverride]
        if not isinstance(other, Result):
            return NotImplemented
        return jnp.asarray(self._value) != jnp.asarray(other._value)

    @property
    def message(self) -> str:
        """The text of this result (only for a concrete, unbatched result)."""
        return _BY_CODE[int(self._value)][1]

    @property
    def name(self) -> str:
        return _BY_CODE[int(self._value)][0]

    def __repr__(self) -> str:
        try:
            return f"RESULTS.{self.name}"
        except TypeError:
            return f"Result({self._value!r})"


_BY_CODE = tuple(_MESSAGES.items())


class _ResultsNamespace:
    """`RESULTS.successful`, `RESULTS.max_steps_reached`, ..."""

    successful = Result(0)
    max_steps_reached = Result(1)
    dt_min_reached = Result(2)
    nonfinite = Result(3)
    event_occurred = Result(4)
    invalid_dt0 = Result(5)
    saveat_ts_outside = Result(6)
    saveat_ts_not_monotonic = Result(7)
    brownian_outside = Result(8)
    invalid_tolerances = Result(9)
    stepto_ends = Result(10)
    stepto_not_monotonic = Result(11)

    def __iter__(self):
        return (getattr(self, name) for name, _ in _BY_CODE)

    def __getitem__(self, item: Result) -> str:
        return item.message

    @staticmethod
    def where(pred: Bool[ArrayLike, "..."], a: Result, b: Result) -> Result:
        """Elementwise `a if pred else b`."""
        return Result(jnp.where(pred, a._value, b._value).astype(jnp.int32))

    @staticmethod
    def promote(result: Result) -> Result:
        """The array form used inside the loop."""
        return Result(jnp.asarray(result._value, dtype=jnp.int32))

    @staticmethod
    def messages() -> tuple[str, ...]:
        return tuple(message for _, message in _BY_CODE)


RESULTS = _ResultsNamespace()
"""The possible outcomes of a solve; each failure's text says what to change."""

assert [r.name for r in RESULTS] == list(_MESSAGES)


def is_okay(result: Result) -> Bool[Array, "..."]:
    """True where the solve finished without error (successfully or at an event)."""
    return is_successful(result) | (result == RESULTS.event_occurred)


def is_successful(result: Result) -> Bool[Array, "..."]:
    """True where the solve reached `t1` without error."""
    return result == RESULTS.successful

"""Checks on `diffeqsolve`'s inputs: each error names the argument, the value
received and the fix. Concrete values are checked in Python (with the value in the
message); traced ones (`dt0`, `SaveAt(ts)`, and the step size controller's own:
`PIDController` tolerances, `StepTo` times) become the solve's initial result code
(`traced_input_result`): no step is taken, and `throw=True` raises the message."""

import math

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._results import RESULTS
from ._saveat import SaveAt, sub_saveats
from .controllers import AbstractStepSizeController, ClipStepSizeController, StepTo
from .solvers import AbstractAdaptiveSolver, AbstractSolver


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer) and x is not None


def as_state(y0):
    """Check `y0` is an array or a PyTree of arrays; integers become floats."""
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError(
            f"`diffeqsolve(..., y0=...)` must be an array or a PyTree of arrays; got "
            f"{y0!r}, which holds no arrays. Pass e.g. `y0=jnp.array([1.0, 0.0])`."
        )
    for leaf in leaves:
        if not (
            isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex))
        ):
            raise TypeError(
                "`diffeqsolve(..., y0=...)` must be an array or a PyTree of arrays; it "
                f"contains {leaf!r} of type {type(leaf).__name__}. Convert it with "
                "`jnp.asarray`, or move non-array data into `args`."
            )

    def to_array(leaf):
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            leaf = leaf.astype(jnp.result_type(float))
        return leaf

    return jtu.tree_map(to_array, y0)


def check_vector_field(terms, t0, y0, args):
    """The vector field (times the control) must have the structure of `y0`."""
    out = jax.eval_shape(lambda: terms.vf_prod(t0, y0, args, terms.contr(t0, t0)))
    y_struct = jtu.tree_structure(y0)
    out_struct = jtu.tree_structure(out)
    if y_struct != out_struct:
        raise ValueError(
            "The vector field of `diffeqsolve(terms, ...)` returned a PyTree of "
            f"structure {out_struct}, but y0 has structure {y_struct}. Return dy/dt "
            "with the structure of `y0` (one array per leaf)."
        )
    paths = [path for path, _ in jtu.tree_flatten_with_path(y0)[0]]
    for path, y, o in zip(
        paths, jtu.tree_leaves(y0), jtu.tree_leaves(out), strict=True
    ):
        if jnp.shape(y) != o.shape:
            where = "y0" + jtu.keystr(path)
            raise ValueError(
                "The vector field of `diffeqsolve(terms, ...)` returned shape "
                f"{o.shape} at {where}, which has shape {jnp.shape(y)}. Return dy/dt "
                "with the shape of y there."
            )


def _steps_to(controller) -> bool:
    inner = getattr(controller, "controller", None)  # ClipStepSizeController
    return isinstance(controller, StepTo) or isinstance(inner, StepTo)


def check_dt0(t0, t1, dt0, controller: AbstractStepSizeController):
    if dt0 is not None and _steps_to(controller):
        raise ValueError(
            "`StepTo(ts)` decides every step itself, so `diffeqsolve(..., dt0=...)` "
            f"must be None; got dt0={dt0!r}. Pass `dt0=None`."
        )
    if dt0 is None:
        if not controller.is_adaptive and not _steps_to(controller):
            raise ValueError(
                f"`diffeqsolve(..., dt0=None)` needs an adaptive controller to choose "
                f"the first step, but stepsize_controller={controller!r}. Pass a step "
                "size, e.g. `dt0=0.01`, or `stepsize_controller=PIDController(rtol=1e-6, "
                "atol=1e-6)`."
            )
        return dt0
    if all(is_concrete(x) for x in (t0, t1, dt0)):
        span, dt = float(t1) - float(t0), float(dt0)
        if span != 0 and (dt == 0 or (dt > 0) != (span > 0)):
            # The same size with the right sign; for dt0 = 0, a hundredth of the span.
            fix = math.copysign(abs(dt) if dt != 0 else abs(span) / 100, span)
            raise ValueError(
                f"`diffeqsolve(..., dt0={dt0})` must have the sign of t1 - t0 = {span} "
                "(negative for a reverse-time solve) and be non-zero. Pass e.g. "
                f"`dt0={fix}`."
            )
        return dt0
    return dt0  # traced: see `traced_input_result`


def check_solver_controller(solver: AbstractSolver, controller):
    if controller.is_adaptive and not isinstance(solver, AbstractAdaptiveSolver):
        raise ValueError(
            f"`{type(solver).__name__}` has no error estimate, so it cannot be used with "
            f"the adaptive stepsize_controller={type(controller).__name__}(...). Use "
            "`ConstantStepSize()` with a `dt0`, or an adaptive solver such as `Tsit5()`."
        )


def check_max_steps(max_steps, saveat: SaveAt):
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(
            f"`diffeqsolve(..., max_steps=...)` must be a positive int or None; got "
            f"{max_steps!r}."
        )
    if max_steps is None:
        if saveat.dense or any(s.steps for s in sub_saveats(saveat)):
            what = "SaveAt(dense=True)" if saveat.dense else "SaveAt(steps=True)"
            raise ValueError(
                f"`{what}` stores one entry per step, so it needs a bound on the number "
                "of steps, but `diffeqsolve(..., max_steps=None)`. Pass an integer "
                "`max_steps` (e.g. 4096)."
            )


def check_saveat_ts(ts, t0, t1):
    """`SaveAt(ts)` must be 1-D, monotonic in the solve's direction, in [t0, t1]."""
    if jnp.ndim(ts) != 1:
        raise ValueError(
            f"`SaveAt(ts=...)` must be one-dimensional; got shape {jnp.shape(ts)}."
        )
    if all(is_concrete(x) for x in (ts, t0, t1)):
        arr, a, b = np.asarray(ts, dtype=np.float64), float(t0), float(t1)
        lo, hi = min(a, b), max(a, b)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(
                f"`SaveAt(ts=...)` must lie within [t0, t1] = [{a}, {b}]; got values from "
                f"{arr.min()} to {arr.max()}. Clip the save times or widen the interval."
            )
        diffs = np.diff(arr) * (1 if b >= a else -1)
        if np.any(diffs < 0):
            raise ValueError(
                "`SaveAt(ts=...)` must be monotonic in the direction of integration "
                f"({'increasing' if b >= a else 'decreasing'}); got {arr}. Sort it."
            )
        return ts
    return ts  # traced: see `traced_input_result`


def check_step_to(controller, t0, t1):
    """A `StepTo` (also inside `ClipStepSizeController`) with concrete times must
    run from `t0` to `t1`, strictly monotonic (traced times: see
    `StepTo.traced_input_result`)."""
    while isinstance(controller, ClipStepSizeController):
        controller = controller.controller
    if not isinstance(controller, StepTo):
        return
    ts = controller.ts
    if all(is_concrete(x) for x in (ts, t0, t1)):
        arr = np.asarray(ts, dtype=np.float64)
        if arr[0] != float(t0) or arr[-1] != float(t1):
            raise ValueError(
                f"`StepTo(ts)` must start at t0 = {t0} and end at t1 = {t1}; got ts "
                f"from {arr[0]} to {arr[-1]}. Use e.g. `StepTo(jnp.linspace(t0, t1, n))`."
            )
        if np.any(np.diff(arr) * (1 if float(t1) >= float(t0) else -1) <= 0):
            raise ValueError(
                f"`StepTo(ts)` must be strictly monotonic from t0 to t1; got {arr}."
            )


def traced_input_result(
    t0, t1, dt0, ts_list, brownian_outside=False, controller_result=None
) -> Array:
    """The result code for inputs checked only at run time (traced under `jit`): a
    failure code if `dt0` has the wrong sign or is zero, or a `SaveAt(ts)` leaves
    [t0, t1] or is not monotonic, or the interval leaves a `VirtualBrownianTree`
    (`brownian_outside`, from `_brownian_tree.within_solve`), or the step size
    controller's own check failed (`controller_result`, from its
    `traced_input_result`); `successful` otherwise. The solve starts from it (a
    failure: no step is taken), and `throw=True` raises its message at the end, so
    no host callback is needed for these checks."""
    ok = RESULTS.successful._value
    code = jnp.asarray(ok, jnp.int32)

    def flag(code, bad, result):
        return jnp.where((code == ok) & bad, result._value, code).astype(jnp.int32)

    if dt0 is not None and not all(is_concrete(x) for x in (t0, t1, dt0)):
        bad = (t1 != t0) & ((dt0 == 0) | ((dt0 > 0) != (t1 > t0)))
        code = flag(code, bad, RESULTS.invalid_dt0)
    for ts in ts_list:
        if all(is_concrete(x) for x in (ts, t0, t1)):
            continue  # checked before tracing
        ts = jnp.asarray(ts)
        lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
        code = flag(code, jnp.any((ts < lo) | (ts > hi)), RESULTS.saveat_ts_outside)
        sign = jnp.where(t1 >= t0, 1, -1)
        code = flag(
            code, jnp.any(jnp.diff(ts) * sign < 0), RESULTS.saveat_ts_not_monotonic
        )
    code = flag(code, jnp.asarray(brownian_outside), RESULTS.brownian_outside)
    if controller_result is not None:
        code = jnp.where(code == ok, controller_result, code).astype(jnp.int32)
    return code

"""`diffeqsolve`: validate -> normalise to forward time -> adjoint runs the loop ->
`Solution`."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from . import _validate as validate
from ._brownian import check_brownian_stepping
from ._brownian_tree import within_solve
from ._custom_types import Args, BoolScalarLike, RealScalarLike
from ._interpolation import DenseInterpolation
from ._loop import Problem, State
from ._progress_meter import AbstractProgressMeter, NoProgressMeter
from ._results import RESULTS, Result
from ._saveat import SaveAt, SubSaveAt, sub_saveats, unflatten_like_subs
from ._solution import Solution
from ._terms import AbstractTerm, _DirectedTerm
from .adjoints import AbstractAdjoint, RecursiveCheckpointAdjoint
from .controllers import AbstractStepSizeController, ConstantStepSize
from .solvers import AbstractSolver


def diffeqsolve(
    terms: AbstractTerm,
    solver: AbstractSolver,
    t0: RealScalarLike,
    t1: RealScalarLike,
    dt0: RealScalarLike | None,
    y0,
    args: Args = None,
    *,
    saveat: SaveAt = SaveAt(t1=True),
    stepsize_controller: AbstractStepSizeController = ConstantStepSize(),
    adjoint: AbstractAdjoint = RecursiveCheckpointAdjoint(),
    max_steps: int | None = 4096,
    throw: bool = True,
    progress_meter: AbstractProgressMeter = NoProgressMeter(),
    solver_state=None,
    controller_state=None,
    made_jump: BoolScalarLike | None = None,
) -> Solution:
    """Solve a differential equation from `t0` to `t1`.

    **Arguments:**

    - `terms`: the equation, e.g. `ODETerm(lambda t, y, args: -y)`.
    - `solver`: e.g. `Tsit5()`.
    - `t0`, `t1`: start and end times (`t1 < t0` solves backwards in time).
    - `dt0`: the first step size (signed like `t1 - t0`); `None` lets an adaptive
      controller choose it.
    - `y0`: the initial state: an array or a PyTree of arrays.
    - `args`: passed to every vector field call.
    - `saveat`: what to return (default: the state at `t1`).
    - `stepsize_controller`: `ConstantStepSize()` (default), `PIDController(rtol, atol)`,
      `StepTo(ts)` or `ClipStepSizeController(...)`.
    - `adjoint`: how the solve is differentiated (default
      `RecursiveCheckpointAdjoint()`).
    - `max_steps`: the most steps to take; `None` for an unbounded loop (forward mode
      only).
    - `throw`: raise an error if the solve fails; else report it in `sol.result`.
    - `progress_meter`: e.g. `TqdmProgressMeter()`.
    - `solver_state`, `controller_state`, `made_jump`: continue an earlier solve (see
      `SaveAt(solver_state=True, ...)`).

    **Returns:** a `Solution`.

    **Example:**

        term = ODETerm(lambda t, y, args: -y)
        sol = diffeqsolve(term, Tsit5(), 0.0, 1.0, 0.1, jnp.array([1.0]))
        sol.ys  # [[0.36787944]]
    """
    # Checks of concrete values happen here, outside the compiled solve, so that
    # their errors can name the values received.
    y0 = validate.as_state(y0)
    validate.check_solver_controller(solver, stepsize_controller)
    check_brownian_stepping(terms, stepsize_controller)
    validate.check_max_steps(max_steps, saveat)
    dt0 = validate.check_dt0(t0, t1, dt0, stepsize_controller)
    validate.check_step_to(stepsize_controller, t0, t1)
    saveat = _checked_saveat(saveat, t0, t1)
    # Outside `jit`, compile the solve (once per structure of the inputs, as
    # Diffrax does), rather than running its set-up op by op on every call. Inside
    # `jit` it is traced inline: a nested `jit` would only add lowering time.
    solve = _solve if _inside_jit() else _compiled_solve
    return solve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw,
        progress_meter=progress_meter,
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=made_jump,
        direction=_direction(t0, t1),
    )


def _inside_jit() -> bool:
    # Inside a `jit` trace, even a constant computation gives a tracer.
    return isinstance(jnp.asarray(1) + 1, jax.core.Tracer)


def _solve(
    terms,
    solver,
    t0,
    t1,
    dt0,
    y0,
    args,
    *,
    saveat,
    stepsize_controller,
    adjoint,
    max_steps,
    throw,
    progress_meter,
    solver_state,
    controller_state,
    made_jump,
    direction,
) -> Solution:
    tdtype = _time_dtype(t0, t1, dt0)
    t0_, t1_ = (jnp.asarray(t, tdtype) * direction for t in (t0, t1))
    dt0_ = None if dt0 is None else jnp.asarray(dt0, tdtype) * direction
    terms, brownian_outside = within_solve(terms, t0, t1)
    fwd_terms = terms if _is_one(direction) else _DirectedTerm(terms, direction)
    validate.check_vector_field(fwd_terms, t0_, y0, args)
    controller = stepsize_controller.wrap(direction)
    problem = Problem(
        terms=fwd_terms,
        solver=solver,
        controller=controller,
        saveat=_forward_saveat(saveat, direction, tdtype),
        t0=t0_,
        t1=t1_,
        dt0=dt0_,
        y0=y0,
        args=args,
        max_steps=max_steps,
        progress_meter=progress_meter,
        error_order=solver.error_order(terms),
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=made_jump,
        initial_result=validate.traced_input_result(
            t0,
            t1,
            dt0,
            [sub.ts for sub in sub_saveats(saveat) if sub.ts is not None],
            brownian_outside,
            controller.traced_input_result(t0_, t1_),
        ),
    )
    adjoint.validate(problem)
    state = _integer_leaves_nondifferentiable(adjoint.loop(problem))
    sol = _solution(problem, saveat, state, t0, t1, direction)
    if throw:
        sol = _throw_if_failed(sol)
    return sol


_compiled_solve = eqx.filter_jit(_solve)


def _integer_leaves_nondifferentiable(state: State) -> State:
    # Counters and result codes leaving a custom-differentiated loop can carry
    # (zero) tangents, which `eqx.error_if` (used by `throw=True`) cannot linearise.
    return jtu.tree_map(
        lambda x: (
            lax.stop_gradient(x)
            if eqx.is_array(x) and not eqx.is_inexact_array(x)
            else x
        ),
        state,
    )


def _time_dtype(*times):
    dtype = jnp.result_type(*[t for t in times if t is not None])
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _direction(t0, t1):
    if validate.is_concrete(t0) and validate.is_concrete(t1):
        return 1 if float(t1) >= float(t0) else -1
    return jnp.where(jnp.asarray(t1) >= jnp.asarray(t0), 1, -1)


def _is_one(direction) -> bool:
    return isinstance(direction, int) and direction == 1


def _checked_saveat(saveat: SaveAt, t0, t1) -> SaveAt:
    """`saveat` with every `ts` validated (or wrapped in a run-time check)."""
    return _map_ts(saveat, lambda ts: validate.check_saveat_ts(ts, t0, t1))


def _forward_saveat(saveat: SaveAt, direction, tdtype) -> SaveAt:
    return _map_ts(saveat, lambda ts: jnp.asarray(ts, tdtype) * direction)


def _map_ts(saveat: SaveAt, fn) -> SaveAt:
    if saveat.subs is None:
        return saveat
    subs = []
    for sub in sub_saveats(saveat):
        if sub.ts is not None:
            sub = eqx.tree_at(lambda s: s.ts, sub, fn(sub.ts))
        subs.append(sub)
    return eqx.tree_at(
        lambda s: s.subs,
        saveat,
        unflatten_like_subs(saveat, subs),
        is_leaf=lambda x: x is None,
    )


def _user_times(ts, direction):
    if _is_one(direction):
        return ts
    return jnp.where(jnp.isfinite(ts), ts * direction, ts)


def _solution(problem: Problem, saveat: SaveAt, state: State, t0, t1, direction):
    ts = [_user_times(s.ts, direction) for s in state.saves]
    ys = [s.ys for s in state.saves]
    is_single = isinstance(saveat.subs, SubSaveAt)
    if saveat.subs is None:
        ts_out = ys_out = None
    elif is_single:
        ts_out, ys_out = ts[0], ys[0]
    else:
        ts_out, ys_out = (
            unflatten_like_subs(saveat, ts),
            unflatten_like_subs(saveat, ys),
        )
    interpolation = None
    if state.dense is not None:
        dense_ts, y0s, coeffs = state.dense
        interpolation = DenseInterpolation(
            t0=t0,
            t1=t1,
            ts=dense_ts,
            num_steps=state.num_accepted_steps,
            y0s=y0s,
            coeffs=coeffs,
            direction=direction,
        )
    stats = dict(
        num_steps=state.num_steps,
        num_accepted_steps=state.num_accepted_steps,
        num_rejected_steps=state.num_rejected_steps,
        max_steps=problem.max_steps,
    )
    return Solution(
        t0=t0,
        t1=t1,
        ts=ts_out,
        ys=ys_out,
        interpolation=interpolation,
        stats=stats,
        result=Result(state.result),
        solver_state=state.solver_state if saveat.solver_state else None,
        controller_state=state.controller_state if saveat.controller_state else None,
        made_jump=state.made_jump if saveat.made_jump else None,
    )


def _throw_if_failed(sol: Solution) -> Solution:
    # The whole solution passes through the error's conditional, so that the check
    # runs whenever any part of it is used. (Checking the scalar code alone and
    # tying it to the outputs with `lax.optimization_barrier` was measured to be
    # cheaper to compile, but XLA then removes the check as dead code.)
    code = jnp.asarray(sol.result._value)
    return eqx.branched_error_if(
        sol, code != RESULTS.successful._value, code, RESULTS.messages()
    )

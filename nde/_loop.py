"""The step loop: pure, and ignorant of how it is differentiated.

`run(problem, while_loop)` starts from `init_state(problem)` and repeats `step`
while `is_running`; the adjoint chooses `while_loop` (a plain `lax.while_loop`, a
checkpointed one for reverse mode, a bounded one for forward mode, ...).

Everything happens in the forward time variable: a reverse-time solve has been
turned into a forward one by `_solve.py`, which also validated the inputs.
"""

from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._progress_meter import AbstractProgressMeter
from ._results import RESULTS, Result
from ._saveat import SaveAt, sub_saveats
from ._saving import SaveState, init_save_state, save_final, save_step
from ._terms import AbstractTerm
from ._unvmap import unvmap_any
from .controllers import AbstractStepSizeController
from .solvers import AbstractSolver


class Problem(eqx.Module):
    """Everything a solve needs, in the forward time variable."""

    terms: AbstractTerm
    solver: AbstractSolver
    controller: AbstractStepSizeController
    saveat: SaveAt
    t0: Array
    t1: Array
    dt0: Array | None
    y0: PyTree[Array]
    args: PyTree
    max_steps: int | None = eqx.field(static=True)
    progress_meter: AbstractProgressMeter
    error_order: float | None = eqx.field(static=True)
    solver_state: PyTree | None = None
    controller_state: PyTree | None = None
    made_jump: Array | None = None
    # A failure code for inputs found invalid at run time: then no step is taken.
    initial_result: Array | None = None


class State(eqx.Module):
    """The loop's carry."""

    y: PyTree[Array]
    tprev: Array
    tnext: Array
    made_jump: Array
    solver_state: PyTree
    controller_state: PyTree
    result: Array
    num_steps: Array
    num_accepted_steps: Array
    num_rejected_steps: Array
    saves: list[SaveState]
    dense: PyTree | None  # (ts, y0s, coeffs) with SaveAt(dense=True)


WhileLoop = Callable[..., State]


def _clip_to_end(tprev, tnext, t1):
    # Never overshoot t1, and do not leave a sliver of a step before it: a step
    # within rounding distance of t1 goes all the way.
    base = 1e-10 if jnp.result_type(tnext) == jnp.float64 else 1e-6
    scale = jnp.maximum(jnp.abs(t1), jnp.abs(t1 - tprev))
    return jnp.where(tnext > t1 - base * scale, t1, tnext)


def _dense_init(problem: Problem, coeffs_shape) -> PyTree:
    n = problem.max_steps
    assert n is not None
    ts = jnp.full((n + 1,), jnp.inf, problem.t0.dtype).at[0].set(problem.t0)
    y0s = jtu.tree_map(lambda y: jnp.broadcast_to(y, (n,) + y.shape), problem.y0)
    coeffs = jtu.tree_map(lambda c: jnp.zeros((n,) + c.shape, c.dtype), coeffs_shape)
    return ts, y0s, coeffs


def init_state(problem: Problem) -> State:
    p = problem
    if p.controller_state is not None and p.dt0 is not None:
        tnext, controller_state = p.t0 + p.dt0, p.controller_state
    else:
        tnext, controller_state = p.controller.init(
            p.terms, p.t0, p.t1, p.y0, p.dt0, p.args, p.solver.func, p.error_order
        )
        if p.controller_state is not None:
            # Continuing a solve without `dt0`: the controller picks the first step,
            # its state is the one passed in.
            controller_state = p.controller_state
    tnext = _clip_to_end(p.t0, jnp.minimum(tnext, p.t1), p.t1)
    solver_state = p.solver_state
    if solver_state is None:
        solver_state = p.solver.init(p.terms, p.t0, tnext, p.y0, p.args)
    made_jump = jnp.asarray(False) if p.made_jump is None else jnp.asarray(p.made_jump)
    saves = [
        init_save_state(s, p.t0, p.y0, p.args, p.max_steps)
        for s in sub_saveats(p.saveat)
    ]
    dense = None
    if p.saveat.dense:
        dense_info = eqx.filter_eval_shape(
            p.solver.step, p.terms, p.t0, tnext, p.y0, p.args, solver_state, made_jump
        )[2]
        dense = _dense_init(p, dense_info["coeffs"])
    zero = jnp.asarray(0, jnp.int32)
    return State(
        y=p.y0,
        tprev=p.t0,
        tnext=tnext,
        made_jump=made_jump,
        solver_state=solver_state,
        controller_state=controller_state,
        result=(
            RESULTS.promote(RESULTS.successful)._value
            if p.initial_result is None
            else p.initial_result
        ),
        num_steps=zero,
        num_accepted_steps=zero,
        num_rejected_steps=zero,
        saves=saves,
        dense=dense,
    )


def is_running(problem: Problem, state: State):
    running = (state.tprev < problem.t1) & (state.result == 0)
    if problem.max_steps is not None:
        running = running & (state.num_steps < problem.max_steps)
    return running


def _select(pred, new, old):
    if pred is True:
        return new
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _all_finite(tree) -> Array:
    # One reduction per leaf (a NaN or inf anywhere makes the sum non-finite), so
    # leaves of different dtypes are never combined.
    flags = [
        jnp.isfinite(jnp.sum(x))
        for x in jtu.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    if not flags:
        return jnp.asarray(True)
    return jnp.all(jnp.stack(flags))


def _first_failure(*results) -> Array:
    out = results[0]
    for r in results[1:]:
        out = jnp.where(out == 0, r, out)
    return out


def step(problem: Problem, state: State, meter_key: int | None = None) -> State:
    """One attempted step: solver step, accept/reject, save.

    Once the solve has finished (`is_running` is false), a step changes nothing, so
    the loop may run on while other solves of a `vmap` batch go on (see
    `_unvmap.py`)."""
    p, s = problem, state
    running = is_running(p, s)
    # `made_jump` can only be true if the controller reports jumps, or at the first
    # step of a continued solve (`diffeqsolve(..., made_jump=True)`).
    may_jump = p.controller.may_jump or p.made_jump is not None
    made_jump = s.made_jump if may_jump else False
    y1, y_error, dense_info, solver_state, solver_result = p.solver.step(
        p.terms, s.tprev, s.tnext, s.y, p.args, s.solver_state, made_jump
    )
    keep, tprev, tnext, next_jump, controller_state, controller_result = (
        p.controller.adapt_step_size(
            s.tprev,
            s.tnext,
            s.y,
            y1,
            p.args,
            y_error,
            p.error_order,
            s.controller_state,
        )
    )
    tnext = _clip_to_end(tprev, jnp.minimum(tnext, p.t1), p.t1)
    result = _first_failure(
        s.result,
        jnp.asarray(solver_result._value, jnp.int32),
        jnp.asarray(controller_result._value, jnp.int32),
    )
    if keep is not True:
        result = _stall_check(result, keep, tprev, tnext, s.tnext - s.tprev, y1, p.t1)
    keep_arr = jnp.asarray(keep) & running
    saves = [
        save_step(
            sub, save, keep_arr, s.tprev, s.tnext, s.y, y1, dense_info["coeffs"], p.args
        )
        for sub, save in zip(sub_saveats(p.saveat), s.saves, strict=True)
    ]
    dense = s.dense
    if dense is not None:
        dense = _dense_write(
            dense, s.num_accepted_steps, keep_arr, s.tnext, s.y, dense_info
        )
    progress = (tprev - p.t0) / jnp.where(p.t1 == p.t0, 1, p.t1 - p.t0)
    p.progress_meter.step(meter_key, progress)
    if_running = lambda new, old: _select(running, new, old)
    return State(
        y=_select(keep_arr, y1, s.y),
        tprev=if_running(tprev, s.tprev),
        tnext=if_running(tnext, s.tnext),
        made_jump=if_running(jnp.asarray(next_jump), s.made_jump),
        solver_state=_select(keep_arr, solver_state, s.solver_state),
        controller_state=if_running(controller_state, s.controller_state),
        result=if_running(result, s.result),
        num_steps=s.num_steps + running.astype(jnp.int32),
        num_accepted_steps=s.num_accepted_steps + keep_arr.astype(jnp.int32),
        num_rejected_steps=s.num_rejected_steps
        + (running & jnp.logical_not(keep_arr)).astype(jnp.int32),
        saves=saves,
        dense=dense,
    )


def _stall_check(result, keep, tprev, tnext, old_dt, y1, t1):
    # An adaptive solve that can no longer make progress stops with a clear result
    # instead of looping forever: the step size underflowed, or a rejected step
    # could not be shortened (rounding, or snapping to t1). Typically the vector
    # field returns NaN/inf, or the solution blows up.
    shrank = keep | (tnext - tprev < old_dt)
    stalled = ((tnext <= tprev) | jnp.logical_not(shrank)) & (tprev < t1)
    finite = _all_finite(y1)
    code = jnp.where(finite, RESULTS.dt_min_reached._value, RESULTS.nonfinite._value)
    result = jnp.where((result == 0) & stalled, code, result)
    bad = keep & jnp.logical_not(finite)
    return jnp.where((result == 0) & bad, RESULTS.nonfinite._value, result).astype(
        jnp.int32
    )


def _dense_write(dense, index, keep, tnext, y0, dense_info):
    ts, y0s, coeffs = dense

    def put(buf, v, i):
        old = lax.dynamic_index_in_dim(buf, i, 0, keepdims=False)
        return lax.dynamic_update_index_in_dim(buf, jnp.where(keep, v, old), i, 0)

    ts = put(ts, tnext, index + 1)
    y0s = jtu.tree_map(lambda b, v: put(b, v, index), y0s, y0)
    coeffs = jtu.tree_map(lambda b, v: put(b, v, index), coeffs, dense_info["coeffs"])
    return ts, y0s, coeffs


def run(problem: Problem, while_loop: WhileLoop) -> State:
    """Solve: initialise, loop with the given `while_loop`, finalise.

    `while_loop(cond_fun, body_fun, init_state, *, consts, max_steps, buffers)` must
    behave like `lax.while_loop` with `cond_fun(consts, state)` and
    `body_fun(consts, state)`. The loop passes `consts=problem` explicitly (rather
    than closing over it) so that a custom-differentiated loop can see every input
    it must differentiate with respect to. `buffers(state)` names the parts of the
    state that the loop only writes to, at dynamic indices, and never reads (the
    save buffers): a checkpointing loop need not store copies of them.
    """
    key = problem.progress_meter.init()
    state = while_loop(
        lambda problem, state: unvmap_any(is_running(problem, state)),
        lambda problem, state: step(problem, state, key),
        init_state(problem),
        consts=problem,
        max_steps=problem.max_steps,
        buffers=buffers,
    )
    problem.progress_meter.close(key)
    return finalise(problem, state)


def buffers(state: State) -> PyTree[Array]:
    """The write-only parts of the loop state: the save and dense output buffers."""
    return [(save.ts, save.ys) for save in state.saves], state.dense


def finalise(problem: Problem, state: State) -> State:
    """Flag an unfinished solve, and save what is due at `t1`."""
    result = jnp.where(
        (state.result == 0) & (state.tprev < problem.t1),
        RESULTS.max_steps_reached._value,
        state.result,
    )
    result = jnp.where(
        (result == 0) & jnp.logical_not(_all_finite(state.y)),
        RESULTS.nonfinite._value,
        result,
    ).astype(jnp.int32)
    saves = [
        save_final(sub, save, state.tprev, state.y, problem.args)
        for sub, save in zip(sub_saveats(problem.saveat), state.saves, strict=True)
    ]
    return eqx.tree_at(lambda s: (s.result, s.saves), state, (result, saves))


def result_of(state: State) -> Result:
    return Result(state.result)

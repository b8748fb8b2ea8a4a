"""`ReversibleAdjoint`: backpropagation through an algebraically reversible solver
in O(1) memory, by reconstructing the states backwards instead of storing them.

Forward: the ordinary loop in a plain `while_loop`, which stores nothing but the
times of the accepted steps (one scalar each, through an extra `SubSaveAt(steps=True)`
that records no values).

Backward, three phases, each the VJP of the very code the forward pass ran:

1. `finalise` (what is saved at `t1`);
2. the accepted steps, last to first: `solver.backward_step` recovers the state at
   the start of the step from the state at its end, then the VJP of
   `solver.step` plus what the step saved (`save_step` on empty buffers, so only
   the slots this step wrote receive their cotangents);
3. `init_state` (the solver's initial state and what is saved at `t0`).

For `ReversibleHeun` the sweep of phase 2 is fused: reconstructing a step's start
evaluates the vector field there, and that evaluation's linearisation is carried to
the next step back, where it is the one evaluation the step's VJP needs, so each
step back costs one evaluation (any other reversible solver: two).

Under `vmap` the sweep runs while any element has steps left (an unbatched loop
condition, `_unvmap.py`), each element's carry unchanged once it has none.

The gradients are those of the discretised solve (as `RecursiveCheckpointAdjoint`
computes them), up to the round-off of the reconstruction (Kidger, Foster, Li &
Lyons, "Efficient and accurate gradients for neural SDEs", NeurIPS 2021).
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._loop import Problem, State, finalise, init_state, is_running, step
from .._saveat import SaveAt, SubSaveAt, sub_saveats
from .._saving import SaveState, save_step
from .._unvmap import unvmap_any
from ..solvers._local_linear import linear_dense_info
from ..solvers._reversible_heun import AbstractReversibleSolver, ReversibleHeun
from ._base import AbstractAdjoint


def _no_value(t, y, args):
    return None


def _record_steps(problem: Problem) -> Problem:
    """`problem`, also recording the end time of every accepted step (last sub)."""
    saveat = problem.saveat
    recorder = SubSaveAt(steps=True, fn=_no_value)
    recording = SaveAt(
        subs=(saveat.subs, recorder),
        dense=saveat.dense,
        solver_state=saveat.solver_state,
        controller_state=saveat.controller_state,
        made_jump=saveat.made_jump,
    )
    return eqx.tree_at(lambda p: p.saveat, problem, recording)


def _run_to_t1(problem: Problem) -> State:
    """`_loop.run` with a plain while loop, stopping before `finalise`."""
    meter = problem.progress_meter.init()
    state = lax.while_loop(
        lambda s: is_running(problem, s),
        lambda s: step(problem, s, meter),
        init_state(problem),
    )
    problem.progress_meter.close(meter)
    return state


@eqx.filter_custom_vjp
def _solve(problem: Problem) -> State:
    return finalise(problem, _run_to_t1(problem))


@_solve.def_fwd
def _solve_fwd(perturbed, problem):
    _check_times_not_perturbed(perturbed)
    before_final = _run_to_t1(problem)
    return finalise(problem, before_final), before_final


def _check_times_not_perturbed(perturbed: Problem) -> None:
    times = (perturbed.t0, perturbed.t1, perturbed.dt0, perturbed.saveat)
    if any(jtu.tree_leaves(times)):
        raise NotImplementedError(
            "`ReversibleAdjoint` differentiates with respect to `y0`, `args` and the "
            "parameters in `terms`, not with respect to `t0`, `t1`, `dt0` or "
            "`SaveAt(ts=...)`. Use `adjoint=RecursiveCheckpointAdjoint()` for "
            "gradients with respect to times."
        )


def _zeros_where_none(like, ct):
    return jtu.tree_map(lambda x, g: jnp.zeros_like(x) if g is None else g, like, ct)


def _save_slots(sub: SubSaveAt, n, t_n, has_t0_slot: bool):
    """Where the save buffers of `sub` stood before accepted step `n`: as written by
    `_saving.py`, the `t0` slot (if any), then per step the `ts` it covers and (with
    `steps=True`) its end, in order."""
    if sub.ts is None or len(sub.ts) == 0:
        ts_index = jnp.asarray(0, jnp.int32)
    else:
        ts = jnp.asarray(sub.ts, jnp.result_type(t_n))
        ts_index = jnp.searchsorted(ts, t_n, side="right").astype(jnp.int32)
    index = int(has_t0_slot) + ts_index + n * int(sub.steps)
    return index.astype(jnp.int32), ts_index


@_solve.def_bwd
def _solve_bwd(before_final, grad_obj, perturbed, problem):
    del perturbed
    p_diff, p_rest = eqx.partition(problem, eqx.is_inexact_array)
    full = lambda d: eqx.combine(d, p_rest)
    out_like = eqx.partition(before_final, eqx.is_inexact_array)[0]
    ct = _zeros_where_none(out_like, grad_obj)
    subs = sub_saveats(problem.saveat)[:-1]  # the last one is the step recorder
    ct_saves = [s.ys for s in ct.saves[:-1]]

    ct_p, ct_y = _finalise_vjp(full, p_diff, before_final, ct_saves)
    ct_y = jtu.tree_map(jnp.add, ct_y, ct.y)
    ct_state = (ct_y, ct.solver_state)
    step_ts = before_final.saves[-1].ts

    def step_times(n):
        t_n = jnp.where(n == 0, problem.t0, step_ts[jnp.maximum(n - 1, 0)])
        return t_n, step_ts[n]

    def step_saves_vjp(n, t_n, t_next, y_n, y1):
        """The VJP of what step `n` saved, with respect to the parameters and the
        states at both ends."""

        def saves(p_diff, y, y1):
            q = full(p_diff)
            dense = linear_dense_info(y, y1)
            return [
                _step_saves(sub, save, n, t_n, t_next, y, y1, dense, q.args)
                for sub, save in zip(subs, before_final.saves, strict=False)
            ]

        return jax.vjp(saves, p_diff, y_n, y1)[1](ct_saves)

    if type(problem.solver) is ReversibleHeun:
        ct_state, ct_p = _reversible_heun_sweep(
            full, p_diff, before_final, ct_state, ct_p, step_times, step_saves_vjp
        )
    else:
        ct_state, ct_p = _generic_sweep(
            full, p_diff, before_final, ct_state, ct_p, step_times, subs, ct_saves
        )

    # Cotangents for times are partial, but never used: times are not perturbed.
    return _add(ct_p, _init_vjp(full, p_diff, ct_state, ct_saves))


def _generic_sweep(
    full, p_diff, before_final, ct_state, ct_p, step_times, subs, ct_saves
):
    """The accepted steps, last to first, for any reversible solver: per step,
    `backward_step`, then the VJP of `step` (which evaluates the step again) and of
    what it saved."""
    problem = full(p_diff)

    def body(carry):
        n, state, ct_state, acc = carry
        active = n > 0
        n = jnp.maximum(n - 1, 0)
        t_n, t_next = step_times(n)
        p = problem
        y_n, ss_n = p.solver.backward_step(
            p.terms, t_n, t_next, state[0], p.args, state[1]
        )

        def forward(p_diff, y, ss):
            q = full(p_diff)
            y1, _, dense, ss1, _ = q.solver.step(
                q.terms, t_n, t_next, y, q.args, ss, False
            )
            saves = [
                _step_saves(sub, save, n, t_n, t_next, y, y1, dense, q.args)
                for sub, save in zip(subs, before_final.saves, strict=False)
            ]
            return (y1, ss1), saves

        _, vjp_fn = jax.vjp(forward, p_diff, y_n, ss_n)
        d_p, ct_y_n, ct_ss_n = vjp_fn((ct_state, ct_saves))
        acc = _accumulate(acc, (d_p,), active)
        new = ((y_n, ss_n), (ct_y_n, ct_ss_n))
        return n, *_select(active, new, (state, ct_state)), acc

    state = (before_final.y, before_final.solver_state)
    acc = _zeros_like_cotangent(p_diff)
    carry = (before_final.num_accepted_steps, state, ct_state, acc)
    _, _, ct_state, acc = lax.while_loop(_any_left, body, carry)
    return ct_state, _add(ct_p, acc)


def _linearised(fn, *primals):
    """`fn(*primals)` and the residuals of its linearisation, as a flat list of
    arrays (which a loop can carry to the next step back) and their treedef."""
    out, vjp_fn = jax.vjp(fn, *primals)
    residuals, treedef = jtu.tree_flatten(vjp_fn)
    return out, residuals, treedef


def _reversible_heun_sweep(
    full, p_diff, before_final, ct_state, ct_p, step_times, step_saves_vjp
):
    """The accepted steps of `ReversibleHeun`, last to first, with one vector field
    evaluation per step.

    The step over `[t0, t1]` with control `c` and `P(v) = prod(v, c)` is

        z1 = 2 y0 - z0 + P(v0),   v1 = f(t1, z1),   y1 = y0 + (P(v0) + P(v1)) / 2.

    Going back, `backward_step` evaluates `v0 = f(t0, z0)` anyway: it is evaluated
    here under `jax.vjp`, and its linearisation is carried to the next step back,
    where it is the `v1 = f(t1, z1)` of that step. So the VJP of the step needs no
    evaluation of its own (the generic sweep evaluates twice per step). The
    cotangent of `v` that still has to pass through `f` is carried along with it.

    The control `c` of the next step back is computed (under `jax.vjp`: it may
    depend on parameters, e.g. a CDE's data path) at the end of each step and
    carried too: used where it is computed, XLA would fuse a Brownian tree's walk
    into each consumer (e.g. the outer products of the parameter cotangents) and
    repeat it for every element of theirs.
    """
    problem = full(p_diff)
    terms = problem.terms
    (ct_y, (ct_z, ct_v)) = ct_state
    y, (z, v) = before_final.y, before_final.solver_state
    n_last = before_final.num_accepted_steps

    def vf(t):
        return lambda p_diff, z: full(p_diff).terms.vf(t, z, full(p_diff).args)

    def control_of(n):
        times = step_times(jnp.maximum(n, 0))
        return _linearised(lambda p_diff: full(p_diff).terms.contr(*times), p_diff)

    def prod_vjp(v, control, ct):
        prod = lambda p_diff, v, c: full(p_diff).terms.prod(v, c)
        return jax.vjp(prod, p_diff, v, control)[1](ct)

    _, t_last = step_times(jnp.maximum(n_last - 1, 0))
    _, vf_residuals, vf_treedef = _linearised(vf(t_last), p_diff, z)
    control, c_residuals, c_treedef = control_of(n_last - 1)

    def body(carry):
        n, (y1, z1, v1), (ct_y1, ct_z1, ct_v1), linear1, acc = carry
        vf_residuals1, control, c_residuals = linear1
        active = n > 0
        n = jnp.maximum(n - 1, 0)
        t0, t1 = step_times(n)
        # Back: the state at t0 (as `ReversibleHeun.backward_step`).
        p1 = terms.prod(v1, control)
        z0 = jtu.tree_map(lambda y, z, p: 2 * y - z - p, y1, z1, p1)
        v0, vf_residuals0, _ = _linearised(vf(t0), p_diff, z0)
        p0 = terms.prod(v0, control)
        y0 = jtu.tree_map(lambda y, a, b: y - (a + b) / 2, y1, p0, p1)
        # The VJP of the step and of what it saved.
        d_p_saves, ct_y0_saves, ct_y1_saves = step_saves_vjp(n, t0, t1, y0, y1)
        ct_y1 = _add(ct_y1, ct_y1_saves)
        half = jtu.tree_map(lambda g: g / 2, ct_y1)
        d_p_prod1, ct_v1_prod, ct_c1 = prod_vjp(v1, control, half)
        ct_v1 = _add(ct_v1, ct_v1_prod)
        vf_vjp1 = jtu.tree_unflatten(vf_treedef, vf_residuals1)
        d_p_vf1, ct_z1_vf = vf_vjp1(ct_v1)
        ct_z1 = _add(ct_z1, ct_z1_vf)
        ct_y0 = jtu.tree_map(lambda a, b, c: a + 2 * b + c, ct_y1, ct_z1, ct_y0_saves)
        ct_z0 = jtu.tree_map(jnp.negative, ct_z1)
        ct_p0 = _add(half, ct_z1)
        d_p_prod0, ct_v0, ct_c0 = prod_vjp(v0, control, ct_p0)
        (d_p_control,) = jtu.tree_unflatten(c_treedef, c_residuals)(_add(ct_c0, ct_c1))
        d_p = (d_p_saves, d_p_prod1, d_p_vf1, d_p_prod0, d_p_control)
        acc = _accumulate(acc, d_p, active)
        state, cts = _select(active, ((y0, z0, v0), (ct_y0, ct_z0, ct_v0)), carry[1:3])
        control0, c_residuals0, _ = control_of(n - 1)
        return n, state, cts, (vf_residuals0, control0, c_residuals0), acc

    acc = _zeros_like_cotangent(p_diff)
    linear = (vf_residuals, control, c_residuals)
    carry = (n_last, (y, z, v), (ct_y, ct_z, ct_v), linear, acc)
    _, _, (ct_y, ct_z, ct_v), _, acc = lax.while_loop(_any_left, body, carry)
    return (ct_y, (ct_z, ct_v)), _add(ct_p, acc)


def _any_left(carry):
    # Unbatched under `vmap` (see `_unvmap.py`): the body leaves finished elements
    # unchanged itself, and the carried linearisations need no select.
    return unvmap_any(carry[0] > 0)


def _select(active, new, old):
    return jtu.tree_map(lambda a, b: jnp.where(active, a, b), new, old)


def _zeros_like_cotangent(p_diff):
    return jtu.tree_map(jnp.zeros_like, p_diff)


def _accumulate(acc, d_ps, active):
    """`acc` plus the parameter cotangents `d_ps` of one step, if the element is
    still running.

    (Under `vmap` these are per element even for parameters shared by the batch:
    whether JAX sums them at the end depends on whether `vmap` is inside `grad` or
    outside it, which the backward pass cannot tell.)"""
    total = d_ps[0]
    for d_p in d_ps[1:]:
        total = _add(total, d_p)
    return _add(acc, jtu.tree_map(lambda g: jnp.where(active, g, 0), total))


def _add(a, b):
    return jtu.tree_map(jnp.add, a, b)


def _step_saves(sub, save: SaveState, n, t_n, t_next, y, y1, dense, args):
    """What accepted step `n` writes into the buffers of `sub`, into zeroed buffers."""
    index, ts_index = _save_slots(sub, n, t_n, sub.t0)
    empty = SaveState(
        ts=save.ts,
        ys=jtu.tree_map(jnp.zeros_like, save.ys),
        index=index,
        ts_index=ts_index,
    )
    keep = jnp.asarray(True)
    return save_step(sub, empty, keep, t_n, t_next, y, y1, dense["coeffs"], args).ys


def _finalise_vjp(full, p_diff, before_final: State, ct_saves):
    def saved(p_diff, y):
        state = finalise(full(p_diff), eqx.tree_at(lambda s: s.y, before_final, y))
        return [s.ys for s in state.saves[:-1]]

    _, vjp_fn = jax.vjp(saved, p_diff, before_final.y)
    return vjp_fn(ct_saves)


def _init_vjp(full, p_diff, ct_state, ct_saves):
    def initial(p_diff):
        state = init_state(full(p_diff))
        return (state.y, state.solver_state), [s.ys for s in state.saves[:-1]]

    _, vjp_fn = jax.vjp(initial, p_diff)
    (d_p,) = vjp_fn((ct_state, ct_saves))
    return d_p


class ReversibleAdjoint(AbstractAdjoint):
    """Differentiate an algebraically reversible solver (`ReversibleHeun`) in O(1)
    memory: the backward pass reconstructs each step's starting state from its end
    state, instead of storing or recomputing states. The gradients are exactly those
    of the discretised solve (as with `RecursiveCheckpointAdjoint`), up to the
    round-off of the reconstruction; memory does not grow with the number of steps
    (beyond one time per step), and each step is evaluated only about twice more on
    the backward pass.

    Works for ODEs, CDEs and SDEs; for SDEs the Brownian motion must give the same
    increment for the same interval on the backward pass (`VirtualBrownianTree`, or
    `UnsafeBrownianPath` with fixed steps). Gradients are with respect to `y0`,
    `args` and the parameters in `terms` (not times). Any step size controller
    without jumps; not with `SaveAt(dense=True)`.

    Reference: Kidger, Foster, Li & Lyons, "Efficient and accurate gradients for
    neural SDEs", NeurIPS 2021.

    **Example:**

        diffeqsolve(terms, ReversibleHeun(), t0, t1, dt0, y0, adjoint=ReversibleAdjoint())
    """

    def validate(self, problem: Problem) -> None:
        if not isinstance(problem.solver, AbstractReversibleSolver):
            raise ValueError(
                "`ReversibleAdjoint` reconstructs states backwards, which needs an "
                "algebraically reversible solver; got "
                f"solver={type(problem.solver).__name__}(). Use "
                "`solver=ReversibleHeun()`, or `adjoint=RecursiveCheckpointAdjoint()` "
                "with this solver."
            )
        if problem.max_steps is None:
            raise ValueError(
                "`ReversibleAdjoint` records the time of every step, so it needs an "
                "integer `diffeqsolve(..., max_steps=...)`; got max_steps=None."
            )
        if problem.saveat.dense:
            raise ValueError(
                "`ReversibleAdjoint` does not support `SaveAt(dense=True)`: the dense "
                "output would store every step. Save at `ts` instead, or use "
                "`adjoint=RecursiveCheckpointAdjoint()`."
            )
        if problem.controller.may_jump or problem.made_jump is not None:
            raise ValueError(
                "`ReversibleAdjoint` cannot reconstruct a solve across "
                "discontinuities (`ClipStepSizeController(jump_ts=...)` or "
                "`diffeqsolve(..., made_jump=...)`). Use `step_ts` instead of "
                "`jump_ts`, or `adjoint=RecursiveCheckpointAdjoint()`."
            )

    def loop(self, problem: Problem) -> State:
        state = _solve(_record_steps(problem))
        # Integer outputs of a custom-VJP function carry (symbolic-zero) tangents,
        # which `eqx.error_if` on the result code cannot linearise: cut them.
        nondiff = lax.stop_gradient((state.result, state.num_steps))
        return eqx.tree_at(
            lambda s: (s.saves, s.result, s.num_steps),
            state,
            (state.saves[:-1], *nondiff),
        )

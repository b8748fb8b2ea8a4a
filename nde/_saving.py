"""Saving outputs during the solve: `SaveAt(t0, t1, ts, steps, fn)` and dense output.

Everything here is a pure update of buffers allocated up front, so the loop stays
differentiable. Saving at `ts` inside a step interpolates the step's dense output at
the save times the step covers. How depends on how many that is (the most over a
`vmap` batch): none, nothing is computed; up to a small block (8 for a small
state, fewer for a large one), one vectorised write of that block, plain JAX in
every mode; more, a small inner `while_loop`, whose JVP rule is one masked,
vectorised expression over all save times, so that reverse mode (which cannot
transpose a `while_loop`) works too. The block spares a vmapped solve of a small
state the inner loop's per-iteration cost: with 100 save times over about 25 steps
(the neural_ode recipe's batch), its gradient took 12% less time, its forward solve
22% less.
"""

import functools as ft

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._interpolation import polynomial_value
from ._saveat import SubSaveAt
from ._unvmap import unvmap_max


class SaveState(eqx.Module):
    """Buffers of one `SubSaveAt`: times, values, and where to write next."""

    ts: Array
    ys: PyTree[Array]
    index: Array  # next slot to write
    ts_index: Array  # next entry of `SubSaveAt.ts` to save


def _fill(x):
    dtype = jnp.result_type(x)
    return jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else 0


def _num_slots(sub: SubSaveAt, max_steps: int | None) -> int:
    n = int(sub.t0) + int(sub.t1)
    if sub.ts is not None:
        n += len(sub.ts)
    if sub.steps:
        assert max_steps is not None
        n += max_steps
    return n


def _write(state: SaveState, t, value, pred=True) -> SaveState:
    """Write `(t, value)` at `state.index` where `pred`; advance the index."""
    index = jnp.minimum(state.index, state.ts.shape[0] - 1)

    def put(buf, v):
        old = lax.dynamic_index_in_dim(buf, index, 0, keepdims=False)
        return lax.dynamic_update_index_in_dim(buf, jnp.where(pred, v, old), index, 0)

    ts = put(state.ts, jnp.asarray(t, state.ts.dtype))
    ys = jtu.tree_map(put, state.ys, value)
    advanced = state.index + jnp.asarray(pred).astype(jnp.int32)
    return eqx.tree_at(lambda s: (s.ts, s.ys, s.index), state, (ts, ys, advanced))


def init_save_state(sub: SubSaveAt, t0, y0, args, max_steps) -> SaveState:
    """Allocate the buffers, and save what is due at `t0`."""
    n = _num_slots(sub, max_steps)
    tdtype = jnp.result_type(t0)
    value0 = sub.fn(t0, y0, args)
    ys = jtu.tree_map(
        lambda v: jnp.full((n,) + jnp.shape(v), _fill(v), jnp.result_type(v)), value0
    )
    state = SaveState(
        ts=jnp.full((n,), jnp.inf, tdtype),
        ys=ys,
        index=jnp.asarray(0, jnp.int32),
        ts_index=jnp.asarray(0, jnp.int32),
    )
    if sub.t0:
        state = _write(state, t0, value0)
    if sub.ts is not None and len(sub.ts) > 0:
        state = _save_ts_at_t0(sub, state, t0, value0)
    return state


def _save_ts_at_t0(sub, state, t0, value0):
    # Save times equal to t0 are satisfied by y0 itself.
    ts = jnp.asarray(sub.ts, state.ts.dtype)
    due = ts <= t0
    count = jnp.sum(due).astype(jnp.int32)
    slots = jnp.arange(state.ts.shape[0], dtype=jnp.int32)
    offset = slots - state.index
    mask = (offset >= 0) & (offset < count)
    new_ts = jnp.where(mask, ts[jnp.clip(offset, 0, len(ts) - 1)], state.ts)
    broadcast = lambda buf, v: jnp.where(
        mask.reshape((-1,) + (1,) * jnp.ndim(v)), v, buf
    )
    ys = jtu.tree_map(broadcast, state.ys, value0)
    return SaveState(new_ts, ys, state.index + count, count)


def save_step(sub, state: SaveState, keep, tprev, tnext, y0, y1, coeffs, args):
    """Save what an accepted step `[tprev, tnext]` covers."""
    if sub.ts is not None and len(sub.ts) > 0:
        ts = jnp.asarray(sub.ts, state.ts.dtype)
        # Unrolled: the default method is a `while_loop` (a loop per step).
        after = jnp.searchsorted(ts, tnext, side="right", method="scan_unrolled")
        end = jnp.where(keep, after.astype(jnp.int32), state.ts_index)
        dyn_args, static_args = eqx.partition(args, eqx.is_array)
        ts_buf, ys_buf = _save_ts(
            (sub.fn, static_args),
            ts,
            state.ts_index,
            end,
            state.index,
            tprev,
            tnext,
            y0,
            coeffs,
            state.ts,
            state.ys,
            dyn_args,
        )
        written = end - state.ts_index
        state = SaveState(ts_buf, ys_buf, state.index + written, end)
    if sub.steps:
        state = _write(state, tnext, sub.fn(tnext, y1, args), keep)
    return state


def save_final(sub, state: SaveState, t1, y1, args) -> SaveState:
    if sub.t1:
        state = _write(state, t1, sub.fn(t1, y1, args))
    return state


def _block_size(ys_buf) -> int:
    """Save times written at once: 8 for a small saved value, down to 1 from 1,024
    elements (the block computes all its values, due or not: for a large state,
    the loop's per-iteration cost no longer outweighs that)."""
    size = sum(int(jnp.size(b)) // b.shape[0] for b in jtu.tree_leaves(ys_buf))
    return int(min(8, max(1, 1024 // max(size, 1))))


def _save_ts(fn_static, ts, start, end, slot, *rest):
    """Write the save times `start <= i < end` from slot `slot`: nothing if none is
    due, a vectorised block if at most `_block_size` are, else the inner loop."""
    ys_buf = rest[-2]
    block = min(_block_size(ys_buf), ts.shape[0])
    count = unvmap_max(end - start)
    branch = jnp.where(count == 0, 0, jnp.where(count <= block, 1, 2))
    args = (fn_static, ts, start, end, slot, *rest)
    return lax.switch(
        branch,
        [
            lambda: rest[-3:-1],
            lambda: _interpolate_block(block, *args),
            lambda: _interpolate_into(*args),
        ],
    )


def _interp_one(fn_static, t, tprev, tnext, y0, coeffs, dyn_args):
    fn, static_args = fn_static
    args = eqx.combine(dyn_args, static_args)
    dt = tnext - tprev
    theta = jnp.where(dt == 0, 0, (t - tprev) / jnp.where(dt == 0, 1, dt))
    return fn(t, polynomial_value(y0, coeffs, theta), args)


@ft.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _interpolate_into(
    fn_static, ts, start, end, slot, tprev, tnext, y0, coeffs, ts_buf, ys_buf, dyn_args
):
    """Write `fn(ts[i], y(ts[i]))` for `start <= i < end` into slots from `slot`.

    The loop's condition is unbatched under `vmap` (`unvmap_max`): writes past an
    element's own `end` are masked instead, so the buffers are updated in place
    rather than selected whole at every iteration."""
    count = end - start

    def put(buf, value, j, active):
        old = lax.dynamic_index_in_dim(buf, j, 0, keepdims=False)
        new = jnp.where(active, value.astype(buf.dtype), old)
        return lax.dynamic_update_index_in_dim(buf, new, j, 0)

    def body(carry):
        k, ts_buf, ys_buf = carry
        active = k < count
        t = ts[jnp.minimum(start + k, ts.shape[0] - 1)]
        value = _interp_one(fn_static, t, tprev, tnext, y0, coeffs, dyn_args)
        j = slot + k
        ts_buf = put(ts_buf, t, j, active)
        ys_buf = jtu.tree_map(lambda b, v: put(b, v, j, active), ys_buf, value)
        return k + 1, ts_buf, ys_buf

    zero = jnp.zeros_like(count)
    _, ts_buf, ys_buf = lax.while_loop(
        lambda c: c[0] < unvmap_max(count), body, (zero, ts_buf, ys_buf)
    )
    return ts_buf, ys_buf


def _interpolate_block(
    block,
    fn_static,
    ts,
    start,
    end,
    slot,
    tprev,
    tnext,
    y0,
    coeffs,
    ts_buf,
    ys_buf,
    dyn_args,
):
    """The same as `_interpolate_into` when at most `block` save times are due:
    `block` values computed at once, those not due written out of bounds (dropped)."""
    n_slots = ts_buf.shape[0]
    k = jnp.arange(block, dtype=jnp.int32)
    rows = jnp.where(k < end - start, slot + k, n_slots)
    t_at = ts[jnp.minimum(start + k, ts.shape[0] - 1)]
    values = jax.vmap(
        lambda t: _interp_one(fn_static, t, tprev, tnext, y0, coeffs, dyn_args)
    )(t_at)
    ts_out = ts_buf.at[rows].set(t_at, mode="drop")
    ys_out = jtu.tree_map(
        lambda b, v: b.at[rows].set(v.astype(b.dtype), mode="drop"), ys_buf, values
    )
    return ts_out, ys_out


def _interpolate_masked(
    fn_static, ts, start, end, slot, tprev, tnext, y0, coeffs, ts_buf, ys_buf, dyn_args
):
    """The same as `_interpolate_into`, as a masked expression over every slot."""
    n_slots = ts_buf.shape[0]
    # The entry of `ts` that slot j would hold.
    i = jnp.arange(n_slots, dtype=jnp.int32) - slot + start
    mask = (i >= start) & (i < end)
    t_at = ts[jnp.clip(i, 0, ts.shape[0] - 1)]
    values = jax.vmap(
        lambda t: _interp_one(fn_static, t, tprev, tnext, y0, coeffs, dyn_args)
    )(t_at)
    ts_out = jnp.where(mask, t_at, ts_buf)
    ys_out = jtu.tree_map(
        lambda b, v: jnp.where(
            mask.reshape((-1,) + (1,) * (b.ndim - 1)), v.astype(b.dtype), b
        ),
        ys_buf,
        values,
    )
    return ts_out, ys_out


@_interpolate_into.defjvp
def _interpolate_into_jvp(fn_static, primals, tangents):
    out = _interpolate_into(fn_static, *primals)
    _, out_dot = jax.jvp(ft.partial(_interpolate_masked, fn_static), primals, tangents)
    return out, out_dot

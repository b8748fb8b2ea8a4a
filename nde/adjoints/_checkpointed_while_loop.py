"""A reverse-mode differentiable while loop in O(checkpoints) memory.

`lax.while_loop` cannot be reverse-differentiated: the number of iterations is not
known in advance, so the intermediate states cannot be stored. This loop stores at
most `checkpoints` of them and recomputes the rest on the backward pass.

**Forward pass.** The number of steps `n` is unknown (online checkpointing). States
are stored every `stride` steps, starting with `stride = 1`; when all slots are
full, the stride doubles and every other checkpoint may be overwritten, so the
stored states are always evenly spread over the steps taken so far (0, stride,
2 stride, ...).
When nothing is differentiated, none of this happens: the loop is a plain
`lax.while_loop`.

**Backward pass.** A stack holds the forward checkpoints plus as many free slots.
Steps are differentiated from the last to the first, a *window* of up to `window`
consecutive steps at a time: from the checkpoint at the start of the window, the
window's steps run once more, recording their input states on a tape (`_tape.py`),
and the window's cotangent is pulled back through the steps from the last to the
first, each differentiated afresh from its recorded state. Checkpoints closer than
a window are popped, so windows are as long as allowed. A gap between checkpoints
longer than a window is first cut up by recomputing forward and pushing new
checkpoints: every `window` steps when the free slots suffice, else halfway
(bisection: `O(log)` recomputation per step over a long gap). This is the online,
bisection variant of binomial checkpointing (Griewank & Walther 2000; Stumm &
Walther 2010; Wang & Moin 2009), with the last level done by a tape of states.

**Every step.** With `checkpoints >= max_steps` there is room for every state:
the forward pass records them all on the tape, and the backward pass only
differentiates each step from its state (no forward recomputation).

**Buffers.** Parts of the state that are written once at a dynamic index and never
read (the save buffers of `SaveAt`) are named by `buffers(state)`. They are not
copied into checkpoints, since no step's result depends on their contents; on the
backward pass the final buffers stand in for them, and their cotangents flow back
through each step's writes.

**Window.** The tape holds `window` states: as many as there are checkpoints; or,
with the default `checkpoints=None`, more when the state is small: as many as fit
in `TAPE_BYTES` (1 MiB; at most `TAPE_ROWS`, 1,024, and never more than
`max_steps`). A window's steps are replayed and differentiated by two tight loops,
while each window costs one iteration of the outer backward loop (choose a
checkpoint, record, play back, push): when a step is cheap that iteration
dominates, and for a small state (a batch-1 neural ODE: tens of bytes) a long
window removes almost all of them. Beyond about a thousand steps a longer window
buys nothing more, hence the cap on rows.

**Ring.** When the window is longer than the checkpoint count (the default, for a
state under 1 MiB / checkpoints: 70 KiB at `max_steps=4096`), the forward pass
also writes each step's input state into a ring of `window` rows, so that the
last window is on tape when the backward pass starts: its first iteration plays it
back without replaying it. A solve of at most `window` steps then recomputes no
forward step: its gradient costs what `checkpoints >= max_steps` costs, in at most
1 MiB (a batch-1 or vmapped neural ODE, or a batch-256 one of 4 KiB states over 100
steps: 0.78x Diffrax's gradient instead of 0.96x, when the tape held 64 KiB). The
backward pass reuses the ring as its tape. Without a ring (a window no longer than
the checkpoint count), a solve of fewer steps than checkpoints is on tape all the
same: the stride never doubled, so every state is a checkpoint, and the sorted
checkpoints are played back as they are.

Memory: `O(checkpoints x state + max(checkpoints x state, TAPE_BYTES))`,
independent of the number of steps; with `checkpoints >= max_steps`,
`O(max_steps x state)`. (Under `vmap` each batch element has its own tape: the
state measured here is one element's.)
"""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._tape import StepTape

TAPE_BYTES = 1 << 20
TAPE_ROWS = 1024


def window_size(checkpoints: int, max_steps: int | None, dyn_leaves) -> int:
    """Steps per recorded window: `checkpoints`, or as many states as fit in
    `TAPE_BYTES` when that is more (at most `TAPE_ROWS` and `max_steps`)."""
    state_bytes = sum(jnp.size(x) * jnp.result_type(x).itemsize for x in dyn_leaves)
    fit = min(TAPE_BYTES // max(state_bytes, 1), TAPE_ROWS)
    if max_steps is not None:
        fit = min(fit, max_steps)
    return max(checkpoints, fit)


def default_checkpoints(max_steps: int | None) -> int:
    """About `log2(max_steps)` checkpoints (at least 4)."""
    if max_steps is None:
        raise ValueError(
            "`RecursiveCheckpointAdjoint(checkpoints=None)` sizes its checkpoints from "
            "`max_steps`, but `diffeqsolve(..., max_steps=None)`. Pass an integer "
            "`max_steps` (e.g. 4096), or `RecursiveCheckpointAdjoint(checkpoints=...)`."
        )
    return max(4, (max(max_steps, 2) - 1).bit_length() + 1)


def buffer_kinds(state, buffers) -> tuple[str, ...]:
    """For each leaf of `state`: "buf" (named by `buffers`), "dyn" (another array)
    or "static". Computed once, where the objects of the state are the caller's own
    (identities are not preserved through a custom VJP's residuals)."""
    buffer_ids = {id(x) for x in jtu.tree_leaves(buffers(state))}
    return tuple(
        "buf" if id(x) in buffer_ids else "dyn" if eqx.is_array(x) else "static"
        for x in jtu.tree_leaves(state)
    )


class _Layout:
    """Splits a loop state into its array leaves (`dyn`, checkpointed) and its
    buffer leaves (`bufs`, not checkpointed); non-array leaves are static."""

    def __init__(self, state, kinds):
        leaves, self.treedef = jtu.tree_flatten(state)
        self.kinds = kinds
        self.static = [
            x if k == "static" else None for x, k in zip(leaves, kinds, strict=True)
        ]

    def pack(self, state, flat=False):
        leaves = state if flat else self.treedef.flatten_up_to(state)
        dyn = [x for x, k in zip(leaves, self.kinds, strict=True) if k == "dyn"]
        bufs = [x for x, k in zip(leaves, self.kinds, strict=True) if k == "buf"]
        return dyn, bufs

    def unpack(self, dyn, bufs):
        dyn_iter, buf_iter = iter(dyn), iter(bufs)
        leaves = [
            next(dyn_iter) if k == "dyn" else next(buf_iter) if k == "buf" else s
            for k, s in zip(self.kinds, self.static, strict=True)
        ]
        return jtu.tree_unflatten(self.treedef, leaves)


def _stacked(x, n):
    return jtu.tree_map(lambda a: jnp.zeros((n,) + a.shape, a.dtype), x)


def _put(stack, slot, x):
    return jtu.tree_map(
        lambda s, a: lax.dynamic_update_index_in_dim(s, a, slot, 0), stack, x
    )


def _get(stack, slot):
    return jtu.tree_map(
        lambda s: lax.dynamic_index_in_dim(s, slot, 0, keepdims=False), stack
    )


def _plain(consts, init, cond_fun, body_fun):
    return lax.while_loop(
        lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), init
    )


def _packed_step(layout, body_fun, consts):
    def step(dyn, bufs):
        return layout.pack(body_fun(consts, layout.unpack(dyn, bufs)))

    return step


def _run_forward(cond_fun, body_fun, consts, init, kinds, checkpoints, ring):
    """The loop, storing evenly spread checkpoints of the non-buffer arrays, and,
    if `ring` (a window length) is nonzero, the input states of the last `ring`
    steps in a ring (row `k % ring` holds the state before step `k`): the
    backward pass plays the last window back from it without recomputing it (for a
    solve of at most `ring` steps, nothing is recomputed).

    Slot `s` holds the state after step `at[s]` (-1: empty). A step that is a
    multiple of `stride` is stored in a free slot: an empty one, or one holding a
    step that is no longer a multiple of the stride. If there is none, the stride
    doubles first (freeing every other checkpoint). Data never moves: every step
    writes one slot, a dummy one (index `checkpoints`) when nothing is stored, so
    the loop has no conditionals."""
    layout = _Layout(init, kinds)
    step = _packed_step(layout, body_fun, consts)
    dyn, bufs = layout.pack(init)
    stack = _put(_stacked(dyn, checkpoints + 1), 0, dyn)
    ring_buf = _stacked(dyn, ring) if ring else None
    at = jnp.full((checkpoints + 1,), -1, jnp.int32).at[0].set(0)

    def body(carry):
        dyn, bufs, stack, ring_buf, at, stride, k = carry
        if ring:
            ring_buf = _put(ring_buf, k % ring, dyn)
        dyn, bufs = step(dyn, bufs)
        k = k + 1
        held = at[:checkpoints]
        full = jnp.all((held >= 0) & (held % stride == 0))
        stride = jnp.where((k % stride == 0) & full, 2 * stride, stride)
        free = (held < 0) | (held % stride != 0)
        store = (k % stride == 0) & jnp.any(free)
        slot = jnp.where(store, jnp.argmax(free).astype(jnp.int32), checkpoints)
        stack = _put(stack, slot, dyn)
        return dyn, bufs, stack, ring_buf, at.at[slot].set(k), stride, k

    one, zero = jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32)
    carry = (dyn, bufs, stack, ring_buf, at, one, zero)
    dyn, bufs, stack, ring_buf, at, _, n = lax.while_loop(
        lambda c: cond_fun(consts, layout.unpack(c[0], c[1])), body, carry
    )
    return layout.unpack(dyn, bufs), (stack, ring_buf, at, n, bufs)


@eqx.filter_custom_vjp
def _checkpointed(vjp_arg, cond_fun, body_fun, kinds, checkpoints, window, ring):
    # Not differentiated (a forward solve): no checkpoints needed, so a plain while
    # loop. Carrying unused checkpoint buffers would double the loop's cost.
    consts, init = vjp_arg
    return _plain(consts, init, cond_fun, body_fun)


@_checkpointed.def_fwd
def _checkpointed_fwd(
    perturbed, vjp_arg, cond_fun, body_fun, kinds, checkpoints, window, ring
):
    del perturbed, window
    consts, init = vjp_arg
    return _run_forward(cond_fun, body_fun, consts, init, kinds, checkpoints, ring)


def _inexact_mask(tree):
    return jtu.tree_map(eqx.is_inexact_array, tree)


def _window_start(steps, top, m, window):
    """The checkpoint to start the next window from: the earliest one from which a
    single window reaches step `m`, else the latest one before `m`. (Checkpoints
    above it are no longer needed: popping them is just lowering `top`.)"""
    index = jnp.arange(steps.shape[0], dtype=jnp.int32)
    before = (index <= top) & (steps <= m)
    within = before & (steps >= m - window + 1)
    latest = jnp.max(jnp.where(before, index, 0))
    return jnp.where(jnp.any(within), jnp.argmax(within).astype(jnp.int32), latest)


@_checkpointed.def_bwd
def _checkpointed_bwd(
    residuals,
    grad_obj,
    perturbed,
    vjp_arg,
    cond_fun,
    body_fun,
    kinds,
    checkpoints,
    window,
    ring,
):
    del perturbed, cond_fun
    fwd_stack, ring_buf, at, n, final_bufs = residuals  # ring_buf: None if no ring
    consts, init = vjp_arg
    layout = _Layout(init, kinds)
    step = lambda c, x: _packed_step(layout, body_fun, c)(*x)
    # Every stored state is a usable checkpoint (also those the forward pass had
    # marked free): sort them by step, then as many free slots.
    slots = 2 * checkpoints
    at = at[:checkpoints]
    order = jnp.argsort(jnp.where(at >= 0, at, n + 1))
    stack = jtu.tree_map(
        lambda b: jnp.concatenate([b[order], jnp.zeros_like(b[:checkpoints])]),
        fwd_stack,
    )
    count = jnp.sum(at >= 0).astype(jnp.int32)
    steps = jnp.concatenate([at[order], jnp.zeros_like(at)])
    steps = jnp.where(jnp.arange(slots, dtype=jnp.int32) < count, steps, 0)
    dyn0, _ = layout.pack(init)
    tape = StepTape(step, consts, dyn0, final_bufs, window)

    # Cotangents of the final state's floating-point leaves (zeros for None).
    ct = _final_cotangent(layout, grad_obj, (dyn0, final_bufs))
    ct_c = jtu.tree_map(jnp.zeros_like, tape.c_diff)
    # The first iteration plays back, without recording, the last `on_tape` steps if
    # the forward pass left their states on a tape (one playback loop in the
    # program, not two): the ring (its row `j mod ring` holds step `j`'s input), or,
    # if the solve took fewer steps than there are checkpoints, the checkpoints
    # themselves (the stride never doubled: sorted, row `j` is step `j`'s input).
    if ring:
        tape0, on_tape = ring_buf, jnp.minimum(n, ring)
        row0 = (n - on_tape) % ring
    else:
        tape0 = jtu.tree_map(lambda s: s[:checkpoints], stack)  # = window rows
        on_tape = jnp.where(n < checkpoints, n, 0)
        row0 = jnp.asarray(0, jnp.int32)

    def body(carry):
        # Each iteration records one window of steps on the tape, from the top
        # checkpoint or from the cursor (a state between checkpoints). Either the
        # window ends at step m, and the tape is played backwards; or it advances
        # towards the next checkpoint to push: the next window start if there are
        # enough free slots, else halfway to m (bisection). A full stack overwrites
        # its top.
        stack, steps, top, m, cursor, cursor_at, residuals, ct, ct_c, first = carry
        top = jnp.where(first, top, _window_start(steps, top, m, window))
        i = steps[top]
        gap = m - i + 1
        is_last = first | (gap <= window)
        free = slots - 1 - top
        target = jnp.where((gap - 1) // window <= free, i + window, i + gap // 2)
        resume = jnp.logical_not(is_last) & (cursor_at > i) & (cursor_at < target)
        start = jnp.where(resume, cursor_at, i)
        dyn = jtu.tree_map(
            lambda c, s: jnp.where(resume, c, s), cursor, _get(stack, top)
        )
        length = jnp.where(is_last, gap, jnp.minimum(window, target - start))
        length = jnp.where(first, on_tape, length)
        (new, _), residuals = tape.record(
            (dyn, final_bufs), jnp.where(first, 0, length), residuals
        )
        # Play the tape back only if the window ends at m (zero steps otherwise:
        # a `cond` here would copy the whole tape into its operands).
        d_c, ct = tape.play_backwards(
            residuals,
            jnp.where(is_last, length, 0),
            ct,
            jnp.where(first, row0, 0),
        )
        ct_c = jtu.tree_map(jnp.add, ct_c, d_c)
        # Otherwise push the state reached, once it is the target.
        reached = jnp.logical_not(is_last) & (start + length == target)
        slot = jnp.minimum(top + 1, slots - 1)
        stack = lax.cond(reached, lambda: _put(stack, slot, new), lambda: stack)
        steps = jnp.where(reached, steps.at[slot].set(target), steps)
        top = jnp.where(
            first, top, jnp.where(is_last, top - 1, jnp.where(reached, slot, top))
        )
        cursor_at = jnp.where(is_last | reached, -1, start + length)
        m = jnp.where(first, m - length, jnp.where(is_last, i - 1, m))
        no = jnp.asarray(False)
        return stack, steps, top, m, new, cursor_at, residuals, ct, ct_c, no

    minus_one, first = jnp.asarray(-1, jnp.int32), on_tape > 0
    carry = (stack, steps, count - 1, n - 1, dyn0, minus_one, tape0, ct, ct_c, first)
    *_, (ct_dyn, ct_bufs), ct_c, _ = lax.while_loop(lambda c: c[3] >= 0, body, carry)
    return ct_c, _initial_cotangent(layout, ct_dyn, ct_bufs, init)


def _final_cotangent(layout, grad_obj, like):
    """The cotangent of the final state as `(dyn, bufs)`, zeros for None."""
    ct = layout.pack(layout.treedef.flatten_up_to(grad_obj), flat=True)
    return _zeros_for_none(ct, like)


def _initial_cotangent(layout, ct_dyn, ct_bufs, init):
    """The cotangent of `init`, in its structure (floating-point leaves only)."""
    return eqx.filter(layout.unpack(ct_dyn, ct_bufs), _inexact_mask(init))


def _zeros_for_none(ct, like):
    """Zeros where `ct` is None but `like` is a floating-point array; the
    structure of `eqx.filter(like, eqx.is_inexact_array)` otherwise."""
    return jtu.tree_map(
        lambda c, x: (
            (jnp.zeros_like(x) if c is None else c) if eqx.is_inexact_array(x) else None
        ),
        ct,
        like,
        is_leaf=lambda c: c is None,
    )


def checkpointed_while_loop(
    cond_fun, body_fun, init_state, *, consts, max_steps, buffers, checkpoints
):
    """`lax.while_loop(cond_fun, body_fun, init_state)`, reverse-differentiable
    with respect to `consts` and `init_state` in `O(checkpoints)` memory.

    `cond_fun(consts, state)` and `body_fun(consts, state)` as in `_loop.run`;
    `buffers(state)` names the write-only leaves of the state (see module doc).
    """
    if checkpoints is None and max_steps is None:
        # Forward solves with an unbounded loop are fine; differentiating one is not.
        return _unbounded((consts, init_state), cond_fun, body_fun)
    # The default sizes the tape by bytes too; a number given is the memory asked for.
    budget = checkpoints is None
    if checkpoints is None:
        checkpoints = default_checkpoints(max_steps)
    if not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(
            "`RecursiveCheckpointAdjoint(checkpoints=...)` must be a positive int or "
            f"None; got {checkpoints!r}."
        )
    kinds = buffer_kinds(init_state, buffers)
    if max_steps is not None and checkpoints >= max_steps:
        # Room for every state: the forward pass records them all, and nothing is
        # recomputed but each step's own VJP.
        return _taped((consts, init_state), cond_fun, body_fun, kinds, max_steps)
    checkpoints = max(2, checkpoints + checkpoints % 2)
    window = checkpoints
    if budget:
        leaves = zip(jtu.tree_leaves(init_state), kinds, strict=True)
        window = window_size(
            checkpoints, max_steps, [x for x, k in leaves if k == "dyn"]
        )
    # The ring pays when the window is long next to the gaps between checkpoints (a
    # small state); otherwise it would save a sliver of the replays, for more code.
    ring = window if window > checkpoints else 0
    return _checkpointed(
        (consts, init_state), cond_fun, body_fun, kinds, checkpoints, window, ring
    )


@eqx.filter_custom_vjp
def _taped(vjp_arg, cond_fun, body_fun, kinds, max_steps):
    consts, init = vjp_arg
    return _plain(consts, init, cond_fun, body_fun)


def _whole_tape(vjp_arg, body_fun, kinds, max_steps):
    consts, init = vjp_arg
    layout = _Layout(init, kinds)
    step = lambda c, x: _packed_step(layout, body_fun, c)(*x)
    x0 = layout.pack(init)
    return layout, x0, StepTape(step, consts, *x0, max_steps)


@_taped.def_fwd
def _taped_fwd(perturbed, vjp_arg, cond_fun, body_fun, kinds, max_steps):
    del perturbed
    consts, _ = vjp_arg
    layout, x0, tape = _whole_tape(vjp_arg, body_fun, kinds, max_steps)
    until = lambda x: cond_fun(consts, layout.unpack(*x))
    (dyn, bufs), rows, n = tape.record_until(x0, max_steps, tape.empty, until)
    return layout.unpack(dyn, bufs), (rows, n)


@_taped.def_bwd
def _taped_bwd(
    residuals, grad_obj, perturbed, vjp_arg, cond_fun, body_fun, kinds, max_steps
):
    del perturbed, cond_fun
    rows, n = residuals
    _, init = vjp_arg
    layout, x0, tape = _whole_tape(vjp_arg, body_fun, kinds, max_steps)
    ct = _final_cotangent(layout, grad_obj, x0)
    ct_c, (ct_dyn, ct_bufs) = tape.play_backwards(rows, n, ct)
    return ct_c, _initial_cotangent(layout, ct_dyn, ct_bufs, init)


@eqx.filter_custom_vjp
def _unbounded(vjp_arg, cond_fun, body_fun):
    consts, init = vjp_arg
    return _plain(consts, init, cond_fun, body_fun)


@_unbounded.def_fwd
def _unbounded_fwd(perturbed, vjp_arg, cond_fun, body_fun):
    return _unbounded(vjp_arg, cond_fun, body_fun), None


@_unbounded.def_bwd
def _unbounded_bwd(residuals, grad_obj, perturbed, vjp_arg, cond_fun, body_fun):
    default_checkpoints(None)  # raises the explanatory error

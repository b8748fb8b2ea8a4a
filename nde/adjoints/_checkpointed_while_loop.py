"""A reverse-mode differentiable while loop in O(checkpoints) memory.

`lax.while_loop` cannot be reverse-differentiated: the number of iterations is not
known in advance, so the intermediate states cannot be stored. This loop stores at
most `checkpoints` of them and recomputes the rest on the backward pass.

**Forward pass.** The number of steps `n` is unknown (online checkpointing). States
are stored every `stride` steps, starting with `stride = 1`; when all slots are
full, every other checkpoint is dropped and the stride doubles, so the stored states
are always evenly spread over the steps taken so far (0, stride, 2 stride, ...).
When nothing is differentiated, none of this happens: the loop is a plain
`lax.while_loop`.

**Backward pass.** A stack holds the forward checkpoints plus as many free slots.
Steps are differentiated from the last to the first, a *window* of up to `window`
consecutive steps at a time: from the checkpoint at the start of the window, the
window's steps run once more as a `lax.scan` under `jax.vjp` (so their
linearisation is stored once and each step is evaluated only once more), and the
window's cotangent is pulled back through it. Checkpoints closer than a window are
popped, so windows are as long as allowed. A gap between checkpoints longer than a
window is first cut up by recomputing forward and pushing new checkpoints: every
`window` steps when the free slots suffice, else halfway (bisection: `O(log)`
recomputation per step over a long gap). This is the online, bisection variant of
binomial checkpointing (Griewank & Walther 2000; Stumm & Walther 2010; Wang & Moin
2009), with the last level done by reverse-mode through a short scan.

**Buffers.** Parts of the state that are written once at a dynamic index and never
read (the save buffers of `SaveAt`) are named by `buffers(state)`. They are not
copied into checkpoints, since no step's result depends on their contents; on the
backward pass the final buffers stand in for them, and their cotangents flow back
through each step's writes.

Memory: `O(checkpoints x state + window x one step's linearisation)`, independent
of the number of steps.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu


def default_checkpoints(max_steps: int | None) -> int:
    """About `log2(max_steps)` checkpoints (at least 4)."""
    if max_steps is None:
        raise ValueError(
            "`RecursiveCheckpointAdjoint(checkpoints=None)` sizes its checkpoints from "
            "`max_steps`, but `diffeqsolve(..., max_steps=None)`. Pass an integer "
            "`max_steps` (e.g. 4096), or `RecursiveCheckpointAdjoint(checkpoints=...)`."
        )
    return max(4, (max(max_steps, 2) - 1).bit_length() + 1)


class _Layout:
    """Splits a loop state into its array leaves (`dyn`, checkpointed) and its
    buffer leaves (`bufs`, not checkpointed); non-array leaves are static."""

    def __init__(self, state, buffers):
        leaves, self.treedef = jtu.tree_flatten(state)
        buffer_ids = {id(x) for x in jtu.tree_leaves(buffers(state))}
        self.kinds = tuple(
            "buf" if id(x) in buffer_ids else "dyn" if eqx.is_array(x) else "static"
            for x in leaves
        )
        self.static = [
            x if k == "static" else None
            for x, k in zip(leaves, self.kinds, strict=True)
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


def _run_forward(cond_fun, body_fun, consts, init, buffers, checkpoints):
    """The loop, storing evenly spread checkpoints of the non-buffer arrays."""
    layout = _Layout(init, buffers)
    step = _packed_step(layout, body_fun, consts)
    dyn, bufs = layout.pack(init)
    stack = _put(_stacked(dyn, checkpoints), 0, dyn)

    def compact(stack):
        # Keep the even slots (steps 0, 2 stride, 4 stride, ...) in the first half.
        index = jnp.arange(checkpoints, dtype=jnp.int32) * 2 % checkpoints
        return jtu.tree_map(lambda s: s[index], stack)

    def body(carry):
        dyn, bufs, stack, count, stride, k = carry
        dyn, bufs = step(dyn, bufs)
        k = k + 1
        squeeze = (k % stride == 0) & (count == checkpoints)
        stack = lax.cond(squeeze, compact, lambda s: s, stack)
        count = jnp.where(squeeze, checkpoints // 2, count)
        stride = jnp.where(squeeze, 2 * stride, stride)
        store = k % stride == 0
        slot = jnp.minimum(count, checkpoints - 1)
        stack = lax.cond(store, lambda s: _put(s, slot, dyn), lambda s: s, stack)
        return dyn, bufs, stack, count + store, stride, k

    one, zero = jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32)
    carry = (dyn, bufs, stack, one, one, zero)
    dyn, bufs, stack, count, stride, n = lax.while_loop(
        lambda c: cond_fun(consts, layout.unpack(c[0], c[1])), body, carry
    )
    return layout.unpack(dyn, bufs), (stack, count, stride, n, bufs)


@eqx.filter_custom_vjp
def _checkpointed(vjp_arg, cond_fun, body_fun, buffers, checkpoints, window):
    # Not differentiated (a forward solve): no checkpoints needed, so a plain while
    # loop. Carrying unused checkpoint buffers would double the loop's cost.
    consts, init = vjp_arg
    return _plain(consts, init, cond_fun, body_fun)


@_checkpointed.def_fwd
def _checkpointed_fwd(
    perturbed, vjp_arg, cond_fun, body_fun, buffers, checkpoints, window
):
    del perturbed, window
    consts, init = vjp_arg
    return _run_forward(cond_fun, body_fun, consts, init, buffers, checkpoints)


def _inexact_mask(tree):
    return jtu.tree_map(eqx.is_inexact_array, tree)


def _window(step, window, c_rest, x_rest, length):
    """`length <= window` steps as a function of the floating-point parts of the
    consts and of the state `x = (dyn, bufs)`, for `jax.vjp`.

    The steps run as a fixed-length scan (iterations past `length` are skipped by a
    `cond`), so that reverse mode stores their linearisation once."""

    def run(c_diff, x_diff):
        one_step = step(eqx.combine(c_diff, c_rest))

        def body(x, k):
            return lax.cond(k < length, lambda x: one_step(*x), lambda x: x, x), None

        ks = jnp.arange(window, dtype=jnp.int32)
        x, _ = lax.scan(body, eqx.combine(x_diff, x_rest), ks)
        return eqx.filter(x, _inexact_mask(x))

    return run


@_checkpointed.def_bwd
def _checkpointed_bwd(
    residuals,
    grad_obj,
    perturbed,
    vjp_arg,
    cond_fun,
    body_fun,
    buffers,
    checkpoints,
    window,
):
    del perturbed, cond_fun
    fwd_stack, count, stride, n, final_bufs = residuals
    consts, init = vjp_arg
    layout = _Layout(init, buffers)
    c_diff, c_rest = eqx.partition(consts, eqx.is_inexact_array)
    step = lambda c: _packed_step(layout, body_fun, c)
    slots = 2 * checkpoints
    stack = jtu.tree_map(lambda b: jnp.concatenate([b, jnp.zeros_like(b)]), fwd_stack)
    index = jnp.arange(slots, dtype=jnp.int32)
    steps = jnp.where(index < count, index * stride, 0)

    # Cotangents of the final state's floating-point leaves (zeros for None).
    dyn0, _ = layout.pack(init)
    ct = layout.pack(layout.treedef.flatten_up_to(grad_obj), flat=True)
    ct = _zeros_for_none(ct, (dyn0, final_bufs))
    ct_c = jtu.tree_map(jnp.zeros_like, c_diff)

    def advance(dyn, num):
        one_step = step(consts)
        return lax.fori_loop(0, num, lambda _, d: one_step(d, final_bufs)[0], dyn)

    def pop(carry):
        stack, steps, top, *rest = carry
        return (stack, steps, top - 1, *rest)

    def differentiate(carry):
        # The last window, [start, m], from the top checkpoint. Normally the window
        # starts at the checkpoint; only if no slot is free for a closer one does it
        # start later, recomputed from the checkpoint (which then stays).
        stack, steps, top, m, ct, ct_c = carry
        i = steps[top]
        start = jnp.maximum(i, m - window + 1)
        x = (advance(_get(stack, top), start - i), final_bufs)
        x_diff, x_rest = eqx.partition(x, _inexact_mask(x))
        run = _window(step, window, c_rest, x_rest, m - start + 1)
        _, vjp_fn = jax.vjp(run, c_diff, x_diff)
        d_c, ct = vjp_fn(ct)
        top = jnp.where(start == i, top - 1, top)
        return stack, steps, top, start - 1, ct, jtu.tree_map(jnp.add, ct_c, d_c)

    def recompute(carry):
        stack, steps, top, m, *rest = carry
        i = steps[top]
        gap = m - i + 1
        free = slots - 1 - top
        # Enough free slots: a checkpoint every `window` steps (one recomputation);
        # else halve the gap (bisection).
        j = jnp.where((gap - 1) // window <= free, i + window, i + gap // 2)
        new = advance(_get(stack, top), j - i)
        return (_put(stack, top + 1, new), steps.at[top + 1].set(j), top + 1, m, *rest)

    def body(carry):
        _, steps, top, m, *_ = carry
        i = steps[top]
        below = steps[jnp.maximum(top - 1, 0)]
        # Pop a checkpoint past step m, or one made redundant by the checkpoint below
        # it, from which a single window still reaches step m.
        redundant = (top > 0) & (m - below + 1 <= window)
        direct = (m - i + 1 <= window) | (top == slots - 1)
        branch = jnp.where((i > m) | redundant, 0, jnp.where(direct, 1, 2))
        return lax.switch(branch, (pop, differentiate, recompute), carry)

    carry = (stack, steps, count - 1, n - 1, ct, ct_c)
    *_, (ct_dyn, ct_bufs), ct_c = lax.while_loop(lambda c: c[3] >= 0, body, carry)
    ct_init = layout.unpack(ct_dyn, ct_bufs)
    return ct_c, eqx.filter(ct_init, _inexact_mask(init))


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
    if checkpoints is None:
        checkpoints = default_checkpoints(max_steps)
    if not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(
            "`RecursiveCheckpointAdjoint(checkpoints=...)` must be a positive int or "
            f"None; got {checkpoints!r}."
        )
    checkpoints = max(2, checkpoints + checkpoints % 2)
    return _checkpointed(
        (consts, init_state), cond_fun, body_fun, buffers, checkpoints, checkpoints
    )


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

"""A reverse-mode differentiable while loop in O(checkpoints) memory.

`lax.while_loop` cannot be reverse-differentiated: the number of iterations is not
known in advance, so the intermediate states cannot be stored. This loop stores at
most `checkpoints` of them and recomputes the rest on the backward pass.

Forward pass (online, the number of steps `n` is unknown): states are stored every
`stride` steps, starting with `stride = 1`. When the `checkpoints` slots are full,
every other checkpoint is dropped and the stride doubles, so the stored states are
always evenly spread over the steps taken so far (0, stride, 2 stride, ...).

Backward pass: a stack of checkpoints (those of the forward pass, plus `checkpoints`
more slots) is walked from the last step to the first. To differentiate step `m`
the loop needs the state before it: if the top checkpoint is that state, it applies
the step's VJP and pops it; otherwise it recomputes forward from the top checkpoint
and pushes a new one, at the next step if enough slots are free (no further
recomputation), else halfway to `m` (bisection: `log2` depth, `O(L log L)`
recomputation over a segment of `L` steps). This is the online, bisection variant of
binomial checkpointing (Griewank & Walther 2000; Stumm & Walther 2010; Wang & Moin
2009).

Memory is `O(checkpoints x state)`, independent of the number of steps.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu


def default_checkpoints(max_steps: int | None) -> int:
    if max_steps is None:
        raise ValueError(
            "`RecursiveCheckpointAdjoint(checkpoints=None)` sizes its checkpoints from "
            "`max_steps`, but `diffeqsolve(..., max_steps=None)`. Pass an integer "
            "`max_steps` (e.g. 4096), or `RecursiveCheckpointAdjoint(checkpoints=...)`."
        )
    return max(4, 2 * ((max(max_steps, 2) - 1).bit_length() + 1) // 2)


def _buffer(state, n):
    return jtu.tree_map(lambda x: jnp.zeros((n,) + x.shape, x.dtype), state)


def _put(buf, slot, state):
    return jtu.tree_map(
        lambda b, x: lax.dynamic_update_index_in_dim(b, x, slot, 0), buf, state
    )


def _get(buf, slot):
    return jtu.tree_map(
        lambda b: lax.dynamic_index_in_dim(b, slot, 0, keepdims=False), buf
    )


def _run_forward(cond_fun, body_fun, consts, init, checkpoints):
    """The loop, storing evenly spread checkpoints of the (array part of) state."""
    dyn, static = eqx.partition(init, eqx.is_array)
    buf = _put(_buffer(dyn, checkpoints), 0, dyn)
    full = lambda d: eqx.combine(d, static)

    def compact(buf):
        # Keep the even slots (steps 0, 2 stride, 4 stride, ...) in the first half.
        index = jnp.arange(checkpoints) * 2 % checkpoints
        return jtu.tree_map(lambda b: b[index], buf)

    def body(carry):
        dyn, buf, count, stride, k = carry
        dyn = eqx.partition(body_fun(consts, full(dyn)), eqx.is_array)[0]
        k = k + 1
        due = k % stride == 0
        squeeze = due & (count == checkpoints)
        buf = lax.cond(squeeze, compact, lambda b: b, buf)
        count = jnp.where(squeeze, checkpoints // 2, count)
        stride = jnp.where(squeeze, 2 * stride, stride)
        store = k % stride == 0
        slot = jnp.minimum(count, checkpoints - 1)
        buf = lax.cond(store, lambda b: _put(b, slot, dyn), lambda b: b, buf)
        count = count + store
        return dyn, buf, count, stride, k

    one, zero = jnp.asarray(1, jnp.int32), jnp.asarray(0, jnp.int32)
    carry = (dyn, buf, one, one, zero)
    dyn, buf, count, stride, n = lax.while_loop(
        lambda c: cond_fun(consts, full(c[0])), body, carry
    )
    return full(dyn), (buf, count, stride, n)


@eqx.filter_custom_vjp
def _checkpointed(vjp_arg, cond_fun, body_fun, checkpoints):
    # Not differentiated (a forward solve): no checkpoints needed, so a plain while
    # loop. Carrying unused checkpoint buffers would double the loop's cost.
    consts, init = vjp_arg
    return lax.while_loop(
        lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), init
    )


@_checkpointed.def_fwd
def _checkpointed_fwd(perturbed, vjp_arg, cond_fun, body_fun, checkpoints):
    consts, init = vjp_arg
    return _run_forward(cond_fun, body_fun, consts, init, checkpoints)


@_checkpointed.def_bwd
def _checkpointed_bwd(
    residuals, grad_obj, perturbed, vjp_arg, cond_fun, body_fun, checkpoints
):
    del perturbed
    fwd_buf, count, stride, n = residuals
    consts, init = vjp_arg
    dyn0, static = eqx.partition(init, eqx.is_array)
    c_diff, c_rest = eqx.partition(consts, eqx.is_inexact_array)
    slots = 2 * checkpoints
    stack = jtu.tree_map(lambda b: jnp.concatenate([b, jnp.zeros_like(b)]), fwd_buf)
    steps = jnp.where(jnp.arange(slots) < count, jnp.arange(slots) * stride, 0)
    full = lambda d: eqx.combine(d, static)

    def advance(dyn, num):
        step = lambda _, d: eqx.partition(body_fun(consts, full(d)), eqx.is_array)[0]
        return lax.fori_loop(0, num, step, dyn)

    def step_vjp(dyn, ct_state):
        s_diff, s_rest = eqx.partition(dyn, eqx.is_inexact_array)

        def f(c_diff, s_diff):
            out = body_fun(
                eqx.combine(c_diff, c_rest), full(eqx.combine(s_diff, s_rest))
            )
            return eqx.partition(
                eqx.partition(out, eqx.is_array)[0], eqx.is_inexact_array
            )[0]

        _, vjp_fn = jax.vjp(f, c_diff, s_diff)
        return vjp_fn(ct_state)

    # Cotangent of the final state's floating-point leaves (None: zero).
    s_diff_like = eqx.partition(dyn0, eqx.is_inexact_array)[0]
    ct_state = jtu.tree_map(
        lambda x, g: jnp.zeros_like(x) if g is None else g, s_diff_like, grad_obj
    )
    ct_consts = jtu.tree_map(jnp.zeros_like, c_diff)

    def body(carry):
        stack, steps, top, m, ct_state, ct_consts = carry
        i = steps[top]
        dyn = _get(stack, top)

        def differentiate(_):
            d_consts, d_state = step_vjp(dyn, ct_state)
            new_ct_consts = jtu.tree_map(jnp.add, ct_consts, d_consts)
            return stack, steps, top - 1, m - 1, d_state, new_ct_consts

        def recompute(_):
            free = slots - 1 - top
            j = jnp.where(free >= m - i, i + 1, i + (m - i + 1) // 2)
            new = advance(dyn, j - i)
            return (
                _put(stack, top + 1, new),
                steps.at[top + 1].set(j),
                top + 1,
                m,
                ct_state,
                ct_consts,
            )

        def pop(_):
            # A checkpoint past step m (e.g. the final state): no longer needed.
            return stack, steps, top - 1, m, ct_state, ct_consts

        branch = jnp.where(i > m, 0, jnp.where(i == m, 1, 2))
        return lax.switch(branch, (pop, differentiate, recompute), None)

    carry = (stack, steps, count - 1, n - 1, ct_state, ct_consts)
    *_, ct_state, ct_consts = lax.while_loop(lambda c: c[3] >= 0, body, carry)
    return ct_consts, ct_state


def checkpointed_while_loop(
    cond_fun, body_fun, init_state, *, consts, max_steps, checkpoints
):
    """`lax.while_loop(cond_fun, body_fun, init_state)`, reverse-differentiable
    with respect to `consts` and `init_state` in `O(checkpoints)` memory."""
    if checkpoints is None and max_steps is None:
        # Forward solves with an unbounded loop are fine; differentiating one is not.
        return _unbounded((consts, init_state), cond_fun, body_fun)
    if checkpoints is None:
        checkpoints = default_checkpoints(max_steps)
    checkpoints = max(2, int(checkpoints) + int(checkpoints) % 2)
    return _checkpointed((consts, init_state), cond_fun, body_fun, checkpoints)


@eqx.filter_custom_vjp
def _unbounded(vjp_arg, cond_fun, body_fun):
    consts, init = vjp_arg
    return lax.while_loop(
        lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), init
    )


@_unbounded.def_fwd
def _unbounded_fwd(perturbed, vjp_arg, cond_fun, body_fun):
    return _unbounded(vjp_arg, cond_fun, body_fun), None


@_unbounded.def_bwd
def _unbounded_bwd(residuals, grad_obj, perturbed, vjp_arg, cond_fun, body_fun):
    default_checkpoints(None)  # raises the explanatory error

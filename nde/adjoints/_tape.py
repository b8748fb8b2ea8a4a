"""Reverse mode through a variable number of steps: record the states, then
differentiate the steps from the last to the first.

`lax.scan` can be differentiated, but only over a fixed number of iterations; a
window with fewer steps than that would pay for the rest (masked iterations still
write and read their residuals). The tape runs exactly `length` steps: one
`while_loop` runs them and stores each step's input state in `window` preallocated
slots; a second `while_loop` goes from the last slot to the first, differentiates
that step afresh under `jax.vjp` and pulls the cotangent through it.

Only states are stored, not the steps' linearisations (their VJP residuals: for a
neural vector field, the activations of every stage, often a hundred times the
state). Storing the linearisations saves one evaluation of each step but streams
all of them through memory twice; differentiating afresh keeps each step's
linearisation inside one loop iteration, where XLA fuses it and it stays in cache.
Measured on the batch-256 neural ODE of `benchmarks/ode_gradient.py`: as fast or
faster, and far less memory (see `README.md`).

The parts of the state that are write-only buffers (the save buffers of `SaveAt`,
see `_checkpointed_while_loop.py`) are not stored: a step does not read them, so
one stand-in serves every step.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu


def _inexact_mask(tree):
    return jtu.tree_map(eqx.is_inexact_array, tree)


class StepTape:
    """Records up to `window` applications of `step(consts, (dyn, bufs)) -> (dyn,
    bufs)`.

    **Arguments:**

    - `step`: one step; differentiated with respect to the floating-point leaves
      of `consts` and of the state.
    - `consts`: its fixed inputs.
    - `dyn`: an example of the stored part of the state (for shapes).
    - `bufs`: the write-only part, used as the stand-in on playback.
    - `window`: the most steps one recording holds.
    """

    def __init__(self, step, consts, dyn, bufs, window):
        self.step = step
        self.consts = consts
        self.c_diff, self.c_rest = eqx.partition(consts, eqx.is_inexact_array)
        self.bufs = bufs
        self.window = window
        self.empty = jtu.tree_map(
            lambda a: jnp.zeros((window,) + jnp.shape(a), jnp.result_type(a)), dyn
        )

    def record(self, x, length, tape):
        """Run `length <= window` steps from `x = (dyn, bufs)`; return the final
        state and the tape holding their input states."""
        x, tape, _ = self.record_until(x, length, tape, None)
        return x, tape

    def record_until(self, x, length, tape, until):
        """As `record`, but stop earlier, before the first step from a state where
        `until(x)` is false (if `until` is not None); return the final state, the
        tape and the number of steps taken."""

        def body(carry):
            k, x, tape = carry
            tape = jtu.tree_map(
                lambda t, a: lax.dynamic_update_index_in_dim(t, a, k, 0), tape, x[0]
            )
            return k + 1, self.step(self.consts, x), tape

        def cond(carry):
            k, x, _ = carry
            return (k < length) if until is None else (k < length) & until(x)

        zero = jnp.asarray(0, jnp.int32)
        k, x, tape = lax.while_loop(cond, body, (zero, x, tape))
        return x, tape, k

    def play_backwards(self, tape, length, ct_x, first_row=0):
        """Pull the cotangent `ct_x` of the state after `length` recorded steps back
        to the state before them; returns `(ct_consts, ct_x)` (floating-point
        leaves only). The steps' states are in rows `first_row, first_row + 1, ...`
        (modulo `window`: a ring)."""

        def f(c_diff, x_diff, x_rest):
            out = self.step(
                eqx.combine(c_diff, self.c_rest), eqx.combine(x_diff, x_rest)
            )
            return eqx.filter(out, _inexact_mask(out))

        def body(carry):
            k, ct_x, ct_c = carry
            k = k - 1
            row = (first_row + k) % self.window
            dyn = jtu.tree_map(
                lambda t: lax.dynamic_index_in_dim(t, row, 0, keepdims=False), tape
            )
            x = (dyn, self.bufs)
            x_diff, x_rest = eqx.partition(x, _inexact_mask(x))
            _, vjp_fn = jax.vjp(lambda c, xd: f(c, xd, x_rest), self.c_diff, x_diff)
            d_c, ct_x = vjp_fn(ct_x)
            return k, ct_x, jtu.tree_map(jnp.add, ct_c, d_c)

        ct_c = jtu.tree_map(jnp.zeros_like, self.c_diff)
        _, ct_x, ct_c = lax.while_loop(
            lambda c: c[0] > 0, body, (jnp.asarray(length, jnp.int32), ct_x, ct_c)
        )
        return ct_c, ct_x

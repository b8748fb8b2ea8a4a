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
faster, and far less memory (see `README.md`). Where a whole window of
linearisations is small (a few hundred KiB: tiny states and networks, where the
time goes to per-operation overhead, not to memory), `make_tape` keeps
linearisations instead (`LinearisationTape`): playback then runs only the
backward half of each step.

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
        self.empty = jtu.tree_map(
            lambda a: jnp.zeros((window,) + jnp.shape(a), jnp.result_type(a)), dyn
        )

    def record(self, x, length, tape, until=None):
        """Run `length <= window` steps from `x = (dyn, bufs)`; return the final
        state and the tape holding their input states. With `until(x) -> bool`,
        stop earlier, before the first step from a state where it is false; then
        also return the number of steps taken."""

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
        return (x, tape) if until is None else (x, tape, k)

    def play_backwards(self, tape, length, ct_x):
        """Pull the cotangent `ct_x` of the state after `length` recorded steps back
        to the state before them; returns `(ct_consts, ct_x)` (floating-point
        leaves only)."""

        def f(c_diff, x_diff, x_rest):
            out = self.step(
                eqx.combine(c_diff, self.c_rest), eqx.combine(x_diff, x_rest)
            )
            return eqx.filter(out, _inexact_mask(out))

        def body(carry):
            k, ct_x, ct_c = carry
            k = k - 1
            dyn = jtu.tree_map(
                lambda t: lax.dynamic_index_in_dim(t, k, 0, keepdims=False), tape
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


_SMALL_TAPE = 256 * 1024  # bytes: a window of linearisations this size stays in cache


def make_tape(step, consts, dyn, bufs, window):
    """A `LinearisationTape` if `window` steps' linearisations take at most
    `_SMALL_TAPE` bytes, else a `StepTape` (states)."""
    linearised = LinearisationTape(step, consts, (dyn, bufs), window)
    if linearised.nbytes <= _SMALL_TAPE:
        return linearised
    return StepTape(step, consts, dyn, bufs, window)


class LinearisationTape:
    """Like `StepTape`, but records each step's linearisation (the leaves of its
    VJP) rather than its input state, so playback runs only the backward half of
    each step. For steps whose linearisation is small (see `make_tape`).

    Residuals that are the consts themselves (e.g. a network's weights, which the
    VJP of a matrix product needs) are recognised by identity and not stored."""

    def __init__(self, step, consts, x, window):
        self.step = step
        self.window = window
        self.c_diff, self.c_rest = eqx.partition(consts, eqx.is_inexact_array)
        self._const_leaves = [c for c in jtu.tree_leaves(consts) if eqx.is_array(c)]
        self.treedef = None
        # `x` is an argument, not a closure: its leaves are then abstract, as in the
        # loop that records. (A leaf that is a concrete constant, e.g. a flag made
        # at trace time, can give a VJP with another set of residuals.)
        shapes = jax.eval_shape(lambda x: self._linearise(x)[1], x)
        self._probe_mask = self._mask
        self._layout = _RowLayout(shapes)
        self.empty = self._layout.empty(window)
        self.nbytes = sum(int(t.size) * t.dtype.itemsize for t in self.empty)

    def _linearise(self, x):
        """One step under `jax.vjp`: the next state and the residuals to store."""
        x_diff, x_rest = eqx.partition(x, _inexact_mask(x))

        def f(c_diff, x_diff):
            out = self.step(
                eqx.combine(c_diff, self.c_rest), eqx.combine(x_diff, x_rest)
            )
            return eqx.partition(out, _inexact_mask(out))

        out, vjp_fn, aux = jax.vjp(f, self.c_diff, x_diff, has_aux=True)
        leaves, self.treedef = jtu.tree_flatten(vjp_fn)
        # Which residuals are consts (by identity: they pass through unchanged).
        self._mask = [
            next((i for i, c in enumerate(self._const_leaves) if leaf is c), None)
            for leaf in leaves
        ]
        stored = [leaf for leaf, m in zip(leaves, self._mask, strict=True) if m is None]
        return eqx.combine(out, aux), stored

    def record(self, x, length, tape):
        """As `StepTape.record` (without `until`)."""

        def body(carry):
            k, x, tape = carry
            x, stored = self._linearise(x)
            rows = self._layout.pack(stored)
            tape = tuple(
                lax.dynamic_update_index_in_dim(t, r, k, 0)
                for t, r in zip(tape, rows, strict=True)
            )
            return k + 1, x, tape

        zero = jnp.asarray(0, jnp.int32)
        _, x, tape = lax.while_loop(lambda c: c[0] < length, body, (zero, x, tape))
        if self._mask != self._probe_mask:
            raise AssertionError("nde internal error: residual layouts differ.")
        return x, tape

    def play_backwards(self, tape, length, ct_x):
        """As `StepTape.play_backwards`."""

        def body(carry):
            k, ct_x, ct_c = carry
            k = k - 1
            rows = [lax.dynamic_index_in_dim(t, k, 0, keepdims=False) for t in tape]
            stored = iter(self._layout.unpack(rows))
            leaves = [
                next(stored) if m is None else self._const_leaves[m] for m in self._mask
            ]
            vjp_fn = jtu.tree_unflatten(self.treedef, leaves)
            d_c, ct_x = vjp_fn(ct_x)
            return k, ct_x, jtu.tree_map(jnp.add, ct_c, d_c)

        ct_c = jtu.tree_map(jnp.zeros_like, self.c_diff)
        _, ct_x, ct_c = lax.while_loop(
            lambda c: c[0] > 0, body, (jnp.asarray(length, jnp.int32), ct_x, ct_c)
        )
        return ct_c, ct_x


_SMALL = 4096  # residuals with at most this many elements share a row


class _RowLayout:
    """The residuals of one step as rows: the small ones of each dtype flattened
    and concatenated into one row, each large one a row of its own. A step then
    writes (and the playback reads) one slice per dtype for all its small
    residuals instead of one each, which matters on small problems, where a step
    has dozens of tiny residuals and each separate update costs more than its
    data; large residuals are not copied into a concatenation."""

    def __init__(self, shapes):
        self.shapes = list(shapes)
        small = [i for i in range(len(self.shapes)) if self._size(i) <= _SMALL]
        dtypes = sorted({jnp.dtype(self.shapes[i].dtype) for i in small}, key=str)
        self.groups = [
            [i for i in small if jnp.dtype(self.shapes[i].dtype) == d] for d in dtypes
        ]
        self.groups += [[i] for i in range(len(self.shapes)) if i not in small]
        self.dtypes = [jnp.dtype(self.shapes[g[0]].dtype) for g in self.groups]

    def _size(self, i):
        size = 1
        for n in self.shapes[i].shape:
            size *= n
        return size

    def empty(self, window):
        return tuple(
            jnp.zeros((window, sum(self._size(i) for i in group)), dtype)
            for dtype, group in zip(self.dtypes, self.groups, strict=True)
        )

    def pack(self, leaves):
        return tuple(
            jnp.concatenate([jnp.ravel(leaves[i]) for i in group])
            for group in self.groups
        )

    def unpack(self, rows):
        leaves = [None] * len(self.shapes)
        for row, group in zip(rows, self.groups, strict=True):
            offset = 0
            for i in group:
                size = self._size(i)
                leaves[i] = row[offset : offset + size].reshape(self.shapes[i].shape)
                offset += size
        return leaves

"""Reverse mode through a variable number of steps: record each step's
linearisation on a tape, then play the tape backwards.

`lax.scan` can be differentiated, but only over a fixed number of iterations; a
window with fewer steps than that would pay for the rest (masked iterations still
write and read their residuals). The tape does what reverse mode through a scan
does, for exactly `length` steps: one `while_loop` runs the steps under `jax.vjp`
and stores the residuals of each (the leaves of the VJP function, a PyTree) in
`window` preallocated slots; a second `while_loop` rebuilds each step's VJP from
its slot, from the last step to the first, and pulls the cotangent through it.

Residuals that are the consts themselves (e.g. a network's weights, which the VJP
of a matrix product needs) are recognised by identity and not stored per step.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu


def _inexact_mask(tree):
    return jtu.tree_map(eqx.is_inexact_array, tree)


class StepTape:
    """Records up to `window` applications of `step(consts, x) -> x`.

    **Arguments:**

    - `step`: one step; differentiated with respect to the floating-point leaves
      of `consts` and `x`.
    - `consts`: its fixed inputs.
    - `x`: an example state (for the shapes of the residuals).
    - `window`: the most steps one recording holds.
    """

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
        """Run `length <= window` steps from `x`; return the final state and the
        tape holding their residuals."""

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
        """Pull the cotangent `ct_x` of the state after `length` recorded steps back
        to the state before them; returns `(ct_consts, ct_x)` (floating-point
        leaves only)."""

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

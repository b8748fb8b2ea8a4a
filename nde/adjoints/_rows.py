"""Loop states stored as rows of a few 2-D arrays, one per dtype.

A solver's loop state has a dozen arrays (the solution, the first-same-as-last
stage, times, step size, counters, flags). Storing one as it is costs a dynamic
update per array, each a separate operation in the compiled loop; for a small
problem those dominate the step itself. Flattened and concatenated by dtype, a
state is one row per dtype: stored and loaded with one operation each, and the
concatenation fuses with the step that produced it.

Stored states lose JAX's weak typing (as any array stored in a buffer does).
"""

import math

import jax.lax as lax
import jax.numpy as jnp


class Rows:
    """The row layout of a list of arrays shaped like `leaves`."""

    def __init__(self, leaves):
        self.shapes = [jnp.shape(a) for a in leaves]
        dtypes = [jnp.result_type(a) for a in leaves]
        self.dtypes = sorted(set(dtypes), key=lambda d: d.name)
        sizes = [0] * len(self.dtypes)
        self.where = []  # per array: (row, start, stop)
        for shape, dtype in zip(self.shapes, dtypes, strict=True):
            row = self.dtypes.index(dtype)
            size = math.prod(shape)
            self.where.append((row, sizes[row], sizes[row] + size))
            sizes[row] += size
        self.sizes = sizes

    def empty(self, n: int):
        """Room for `n` states (zeros)."""
        return tuple(
            jnp.zeros((n, size), dtype)
            for size, dtype in zip(self.sizes, self.dtypes, strict=True)
        )

    def pack(self, leaves):
        parts = [[] for _ in self.dtypes]
        for a, (row, _, _) in zip(leaves, self.where, strict=True):
            parts[row].append(jnp.ravel(a))
        return tuple(p[0] if len(p) == 1 else jnp.concatenate(p) for p in parts)

    def unpack(self, rows):
        return [
            rows[row][start:stop].reshape(shape)
            for (row, start, stop), shape in zip(self.where, self.shapes, strict=True)
        ]

    def put(self, stack, index, leaves):
        """`stack` with the state `leaves` stored at `index`."""
        return tuple(
            lax.dynamic_update_index_in_dim(s, r, index, 0)
            for s, r in zip(stack, self.pack(leaves), strict=True)
        )

    def get(self, stack, index):
        """The state stored at `index`, as a list of arrays."""
        return self.unpack(
            tuple(lax.dynamic_index_in_dim(s, index, 0, keepdims=False) for s in stack)
        )

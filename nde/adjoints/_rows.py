"""States stored as rows of few arrays: the small leaves of a loop state packed
together.

A solver's loop state is a dozen or more arrays, most of them scalars (times, step
size, counters, flags) beside one or two large ones (the solution, the FSAL
derivative). The checkpointed loops store such states in stacks, rings and tapes,
and every stored leaf is one more write, read or select per step in each of their
loops: one more compiled kernel apiece, each repeating the slot arithmetic
around it. Packing the small leaves of each dtype into one vector (booleans among
the 32-bit integers) leaves three or four arrays per state, and large leaves are
stored as they are (packing them would copy them once more per step).
"""

import jax.numpy as jnp
import numpy as np

# Leaves of at most this many elements are packed.
SMALL = 64


class RowCodec:
    """Encodes a list of arrays shaped like `example` as a shorter list (a *row*)
    and back, exactly: large leaves as they are, then one vector per dtype holding
    the raveled small leaves (booleans as int32)."""

    def __init__(self, example):
        self.shapes = [jnp.shape(x) for x in example]
        self.dtypes = [jnp.result_type(x) for x in example]
        self.big = []
        groups: dict = {}
        for i, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes, strict=True)):
            if int(np.prod(shape)) > SMALL:
                self.big.append(i)
            else:
                groups.setdefault(self._packed_dtype(dtype), []).append(i)
        self.groups = list(groups.items())

    @staticmethod
    def _packed_dtype(dtype):
        return np.dtype(np.int32) if dtype == np.bool_ else np.dtype(dtype)

    def encode(self, leaves):
        row = [leaves[i] for i in self.big]
        for dtype, members in self.groups:
            parts = [jnp.ravel(leaves[i]).astype(dtype) for i in members]
            row.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
        return row

    def decode(self, row):
        leaves = [None] * len(self.shapes)
        for i, x in zip(self.big, row, strict=False):
            leaves[i] = x
        for (_, members), packed in zip(self.groups, row[len(self.big) :], strict=True):
            start = 0
            for i in members:
                size = int(np.prod(self.shapes[i]))
                x = packed[start : start + size].reshape(self.shapes[i])
                leaves[i] = x != 0 if self.dtypes[i] == np.bool_ else x
                start += size
        return leaves

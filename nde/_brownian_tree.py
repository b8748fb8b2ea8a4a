"""`VirtualBrownianTree`: a Brownian sample path that can be queried anywhere, in any
order, any number of times, from a single key and in O(1) memory.

The interval `[t0, t1]` is bisected recursively (a binary tree of depth
`ceil(log2((t1 - t0) / tol))`). A node knows the increment of `W` over its interval
(and, with `levy_area=SpaceTimeLevyArea`, its space-time Lévy area `H`); its two
halves are sampled from the exact conditional distribution given those, from
normals that depend only on the key and the node's position in the tree (drawn by
the counter-based generator of `_random.py`, the node's heap number as counter;
Gaines & Lyons, "Variable step size control in the numerical solution of
stochastic differential equations", SIAM J. Appl. Math. 1997; Li, Wong, Chen &
Duvenaud, "Scalable gradients for stochastic differential equations", AISTATS
2020). A query descends from the root to a leaf of length at most `tol`; within a
leaf, `W` is the conditional mean given the leaf's values: linear in time, or,
given `H` too, the parabola with that Lévy area (Foster, PhD thesis, Oxford 2020,
sec. 3).

So `W` is one deterministic function of time: `W(s, u) = W(s, t) + W(t, u)` holds
up to round-off, increments over the leaves (and unions of them) have exactly the
Brownian distribution, and between leaf boundaries the path is the conditional mean.

Bisecting an interval of length `h` with increment `W` and Lévy area `H` into halves
with `(W1, H1)`, `(W2, H2)`: `W = W1 + W2` and `H = (H1 + H2) / 2 + (W1 - W2) / 4`.
With all four independent a priori (`W_i ~ N(0, h/2)`, `H_i ~ N(0, h/24)`), the
conditional law given `(W, H)` is

    W1 - W2 = 3 H + sqrt(h / 4) Z1,     (H1 + H2) / 2 = H - (W1 - W2) / 4,
    (H1 - H2) / 2 = sqrt(h / 48) Z2,    Z1, Z2 ~ N(0, 1) independent;

without Lévy area, simply `W1 - W2 = sqrt(h) Z1`.
"""

import dataclasses
import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._brownian import (
    AbstractBrownianPath,
    BrownianIncrement,
    SpaceTimeLevyArea,
    check_levy_area,
    check_use_levy,
    shape_leaves,
)
from ._custom_types import RealScalarLike
from ._random import standard_normals
from ._results import RESULTS


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _time_dtype(*times):
    """The widest floating dtype among the times (integers count as the default
    float), without implicit promotion."""
    dtypes = [jnp.asarray(t).dtype for t in times]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return max(floats or [jnp.result_type(float)], key=lambda d: d.itemsize)


_MAX_DEPTH = 30  # node ids 2**level + index must fit in a uint32


def _node_index(x, level):
    """The index of the node holding `x` (in `[0, 1]`) at `level` (an int or an
    array of levels): `floor(x 2**level)`, the last node for `x = 1`. Exact, since
    scaling by a power of two is exact, so a point's path down the tree is the same
    in every query."""
    scale = jnp.ldexp(jnp.ones((), x.dtype), level)
    return jnp.minimum(jnp.floor(x * scale), scale - 1), scale


def _node_ids(x, level):
    """Heap numbering of the nodes: `2**level + index` (the root is 1; 0 is kept for
    the root's own sample)."""
    index, scale = _node_index(x, level)
    return (scale + index).astype(jnp.uint32)


def _node_samples(key, ids, num: int, shape, dtype):
    """`num` standard normals of `shape` per node id, all in one vectorised draw."""
    return standard_normals(key, ids, (num,) + tuple(shape), dtype)


def _bcast(x, like):
    return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


class _Walk(eqx.Module):
    """Both query points (leading axis of size 2) walking down the tree of a standard
    Brownian motion `B` on `[0, 1]`: the increment `dw` and Lévy area `hh` of the
    current node, and `w`, `integral` = `B`, `int B` at the node's start. These two
    are measured from the start of the deepest node holding both points, so that
    their difference between the points loses no precision to cancellation."""

    w: Array
    dw: Array
    hh: Array
    integral: Array
    together: Array


def _halves(walk: _Walk, length, z, levy: bool):
    """Increments and Lévy areas of both halves of the current nodes, given `z`."""
    length = length.astype(walk.dw.dtype)
    if levy:
        diff = 3 * walk.hh + jnp.sqrt(length / 4) * z[:, 0]
        mean_h = walk.hh - diff / 4
        half_diff_h = jnp.sqrt(length / 48) * z[:, 1]
        hh_left, hh_right = mean_h + half_diff_h, mean_h - half_diff_h
    else:
        diff = jnp.sqrt(length) * z[:, 0]
        hh_left = hh_right = walk.hh
    return (walk.dw + diff) / 2, (walk.dw - diff) / 2, hh_left, hh_right


def _level(walk: _Walk, z, right, length, levy: bool) -> _Walk:
    """One level down: `z` the samples of the current nodes, `right` whether each
    point goes to the right half."""
    dw_l, dw_r, hh_l, hh_r = _halves(walk, length, z, levy)
    r = _bcast(right, dw_l)
    together = walk.together & (right[0] == right[1])
    # While both points share a node, measure from that node's start.
    w = jnp.where(together, 0, jnp.where(r, walk.w + dw_l, walk.w))
    integral = walk.integral
    if levy:  # the running integral is only needed for Lévy areas
        half = (length / 2).astype(dw_l.dtype)
        left_integral = half * (walk.w + dw_l / 2 + hh_l)
        integral = jnp.where(r, integral + left_integral, integral)
        integral = jnp.where(together, 0, integral)
    return _Walk(
        w=w,
        dw=jnp.where(r, dw_r, dw_l),
        hh=jnp.where(r, hh_r, hh_l) if levy else walk.hh,
        integral=integral,
        together=together,
    )


def _descend(walk: _Walk, key, x, depth, num: int, shape, dtype, levy) -> _Walk:
    """Walk both points `x` (shape `(2,)`) down `depth` levels.

    A static depth draws the samples of all the nodes on both paths at once and
    unrolls the levels (XLA fuses them); a traced depth loops over the levels,
    drawing each level's samples in turn."""
    if isinstance(depth, int):
        if depth == 0:
            return walk
        levels = jnp.arange(depth)
        z = _node_samples(key, _node_ids(x[:, None], levels), num, shape, dtype)
        right = _node_index(x[:, None], levels + 1)[0] % 2 == 1
        for k in range(depth):
            walk = _level(walk, z[:, k], right[:, k], jnp.asarray(2.0**-k), levy)
        return walk

    def level(k, walk):
        ids = _node_ids(x, k)[:, None]
        z = _node_samples(key, ids, num, shape, dtype)[:, 0]
        right = _node_index(x, k + 1)[0] % 2 == 1
        length = jnp.ldexp(jnp.ones((), jnp.float32), -k)
        return _level(walk, z, right, length, levy)

    return lax.fori_loop(0, depth, level, walk)


def _leaf_values(walk: _Walk, r, length, levy: bool):
    """`B` and `int B` at the fraction `r` of each point's leaf (of `length`), from
    the conditional mean given the leaf's increment (and Lévy area)."""
    r = _bcast(r.astype(walk.dw.dtype), walk.dw)
    length = length.astype(walk.dw.dtype)
    if levy:
        w = walk.w + r * walk.dw + 6 * r * (1 - r) * walk.hh
        area = r * walk.w + r**2 * walk.dw / 2 + walk.hh * r**2 * (3 - 2 * r)
    else:
        w = walk.w + r * walk.dw
        area = r * walk.w + r**2 * walk.dw / 2
    return w, walk.integral + length * area


class VirtualBrownianTree(AbstractBrownianPath):
    """Brownian motion on `[t0, t1]` that can be queried anywhere, consistently, from
    a single key: the Brownian motion for adaptive steps, reverse-time solves and
    adjoints that replay the noise.

    The path is exact at a resolution of `tol` (increments between multiples of
    `(t1 - t0) / 2**depth <= tol` have exactly the Brownian law) and interpolated by
    its conditional mean in between. A query costs `O(log2((t1 - t0) / tol))`.
    Queries are deterministic functions of the times and the key, and are not
    differentiated with respect to the times.

    **Arguments:**

    - `t0`, `t1`: the interval (`t0 < t1`); solves must stay inside it, in either
      direction of time.
    - `tol`: the resolution; well below the step size (e.g. `dt / 10`, or
      `1e-3 * (t1 - t0)` for adaptive solves).
    - `shape`: a tuple of ints (the shape of `W`, in the default float dtype), or a
      PyTree of `jax.ShapeDtypeStruct` for a PyTree of independent Brownian motions.
    - `key`: a `jax.random` key.
    - `levy_area`: `BrownianIncrement` (default), or `SpaceTimeLevyArea` to also
      provide the space-time Lévy area (needed by `SRA1` and `ShARK`).

    **Example:**

        bm = VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=jr.key(0))
        bm.evaluate(0.5)       # W(0.5), shape (2,)
        bm.evaluate(0.2, 0.7)  # W(0.7) - W(0.2)
    """

    t0: RealScalarLike
    t1: RealScalarLike
    tol: RealScalarLike
    shape: PyTree[jax.ShapeDtypeStruct] = eqx.field(static=True)
    key: PRNGKeyArray
    levy_area: type = eqx.field(static=True)
    # False inside a solve, which checked its interval up front (`within_solve`).
    check_queries: bool = eqx.field(static=True)

    def __init__(self, t0, t1, tol, shape, key, levy_area=BrownianIncrement):
        check_levy_area("VirtualBrownianTree", levy_area)
        shape_leaves(shape)
        if _is_concrete(t0, t1) and not float(t1) > float(t0):
            raise ValueError(
                f"`VirtualBrownianTree(t0, t1, ...)` needs t0 < t1; got t0={t0}, "
                f"t1={t1}. For a solve backwards in time use the same tree over "
                "[t1, t0] (it answers queries in either direction)."
            )
        if _is_concrete(tol) and not float(tol) > 0:
            raise ValueError(
                f"`VirtualBrownianTree(..., tol=...)` must be positive; got tol={tol}. "
                "Use a small fraction of the step size, e.g. `tol=dt / 10`."
            )
        self.t0, self.t1, self.tol = t0, t1, tol
        self.shape = shape
        self.key = key
        self.levy_area = levy_area
        self.check_queries = True

    def _depth(self):
        """The number of bisections; a Python int when the interval is concrete."""
        if _is_concrete(self.t0, self.t1, self.tol):
            ratio = (float(self.t1) - float(self.t0)) / float(self.tol)
            depth = max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0
            if depth > _MAX_DEPTH:
                raise ValueError(
                    f"`VirtualBrownianTree(t0, t1, tol)` with (t1 - t0) / tol = "
                    f"{ratio:.3g} needs {depth} levels; at most {_MAX_DEPTH} are "
                    "supported. Use a larger `tol`."
                )
            return depth
        ratio = (self.t1 - self.t0) / self.tol
        depth = jnp.maximum(jnp.ceil(jnp.log2(ratio)), 0).astype(jnp.int32)
        return jnp.minimum(depth, _MAX_DEPTH)

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        if use_levy:
            check_use_levy(self)
        if t1 is None:
            a, b = self.t0, t0
        else:
            a, b = t0, t1
        tdtype = _time_dtype(self.t0, self.t1, a, b)
        a, b = lax.stop_gradient((jnp.asarray(a, tdtype), jnp.asarray(b, tdtype)))
        lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
        lo, hi = self._check_range(lo, hi, tdtype)
        leaves, treedef = shape_leaves(self.shape)
        keys = jr.split(self.key, len(leaves))
        ws, hs = [], []
        for key, leaf in zip(keys, leaves, strict=True):
            w, h = self._increment(key, leaf, lo, hi, tdtype)
            ws.append(jnp.where(b >= a, w, -w))
            hs.append(h)
        w = jtu.tree_unflatten(treedef, ws)
        if not use_levy:
            return w
        if self.levy_area is BrownianIncrement:
            return BrownianIncrement(dt=b - a, W=w)
        return SpaceTimeLevyArea(dt=b - a, W=w, H=jtu.tree_unflatten(treedef, hs))

    def _check_range(self, lo, hi, tdtype):
        t0 = jnp.asarray(self.t0, tdtype)
        t1 = jnp.asarray(self.t1, tdtype)
        if self.check_queries:
            lo = eqx.error_if(
                lo,
                _outside(lo, hi, t0, t1, tdtype),
                RESULTS.brownian_outside.message,
            )
        return jnp.clip(lo, t0, t1), jnp.clip(hi, t0, t1)

    def _increment(self, key, leaf: jax.ShapeDtypeStruct, lo, hi, tdtype):
        """`W(hi) - W(lo)` and the Lévy area over `[lo, hi]`, for one leaf."""
        levy = self.levy_area is SpaceTimeLevyArea
        dtype, shape = leaf.dtype, leaf.shape
        t0 = jnp.asarray(self.t0, tdtype)
        span = jnp.asarray(self.t1, tdtype) - t0
        x = jnp.clip(jnp.stack([lo - t0, hi - t0]) / span, 0, 1)
        depth = self._depth()
        num = 2 if levy else 1
        root = _node_samples(key, jnp.zeros((1, 1), jnp.uint32), num, shape, dtype)
        root = jnp.broadcast_to(root[0, 0], (2, num) + shape)
        zeros = jnp.zeros((2,) + shape, dtype)
        walk = _Walk(
            w=zeros,
            dw=root[:, 0],
            hh=root[:, 1] / math.sqrt(12.0) if levy else zeros,
            integral=zeros,
            together=jnp.asarray(True),
        )
        walk = _descend(walk, key, x, depth, num, shape, dtype, levy)
        leaf_index = _node_index(x, depth)[0]
        leaf_length = jnp.ldexp(jnp.ones((), tdtype), -jnp.asarray(depth))
        r = jnp.clip(x / leaf_length - leaf_index, 0, 1)
        w, integral = _leaf_values(walk, r, leaf_length, levy)
        dw = w[1] - w[0]
        scale_w = jnp.sqrt(span).astype(dtype)
        if not levy:
            return scale_w * dw, None
        width = ((hi - lo) / span).astype(dtype)
        safe = jnp.where(width > 0, width, 1)
        hh = (integral[1] - integral[0]) / safe - w[0] - dw / 2
        return scale_w * dw, scale_w * jnp.where(width > 0, hh, 0)


def _outside(lo, hi, t0, t1, tdtype):
    """Whether `[lo, hi]` leaves `[t0, t1]` by more than rounding."""
    slack = (1e-9 if tdtype == jnp.float64 else 1e-5) * (t1 - t0)
    return (lo < t0 - slack) | (hi > t1 + slack)


def within_solve(terms, t0, t1):
    """`terms` with every `VirtualBrownianTree` marked as checked, and whether the
    solve's interval leaves one of them (a traced boolean; a concrete mismatch
    raises here). A solve queries its trees only inside its own interval, so one
    check up front (into the solve's result code) replaces a run-time check, with
    its host callback, at every query."""
    is_tree = lambda x: isinstance(x, VirtualBrownianTree)
    bad = jnp.asarray(False)

    def mark(x):
        nonlocal bad
        if not is_tree(x):
            return x
        tdtype = _time_dtype(x.t0, x.t1, t0, t1)
        if _is_concrete(x.t0, x.t1, t0, t1):
            lo, hi = sorted((float(t0), float(t1)))
            if _outside(lo, hi, float(x.t0), float(x.t1), tdtype):
                raise ValueError(
                    f"`VirtualBrownianTree(t0={x.t0}, t1={x.t1}, ...)` does not contain "
                    f"the solve's interval [{lo}, {hi}]. Create it over an interval "
                    "that contains the whole solve."
                )
        else:
            a, b = (jnp.asarray(t, tdtype) for t in (t0, t1))
            tree_t0, tree_t1 = (jnp.asarray(t, tdtype) for t in (x.t0, x.t1))
            lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
            bad = bad | _outside(lo, hi, tree_t0, tree_t1, tdtype)
        # A copy with the flag off (a static field: not settable by `tree_at`).
        new = object.__new__(VirtualBrownianTree)
        for field in dataclasses.fields(x):
            object.__setattr__(new, field.name, getattr(x, field.name))
        object.__setattr__(new, "check_queries", False)
        return new

    terms = jtu.tree_map(mark, terms, is_leaf=is_tree)
    return terms, bad

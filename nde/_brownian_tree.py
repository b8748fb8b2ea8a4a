"""`VirtualBrownianTree`: a Brownian sample path that can be queried anywhere, in any
order, any number of times, from a single key and in O(1) memory.

The interval `[t0, t1]` is bisected recursively (a binary tree of depth
`ceil(log2((t1 - t0) / tol))`). A node knows the increment of `W` over its interval
(and, with `levy_area=SpaceTimeLevyArea`, its space-time Lévy area `H`); its two
halves are sampled from the exact conditional distribution given those, from a key
that depends only on the node's position in the tree (Gaines & Lyons, "Variable step
size control in the numerical solution of stochastic differential equations", SIAM
J. Appl. Math. 1997; Li, Wong, Chen & Duvenaud, "Scalable gradients for stochastic
differential equations", AISTATS 2020). A query descends from the root to a leaf of
length at most `tol`; within a leaf, `W` is the conditional mean given the leaf's
values: linear in time, or, given `H` too, the parabola with that Lévy area
(Foster, PhD thesis, Oxford 2020, sec. 3).

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


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


class _Node(eqx.Module):
    """The current node of each of the two query points (leading axis of size 2),
    for a standard Brownian motion `B` on `[0, 1]`.

    `w` and `integral` are `B(start)` and `int B` up to `start`, measured from the
    start of the deepest node that holds both points (so that the difference of the
    two points' values loses no precision to cancellation).
    """

    key: PRNGKeyArray
    start: Array
    w: Array
    dw: Array
    hh: Array
    integral: Array


def _split(node: _Node, length, levy: bool, sample_shape, dtype):
    """The increments and Lévy areas of both halves of each node."""
    z = jax.vmap(lambda k: jr.normal(jr.fold_in(k, 2), (2,) + sample_shape, dtype))(
        node.key
    )
    z1, z2 = z[:, 0], z[:, 1]
    length = length.astype(dtype)
    if levy:
        diff = 3 * node.hh + jnp.sqrt(length / 4) * z1
        mean_h = node.hh - diff / 4
        half_diff_h = jnp.sqrt(length / 48) * z2
        hh_left, hh_right = mean_h + half_diff_h, mean_h - half_diff_h
    else:
        diff = jnp.sqrt(length) * z1
        hh_left = hh_right = node.hh
    return (node.dw + diff) / 2, (node.dw - diff) / 2, hh_left, hh_right


def _bcast(x, like):
    return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


def _descend(node: _Node, x, depth, levy: bool, sample_shape, dtype) -> _Node:
    """Walk both points `x` (shape `(2,)`, in `[0, 1]`) down `depth` levels."""

    def level(k, carry):
        node, together = carry
        length = jnp.ldexp(jnp.ones((), x.dtype), -k)  # 2**-k, exactly
        mid = node.start + length / 2
        dw_l, dw_r, hh_l, hh_r = _split(node, length, levy, sample_shape, dtype)
        right = x >= mid
        r = _bcast(right, dw_l)
        half = (length / 2).astype(dtype)
        left_integral = half * (node.w + dw_l / 2 + hh_l)
        w = jnp.where(r, node.w + dw_l, node.w)
        integral = jnp.where(r, node.integral + left_integral, node.integral)
        still_together = together & (right[0] == right[1])
        # While both points share a node, measure from that node's start.
        w = jnp.where(still_together, 0, w)
        integral = jnp.where(still_together, 0, integral)
        new = _Node(
            key=jax.vmap(jr.fold_in)(node.key, right.astype(jnp.uint32)),
            start=jnp.where(right, mid, node.start),
            w=w,
            dw=jnp.where(r, dw_r, dw_l),
            hh=jnp.where(r, hh_r, hh_l),
            integral=integral,
        )
        return new, still_together

    node, _ = lax.fori_loop(0, depth, level, (node, jnp.asarray(True)))
    return node


def _leaf_values(node: _Node, x, length, levy: bool):
    """`B` and `int B` at `x` inside each point's leaf, from the conditional mean."""
    dtype = node.dw.dtype
    r = _bcast(jnp.clip((x - node.start) / length, 0, 1).astype(dtype), node.dw)
    length = length.astype(dtype)
    if levy:
        w = node.w + r * node.dw + 6 * r * (1 - r) * node.hh
        area = r * node.w + r**2 * node.dw / 2 + node.hh * r**2 * (3 - 2 * r)
    else:
        w = node.w + r * node.dw
        area = r * node.w + r**2 * node.dw / 2
    return w, node.integral + length * area


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

    def _depth(self):
        if _is_concrete(self.t0, self.t1, self.tol):
            ratio = (float(self.t1) - float(self.t0)) / float(self.tol)
            return max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0
        ratio = (self.t1 - self.t0) / self.tol
        return jnp.maximum(jnp.ceil(jnp.log2(ratio)), 0).astype(jnp.int32)

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        if use_levy:
            check_use_levy(self)
        if t1 is None:
            a, b = self.t0, t0
        else:
            a, b = t0, t1
        tdtype = jnp.result_type(
            *(jnp.asarray(x).dtype for x in (self.t0, self.t1, a, b)), float
        )
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
        slack = 1e-9 * (t1 - t0) if tdtype == jnp.float64 else 1e-5 * (t1 - t0)
        lo = eqx.error_if(
            lo,
            (lo < t0 - slack) | (hi > t1 + slack),
            "A `VirtualBrownianTree(t0, t1, ...)` was queried outside [t0, t1]. Create "
            "it over an interval that contains the whole solve.",
        )
        return jnp.clip(lo, t0, t1), jnp.clip(hi, t0, t1)

    def _increment(self, key, leaf: jax.ShapeDtypeStruct, lo, hi, tdtype):
        """`W(hi) - W(lo)` and the Lévy area over `[lo, hi]`, for one leaf."""
        levy = self.levy_area is SpaceTimeLevyArea
        dtype, shape = leaf.dtype, leaf.shape
        t0 = jnp.asarray(self.t0, tdtype)
        span = jnp.asarray(self.t1, tdtype) - t0
        x = jnp.stack([lo - t0, hi - t0]) / span
        # The root's own sample; nodes sample their halves from `fold_in(key, 2)`
        # and pass `fold_in(key, 0 or 1)` to their children.
        z = jr.normal(jr.fold_in(key, 3), (2,) + shape, dtype)
        zeros = jnp.zeros((2,) + shape, dtype)
        root = _Node(
            key=jnp.stack([key, key]),
            start=jnp.zeros((2,), tdtype),
            w=zeros,
            dw=jnp.broadcast_to(z[0], (2,) + shape),
            hh=jnp.broadcast_to(z[1] / math.sqrt(12.0), (2,) + shape),
            integral=zeros,
        )
        depth = self._depth()
        node = _descend(root, x, depth, levy, shape, dtype)
        if isinstance(depth, int):
            leaf_length = jnp.asarray(2.0**-depth, tdtype)
        else:
            leaf_length = jnp.ldexp(jnp.ones((), tdtype), -depth)
        w, integral = _leaf_values(node, x, leaf_length, levy)
        dw = w[1] - w[0]
        scale = jnp.sqrt(span).astype(dtype)
        if not levy:
            return scale * dw, None
        width = ((hi - lo) / span).astype(dtype)
        safe = jnp.where(width > 0, width, 1)
        hh = (integral[1] - integral[0]) / safe - w[0] - dw / 2
        return scale * dw, scale * jnp.where(width > 0, hh, 0)

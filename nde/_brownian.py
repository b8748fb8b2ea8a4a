"""Brownian motion: the control of an SDE's diffusion term.

A Brownian path is queried through `evaluate(t0, t1)` for the increment
`W(t1) - W(t0)`; with `use_levy=True` it also returns the space-time Lévy area

    H = (1 / h) int_{t0}^{t1} (W(s) - W(t0) - (s - t0) / h (W(t1) - W(t0))) ds,

`h = t1 - t0`, which SDE solvers of strong order 1.5 for additive noise need. `H` is
Gaussian with variance `h / 12` and independent of the increment (Foster, "Numerical
approximations for stochastic differential equations", PhD thesis, Oxford 2020).
A query with `t1 < t0` gives `W(t1) - W(t0)` (the negated increment) and the same `H`
as the interval `[t1, t0]`, which is what a solve backwards in time sees.

`VirtualBrownianTree` (in `_brownian_tree.py`) is a true Brownian sample path:
every query agrees with every other. `UnsafeBrownianPath` below samples each
queried interval independently: fast, but only right for fixed steps.
"""

import abc

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._custom_types import RealScalarLike
from ._paths import AbstractPath
from ._random import standard_normals


class BrownianIncrement(eqx.Module):
    """A Brownian increment `W` over an interval of length `dt`."""

    dt: RealScalarLike
    W: PyTree[Array]


class SpaceTimeLevyArea(eqx.Module):
    """A Brownian increment `W` and its space-time Lévy area `H` over an interval of
    length `dt` (see the module docstring for the definition of `H`)."""

    dt: RealScalarLike
    W: PyTree[Array]
    H: PyTree[Array]


LEVY_AREAS = (BrownianIncrement, SpaceTimeLevyArea)


class AbstractBrownianPath(AbstractPath):
    """A sample path of Brownian motion, of shape and dtype `shape`.

    `evaluate(t0, t1, use_levy=False)` returns the increment; `use_levy=True` returns
    a `BrownianIncrement` or `SpaceTimeLevyArea` (as chosen by `levy_area`). Brownian
    motion is nowhere differentiable: no `derivative`, and query times are not
    differentiated.
    """

    shape: AbstractVar[PyTree[jax.ShapeDtypeStruct]]
    levy_area: AbstractVar[type]

    @abc.abstractmethod
    def evaluate(
        self,
        t0: RealScalarLike,
        t1: RealScalarLike | None = None,
        left: bool = True,
        use_levy: bool = False,
    ):
        """`W(t1) - W(t0)`, or `W(t0)` if `t1` is `None`.

        **Arguments:**

        - `t0`, `t1`: the interval (`t1 < t0` gives the negated increment).
        - `left`: ignored (Brownian motion is continuous).
        - `use_levy`: return a `BrownianIncrement` / `SpaceTimeLevyArea` (per
          `levy_area`) instead of just the increment.
        """


def shape_leaves(shape) -> tuple[list[jax.ShapeDtypeStruct], jtu.PyTreeDef]:
    """`shape` (a tuple of ints, or a PyTree of `jax.ShapeDtypeStruct`) as leaves."""
    if isinstance(shape, tuple) and all(isinstance(i, int) for i in shape):
        shape = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
    is_struct = lambda x: isinstance(x, jax.ShapeDtypeStruct)
    leaves, treedef = jtu.tree_flatten(shape, is_leaf=is_struct)
    for leaf in leaves:
        if not is_struct(leaf) or not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                "`shape` must be a tuple of ints, e.g. `shape=(3,)`, or a PyTree of "
                "floating-point `jax.ShapeDtypeStruct`s, e.g. "
                f"`shape=jax.ShapeDtypeStruct((3,), jnp.float32)`; got {shape!r}."
            )
    return leaves, treedef


def check_levy_area(name: str, levy_area) -> None:
    if levy_area not in LEVY_AREAS:
        raise ValueError(
            f"`{name}(..., levy_area=...)` must be `BrownianIncrement` or "
            f"`SpaceTimeLevyArea` (the class itself); got {levy_area!r}."
        )


def check_use_levy(path: AbstractBrownianPath) -> None:
    if path.levy_area is not SpaceTimeLevyArea:
        raise ValueError(
            f"This solver needs the space-time Lévy area of the Brownian motion, but "
            f"the `{type(path).__name__}` was created with "
            f"`levy_area={path.levy_area.__name__}`. Create it with "
            f"`{type(path).__name__}(..., levy_area=SpaceTimeLevyArea)`."
        )


# A query's key is already its own (folded with both times): one id per key.
_ONE_ID = np.uint32(0)


def _fold_in_time(key, t):
    # The bits of the time, so that a query of the same interval gives the same
    # sample (`+ 0.0` makes -0.0 and 0.0 the same time).
    t = jnp.asarray(t) + 0.0
    bits = lax.bitcast_convert_type(t, jnp.dtype(f"uint{t.dtype.itemsize * 8}"))
    if t.dtype.itemsize == 8:
        words = [lax.convert_element_type(bits >> 32, jnp.uint32), bits]
    else:
        words = [bits]
    for word in words:
        key = jr.fold_in(key, lax.convert_element_type(word, jnp.uint32))
    return key


class UnsafeBrownianPath(AbstractBrownianPath):
    """Brownian increments sampled independently for every queried interval: the
    fastest way to drive an SDE with fixed steps.

    A query of `[s, u]` draws `W ~ N(0, u - s)` (and `H ~ N(0, (u - s) / 12)`) from a
    key derived from `key` and the two times, so repeating a query repeats its answer
    (which is what `RecursiveCheckpointAdjoint` and `ReversibleAdjoint` need to replay
    the noise of each step), but queries of overlapping intervals are unrelated. It
    is therefore only correct when a solve queries each step's interval exactly once:
    fixed step sizes (`ConstantStepSize`, `StepTo`), forward in time or backwards.
    `diffeqsolve` raises an error for an adaptive step size controller (a rejected
    step would be retried on a sub-interval with unrelated noise, biasing the
    solution); an adjoint that solves backwards over different intervals (such as
    `BacksolveAdjoint`) must refuse it too. Use `VirtualBrownianTree` there.

    **Arguments:**

    - `shape`: a tuple of ints (the shape of `W`, in the default float dtype), or a
      PyTree of `jax.ShapeDtypeStruct`.
    - `key`: a `jax.random` key.
    - `levy_area`: `BrownianIncrement` (default) or `SpaceTimeLevyArea`.

    **Example:**

        bm = UnsafeBrownianPath(shape=(2,), key=jr.key(0))
        bm.evaluate(0.0, 0.1)  # W(0.1) - W(0.0), shape (2,)
    """

    shape: PyTree[jax.ShapeDtypeStruct] = eqx.field(static=True)
    key: PRNGKeyArray
    levy_area: type = eqx.field(static=True)

    def __init__(self, shape, key, levy_area=BrownianIncrement):
        check_levy_area("UnsafeBrownianPath", levy_area)
        shape_leaves(shape)
        self.shape = shape
        self.key = key
        self.levy_area = levy_area

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        if t1 is None:
            raise ValueError(
                "`UnsafeBrownianPath.evaluate(t0)` has no value at a single time: it "
                "only samples increments, `evaluate(t0, t1)`. Use a "
                "`VirtualBrownianTree` for values of the path."
            )
        if use_levy:
            check_use_levy(self)
        t0, t1 = lax.stop_gradient((jnp.asarray(t0), jnp.asarray(t1)))
        lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
        key = _fold_in_time(_fold_in_time(self.key, lo), hi)
        leaves, treedef = shape_leaves(self.shape)
        keys = jr.split(key, len(leaves))
        sign = jnp.where(t1 >= t0, 1, -1)
        ws, hs = [], []
        for leaf_key, leaf in zip(keys, leaves, strict=True):
            h = (hi - lo).astype(leaf.dtype)
            z = standard_normals(leaf_key, _ONE_ID, (2,) + leaf.shape, leaf.dtype)
            ws.append(sign.astype(leaf.dtype) * jnp.sqrt(h) * z[0])
            hs.append(jnp.sqrt(h / 12) * z[1])
        w = jtu.tree_unflatten(treedef, ws)
        if not use_levy:
            return w
        if self.levy_area is BrownianIncrement:
            return BrownianIncrement(dt=t1 - t0, W=w)
        return SpaceTimeLevyArea(dt=t1 - t0, W=w, H=jtu.tree_unflatten(treedef, hs))


def contains_unsafe_brownian(tree) -> bool:
    """Whether `tree` (e.g. the `terms` of a solve) holds an `UnsafeBrownianPath`."""
    is_unsafe = lambda x: isinstance(x, UnsafeBrownianPath)
    return any(is_unsafe(x) for x in jtu.tree_leaves(tree, is_leaf=is_unsafe))


def check_brownian_stepping(terms, stepsize_controller) -> None:
    """An `UnsafeBrownianPath` cannot drive an adaptive solve; raise a clear error."""
    if stepsize_controller.is_adaptive and contains_unsafe_brownian(terms):
        raise ValueError(
            "`UnsafeBrownianPath` samples each queried interval independently, so it "
            "cannot be used with an adaptive step size controller "
            f"(stepsize_controller={type(stepsize_controller).__name__}(...)): a "
            "rejected step is retried over a shorter interval, whose noise must be "
            "consistent with the first attempt. Use "
            "`VirtualBrownianTree(t0, t1, tol, shape, key=...)` instead, or fixed steps "
            "(`ConstantStepSize()` with a `dt0`)."
        )

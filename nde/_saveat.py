"""What a solve returns: `SaveAt` and `SubSaveAt`."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, PyTree, Real


def _as_times(ts):
    return None if ts is None else jnp.asarray(ts)


def save_y(t, y, args):
    """The default `fn` of `SaveAt`: save the state itself."""
    return y


class SubSaveAt(eqx.Module):
    """One group of outputs: some times, and a function of the state to save there.

    **Arguments:**

    - `t0`, `t1`: save at the initial / final time.
    - `ts`: save at these times (monotonic in the direction of integration, within
      `[t0, t1]`), by interpolating each step's dense output.
    - `steps`: save at the end of every accepted step (needs a finite `max_steps`).
    - `fn`: `fn(t, y, args)` is saved instead of `y`; default the state itself.
    """

    t0: bool = eqx.field(static=True, default=False)
    t1: bool = eqx.field(static=True, default=False)
    # An array (not, e.g., a list of floats, whose elements `jit` would trace one
    # by one).
    ts: Real[Array, " times"] | None = eqx.field(default=None, converter=_as_times)  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
    steps: bool = eqx.field(static=True, default=False)
    fn: Callable = eqx.field(static=True, default=save_y)

    def __check_init__(self):
        if not (self.t0 or self.t1 or self.ts is not None or self.steps):
            raise ValueError(
                "This `SaveAt`/`SubSaveAt` saves nothing: set at least one of `t0=True`, "
                "`t1=True`, `ts=[...]` or `steps=True` (or `SaveAt(dense=True)` for "
                "dense output only)."
            )


class SaveAt(eqx.Module):
    """What `diffeqsolve` saves; the default saves the state at `t1`.

    **Arguments:**

    - `t0`, `t1`, `ts`, `steps`, `fn`: as in `SubSaveAt`, for a single group.
    - `subs`: instead, a PyTree of `SubSaveAt`; `sol.ts` and `sol.ys` then have the
      same PyTree structure.
    - `dense`: keep every step's dense output, for `sol.evaluate(t)` and
      `sol.derivative(t)` anywhere in `[t0, t1]` (needs a finite `max_steps`).
    - `solver_state`, `controller_state`, `made_jump`: return the final values, so
      that a later `diffeqsolve` can continue from them.

    **Example:**

        SaveAt(ts=jnp.linspace(0, 1, 11))  # sol.ys has shape (11, *y0.shape)
    """

    subs: PyTree[SubSaveAt] = None
    dense: bool = eqx.field(static=True, default=False)
    solver_state: bool = eqx.field(static=True, default=False)
    controller_state: bool = eqx.field(static=True, default=False)
    made_jump: bool = eqx.field(static=True, default=False)

    def __init__(
        self,
        *,
        t0: bool = False,
        t1: bool = False,
        ts: Real[ArrayLike, " times"] | None = None,  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
        steps: bool = False,
        fn: Callable = save_y,
        subs: PyTree[SubSaveAt] = None,
        dense: bool = False,
        solver_state: bool = False,
        controller_state: bool = False,
        made_jump: bool = False,
    ):
        direct = t0 or t1 or ts is not None or steps
        if subs is not None and direct:
            raise ValueError(
                "`SaveAt(subs=...)` cannot be combined with `t0`, `t1`, `ts` or "
                "`steps`: put those in a `SubSaveAt` inside `subs`."
            )
        if direct:
            subs = SubSaveAt(t0=t0, t1=t1, ts=ts, steps=steps, fn=fn)
        if subs is None and not (
            dense or solver_state or controller_state or made_jump
        ):
            raise ValueError(
                "`SaveAt()` saves nothing. Pass e.g. `SaveAt(t1=True)` (the final "
                "state), `SaveAt(ts=...)`, `SaveAt(steps=True)` or `SaveAt(dense=True)`."
            )
        self.subs = subs
        self.dense = dense
        self.solver_state = solver_state
        self.controller_state = controller_state
        self.made_jump = made_jump


def sub_saveats(saveat: SaveAt) -> list[SubSaveAt]:
    """The leaves of `saveat.subs`, in PyTree order."""
    is_sub = lambda x: isinstance(x, SubSaveAt)
    return jtu.tree_leaves(saveat.subs, is_leaf=is_sub)


def unflatten_like_subs(saveat: SaveAt, values: list):
    """Rebuild the PyTree structure of `saveat.subs` with one value per SubSaveAt."""
    is_sub = lambda x: isinstance(x, SubSaveAt)
    treedef = jtu.tree_structure(saveat.subs, is_leaf=is_sub)
    return jtu.tree_unflatten(treedef, values)

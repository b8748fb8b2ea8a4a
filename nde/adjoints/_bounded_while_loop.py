"""A while loop with a bound on its iterations, differentiable in both modes.

`lax.while_loop` supports forward mode but not reverse mode; `lax.scan` supports
both but always runs all of its iterations. This loop is `base`-ary nested scans
of depth `ceil(log_base(max_steps))`: each iteration of each level is a `lax.cond`
that skips its whole block once the loop has finished, so a solve that stops early
costs `O(base x depth)` skipped iterations, not `max_steps`. Each block is wrapped in
`jax.checkpoint`, so reverse mode stores `O(base x depth)` states and recomputes
the rest (one extra forward pass per level) instead of storing all `max_steps`.
"""

import math

import jax
import jax.lax as lax


def _depth(max_steps: int, base: int) -> int:
    return max(1, math.ceil(math.log(max_steps) / math.log(base) - 1e-12))


def bounded_while_loop(
    cond_fun, body_fun, init_state, *, consts, max_steps, buffers, base=16
):
    """`lax.while_loop(cond_fun, body_fun, init_state)` for at most `max_steps`
    iterations, differentiable in forward and reverse mode (and to any order).

    `cond_fun(consts, state)`, `body_fun(consts, state)`: as in `_loop.run`.
    """
    del buffers  # the scans carry them; nothing to gain from special handling
    if max_steps is None:
        raise ValueError(
            "`DirectAdjoint()` needs a bound on the number of steps, but "
            "`diffeqsolve(..., max_steps=None)`. Pass an integer `max_steps` (e.g. "
            "4096), or use `ForwardMode()` for forward-mode derivatives of an "
            "unbounded solve."
        )
    depth = _depth(max_steps, base)

    def guarded(fun):
        # Run `fun` only while the loop has not finished.
        return lambda state: lax.cond(cond_fun(consts, state), fun, lambda s: s, state)

    def level(d):
        if d == 0:
            return guarded(lambda s: body_fun(consts, s))
        inner = jax.checkpoint(level(d - 1))
        length = base if d < depth else math.ceil(max_steps / base ** (d - 1))

        def run(state):
            return lax.scan(lambda s, _: (inner(s), None), state, length=length)[0]

        return guarded(run)

    return level(depth)(init_state)

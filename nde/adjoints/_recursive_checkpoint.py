import functools as ft

import equinox as eqx

from .._loop import run
from ._base import AbstractAdjoint
from ._checkpointed_while_loop import checkpointed_while_loop
from ._closure_convert import closure_convert_terms


class RecursiveCheckpointAdjoint(AbstractAdjoint):
    """Differentiate by backpropagating through the solver's own steps (discretise
    then optimise): exact gradients of the numerical solution. The default.

    The forward pass is a `while_loop` that stops at the real number of steps; it
    stores at most `checkpoints` states, and the backward pass recomputes the others
    (see `_checkpointed_while_loop.py`). Memory is `O(checkpoints x state)`,
    independent of the number of steps.

    **Arguments:**

    - `checkpoints`: how many states to store on the forward pass (the backward pass
      uses as many again, and replays up to as many steps at a time from a tape of
      their states). `None` picks about `log2(max_steps)`, which needs a finite
      `max_steps`, and lets the tape hold more steps when their states fit in 1 MiB
      (up to 1,024 steps: a solve that fits is not replayed). More checkpoints mean
      less recomputation; `checkpoints >= max_steps` stores every step's state on the
      forward pass and recomputes no forward steps (memory `max_steps x state`; the
      fastest gradient when that fits).
    """

    checkpoints: int | None = None

    def loop(self, problem):
        terms = closure_convert_terms(
            problem.terms, problem.t0, problem.y0, problem.args
        )
        problem = eqx.tree_at(lambda p: p.terms, problem, terms)
        return run(
            problem, ft.partial(checkpointed_while_loop, checkpoints=self.checkpoints)
        )

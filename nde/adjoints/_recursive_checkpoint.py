from .._loop import run
from ._base import AbstractAdjoint, plain_while_loop


class RecursiveCheckpointAdjoint(AbstractAdjoint):
    """Differentiate by backpropagating through the solver's own steps (discretise
    then optimise): exact gradients of the numerical solution. The default.

    **Arguments:**

    - `checkpoints`: how many intermediate states to store for the backward pass;
      `None` picks about `log2(max_steps)`.
    """

    checkpoints: int | None = None

    def loop(self, problem):
        return run(problem, plain_while_loop)

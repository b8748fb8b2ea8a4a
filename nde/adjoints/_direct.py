from .._loop import run
from ._base import AbstractAdjoint
from ._bounded_while_loop import bounded_while_loop


class DirectAdjoint(AbstractAdjoint):
    """Differentiate through the solver's own steps with JAX's ordinary autodiff,
    in forward or reverse mode, to any order (e.g. `jax.hessian`).

    The loop is a bounded while loop (nested `lax.scan`s with early exit, see
    `_bounded_while_loop.py`), so it needs a finite `max_steps`. Prefer
    `RecursiveCheckpointAdjoint` for first-order reverse mode (faster, less memory)
    and `ForwardMode` for first-order forward mode; use this one for higher-order
    derivatives or mixed forward/reverse mode.

    **Example:**

        hess = jax.hessian(lambda y0: diffeqsolve(..., y0=y0,
                                                  adjoint=DirectAdjoint()).ys.sum())
    """

    def loop(self, problem):
        return run(problem, bounded_while_loop)

"""The output of `diffeqsolve`."""

import equinox as eqx
from jaxtyping import Array, PyTree

from ._custom_types import RealScalarLike, Y
from ._interpolation import DenseInterpolation
from ._results import Result


class Solution(eqx.Module):
    """The result of `diffeqsolve`.

    **Attributes:**

    - `t0`, `t1`: the interval of the solve.
    - `ts`, `ys`: the saved times and values (as requested by `SaveAt`; PyTrees like
      `SaveAt(subs=...)`). Unused slots (e.g. with `steps=True`) hold `inf` times.
    - `interpolation`: the dense output, with `SaveAt(dense=True)`; else `None`.
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps`, `max_steps`.
    - `result`: a member of `RESULTS`; see `is_successful(sol.result)`.
    - `solver_state`, `controller_state`, `made_jump`: final values, when requested
      through `SaveAt`, to continue a solve later.
    """

    t0: RealScalarLike
    t1: RealScalarLike
    ts: PyTree[Array] | None
    ys: PyTree[Array] | None
    interpolation: DenseInterpolation | None
    stats: dict[str, Array | int | None]
    result: Result
    solver_state: PyTree | None
    controller_state: PyTree | None
    made_jump: Array | None

    def evaluate(
        self, t0: RealScalarLike, t1: RealScalarLike | None = None, left: bool = True
    ) -> Y:
        """The dense solution at `t0` (or `y(t1) - y(t0)`); needs `SaveAt(dense=True)`."""
        return self._dense("evaluate").evaluate(t0, t1, left)

    def derivative(self, t: RealScalarLike, left: bool = True) -> Y:
        """The time derivative of the dense solution at `t`; needs `SaveAt(dense=True)`."""
        return self._dense("derivative").derivative(t, left)

    def _dense(self, method: str) -> DenseInterpolation:
        if self.interpolation is None:
            raise ValueError(
                f"`Solution.{method}` needs dense output: pass "
                "`diffeqsolve(..., saveat=SaveAt(dense=True))`."
            )
        return self.interpolation

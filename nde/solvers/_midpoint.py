from typing import ClassVar

import numpy as np

from ._base import AbstractAdaptiveSolver
from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

#   0 |
# 1/2 | 1/2
# ----+--------
#     | 0   1      (midpoint, order 2)
#     | 1   0      (embedded Euler, order 1)
_midpoint_tableau = ButcherTableau(
    c=np.array([0.0, 0.5]),
    a_lower=(np.array([0.5]),),
    b_sol=np.array([0.0, 1.0]),
    b_error=np.array([-1.0, 1.0]),
)


class Midpoint(AbstractRungeKutta, AbstractAdaptiveSolver):
    """The explicit midpoint method: second order, two stages, with an embedded Euler
    method for adaptive steps. Dense output is cubic Hermite.

    On an SDE it converges to the Stratonovich solution (strong order 0.5).
    """

    tableau: ClassVar[ButcherTableau] = _midpoint_tableau

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 0.5

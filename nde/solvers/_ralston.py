from typing import ClassVar

import numpy as np

from ._base import AbstractAdaptiveSolver
from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

#   0 |
# 2/3 | 2/3
# ----+-----------
#     | 1/4  3/4     (Ralston, order 2)
#     | 1    0       (embedded Euler, order 1)
_ralston_tableau = ButcherTableau(
    c=np.array([0.0, 2 / 3]),
    a_lower=(np.array([2 / 3]),),
    b_sol=np.array([0.25, 0.75]),
    b_error=np.array([-0.75, 0.75]),
)


class Ralston(AbstractRungeKutta, AbstractAdaptiveSolver):
    """Ralston's method: the second-order two-stage method with minimal truncation
    error, with an embedded Euler method for adaptive steps. Dense output is cubic
    Hermite.

    ??? cite "Reference"
        Ralston, A. (1962). Runge--Kutta methods with minimum error bounds.
        Mathematics of Computation, 16(80), 431--437.
    """

    tableau: ClassVar[ButcherTableau] = _ralston_tableau

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 0.5

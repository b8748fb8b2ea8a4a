from typing import ClassVar

import numpy as np

from ._base import AbstractAdaptiveSolver
from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

#   0 |
# 1/2 | 1/2
# 3/4 | 0     3/4
#   1 | 2/9   1/3   4/9
# ----+------------------------
#     | 2/9   1/3   4/9   0       (order 3; FSAL: the last row is f(t1, y1))
#     | 7/24  1/4   1/3   1/8     (embedded order 2)
_bosh3_tableau = ButcherTableau(
    c=np.array([0.0, 1 / 2, 3 / 4, 1.0]),
    a_lower=(
        np.array([1 / 2]),
        np.array([0.0, 3 / 4]),
        np.array([2 / 9, 1 / 3, 4 / 9]),
    ),
    b_sol=np.array([2 / 9, 1 / 3, 4 / 9, 0.0]),
    b_error=np.array([2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8]),
)


class Bosh3(AbstractRungeKutta, AbstractAdaptiveSolver):
    """The Bogacki--Shampine 3(2) method: third order, four stages with FSAL (three
    evaluations per step), embedded second-order error estimate. Dense output is
    cubic Hermite (third order).

    ??? cite "Reference"
        Bogacki, P. and Shampine, L. F. (1989). A 3(2) pair of Runge--Kutta formulas.
        Applied Mathematics Letters, 2(4), 321--325.
    """

    tableau: ClassVar[ButcherTableau] = _bosh3_tableau

    def order(self, terms):
        return 3

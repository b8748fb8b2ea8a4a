from typing import ClassVar

import numpy as np

from ._base import AbstractAdaptiveSolver
from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

_a = (
    np.array([1 / 5]),
    np.array([3 / 40, 9 / 40]),
    np.array([44 / 45, -56 / 15, 32 / 9]),
    np.array([19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]),
    np.array([9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]),
    np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]),
)
_b_sol = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
_b_embedded = np.array(
    [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
)

# Shampine's continuous extension: y at the midpoint of the step,
# y(1/2) = y0 + sum_j c_mid[j] k_j, from Shampine (1986).
_c_mid = np.array(
    [
        6025192743 / 30085553152 / 2,
        0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
        11237099 / 235043384 / 2,
    ]
)


def _quartic_through_midpoint(b_sol: np.ndarray, c_mid: np.ndarray) -> np.ndarray:
    """Dense-output matrix of the quartic matching y0, y1, y(1/2), f0 and f1.

    `y(theta) = y0 + a1 theta + a2 theta^2 + a3 theta^3 + a4 theta^4` with
    `a1 = k_0` (slope at 0), `sum a = y1 - y0`, `sum (d a_d) = k_6` (slope at 1, FSAL)
    and `sum a_d / 2**d = y(1/2) - y0`; every quantity is linear in the stages.
    """
    n = len(b_sol)
    a1, f1 = np.eye(n)[0], np.eye(n)[n - 1]
    lhs = np.array([[1, 1, 1], [2, 3, 4], [1 / 4, 1 / 8, 1 / 16]])
    rhs = np.stack([b_sol - a1, f1 - a1, c_mid - a1 / 2])
    a234 = np.linalg.solve(lhs, rhs)
    return np.stack([a1, *a234], axis=1)


# Dormand--Prince 5(4), FSAL: seven stages, six evaluations per step.
_dopri5_tableau = ButcherTableau(
    c=np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]),
    a_lower=_a,
    b_sol=_b_sol,
    b_error=_b_sol - _b_embedded,
    dense=_quartic_through_midpoint(_b_sol, _c_mid),
)


class Dopri5(AbstractRungeKutta, AbstractAdaptiveSolver):
    """The Dormand--Prince 5(4) method: fifth order, seven stages with FSAL, embedded
    fourth-order error estimate, and Shampine's fourth-order dense output.

    ??? cite "References"
        Dormand, J. R. and Prince, P. J. (1980). A family of embedded Runge--Kutta
        formulae. Journal of Computational and Applied Mathematics, 6(1), 19--26.

        Shampine, L. F. (1986). Some practical Runge--Kutta formulas. Mathematics of
        Computation, 46(173), 135--150.
    """

    tableau: ClassVar[ButcherTableau] = _dopri5_tableau

    def order(self, terms):
        return 5

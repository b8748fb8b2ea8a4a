from typing import ClassVar

import numpy as np
from numpy.polynomial import polynomial as P

from ._base import AbstractAdaptiveSolver
from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

# Coefficients from Tsitouras (2011), Table 1 (the 5(4) pair satisfying only the
# first column simplifying assumption), rounded to double precision.
_c = np.array([0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0])
_a = (
    np.array([0.161]),
    np.array([-0.008480655492356989, 0.335480655492357]),
    np.array([2.8971530571054935, -6.359448489975075, 4.3622954328695815]),
    np.array(
        [
            5.325864828439257,
            -11.748883564062828,
            7.4955393428898365,
            -0.09249506636175525,
        ]
    ),
    np.array(
        [
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ]
    ),
    np.array(
        [
            0.09646076681806523,
            0.01,
            0.4798896504144996,
            1.379008574103742,
            -3.290069515436081,
            2.324710524099774,
        ]
    ),
)
_b_sol = np.array(
    [
        0.09646076681806523,
        0.01,
        0.4798896504144996,
        1.379008574103742,
        -3.290069515436081,
        2.324710524099774,
        0.0,
    ]
)
_b_error = np.array(
    [
        0.0017800110522257773,
        0.0008164344596567463,
        -0.007880878010261994,
        0.1447110071732629,
        -0.5823571654525552,
        0.45808210592918686,
        -0.015151515151515152,
    ]
)


def _tsit5_dense() -> np.ndarray:
    """Tsitouras' continuous extension b_j(theta), j = 1..7, from the same paper.

    Each b_j is given in factored form (roots and leading coefficient); expanded here
    into the coefficients of theta, theta^2, theta^3, theta^4.
    """

    def quad(p, q):  # theta^2 + p theta + q
        return [q, p, 1.0]

    def lin(r):  # theta - r
        return [-r, 1.0]

    mul = P.polymul
    polys = [
        mul(
            mul([0, -1.0530884977290216], lin(1.3299890189751412)),
            quad(-1.4364028541716351, 0.7139816917074209),
        ),
        mul([0, 0, 0.1017], quad(-2.1966568338249754, 1.2949852507374631)),
        mul(
            [0, 0, 2.490627285651252793],
            quad(-2.38535645472061657, 1.57803468208092486),
        ),
        mul(
            mul([0, 0, -16.54810288924490272], lin(1.21712927295533244)),
            lin(0.61620406037800089),
        ),
        mul(
            mul([0, 0, 47.37952196281928122], lin(1.203071208372362603)),
            lin(0.658047292653547382),
        ),
        mul(mul([0, 0, -34.87065786149660974], lin(1.2)), lin(0.666666666666666667)),
        mul(mul([0, 0, 2.5], lin(1.0)), lin(0.6)),
    ]
    return np.stack([np.pad(p, (0, 5 - len(p)))[1:] for p in polys])


#     0 |
# 0.161 | 0.161
#   ... | ...                     (seven stages; the last row is f(t1, y1): FSAL)
# ------+-------------------------
#       | b_sol                   (order 5)
#       | b_sol - b_embedded      (error of the embedded order-4 method)
_tsit5_tableau = ButcherTableau(
    c=_c, a_lower=_a, b_sol=_b_sol, b_error=_b_error, dense=_tsit5_dense()
)


class Tsit5(AbstractRungeKutta, AbstractAdaptiveSolver):
    """Tsitouras' 5(4) method: fifth order, seven stages with FSAL (six evaluations
    per step), embedded fourth-order error estimate, fourth-order dense output from
    the method's own interpolant. A good default for non-stiff problems.

    ??? cite "Reference"
        Tsitouras, Ch. (2011). Runge--Kutta pairs of order 5(4) satisfying only the
        first column simplifying assumption. Computers & Mathematics with
        Applications, 62(2), 770--775.
    """

    tableau: ClassVar[ButcherTableau] = _tsit5_tableau

    def order(self, terms):
        return 5

from typing import ClassVar

import numpy as np

from ._runge_kutta import AbstractRungeKutta
from ._tableau import ButcherTableau

# 0 |
# --+--
#   | 1
#
# y1 = y0 + f(t0, y0) dt. No error estimate: fixed steps only.
_euler_tableau = ButcherTableau(c=np.array([0.0]), a_lower=(), b_sol=np.array([1.0]))


class Euler(AbstractRungeKutta):
    """Euler's method: explicit, first order, one stage per step.

    On an SDE (a `MultiTerm` of drift and diffusion) this is Euler--Maruyama, of
    strong order 0.5 (1.0 for additive noise). No error estimate, so fixed steps
    only. Dense output is cubic Hermite.
    """

    tableau: ClassVar[ButcherTableau] = _euler_tableau

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

from typing import ClassVar

import numpy as np

from ._additive_srk import AbstractAdditiveSRK, AdditiveNoiseTableau

# ShARK (shifted additive-noise Runge--Kutta): the stages are shifted by g H,
#
#   Y1 = y0 + g H
#   Y2 = y0 + 5/6 h f(Y1) + g (5/6 W + H)
#   y1 = y0 + h (2/5 f(Y1) + 3/5 f(Y2)) + int g dW      (error: 3/5 h (f(Y2) - f(Y1)))
_shark_tableau = AdditiveNoiseTableau(
    c=np.array([0.0, 5 / 6]),
    a_lower=(np.array([5 / 6]),),
    w=np.array([0.0, 5 / 6]),
    l=np.array([1.0, 1.0]),
    b_sol=np.array([2 / 5, 3 / 5]),
    b_error=np.array([-3 / 5, 3 / 5]),
)


class ShARK(AbstractAdditiveSRK):
    """ShARK: a two-stage stochastic Runge--Kutta method of strong order 1.5 for SDEs
    with additive noise (second order on ODEs), with an embedded error estimate for
    adaptive steps. Two drift and two diffusion evaluations per step. Needs a
    Brownian motion with `levy_area=SpaceTimeLevyArea`; dense output is linear.
    Usually a little more accurate than `SRA1` for the same cost.

    Reference: Foster, dos Reis & Strange, "High order splitting methods for SDEs
    satisfying a commutativity condition", SIAM J. Numer. Anal. 2024
    (arXiv:2210.17543), eq. (6.1).
    """

    tableau: ClassVar[AdditiveNoiseTableau] = _shark_tableau

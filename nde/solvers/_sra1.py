from typing import ClassVar

import numpy as np

from ._additive_srk import AbstractAdditiveSRK, AdditiveNoiseTableau

# Rossler's SRA1, written with the space-time Levy area H (I_(1,0) = h (W/2 + H)):
#
#   Y1 = y0
#   Y2 = y0 + 3/4 h f(Y1) + g (3/4 W + 3/2 H)
#   y1 = y0 + h (1/3 f(Y1) + 2/3 f(Y2)) + int g dW      (error: 2/3 h (f(Y2) - f(Y1)))
_sra1_tableau = AdditiveNoiseTableau(
    c=np.array([0.0, 3 / 4]),
    a_lower=(np.array([3 / 4]),),
    w=np.array([0.0, 3 / 4]),
    l=np.array([0.0, 3 / 2]),
    b_sol=np.array([1 / 3, 2 / 3]),
    b_error=np.array([-2 / 3, 2 / 3]),
)


class SRA1(AbstractAdditiveSRK):
    """Rößler's SRA1: a two-stage stochastic Runge--Kutta method of strong order
    1.5 for SDEs with additive noise (second order on ODEs), with an embedded error
    estimate for adaptive steps. Two drift and two diffusion evaluations per step.
    Needs a Brownian motion with `levy_area=SpaceTimeLevyArea`; dense output is
    linear. (Additive noise: Itô and Stratonovich solutions coincide.)

    Reference: Rößler, "Runge--Kutta methods for the strong approximation of
    solutions of stochastic differential equations", SIAM J. Numer. Anal. 48(3),
    922--952, 2010: the scheme SRA1 for additive noise, with coefficients
    `c0 = (0, 3/4)`, `A0_21 = 3/4`, `B0_21 = 3/2`, `alpha = (1/3, 2/3)`,
    `beta1 = (1, 0)`, `beta2 = (-1, 1)`, `c1 = (1, 0)`.
    """

    tableau: ClassVar[AdditiveNoiseTableau] = _sra1_tableau

"""Numerical methods. See README.md in this folder for how they are built."""

from ._base import (
    AbstractAdaptiveSolver as AbstractAdaptiveSolver,
    AbstractSolver as AbstractSolver,
)
from ._bosh3 import Bosh3 as Bosh3
from ._dopri5 import Dopri5 as Dopri5
from ._dopri8 import Dopri8 as Dopri8
from ._euler import Euler as Euler
from ._heun import Heun as Heun
from ._midpoint import Midpoint as Midpoint
from ._ralston import Ralston as Ralston
from ._runge_kutta import AbstractRungeKutta as AbstractRungeKutta
from ._tableau import ButcherTableau as ButcherTableau
from ._tsit5 import Tsit5 as Tsit5

"""Numerical methods. See README.md in this folder for how they are built."""

from ._additive_srk import (
    AbstractAdditiveSRK as AbstractAdditiveSRK,
    AdditiveNoiseTableau as AdditiveNoiseTableau,
)
from ._base import (
    AbstractAdaptiveSolver as AbstractAdaptiveSolver,
    AbstractSolver as AbstractSolver,
)
from ._bosh3 import Bosh3 as Bosh3
from ._dopri5 import Dopri5 as Dopri5
from ._dopri8 import Dopri8 as Dopri8
from ._euler import Euler as Euler
from ._euler_heun import EulerHeun as EulerHeun
from ._heun import Heun as Heun
from ._ito_milstein import ItoMilstein as ItoMilstein
from ._midpoint import Midpoint as Midpoint
from ._ralston import Ralston as Ralston
from ._reversible_heun import (
    AbstractReversibleSolver as AbstractReversibleSolver,
    ReversibleHeun as ReversibleHeun,
)
from ._runge_kutta import AbstractRungeKutta as AbstractRungeKutta
from ._shark import ShARK as ShARK
from ._sra1 import SRA1 as SRA1
from ._stratonovich_milstein import StratonovichMilstein as StratonovichMilstein
from ._tableau import ButcherTableau as ButcherTableau
from ._tsit5 import Tsit5 as Tsit5

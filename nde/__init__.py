"""nde: neural differential equations in JAX.

A Diffrax-compatible solver core (`import nde as diffrax` runs Diffrax code), its
adjoints, and (in later layers) a Trainer and paper recipes.
"""

from ._brownian import (
    AbstractBrownianPath as AbstractBrownianPath,
    BrownianIncrement as BrownianIncrement,
    SpaceTimeLevyArea as SpaceTimeLevyArea,
    UnsafeBrownianPath as UnsafeBrownianPath,
)
from ._brownian_tree import VirtualBrownianTree as VirtualBrownianTree
from ._control_terms import (
    ControlTerm as ControlTerm,
    WeaklyDiagonalControlTerm as WeaklyDiagonalControlTerm,
)
from ._interpolation import DenseInterpolation as DenseInterpolation
from ._norms import max_norm as max_norm, rms_norm as rms_norm
from ._path_data import (
    backward_hermite_coefficients as backward_hermite_coefficients,
    linear_interpolation as linear_interpolation,
    rectilinear_interpolation as rectilinear_interpolation,
)
from ._paths import (
    AbstractPath as AbstractPath,
    CubicInterpolation as CubicInterpolation,
    LinearInterpolation as LinearInterpolation,
)
from ._progress_meter import (
    AbstractProgressMeter as AbstractProgressMeter,
    NoProgressMeter as NoProgressMeter,
    TextProgressMeter as TextProgressMeter,
    TqdmProgressMeter as TqdmProgressMeter,
)
from ._results import (
    RESULTS as RESULTS,
    is_okay as is_okay,
    is_successful as is_successful,
)
from ._saveat import SaveAt as SaveAt, SubSaveAt as SubSaveAt
from ._solution import Solution as Solution
from ._solve import diffeqsolve as diffeqsolve
from ._terms import (
    AbstractTerm as AbstractTerm,
    MultiTerm as MultiTerm,
    ODETerm as ODETerm,
)
from .adjoints import (
    AbstractAdjoint as AbstractAdjoint,
    BacksolveAdjoint as BacksolveAdjoint,
    DirectAdjoint as DirectAdjoint,
    ForwardMode as ForwardMode,
    RecursiveCheckpointAdjoint as RecursiveCheckpointAdjoint,
    ReversibleAdjoint as ReversibleAdjoint,
    adjoint_rms_seminorm as adjoint_rms_seminorm,
)
from .controllers import (
    AbstractStepSizeController as AbstractStepSizeController,
    ClipStepSizeController as ClipStepSizeController,
    ConstantStepSize as ConstantStepSize,
    PIDController as PIDController,
    StepTo as StepTo,
)
from .solvers import (
    SRA1 as SRA1,
    AbstractAdaptiveSolver as AbstractAdaptiveSolver,
    AbstractReversibleSolver as AbstractReversibleSolver,
    AbstractRungeKutta as AbstractRungeKutta,
    AbstractSolver as AbstractSolver,
    Bosh3 as Bosh3,
    ButcherTableau as ButcherTableau,
    Dopri5 as Dopri5,
    Dopri8 as Dopri8,
    Euler as Euler,
    EulerHeun as EulerHeun,
    Heun as Heun,
    ItoMilstein as ItoMilstein,
    Midpoint as Midpoint,
    Ralston as Ralston,
    ReversibleHeun as ReversibleHeun,
    ShARK as ShARK,
    StratonovichMilstein as StratonovichMilstein,
    Tsit5 as Tsit5,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Trainer lives in `nde.training`, which pulls in optax (and, when a run
    # starts, orbax, tensorboardX, ...): import it on first use so that `import nde`
    # stays as light as the solver core.
    if name == "Trainer":
        from .training import Trainer

        return Trainer
    if name == "training":
        import importlib

        return importlib.import_module(".training", __name__)
    raise AttributeError(f"module 'nde' has no attribute {name!r}")

"""Step size controllers: where each step ends, and whether it is accepted."""

from ._base import AbstractStepSizeController as AbstractStepSizeController
from ._clip import ClipStepSizeController as ClipStepSizeController
from ._constant import ConstantStepSize as ConstantStepSize
from ._pid import PIDController as PIDController
from ._step_to import StepTo as StepTo

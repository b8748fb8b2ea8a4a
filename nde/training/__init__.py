"""Training: `Trainer` (subclass it), its config, checkpoints, logs and devices.

See README.md in this folder for how a `fit` runs. Importing this package imports
optax and equinox only; orbax, tensorboardX, omegaconf and matplotlib are imported
when a run needs them.
"""

from ._checkpointer import (
    Checkpointer as Checkpointer,
    CheckpointError as CheckpointError,
)
from ._compilation_cache import enable_compilation_cache as enable_compilation_cache
from ._config import (
    BestModelConfig as BestModelConfig,
    Config as Config,
    EarlyStoppingConfig as EarlyStoppingConfig,
    ODEConfig as ODEConfig,
    OptimizerConfig as OptimizerConfig,
    TrainerConfig as TrainerConfig,
)
from ._data import BatchOrder as BatchOrder, Dataset as Dataset
from ._devices import DataParallel as DataParallel
from ._logger import Logger as Logger
from ._optim import make_optimizer as make_optimizer, make_schedule as make_schedule
from ._registry import (
    ADJOINTS as ADJOINTS,
    CONTROLLERS as CONTROLLERS,
    SOLVERS as SOLVERS,
    get_adjoint as get_adjoint,
    get_controller as get_controller,
    get_solver as get_solver,
)
from ._run import NonFiniteLossError as NonFiniteLossError
from ._state import TrainState as TrainState
from ._trainer import Trainer as Trainer

"""The training configuration: typed dataclasses, one place for every default.

These are Hydra structured configs: `python -m nde.train recipe=... trainer.steps=10`
is checked against them (an unknown key or a wrong type is rejected by Hydra before
anything runs), and they work as plain dataclasses from Python. A recipe subclasses
`Config` to add its own `data` / `model` sections and to change defaults.

Values that Hydra cannot check by type (a name out of a list, a positive number) are
checked in `__post_init__`, which both `OmegaConf.to_object` and a direct
construction call, so the error is the same from the CLI and from Python.
"""

import dataclasses
from dataclasses import field

ON_NAN = ("stop", "skip")
PROGRESS = ("auto", "bar", "plain", "none")
OPTIMIZERS = ("adam", "adamw", "adabelief")
SCHEDULES = ("constant", "cosine", "linear", "exponential")
MODES = ("min", "max")


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"{where}={value!r} is not one of {', '.join(map(repr, choices))}."
        )


def _check_positive(where: str, value, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{where} must be {bound}, got {value!r}.")


@dataclasses.dataclass
class ODEConfig:
    """How the recipe's differential equation is solved (see `Trainer.diffeqsolve`)."""

    rtol: float = 1e-3  # PIDController relative tolerance
    atol: float = 1e-6  # PIDController absolute tolerance
    pcoeff: float = 0.0  # PID coefficients (0, 1, 0: a plain integral controller)
    icoeff: float = 1.0
    dcoeff: float = 0.0
    dt0: float | None = None  # first step; None lets an adaptive controller pick it
    max_steps: int = 4096  # per solve; also bounds the adjoint's memory

    def __post_init__(self):
        _check_positive("ode.rtol", self.rtol, allow_zero=True)
        _check_positive("ode.atol", self.atol, allow_zero=True)
        _check_positive("ode.dt0", self.dt0)
        _check_positive("ode.max_steps", self.max_steps)


@dataclasses.dataclass
class OptimizerConfig:
    """The default optimizer of `Trainer.make_optimizer`:
    `clip_by_global_norm(clip_norm)` then adam / adamw / adabelief on a schedule."""

    name: str = "adam"  # adam | adamw | adabelief
    lr: float = 1e-3  # peak learning rate
    schedule: str = "constant"  # constant | cosine | linear | exponential
    warmup_steps: int = 0  # linear warm-up from 0 to lr, before the schedule
    final_lr_factor: float = 0.0  # cosine/linear/exponential end at lr * this
    weight_decay: float = 1e-4  # adamw only
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0  # clip_by_global_norm; None turns clipping off

    def __post_init__(self):
        _check_choice("optimizer.name", self.name, OPTIMIZERS)
        _check_choice("optimizer.schedule", self.schedule, SCHEDULES)
        _check_positive("optimizer.lr", self.lr)
        _check_positive("optimizer.warmup_steps", self.warmup_steps, allow_zero=True)
        _check_positive("optimizer.clip_norm", self.clip_norm)
        if self.schedule == "exponential" and self.final_lr_factor <= 0:
            raise ValueError(
                "optimizer.schedule='exponential' needs optimizer.final_lr_factor > 0 "
                f"(the factor reached at the last step), got {self.final_lr_factor!r}."
            )


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Stop when `monitor` (a metric returned by `evaluate`, e.g. `val/loss`) has not
    improved by `min_delta` for `patience` evaluations in a row."""

    monitor: str | None = None  # None: no early stopping
    mode: str = "min"  # min | max
    patience: int = 5  # evaluations without improvement before stopping
    min_delta: float = 0.0

    def __post_init__(self):
        _check_choice("trainer.early_stopping.mode", self.mode, MODES)
        _check_positive("trainer.early_stopping.patience", self.patience)


@dataclasses.dataclass
class BestModelConfig:
    """Keep the model of the best evaluation of `monitor` (a metric returned by
    `evaluate`, e.g. `val/loss`), in memory and in `<run_dir>/best/`; the test at
    the end of training then runs on it (Lightning's `ModelCheckpoint(monitor=...)`
    and `trainer.test(ckpt_path="best")`)."""

    monitor: str | None = None  # None: off, the test runs on the last model
    mode: str = "min"  # min | max

    def __post_init__(self):
        _check_choice("trainer.best.mode", self.mode, MODES)


@dataclasses.dataclass
class TrainerConfig:
    """The training loop: length, intervals, checkpoints, devices, failure policy."""

    steps: int = 1000  # optimizer steps in all
    batch_size: int = 32  # global batch, split over the devices
    shuffle: bool = True  # reshuffle the training set every epoch (seeded)
    log_every: int = 50  # pull metrics to the host, log and print every N steps
    eval_every: int = 250  # call `evaluate` every N steps (and at the end); 0: never
    plot_every: int = 0  # log `plot` every N steps; 0: only at the end
    checkpoint_every: int = 500  # save every N steps (and at the end); 0: only end
    max_to_keep: int = 3  # checkpoints kept on disk
    async_checkpointing: bool = True  # write checkpoints in a background thread
    resume: bool = True  # continue from the run directory's latest checkpoint
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    best: BestModelConfig = field(default_factory=BestModelConfig)  # model selection
    fast_dev_run: int = 0  # N > 0: N steps, one eval and plot, no files written
    x64: bool = False  # train in float64 (jax_enable_x64, within fit only)
    on_nan: str = "stop"  # non-finite loss or gradient: stop | skip the update
    progress: str = "auto"  # auto (bar on a terminal, else lines) | bar | plain | none
    devices: int | None = None  # data-parallel over the first N of jax.devices()
    distributed: bool = False  # call jax.distributed.initialize() (multi-host)
    compilation_cache: str | None = "runs/.jax_cache"  # persistent XLA cache dir

    def __post_init__(self):
        _check_positive("trainer.steps", self.steps)
        _check_positive("trainer.batch_size", self.batch_size)
        _check_positive("trainer.log_every", self.log_every)
        for name in ("eval_every", "plot_every", "checkpoint_every", "fast_dev_run"):
            _check_positive(f"trainer.{name}", getattr(self, name), allow_zero=True)
        _check_positive("trainer.max_to_keep", self.max_to_keep)
        _check_positive("trainer.devices", self.devices)
        _check_choice("trainer.on_nan", self.on_nan, ON_NAN)
        _check_choice("trainer.progress", self.progress, PROGRESS)
        if self.best.monitor is not None and self.eval_every == 0:
            raise ValueError(
                f"trainer.best.monitor={self.best.monitor!r} needs evaluations: set "
                "trainer.eval_every > 0, or trainer.best.monitor=null."
            )


@dataclasses.dataclass
class Config:
    """Everything a run needs. Recipes subclass it to add `data` / `model` sections.

    `solver`, `controller` and `adjoint` are names looked up when the run starts
    (`nde.training.SOLVERS`, `CONTROLLERS`, `ADJOINTS`), or `"module:Class"`.

    **Example:**

        @dataclasses.dataclass
        class MyConfig(nde.training.Config):
            width: int = 64
            trainer: TrainerConfig = field(
                default_factory=lambda: TrainerConfig(steps=2000))
    """

    recipe: str = ""  # set by `python -m nde.train recipe=...`
    seed: int = 0  # model init, data, shuffling and per-step keys
    solver: str = "tsit5"
    controller: str = "pid"
    adjoint: str = "recursive_checkpoint"
    ode: ODEConfig = field(default_factory=ODEConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self):
        _check_positive("seed", self.seed, allow_zero=True)
        if self.controller == "constant" and self.ode.dt0 is None:
            raise ValueError(
                "controller='constant' needs a step size: set ode.dt0 (e.g. "
                "ode.dt0=0.01), or use controller=pid."
            )


def to_dict(config) -> dict:
    """The config as nested plain dicts (for JSON, YAML and hparams)."""
    return dataclasses.asdict(config)


def flatten(tree: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out

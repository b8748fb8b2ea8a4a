"""`Trainer`: the research code is a subclass, the engineering is here.

A subclass writes `make_model` and `loss` (and optionally `make_data`,
`make_batch`, `make_optimizer`, `evaluate`, `plot`, hooks). `fit` owns the loop:
one jitted train step, devices, checkpoints, logs, progress, failure handling.
"""

import abc
import functools
import logging
import pathlib
import time
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.tree_util as jtu
import optax

from ._best_model import BestModel
from ._compilation_cache import enable_compilation_cache
from ._config import Config, flatten, to_dict
from ._data import BatchOrder, Dataset, num_train
from ._devices import DataParallel, initialize_distributed
from ._early_stopping import EarlyStopping
from ._hooks import Hooks
from ._optim import make_optimizer
from ._registry import get_adjoint, get_controller, get_solver
from ._run import Run, host_metrics
from ._state import TrainState, init_state, make_eval_step, make_train_step

log = logging.getLogger("nde.training")


class Trainer(Hooks, abc.ABC):
    """Trains a neural differential equation. Subclass it.

    **Arguments:**

    - `config`: an instance of `config_class` (a `Config` dataclass); default: its
      defaults.
    - `run_dir`: where checkpoints, TensorBoard events, `metrics.jsonl`, plots and
      `config.yaml` go (default `runs/<ClassName>/<time>`; the CLI passes Hydra's
      run directory).

    **Example:**

        class Decay(nde.Trainer):
            def make_model(self, *, key):
                return eqx.nn.MLP(1, 1, 16, 1, key=key)

            def make_data(self, *, key):
                y0 = jax.random.uniform(key, (256, 1))
                return nde.training.Dataset(train=(y0, y0 * jnp.exp(-1.0)))

            def loss(self, model, batch, *, key):
                y0, y1 = batch
                term = nde.ODETerm(lambda t, y, args: args(y))
                solve = lambda y: self.diffeqsolve(term, 0.0, 1.0, y, args=model)
                pred = jax.vmap(lambda y: solve(y).ys[-1])(y0)
                return jnp.mean((pred - y1) ** 2), {}

        model = Decay().fit()

    After `fit`: `trainer.model` (the trained model), `trainer.state` (the whole
    `TrainState`), `trainer.history` (every logged `{"step": ..., name: value}`),
    `trainer.num_compiles` (how often the train step was compiled: 1), and with
    `trainer.best.monitor` set, `trainer.best_model` and `trainer.best_step` (the
    model of the best evaluation, which `test` ran on).
    """

    config_class: ClassVar[type[Config]] = Config

    def __init__(self, config: Config | None = None, *, run_dir=None):
        config = self.config_class() if config is None else config
        if not isinstance(config, Config):
            raise TypeError(
                f"config must be an instance of {self.config_class.__name__} (a "
                f"nde.training.Config dataclass), got {type(config).__name__}."
            )
        self.config = config
        if run_dir is None:
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            run_dir = pathlib.Path("runs") / type(self).__name__ / stamp
        self.run_dir = pathlib.Path(run_dir)
        self.data: Dataset | None = None
        self.state: TrainState | None = None
        self.history: list[dict[str, float]] = []
        self.num_compiles = 0
        self.should_stop = False
        self._parallel: DataParallel | None = None
        self._best: BestModel | None = None
        self.optimizer: optax.GradientTransformation | None = None

    # ---- the research part: what a subclass writes -------------------------------

    @abc.abstractmethod
    def make_model(self, *, key) -> eqx.Module:
        """Build the model to train: an `eqx.Module` (make the vector field a
        Module too, so its parameters are part of the `terms` PyTree).

        **Example override:**

            def make_model(self, *, key):
                mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jnp.tanh, key=key)
                return VectorField(mlp, scale=self.config.model.scale)
        """

    @abc.abstractmethod
    def loss(self, model, batch, *, key) -> tuple[Any, dict]:
        """The training objective on one batch: `(scalar loss, metrics dict)`.

        Runs inside the jitted train step (and the evaluation). Metrics are
        averaged over any batch axes and logged as `train/<name>` (`val/<name>`
        when evaluating); return the solution's `sol.stats` under `"stats"` to log
        `solve/num_steps` and `solve/num_rejected_steps`.

        **Example override:**

            def loss(self, model, batch, *, key):
                ts, ys = batch
                sol = jax.vmap(lambda y0: self.diffeqsolve(
                    nde.ODETerm(model), ts[0], ts[-1], y0,
                    saveat=nde.SaveAt(ts=ts)))(ys[:, 0])
                return jnp.mean((sol.ys - ys) ** 2), {"stats": sol.stats}
        """

    def make_data(self, *, key) -> Dataset | None:
        """The data: a `Dataset(train, val=None, extra=None)` of PyTrees of arrays
        with a leading example axis, or `None` when `loss` makes its own data from
        its key (then every batch is `None`). Called once per `fit`.

        **Example override:**

            def make_data(self, *, key):
                ts, ys = simulate(key, n=self.config.data.num_series)
                return nde.training.Dataset(train=(ts[:200], ys[:200]),
                                            val=(ts[200:], ys[200:]))
        """
        del key
        return None

    def make_batch(self, indices, *, step: int):
        """The batch for optimizer step `step` (0-based) from the example
        `indices` chosen by the seeded shuffle; default: those rows of
        `self.data.train`. Every array of the batch must keep the leading batch
        axis (it is split over the devices). A change of shape recompiles the
        train step, so vary shapes only a few times (e.g. a curriculum).

        **Example override** (a length curriculum):

            def make_batch(self, indices, *, step):
                ts, ys = super().make_batch(indices, step=step)
                if step < self.config.trainer.steps // 2:
                    ts, ys = ts[:, :10], ys[:, :10]
                return ts, ys
        """
        del step
        if self.data is None:
            return None
        return jtu.tree_map(lambda x: x[indices], self.data.train)

    def make_optimizer(self) -> optax.GradientTransformation:
        """The optimizer; default from `config.optimizer`: `clip_by_global_norm`,
        then adam / adamw / adabelief with a warm-up and schedule. `optim/lr` is
        logged for optimizers built with `optax.inject_hyperparams`.

        **Example override:**

            def make_optimizer(self):
                sched = optax.cosine_decay_schedule(3e-3, self.config.trainer.steps)
                return optax.inject_hyperparams(optax.lion)(learning_rate=sched)
        """
        return make_optimizer(self.config.optimizer, self.config.trainer.steps)

    def evaluate(self, model, *, key) -> dict[str, float]:
        """Validation metrics, logged with the prefix `val/` (e.g. `val/loss`,
        `val/solve/num_steps`). Default: `loss` and its metrics on all of `data.val` (nothing
        if there is no validation set). Called every `trainer.eval_every` steps.

        **Example override:**

            def evaluate(self, model, *, key):
                metrics = super().evaluate(model, key=key)
                ts, ys = self.data.val
                pred = self.predict(model, ts, ys[:, 0])
                return {**metrics, "max_err": float(jnp.max(jnp.abs(pred - ys)))}
        """
        if self.data is None or self.data.val is None:
            return {}
        if self._val_batch is None:
            self._val_batch = self.parallel.put_eval(self.data.val)
        return self._eval_step(model, self._val_batch, key)

    def test(self, model, *, key) -> dict[str, float]:
        """Test metrics, computed once when training ends (after the last
        evaluation) and logged with the prefix `test/` to TensorBoard,
        `metrics.jsonl` and the hparams summary. Default: none.

        `model` is the last model, or with `trainer.best.monitor` set, the model of
        the best evaluation (`best_model`; the last one if no evaluation gave a
        finite value). Test on data that `evaluate` does not see: the model was
        selected on those.

        **Example override:**

            def test(self, model, *, key):
                ts, ys, labels = self.data.extra["test"]
                pred = self.classify(model, ts, ys)
                return {"accuracy": float(jnp.mean(pred == labels))}
        """
        return {}

    def plot(self, model):
        """A matplotlib `Figure` to log as an image (and save under `plots/`), or
        `None`. Called at the end of training and every `trainer.plot_every`
        steps; runs outside `jit`.

        **Example override:**

            def plot(self, model):
                from matplotlib.figure import Figure
                fig = Figure(figsize=(4, 4))
                ax = fig.add_subplot()
                ts, ys = self.data.val
                ax.plot(ys[0, :, 0], ys[0, :, 1], label="data")
                ax.plot(*self.predict(model, ts[0], ys[0, 0]).T, label="model")
                ax.legend()
                return fig
        """
        del model
        return None

    # ---- solving, configured by name -------------------------------------------

    @functools.cached_property
    def solver(self):
        """The solver named by `config.solver`."""
        return get_solver(self.config.solver)

    @functools.cached_property
    def stepsize_controller(self):
        """The step size controller named by `config.controller` (with `config.ode`)."""
        return get_controller(self.config.controller, self.config.ode)

    @functools.cached_property
    def adjoint(self):
        """The adjoint named by `config.adjoint`."""
        return get_adjoint(self.config.adjoint)

    def diffeqsolve(self, terms, t0, t1, y0, args=None, **kwargs):
        """`nde.diffeqsolve` with the configured solver, controller, adjoint, `dt0`
        and `max_steps`; any of them (and `saveat`, ...) can be given in `kwargs`.

        `throw=False` by default: a solve that fails (e.g. `max_steps` reached)
        returns `inf` for the states it did not reach, so the loss becomes
        non-finite and `trainer.on_nan` decides (stop with advice, or skip the
        step), instead of an exception from inside the compiled step. (It also
        keeps a host callback out of the step, which would stop JAX's persistent
        compilation cache from storing it.)
        """
        import nde

        options = dict(
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            dt0=self.config.ode.dt0,
            max_steps=self.config.ode.max_steps,
            throw=False,
        )
        options.update(kwargs)
        return nde.diffeqsolve(terms, t0=t0, t1=t1, y0=y0, args=args, **options)

    @property
    def parallel(self) -> DataParallel:
        """The devices and shardings of the current `fit`."""
        if self._parallel is None:
            raise RuntimeError("Trainer.parallel is set up by fit(); call fit() first.")
        return self._parallel

    @property
    def model(self):
        """The model of the current train state."""
        return None if self.state is None else self.state.model

    @property
    def best_model(self):
        """The model of the best evaluation so far by `trainer.best.monitor` (a copy,
        also saved in `<run_dir>/best/`), or `None` when none is tracked (or no
        evaluation gave a finite value yet)."""
        return None if self._best is None else self._best.model

    @property
    def best_step(self) -> int | None:
        """The step of `best_model`, or `None`."""
        return None if self._best is None else self._best.step

    # ---- the engineering part ---------------------------------------------------

    def fit(self) -> eqx.Module:
        """Train for `config.trainer.steps` steps (resuming from the run directory's
        latest checkpoint if there is one); return the trained model: the last one,
        also with `trainer.best.monitor` set (then the test ran on `best_model`).

        Raises `NonFiniteLossError` when the loss or gradient becomes NaN/inf and
        `trainer.on_nan="stop"`.
        """
        tc = self.config.trainer
        _ensure_logging()
        if tc.distributed:
            initialize_distributed()
        if tc.compilation_cache and not tc.fast_dev_run:
            enable_compilation_cache(tc.compilation_cache)
        with _x64(tc.x64):
            with Run(self) as run:
                run.train()
        return self.model

    # ---- used by `Run` ------------------------------------------------------------

    def _setup(self):
        """Everything `Run` needs: data, optimizer, devices, the jitted steps, the
        state template; returns `(template, init)`."""
        cfg = self.config
        # Resolve the names now: a typo fails before any data or compilation.
        for name in ("solver", "stepsize_controller", "adjoint"):
            getattr(self, name)
        self._parallel = DataParallel.create(cfg.trainer.devices)
        self.parallel.check_batch_size(cfg.trainer.batch_size)
        model_key, data_key, train_key, self._eval_key = jax.random.split(
            jax.random.PRNGKey(cfg.seed), 4
        )
        self.data = self.make_data(key=data_key)
        if self.data is not None and not isinstance(self.data, Dataset):
            raise TypeError(
                "make_data must return an nde.training.Dataset or None, got "
                f"{type(self.data).__name__}."
            )
        self._val_batch = None
        self.optimizer = self.make_optimizer()
        self._train_step = make_train_step(
            self.loss,
            self.optimizer,
            on_nan=cfg.trainer.on_nan,
            replicated=self.parallel.replicated,
            on_trace=self._count_compile,
        )
        self._eval_step = make_eval_step(self.loss)

        def init():
            model = self.make_model(key=model_key)
            if not isinstance(model, eqx.Module):
                raise TypeError(
                    f"make_model must return an eqx.Module, got {type(model).__name__}."
                )
            return init_state(model, self.optimizer, key=train_key)

        template = eqx.filter_eval_shape(init)
        template = jtu.tree_map(self._abstract_replicated, template)
        return template, lambda: self.parallel.replicate(init())

    def _abstract_replicated(self, x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=self.parallel.replicated
            )
        return x

    def _count_compile(self):
        self.num_compiles += 1

    def _batch_order(self) -> BatchOrder | None:
        if self.data is None:
            return None
        tc = self.config.trainer
        return BatchOrder(
            num_train(self.data.train), tc.batch_size, self.config.seed, tc.shuffle
        )

    def _next_batch(self, order: BatchOrder | None, step: int):
        indices = None if order is None else order.next()
        batch = self.make_batch(indices, step=step)
        return None if batch is None else self.parallel.shard_batch(batch)

    def _evaluate(self, step: int) -> dict[str, float]:
        key = jax.random.fold_in(self._eval_key, step)
        return _prefixed("val/", host_metrics(self.evaluate(self.model, key=key)))

    def _test(self, step: int, model) -> dict[str, float]:
        key = jax.random.fold_in(jax.random.fold_in(self._eval_key, step), 1)
        return _prefixed("test/", host_metrics(self.test(model, key=key)))

    def _meta(self, order, stopper: EarlyStopping, best: BestModel) -> dict:
        return {
            "data_order": None if order is None else order.state_dict(),
            "early_stopping": stopper.state_dict(),
            "best_model": best.on_checkpoint(),
            "config": to_dict(self.config),
            "trainer_class": f"{type(self).__module__}.{type(self).__qualname__}",
        }

    def _hparams(self) -> dict:
        return flatten(to_dict(self.config))


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {k if k.startswith(prefix) else prefix + k: v for k, v in metrics.items()}


def _x64(enabled: bool):
    # `jax.enable_x64` is the newer spelling of `jax.experimental.enable_x64`; both
    # set jax_enable_x64 for this thread, for the duration of the `with`.
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64, enable_x64

    return enable_x64() if enabled else disable_x64()


def _ensure_logging() -> None:
    # Progress lines and messages are INFO records of "nde.training"; show them when
    # the program has not configured logging itself (Hydra does, in the CLI).
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # libraries that configure the root later: no repeats

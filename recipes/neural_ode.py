"""Neural ODE: learn 2-D dynamics from trajectories (Chen et al. 2018, Sec. 5.1's
spiral, as a data set of many series).

The data are trajectories of the damped oscillator `dy/dt = A y`,
`A = [[-0.1, 2], [-2, -0.1]]`, whose solutions spiral into the origin; initial
states on the annulus `0.5 <= |y0| <= 1.5`, times `0..10` (about three turns),
computed exactly (`y(t) = expm(A t) y0`) so that the data carry no solver error.
The model is `dy/dt = scale * tanh(MLP(y))`, solved with Tsit5 and a PID controller
and fitted by the mean squared error along the whole series. A length curriculum
fits the first 10% of every series first and the whole series afterwards: fitting
long series from a random initialisation easily gets stuck in a local minimum
(a model that just decays to the mean).

    python -m nde.train recipe=neural_ode
    python -m nde.train recipe=neural_ode trainer.steps=2000 solver=dopri5 seed=1

Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
Ordinary Differential Equations", NeurIPS 2018.
"""

import dataclasses
import functools
import math
from dataclasses import field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nde
from nde.training import Config, Dataset, OptimizerConfig, TrainerConfig

# The true dynamics: a damped oscillator (eigenvalues -0.1 +- 2i).
A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


@dataclasses.dataclass
class DataConfig:
    num_series: int = 256  # training trajectories
    num_val: int = 64  # validation trajectories (always full length)
    length: int = 100  # time points per trajectory
    t1: float = 10.0  # trajectories cover [0, t1]
    noise: float = 0.0  # std of Gaussian noise added to the training targets
    curriculum_fraction: float = 0.1  # first this fraction of each series ...
    curriculum_steps: float = 0.3  # ... for this fraction of the steps; then all


@dataclasses.dataclass
class ModelConfig:
    width: int = 64  # MLP hidden width
    depth: int = 2  # MLP hidden layers
    scale: float = 4.0  # bound on |dy/dt| per coordinate: scale * tanh(MLP)


@dataclasses.dataclass
class NeuralODEConfig(Config):
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(
            steps=1000,
            batch_size=32,
            log_every=50,
            eval_every=250,
            checkpoint_every=250,
        )
    )
    optimizer: OptimizerConfig = field(
        # A cosine decay to a tenth settles the fit of the whole series at the end.
        default_factory=lambda: OptimizerConfig(
            lr=5e-3, schedule="cosine", final_lr_factor=0.1, clip_norm=1.0
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


class VectorField(eqx.Module):
    """`f(t, y) = scale * tanh(MLP(y))`: bounded, so an untrained model cannot blow
    up the solver with huge derivatives."""

    mlp: eqx.nn.MLP
    scale: float = eqx.field(static=True)

    def __call__(self, t, y, args):
        return self.scale * jnp.tanh(self.mlp(y))


def simulate(y0s: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Exact trajectories of `dy/dt = A y`: `(n, 2), (T,) -> (n, T, 2)`."""
    vals, vecs = np.linalg.eig(A)
    inv = np.linalg.inv(vecs)
    expm = np.stack([np.real(vecs @ np.diag(np.exp(vals * t)) @ inv) for t in ts])
    return np.einsum("tij,nj->nti", expm, y0s)


def initial_states(n: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0.5, 1.5, n)
    angle = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


class NeuralODE(nde.Trainer):
    """Fit a neural vector field to 2-D spiral trajectories."""

    config_class = NeuralODEConfig

    def make_model(self, *, key):
        m = self.config.model
        mlp = eqx.nn.MLP(2, 2, m.width, m.depth, activation=jax.nn.softplus, key=key)
        return VectorField(mlp, m.scale)

    def make_data(self, *, key):
        d = self.config.data
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        ts = np.linspace(0.0, d.t1, d.length)
        ys = simulate(initial_states(d.num_series + d.num_val, rng), ts)
        train, val = ys[: d.num_series], ys[d.num_series :]
        train = train + d.noise * rng.standard_normal(train.shape)
        tile = lambda n: np.broadcast_to(ts, (n, d.length)).copy()
        full = lambda n: np.full(n, d.length, np.int32)
        return Dataset(
            train=(tile(d.num_series), train),
            val=(tile(d.num_val), val, full(d.num_val)),
        )

    def curriculum_length(self, step: int) -> int:
        """How many points of each series the loss sees at step `step`."""
        d = self.config.data
        if step < d.curriculum_steps * self.config.trainer.steps:
            return max(2, math.ceil(d.curriculum_fraction * d.length))
        return d.length

    def make_batch(self, indices, *, step):
        # The curriculum is a per-series length, not a shorter array: the batch keeps
        # its shape, so the train step is compiled once, and the solver integrates
        # only up to the last point used, so a short prefix costs little.
        ts, ys = super().make_batch(indices, step=step)
        n = np.full(len(indices), self.curriculum_length(step), np.int32)
        return ts, ys, n

    def predict(self, model, ts, y0, n):
        """The model's trajectory from `y0` at the first `n` of the times `ts` (one
        series; later entries repeat the state at `ts[n - 1]`)."""
        t_end = ts[n - 1]
        sol = self.diffeqsolve(
            nde.ODETerm(model),
            ts[0],
            t_end,
            y0,
            saveat=nde.SaveAt(ts=jnp.minimum(ts, t_end)),
        )
        return sol.ys, sol.stats

    def loss(self, model, batch, *, key):
        ts, ys, n = batch
        predict = jax.vmap(self.predict, in_axes=(None, 0, 0, 0))
        pred, stats = predict(model, ts, ys[:, 0], n)
        mask = jnp.arange(ts.shape[1], dtype=n.dtype) < n[:, None]
        squared = jnp.sum((pred - ys) ** 2, axis=-1)
        mse = jnp.sum(jnp.where(mask, squared, 0)) / (jnp.sum(mask) * ys.shape[-1])
        return mse, {"stats": stats}

    @functools.cached_property
    def _predict_batch(self):
        return eqx.filter_jit(jax.vmap(self.predict, in_axes=(None, 0, 0, 0)))

    def plot(self, model):
        from matplotlib.figure import Figure

        ts, ys, n = (x[:4] for x in self.data.val)
        pred, _ = self._predict_batch(model, ts, ys[:, 0], n)
        fig = Figure(figsize=(5, 5), layout="constrained")
        ax = fig.add_subplot()
        for i in range(4):
            (line,) = ax.plot(ys[i, :, 0], ys[i, :, 1], ".", ms=3)
            ax.plot(pred[i, :, 0], pred[i, :, 1], "-", color=line.get_color())
        ax.set(
            xlabel="$y_1$",
            ylabel="$y_2$",
            aspect="equal",
            title="validation series: data (dots), model (lines)",
        )
        return fig


RECIPE = NeuralODE
SMOKE_OVERRIDES = ["data.num_series=32", "data.num_val=8", "data.length=20"]

"""A tiny Trainer subclass used by the training tests (in process, and as a recipe
file run by the CLI in subprocesses): fit a linear vector field `dy/dt = W y + b` to
trajectories of `dy/dt = A y`, with fixed Tsit5 steps so that each compile is quick.
"""

import dataclasses
from dataclasses import field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import nde
from nde.training import Config, Dataset, ODEConfig, OptimizerConfig, TrainerConfig

A = np.array([[-0.1, 1.0], [-1.0, -0.1]])
TS = np.linspace(0.0, 1.0, 5)


@dataclasses.dataclass
class TinyData:
    num_train: int = 32
    num_val: int = 8
    nan_after: float = 0.0  # > 0: the loss becomes NaN once the model's bias exceeds it


@dataclasses.dataclass
class TinyConfig(Config):
    # Four fixed Euler steps, differentiated directly: the cheapest solve to compile
    # with its gradient.
    solver: str = "euler"
    controller: str = "constant"
    adjoint: str = "direct"
    ode: ODEConfig = field(default_factory=lambda: ODEConfig(dt0=0.25, max_steps=8))
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(
            steps=6,
            batch_size=8,
            log_every=1,
            eval_every=3,
            checkpoint_every=3,
            progress="plain",
            compilation_cache=None,
            x64=True,
        )
    )
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.05))
    data: TinyData = field(default_factory=TinyData)


class Linear(eqx.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, t, y, args):
        return self.weight @ y + self.bias


def simulate(y0s):
    """Exact solutions y(t) = expm(A t) y0 at TS, by eigen-decomposition."""
    vals, vecs = np.linalg.eig(A)
    inv = np.linalg.inv(vecs)
    expm = [np.real(vecs @ np.diag(np.exp(vals * t)) @ inv) for t in TS]
    return np.stack([y0s @ e.T for e in expm], axis=1)


class TinyTrainer(nde.Trainer):
    config_class = TinyConfig

    def make_model(self, *, key):
        wkey, bkey = jax.random.split(key)
        return Linear(
            0.1 * jax.random.normal(wkey, (2, 2)), 0.1 * jax.random.normal(bkey, (2,))
        )

    def make_data(self, *, key):
        n = self.config.data.num_train + self.config.data.num_val
        y0s = np.asarray(jax.random.uniform(key, (n, 2), minval=-1, maxval=1))
        ys = simulate(y0s)
        k = self.config.data.num_train
        return Dataset(train=ys[:k], val=ys[k:])

    def loss(self, model, batch, *, key):
        ys = batch
        ts = jnp.asarray(TS, ys.dtype)

        def solve(y0):
            return self.diffeqsolve(
                nde.ODETerm(model), ts[0], ts[-1], y0, saveat=nde.SaveAt(ts=ts)
            )

        sol = jax.vmap(solve)(ys[:, 0])
        loss = jnp.mean((sol.ys - ys) ** 2)
        if self.config.data.nan_after:
            over = jnp.max(model.bias) - self.config.data.nan_after
            loss = loss + jnp.sqrt(-over)  # NaN once the bias passes the threshold
        noise = jax.random.normal(key, ()) * 0  # the key is usable inside the step
        return loss + noise, {"stats": sol.stats, "mae": jnp.mean(jnp.abs(sol.ys - ys))}

    def plot(self, model):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 3))
        fig.add_subplot().plot(TS, self.data.val[0, :, 0])
        return fig


RECIPE = TinyTrainer

"""Continuous normalising flow (FFJORD) on 2-D toy densities: eight Gaussians and
two moons (Grathwohl et al. 2019).

A time-dependent vector field `f(t, y) = MLP([t, y])` carries a data point `x` at
`t = 0` to `z = y(1)`, which should be distributed as the base `N(0, I)`. Along the
way the log-density changes by the divergence of the field (the instantaneous change
of variables, Chen et al. 2018, Thm. 1), so with the augmented state `(y, l)`,

    dy/dt = f(t, y),   dl/dt = tr(df/dy)(t, y),   y(0) = x,  l(0) = 0,

the model's log-likelihood is `log q(x) = log N(y(1); 0, I) + l(1)`. Training
minimises the mean negative log-likelihood with the divergence replaced by
Hutchinson's unbiased estimate `e^T (df/dy) e` (FFJORD's key step, Sec. 3.1): one
`jax.jvp` per sample and evaluation, with one noise vector `e` (Rademacher or
Gaussian) held fixed over each solve. Validation, test and plots use the exact
divergence, the trace of the 2 x 2 Jacobian, with tighter tolerances.

The target. The data densities are known (`recipes/_toy_densities.py`), so the best
achievable NLL is the differential entropy `H(p) = E_p[-log p]`: the NLL of points
drawn from `p` is `H(p) + KL(p || q)` plus sampling noise. Every evaluation logs
`val/loss` (the exact NLL of the validation set) and `val/kl`, `val/kl_stderr`: the
mean of `-log q(x) + log p(x)` over the same points, an estimate of `KL(p || q)`
with far less noise than the NLL itself, and its standard error. At the end the
test set gives `test/nll`, `test/kl`, `test/kl_stderr`, `test/entropy` (the true
`-log p` averaged over the test points) and the reference `test/entropy_reference`
(a Monte Carlo estimate of `H(p)` from `data.num_entropy` fresh samples, standard
error `test/entropy_reference_stderr`). The target: `test/kl <= 0.1` nats, i.e. a
test NLL within 0.1 nats of the entropy; `recipes/README.md` gives the values
reached.

    python -m nde.train recipe=cnf
    python -m nde.train recipe=cnf data.dataset=two_moons

References: W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud,
"FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models",
ICLR 2019. R. T. Q. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud, "Neural
Ordinary Differential Equations", NeurIPS 2018. M. F. Hutchinson, "A stochastic
estimator of the trace of the influence matrix for Laplacian smoothing splines",
1989.
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
from nde.training import (
    Config,
    Dataset,
    ODEConfig,
    OptimizerConfig,
    TrainerConfig,
)

from ._toy_densities import DENSITIES, entropy

NOISES = ("rademacher", "gaussian")
ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus}


@dataclasses.dataclass
class DataConfig:
    dataset: str = "eight_gaussians"  # eight_gaussians | two_moons
    num_train: int = 50_000  # training points (an epoch is num_train / batch_size)
    num_val: int = 1000  # validation points (exact NLL)
    num_test: int = 5000  # test points (exact NLL, and the true -log p on them)
    num_entropy: int = 50_000  # fresh samples for the Monte Carlo entropy H(p)

    def __post_init__(self):
        if self.dataset not in DENSITIES:
            raise ValueError(
                f"data.dataset={self.dataset!r} is not one of "
                f"{', '.join(map(repr, DENSITIES))}."
            )


@dataclasses.dataclass
class ModelConfig:
    width: int = 64  # MLP hidden width
    depth: int = 3  # MLP hidden layers
    activation: str = "tanh"  # tanh | softplus: smooth, so the divergence is too
    noise: str = "rademacher"  # Hutchinson noise: rademacher | gaussian

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"model.noise={self.noise!r} is not one of {NOISES}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={self.activation!r} is not one of "
                f"{tuple(ACTIVATIONS)}."
            )


@dataclasses.dataclass
class EvalConfig:
    rtol: float = 1e-5  # tolerances of the exact-divergence solves (val, test, ...
    atol: float = 1e-5  # ... plot): tight, as solver error biases the NLL directly
    grid: int = 100  # the density plot evaluates grid x grid points
    extent: float = 4.5  # ... on the square [-extent, extent]^2
    num_samples: int = 2000  # model samples (base -> data) in the plot


@dataclasses.dataclass
class CNFConfig(Config):
    ode: ODEConfig = field(
        # Training tolerances: looser than evaluation's, for speed.
        default_factory=lambda: ODEConfig(rtol=1e-3, atol=1e-5)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(
            steps=1500,
            batch_size=256,
            log_every=50,
            eval_every=500,
            checkpoint_every=500,
        )
    )
    optimizer: OptimizerConfig = field(
        # A short warm-up, then a cosine decay to 5% that settles the fit at the end.
        default_factory=lambda: OptimizerConfig(
            lr=3e-3, schedule="cosine", final_lr_factor=0.05, warmup_steps=50
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


class VectorField(eqx.Module):
    """`f(t, y) = MLP([t, y])`: time enters as an extra input."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y):
        t = jnp.broadcast_to(jnp.asarray(t, y.dtype), (1,))
        return self.mlp(jnp.concatenate([t, y]))


class HutchinsonDynamics(eqx.Module):
    """The augmented field `(f, e^T (df/dy) e)` with the noise `e` as `args`: an
    unbiased estimate of `(f, tr(df/dy))` from one Jacobian-vector product."""

    field: VectorField

    def __call__(self, t, state, noise):
        y, _ = state
        f, jvp = jax.jvp(lambda y: self.field(t, y), (y,), (noise,))
        return f, jnp.dot(noise, jvp)


class ExactDynamics(eqx.Module):
    """The augmented field `(f, tr(df/dy))`, the Jacobian from one linearisation
    and one Jacobian-vector product per coordinate (two, in 2-D)."""

    field: VectorField

    def __call__(self, t, state, args):
        y, _ = state
        f, linear = jax.linearize(lambda y: self.field(t, y), y)
        jacobian = jax.vmap(linear, out_axes=1)(jnp.eye(y.shape[0], dtype=y.dtype))
        return f, jnp.trace(jacobian)


def log_normal(z):
    """`log N(z; 0, I)`."""
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[0] * math.log(2 * math.pi)


def rademacher_or_gaussian(kind: str, key, shape, dtype):
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    return jax.random.normal(key, shape, dtype=dtype)


class CNF(nde.Trainer):
    """Fit a continuous normalising flow to samples of a 2-D toy density."""

    config_class = CNFConfig

    @functools.cached_property
    def density(self):
        return DENSITIES[self.config.data.dataset]()

    def make_model(self, *, key):
        m = self.config.model
        activation = ACTIVATIONS[m.activation]
        mlp = eqx.nn.MLP(3, 2, m.width, m.depth, activation=activation, key=key)
        return VectorField(mlp)

    def make_data(self, *, key):
        d = self.config.data
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        sizes = (d.num_train, d.num_val, d.num_test)
        train, val, test = (
            self.density.sample(n, rng).astype(np.float32) for n in sizes
        )
        # H(p) from fresh samples; -log p on the val and test points themselves
        # for the paired estimates of KL(p || q) (`nll_metrics`).
        h, h_err = entropy(self.density, d.num_entropy, rng)
        extra = dict(
            test=test,
            test_neg_log_p=-self.density.log_prob(test.astype(np.float64)),
            val_neg_log_p=-self.density.log_prob(val.astype(np.float64)),
            entropy=h,
            entropy_stderr=h_err,
        )
        return Dataset(train=train, val=val, extra=extra)

    def log_likelihood(self, dynamics, x, args, **kwargs):
        """`log q(x)` of one point: solve the augmented system from the data
        (`t = 0`) to the base (`t = 1`)."""
        state0 = (x, jnp.zeros((), x.dtype))
        sol = self.diffeqsolve(nde.ODETerm(dynamics), 0.0, 1.0, state0, args, **kwargs)
        z, divergence_integral = sol.ys[0][-1], sol.ys[1][-1]
        return log_normal(z) + divergence_integral, sol.stats

    def loss(self, model, batch, *, key):
        kind = self.config.model.noise
        noise = rademacher_or_gaussian(kind, key, batch.shape, batch.dtype)
        log_q, stats = jax.vmap(self.log_likelihood, in_axes=(None, 0, 0))(
            HutchinsonDynamics(model), batch, noise
        )
        return -jnp.mean(log_q), {"stats": stats}

    @functools.cached_property
    def exact_log_likelihood(self):
        """`(model, points) -> log q(points)`, exact divergence, eval tolerances."""
        e = self.config.evaluation
        controller = nde.PIDController(rtol=e.rtol, atol=e.atol)

        def log_q(model, points):
            solve = lambda x: self.log_likelihood(
                ExactDynamics(model), x, None, stepsize_controller=controller
            )
            return jax.vmap(solve)(points)

        return eqx.filter_jit(log_q)

    def nll_metrics(self, model, points, neg_log_p) -> dict[str, float]:
        """The exact NLL of `points` and, with the true `-log p` on them, the
        paired estimate of `KL(p || q)`: `-log q(x) + log p(x)` per point, whose
        mean has much less noise than either term's."""
        log_q, stats = self.exact_log_likelihood(model, points)
        nll = -np.asarray(log_q, np.float64)
        gap = nll - neg_log_p
        return {
            "nll": float(np.mean(nll)),
            "entropy": float(np.mean(neg_log_p)),
            "kl": float(np.mean(gap)),
            "kl_stderr": float(np.std(gap) / math.sqrt(len(gap))),
            "solve/num_steps": float(np.mean(stats["num_steps"])),
        }

    def evaluate(self, model, *, key):
        del key
        metrics = self.nll_metrics(
            model, self.data.val, self.data.extra["val_neg_log_p"]
        )
        return {"loss": metrics.pop("nll"), **metrics}

    def test(self, model, *, key):
        """The test set, once when training ends: `test/nll`, `test/kl`, ... and
        the reference entropy `test/entropy_reference`."""
        del key
        extra = self.data.extra
        metrics = self.nll_metrics(model, extra["test"], extra["test_neg_log_p"])
        metrics["entropy_reference"] = extra["entropy"]
        metrics["entropy_reference_stderr"] = extra["entropy_stderr"]
        return metrics

    @functools.cached_property
    def _sample(self):
        """`(model, z) -> x`: the generative direction, base (`t = 1`) to data."""

        def sample(model, z):
            term = nde.ODETerm(lambda t, y, args: model(t, y))
            return self.diffeqsolve(term, 1.0, 0.0, z).ys[-1]

        return eqx.filter_jit(jax.vmap(sample, in_axes=(None, 0)))

    def plot(self, model):
        from matplotlib.figure import Figure

        e = self.config.evaluation
        axis = np.linspace(-e.extent, e.extent, e.grid, dtype=np.float32)
        grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
        log_q, _ = self.exact_log_likelihood(model, grid)
        density = np.exp(np.asarray(log_q)).reshape(e.grid, e.grid)
        z = jax.random.normal(jax.random.PRNGKey(0), (e.num_samples, 2))
        samples = np.asarray(self._sample(model, z))
        data = self.data.extra["test"][: e.num_samples]
        true = np.exp(self.density.log_prob(grid.astype(np.float64)))

        fig = Figure(figsize=(12, 3.4), layout="constrained")
        axes = fig.subplots(1, 4, sharex=True, sharey=True)
        image = dict(extent=(-e.extent, e.extent) * 2, origin="lower", cmap="magma")
        axes[0].imshow(true.reshape(e.grid, e.grid), **image)
        axes[1].plot(*data.T, ".", ms=1, alpha=0.5)
        axes[2].imshow(density, **image)
        axes[3].plot(*samples.T, ".", ms=1, alpha=0.5, color="C1")
        titles = (
            "true density",
            "data samples",
            "model density (exact)",
            "model samples",
        )
        for ax, title in zip(axes, titles, strict=True):
            ax.set(
                title=title,
                aspect="equal",
                xlim=(-e.extent, e.extent),
                ylim=(-e.extent, e.extent),
            )
        return fig


RECIPE = CNF
SMOKE_OVERRIDES = [
    "data.num_train=512",
    "data.num_val=64",
    "data.num_test=64",
    "data.num_entropy=256",
    "trainer.batch_size=64",
    "evaluation.grid=16",
    "evaluation.num_samples=64",
]

"""Neural SDE as a GAN (Kidger, Foster, Li, Oberhauser & Lyons, ICML 2021): a neural
SDE generator trained against a neural CDE discriminator with the Wasserstein loss.

The data are paths of the time-dependent Ornstein-Uhlenbeck process

    dX = (mu t - theta X) dt + sigma dW,    X(0) ~ Uniform(x0_low, x0_high),

observed at `length` evenly spaced times on `[0, t1]` and simulated exactly (the
transition over a step is Gaussian with a closed-form mean and variance), so the
data carry no discretisation error.

The generator draws `V ~ N(0, I)`, maps it to a hidden initial state `x0 = MLP(V)`,
solves the Stratonovich SDE `dx = f(t, x) dt + g(t, x) o dW` (ReversibleHeun on a
`VirtualBrownianTree` per sample, gradients by `ReversibleAdjoint` in O(1) memory)
and reads out `Y = linear(x)` at the data times. The discriminator is a neural CDE
`h0 = MLP(t0, Y0)`, `dh = u(t, h) d(t, Y)` over the linear interpolation of a path,
and scores it by `linear(h(t1))`.

Both players are one model and one optimizer step: the loss is the Wasserstein
estimate `W = E[D(real)] - E[D(fake)]`, which the generator minimises and the
discriminator maximises. The discriminator enters the loss through a gradient
reversal (the identity, whose backward pass negates the cotangent), so descending
the loss is simultaneous gradient descent (generator) - ascent (discriminator).
What is evaluated and plotted is an exponential moving average of the
generator's weights over the steps: the last iterate of the game oscillates.
So does the average, more slowly: the model tested at the end is the one of the
best evaluation (`trainer.best.monitor=val/moment_err`), on held-out test paths.
The discriminator is kept Lipschitz by clipping its weights after every update
(Arjovsky, Chintala & Bottou, "Wasserstein GAN", ICML 2017), with the bound per
layer and the 1-Lipschitz LipSwish activation chosen so that each layer is
1-Lipschitz ("careful clipping" of Kidger, Foster, Li & Lyons, "Efficient and
accurate gradients for neural SDEs", NeurIPS 2021).

    python -m nde.train recipe=neural_sde
    python -m nde.train recipe=neural_sde trainer.steps=4000 gan.discriminator_lr=3e-3

Logged: `val/loss` (the Wasserstein estimate on the validation paths),
`val/mean_err` and `val/std_err` (the largest relative error of the generated
marginal mean and standard deviation at 5 evaluation times, from `eval_samples`
generated paths against the validation paths), `val/moment_err` (the larger of the
two: what selects the best model), and a plot of generated against real paths. At
the end, `test/mean_err`, `test/std_err` and `test/moment_err`: the same errors of
the best model (by `val/moment_err`; its step is in the log) against `num_test`
held-out paths, with fresh generator noise. Those are the figures to report: the
validation errors of the selected model are biased low by the selection.

Reference: P. Kidger, J. Foster, X. Li, H. Oberhauser, T. Lyons, "Neural SDEs as
Infinite-Dimensional GANs", ICML 2021.
"""

import dataclasses
import functools
from dataclasses import field

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import nde
from nde.training import (
    BestModelConfig,
    Config,
    Dataset,
    ODEConfig,
    OptimizerConfig,
    TrainerConfig,
    make_optimizer,
)


@dataclasses.dataclass
class DataConfig:
    num_series: int = 8192  # training paths
    num_val: int = 4096  # validation paths: val/loss and the moments for selection
    num_test: int = 4096  # held-out paths: the test moments of the selected model
    length: int = 33  # observation times, evenly spaced on [0, t1]
    t1: float = 2.0  # paths cover [0, t1]
    mu: float = 4.0  # drift mu t - theta x: the mean is pushed up linearly in time
    theta: float = 2.0  # ... and pulled back to it at this rate
    sigma: float = 1.0  # noise; stationary std sigma / sqrt(2 theta) = 0.5
    x0_low: float = 0.5  # X(0) ~ Uniform(x0_low, x0_high): mean 1, std 0.29
    x0_high: float = 1.5


@dataclasses.dataclass
class ModelConfig:
    initial_noise: int = 4  # size of the Gaussian noise V mapped to x0
    noise: int = 4  # dimension of the generator's Brownian motion
    hidden: int = 8  # generator state size
    width: int = 32  # generator MLP width
    depth: int = 1  # generator MLP hidden layers
    disc_hidden: int = 16  # discriminator CDE state size
    disc_width: int = 32  # discriminator MLP width
    disc_depth: int = 1  # discriminator MLP hidden layers


@dataclasses.dataclass
class GANConfig:
    # Its own Adam step (optimizer.lr: the generator's), 10x faster: a
    # discriminator closer to its optimum for the current generator. At 5x (5e-3)
    # the generated spread stalled 10-30% off on 2 of 3 seeds (recipes/README.md).
    discriminator_lr: float = 1e-2
    # Weights clipped to +-clip_scale / fan-in. At 1 (each layer 1-Lipschitz) the
    # unit's slope in any one input is at most 1 / fan-in: the discriminator is
    # then nearly linear in the path and sees the mean but not the spread. Larger
    # bounds let it bend more (the spread of X(0) is 0.29); at 8 the game diverged.
    clip_scale: float = 5.0
    eval_samples: int = 4096  # generated paths for the val/ and test/ moment errors
    eval_times: int = 5  # evenly spaced data times at which the moments are compared
    # EMA of the generator evaluated; 0: the last iterate. Over about 1 / (1 -
    # decay) = 200 steps: a longer average (0.998) lags behind the generator and
    # never got the validation std error below 10.6% in a 3,000-step run.
    average_decay: float = 0.995


@dataclasses.dataclass
class NeuralSDEConfig(Config):
    solver: str = "reversible_heun"  # the generator and the discriminator
    controller: str = "constant"  # fixed steps: dt0 = the data spacing
    adjoint: str = "reversible"  # O(1) memory backpropagation through the solves
    ode: ODEConfig = field(
        # The generator's step; the Brownian tree resolves half of it. The
        # discriminator steps from one data time to the next.
        default_factory=lambda: ODEConfig(dt0=0.0625, max_steps=256)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(
            steps=3000,
            batch_size=128,
            log_every=100,
            # Often: the game oscillates, and the evaluations are the candidates
            # for the model tested at the end (one costs about 0.6 s).
            eval_every=50,
            checkpoint_every=500,
            best=BestModelConfig(monitor="val/moment_err"),
        )
    )
    optimizer: OptimizerConfig = field(
        # The generator's (the discriminator's: gan.discriminator_lr, 10x faster,
        # same schedule). b1 = 0: momentum destabilises the two-player game
        # (Arjovsky et al. used RMSprop; Adam with b1 = 0 is RMSprop with bias
        # correction). The cosine decay damps the game's oscillation at the end. No
        # gradient norm clipping: the discriminator's weights are clipped instead.
        default_factory=lambda: OptimizerConfig(
            lr=1e-3, b1=0.0, schedule="cosine", final_lr_factor=0.1, clip_norm=None
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GANConfig = field(default_factory=GANConfig)


def lipswish(x):
    """`0.909 x sigmoid(x)`: Swish scaled to be 1-Lipschitz (Chen, Behrmann,
    Duvenaud & Jacobsen, "Residual Flows for Invertible Generative Modeling",
    NeurIPS 2019)."""
    return 0.909 * jax.nn.silu(x)


def _identity(x):
    return x


def _mlp(n_in, n_out, width, depth, final=_identity, *, key):
    return eqx.nn.MLP(
        n_in, n_out, width, depth, activation=lipswish, final_activation=final, key=key
    )


class MatrixField(eqx.Module):
    """`(t, y, args) -> tanh(MLP(t, y))` reshaped to a `(len(y), columns)` matrix:
    the drift (`columns = 0`: a vector) or diffusion of the generator, or the vector
    field of the discriminator's CDE."""

    mlp: eqx.nn.MLP
    columns: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        out = self.mlp(jnp.concatenate([t[None].astype(y.dtype), y]))
        return out if self.columns == 0 else out.reshape(y.shape[0], self.columns)


def _field(size, columns, width, depth, *, key):
    n_out = size * max(columns, 1)
    return MatrixField(_mlp(1 + size, n_out, width, depth, jnp.tanh, key=key), columns)


class Generator(eqx.Module):
    """Noise -> a path at the data times: `x0 = MLP(V)`, the neural SDE, a readout."""

    initial: eqx.nn.MLP
    drift: MatrixField
    diffusion: MatrixField
    readout: eqx.nn.Linear
    initial_noise: int = eqx.field(static=True)
    noise: int = eqx.field(static=True)

    def __init__(self, m: ModelConfig, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.initial = _mlp(m.initial_noise, m.hidden, m.width, m.depth, key=k1)
        self.drift = _field(m.hidden, 0, m.width, m.depth, key=k2)
        self.diffusion = _field(m.hidden, m.noise, m.width, m.depth, key=k3)
        self.readout = eqx.nn.Linear(m.hidden, 1, key=k4)
        self.initial_noise, self.noise = m.initial_noise, m.noise


class Discriminator(eqx.Module):
    """A path -> a score: the neural CDE `dh = u(t, h) d(t, Y)`, read out at t1."""

    initial: eqx.nn.MLP
    field: MatrixField
    readout: eqx.nn.Linear

    def __init__(self, m: ModelConfig, *, key):
        k1, k2, k3 = jr.split(key, 3)
        w, d = m.disc_width, m.disc_depth
        self.initial = _mlp(2, m.disc_hidden, w, d, key=k1)
        self.field = _field(m.disc_hidden, 2, w, d, key=k2)
        self.readout = eqx.nn.Linear(m.disc_hidden, 1, key=k3)


class SDEGAN(eqx.Module):
    """Both players, trained by one optimizer step on the whole module, and an
    exponential moving average of the generator's weights (`average`), which is
    what is evaluated and plotted: in a GAN's game the last iterate oscillates
    around the equilibrium, the average is much closer to it."""

    generator: Generator
    discriminator: Discriminator
    average: Generator


def reverse_gradient(module):
    """The identity, whose gradient is negated: `d loss / d module` becomes
    `-d loss / d module` (for its arrays), so that descending the loss ascends it
    in `module`."""
    arrays, rest = eqx.partition(module, eqx.is_array)
    return eqx.combine(_negate_cotangent(arrays), rest)


@jax.custom_vjp
def _negate_cotangent(arrays):
    return arrays


def _negate_fwd(arrays):
    return arrays, None


def _negate_bwd(_, cotangent):
    return (jax.tree_util.tree_map(jnp.negative, cotangent),)


_negate_cotangent.defvjp(_negate_fwd, _negate_bwd)


def clip_lipschitz(discriminator, scale: float = 1.0):
    """Clip each `Linear` weight to `[-scale / in_features, scale / in_features]`:
    then every row of absolute values sums to at most `scale`, so the layer is
    `scale`-Lipschitz in the max-norm, and with 1-Lipschitz activations the
    discriminator is Lipschitz (a constant factor only scales the Wasserstein
    estimate, Arjovsky et al. 2017)."""
    is_linear = lambda x: isinstance(x, eqx.nn.Linear)

    def clip(layer):
        if not is_linear(layer):
            return layer
        bound = scale / layer.in_features
        return eqx.tree_at(
            lambda lin: lin.weight, layer, jnp.clip(layer.weight, -bound, bound)
        )

    return jax.tree_util.tree_map(clip, discriminator, is_leaf=is_linear)


def clip_discriminator_weights(scale: float = 1.0) -> optax.GradientTransformation:
    """An optax step (last in a chain) that changes the update so that the
    discriminator's weights after it are `clip_lipschitz`'s projection."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params):
        old = params.discriminator
        new = clip_lipschitz(eqx.apply_updates(old, updates.discriminator), scale)
        projected = jax.tree_util.tree_map(lambda n, o: n - o, new, old)
        return eqx.tree_at(lambda u: u.discriminator, updates, projected), state

    return optax.GradientTransformation(init, update)


def _player_labels(params):
    mark = lambda tree, name: jax.tree_util.tree_map(lambda _: name, tree)
    return SDEGAN(
        mark(params.generator, "generator"),
        mark(params.discriminator, "discriminator"),
        mark(params.average, "average"),
    )


def average_generator(decay: float) -> optax.GradientTransformation:
    """An optax step (after the players' optimizers) that moves `average` towards
    the generator's new weights: `average <- decay average + (1 - decay) generator`."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params):
        new = eqx.apply_updates(params.generator, updates.generator)
        move = lambda n, a: (1 - decay) * (n - a)
        step = jax.tree_util.tree_map(move, new, params.average)
        return eqx.tree_at(lambda u: u.average, updates, step), state

    return optax.GradientTransformation(init, update)


def simulate(x0s: np.ndarray, ts: np.ndarray, d: DataConfig, rng) -> np.ndarray:
    """Exact paths of `dX = (mu t - theta X) dt + sigma dW` from `x0s` at the evenly
    spaced `ts`: `(n,), (T,) -> (n, T)`.

    Over a step `h` from `t`, `X(t + h) = e^{-theta h} X(t) + mu I + N(0, v)` with
    `I = int_0^h e^{-theta u} (t + h - u) du` and `v = sigma^2 (1 - e^{-2 theta h}) /
    (2 theta)`."""
    h, th = ts[1] - ts[0], d.theta
    decay = np.exp(-th * h)
    ramp = (1 - decay * (1 + th * h)) / th**2  # int_0^h u e^{-theta u} du
    std = d.sigma * np.sqrt((1 - decay**2) / (2 * th))
    xs = [x0s]
    for t in ts[:-1]:
        mean = decay * xs[-1] + d.mu * ((t + h) * (1 - decay) / th - ramp)
        xs.append(mean + std * rng.standard_normal(x0s.shape))
    return np.stack(xs, axis=-1)


def max_relative_error(fake, real, indices) -> tuple[float, float]:
    """The largest relative error of the marginal mean and of the standard deviation
    of `fake` against `real` (both `(n, T)`) over the times `indices`."""
    fake, real = np.asarray(fake)[:, indices], np.asarray(real)[:, indices]
    rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))
    return rel(fake.mean(0), real.mean(0)), rel(fake.std(0), real.std(0))


class NeuralSDE(nde.Trainer):
    """An SDE-GAN on time-dependent Ornstein-Uhlenbeck paths."""

    config_class = NeuralSDEConfig

    @property
    def ts(self):
        """The data times (a fresh array per call: it may be created under `jit`)."""
        d = self.config.data
        return jnp.linspace(0.0, d.t1, d.length)

    def make_model(self, *, key):
        kg, kd = jr.split(key)
        m = self.config.model
        generator = Generator(m, key=kg)
        # A copy: the train step donates the state, which must not alias buffers.
        copy = lambda x: x.copy() if eqx.is_array(x) else x
        average = jax.tree_util.tree_map(copy, generator)
        disc = clip_lipschitz(Discriminator(m, key=kd), self.config.gan.clip_scale)
        return SDEGAN(generator, disc, average)

    def make_data(self, *, key):
        d = self.config.data
        rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
        ts = np.linspace(0.0, d.t1, d.length)
        dtype = jnp.result_type(float)  # float32 unless x64

        def paths(n):
            return simulate(rng.uniform(d.x0_low, d.x0_high, n), ts, d, rng)

        ys = paths(d.num_series + d.num_val).astype(dtype)
        test = paths(d.num_test).astype(dtype)  # drawn after: train, val unchanged
        train, val = ys[: d.num_series], ys[d.num_series :]
        return Dataset(train=train, val=val, extra={"test": test})

    def make_optimizer(self):
        steps, opt = self.config.trainer.steps, self.config.optimizer
        disc_opt = dataclasses.replace(opt, lr=self.config.gan.discriminator_lr)
        players = optax.multi_transform(
            {
                "generator": make_optimizer(opt, steps),
                "discriminator": make_optimizer(disc_opt, steps),
                "average": optax.set_to_zero(),
            },
            _player_labels,
        )
        decay = self.config.gan.average_decay
        clip = clip_discriminator_weights(self.config.gan.clip_scale)
        return optax.chain(players, average_generator(decay), clip)

    def generate(self, generator: Generator, *, key):
        """One generated path at the data times, shape `(length,)`."""
        k_init, k_bm = jr.split(key)
        v = jr.normal(k_init, (generator.initial_noise,))
        x0 = generator.initial(v)
        t1 = self.config.data.t1
        tol = self.config.ode.dt0 / 2  # steps land on the tree's nodes: exact law
        bm = nde.VirtualBrownianTree(0.0, t1, tol, (generator.noise,), k_bm)
        terms = nde.MultiTerm(
            nde.ODETerm(generator.drift), nde.ControlTerm(generator.diffusion, bm)
        )
        sol = self.diffeqsolve(terms, 0.0, t1, x0, saveat=nde.SaveAt(ts=self.ts))
        return jax.vmap(generator.readout)(sol.ys)[:, 0]

    def score(self, discriminator: Discriminator, ys):
        """The discriminator's score of one path `ys` at the data times."""
        path = jnp.stack([self.ts, ys], axis=-1)
        h0 = discriminator.initial(path[0])
        control = nde.LinearInterpolation(self.ts, path)
        term = nde.ControlTerm(discriminator.field, control)
        dt = self.ts[1] - self.ts[0]
        sol = self.diffeqsolve(term, self.ts[0], self.ts[-1], h0, dt0=dt)
        return discriminator.readout(sol.ys[-1])[0]

    def generate_batch(self, generator, n: int, *, key):
        return jax.vmap(lambda k: self.generate(generator, key=k))(jr.split(key, n))

    def loss(self, model, batch, *, key):
        real = batch
        fake = self.generate_batch(model.generator, real.shape[0], key=key)
        disc = reverse_gradient(model.discriminator)
        score = jax.vmap(lambda ys: self.score(disc, ys))
        return jnp.mean(score(real)) - jnp.mean(score(fake)), {}

    @functools.cached_property
    def _generate(self):
        return eqx.filter_jit(self.generate_batch)

    def moment_errors(self, generator, real, *, key) -> dict[str, float]:
        """The largest relative errors of the marginal mean and std of
        `gan.eval_samples` paths of `generator` against `real` at `gan.eval_times`
        times, and the larger of the two (`moment_err`)."""
        g = self.config.gan
        fake = self._generate(generator, g.eval_samples, key=key)
        indices = np.linspace(0, self.config.data.length - 1, g.eval_times)
        mean_err, std_err = max_relative_error(fake, real, indices.round().astype(int))
        return {
            "mean_err": mean_err,
            "std_err": std_err,
            "moment_err": max(mean_err, std_err),
        }

    def evaluate(self, model, *, key):
        """The loss and the moment errors of the averaged generator against the
        validation paths."""
        averaged = eqx.tree_at(lambda m: m.generator, model, model.average)
        metrics = super().evaluate(averaged, key=key)
        errors = self.moment_errors(
            model.average, self.data.val, key=jr.fold_in(key, 1)
        )
        return {**metrics, **errors}

    def test(self, model, *, key):
        """The moment errors of the averaged generator of `model` (the best by
        `val/moment_err`) against the held-out test paths."""
        # `key` is the one the last evaluation folded with 1 to generate: fold it
        # again, for noise that no evaluation used.
        key = jr.fold_in(key, 1)
        return self.moment_errors(model.average, self.data.extra["test"], key=key)

    def plot(self, model):
        from matplotlib.figure import Figure

        ts, real = np.asarray(self.ts), np.asarray(self.data.val)
        fake = np.asarray(self._generate(model.average, 1024, key=jr.key(0)))
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
        for ys, color, name in ((real, "C0", "data"), (fake, "C3", "generated")):
            ax.plot(ts, ys[:20].T, color=color, lw=0.6, alpha=0.5)
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(ts, mean, color=color, lw=2, label=f"{name}: mean +- std")
            ax.plot(ts, mean - std, ts, mean + std, color=color, lw=1.5, ls="--")
        ax.set(xlabel="t", ylabel="X(t)", title="validation paths against generated")
        ax.legend(loc="upper left")
        return fig


RECIPE = NeuralSDE
SMOKE_OVERRIDES = [
    "data.num_series=64",
    "data.num_val=32",
    "data.num_test=32",
    "data.length=9",
    "ode.dt0=0.25",
    "trainer.batch_size=16",
    "gan.eval_samples=64",
]

"""Neural CDE: classify irregularly sampled, noisy 2-D spirals as clockwise or
anticlockwise (Kidger, Morrill, Foster & Lyons 2020).

Each series is a decaying spiral `r exp(-a t) (cos(phi + s w t), sin(phi + s w t))`
with a random radius, phase, speed and decay, turning anticlockwise (`s = +1`,
label 1) or clockwise (`s = -1`, label 0), observed at `length` irregular times on
`[0, t1]` (drawn anew for every series) with Gaussian noise. Time is a channel of
the data (`t / t1`, x, y), which is interpolated with the backward-Hermite cubic
spline, a `C^1` path `X` whose value at time `t` depends on observations up to the
next one only. The model is the neural CDE

    z(t0) = A X(t0) + b,    dz = f(z) dX(t),    P(anticlockwise) = sigmoid(l(z(t1))),

with `f(z) = tanh(MLP(z))` reshaped to a (hidden x channels) matrix, solved as the
ODE `dz/dt = f(z) dX/dt` (`ControlTerm(f, X).to_ode()`) with Tsit5 and a PID
controller, and trained with the binary cross-entropy.

`data.missing=0.3` drops each x and y value independently with probability 0.3
(`NaN`; the time of an observation stays known): the spline simply spans the gaps,
as in the paper's CharacterTrajectories experiments with 30-70% of the data
dropped. Values missing before a channel's first observation take that
observation's value, and after its last one the path is held constant.

The validation accuracy is logged as `val/accuracy` at every evaluation; the
held-out test set is classified once, at the end of training (`test/accuracy`).

    python -m nde.train recipe=neural_cde
    python -m nde.train recipe=neural_cde data.missing=0.3

Reference: P. Kidger, J. Morrill, J. Foster, T. Lyons, "Neural Controlled
Differential Equations for Irregular Time Series", NeurIPS 2020.
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


@dataclasses.dataclass
class DataConfig:
    num_train: int = 512  # training series (half of each direction, on average)
    num_val: int = 128  # validation series (`val/accuracy` at every evaluation)
    num_test: int = 512  # held-out series, classified once at the end
    length: int = 100  # observation times per series
    t1: float = 10.0  # series cover [0, t1] (1 to 2.5 turns)
    noise: float = 0.1  # std of the Gaussian noise on x and y (radii are 0.5..1.5)
    missing: float = 0.0  # probability that an x or y value is missing (NaN)

    def __post_init__(self):
        if not 0.0 <= self.missing < 1.0:
            raise ValueError(f"data.missing must be in [0, 1), got {self.missing!r}.")
        if self.length < 2:
            raise ValueError(f"data.length must be >= 2, got {self.length!r}.")


@dataclasses.dataclass
class ModelConfig:
    hidden: int = 8  # size of the hidden state z
    width: int = 64  # width of the vector field's MLP
    depth: int = 2  # hidden layers of the vector field's MLP


@dataclasses.dataclass
class NeuralCDEConfig(Config):
    ode: ODEConfig = field(
        # The spline of noisy data is rough (its second derivative jumps at every
        # observation): a PI controller rejects fewer steps than the default
        # integral one (measured at initialisation: 37 rejected of 122 steps per
        # solve, against 66 of 135), and a 1% tolerance is ample to classify.
        default_factory=lambda: ODEConfig(rtol=1e-2, atol=1e-4, pcoeff=0.3, icoeff=0.4)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(
            steps=400,
            batch_size=32,
            log_every=20,
            eval_every=100,
            checkpoint_every=200,
        )
    )
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(
            lr=1e-2, schedule="cosine", final_lr_factor=0.1, clip_norm=1.0
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


# The channels of the data: time (scaled to [0, 1]), x, y.
CHANNELS = 3


class VectorField(eqx.Module):
    """`f(t, z) = tanh(MLP(z))` as a (hidden x channels) matrix: the CDE's
    `dz = f(z) dX`. The `tanh` bounds the response to the control."""

    mlp: eqx.nn.MLP
    hidden: int = eqx.field(static=True)

    def __call__(self, t, z, args):
        return self.mlp(z).reshape(self.hidden, CHANNELS)


class NeuralCDE(eqx.Module):
    """The parameters: initial map, vector field, readout."""

    initial: eqx.nn.Linear
    field: VectorField
    readout: eqx.nn.Linear

    def __init__(self, hidden: int, width: int, depth: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.initial = eqx.nn.Linear(CHANNELS, hidden, key=k1)
        mlp = eqx.nn.MLP(
            hidden,
            hidden * CHANNELS,
            width,
            depth,
            activation=jax.nn.softplus,
            final_activation=jnp.tanh,
            key=k2,
        )
        self.field = VectorField(mlp, hidden)
        self.readout = eqx.nn.Linear(hidden, "scalar", key=k3)


def observation_times(n: int, d: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Irregular times on `[0, t1]`, `(n, length)`: gaps drawn uniformly between
    0.2 and 1.8 times their mean, rescaled to end at `t1`. (Much shorter gaps
    turn the noise into steep slopes of the spline, which cost solver steps.)"""
    gaps = rng.uniform(0.2, 1.8, (n, d.length - 1))
    cumulative = np.concatenate([np.zeros((n, 1)), np.cumsum(gaps, axis=1)], axis=1)
    return d.t1 * cumulative / cumulative[:, -1:]


def spirals(ts: np.ndarray, rng: np.random.Generator):
    """Noise-free spirals at times `ts` `(n, T)`: points `(n, T, 2)`, labels `(n,)`
    (1 for anticlockwise)."""
    n = ts.shape[0]
    labels = rng.integers(0, 2, n)
    sign = np.where(labels == 1, 1.0, -1.0)[:, None]
    radius = rng.uniform(0.5, 1.5, (n, 1))
    phase = rng.uniform(0.0, 2 * math.pi, (n, 1))
    speed = rng.uniform(0.6, 1.6, (n, 1))  # radians per unit time
    decay = rng.uniform(0.0, 0.15, (n, 1))
    angle = phase + sign * speed * ts
    r = radius * np.exp(-decay * ts)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1), labels


def fill_start(ys: np.ndarray) -> np.ndarray:
    """Per series and channel, the first observed value (0 if none): the value
    used before it, so that the path and the initial state are defined."""
    observed = ~np.isnan(ys)
    first = np.argmax(observed, axis=1)  # (n, channels)
    values = np.take_along_axis(ys, first[:, None, :], axis=1)[:, 0]
    return np.nan_to_num(values)


@jax.jit
def hermite_coefficients(ts, ys, start):
    """Backward-Hermite coefficients of a batch of series (`NaN`s spanned)."""
    coefficients = functools.partial(
        nde.backward_hermite_coefficients, fill_forward_nans_at_end=True
    )
    return jax.vmap(lambda t, y, s: coefficients(t, y, replace_nans_at_start=s))(
        ts, ys, start
    )


def make_split(n: int, d: DataConfig, rng: np.random.Generator):
    """`n` series as model inputs `(ts, coeffs, labels)` and raw observations
    `(ts, ys)` with time as channel 0 and `NaN` where missing."""
    ts = observation_times(n, d, rng)
    points, labels = spirals(ts, rng)
    points = points + d.noise * rng.standard_normal(points.shape)
    points[rng.uniform(size=points.shape) < d.missing] = np.nan
    ys = np.concatenate([ts[..., None] / d.t1, points], axis=-1)
    ts, ys, start = (jnp.asarray(x, float) for x in (ts, ys, fill_start(ys)))
    coeffs = jax.tree_util.tree_map(np.asarray, hermite_coefficients(ts, ys, start))
    labels = np.asarray(labels, np.asarray(ts).dtype)
    return (np.asarray(ts), coeffs, labels), (np.asarray(ts), np.asarray(ys))


class NeuralCDEClassifier(nde.Trainer):
    """Classify the direction of irregularly sampled spirals with a neural CDE."""

    config_class = NeuralCDEConfig

    def make_model(self, *, key):
        m = self.config.model
        return NeuralCDE(m.hidden, m.width, m.depth, key=key)

    def make_data(self, *, key):
        d = self.config.data
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        train, _ = make_split(d.num_train, d, rng)
        val, val_raw = make_split(d.num_val, d, rng)
        test, _ = make_split(d.num_test, d, rng)
        return Dataset(train=train, val=val, extra={"test": test, "val_raw": val_raw})

    def logit(self, model, ts, coeffs):
        """The log-odds that one series (knots `ts`, spline `coeffs`) turns
        anticlockwise, and the solver statistics."""
        control = nde.CubicInterpolation(ts, coeffs)
        term = nde.ControlTerm(model.field, control).to_ode()
        z0 = model.initial(control.evaluate(ts[0]))
        sol = self.diffeqsolve(term, ts[0], ts[-1], z0)
        return model.readout(sol.ys[-1]), sol.stats

    def loss(self, model, batch, *, key):
        ts, coeffs, labels = batch
        logits, stats = jax.vmap(self.logit, in_axes=(None, 0, 0))(model, ts, coeffs)
        # Binary cross-entropy with logits: -[y log p + (1 - y) log(1 - p)].
        bce = -(
            labels * jax.nn.log_sigmoid(logits)
            + (1 - labels) * jax.nn.log_sigmoid(-logits)
        )
        accuracy = jnp.mean(((logits > 0) == (labels > 0.5)).astype(bce.dtype))
        return jnp.mean(bce), {"accuracy": accuracy, "stats": stats}

    @functools.cached_property
    def _metrics(self):
        return eqx.filter_jit(lambda model, batch: self.loss(model, batch, key=None))

    def test(self, model, *, key):
        """Classify the held-out test set once, when training ends: logged as
        `test/loss` and `test/accuracy`."""
        loss, metrics = self._metrics(model, self.data.extra["test"])
        return {"loss": float(loss), "accuracy": float(metrics["accuracy"])}

    def plot(self, model):
        from matplotlib.figure import Figure

        ts, coeffs, labels = jax.tree_util.tree_map(lambda x: x[:8], self.data.val)
        _, ys = self.data.extra["val_raw"]
        logits, _ = self._logits(model, ts, coeffs)
        fig = Figure(figsize=(10, 5), layout="constrained")
        axes = fig.subplots(2, 4, sharex=True, sharey=True)
        for i, ax in enumerate(axes.flat):
            anticlockwise = bool(logits[i] > 0)
            color = "tab:blue" if anticlockwise else "tab:red"
            ax.plot(ys[i, :, 1], ys[i, :, 2], ".-", color=color, ms=2, lw=0.5)
            ax.plot(ys[i, 0, 1], ys[i, 0, 2], "k>", ms=5)  # the start (if observed)
            ok = "right" if anticlockwise == bool(labels[i] > 0.5) else "WRONG"
            p = float(jax.nn.sigmoid(logits[i]))
            ax.set(aspect="equal", title=f"P(anticlockwise) {p:.2f} ({ok})")
            ax.title.set_fontsize(8)
        fig.suptitle(
            "validation spirals coloured by predicted class: "
            "anticlockwise (blue), clockwise (red)"
        )
        return fig

    @functools.cached_property
    def _logits(self):
        return eqx.filter_jit(jax.vmap(self.logit, in_axes=(None, 0, 0)))


RECIPE = NeuralCDEClassifier
SMOKE_OVERRIDES = [
    "data.num_train=8",
    "data.num_val=8",
    "data.num_test=8",
    "data.length=10",
    "trainer.batch_size=4",
]

"""The pieces of the `neural_sde` recipe (an SDE-GAN): the exact Ornstein-Uhlenbeck
data, the gradient reversal that makes one descent step a descent-ascent step, the
weight clipping of the discriminator, and gradients through ReversibleAdjoint."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from recipes import neural_sde as rs


def ou_moments(d: rs.DataConfig, t):
    """The closed-form mean and variance of the data at times `t`."""
    th, decay = d.theta, np.exp(-d.theta * t)
    m0, v0 = (d.x0_low + d.x0_high) / 2, (d.x0_high - d.x0_low) ** 2 / 12
    mean = decay * m0 + d.mu * (t / th - (1 - decay) / th**2)
    var = decay**2 * v0 + d.sigma**2 * (1 - decay**2) / (2 * th)
    return mean, var


def test_simulate_matches_the_ou_moments():
    d, n = rs.DataConfig(), 40_000
    rng = np.random.default_rng(0)
    ts = np.linspace(0.0, d.t1, d.length)
    xs = rs.simulate(rng.uniform(d.x0_low, d.x0_high, n), ts, d, rng)
    mean, var = ou_moments(d, ts)
    # Four standard errors of the sample mean and of the sample variance (Gaussian
    # kurtosis; the uniform start has less, so this is conservative).
    assert np.all(np.abs(xs.mean(0) - mean) < 4 * np.sqrt(var / n))
    assert np.all(np.abs(xs.var(0) - var) < 4 * var * np.sqrt(2 / n))
    # and the process really moves: the mean rises threefold, the std by 70%.
    assert mean[-1] > 3 * mean[0] and np.sqrt(var[-1]) > 1.7 * np.sqrt(var[0])


def test_reverse_gradient_negates_only_the_gradient():
    layer = eqx.nn.Linear(3, 2, key=jr.key(0))
    x = jnp.arange(3.0)
    f = lambda m: jnp.sum(jnp.tanh(m(x)))
    assert f(rs.reverse_gradient(layer)) == f(layer)
    plain, reversed_ = (
        jax.grad(f)(layer),
        jax.grad(lambda m: f(rs.reverse_gradient(m)))(layer),
    )
    np.testing.assert_array_equal(reversed_.weight, -plain.weight)
    np.testing.assert_array_equal(reversed_.bias, -plain.bias)
    assert np.any(plain.weight != 0)


def _tiny_trainer(adjoint="reversible"):
    config = rs.NeuralSDEConfig(
        adjoint=adjoint,
        ode=rs.ODEConfig(dt0=0.25, max_steps=64),
        data=rs.DataConfig(num_series=8, num_val=4, length=9),
        model=rs.ModelConfig(width=8, disc_width=8, hidden=4, disc_hidden=4),
    )
    return rs.NeuralSDE(config)


def _linear_weights(module):
    is_linear = lambda x: isinstance(x, eqx.nn.Linear)
    leaves = jax.tree_util.tree_leaves(module, is_leaf=is_linear)
    return [(x.weight, x.in_features) for x in leaves if is_linear(x)]


def test_clipping_bounds_the_discriminator_and_leaves_the_generator():
    trainer = _tiny_trainer()
    model = trainer.make_model(key=jr.key(0))
    scale = trainer.config.gan.clip_scale
    for w, n in _linear_weights(model.discriminator):
        assert np.all(np.abs(w) <= scale / n)  # already at initialisation
    params = eqx.filter(model, eqx.is_inexact_array)
    updates = jax.tree_util.tree_map(lambda x: 10 * jnp.ones_like(x), params)
    clip = rs.clip_discriminator_weights(scale)
    clipped, _ = clip.update(updates, clip.init(params), params)
    new = eqx.apply_updates(model, clipped)
    bounds = [(w, n) for w, n in _linear_weights(new.discriminator)]
    assert all(np.allclose(np.max(np.abs(w)), scale / n) for w, n in bounds)
    same = jax.tree_util.tree_map(
        lambda a, b: bool(np.all(a == b)), updates.generator, clipped.generator
    )
    assert all(jax.tree_util.tree_leaves(same))
    # biases are not clipped
    np.testing.assert_array_equal(
        clipped.discriminator.readout.bias, updates.discriminator.readout.bias
    )


def test_average_follows_the_generator():
    trainer = _tiny_trainer()
    model = trainer.make_model(key=jr.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    moved = eqx.tree_at(
        lambda m: m.generator,
        params,
        jax.tree_util.tree_map(jnp.ones_like, params.generator),
    )
    updates = eqx.tree_at(
        lambda m: m.generator,
        jax.tree_util.tree_map(jnp.zeros_like, params),
        moved.generator,
    )
    average = rs.average_generator(0.75)
    out, _ = average.update(updates, average.init(params), params)
    # All starts equal: the new average is a quarter of the generator's step.
    for a, g in zip(
        jax.tree_util.tree_leaves(out.average),
        jax.tree_util.tree_leaves(out.generator),
        strict=True,
    ):
        np.testing.assert_allclose(a, 0.25 * g)
    # and it starts as a copy of the generator.
    np.testing.assert_array_equal(
        model.average.readout.weight, model.generator.readout.weight
    )


def test_optimizer_ascends_in_the_discriminator_and_descends_in_the_generator():
    trainer = _tiny_trainer()
    data = trainer.make_data(key=jr.key(1))
    model = trainer.make_model(key=jr.key(2))
    wasserstein = lambda m: trainer.loss(m, data.train, key=jr.key(3))[0]
    # The loss is W itself; its gradient in the discriminator is reversed, so a
    # small descent step on the whole model raises W through the discriminator and
    # lowers it through the generator.
    grads = eqx.filter_grad(wasserstein)(model)
    small = 1e-3
    step = lambda m, g: eqx.apply_updates(
        m, jax.tree_util.tree_map(lambda x: -small * x, g)
    )
    only_disc = eqx.tree_at(
        lambda m: m.generator,
        grads,
        jax.tree_util.tree_map(jnp.zeros_like, grads.generator),
    )
    only_gen = eqx.tree_at(
        lambda m: m.discriminator,
        grads,
        jax.tree_util.tree_map(jnp.zeros_like, grads.discriminator),
    )
    w0 = wasserstein(model)
    assert wasserstein(step(model, only_disc)) > w0
    assert wasserstein(step(model, only_gen)) < w0


def _loss_gradient(trainer):
    data = trainer.make_data(key=jr.key(1))
    model = trainer.make_model(key=jr.key(2))
    loss = lambda m: trainer.loss(m, data.train, key=jr.key(3))[0]
    return eqx.filter_grad(loss)(model)


@pytest.mark.slow
def test_reversible_adjoint_gradient_equals_checkpointing():
    grads = [
        _loss_gradient(_tiny_trainer(a)) for a in ("reversible", "recursive_checkpoint")
    ]
    flat = [jax.tree_util.tree_leaves(g) for g in grads]
    assert any(np.any(g != 0) for g in flat[0])
    for a, b in zip(*flat, strict=True):
        # Round-off of the backward reconstruction only, in float64.
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_max_relative_error():
    real = np.array([[1.0, 2.0], [3.0, 6.0]])  # means 2, 4; stds 1, 2
    fake = np.array([[1.0, 4.0], [3.0, 5.0]])  # means 2, 4.5; stds 1, 0.5
    assert rs.max_relative_error(fake, real, [0, 1]) == (0.125, 0.75)
    assert rs.max_relative_error(fake, real, [0]) == (0.0, 0.0)


def test_default_config_is_consistent():
    c = rs.NeuralSDEConfig()
    assert c.ode.dt0 is not None  # the constant controller needs it
    steps = c.data.t1 / c.ode.dt0
    # The generator steps land on the data times and stay within max_steps.
    assert steps == c.data.length - 1 and steps < c.ode.max_steps
    assert dataclasses.asdict(c)["gan"]["eval_times"] == 5
    # The test reports the model selected on validation, on its own paths.
    assert c.trainer.best.monitor == "val/moment_err" and c.trainer.eval_every > 0


def test_held_out_test_paths():
    trainer = _tiny_trainer()
    d = dataclasses.replace(trainer.config.data, num_test=6)
    trainer.config.data = d
    data = trainer.make_data(key=jr.key(1))
    test = data.extra["test"]
    assert test.shape == (6, d.length) and data.val.shape == (4, d.length)
    # Drawn after the training and validation paths, which stay as they were.
    without = dataclasses.replace(d, num_test=0)
    trainer.config.data = without
    again = trainer.make_data(key=jr.key(1))
    np.testing.assert_array_equal(again.train, data.train)
    np.testing.assert_array_equal(again.val, data.val)
    assert not np.isin(test, np.concatenate([data.train, data.val])[:, 1:]).any()

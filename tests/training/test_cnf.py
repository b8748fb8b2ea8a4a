"""The `cnf` recipe: its toy densities (normalised, and their samples drawn from the
density that `log_prob` describes) and its log-likelihood (exact against a linear
field's closed form, Hutchinson's estimate unbiased, the model density normalised).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from recipes import cnf
from recipes._toy_densities import DENSITIES, entropy


def grid(extent: float, spacing: float) -> np.ndarray:
    axis = np.arange(-extent, extent + spacing / 2, spacing)
    return np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_density_normalised_and_matches_samples(name):
    density = DENSITIES[name]()
    # The midpoint rule on smooth, rapidly decaying integrands is accurate far
    # beyond the tolerances below at this spacing (the narrowest Gaussian has
    # std 0.2 in both densities' units: 2 points per std).
    points, area = grid(6.0, 0.1), 0.1**2
    log_p = density.log_prob(points)
    assert abs(np.sum(np.exp(log_p)) * area - 1) < 1e-6
    quadrature_entropy = -np.sum(np.exp(log_p) * log_p) * area
    # Samples from another density would give the cross-entropy, larger than the
    # entropy by their KL divergence.
    mc, stderr = entropy(density, 20_000, np.random.default_rng(0))
    assert abs(mc - quadrature_entropy) < 4 * stderr


def test_two_moons_quadrature_converged():
    x = DENSITIES["two_moons"]().sample(500, np.random.default_rng(1))
    coarse = DENSITIES["two_moons"]().log_prob(x)
    fine = DENSITIES["two_moons"](nodes=8000).log_prob(x)
    assert np.max(np.abs(coarse - fine)) < 1e-3


class Linear(eqx.Module):
    """`f(t, y) = A y`: the flow is `expm(A t)` and the divergence `tr(A)`."""

    matrix: jax.Array

    def __call__(self, t, y):
        return self.matrix @ y


A = np.array([[0.3, -1.2], [0.7, -0.5]])


def tight_trainer():
    config = cnf.CNFConfig()
    config.ode.rtol, config.ode.atol = 1e-10, 1e-10
    config.ode.max_steps = 10_000
    return cnf.CNF(config)


def test_exact_log_likelihood_of_a_linear_flow():
    trainer, x = tight_trainer(), np.array([0.4, -1.1])
    log_q, _ = trainer.log_likelihood(
        cnf.ExactDynamics(Linear(jnp.asarray(A))), x, None
    )
    z = scipy.linalg.expm(A) @ x
    expected = -0.5 * z @ z - math.log(2 * math.pi) + np.trace(A)
    assert abs(float(log_q) - expected) < 1e-8


def test_hutchinson_estimate_is_unbiased():
    # In 2-D the four Rademacher vectors are equally likely: their mean estimate is
    # the expectation, which must be the exact log-likelihood.
    trainer, x = tight_trainer(), np.array([0.4, -1.1])
    field = Linear(jnp.asarray(A))
    signs = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    estimates = [
        float(trainer.log_likelihood(cnf.HutchinsonDynamics(field), x, e)[0])
        for e in signs
    ]
    exact, _ = trainer.log_likelihood(cnf.ExactDynamics(field), x, None)
    assert abs(np.mean(estimates) - float(exact)) < 1e-8
    assert np.ptp(estimates) > 0.1  # each single estimate is not the trace


def test_model_density_integrates_to_one():
    # A random (untrained) time-dependent MLP field moves and reshapes N(0, I);
    # a wrong sign of the divergence term would break the normalisation.
    trainer = cnf.CNF()
    model = trainer.make_model(key=jax.random.PRNGKey(0))
    spacing = 0.25
    points = grid(7.0, spacing)
    log_q, _ = trainer.exact_log_likelihood(model, points)
    mass = float(jnp.sum(jnp.exp(log_q))) * spacing**2
    # The eval tolerances (1e-5) limit the accuracy, not the grid.
    assert abs(mass - 1) < 1e-3
    assert float(jnp.max(jnp.abs(log_q - jax.vmap(cnf.log_normal)(points)))) > 0.1

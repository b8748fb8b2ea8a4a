"""Two 2-D toy densities whose log-density is known: samples, `log_prob`, entropy.

These are the kind of 2-D toy densities the FFJORD paper (Grathwohl et al. 2019)
fits with a continuous normalising flow; the parameters below are ours. Both are
written with numpy (the data of a recipe are made on the host), and both know their
exact log-density, so a model's negative log-likelihood can be compared with the
best achievable value: the differential entropy `H(p) = E_p[-log p(x)]`, since
`E_p[-log q(x)] = H(p) + KL(p || q) >= H(p)`.

- `EightGaussians`: an equal mixture of eight isotropic Gaussians whose means lie on
  a circle. Its log-density is a log-sum-exp over the components.
- `TwoMoons`: two interleaved half circles with Gaussian noise. Its density is the
  uniform measure on the two arcs convolved with the noise, `p(x) = 1/2 sum_arcs
  (1/pi) int_0^pi N(x; c(s), sigma^2 I) ds`; the integral over the arc parameter is
  computed by the midpoint rule (no kernel density estimate, no bandwidth).
"""

import dataclasses
import math

import numpy as np

LOG_2PI = math.log(2 * math.pi)


def _log_gaussian_mixture(x: np.ndarray, means: np.ndarray, std: float) -> np.ndarray:
    """`log (1/K) sum_k N(x; means[k], std^2 I)` in 2-D: `(n, 2), (K, 2) -> (n,)`."""
    squared = np.sum((x[:, None, :] - means[None, :, :]) ** 2, axis=-1)
    log_terms = -0.5 * squared / std**2 - LOG_2PI - 2 * math.log(std)
    top = np.max(log_terms, axis=1, keepdims=True)
    log_sum = top[:, 0] + np.log(np.sum(np.exp(log_terms - top), axis=1))
    return log_sum - math.log(len(means))


@dataclasses.dataclass(frozen=True)
class EightGaussians:
    """Eight equally weighted Gaussians, means `radius * (cos, sin)(2 pi k / 8)`,
    standard deviation `std` in each coordinate."""

    radius: float = 2 * math.sqrt(2)
    std: float = 0.5 / math.sqrt(2)

    @property
    def means(self) -> np.ndarray:
        angles = 2 * math.pi * np.arange(8) / 8
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        component = rng.integers(0, 8, n)
        return self.means[component] + self.std * rng.standard_normal((n, 2))

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return _log_gaussian_mixture(x, self.means, self.std)


@dataclasses.dataclass(frozen=True)
class TwoMoons:
    """The upper half of the unit circle and the lower half of the unit circle
    centred at `(1, 0.5)`, with Gaussian noise of standard deviation `noise`; the
    whole then shifted to the origin and multiplied by `scale`. `nodes` midpoint
    nodes per arc compute the density (their spacing, `pi / nodes` radians, is far
    below the angular width of the noise, `noise` radians)."""

    noise: float = 0.1
    scale: float = 2.0
    nodes: int = 1000

    def _arc_points(self, s: np.ndarray, arc: np.ndarray) -> np.ndarray:
        """The noiseless point at parameter `s` in [0, pi] of arc 0 or 1, shifted
        and scaled."""
        upper = np.stack([np.cos(s), np.sin(s)], axis=-1)
        lower = np.stack([1 - np.cos(s), 0.5 - np.sin(s)], axis=-1)
        points = np.where(arc[:, None] == 0, upper, lower)
        return self.scale * (points - np.array([0.5, 0.25]))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        arc = rng.integers(0, 2, n)
        s = rng.uniform(0.0, math.pi, n)
        noise = self.scale * self.noise * rng.standard_normal((n, 2))
        return self._arc_points(s, arc) + noise

    def log_prob(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        s = (np.arange(self.nodes) + 0.5) * math.pi / self.nodes
        arcs = np.repeat([0, 1], self.nodes)
        means = self._arc_points(np.tile(s, 2), arcs)
        std = self.scale * self.noise
        return np.concatenate(
            [
                _log_gaussian_mixture(x[i : i + chunk], means, std)
                for i in range(0, len(x), chunk)
            ]
        )


DENSITIES = {"eight_gaussians": EightGaussians, "two_moons": TwoMoons}


def entropy(density, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """A Monte Carlo estimate of the differential entropy `E_p[-log p(x)]` (nats)
    from `n` samples, and its standard error."""
    neg_log_p = -density.log_prob(density.sample(n, rng))
    return float(np.mean(neg_log_p)), float(np.std(neg_log_p) / math.sqrt(n))

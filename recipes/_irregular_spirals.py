"""Irregularly observed damped spirals, for the latent ODE recipe.

Each series is `y(t) = r0 exp(-g t) (cos(a + s w t), sin(a + s w t))`: a spiral into
the origin turning anticlockwise (`s = 1`) or clockwise (`s = -1`), as the two kinds
of spiral of Chen et al. 2018 (Sec. 5.1), with a random radius `r0`, phase `a`,
direction `s` and (optionally) angular velocity `w`. It is observed with Gaussian
noise at `num_obs` random times of a fine grid on `[0, t_obs]`, a different sorted
subset per series but of one size, so that batches have one shape; the noise-free
values on the grid of `(t_obs, t_ext]` are kept to measure extrapolation.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class DataConfig:
    num_series: int = 1024  # training series
    num_val: int = 256  # validation series
    num_test: int = 256  # test series (evaluated at the last step only)
    num_obs: int = 20  # observations per series, at random grid times in [0, t_obs]
    grid: int = 200  # points of the fine time grid on [0, t_ext]
    t_obs: float = 5.0  # observation window [0, t_obs] (about 1.6 turns)
    t_ext: float = 10.0  # extrapolation window (t_obs, t_ext]
    noise: float = 0.1  # std of the Gaussian noise on the observations
    min_omega: float = 2.0  # angular velocity w ~ U(min_omega, max_omega) (rad
    max_omega: float = 2.0  # per unit time); 2 makes [0, t_obs] about 1.6 turns
    damping: float = 0.1  # decay rate g of the radius
    min_radius: float = 0.5  # initial radius r0 ~ U(min_radius, max_radius)
    max_radius: float = 1.5


def spirals(params: np.ndarray, ts: np.ndarray, d: DataConfig) -> np.ndarray:
    """Noise-free spirals: `params` `(n, 4)` = (radius, phase, direction, angular
    velocity), times `(n, T)` -> `(n, T, 2)`."""
    radius, phase, direction, omega = (params[:, i : i + 1] for i in range(4))
    angle = phase + direction * omega * ts
    r = radius * np.exp(-d.damping * ts)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)


def random_series(n: int, d: DataConfig, rng: np.random.Generator) -> dict:
    """`n` spirals: noisy observations at sorted random grid times of `[0, t_obs]`,
    the noise-free values there, and the noise-free values on the grid of
    `(t_obs, t_ext]`."""
    params = np.stack(
        [
            rng.uniform(d.min_radius, d.max_radius, n),
            rng.uniform(0.0, 2 * math.pi, n),
            rng.choice([-1.0, 1.0], n),
            rng.uniform(d.min_omega, d.max_omega, n),
        ],
        axis=-1,
    )
    grid = np.linspace(0.0, d.t_ext, d.grid)
    window = grid[grid <= d.t_obs]
    picks = np.sort(rng.random((n, len(window))).argsort(axis=1)[:, : d.num_obs])
    ts = window[picks]
    clean = spirals(params, ts, d)
    ext_ts = np.broadcast_to(grid[grid > d.t_obs], (n, d.grid - len(window)))
    f32 = lambda x: np.asarray(x, np.float32)
    return dict(
        ts=f32(ts),
        ys=f32(clean + d.noise * rng.standard_normal(clean.shape)),
        clean=f32(clean),
        ext_ts=f32(ext_ts),
        ext_clean=f32(spirals(params, ext_ts, d)),
    )

"""Dense output for SDE solvers: linear between the ends of each step.

A Brownian path has no useful higher-order interpolant within a step, so SDE solvers
describe a step by `y(t0 + theta dt) = y0 + theta (y1 - y0)`: the `dense_info` of
the loop's polynomial convention with a single coefficient `y1 - y0`.
"""

import jax.tree_util as jtu

from .._custom_types import DenseInfo, Y


def linear_dense_info(y0: Y, y1: Y) -> DenseInfo:
    """`dense_info` for linear interpolation from `y0` to `y1`."""
    return dict(y0=y0, coeffs=jtu.tree_map(lambda a, b: (b - a)[None], y0, y1))

"""Dense output: the solution between steps, from each step's polynomial.

Every solver describes a step `[t0, t1]` by `y0` and polynomial coefficients
`c_d` with `y(t0 + theta (t1 - t0)) = y0 + sum_d theta**(d+1) c_d`.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._custom_types import RealScalarLike, Y


def _powers(theta, degree):
    return jnp.stack([theta ** (d + 1) for d in range(degree)])


def _dpowers(theta, degree):
    return jnp.stack([(d + 1) * theta**d for d in range(degree)])


def polynomial_value(y0: Y, coeffs: PyTree[Array], theta) -> Y:
    """`y0 + sum_d theta**(d+1) coeffs[d]`."""

    def leaf(y, c):
        weights = _powers(theta, c.shape[0]).astype(c.dtype)
        return y + jnp.tensordot(weights, c, axes=1)

    return jtu.tree_map(leaf, y0, coeffs)


def polynomial_derivative(coeffs: PyTree[Array], theta, dt) -> Y:
    """d/dt of `polynomial_value`, for a step of length `dt`."""

    def leaf(c):
        weights = (_dpowers(theta, c.shape[0]) / dt).astype(c.dtype)
        return jnp.tensordot(weights, c, axes=1)

    return jtu.tree_map(leaf, coeffs)


class DenseInterpolation(eqx.Module):
    """The solution of a solve at any time in `[t0, t1]` (`SaveAt(dense=True)`).

    Stored per step, in the solver's forward time variable `direction * t`; unused
    slots (up to `max_steps`) hold `inf` times.
    """

    t0: RealScalarLike
    t1: RealScalarLike
    ts: Array
    num_steps: Array
    y0s: PyTree[Array]
    coeffs: PyTree[Array]
    direction: RealScalarLike

    def _locate(self, t, left: bool):
        s = jnp.asarray(t) * self.direction
        side = "left" if left else "right"
        index = jnp.searchsorted(self.ts[1:], s, side=side)
        index = jnp.clip(index, 0, jnp.maximum(self.num_steps - 1, 0))
        ta, tb = self.ts[index], self.ts[index + 1]
        dt = jnp.where(self.num_steps > 0, tb - ta, 1)
        theta = jnp.where(self.num_steps > 0, (s - ta) / dt, 0)
        return index, theta, dt

    def _step(self, index):
        take = lambda x: x[index]
        return jtu.tree_map(take, self.y0s), jtu.tree_map(take, self.coeffs)

    def evaluate(
        self, t0: RealScalarLike, t1: RealScalarLike | None = None, left: bool = True
    ) -> Y:
        """The solution at `t0`; or, with `t1`, the increment `y(t1) - y(t0)`.

        `left` picks the step to the left of `t0` when it lies exactly on a step
        boundary (matters only after a jump).
        """
        if t1 is not None:
            y1, y0 = self.evaluate(t1, left=left), self.evaluate(t0, left=left)
            return jtu.tree_map(jnp.subtract, y1, y0)
        index, theta, _ = self._locate(t0, left)
        y0, coeffs = self._step(index)
        return polynomial_value(y0, coeffs, theta)

    def derivative(self, t: RealScalarLike, left: bool = True) -> Y:
        """The time derivative of the dense solution at `t`."""
        index, theta, dt = self._locate(t, left)
        _, coeffs = self._step(index)
        out = polynomial_derivative(coeffs, theta, dt)
        return jtu.tree_map(lambda x: x * jnp.asarray(self.direction, x.dtype), out)

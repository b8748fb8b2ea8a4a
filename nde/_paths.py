"""Paths: continuous functions of time, used as the controls of CDEs.

A path `x` answers `evaluate(t0)` (its value), `evaluate(t0, t1)` (the increment
`x(t1) - x(t0)`, which is what a `ControlTerm` needs) and `derivative(t)` (what
`ControlTerm.to_ode()` needs). The interpolations here turn observations `ys` at
times `ts` into such a path; `ys` may be any PyTree whose leaves have `len(ts)` as
their leading axis. A batch of paths is a `jax.vmap` over the leading axes.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, PyTree, Real

from ._custom_types import RealScalarLike


class AbstractPath(eqx.Module):
    """A continuous path `x(t)` on `[t0, t1]`.

    Subclasses provide `t0`, `t1` (fields or properties), `evaluate` and, where it
    exists, `derivative`.
    """

    t0: AbstractVar[RealScalarLike]
    t1: AbstractVar[RealScalarLike]

    @abc.abstractmethod
    def evaluate(
        self, t0: RealScalarLike, t1: RealScalarLike | None = None, left: bool = True
    ) -> PyTree[Array]:
        """The value `x(t0)`; or, if `t1` is given, the increment `x(t1) - x(t0)`.

        `left` chooses the left limit (`True`) or the right limit at a jump.
        """

    def derivative(self, t: RealScalarLike, left: bool = True) -> PyTree[Array]:
        """`dx/dt` at `t` (the left or right derivative at a knot, per `left`)."""
        raise NotImplementedError(
            f"`{type(self).__name__}` has no derivative, so it cannot be used with "
            "`ControlTerm.to_ode()`. Use an interpolation such as `CubicInterpolation`."
        )


def check_ts(ts, name: str):
    """`ts` must be one-dimensional and (where it is concrete) strictly increasing."""
    if jnp.ndim(ts) != 1:
        raise ValueError(
            f"`{name}(ts=...)` must be one-dimensional; got shape {jnp.shape(ts)}."
        )
    if isinstance(ts, jax.core.Tracer):
        return
    arr = np.asarray(ts)
    if np.any(np.diff(arr) <= 0):
        raise ValueError(
            f"`{name}(ts=...)` must be strictly increasing; got {arr}. Sort the "
            "observations by time and remove repeated times."
        )


def as_float(x):
    """`x` as an array of a floating-point dtype (integers become the default float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _check_leading_axis(ts, ys, name: str, what: str, extra: int = 0):
    for path, leaf in jtu.tree_flatten_with_path(ys)[0]:
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != jnp.shape(ts)[0] + extra:
            where = what + jtu.keystr(path)
            raise ValueError(
                f"`{name}`: every leaf of `{what}` needs a leading axis of length "
                f"{jnp.shape(ts)[0] + extra} (one entry per "
                f"{'interval' if extra else 'time'} of `ts`); `{where}` has shape "
                f"{jnp.shape(leaf)}. For a batch of paths, `jax.vmap` over the batch."
            )


class _AbstractInterpolation(AbstractPath):
    """A piecewise interpolation on the knots `ts`: locates the interval of `t`.

    Outside `[ts[0], ts[-1]]` the first and last pieces are extrapolated.
    """

    ts: Real[Array, " times"]  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)

    @property
    def t0(self):
        return self.ts[0]

    @property
    def t1(self):
        return self.ts[-1]

    def _locate(self, t, left: bool):
        """The piece holding `t`, and `t` relative to its start. At a knot `ts[k]`,
        `left=True` picks the piece ending there, `left=False` the one starting there."""
        t = jnp.asarray(t).astype(self.ts.dtype)
        side = "left" if left else "right"
        index = jnp.searchsorted(self.ts, t, side=side) - 1
        index = jnp.clip(index, 0, self.ts.shape[0] - 2)
        return index, t - self.ts[index]

    def evaluate(self, t0, t1=None, left=True):
        if t1 is not None:
            return jtu.tree_map(
                jnp.subtract, self.evaluate(t1, left=left), self.evaluate(t0, left=left)
            )
        return self._value(t0, left)

    @abc.abstractmethod
    def _value(self, t, left: bool) -> PyTree[Array]:
        pass


class LinearInterpolation(_AbstractInterpolation):
    """Piecewise linear interpolation of observations `ys` at times `ts`.

    **Arguments:**

    - `ts`: the observation times, shape `(n,)`, strictly increasing.
    - `ys`: the observations: an array or PyTree whose leaves have shape `(n, ...)`.
      Missing values (`NaN`) must be filled first, e.g. with `linear_interpolation`.

    **Example:**

        x = LinearInterpolation(ts=jnp.array([0.0, 1.0, 3.0]), ys=jnp.array([0.0, 2.0, 0.0]))
        x.evaluate(0.5)     # 1.0
        x.evaluate(0.5, 2)  # x(2) - x(0.5) = 1.0 - 1.0 = 0.0
        x.derivative(2.0)   # -1.0
    """

    ys: PyTree[Array]

    def __init__(self, ts: Real[ArrayLike, " times"], ys: PyTree[ArrayLike]):  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
        self.ts = as_float(ts)
        self.ys = jtu.tree_map(as_float, ys)

    def __check_init__(self):
        check_ts(self.ts, "LinearInterpolation")
        if jnp.shape(self.ts)[0] < 2:
            raise ValueError(
                "`LinearInterpolation(ts=...)` needs at least two times; got "
                f"{jnp.shape(self.ts)[0]}."
            )
        _check_leading_axis(self.ts, self.ys, "LinearInterpolation", "ys")

    def _slope(self, y, index):
        dt = (self.ts[index + 1] - self.ts[index]).astype(y.dtype)
        return (y[index + 1] - y[index]) / dt

    def _value(self, t, left):
        index, frac = self._locate(t, left)
        return jtu.tree_map(
            lambda y: y[index] + frac.astype(y.dtype) * self._slope(y, index), self.ys
        )

    def derivative(self, t, left=True):
        index, _ = self._locate(t, left)
        return jtu.tree_map(lambda y: self._slope(y, index), self.ys)


class CubicInterpolation(_AbstractInterpolation):
    """Piecewise cubic interpolation, given the coefficients of each piece.

    On `[ts[i], ts[i + 1]]`, with `s = t - ts[i]`,
    `x(t) = a[i] + b[i] s + c[i] s**2 + d[i] s**3`.

    **Arguments:**

    - `ts`: the knots, shape `(n,)`, strictly increasing.
    - `coeffs`: the tuple `(d, c, b, a)`, each a PyTree (the structure of the data)
      whose leaves have shape `(n - 1, ...)`; as returned by
      `backward_hermite_coefficients(ts, ys)`.

    **Example:**

        coeffs = backward_hermite_coefficients(ts, ys)
        x = CubicInterpolation(ts, coeffs)
    """

    coeffs: tuple[PyTree[Array], PyTree[Array], PyTree[Array], PyTree[Array]]

    def __init__(self, ts: Real[ArrayLike, " times"], coeffs: tuple):  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
        self.ts = as_float(ts)
        self.coeffs = jtu.tree_map(as_float, coeffs)

    def __check_init__(self):
        check_ts(self.ts, "CubicInterpolation")
        if jnp.shape(self.ts)[0] < 2:
            raise ValueError(
                "`CubicInterpolation(ts=...)` needs at least two times; got "
                f"{jnp.shape(self.ts)[0]}."
            )
        if not (isinstance(self.coeffs, tuple) and len(self.coeffs) == 4):
            raise ValueError(
                "`CubicInterpolation(ts, coeffs)` needs `coeffs = (d, c, b, a)`, e.g. "
                "from `backward_hermite_coefficients(ts, ys)`; got "
                f"{type(self.coeffs).__name__}."
            )
        for name, c in zip("dcba", self.coeffs, strict=True):
            _check_leading_axis(self.ts, c, "CubicInterpolation", name, extra=-1)

    def _value(self, t, left):
        index, s = self._locate(t, left)

        def leaf(d, c, b, a):
            s_ = s.astype(a.dtype)
            return a[index] + s_ * (b[index] + s_ * (c[index] + s_ * d[index]))

        return jtu.tree_map(leaf, *self.coeffs)

    def derivative(self, t, left=True):
        index, s = self._locate(t, left)

        def leaf(d, c, b, a):
            s_ = s.astype(b.dtype)
            return b[index] + s_ * (2 * c[index] + 3 * s_ * d[index])

        return jtu.tree_map(leaf, *self.coeffs)

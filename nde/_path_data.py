"""From observations with missing values to the inputs of an interpolation.

Real time series have missing entries, written as `NaN` (per channel: one channel
may be observed when another is not). These functions fill them in, or build a
spline over the observed values only, so that the resulting path is finite.

Conventions, shared by all three functions, for each channel separately:

- a `NaN` between observations is filled from the observations either side;
- `NaN`s at the start (nothing observed yet) stay `NaN`, unless
  `replace_nans_at_start` gives a value to use instead;
- `NaN`s at the end (nothing observed afterwards) stay `NaN`, unless they are filled
  forward with the last observation (`fill_forward_nans_at_end=True`; always so for
  `rectilinear_interpolation`, which holds each observation until the next).

Every leaf of `ys` has the time axis first; everything is `jnp`, so a batch is a
`jax.vmap` over the leading axis of `ys` (with `ts` shared or batched).
"""

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree, Real

from ._paths import as_float, check_ts


def _time_index(y):
    """`0, 1, ..., n - 1` along axis 0, broadcast to the shape of `y`."""
    n = y.shape[0]
    return jnp.broadcast_to(jnp.arange(n).reshape((n,) + (1,) * (y.ndim - 1)), y.shape)


def _prev_observed(y):
    """Index of the last observation at or before each time (-1 if none)."""
    index = jnp.where(jnp.isnan(y), -1, _time_index(y))
    return lax.cummax(index, axis=0)


def _next_observed(y):
    """Index of the first observation at or after each time (n if none)."""
    index = jnp.where(jnp.isnan(y), y.shape[0], _time_index(y))
    return lax.cummin(index, axis=0, reverse=True)


def _take(x, index):
    """`x[index]` along axis 0, elementwise (indices clipped into range)."""
    index = jnp.clip(index, 0, x.shape[0] - 1)
    return jnp.take_along_axis(x, index, axis=0)


def _times_like(ts, y):
    """`ts` broadcast along the trailing (channel) axes of `y`."""
    return jnp.broadcast_to(ts.reshape((-1,) + (1,) * (y.ndim - 1)), y.shape)


def _replace_start(y, value):
    before_first = _prev_observed(y) < 0
    return jnp.where(before_first, jnp.asarray(value).astype(y.dtype), y)


def _fill_forward(y, only_at_end: bool):
    prev = _prev_observed(y)
    filled = jnp.where(prev >= 0, _take(y, prev), y)
    if only_at_end:
        after_last = _next_observed(y) >= y.shape[0]
        filled = jnp.where(after_last, filled, y)
    return filled


def _prepare(name, ts, ys, replace_nans_at_start):
    ts = as_float(ts)
    check_ts(ts, name)
    ys = jtu.tree_map(as_float, ys)
    for path, leaf in jtu.tree_flatten_with_path(ys)[0]:
        if leaf.ndim == 0 or leaf.shape[0] != ts.shape[0]:
            raise ValueError(
                f"`{name}(ts, ys)`: every leaf of `ys` needs a leading (time) axis of "
                f"length len(ts) = {ts.shape[0]}; ys{jtu.keystr(path)} has shape "
                f"{leaf.shape}. For a batch of series, `jax.vmap` over the batch axis."
            )
    if replace_nans_at_start is None:
        return ts, ys
    starts = _broadcast_like(replace_nans_at_start, ys)
    return ts, jtu.tree_map(_replace_start, ys, starts)


def _broadcast_like(value, ys):
    """`value` per leaf of `ys`: a scalar or array is shared by every leaf, anything
    else must be a PyTree with the structure of `ys`."""
    if isinstance(value, (int, float, np.ndarray, np.generic, jax.Array)):
        return jtu.tree_map(lambda _: value, ys)
    return value


def linear_interpolation(
    ts: Real[ArrayLike, " times"],  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
    ys: PyTree[ArrayLike],
    *,
    fill_forward_nans_at_end: bool = False,
    replace_nans_at_start: PyTree[ArrayLike] | None = None,
) -> PyTree[Array]:
    """Fill missing values (`NaN`) by linear interpolation between the observations
    either side, e.g. before `LinearInterpolation(ts, ys)`.

    **Arguments:**

    - `ts`: the observation times, shape `(n,)`, strictly increasing.
    - `ys`: the observations, leaves of shape `(n, ...)`, `NaN` where missing.
    - `fill_forward_nans_at_end`: fill `NaN`s after the last observation with it
      (else they stay `NaN`).
    - `replace_nans_at_start`: a value (scalar, or a PyTree like one time slice of
      `ys`) for the `NaN`s before the first observation (else they stay `NaN`).

    **Returns:** `ys` with its `NaN`s filled as above.

    **Example:**

        linear_interpolation(jnp.array([0., 1., 3.]), jnp.array([0., jnp.nan, 4.]))
        # [0., 1., 4.]
    """
    ts, ys = _prepare("linear_interpolation", ts, ys, replace_nans_at_start)

    def leaf(y):
        prev, next_ = _prev_observed(y), _next_observed(y)
        t = _times_like(ts, y)
        t_prev, t_next = _take(t, prev), _take(t, next_)
        y_prev, y_next = _take(y, prev), _take(y, next_)
        span = jnp.where(t_next > t_prev, t_next - t_prev, 1).astype(y.dtype)
        frac = ((t - t_prev) / span).astype(y.dtype)
        between = y_prev + frac * (y_next - y_prev)
        inside = (prev >= 0) & (next_ < y.shape[0])
        out = jnp.where(inside, between, y)
        return _fill_forward(out, only_at_end=True) if fill_forward_nans_at_end else out

    return jtu.tree_map(leaf, ys)


def rectilinear_interpolation(
    ts: Real[ArrayLike, " times"],  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
    ys: PyTree[ArrayLike],
    replace_nans_at_start: PyTree[ArrayLike] | None = None,
) -> tuple[Array, PyTree[Array]]:
    """Rectilinear interpolation (Morrill, Kidger, Yang & Lyons, "Neural controlled
    differential equations for online prediction tasks", arXiv:2106.11028): advance
    time holding the data fixed, then advance the data holding time fixed, so that
    the path at time `t` depends on observations up to `t` only.

    `ts = [t0, t1, t2]`, `ys = [y0, y1, y2]` give
    `new_ts = [t0, t1, t1, t2, t2]` and `new_ys = [y0, y0, y1, y1, y2]`. Missing
    values are filled forward (the last observation is held); `NaN`s before the first
    observation stay `NaN` unless `replace_nans_at_start` is given.

    **Returns:** `(new_ts, new_ys)`, each of length `2 n - 1` along axis 0. Usually
    both are stacked as channels of a `LinearInterpolation` over any increasing grid
    (`new_ts` repeats times, so it cannot itself be the knots):

        new_ts, new_ys = rectilinear_interpolation(ts, ys)
        data = jnp.stack([new_ts, new_ys], axis=-1)
        path = LinearInterpolation(jnp.arange(len(new_ts)), data)
    """
    ts, ys = _prepare("rectilinear_interpolation", ts, ys, replace_nans_at_start)
    new_ts = jnp.repeat(ts, 2)[1:]

    def leaf(y):
        return jnp.repeat(_fill_forward(y, only_at_end=False), 2, axis=0)[:-1]

    return new_ts, jtu.tree_map(leaf, ys)


def backward_hermite_coefficients(
    ts: Real[ArrayLike, " times"],  # pyright: ignore[reportUndefinedVariable] (a jaxtyping dimension name)
    ys: PyTree[ArrayLike],
    *,
    deriv0: PyTree[ArrayLike] | None = None,
    replace_nans_at_start: PyTree[ArrayLike] | None = None,
    fill_forward_nans_at_end: bool = False,
) -> tuple[PyTree[Array], PyTree[Array], PyTree[Array], PyTree[Array]]:
    """Coefficients of the cubic Hermite spline with backward differences through
    the observations, for `CubicInterpolation(ts, coeffs)`.

    Between consecutive observations `(t_p, y_p)` and `(t_q, y_q)` the spline is the
    cubic with value `y_p`, `y_q` at the ends, slope at `t_q` equal to the backward
    difference `(y_q - y_p) / (t_q - t_p)`, and slope at `t_p` that of the previous
    piece (`deriv0` for the first piece; by default its own backward difference, so
    the first piece is a straight line). The spline is `C^1`, and at time `t` it only
    depends on observations up to the next one (Morrill, Kidger, Yang & Lyons,
    arXiv:2106.11028). Missing values are skipped: the piece spans the gap.

    **Arguments:**

    - `ts`: the observation times, shape `(n,)`, strictly increasing.
    - `ys`: the observations, leaves of shape `(n, ...)`, `NaN` where missing.
    - `deriv0`: the derivative at the first observation (a scalar or a PyTree like
      one time slice of `ys`).
    - `replace_nans_at_start`, `fill_forward_nans_at_end`: as in
      `linear_interpolation`, applied before fitting.

    **Returns:** `(d, c, b, a)`, each with leaves of shape `(n - 1, ...)`: on
    `[ts[i], ts[i + 1]]`, `x(t) = a[i] + b[i] s + c[i] s**2 + d[i] s**3`, `s = t - ts[i]`.
    Pieces before the first or after the last observation are `NaN`.
    """
    ts, ys = _prepare("backward_hermite_coefficients", ts, ys, replace_nans_at_start)
    if fill_forward_nans_at_end:
        ys = jtu.tree_map(lambda y: _fill_forward(y, only_at_end=True), ys)
    if deriv0 is None:
        pieces = jtu.tree_map(lambda y: _hermite_leaf(ts, y, None), ys)
    else:
        derivs0 = _broadcast_like(deriv0, ys)
        pieces = jtu.tree_map(lambda y, d0: _hermite_leaf(ts, y, d0), ys, derivs0)
    return jtu.tree_transpose(
        jtu.tree_structure(ys), jtu.tree_structure((0, 0, 0, 0)), pieces
    )


def _hermite_leaf(ts, y, deriv0):
    n = y.shape[0]
    t = _times_like(ts, y)
    observed = ~jnp.isnan(y)
    # The observation before each knot's (for the slope into each observed knot).
    prev_before = jnp.concatenate(
        [jnp.full((1,) + y.shape[1:], -1), _prev_observed(y)[:-1]], axis=0
    )
    slope_in = (y - _take(y, prev_before)) / (t - _take(t, prev_before)).astype(y.dtype)
    first = observed & (prev_before < 0)
    # The first observation's slope: deriv0, or the slope out of it (which is the
    # slope into the next observation).
    next_after = jnp.concatenate(
        [_next_observed(y)[1:], jnp.full((1,) + y.shape[1:], n)], axis=0
    )
    slope_out = (_take(y, next_after) - y) / (_take(t, next_after) - t).astype(y.dtype)
    start_slope = slope_out if deriv0 is None else jnp.asarray(deriv0).astype(y.dtype)
    knot_slope = jnp.where(first, start_slope, slope_in)
    # Piece i of the output lies in the gap between observations p <= i < i + 1 <= q.
    p = _prev_observed(y)[:-1]
    q = _next_observed(y)[1:]
    y_p, y_q = _take(y, p), _take(y, q)
    t_p, t_q = _take(t, p), _take(t, q)
    length = (t_q - t_p).astype(y.dtype)
    secant = (y_q - y_p) / length
    m_p = _take(knot_slope, p)
    # The Hermite cubic in x = t - t_p, with slopes m_p at t_p and `secant` at t_q.
    a0, b0 = y_p, m_p
    c0 = 2 * (secant - m_p) / length
    d0 = (m_p - secant) / length**2
    # Re-expand about the start of piece i: x = delta + s.
    delta = (t[:-1] - t_p).astype(y.dtype)
    a = a0 + delta * (b0 + delta * (c0 + delta * d0))
    b = b0 + delta * (2 * c0 + 3 * delta * d0)
    c = c0 + 3 * delta * d0
    valid = (p >= 0) & (q < n)
    nan = jnp.asarray(jnp.nan, y.dtype)
    return tuple(jnp.where(valid, x, nan) for x in (d0, c, b, a))

"""Automatic choice of the first step (`diffeqsolve(..., dt0=None)`)."""

import jax.numpy as jnp
import jax.tree_util as jtu


def _cast(x, like):
    return jnp.asarray(x).astype(jnp.result_type(like))


def select_initial_step(terms, t0, y0, args, func, error_order, rtol, atol, norm):
    """The starting step size of Hairer, Norsett & Wanner, *Solving Ordinary
    Differential Equations I*, sec. II.4 ("Starting Step Size").

    With `sc = atol + rtol |y0|`, `d0 = ||y0 / sc||` and `d1 = ||f(t0, y0) / sc||`:
    a trial step `h0 = 0.01 d0 / d1` (1e-6 if either is tiny); one explicit Euler
    step gives `d2 = ||(f(t0 + h0, y0 + h0 f0) - f0) / sc|| / h0`, an estimate of
    the second derivative; then `h1 = (0.01 / max(d1, d2)) ** (1 / error_order)`,
    and the step is `min(100 h0, h1)`. Costs one extra vector field evaluation.
    """
    tdtype = jnp.result_type(t0)
    scale = jtu.tree_map(lambda y: _cast(atol, y) + _cast(rtol, y) * jnp.abs(y), y0)
    divide = lambda a, b: jtu.tree_map(lambda x, s: x / s, a, b)
    # The norms are taken in the state's dtype; the step size lives in time's.
    norm_t = lambda x: norm(x).astype(tdtype)
    f0 = func(terms, t0, y0, args)
    d0 = norm_t(divide(y0, scale))
    d1 = norm_t(divide(f0, scale))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1, d1)).astype(tdtype)
    y1 = jtu.tree_map(lambda y, f: y + h0.astype(y.dtype) * f, y0, f0)
    f1 = func(terms, t0 + h0, y1, args)
    d2 = norm_t(divide(jtu.tree_map(jnp.subtract, f1, f0), scale)) / h0
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(
        max_d <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(max_d <= 1e-15, 1, max_d)) ** (1 / error_order),
    )
    return jnp.minimum(100 * h0, h1).astype(tdtype)

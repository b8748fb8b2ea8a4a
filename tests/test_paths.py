"""Interpolations: through the knots, the right derivatives, missing data, batches.

Paths are evaluated under `jit` (one compilation per path type) rather than
op-by-op, which is much faster to compile.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nde

TS = jnp.array([0.0, 1.0, 3.0, 4.0])
YS = jnp.array([[0.0, 1.0], [2.0, -1.0], [0.0, 3.0], [1.0, 1.0]])
NAN = jnp.nan


@eqx.filter_jit
def values(path, ts):
    return jax.vmap(path.evaluate)(jnp.asarray(ts))


@eqx.filter_jit
def derivatives(path, ts, left):
    return jax.vmap(lambda t: path.derivative(t, left=left))(jnp.asarray(ts))


hermite = jax.jit(
    nde.backward_hermite_coefficients,
    static_argnames=("fill_forward_nans_at_end",),
)


def test_linear_through_knots_and_slopes():
    path = nde.LinearInterpolation(TS, YS)
    np.testing.assert_allclose(values(path, TS), YS, rtol=1e-15, atol=1e-15)
    # By hand: on [1, 3] the slope is ((0, 3) - (2, -1)) / 2 = (-1, 2); beyond the
    # last knot the last piece is extrapolated.
    np.testing.assert_allclose(values(path, [2.0, 5.0]), [[1.0, 1.0], [2.0, -1.0]])
    np.testing.assert_allclose(path.evaluate(0.5, 2.0), [1.0 - 1.0, 1.0 - 0.0])
    # At a knot, `left` picks the piece ending (True) or starting (False) there.
    left, right = derivatives(path, [1.0, 2.0], True), derivatives(path, [1.0], False)
    np.testing.assert_allclose(left, [[2.0, -2.0], [-1.0, 2.0]])
    np.testing.assert_allclose(right, [[-1.0, 2.0]])
    assert path.t0 == 0.0 and path.t1 == 4.0


def test_linear_pytree_and_integer_data():
    path = nde.LinearInterpolation([0, 1, 2], {"a": jnp.array([0, 2, 4]), "b": YS[:3]})
    out = values(path, [0.25])
    np.testing.assert_allclose(out["a"], [0.5])
    np.testing.assert_allclose(out["b"], [[0.5, 0.5]])
    assert out["a"].dtype == jnp.result_type(float)


def test_cubic_backward_hermite_is_c1_with_backward_differences():
    path = nde.CubicInterpolation(TS, hermite(TS, YS))
    np.testing.assert_allclose(values(path, TS), YS, rtol=1e-14, atol=1e-14)
    secants = jnp.diff(YS, axis=0) / jnp.diff(TS)[:, None]
    # The slope at knot k is the backward difference into it, from either side.
    np.testing.assert_allclose(derivatives(path, TS[1:], True), secants, rtol=1e-14)
    np.testing.assert_allclose(
        derivatives(path, TS[1:3], False), secants[:2], rtol=1e-14
    )
    # The first piece has the slope of its secant at both ends: a straight line.
    np.testing.assert_allclose(values(path, [0.5])[0], (YS[0] + YS[1]) / 2)
    # `derivative` is the derivative of `evaluate` (checked by autodiff).
    ts = jnp.array([0.3, 1.7, 3.2])
    auto = jax.vmap(jax.jacfwd(path.evaluate))(ts)
    np.testing.assert_allclose(derivatives(path, ts, True), auto, rtol=1e-12)


def test_cubic_deriv0():
    coeffs = hermite(TS, YS, deriv0=jnp.array([5.0, 0.0]))
    path = nde.CubicInterpolation(TS, coeffs)
    np.testing.assert_allclose(derivatives(path, [0.0], False), [[5.0, 0.0]])
    np.testing.assert_allclose(values(path, [1.0]), YS[1:2])
    d, c, b, a = coeffs
    assert d.shape == c.shape == b.shape == a.shape == (3, 2)


def test_linear_interpolation_fills_missing_values():
    ys = jnp.array([[NAN, 1.0], [1.0, NAN], [NAN, NAN], [3.0, 4.0], [NAN, 5.0]])
    ts = jnp.array([0.0, 1.0, 2.0, 4.0, 5.0])
    fill = jax.jit(
        nde.linear_interpolation, static_argnames=("fill_forward_nans_at_end",)
    )
    # Channel 0: NaN before the first observation stays; 2.0 lies a third of the way
    # from (1, 1) to (4, 3); the trailing NaN stays. Channel 1: from (0, 1) to (4, 4).
    expected = [[NAN, 1.0], [1.0, 1.75], [1 + 2 / 3, 2.5], [3.0, 4.0], [NAN, 5.0]]
    np.testing.assert_allclose(fill(ts, ys), expected, rtol=1e-15)
    filled = fill(ts, ys, fill_forward_nans_at_end=True, replace_nans_at_start=-1.0)
    np.testing.assert_allclose(filled[0], [-1.0, 1.0])
    np.testing.assert_allclose(filled[4], [3.0, 5.0])
    # A replaced start is an observation: interpolation starts from it.
    np.testing.assert_allclose(filled[1], [1.0, 1.75])


def test_rectilinear_interpolation():
    ts = jnp.array([0.0, 1.0, 1.5, 2.0])
    rect = jax.jit(nde.rectilinear_interpolation)
    new_ts, new_ys = rect(ts, jnp.array([5.0, NAN, 5.0, 6.0]))
    np.testing.assert_allclose(new_ts, [0.0, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0])
    # The missing value holds the previous observation.
    np.testing.assert_allclose(new_ys, [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0])
    late = jnp.array([NAN, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(rect(ts, late, 0.0)[1], [0, 0, 1, 1, 2, 2, 3])
    kept = rect(ts, late)[1]
    assert np.isnan(kept[0]) and np.isnan(kept[1]) and kept[2] == 1.0


def test_backward_hermite_skips_missing_values():
    # With a missing value, the spline is the one through the observed points.
    ts = jnp.array([0.0, 1.0, 2.0, 3.0, 4.5, 5.0])
    ys = jnp.array([1.0, 2.0, NAN, 0.5, 1.5, NAN])
    full = nde.CubicInterpolation(ts, hermite(ts, ys))
    keep = jnp.array([0, 1, 3, 4])
    reduced = nde.CubicInterpolation(ts[keep], hermite(ts[keep], ys[keep]))
    inside = [0.5, 1.2, 2.0, 2.7, 4.0, 4.5]
    np.testing.assert_allclose(values(full, inside), values(reduced, inside))
    # After the last observation: NaN, unless filled forward.
    assert np.isnan(values(full, [4.8])[0])
    filled = nde.CubicInterpolation(ts, hermite(ts, ys, fill_forward_nans_at_end=True))
    np.testing.assert_allclose(values(filled, [5.0]), [1.5])
    late = jnp.array([NAN, 2.0, 2.0, 0.5, 1.5, 1.0])
    start = nde.CubicInterpolation(ts, hermite(ts, late, replace_nans_at_start=2.0))
    np.testing.assert_allclose(values(start, [0.5]), [2.0])


def test_batches_through_vmap():
    ys = jnp.stack([YS, 2 * YS, YS.at[1, 0].set(NAN)])

    def cubic_at(ys):
        filled = nde.linear_interpolation(TS, ys)
        coeffs = nde.backward_hermite_coefficients(TS, filled)
        return nde.CubicInterpolation(TS, coeffs).evaluate(2.5)

    out = jax.jit(jax.vmap(cubic_at))(ys)
    one = jax.jit(cubic_at)
    for i in range(3):
        np.testing.assert_allclose(out[i], one(ys[i]), rtol=1e-14)
    np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-14)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="strictly increasing; got"):
        nde.LinearInterpolation(jnp.array([0.0, 2.0, 1.0]), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"leading axis of length 3.*shape \(2,\)"):
        nde.LinearInterpolation(jnp.array([0.0, 1.0, 2.0]), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"coeffs = \(d, c, b, a\)"):
        nde.CubicInterpolation(TS, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"len\(ts\) = 4; ys has shape \(3,\)"):
        nde.linear_interpolation(TS, jnp.zeros(3))
    with pytest.raises(NotImplementedError, match="CubicInterpolation"):
        bm = nde.VirtualBrownianTree(0.0, 1.0, 0.1, (), jax.random.key(0))
        bm.derivative(0.5)

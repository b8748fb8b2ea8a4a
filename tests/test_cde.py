"""Controlled differential equations `dy = g(y) dX` driven by interpolated data.

Two cases have answers by hand: a scalar `dy = y dX` is solved by
`y(t) = y0 exp(X(t) - X(t0))` for any path `X`, and on a piecewise linear `X` the
equation `dy = y dX1 + dX2` is a linear ODE with constant coefficients on each piece.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nde

TS = jnp.array([0.0, 0.5, 1.5, 2.0])
DATA = jnp.array([[0.0, 1.0], [0.8, 0.5], [-0.4, 2.0], [0.3, 1.0]])
# Steps that land on every knot, so that no step straddles a change of slope.
GRID = jnp.concatenate(
    [jnp.linspace(a, b, 11)[:-1] for a, b in zip(TS[:-1], TS[1:], strict=True)]
    + [TS[-1:]]
)


def _by_hand(y0):
    """`dy = y dX1 + dX2` on each linear piece (slopes a, b over length h):
    `y1 = exp(a h) y0 + b (exp(a h) - 1) / a`."""
    y = y0
    for k in range(len(TS) - 1):
        h = float(TS[k + 1] - TS[k])
        a, b = np.asarray(DATA[k + 1] - DATA[k]) / h
        y = np.exp(a * h) * y + b * np.expm1(a * h) / a
    return y


def _linear_cde(t, y, args):
    return jnp.stack([y, jnp.ones_like(y)])


@eqx.filter_jit
def _solve(term, solver, y0, saveat=nde.SaveAt(t1=True), dt0=None, **kwargs):
    return nde.diffeqsolve(
        term, solver, TS[0], TS[-1], dt0, y0, saveat=saveat, **kwargs
    )


# Tsit5 on a linear ODE with `a h <= 0.12` per step: local errors ~1e-3 (a h)**6,
# global relative errors ~1e-8; we allow 1e-7.
RTOL = 1e-7


def test_linear_cde_by_hand():
    path = nde.LinearInterpolation(TS, DATA)
    control = nde.ControlTerm(_linear_cde, path)
    grid = nde.StepTo(GRID)
    cde = _solve(control, nde.Tsit5(), jnp.array(0.7), stepsize_controller=grid)
    np.testing.assert_allclose(cde.ys[0], _by_hand(0.7), rtol=RTOL)


def test_linear_cde_as_an_ode_with_jumps():
    # As an ODE, dy/dt = g(y) dX/dt jumps at the knots: steps must restart there
    # (`jump_ts`), so that each step sees the slope of its own piece.
    control = nde.ControlTerm(_linear_cde, nde.LinearInterpolation(TS, DATA))
    clip = nde.ClipStepSizeController(nde.ConstantStepSize(), jump_ts=TS)
    ode = _solve(
        control.to_ode(),
        nde.Tsit5(),
        jnp.array(0.7),
        dt0=0.05,
        stepsize_controller=clip,
    )
    np.testing.assert_allclose(ode.ys[0], _by_hand(0.7), rtol=RTOL)


def test_cubic_path_to_ode_adaptive():
    coeffs = nde.backward_hermite_coefficients(TS, DATA[:, 0])
    path = nde.CubicInterpolation(TS, coeffs)
    term = nde.ControlTerm(lambda t, y, args: y, path).to_ode()
    saveat = nde.SaveAt(ts=jnp.linspace(0.0, 2.0, 9))
    pid = nde.PIDController(rtol=1e-10, atol=1e-10)
    sol = _solve(term, nde.Tsit5(), jnp.array(2.0), saveat, stepsize_controller=pid)
    x = jax.vmap(path.evaluate)(saveat.subs.ts)
    # Local tolerance 1e-10, accumulated over the solve: 1e-7 globally.
    np.testing.assert_allclose(sol.ys, 2.0 * jnp.exp(x - x[0]), rtol=RTOL)


def test_weakly_diagonal_and_callable_control():
    path = nde.LinearInterpolation(TS, DATA)
    diagonal = nde.WeaklyDiagonalControlTerm(lambda t, y, args: y, path)
    y0 = jnp.array([1.0, 2.0])
    sol = _solve(diagonal, nde.Tsit5(), y0, stepsize_controller=nde.StepTo(GRID))
    np.testing.assert_allclose(sol.ys[0], y0 * jnp.exp(DATA[-1] - DATA[0]), rtol=RTOL)
    # A control given as a function (t0, t1) -> increment: X(t) = t**2.
    squared = nde.ControlTerm(lambda t, y, args: y, lambda t0, t1: t1**2 - t0**2)
    sol = _solve(squared, nde.Tsit5(), jnp.array(1.0), dt0=0.01)
    np.testing.assert_allclose(sol.ys[0], jnp.exp(4.0), rtol=RTOL)


def test_batch_of_series_with_missing_values():
    data = jnp.stack([DATA, 2 * DATA, DATA.at[1, 0].set(jnp.nan)])

    def one(series):
        filled = nde.linear_interpolation(TS, series)
        term = nde.ControlTerm(_linear_cde, nde.LinearInterpolation(TS, filled))
        ctrl = nde.StepTo(GRID)
        return nde.diffeqsolve(
            term,
            nde.Heun(),
            TS[0],
            TS[-1],
            None,
            jnp.array(0.7),
            stepsize_controller=ctrl,
        ).ys[0]

    batched = jax.jit(jax.vmap(one))(data)
    single = jax.jit(one)
    for i in range(3):
        np.testing.assert_allclose(batched[i], single(data[i]), rtol=1e-14)


class _Field(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.weight @ y)[:, None] * args


@pytest.mark.parametrize(
    "adjoint", [nde.RecursiveCheckpointAdjoint(), nde.DirectAdjoint()]
)
def test_gradients_match_finite_differences(adjoint):
    path = nde.LinearInterpolation(TS, DATA[:, :1])
    y0 = jnp.array([0.5, -0.2])

    @jax.jit
    def loss(weight, args):
        term = nde.ControlTerm(_Field(weight), path)
        sol = nde.diffeqsolve(
            term,
            nde.Heun(),
            TS[0],
            TS[-1],
            None,
            y0,
            args,
            stepsize_controller=nde.StepTo(GRID),
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys**2)

    weight, args = jr.normal(jr.key(0), (2, 2)), jnp.array(1.3)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(weight, args)
    eps = 1e-6
    # Central differences in float64: truncation ~eps**2, round-off ~1e-16 / eps.
    for i in np.ndindex(2, 2):
        e = jnp.zeros((2, 2)).at[i].set(eps)
        fd = (loss(weight + e, args) - loss(weight - e, args)) / (2 * eps)
        np.testing.assert_allclose(grads[0][i], fd, rtol=1e-7, atol=1e-9)
    fd = (loss(weight, args + eps) - loss(weight, args - eps)) / (2 * eps)
    np.testing.assert_allclose(grads[1], fd, rtol=1e-7)


def test_lineax_operator_vector_field():
    lx = pytest.importorskip("lineax")
    path = nde.LinearInterpolation(TS, DATA)
    term = nde.ControlTerm(lambda t, y, args: lx.DiagonalLinearOperator(y), path)
    y0 = jnp.array([1.0, 2.0])
    sol = _solve(term, nde.Tsit5(), y0, stepsize_controller=nde.StepTo(GRID))
    np.testing.assert_allclose(sol.ys[0], y0 * jnp.exp(DATA[-1] - DATA[0]), rtol=RTOL)


def test_errors():
    with pytest.raises(TypeError, match="must be an `AbstractPath`"):
        nde.ControlTerm(lambda t, y, args: y, jnp.ones(3))
    path = nde.LinearInterpolation(TS, DATA)
    wrong = nde.ControlTerm(lambda t, y, args: jnp.ones((3, 2)), path)
    with pytest.raises(ValueError, match="has shape"):
        nde.diffeqsolve(wrong, nde.Euler(), 0.0, 1.0, 0.1, jnp.ones(2))

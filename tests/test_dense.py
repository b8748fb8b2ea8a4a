"""Dense output (`SaveAt(dense=True)`, `Solution.evaluate` / `derivative`).

Orders are measured as in tests/test_solvers.py. A continuous extension of order
`q` has a local error O(h^(q + 1)) inside a step (from an exact `y0`), and so,
between the steps of a solve of order `p`, a global error O(h^min(p, q + 1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ODE_SOLVERS
from test_solvers import (
    SLOPE_TOL,
    _linear_exact,
    _linear_vf,
    linear_exact_many,
    measured_slope,
)

import nde

# The order q of each solver's dense output, as documented by each solver.
DENSE_ORDER = {
    # Cubic Hermite through (y0, f0, y1, f1): local error O(h^4), but y1 itself
    # carries the step's local error O(h^(p + 1)).
    nde.Euler: 1,
    nde.Heun: 2,
    nde.Midpoint: 2,
    nde.Ralston: 2,
    nde.Bosh3: 3,
    nde.Tsit5: 4,  # Tsitouras' own interpolant
    nde.Dopri5: 4,  # Shampine's quartic
    # Degree 6 from the 14 stages (no extra evaluations); a 7th-order interpolant
    # (Hairer's DOP853) needs 3 more evaluations per step.
    nde.Dopri8: 5,
}
THETAS = np.array([0.3, 0.7])
T1 = 2.0
NUM_STEPS = np.array([4, 6, 8, 12, 16, 24, 32, 48, 64], dtype=np.float64)
MAX_STEPS = int(NUM_STEPS.max())


def _local_values(solver, step_sizes):
    """One step of size h from the exact y(0.3), evaluated at `0.3 + theta h`."""
    term = nde.ODETerm(_linear_vf)
    y0 = jnp.asarray(_linear_exact(0.3))

    def local(h):
        state = solver.init(term, 0.3, 0.3 + h, y0, None)
        _, _, info, _, _ = solver.step(term, 0.3, 0.3 + h, y0, None, state, False)
        value = lambda theta: nde._interpolation.polynomial_value(
            info["y0"], info["coeffs"], theta
        )
        return jax.vmap(value)(jnp.asarray(THETAS))

    return jax.vmap(local)(step_sizes)


@pytest.mark.parametrize("solver_cls,order,_", ODE_SOLVERS)
def test_dense_output_local_order(solver_cls, order, _):
    q = DENSE_ORDER[solver_cls]
    hs = 2.0 ** -np.arange(0, 8)
    local = jax.jit(_local_values, static_argnums=0)(solver_cls(), jnp.asarray(hs))
    exact = np.stack([[_linear_exact(0.3 + th * h) for th in THETAS] for h in hs])
    errors = np.abs(np.asarray(local) - exact).max(axis=(1, 2))
    assert abs(measured_slope(hs, errors, floor=1e-14) - (q + 1)) < SLOPE_TOL, errors


def _interior_values(solver, n):
    """A fixed-step solve of `n` steps, evaluated at `theta` inside every step."""
    sol = nde.diffeqsolve(
        nde.ODETerm(_linear_vf),
        solver,
        0.0,
        T1,
        T1 / n,
        jnp.asarray(_linear_exact(0.0)),
        saveat=nde.SaveAt(dense=True),
        max_steps=MAX_STEPS,
    )
    k = jnp.minimum(jnp.arange(MAX_STEPS, dtype=n.dtype), n - 1)  # every step
    ts = ((k[:, None] + jnp.asarray(THETAS)) * (T1 / n)).reshape(-1)
    return ts, jax.vmap(sol.evaluate)(ts)


# Hermite without and with FSAL, and the default solver's own interpolant: the
# lookup of the step is the same code for every solver.
@pytest.mark.parametrize("solver_cls", [nde.Euler, nde.Bosh3, nde.Tsit5])
def test_dense_output_between_steps_of_a_solve(solver_cls):
    solver = solver_cls()
    order, q = solver.order(None), DENSE_ORDER[solver_cls]
    interior = jax.jit(_interior_values, static_argnums=0)
    errors = []
    for n in NUM_STEPS:
        ts, values = interior(solver, jnp.asarray(n))
        exact = linear_exact_many(ts)
        errors.append(np.abs(np.asarray(values) - exact).max())
    slope = measured_slope(T1 / NUM_STEPS, np.array(errors), floor=1e-12)
    assert abs(slope - min(order, q + 1)) < SLOPE_TOL, errors


def _vf(t, y, args):
    return {"a": -y["a"] * (1 + t), "b": jnp.stack([y["b"][1], -y["b"][0]])}


_Y0 = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([0.0, 1.0])}


def _exact(t, t0):
    """The solution through `_Y0` at `t0`: a' = -(1 + t) a, and b rotates."""
    a = np.asarray(_Y0["a"]) * np.exp(-(t + t**2 / 2) + (t0 + t0**2 / 2))
    return {"a": a, "b": np.array([np.sin(t - t0), np.cos(t - t0)])}


@jax.jit
def _adaptive_dense(t0, t1, ts):
    """Tsit5 + PID on a PyTree state; the dense output at `ts`, at every step end,
    and the increment between `ts[3]` and `ts[17]`. One compilation serves both
    directions of time (t0 and t1 are traced)."""
    sol = nde.diffeqsolve(
        nde.ODETerm(_vf),
        nde.Tsit5(),
        t0,
        t1,
        None,
        _Y0,
        saveat=nde.SaveAt(t0=True, steps=True, dense=True),
        stepsize_controller=nde.PIDController(rtol=1e-9, atol=1e-9),
        max_steps=256,
    )
    at_steps = jax.vmap(sol.evaluate)(jnp.where(jnp.isfinite(sol.ts), sol.ts, t1))
    return (
        sol,
        jax.vmap(sol.evaluate)(ts),
        jax.vmap(sol.derivative)(ts),
        at_steps,
        sol.evaluate(ts[3], ts[17]),
    )


@pytest.mark.parametrize("t0,t1", [(0.0, 2.0), (0.5, -1.5)])
def test_evaluate_and_derivative_of_adaptive_solve(t0, t1):
    ts = np.linspace(t0, t1, 23)
    sol, values, derivatives, at_steps, inc = _adaptive_dense(t0, t1, jnp.asarray(ts))
    exact = [_exact(t, t0) for t in ts]
    n = int(sol.stats["num_accepted_steps"])
    for key in ("a", "b"):
        # Between steps: the global error (~10 tol for this smooth problem) plus
        # the interpolant's own (order 4, of the same size at this tolerance).
        np.testing.assert_allclose(
            values[key], np.stack([e[key] for e in exact]), atol=1e-7
        )
        # The exact derivative; one order lower than the values.
        dy = np.stack(
            [np.asarray(_vf(t, e, None)[key]) for t, e in zip(ts, exact, strict=True)]
        )
        np.testing.assert_allclose(derivatives[key], dy, atol=1e-5)
        # At the step ends the interpolant reproduces the saved states, to
        # round-off (the dense weights sum to b_sol, checked by ButcherTableau).
        np.testing.assert_allclose(
            at_steps[key][: n + 1], sol.ys[key][: n + 1], atol=1e-14
        )
        # `evaluate(a, b)` is the increment.
        expected = values[key][17] - values[key][3]
        np.testing.assert_allclose(inc[key], expected, atol=1e-14)
    assert np.all(np.isinf(sol.ts[n + 1 :]))  # unused slots of SaveAt(steps=True)


def test_dense_output_without_dense_saving_is_an_error():
    sol = nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: -y), nde.Euler(), 0.0, 1.0, 0.5, jnp.array(1.0)
    )
    with pytest.raises(ValueError, match=r"SaveAt\(dense=True\)"):
        sol.evaluate(0.5)
    with pytest.raises(ValueError, match=r"SaveAt\(dense=True\)"):
        sol.derivative(0.5)


_JUMP = 0.5
_BOUNDARY = np.nextafter(_JUMP, -np.inf)  # where the step before the jump ends


def _jump_vf(t, y, args):
    # `args` says whether f is continuous from the left (t <= jump) or the right.
    before = jnp.where(args, t <= _JUMP, t < _JUMP)
    return jnp.where(before, 1.0, -1.0) * jnp.ones_like(y)


@jax.jit
def _solve_across_jump(solver, jump_ts, left_continuous=False):
    controller = nde.ConstantStepSize()
    if jump_ts is not None:
        controller = nde.ClipStepSizeController(controller, jump_ts=jump_ts)
    sol = nde.diffeqsolve(
        nde.ODETerm(_jump_vf),
        solver,
        0.0,
        1.0,
        0.125,
        jnp.array([0.0]),
        args=left_continuous,
        saveat=nde.SaveAt(t1=True, dense=True),
        stepsize_controller=controller,
    )
    ts = jnp.array([0.2, 0.4, 0.6, 0.9])
    limits = [
        f(_BOUNDARY, left=left)
        for f in (sol.derivative, sol.evaluate)
        for left in (True, False)
    ]
    return sol.ys, jax.vmap(sol.evaluate)(ts), limits


@pytest.mark.parametrize(
    "solver,left_continuous",
    [(nde.Euler(), False), (nde.Tsit5(), False), (nde.Tsit5(), True)],
)
def test_left_and_right_limits_at_a_jump(solver, left_continuous):
    """`left` picks the step on either side of a step boundary. With
    `ClipStepSizeController(jump_ts=...)` a step ends just before a discontinuity
    of the vector field and the next restarts just after it (re-evaluating f,
    which an FSAL solver would otherwise reuse from the other side), whichever side
    f is continuous from."""
    ys, values, limits = _solve_across_jump(
        solver, jnp.array([_JUMP]), jnp.asarray(left_continuous)
    )
    # y = t before the jump, 1 - t after: every step integrates a constant field,
    # so every solver is exact (to round-off).
    np.testing.assert_allclose(ys, [[0.0]], atol=1e-14)
    np.testing.assert_allclose(values[:, 0], [0.2, 0.4, 0.4, 0.1], atol=1e-14)
    left_slope, right_slope, left_value, right_value = limits
    np.testing.assert_allclose(left_slope, [1.0], atol=1e-12)
    np.testing.assert_allclose(right_slope, [-1.0], atol=1e-12)
    np.testing.assert_allclose(left_value, [_JUMP], atol=1e-12)
    np.testing.assert_allclose(right_value, [_JUMP], atol=1e-12)
    if isinstance(solver, nde.Tsit5):
        # Without `jump_ts`, the step over the jump has a stage on each side.
        ys, _, _ = _solve_across_jump(solver, None)
        assert np.abs(ys).max() > 1e-3

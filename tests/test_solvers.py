"""Solvers: measured orders of convergence, error estimates, FSAL, `scan_stages`,
and the self-checks of `ButcherTableau`.

Every order is *measured*: the slope of log(error) against log(step size), fitted
by least squares over the finest step sizes whose error is still far above
round-off (float64), and compared with what the solver claims
(`solver.order(terms)`, `solver.error_order(terms)`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import ODE_SOLVERS

import nde
from nde.solvers._runge_kutta import primitive_names

# Measured slopes are allowed this far from the theoretical order: the finest
# step sizes are in the asymptotic regime to about 0.1 (see the fits below), and a
# wrong order condition changes the slope by at least 1.
SLOPE_TOL = 0.25
# Errors below this are too close to float64 round-off (~1e-16 times the growth
# of the solution) to measure a slope from.
ROUNDOFF_FLOOR = 1e-11


def measured_slope(hs, errors, floor=ROUNDOFF_FLOOR, points=3):
    """Least-squares slope of log(error) vs log(h) over the `points` smallest `h`
    whose error is above `floor`."""
    hs, errors = np.asarray(hs), np.asarray(errors)
    keep = errors > floor
    assert keep.sum() >= points, f"too few measurable errors: {errors}"
    order = np.argsort(hs[keep])[:points]
    h, e = hs[keep][order], errors[keep][order]
    return np.polyfit(np.log(h), np.log(e), 1)[0]


# A non-autonomous linear system y' = A y + (cos t, sin 2t): the forcing makes
# the stage times `c` matter. Its exact solution comes from `expm` of the
# autonomous system for z = (y, cos t, sin t, cos 2t, sin 2t).
_A = np.array([[-0.5, 2.0], [-1.0, -0.3]])
_Y0 = np.array([1.0, 0.5])
_T1 = 2.0


def _linear_vf(t, y, args):
    return jnp.asarray(_A) @ y + jnp.stack([jnp.cos(t), jnp.sin(2 * t)])


def _augmented():
    m = np.zeros((6, 6))
    m[:2, :2] = _A
    m[0, 2] = m[1, 5] = 1  # forcing cos t and sin 2t
    m[2, 3], m[3, 2] = -1, 1  # (cos t)' = -sin t, (sin t)' = cos t
    m[4, 5], m[5, 4] = -2, 2  # (cos 2t)' = -2 sin 2t, (sin 2t)' = 2 cos 2t
    return m, np.concatenate([_Y0, [1.0, 0.0, 1.0, 0.0]])


def _linear_exact(t):
    m, z0 = _augmented()
    return (scipy.linalg.expm(m * t) @ z0)[:2]


def linear_exact_many(ts):
    """`_linear_exact` at many times at once, through the eigendecomposition of the
    (diagonalisable) augmented matrix; agrees with `expm` to about 1e-15."""
    m, z0 = _augmented()
    eigvals, eigvecs = np.linalg.eig(m)
    coeffs = np.linalg.solve(eigvecs, z0)
    ts = np.asarray(ts)[..., None]
    return (np.exp(eigvals * ts) * coeffs @ eigvecs.T).real[..., :2]


# A nonlinear, non-autonomous scalar problem: y' = -2 t y^2, y = 1 / (1 + t^2).
def _riccati_vf(t, y, args):
    return -2 * t * y**2


def _riccati_exact(t):
    return 1 / (1 + t**2)


_NUM_STEPS = np.array([4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128], dtype=np.float64)


def _solve_both(solver, num_steps):
    dt0 = _T1 / num_steps
    kwargs = dict(dt0=dt0, max_steps=int(_NUM_STEPS.max()))
    lin = nde.diffeqsolve(
        nde.ODETerm(_linear_vf), solver, 0.0, _T1, y0=jnp.asarray(_Y0), **kwargs
    )
    nonlin = nde.diffeqsolve(
        nde.ODETerm(_riccati_vf), solver, 0.0, _T1, y0=jnp.array(1.0), **kwargs
    )
    return lin.ys[-1], nonlin.ys[-1]


def test_exact_solutions_agree():
    ts = np.array([0.0, 0.3, 1.7, 2.0])
    expected = np.stack([_linear_exact(t) for t in ts])
    np.testing.assert_allclose(linear_exact_many(ts), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("solver_cls,order,_", ODE_SOLVERS)
def test_global_convergence_order(solver_cls, order, _):
    solver = solver_cls()
    term = nde.ODETerm(_linear_vf)
    assert solver.order(term) == order
    # One compilation per solver: the number of steps is a batch dimension.
    solve = jax.jit(jax.vmap(lambda n: _solve_both(solver, n)))
    lin, nonlin = solve(jnp.asarray(_NUM_STEPS))
    hs = _T1 / _NUM_STEPS
    lin_err = np.abs(np.asarray(lin) - _linear_exact(_T1)).max(axis=1)
    nonlin_err = np.abs(np.asarray(nonlin) - _riccati_exact(_T1))
    # On the linear system every method is in its asymptotic regime.
    assert abs(measured_slope(hs, lin_err) - order) < SLOPE_TOL, lin_err
    # On the nonlinear problem the high-order methods are still pre-asymptotic
    # (measured slopes approach the order from above: Tsit5 5.2, Dopri8 9.4), so
    # only a lower bound is meaningful; a violated nonlinear order condition would
    # drop it by at least 1.
    assert measured_slope(hs, nonlin_err) > order - SLOPE_TOL, nonlin_err


def _one_step(solver, term, t0, h, y0):
    state = solver.init(term, t0, t0 + h, y0, None)
    y1, y_error, _, _, result = solver.step(term, t0, t0 + h, y0, None, state, False)
    return y1, y_error, result._value


@pytest.mark.parametrize("solver_cls,order,has_error", ODE_SOLVERS)
def test_local_error_and_error_estimate_orders(solver_cls, order, has_error):
    """One step of size h (public stepping API): the local error is
    O(h^(order + 1)), the embedded error estimate O(h^error_order)."""
    solver = solver_cls()
    term = nde.ODETerm(_linear_vf)
    hs = 2.0 ** -np.arange(0, 8)
    t0 = 0.3
    y0 = jnp.asarray(_linear_exact(t0))
    step = jax.jit(jax.vmap(lambda h: _one_step(solver, term, t0, h, y0)))
    y1, y_error, result = step(jnp.asarray(hs))
    assert np.all(np.asarray(result) == 0)
    exact = np.stack([_linear_exact(t0 + h) for h in hs])
    local = np.abs(np.asarray(y1) - exact).max(axis=1)
    # A lower bound: Tsit5's leading error coefficient is so small that its
    # measurable local errors still fall faster than h^6 (slopes 6.5 to 6.1).
    assert measured_slope(hs, local, floor=1e-14) > order + 1 - SLOPE_TOL, local
    if not has_error:
        assert y_error is None
        assert not isinstance(solver, nde.AbstractAdaptiveSolver)
        return
    assert isinstance(solver, nde.AbstractAdaptiveSolver)
    estimate = np.abs(np.asarray(y_error)).max(axis=1)
    slope = measured_slope(hs, estimate, floor=1e-14)
    assert abs(slope - solver.error_order(term)) < SLOPE_TOL, estimate


def _lotka_volterra(t, y, args):
    a, b, c, d = args
    prey, predator = y[0], y[1]
    return jnp.stack(
        [a * prey - b * prey * predator, c * prey * predator - d * predator]
    )


_LV_ARGS = (1.5, 1.0, 1.0, 3.0)


def _scan_stages_solves(solver, adaptive, tol):
    term = nde.ODETerm(_lotka_volterra)
    y0 = jnp.array([1.0, 1.0])
    fixed = nde.diffeqsolve(
        term,
        solver,
        0.0,
        3.0,
        0.05,
        y0,
        args=_LV_ARGS,
        saveat=nde.SaveAt(t1=True, dense=True),
        max_steps=64,
    )
    fixed = (fixed.ys, fixed.evaluate(1.2345), fixed.derivative(2.2))
    if not adaptive:
        return fixed, None
    sol = nde.diffeqsolve(
        term,
        solver,
        0.0,
        3.0,
        None,
        y0,
        args=_LV_ARGS,
        stepsize_controller=nde.PIDController(rtol=tol, atol=tol),
        max_steps=512,
    )
    return fixed, (sol.ys, sol.stats)


@pytest.mark.parametrize("solver_cls,order,adaptive", ODE_SOLVERS)
def test_scan_stages_gives_the_same_solve(solver_cls, order, adaptive):
    """`scan_stages=True` runs the same arithmetic, summed in a different order."""
    tol = 1e-4 if order <= 2 else 1e-6
    solve = jax.jit(_scan_stages_solves, static_argnums=(0, 1))
    unrolled = solve(solver_cls(scan_stages=False), adaptive, tol)
    scanned = solve(solver_cls(scan_stages=True), adaptive, tol)
    # Fixed steps: equal up to a few ulps per step (1e-12 over 60 steps of a
    # solution of size ~5), the dense output included.
    for a, b in zip(unrolled[0], scanned[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if not adaptive:
        return
    # Adaptive steps: the same steps are taken. The values agree only to within
    # the tolerance: an error estimate is a difference of nearly equal sums, whose
    # round-off (relative 1e-10 of the estimate) moves each proposed step size by
    # as much, and later steps inherit that.
    (ys_u, stats_u), (ys_s, stats_s) = unrolled[1], scanned[1]
    for key in ("num_steps", "num_accepted_steps", "num_rejected_steps"):
        assert stats_u[key] == stats_s[key], key
    np.testing.assert_allclose(ys_u, ys_s, rtol=tol, atol=tol)


def _stencil(t, y, args):
    return jnp.roll(y, 1) - 2 * y + jnp.roll(y, -1) - y**3


_W = jnp.eye(4) * 0.5


def _blocks(t, y, args):
    return (y.reshape(-1, 4) @ _W).reshape(-1)


def _scanned_by_default(field, n, solver_cls=nde.Tsit5):
    def solve(y0):
        return nde.diffeqsolve(
            nde.ODETerm(field), solver_cls(), 0.0, 1.0, 0.1, y0, max_steps=16
        ).ys

    return "scan" in primitive_names(jax.make_jaxpr(solve)(jnp.ones(n)).jaxpr)


def test_scan_stages_default_scans_large_states_without_matrix_products():
    """`scan_stages=None` (the default) runs the stages in a loop for a state with
    a leaf of `SCAN_STAGES_MIN_SIZE` elements or more whose vector field has no
    matrix product (a stencil), and unrolls them otherwise."""
    from nde.solvers._runge_kutta import SCAN_STAGES_MIN_SIZE

    n = SCAN_STAGES_MIN_SIZE
    assert _scanned_by_default(_stencil, n)
    assert _scanned_by_default(_stencil, n, nde.Dopri8)
    assert not _scanned_by_default(_stencil, n - 1)  # small: unrolled
    assert not _scanned_by_default(_blocks, n)  # a matrix product: unrolled

    # A matrix product nested inside jit, vmap or a cond branch counts too.
    nested = jax.jit(jax.vmap(lambda y: _W @ y))
    assert not _scanned_by_default(
        lambda t, y, args: nested(y.reshape(-1, 4)).reshape(-1), n
    )
    in_cond = lambda t, y, args: jax.lax.cond(
        t > 0.5, lambda: _blocks(t, y, args), lambda: -y
    )
    assert not _scanned_by_default(in_cond, n)
    # Explicit choices are kept.
    solve = lambda solver, y0: (
        nde.diffeqsolve(
            nde.ODETerm(_stencil), solver, 0.0, 1.0, 0.1, y0, max_steps=16
        ).ys
    )
    big = jnp.ones(n)
    assert "scan" not in primitive_names(
        jax.make_jaxpr(lambda y: solve(nde.Tsit5(scan_stages=False), y))(big).jaxpr
    )
    assert "scan" in primitive_names(
        jax.make_jaxpr(lambda y: solve(nde.Tsit5(scan_stages=True), y[:8]))(big).jaxpr
    )


def test_scan_stages_default_solves_a_large_stencil_as_scanned():
    """The choice changes only how the stages run: the default's solve of a
    256-point stencil is the scanned one, bit for bit, and the unrolled one to
    round-off."""
    x = jnp.linspace(0.0, 2 * np.pi, 256, endpoint=False)
    y0 = jnp.sin(x) + 0.1 * jnp.cos(3 * x)

    @jax.jit
    def solve(y0):
        out = []
        for scan in (None, True, False):
            out.append(
                nde.diffeqsolve(
                    nde.ODETerm(_stencil),
                    nde.Tsit5(scan_stages=scan),
                    0.0,
                    1.0,
                    0.05,
                    y0,
                    max_steps=32,
                ).ys
            )
        return out

    default, scanned, unrolled = solve(y0)
    np.testing.assert_array_equal(default, scanned)
    np.testing.assert_allclose(default, unrolled, rtol=1e-12, atol=1e-12)


def _count_evaluations(solver, num_steps):
    calls = []

    def vf(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -y

    sol = nde.diffeqsolve(
        nde.ODETerm(vf),
        solver,
        0.0,
        1.0,
        1.0 / num_steps,
        jnp.array([1.0]),
        max_steps=8,
    )
    sol.ys.block_until_ready()
    jax.effects_barrier()
    return len(calls)


_EVALUATIONS_PER_STEP = {
    nde.Euler: 1,  # f(t1, y1) at the end of the step, reused by the next step
    nde.Heun: 2,
    nde.Midpoint: 2,
    nde.Ralston: 2,
    nde.Bosh3: 3,  # 4 stages, FSAL
    nde.Tsit5: 6,  # 7 stages, FSAL
    nde.Dopri5: 6,
    nde.Dopri8: 13,  # 13 stages + the appended f(t1, y1), FSAL
}


@pytest.mark.parametrize(
    "solver", [cls() for cls, _, _ in ODE_SOLVERS] + [nde.Euler(scan_stages=True)]
)
def test_evaluations_per_step_reuse_fsal(solver):
    """Each step costs one evaluation per stage, one fewer for FSAL methods (their
    last stage is the next step's first); plus one before the first step. With
    `scan_stages=True` too (the scan evaluates the same stages)."""
    per_step = _EVALUATIONS_PER_STEP[type(solver)]
    assert _count_evaluations(solver, 5) == 1 + 5 * per_step
    if type(solver) in (nde.Tsit5, nde.Dopri8, nde.Heun):
        scanned = type(solver)(scan_stages=True)
        assert _count_evaluations(scanned, 5) == 1 + 5 * per_step


def test_manual_stepping_matches_diffeqsolve():
    """The public stepping API (`solver.init/step`, `controller.init/
    adapt_step_size`) reproduces `diffeqsolve` step by step."""
    term = nde.ODETerm(_lotka_volterra)
    solver = nde.Tsit5()
    controller = nde.PIDController(rtol=1e-5, atol=1e-5)
    y0 = jnp.array([1.0, 1.0])
    t0, t1 = 0.0, 1.0
    order = solver.error_order(term)
    tnext, c_state = controller.init(
        term, t0, t1, y0, 0.1, _LV_ARGS, solver.func, order
    )
    s_state = solver.init(term, t0, tnext, y0, _LV_ARGS)
    step = eqx.filter_jit(solver.step)
    adapt = eqx.filter_jit(controller.adapt_step_size)
    tprev, y, accepted = jnp.asarray(t0), y0, 0
    while tprev < t1:
        tnext = jnp.minimum(tnext, t1)
        y1, y_error, _, s_new, result = step(
            term, tprev, tnext, y, _LV_ARGS, s_state, False
        )
        assert result == nde.RESULTS.successful
        keep, tprev, tnext, _, c_state, _ = adapt(
            tprev, tnext, y, y1, _LV_ARGS, y_error, order, c_state
        )
        if keep:
            y, s_state, accepted = y1, s_new, accepted + 1
    sol = nde.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        0.1,
        y0,
        args=_LV_ARGS,
        stepsize_controller=controller,
    )
    assert int(sol.stats["num_accepted_steps"]) == accepted
    np.testing.assert_allclose(sol.ys[-1], y, rtol=1e-13)


# ----- ButcherTableau: the shipped tableaux, and rejection of bad ones -----


@pytest.mark.parametrize("solver_cls,order,_", ODE_SOLVERS)
def test_tableau_order_conditions(solver_cls, order, _):
    """Necessary order conditions, checked on the coefficients themselves:
    quadrature `b . c^(k-1) = 1/k` and `b . A^(k-1) 1 = 1/k!` for k <= order (the
    latter is the order on linear problems, checked numerically above too)."""
    tab = solver_cls.tableau
    a, b, c = tab.a, tab.b_sol, tab.c
    ones = np.ones_like(c)
    for k in range(1, order + 1):
        np.testing.assert_allclose(b @ c ** (k - 1), 1 / k, atol=1e-13, err_msg=str(k))
        v = np.linalg.matrix_power(a, k - 1) @ ones
        np.testing.assert_allclose(
            b @ v, 1 / np.prod(np.arange(1.0, k + 1)), atol=1e-13
        )
    if tab.b_error is not None:
        # The embedded method (b_sol - b_error) is at least first order.
        np.testing.assert_allclose((b - tab.b_error).sum(), 1, atol=1e-13)


def _good_tableau(**overrides):
    kwargs = dict(
        c=np.array([0.0, 1.0]),
        a_lower=(np.array([1.0]),),
        b_sol=np.array([0.5, 0.5]),
        b_error=np.array([-0.5, 0.5]),
    )
    kwargs.update(overrides)
    return nde.ButcherTableau(**kwargs)


def test_good_tableau_is_accepted():
    tab = _good_tableau()
    assert tab.num_stages == 2
    assert not tab.fsal
    assert tab.dense is not None and tab.dense.shape == (3, 3)  # cubic Hermite


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(c=np.array([0.1, 1.0])), r"c\[0\] must be 0, got 0.1"),
        (dict(a_lower=(np.array([0.5]),)), r"row 1 of `a` sums to 0.5, but c\[1\] = 1"),
        (dict(a_lower=(np.array([0.5, 0.5]),)), r"`a_lower` row i must have i entries"),
        (dict(b_sol=np.array([0.5, 0.6])), r"`b_sol` sums to 1.1"),
        (dict(b_sol=np.array([1.0])), r"`b_sol` must have 2 entries"),
        (dict(b_error=np.array([0.5, 0.5])), r"`b_error` sums to 1"),
        (dict(b_error=np.array([1.0, 0.0, -1.0])), r"`b_error` must have 2 entries"),
        (dict(dense=np.zeros((2, 3))), r"`dense` needs 3 rows, got 2"),
        (dict(dense=np.zeros((3, 3))), r"dense output does not reach y1"),
    ],
)
def test_bad_tableau_is_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        _good_tableau(**overrides)

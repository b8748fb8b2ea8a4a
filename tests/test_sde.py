"""SDE solvers: measured strong orders, steps checked by hand, adaptive steps,
reverse time, and clear errors.

Strong order is measured pathwise on a batch of Brownian paths (one
`VirtualBrownianTree` per path, fine enough not to limit the accuracy) with step
sizes `2**-4 ... 2**-8`: against the exact solution where there is one (geometric
Brownian motion), else as the mean distance between the solutions with step `h` and
`h / 2` on the same path (which also scales as `h**p`). The slope of the log-log fit
is compared with the theory: with 64 paths and 5 step sizes it varies by about
±0.05 with the paths and the pre-asymptotic regime adds about 0.1, so we accept
±0.2, which still tells the orders 0.5, 1.0 and 1.5 apart.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import SDE_SOLVERS

import nde

ORDERS = {solver: orders for solver, orders in SDE_SOLVERS}
NOISE = ("general", "commutative", "additive")
DTS = 2.0 ** -np.arange(4, 9)
KEYS = jr.split(jr.key(0), 64)
ORDER_TOL = 0.2
MU, SIGMA = 0.5, 0.8  # geometric Brownian motion dy = MU y dt + SIGMA y dW (Itô)


def brownian(key, shape, levy):
    return nde.VirtualBrownianTree(0.0, 1.0, 2**-12, shape, key, levy_area=levy)


def gbm(key, solver):
    """Scalar (hence commutative) noise, with its exact solution at t = 1."""
    bm = brownian(key, (), nde.BrownianIncrement)
    # A Stratonovich solver solves the Stratonovich SDE with the same solution.
    ito = isinstance(solver, (nde.Euler, nde.ItoMilstein))
    drift = MU if ito else MU - SIGMA**2 / 2
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: drift * y),
        nde.ControlTerm(lambda t, y, args: SIGMA * y, bm),
    )
    exact = jnp.exp(MU - SIGMA**2 / 2 + SIGMA * bm.evaluate(1.0))
    return terms, jnp.array(1.0), exact


def non_commutative(key, solver):
    """Two Brownian motions whose vector fields do not commute: y[1] picks up the
    Lévy area of (W1, W2), which no solver here samples, so order 0.5 at most."""
    bm = brownian(key, (2,), nde.BrownianIncrement)

    def diffusion(t, y, args):
        return jnp.array([[0.5, 0.0], [0.0, 0.5 * y[0]]])

    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: -0.5 * y), nde.ControlTerm(diffusion, bm)
    )
    return terms, jnp.array([0.3, 1.0]), None


def additive(key, solver):
    """Additive, time-dependent noise with a nonlinear drift."""
    levy = nde.SpaceTimeLevyArea if isinstance(solver, (nde.SRA1, nde.ShARK)) else None
    bm = brownian(key, (2,), levy or nde.BrownianIncrement)

    def drift(t, y, args):
        return -jnp.sin(y) + jnp.array([0.3, -0.2]) * y[::-1]

    def diffusion(t, y, args):
        return jnp.array([[0.5, 0.2], [0.1, 0.4]]) * (1 + t)

    terms = nde.MultiTerm(nde.ODETerm(drift), nde.ControlTerm(diffusion, bm))
    return terms, jnp.array([1.0, 0.5]), None


PROBLEMS = dict(general=non_commutative, commutative=gbm, additive=additive)
MEASURED = dict(
    general=[nde.Euler, nde.Heun, nde.Midpoint, nde.EulerHeun, nde.ReversibleHeun],
    commutative=[nde.Euler, nde.ItoMilstein, nde.StratonovichMilstein],
    additive=[nde.Euler, nde.SRA1, nde.ShARK],
)
CASES = [(s, noise) for noise in NOISE for s in MEASURED[noise]]


@ft.partial(jax.jit, static_argnums=(0, 1))
def _solve_batch(solver_cls, noise, dt):
    solver = solver_cls()

    def one(key):
        terms, y0, exact = PROBLEMS[noise](key, solver)
        sol = nde.diffeqsolve(terms, solver, 0.0, 1.0, dt, y0, max_steps=2**8)
        return sol.ys[0], exact

    return jax.vmap(one)(KEYS)


def _fitted_order(errors):
    return np.polyfit(np.log(DTS[: len(errors)]), np.log(errors), 1)[0]


@pytest.mark.parametrize(
    "solver_cls, noise", CASES, ids=[f"{s.__name__}-{n}" for s, n in CASES]
)
def test_strong_order(solver_cls, noise):
    expected = ORDERS[solver_cls][NOISE.index(noise)]
    assert solver_cls().strong_order(None) in (0.5, 1.0, 1.5)
    solutions = [_solve_batch(solver_cls, noise, dt) for dt in DTS]
    if noise == "commutative":
        errors = [np.mean(np.abs(ys - exact)) for ys, exact in solutions]
    else:
        ys = [np.asarray(y) for y, _ in solutions]
        errors = [
            np.mean(np.linalg.norm(a - b, axis=-1))
            for a, b in zip(ys[:-1], ys[1:], strict=True)
        ]
    order = _fitted_order(errors)
    print(f"{solver_cls.__name__} {noise}: measured strong order {order:.2f}")
    assert abs(order - expected) < ORDER_TOL, (order, expected, errors)


@jax.jit
def _euler_by_hand(key):
    bm = brownian(key, (2,), nde.BrownianIncrement)
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: -y * args),
        nde.WeaklyDiagonalControlTerm(lambda t, y, args: jnp.cos(y) + t, bm),
    )
    y0, dt = jnp.array([1.0, -0.5]), 0.125
    sol = nde.diffeqsolve(terms, nde.Euler(), 0.0, 1.0, dt, y0, 2.0)
    y = y0
    for n in range(8):
        t = n * dt
        y = y - 2.0 * y * dt + (jnp.cos(y) + t) * bm.evaluate(t, t + dt)
    return sol.ys[0], y


def test_euler_maruyama_step_by_hand():
    solved, by_hand = _euler_by_hand(jr.key(1))
    np.testing.assert_allclose(solved, by_hand, rtol=1e-13)


@jax.jit
def _shark_by_hand(key):
    # One step of ShARK against Foster, dos Reis & Strange (2023), eq. (6.1).
    bm = brownian(key, (2,), nde.SpaceTimeLevyArea)
    sigma = jnp.array([[0.5, 0.2], [0.1, 0.4]])
    f = lambda y: -jnp.sin(y) + 0.3 * y[::-1]
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: f(y)),
        nde.ControlTerm(lambda t, y, args: sigma, bm),
    )
    y0, h = jnp.array([1.0, 0.5]), 0.25
    sol = nde.diffeqsolve(terms, nde.ShARK(), 0.0, h, h, y0)
    levy = bm.evaluate(0.0, h, use_levy=True)
    z1 = y0 + sigma @ levy.H
    z2 = y0 + 5 / 6 * h * f(z1) + sigma @ (5 / 6 * levy.W + levy.H)
    y1 = y0 + h * (0.4 * f(z1) + 0.6 * f(z2)) + sigma @ levy.W
    return sol.ys[0], y1


def test_shark_step_by_hand():
    solved, by_hand = _shark_by_hand(jr.key(2))
    np.testing.assert_allclose(solved, by_hand, rtol=1e-14)


@ft.partial(jax.jit, static_argnums=0)
def _adaptive(solver_cls, rtol):
    solver = solver_cls()

    def one(key):
        terms, y0, _ = additive(key, solver)
        controller = nde.PIDController(rtol=rtol, atol=rtol)
        sol = nde.diffeqsolve(
            terms, solver, 0.0, 1.0, 0.05, y0, stepsize_controller=controller
        )
        fine = nde.diffeqsolve(terms, solver, 0.0, 1.0, 2**-10, y0)
        return sol.ys[0] - fine.ys[0], sol.stats["num_rejected_steps"]

    return jax.vmap(one)(KEYS[:16])


@pytest.mark.parametrize("solver_cls", [nde.ShARK, nde.Heun])
def test_adaptive_steps_converge(solver_cls):
    # Adaptive steps over a VirtualBrownianTree (rejected steps are retried on the
    # same path) converge to the fixed-step solution as the tolerance falls.
    errors, rejected = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        diff, num_rejected = _adaptive(solver_cls, rtol)
        errors.append(np.mean(np.linalg.norm(diff, axis=-1)))
        rejected.append(int(np.sum(num_rejected)))
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    assert sum(rejected) > 0
    solver = solver_cls()
    terms = additive(KEYS[0], solver)[0]
    assert solver.error_order(terms) == solver.strong_order(terms) + 0.5


@jax.jit
def _reverse_time(key):
    bm = brownian(key, (), nde.BrownianIncrement)
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: jnp.zeros_like(y)),
        nde.ControlTerm(lambda t, y, args: 2.0 + 0 * y, bm),
    )
    back = nde.diffeqsolve(terms, nde.Heun(), 1.0, 0.25, -0.25, jnp.array(1.0))
    return back.ys[0], 1.0 + 2.0 * bm.evaluate(1.0, 0.25)


def test_reverse_time_uses_the_same_path():
    solved, exact = _reverse_time(jr.key(3))
    np.testing.assert_allclose(solved, exact, rtol=1e-13)


def test_unsafe_brownian_path_fixed_steps_and_adaptive_error():
    bm = nde.UnsafeBrownianPath((), jr.key(4))
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: -y), nde.ControlTerm(lambda t, y, a: 0.5, bm)
    )
    solve = eqx.filter_jit(nde.diffeqsolve)
    sol = solve(terms, nde.Euler(), 0.0, 0.5, 0.25, jnp.array(1.0))
    y = 1.0
    for t in (0.0, 0.25):
        y = y - 0.25 * y + 0.5 * bm.evaluate(t, t + 0.25)
    np.testing.assert_allclose(sol.ys[0], y, rtol=1e-14)
    pid = nde.PIDController(rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="cannot be used with an adaptive step size"):
        nde.diffeqsolve(terms, nde.Heun(), 0, 1, 0.1, 1.0, stepsize_controller=pid)


def test_errors():
    bm = brownian(jr.key(0), (), nde.BrownianIncrement)
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: -y), nde.ControlTerm(lambda t, y, a: 0.5, bm)
    )
    y0 = jnp.array(1.0)
    with pytest.raises(ValueError, match="levy_area=SpaceTimeLevyArea"):
        nde.diffeqsolve(terms, nde.SRA1(), 0.0, 1.0, 0.1, y0)
    with pytest.raises(ValueError, match=r"MultiTerm\(ODETerm\(drift\), ControlTerm"):
        nde.diffeqsolve(terms.terms[1], nde.EulerHeun(), 0.0, 1.0, 0.1, y0)
    pid = nde.PIDController(rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match=r"dt0=None\)` chooses the first step"):
        nde.diffeqsolve(terms, nde.Heun(), 0.0, 1.0, None, y0, stepsize_controller=pid)
    path = nde.LinearInterpolation(jnp.array([0.0, 1.0]), jnp.array([0.0, 1.0]))
    cde = nde.MultiTerm(terms.terms[0], nde.ControlTerm(lambda t, y, a: y, path))
    with pytest.raises(ValueError, match="needs the Lévy area of a Brownian motion"):
        nde.diffeqsolve(cde, nde.ShARK(), 0.0, 1.0, 0.1, y0)


class _Drift(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.weight @ y) * args - 0.1 * y


class _Diffusion(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return 0.3 * jnp.tanh(self.weight * y + t)


@ft.partial(jax.jit, static_argnums=(1, 2))
def _sde_loss(params, solver, adjoint):
    # A fixed Brownian path: the loss is a smooth function of the parameters.
    bm = brownian(jr.key(7), (2,), nde.BrownianIncrement)
    drift, diffusion, y0, args = params
    terms = nde.MultiTerm(
        nde.ODETerm(_Drift(drift)),
        nde.WeaklyDiagonalControlTerm(_Diffusion(diffusion), bm),
    )
    sol = nde.diffeqsolve(
        terms, solver, 0.0, 1.0, 2**-5, y0, args, adjoint=adjoint, max_steps=64
    )
    return jnp.sum(sol.ys**2)


# BacksolveAdjoint differentiates the SDE itself (solved backwards), not its
# discretisation: it agrees with finite differences of the discrete solve up to the
# discretisation error, measured at about 2e-3 relative here (dt = 2**-5).
GRADIENT_CASES = [
    (nde.RecursiveCheckpointAdjoint(), nde.Heun(), 1e-6),
    (nde.DirectAdjoint(), nde.Heun(), 1e-6),
    (nde.ReversibleAdjoint(), nde.ReversibleHeun(), 1e-6),
    (nde.BacksolveAdjoint(), nde.ReversibleHeun(), 1e-2),
]


@pytest.mark.parametrize(
    "adjoint, solver, rtol",
    GRADIENT_CASES,
    ids=[type(a).__name__ for a, _, _ in GRADIENT_CASES],
)
def test_gradients_match_finite_differences(adjoint, solver, rtol):
    params = (
        jr.normal(jr.key(1), (2, 2)),
        jr.normal(jr.key(2), (2,)),
        jnp.array([0.5, -0.3]),
        jnp.array(1.2),
    )
    grads = jax.jit(jax.grad(_sde_loss), static_argnums=(1, 2))(params, solver, adjoint)
    # Directional derivatives along random directions, by central differences
    # (float64: truncation ~eps**2, round-off ~1e-16 / eps, so ~1e-9 relative).
    eps = 1e-6
    plain = nde.RecursiveCheckpointAdjoint()
    for i in range(2):
        keys = jr.split(jr.key(10 + i), 4)
        leaves, treedef = jax.tree.flatten(params)
        direction = jax.tree.unflatten(
            treedef, [jr.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
        )
        plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
        minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
        fd = (_sde_loss(plus, solver, plain) - _sde_loss(minus, solver, plain)) / (
            2 * eps
        )
        pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        np.testing.assert_allclose(sum(jnp.vdot(g, d) for g, d in pairs), fd, rtol=rtol)

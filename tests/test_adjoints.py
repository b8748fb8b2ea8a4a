"""Gradients through `diffeqsolve`: every adjoint against finite differences and
against each other, for every solver of the issue, with constant and adaptive steps.

One problem throughout: a 2-D state, a vector field with an `eqx.nn.MLP` (its
parameters inside `terms`), arguments `args`, and a loss on three save times. All
inputs are flattened into one vector `theta`, so a gradient is one array.

Tolerances (relative to the largest entry of the gradient):

- RecursiveCheckpointAdjoint vs DirectAdjoint vs ForwardMode: the same discrete
  map differentiated three ways, so only round-off: 1e-10.
- vs central finite differences (eps 1e-6, float64): truncation ~eps^2, round-off
  ~1e-16/eps, so 1e-7. With a PIDController the finite differences are taken on
  the step grid of the unperturbed solve (`StepTo`): the adaptive step sizes are a
  discrete decision that autodiff does not differentiate (as in Diffrax).
- BacksolveAdjoint approximates the gradient of the exact solution: against the
  exact gradient (Dopri8 with 256 constant steps: its error is at round-off, while
  an adaptive rtol=1e-12 reference is off by 1e-10, which hides Dopri8's own
  convergence), within 100 x rtol with a PIDController; with constant steps its
  error must shrink at the solver's order (within 0.6) when dt halves.
- The PID tolerance is 1e-7, 1e-5 for Heun (second order: 518 steps at 1e-7).
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import nde

T1 = 1.0
TS = jnp.array([0.25, 0.5, T1])
EPS = 1e-6


class Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        a, b = args
        return a * self.mlp(y) - b * y + 0.3 * jnp.sin(t) * y[::-1]


def _params():
    mlp = eqx.nn.MLP(
        2, 2, 4, 1, activation=jnp.tanh, key=jr.PRNGKey(0), dtype=jnp.float64
    )
    return mlp, jnp.array([0.8, -0.4]), (jnp.array(0.9), jnp.array(0.3))


_DYNAMIC, _STATIC = eqx.partition(_params(), eqx.is_array)
THETA, _UNRAVEL = ravel_pytree(_DYNAMIC)


def unravel(theta):
    return eqx.combine(_UNRAVEL(theta), _STATIC)


def loss(theta, solver, controller, dt0, adjoint, t0=0.0, t1=T1, ts=TS):
    mlp, y0, args = unravel(theta)
    sol = nde.diffeqsolve(
        nde.ODETerm(Field(mlp)),
        solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=nde.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=256,
    )
    return jnp.sum(sol.ys**2) + jnp.sum(jnp.sin(3 * sol.ys))


def rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@ft.cache
def exact_gradient():
    f = ft.partial(
        loss,
        solver=nde.Dopri8(scan_stages=True),
        controller=nde.ConstantStepSize(),
        dt0=T1 / 256,
        adjoint=nde.RecursiveCheckpointAdjoint(),
    )
    return jax.jit(jax.grad(f))(THETA)


# (solver, order, dt of the constant-step case)
SOLVERS = [
    (nde.Euler(), 1, 0.02),
    (nde.Heun(scan_stages=True), 2, 0.05),
    (nde.Bosh3(scan_stages=True), 3, 0.1),
    (nde.Tsit5(scan_stages=True), 5, 0.25),
    (nde.Dopri5(scan_stages=True), 5, 0.25),
    (nde.Dopri8(scan_stages=True), 8, 0.25),
]
RTOL = 1e-7
RTOL_OF = {"Heun": 1e-5}


ALL = ("recursive", "backsolve", "direct", "forward", "every_step")
ADJOINT_OF = {
    "recursive": nde.RecursiveCheckpointAdjoint(),
    # checkpoints >= max_steps (256): every state stored, no forward recomputation
    "every_step": nde.RecursiveCheckpointAdjoint(checkpoints=256),
    "backsolve": nde.BacksolveAdjoint(),
    "direct": nde.DirectAdjoint(),
    "forward": nde.ForwardMode(),
}


@eqx.filter_jit
def _gradients(theta, solver, controller, dt0, names):
    """The gradient from each adjoint in `names`; for "forward" (ForwardMode), the
    directional derivatives along the first three coordinates."""
    f = lambda name: ft.partial(
        loss, solver=solver, controller=controller, dt0=dt0, adjoint=ADJOINT_OF[name]
    )
    out = {name: jax.grad(f(name))(theta) for name in names if name != "forward"}
    if "forward" in names:
        basis = jnp.eye(theta.size, dtype=theta.dtype)[:3]
        out["forward"] = jax.vmap(lambda v: jax.jvp(f("forward"), (theta,), (v,))[1])(
            basis
        )
    return out


@eqx.filter_jit
def _finite_differences(theta, solver, controller, dt0):
    f = jax.vmap(
        ft.partial(
            loss,
            solver=solver,
            controller=controller,
            dt0=dt0,
            adjoint=nde.RecursiveCheckpointAdjoint(),
        )
    )
    basis = jnp.eye(theta.size, dtype=theta.dtype)
    return (f(theta + EPS * basis) - f(theta - EPS * basis)) / (2 * EPS)


def _accepted_times(theta, solver, controller):
    mlp, y0, args = unravel(theta)
    sol = nde.diffeqsolve(
        nde.ODETerm(Field(mlp)),
        solver,
        0.0,
        T1,
        None,
        y0,
        args,
        saveat=nde.SaveAt(steps=True),
        stepsize_controller=controller,
        max_steps=256,
    )
    ts = np.asarray(sol.ts)
    return np.concatenate([[0.0], ts[np.isfinite(ts)]])


# DirectAdjoint and ForwardMode run the same step as RecursiveCheckpointAdjoint in
# another loop; they are checked on a few cases to keep compile time down.
WITH_ALL = {("Euler", False), ("Tsit5", True), ("Dopri8", False)}
CASES = [
    pytest.param(solver, order, dt, adaptive, id=f"{type(solver).__name__}-{kind}")
    for solver, order, dt in SOLVERS
    for adaptive, kind in [(False, "constant"), (True, "pid")]
    if not (adaptive and isinstance(solver, nde.Euler))
]


@pytest.mark.parametrize("solver,order,dt,adaptive", CASES)
def test_adjoints_agree(solver, order, dt, adaptive):
    rtol = RTOL_OF.get(type(solver).__name__, RTOL)
    if adaptive:
        controller, dt0 = nde.PIDController(rtol=rtol, atol=rtol), None
    else:
        controller, dt0 = nde.ConstantStepSize(), jnp.asarray(dt)
    full = (type(solver).__name__, adaptive) in WITH_ALL
    names = ALL if full else ALL[:2]
    grads = _gradients(THETA, solver, controller, dt0, names)
    g = grads["recursive"]
    if full:
        assert rel_err(grads["direct"], g) < 1e-10
        assert rel_err(grads["forward"], g[:3]) < 1e-10
        assert rel_err(grads["every_step"], g) < 1e-12
    # Finite differences of the same discrete map.
    if adaptive:
        grid = nde.StepTo(_accepted_times(THETA, solver, controller))
        fd = _finite_differences(THETA, solver, grid, None)
    else:
        fd = _finite_differences(THETA, solver, controller, dt0)
    assert rel_err(g, fd) < 1e-7
    exact = exact_gradient()
    if adaptive:
        assert rel_err(grads["backsolve"], exact) < 100 * rtol
    else:
        # Halving dt divides BacksolveAdjoint's error by about 2**order.
        half = _gradients(THETA, solver, controller, dt0 / 2, names)
        e1, e2 = rel_err(grads["backsolve"], exact), rel_err(half["backsolve"], exact)
        assert order - 0.6 < np.log2(e1 / e2) < order + 0.6


PID = nde.PIDController(rtol=1e-10, atol=1e-10)


# The stages of Tsit5 as a loop: the tests below compile a third faster. The
# unrolled stages (`Tsit5()`, the default) are differentiated in
# test_pytree_state_and_reverse_time.
TSIT5 = nde.Tsit5(scan_stages=True)


def _solve_pytree(
    y0, args, adjoint, t0=0.0, t1=1.0, ts=None, dt0=None, max_steps=4096, solver=TSIT5
):
    def field(t, y, args):
        return {
            "x": -args["k"] * y["x"] + jnp.sum(y["v"]) * jnp.ones(2),
            "v": jnp.tanh(y["x"][0]) * args["m"] - 0.1 * y["v"],
        }

    saveat = nde.SaveAt(t1=True) if ts is None else nde.SaveAt(ts=ts)
    sol = nde.diffeqsolve(
        nde.ODETerm(field),
        solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=PID if dt0 is None else nde.ConstantStepSize(),
        adjoint=adjoint,
        max_steps=max_steps,
    )
    return jnp.sum(sol.ys["x"] ** 2) + jnp.sum(jnp.cos(sol.ys["v"]))


Y0 = {"x": jnp.array([1.0, -0.5]), "v": jnp.array([[0.3, 0.1, -0.2]])}
ARGS = {"k": jnp.array(0.7), "m": jnp.array([[1.0, -2.0, 0.5]])}
ADJOINTS = [
    nde.RecursiveCheckpointAdjoint(),
    nde.DirectAdjoint(),
    nde.BacksolveAdjoint(),
    nde.RecursiveCheckpointAdjoint(checkpoints=4096),  # = max_steps: every state
]


def _flat(tree):
    return ravel_pytree(tree)[0]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse_time"])
def test_pytree_state_and_reverse_time(reverse):
    """Dict states of different shapes; also solving from t0 = 1 back to t1 = 0."""
    t0, t1 = (1.0, 0.0) if reverse else (0.0, 1.0)
    solve = ft.partial(_solve_pytree, solver=nde.Tsit5())  # unrolled stages
    grad = jax.jit(jax.grad(solve, argnums=(0, 1)), static_argnums=(2, 3, 4))
    grads = [_flat(grad(Y0, ARGS, adjoint, t0, t1)) for adjoint in ADJOINTS]
    assert rel_err(grads[1], grads[0]) < 1e-10
    assert rel_err(grads[2], grads[0]) < 1e-7
    assert rel_err(grads[3], grads[0]) < 1e-12
    flat, unflat = ravel_pytree((Y0, ARGS))
    f = jax.jit(lambda x: solve(*unflat(x), ADJOINTS[0], t0, t1))
    fd = jax.vmap(lambda e: (f(flat + EPS * e) - f(flat - EPS * e)) / (2 * EPS))(
        jnp.eye(flat.size)
    )
    # Adaptive steps: finite differences see the step sizes move (rtol 1e-10).
    assert rel_err(grads[0], fd) < 1e-6


def test_many_save_points():
    """A loss on 50 save times: the adjoint jumps at each one."""
    ts = jnp.linspace(0.0, 1.0, 50)
    grad = jax.grad(_solve_pytree, argnums=(0, 1))
    recursive, backsolve = [
        _flat(grad(Y0, ARGS, adjoint, 0.0, 1.0, ts)) for adjoint in ADJOINTS[::2]
    ]
    assert rel_err(backsolve, recursive) < 1e-7


@pytest.mark.parametrize("num_ts", [3, 37], ids=["block", "loop"])
def test_each_way_of_saving_ts_differentiates(num_ts):
    """A step saves the times it covers in one of three ways (`_saving.py`): none
    due, a vectorised block of up to 8, or a loop beyond. With 4 and 8 constant
    Tsit5 steps, 3 save times give steps of none, one and two; 37 give steps of
    over 8 (4 steps: the loop) and of 4-5 (8 steps: the block), and, vmapped over
    both step sizes, the loop for both (the most over the batch decides). Every
    adjoint but BacksolveAdjoint differentiates the same discrete map: within
    round-off of each other (1e-10), and of central finite differences (1e-7)."""
    ts = jnp.array([0.1, 0.2, 0.9]) if num_ts == 3 else jnp.linspace(0.05, T1, 37)
    names = ("recursive", "every_step", "direct", "forward")
    solver, controller = nde.Tsit5(scan_stages=True), nde.ConstantStepSize()

    def value(theta, dt0, name):
        return loss(theta, solver, controller, dt0, ADJOINT_OF[name], ts=ts)

    basis = jnp.eye(THETA.size, dtype=THETA.dtype)

    @jax.jit
    def derivatives(theta, dt0):
        out = {n: jax.grad(value)(theta, dt0, n) for n in names if n != "forward"}
        jvp = lambda v: jax.jvp(lambda x: value(x, dt0, "forward"), (theta,), (v,))[1]
        out["forward"] = jax.vmap(jvp)(basis)
        return out

    @jax.jit
    def finite_differences(theta, dt0):
        f = jax.vmap(lambda x: value(x, dt0, "recursive"))
        return (f(theta + EPS * basis) - f(theta - EPS * basis)) / (2 * EPS)

    dt0s = jnp.array([T1 / 4, T1 / 8])
    batched = jax.vmap(derivatives, in_axes=(None, 0))(THETA, dt0s)
    for i, dt0 in enumerate(dt0s):
        out, fd = derivatives(THETA, dt0), finite_differences(THETA, dt0)
        ref = out["direct"]
        assert rel_err(ref, fd) < 1e-7
        for name in names:
            assert rel_err(out[name], ref) < 1e-10, name
            assert rel_err(batched[name][i], ref) < 1e-10, name


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_vmap_of_gradients(adjoint):
    """A batch of initial conditions, each with its own number of steps."""
    batch = {"x": jnp.array([[1.0, -0.5], [0.2, 0.9], [2.0, 1.0]]), "v": Y0["v"][None]}
    batch["v"] = jnp.broadcast_to(Y0["v"], (3, 1, 3))
    grad = jax.grad(_solve_pytree)
    batched = jax.jit(jax.vmap(grad, in_axes=(0, None, None)), static_argnums=2)
    out = batched(batch, ARGS, adjoint)
    single = jax.jit(grad, static_argnums=2)
    for i in range(3):
        take = lambda tree, i=i: jax.tree_util.tree_map(lambda x: x[i], tree)
        expected = single(take(batch), ARGS, adjoint)
        assert rel_err(_flat(take(out)), _flat(expected)) < 1e-9


@pytest.mark.parametrize("checkpoints", [None, 64], ids=["checkpointed", "every-step"])
def test_gradient_of_a_vmapped_solve_with_unbatched_state(checkpoints):
    """The gradient of a batch of solves (the usual loss of a neural ODE). Under
    `vmap` some parts of the loop's state stay unbatched (the index of the save
    at t1, before the final save) while others are batched (each element's step
    count): the checkpointed loops must return every part with the batching the
    undifferentiated loop gives it."""

    def loss(p, y0):
        sol = nde.diffeqsolve(
            nde.ODETerm(lambda t, y, a: -a * y * (1 + y**2)),
            nde.Tsit5(),
            0.0,
            1.0,
            0.1,
            y0,
            args=p,
            stepsize_controller=nde.PIDController(rtol=1e-6, atol=1e-6),
            adjoint=nde.RecursiveCheckpointAdjoint(checkpoints=checkpoints),
            max_steps=64,
        )
        return jnp.sum(sol.ys)

    y0s = jnp.linspace(1.0, 2.0, 3)[:, None]
    p = jnp.asarray(0.7)
    batched = jax.grad(lambda p: jnp.sum(jax.vmap(loss, (None, 0))(p, y0s)))
    # Not inside `jit`: `diffeqsolve` then compiles the solve itself (the mismatch
    # showed only there).
    got = batched(p)
    expected = sum(jax.jit(jax.grad(loss))(p, y0) for y0 in y0s)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_time_gradients():
    """d loss / d (t1, ts) agree between BacksolveAdjoint and reverse mode."""

    def f(t1, ts, adjoint):
        sol = nde.diffeqsolve(
            nde.ODETerm(lambda t, y, a: -a * y + jnp.sin(t)),
            nde.Tsit5(),
            0.0,
            t1,
            None,
            jnp.array([1.0, 2.0]),
            0.5,
            saveat=nde.SaveAt(ts=ts, t1=True),
            stepsize_controller=PID,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys**2)

    ts = jnp.array([0.3, 0.7])
    g_rc = jax.grad(f, argnums=(0, 1))(1.5, ts, nde.RecursiveCheckpointAdjoint())
    g_bs = jax.grad(f, argnums=(0, 1))(1.5, ts, nde.BacksolveAdjoint())
    assert rel_err(_flat(g_bs), _flat(g_rc)) < 1e-7


def test_hessian_direct_adjoint():
    """jax.hessian through DirectAdjoint vs finite differences of the gradient."""

    def f(y0):
        sol = nde.diffeqsolve(
            nde.ODETerm(lambda t, y, a: jnp.stack([y[1], -jnp.sin(y[0])])),
            nde.Tsit5(),
            0.0,
            1.0,
            0.1,
            y0,
            adjoint=nde.DirectAdjoint(),
        )
        return jnp.sum(sol.ys**3)

    y0 = jnp.array([0.4, -0.2])
    hess = jax.hessian(f)(y0)
    grad = jax.jit(jax.grad(f))
    fd = jnp.stack(
        [(grad(y0 + EPS * e) - grad(y0 - EPS * e)) / (2 * EPS) for e in jnp.eye(2)]
    )
    np.testing.assert_allclose(hess, fd, rtol=1e-7)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12)


def test_forward_mode_jacobian():
    """jax.jacfwd with ForwardMode equals jax.jacrev with the default adjoint."""

    def f(args, adjoint):
        sol = nde.diffeqsolve(
            nde.ODETerm(lambda t, y, a: a[0] * y - a[1] * y**3),
            nde.Dopri5(),
            0.0,
            2.0,
            None,
            jnp.array([0.5, 1.0, 1.5]),
            args,
            saveat=nde.SaveAt(ts=jnp.linspace(0, 2, 5)),
            stepsize_controller=PID,
            adjoint=adjoint,
            max_steps=None if isinstance(adjoint, nde.ForwardMode) else 4096,
        )
        return sol.ys

    args = jnp.array([0.3, 0.2])
    fwd = jax.jacfwd(f)(args, nde.ForwardMode())
    rev = jax.jacrev(f)(args, nde.RecursiveCheckpointAdjoint())
    np.testing.assert_allclose(fwd, rev, rtol=1e-10, atol=1e-14)


def test_recursive_checkpoint_bisected_gaps():
    """Few checkpoints: long gaps between them are cut by bisection on the backward
    pass and many windows are replayed from the tape; save points inside the
    windows. The gradient is DirectAdjoint's."""
    ts = jnp.linspace(0.0, 1.0, 7)
    grad = jax.jit(jax.grad(_solve_pytree, argnums=(0, 1)), static_argnums=(2, 3, 4))
    got = _flat(grad(Y0, ARGS, nde.RecursiveCheckpointAdjoint(4), 0.0, 1.0, ts))
    want = _flat(grad(Y0, ARGS, nde.DirectAdjoint(), 0.0, 1.0, ts))
    assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("tape", ["ring", "checkpoints"])
def test_recursive_checkpoint_states_on_tape(tape, monkeypatch):
    """The last steps are played back from states the forward pass left behind.

    "ring": a window longer than the checkpoint count (the default's, for a small
    state; here forced to 12 steps against 8 checkpoints) keeps the last window of
    states in a ring: fewer steps than the window (5: no replay at all), exactly a
    window (12), and a ring that has wrapped around (40 = 3 x 12 + 4) before the
    checkpointed windows. "checkpoints": 8 checkpoints hold every state of a solve
    of fewer steps (5); at 8 and 40 steps the stride has doubled and they do not.
    The gradient is DirectAdjoint's. The step size is traced, so each adjoint's
    gradient compiles once for all the lengths."""
    from nde.adjoints import _checkpointed_while_loop as loop

    if tape == "ring":
        monkeypatch.setattr(loop, "window_size", lambda *_: 12)
        adjoint = nde.RecursiveCheckpointAdjoint()  # 8 checkpoints at max_steps=64
    else:
        adjoint = nde.RecursiveCheckpointAdjoint(8)
    ts = jnp.linspace(0.0, 1.0, 4)

    @ft.partial(jax.jit, static_argnums=3)
    def grad(y0, args, dt0, adjoint):
        f = ft.partial(_solve_pytree, ts=ts, dt0=dt0, max_steps=64)
        return jax.grad(f, argnums=(0, 1))(y0, args, adjoint)

    for num_steps in (5, 8, 12, 40) if tape == "checkpoints" else (5, 12, 40):
        dt0 = jnp.asarray(1.0 / num_steps)
        got = _flat(grad(Y0, ARGS, dt0, adjoint))
        want = _flat(grad(Y0, ARGS, dt0, nde.DirectAdjoint()))
        assert rel_err(got, want) < 1e-10, num_steps


def test_default_window_sized_by_bytes():
    """`checkpoints=None` replays as many steps at a time as there are checkpoints,
    or as many as fit in `TAPE_BYTES` when that is more (at most `TAPE_ROWS` and
    `max_steps`)."""
    from nde.adjoints._checkpointed_while_loop import TAPE_BYTES, TAPE_ROWS, window_size

    small = [jnp.zeros(4, jnp.float32), jnp.zeros((), jnp.int32)]  # 20 bytes
    assert window_size(14, 1 << 30, small) == TAPE_ROWS
    assert window_size(14, 100, small) == 100
    wide = [jnp.zeros(1024, jnp.float32)]  # 4 KiB: a batch-256 state of a 4-D ODE
    assert window_size(14, 4096, wide) == TAPE_BYTES // 4096
    big = [jnp.zeros(TAPE_BYTES // 16, jnp.float32)]  # 4 fit
    assert window_size(14, 4096, big) == 14

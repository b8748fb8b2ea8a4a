"""`SaveAt`: what a solve returns (t0, t1, ts, steps, fn, subs), and the final
solver state, controller state and `made_jump` that let a later solve continue.

Most tests use y' = -y (y = exp(-t)) with four Tsit5 steps of 0.25: the saved
values then carry Tsit5's error at h = 0.25, below 2e-7 (hence `atol=1e-6`), and
times must be exact.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nde

TERM = nde.ODETerm(lambda t, y, args: -y)
Y0 = jnp.array([1.0])


@jax.jit
def _solve(saveat, t0=0.0, t1=1.0, dt0=0.25):
    return nde.diffeqsolve(
        TERM, nde.Tsit5(), t0, t1, dt0, Y0, saveat=saveat, max_steps=6
    )


def _finite(ts, ys):
    keep = np.isfinite(np.asarray(ts))
    return np.asarray(ts)[keep], np.asarray(ys)[keep]


def test_default_saves_t1():
    sol = nde.diffeqsolve(TERM, nde.Tsit5(), 0.0, 1.0, 0.25, Y0)
    np.testing.assert_array_equal(sol.ts, [1.0])
    np.testing.assert_allclose(sol.ys, [[np.exp(-1.0)]], atol=1e-6)
    assert sol.ys.shape == (1, 1)


def test_t0_ts_steps_t1_in_time_order():
    """Each source saves separately, in the order the solve reaches them: t0, the
    `ts` and step ends a step covers, then t1. Unused slots (steps=True reserves
    `max_steps`) hold inf."""
    saveat = nde.SaveAt(t0=True, t1=True, ts=[0.1, 0.5, 0.5, 1.0], steps=True)
    sol = _solve(saveat)
    expected_ts = [0.0, 0.1, 0.25, 0.5, 0.5, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert sol.ts.shape == (1 + 1 + 4 + 6,)
    np.testing.assert_array_equal(sol.ts[:10], expected_ts)
    assert np.all(np.isinf(sol.ts[10:])) and np.all(np.isinf(sol.ys[10:]))
    np.testing.assert_allclose(
        sol.ys[:10, 0], np.exp(-np.array(expected_ts)), atol=1e-6
    )


def test_ts_at_the_ends_and_repeated():
    sol = _solve(nde.SaveAt(ts=[0.0, 0.0, 0.3, 1.0]))
    np.testing.assert_array_equal(sol.ts, [0.0, 0.0, 0.3, 1.0])
    np.testing.assert_array_equal(sol.ys[:2, 0], [1.0, 1.0])  # y0 itself
    np.testing.assert_allclose(sol.ys[:, 0], np.exp(-sol.ts), atol=1e-6)


def test_ts_interpolation_is_accurate():
    """Save times inside steps are interpolated with the solver's dense output; at
    a tight tolerance they match the exact solution as well as the step ends."""
    ts = np.linspace(0.0, 3.0, 301)
    sol = nde.diffeqsolve(
        TERM,
        nde.Tsit5(),
        0.0,
        3.0,
        None,
        Y0,
        saveat=nde.SaveAt(ts=ts),
        stepsize_controller=nde.PIDController(rtol=1e-10, atol=1e-10),
    )
    assert int(sol.stats["num_steps"]) < 100  # several save times per step
    np.testing.assert_allclose(sol.ys[:, 0], np.exp(-ts), rtol=1e-9)


def test_fn_saves_a_function_of_the_state():
    def fn(t, y, args):
        return {"t": t, "square": y**2 * args}

    sol = nde.diffeqsolve(
        TERM,
        nde.Tsit5(),
        0.0,
        1.0,
        0.25,
        Y0,
        args=jnp.array(3.0),
        saveat=nde.SaveAt(t0=True, ts=[0.5], t1=True, fn=fn),
    )
    np.testing.assert_array_equal(sol.ys["t"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(
        sol.ys["square"][:, 0], 3 * np.exp(-2 * np.array([0.0, 0.5, 1.0])), atol=1e-6
    )


def test_subs_give_a_pytree_of_outputs():
    subs = {
        "start": nde.SubSaveAt(t0=True),
        "mid": [
            nde.SubSaveAt(ts=[0.5]),
            nde.SubSaveAt(steps=True, fn=lambda t, y, a: t),
        ],
    }
    sol = _solve(nde.SaveAt(subs=subs))
    assert set(sol.ts) == {"start", "mid"}
    np.testing.assert_array_equal(sol.ts["start"], [0.0])
    np.testing.assert_array_equal(sol.ys["start"], [[1.0]])
    np.testing.assert_array_equal(sol.ts["mid"][0], [0.5])
    np.testing.assert_allclose(sol.ys["mid"][0], [[np.exp(-0.5)]], atol=1e-6)
    steps_ts, steps_ys = _finite(sol.ts["mid"][1], sol.ys["mid"][1])
    np.testing.assert_array_equal(steps_ts, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(steps_ys, steps_ts)  # fn returned t


def test_reverse_time_saves_in_the_users_time():
    saveat = nde.SaveAt(t0=True, t1=True, ts=[0.9, 0.5, 0.1], steps=True)
    sol = _solve(saveat, t0=1.0, t1=0.0, dt0=-0.25)
    ts, ys = _finite(sol.ts, sol.ys)
    np.testing.assert_array_equal(ts, [1.0, 0.9, 0.75, 0.5, 0.5, 0.25, 0.1, 0.0, 0.0])
    np.testing.assert_allclose(ys[:, 0], np.exp(1.0 - ts), rtol=1e-6)


def test_steps_with_adaptive_controller_hold_accepted_steps_only():
    sol = nde.diffeqsolve(
        TERM,
        nde.Tsit5(),
        0.0,
        5.0,
        1.0,  # too large: the first attempts are rejected
        Y0,
        saveat=nde.SaveAt(steps=True),
        stepsize_controller=nde.PIDController(rtol=1e-8, atol=1e-8),
        max_steps=128,
    )
    ts, ys = _finite(sol.ts, sol.ys)
    assert int(sol.stats["num_rejected_steps"]) > 0
    assert len(ts) == int(sol.stats["num_accepted_steps"])
    assert np.all(np.diff(ts) > 0) and ts[-1] == 5.0
    np.testing.assert_allclose(ys[:, 0], np.exp(-ts), atol=1e-7)


def test_empty_ts():
    sol = _solve(nde.SaveAt(ts=jnp.zeros((0,))))
    assert sol.ts.shape == (0,) and sol.ys.shape == (0, 1)


def _continuation_solve(t0, t1, y0, solver_state, controller_state, made_jump, dt0):
    return nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: -y * (1 + jnp.sin(t))),
        nde.Tsit5(),
        t0,
        t1,
        dt0,
        y0,
        saveat=nde.SaveAt(
            t1=True, solver_state=True, controller_state=True, made_jump=True
        ),
        stepsize_controller=nde.PIDController(rtol=1e-6, atol=1e-6),
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=made_jump,
    )


def test_final_states_are_returned_only_when_asked():
    sol = _solve(nde.SaveAt(t1=True))
    assert sol.solver_state is None and sol.controller_state is None
    assert sol.made_jump is None
    sol = _solve(nde.SaveAt(solver_state=True))  # saves nothing else
    assert sol.ts is None and sol.ys is None
    # Tsit5's state is f(t1, y1), which the next step reuses (FSAL).
    np.testing.assert_allclose(sol.solver_state, [-np.exp(-1.0)], atol=1e-6)


def test_continue_a_solve_from_its_final_state():
    """Solving [0, 1] then [1, 2] from the returned solver state, controller
    state and made_jump, with the step size the controller proposed, gives the
    same solution as one solve over [0, 2] to within the tolerance; and the
    passed-in states are actually used."""
    solve = jax.jit(_continuation_solve)
    y0 = jnp.array([1.0])
    whole = solve(0.0, 2.0, y0, None, None, None, 0.1)
    first = solve(0.0, 1.0, y0, None, None, None, 0.1)
    assert first.made_jump is not None and not bool(first.made_jump)
    second = solve(
        1.0,
        2.0,
        first.ys[-1],
        first.solver_state,
        first.controller_state,
        first.made_jump,
        None,
    )
    exact = np.exp(-(2.0 + 1.0 - np.cos(2.0)))
    np.testing.assert_allclose(whole.ys[-1], [exact], rtol=1e-5)
    np.testing.assert_allclose(second.ys[-1], whole.ys[-1], rtol=1e-5)
    # The solver state is used: a wrong f(t0, y0) changes the solve...
    wrong = jnp.zeros_like(first.solver_state)
    args = (1.0, 2.0, first.ys[-1], wrong, first.controller_state)
    bad = solve(*args, False, None)
    assert np.abs(bad.ys[-1] - second.ys[-1]).max() > 1e-6
    # ... unless `made_jump=True` says f must be re-evaluated at the start, which
    # recomputes exactly the value passed before.
    good = solve(*args, True, None)
    np.testing.assert_allclose(good.ys[-1], second.ys[-1], rtol=1e-14)


def test_continue_with_a_constant_step_controller_state():
    """`ConstantStepSize`'s state is its step size: a continued solve takes `dt0`
    first and then steps of the passed-in size."""
    sol = nde.diffeqsolve(
        TERM,
        nde.Euler(),
        0.0,
        1.0,
        0.1,
        Y0,
        saveat=nde.SaveAt(steps=True, controller_state=True),
        controller_state=jnp.asarray(0.3),
        max_steps=8,
    )
    ts, _ = _finite(sol.ts, sol.ys)
    np.testing.assert_allclose(ts, [0.1, 0.4, 0.7, 1.0])
    np.testing.assert_allclose(sol.controller_state, 0.3)


@pytest.mark.parametrize("max_steps", [None, 16])
def test_t1_only_needs_no_bound_on_steps(max_steps):
    sol = nde.diffeqsolve(
        TERM,
        nde.Tsit5(),
        0.0,
        1.0,
        0.25,
        Y0,
        saveat=nde.SaveAt(t1=True),
        max_steps=max_steps,
    )
    np.testing.assert_allclose(sol.ys, [[np.exp(-1.0)]], atol=1e-6)


@pytest.mark.parametrize("num_ts", [3, 8, 9, 37])
def test_many_ts_per_step_match_the_dense_output(num_ts):
    """Steps covering one to dozens of save times, under `vmap` a different number
    per element (the inner save loop runs as long as the longest, masked): every
    saved value is the step's dense output at its time."""
    ts = jnp.linspace(0.05, 1.0, num_ts)

    def saved_and_dense(dt0):
        sol = nde.diffeqsolve(
            TERM,
            nde.Tsit5(),
            0.0,
            1.0,
            dt0,
            Y0,
            saveat=nde.SaveAt(t0=True, ts=ts, t1=True, dense=True),
            max_steps=8,
        )
        return sol.ts, sol.ys, jax.vmap(sol.evaluate)(ts)

    dt0s = jnp.array([1.0, 0.5, 0.125])  # 1, 2 and 8 steps
    saved_ts, saved_ys, dense = jax.jit(jax.vmap(saved_and_dense))(dt0s)
    for e in range(len(dt0s)):
        np.testing.assert_array_equal(saved_ts[e], np.r_[0.0, ts, 1.0])
        np.testing.assert_array_equal(saved_ys[e, 0], Y0)
        np.testing.assert_allclose(saved_ys[e, 1:-1], dense[e], rtol=1e-12, atol=0)
        np.testing.assert_allclose(saved_ys[e, -1], dense[e, -1], rtol=1e-12)


@pytest.mark.parametrize("size", [1, 256, 1024])
def test_save_blocks_by_state_size(size):
    """The save times due in a step are written together, as a block of up to 8 for
    a small saved value, fewer for a large one (1 from 1,024 elements), and by the
    inner loop beyond: with steps covering 0, 1, 3 and 5 save times, every saved
    value is the dense output at its time, whatever the state's size."""
    from nde._saving import _block_size

    buf = jnp.zeros((7, size))
    assert _block_size(buf) == {1: 8, 256: 4, 1024: 1}[size]
    y0 = jnp.linspace(0.5, 1.5, size)
    ts = jnp.array([0.3, 0.55, 0.6, 0.7, 0.76, 0.8, 0.9, 0.95, 1.0])  # 0, 1, 3, 5
    sol = nde.diffeqsolve(
        TERM,
        nde.Tsit5(),
        0.0,
        1.0,
        0.25,
        y0,
        saveat=nde.SaveAt(ts=ts, dense=True),
        max_steps=4,
    )
    np.testing.assert_array_equal(sol.ts, ts)
    dense = jax.vmap(sol.evaluate)(ts)
    np.testing.assert_allclose(sol.ys, dense, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sol.ys, np.exp(-ts)[:, None] * y0, rtol=1e-6)

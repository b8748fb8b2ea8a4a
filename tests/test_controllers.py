"""Step size controllers: PID arithmetic against Soderlind's formula, dtmin/dtmax,
the automatic first step, traced tolerances (no recompilation), StepTo and
ClipStepSizeController."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nde

DECAY = nde.ODETerm(lambda t, y, args: -y)


def _van_der_pol(t, y, args):
    return jnp.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])


VDP = nde.ODETerm(_van_der_pol)


def _accepted_ts(sol):
    ts = np.asarray(sol.ts)
    return ts[np.isfinite(ts)]


# ----- PIDController: the arithmetic of one decision -----


@pytest.mark.parametrize(
    "pcoeff,icoeff,dcoeff",
    [(0.0, 1.0, 0.0), (0.4, 0.3, 0.0), (0.2, 0.4, 0.1)],
    ids=["I", "PI", "PID"],
)
def test_pid_step_size_sequence(pcoeff, icoeff, dcoeff):
    """With rtol = 1e-3, atol = 0 and |y| = 1, an error estimate of e * 1e-3 is a
    scaled error e. After accepted steps with scaled errors e_n, e_(n-1), e_(n-2)
    the next step is dt * clip(safety * e_n^-b1 * e_(n-1)^-b2 * e_(n-2)^-b3, 1,
    factormax) with b1 = (p + i + d) / q, b2 = -(p + 2d) / q, b3 = d / q
    (Soderlind 2003), and errors before the first step count as 1."""
    q = 5
    controller = nde.PIDController(
        rtol=1e-3, atol=0.0, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff
    )
    y = jnp.array([1.0])
    tnext, state = controller.init(DECAY, 0.0, 1.0, y, 0.1, None, None, q)
    np.testing.assert_allclose(tnext, 0.1)
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / q, -(pcoeff + 2 * dcoeff) / q, dcoeff / q
    history = [1.0, 1.0]
    t0, t1 = 0.0, 0.1
    for e in (0.5, 0.02, 0.3, 0.9, 1e-9):
        keep, t0_new, t1_new, jump, state, result = controller.adapt_step_size(
            t0, t1, y, y, None, jnp.array([e * 1e-3]), q, state
        )
        assert bool(keep) and not jump and result == nde.RESULTS.successful
        raw = 0.9 * e**-b1 * history[-1] ** -b2 * history[-2] ** -b3
        factor = np.clip(raw, 1.0, 10.0)
        np.testing.assert_allclose(t0_new, t1)
        np.testing.assert_allclose(t1_new - t0_new, (t1 - t0) * factor, rtol=1e-12)
        history.append(e)
        t0, t1 = t0_new, t1_new
    assert factor == 10.0  # the last error (1e-9) hit factormax


def test_pid_rejected_step():
    """A scaled error above 1 rejects the step: the next attempt starts at the
    same t0, shrunk by safety * e^(-1/q), at most to factormin; the error history
    is unchanged."""
    controller = nde.PIDController(rtol=1e-3, atol=0.0, pcoeff=0.3, icoeff=0.3)
    y = jnp.array([1.0])
    _, state = controller.init(DECAY, 0.0, 1.0, y, 0.1, None, None, 5)
    for e, factor in ((4.0, 0.9 * 4.0 ** (-0.6 / 5)), (1e6, 0.2)):
        keep, t0, t1, _, new_state, _ = controller.adapt_step_size(
            0.0, 0.1, y, y, None, jnp.array([e * 1e-3]), 5, state
        )
        assert not bool(keep)
        assert t0 == 0.0
        np.testing.assert_allclose(t1, 0.1 * factor, rtol=1e-12)
        for a, b in zip(new_state, state, strict=True):
            np.testing.assert_array_equal(a, b)
    # A NaN error (e.g. the step left the vector field's domain) also rejects.
    keep, _, t1, _, _, _ = controller.adapt_step_size(
        0.0, 0.1, y, y * jnp.nan, None, jnp.array([jnp.nan]), 5, state
    )
    assert not bool(keep)
    np.testing.assert_allclose(t1, 0.1 * 0.2)


@pytest.mark.parametrize(
    "coeffs",
    [dict(), dict(pcoeff=0.4, icoeff=0.3), dict(pcoeff=0.2, icoeff=0.4, dcoeff=0.1)],
)
def test_pid_solves_to_tolerance(coeffs):
    """Every variant reaches the tolerance on Van der Pol (the global error is
    amplified about 10x over [0, 10] at this tolerance)."""
    sol = nde.diffeqsolve(
        VDP,
        nde.Tsit5(),
        0.0,
        10.0,
        0.1,
        jnp.array([2.0, 0.0]),
        stepsize_controller=nde.PIDController(rtol=1e-8, atol=1e-8, **coeffs),
    )
    # Reference: the same problem at rtol = atol = 1e-12.
    ref = _vdp_reference()
    np.testing.assert_allclose(sol.ys[-1], ref, atol=1e-6)


_VDP_REF = []


def _vdp_reference():
    if not _VDP_REF:
        sol = nde.diffeqsolve(
            VDP,
            nde.Dopri8(),
            0.0,
            10.0,
            0.1,
            jnp.array([2.0, 0.0]),
            stepsize_controller=nde.PIDController(rtol=1e-12, atol=1e-12),
        )
        _VDP_REF.append(np.asarray(sol.ys[-1]))
    return _VDP_REF[0]


# ----- dtmin, dtmax -----


@jax.jit
def _bounded_solve(controller):
    return nde.diffeqsolve(
        VDP,
        nde.Tsit5(),
        0.0,
        3.0,
        0.01,
        jnp.array([2.0, 0.0]),
        saveat=nde.SaveAt(t0=True, steps=True),
        stepsize_controller=controller,
        max_steps=512,
        throw=False,
    )


def test_dtmax_bounds_every_step():
    sol = _bounded_solve(nde.PIDController(rtol=1e-3, atol=1e-3, dtmax=0.05))
    assert sol.result == nde.RESULTS.successful
    steps = np.diff(_accepted_ts(sol))
    assert steps.max() <= 0.05 * (1 + 1e-12)
    assert steps.max() > 0.049  # the bound is active: loose tolerances want more


def test_dtmin_forces_steps_or_fails():
    # rtol = 1e-10 wants steps of about 0.01; dtmin = 0.1 forbids them.
    forced = _bounded_solve(nde.PIDController(rtol=1e-10, atol=1e-10, dtmin=0.1))
    assert forced.result == nde.RESULTS.successful
    steps = np.diff(_accepted_ts(forced))
    assert steps[:-1].min() >= 0.1 * (1 - 1e-12)  # the last step is cut at t1
    assert int(forced.stats["num_accepted_steps"]) <= 31
    strict = _bounded_solve(
        nde.PIDController(rtol=1e-10, atol=1e-10, dtmin=0.1, force_dtmin=False)
    )
    assert strict.result == nde.RESULTS.dt_min_reached
    assert "too small" in nde.RESULTS.dt_min_reached.message


def test_dtmin_decisions():
    """One decision at a time (scaled error e as in test_pid_step_size_sequence)."""
    y = jnp.array([1.0])

    def decide(t0, t1, e, **kwargs):
        controller = nde.PIDController(rtol=1e-3, atol=0.0, dtmin=0.1, **kwargs)
        _, state = controller.init(DECAY, t0, 5.0, y, t1 - t0, None, None, 5)
        keep, _, _, _, _, result = controller.adapt_step_size(
            t0, t1, y, y, None, jnp.array([e * 1e-3]), 5, state
        )
        return bool(keep), result

    # force_dtmin=False: an accepted step never fails, even one shorter than dtmin
    # whose proposed successor is too (the last step of a solve, cut at t1) ...
    assert decide(2.0, 2.05, 0.9, force_dtmin=False) == (True, nde.RESULTS.successful)
    # ... a rejected step that would need a step below dtmin does.
    keep, result = decide(2.0, 2.15, 100.0, force_dtmin=False)
    assert not keep and result == nde.RESULTS.dt_min_reached
    # force_dtmin=True: a step of dtmin is kept whatever its error, also when
    # rounding of the times makes it measure a few ulps more.
    t0 = 0.2
    t1 = t0 + 0.1
    assert t1 - t0 > 0.1  # 0.10000000000000003
    assert decide(t0, t1, 4.0) == (True, nde.RESULTS.successful)
    assert decide(t0, 0.35, 4.0)[0] is False


# ----- the first step (dt0=None) -----


def _hairer_initial_step(f, t0, y0, order, rtol, atol):
    """Hairer, Norsett & Wanner, Solving ODEs I, sec. II.4, written out in numpy."""
    sc = atol + rtol * np.abs(y0)
    norm = lambda x: np.sqrt(np.mean((x / sc) ** 2))
    f0 = f(t0, y0)
    d0, d1 = norm(y0), norm(f0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = norm(f(t0 + h0, y0 + h0 * f0) - f0) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / order)
    return min(100 * h0, h1)


@pytest.mark.parametrize("y0", [[2.0, 0.0], [0.0, 0.0], [1e-3, 5.0]])
def test_initial_step_selection(y0):
    y0 = np.array(y0)
    solver = nde.Tsit5()
    controller = nde.PIDController(rtol=1e-6, atol=1e-9)
    tnext, _ = controller.init(
        VDP, 0.0, 3.0, jnp.asarray(y0), None, None, solver.func, solver.error_order(VDP)
    )
    expected = _hairer_initial_step(
        lambda t, y: np.asarray(_van_der_pol(t, jnp.asarray(y), None)),
        0.0,
        y0,
        5,
        1e-6,
        1e-9,
    )
    np.testing.assert_allclose(tnext, expected, rtol=1e-12)


def test_dt0_none_solves():
    sol = nde.diffeqsolve(
        DECAY,
        nde.Tsit5(),
        0.0,
        2.0,
        None,
        jnp.array([1.0]),
        stepsize_controller=nde.PIDController(rtol=1e-8, atol=1e-8),
    )
    np.testing.assert_allclose(sol.ys, [[np.exp(-2.0)]], rtol=1e-7)
    # A well-chosen first step is accepted.
    assert int(sol.stats["num_rejected_steps"]) == 0


# ----- traced tolerances: no recompilation -----


@pytest.mark.parametrize("use_jit", [True, False])
def test_traced_tolerances_do_not_recompile(use_jit):
    traces = []

    def vf(t, y, args):
        traces.append(None)  # runs once per trace, never at run time
        return -y * (1 + t)

    term = nde.ODETerm(vf)

    def solve(rtol, atol):
        return nde.diffeqsolve(
            term,
            nde.Tsit5(),
            0.0,
            3.0,
            None,
            jnp.array([1.0]),
            stepsize_controller=nde.PIDController(rtol=rtol, atol=atol),
        ).stats["num_steps"]

    # Under `jit`, and called eagerly (`diffeqsolve` compiles once per structure
    # of its inputs, and array tolerances are inputs, not structure).
    run = jax.jit(solve) if use_jit else solve
    steps = [int(run(jnp.asarray(3e-3), jnp.asarray(1e-6)))]
    num_traces = len(traces)
    assert num_traces > 0
    for tol in (1e-5, 1e-8, 1e-10):
        steps.append(int(run(jnp.asarray(tol), jnp.asarray(tol))))
    assert len(traces) == num_traces  # not traced again
    assert steps == sorted(steps) and steps[0] < steps[-1]  # the values are used


# ----- ConstantStepSize, StepTo -----


def test_constant_steps_end_exactly_at_t1():
    sol = nde.diffeqsolve(
        DECAY,
        nde.Euler(),
        0.0,
        1.0,
        0.3,
        jnp.array([1.0]),
        saveat=nde.SaveAt(steps=True),
        max_steps=8,
    )
    np.testing.assert_allclose(_accepted_ts(sol), [0.3, 0.6, 0.9, 1.0])
    assert _accepted_ts(sol)[-1] == 1.0


@pytest.mark.parametrize("reverse", [False, True])
def test_step_to_lands_on_every_time(reverse):
    ts = np.array([0.0, 0.1, 0.15, 0.5, 0.55, 1.0])
    t0, t1 = 0.0, 1.0
    if reverse:
        ts, t0, t1 = ts[::-1], 1.0, 0.0
    sol = nde.diffeqsolve(
        DECAY,
        nde.Tsit5(),
        t0,
        t1,
        None,
        jnp.array([1.0]),
        saveat=nde.SaveAt(steps=True),
        stepsize_controller=nde.StepTo(ts),
        max_steps=8,
    )
    np.testing.assert_array_equal(_accepted_ts(sol), ts[1:])
    np.testing.assert_allclose(sol.ys[4, 0], np.exp(-(t1 - t0)), rtol=1e-4)


# ----- ClipStepSizeController -----


def test_clip_step_ts_are_step_ends():
    step_ts = np.array([0.123, 0.777, 1.5, 2.2])
    sol = nde.diffeqsolve(
        VDP,
        nde.Tsit5(),
        0.0,
        3.0,
        0.5,
        jnp.array([2.0, 0.0]),
        saveat=nde.SaveAt(steps=True),
        stepsize_controller=nde.ClipStepSizeController(
            nde.PIDController(rtol=1e-5, atol=1e-5), step_ts=step_ts
        ),
        max_steps=256,
    )
    ends = _accepted_ts(sol)
    for t in step_ts:
        assert t in ends
    np.testing.assert_allclose(sol.ys[len(ends) - 1], _vdp_at_3(), atol=1e-4)


def _vdp_at_3():
    sol = nde.diffeqsolve(
        VDP,
        nde.Dopri8(),
        0.0,
        3.0,
        0.1,
        jnp.array([2.0, 0.0]),
        stepsize_controller=nde.PIDController(rtol=1e-12, atol=1e-12),
    )
    return np.asarray(sol.ys[-1])


def test_clip_jump_ts_restart_at_discontinuities():
    """A forcing that switches on at t = 1: with `jump_ts` the adaptive solve
    stops just before it, restarts at it (re-evaluating f), and rejects fewer
    steps than when it must discover the jump by shrinking steps."""

    def vf(t, y, args):
        return -y + jnp.where(t >= 1.0, 1.0, 0.0)

    def solve(jump_ts):
        controller = nde.PIDController(rtol=1e-8, atol=1e-8)
        if jump_ts is not None:
            controller = nde.ClipStepSizeController(controller, jump_ts=jump_ts)
        return nde.diffeqsolve(
            nde.ODETerm(vf),
            nde.Tsit5(),
            0.0,
            2.0,
            0.1,
            jnp.array([1.0]),
            stepsize_controller=controller,
        )

    exact = 1 + (np.exp(-1.0) - 1) * np.exp(-1.0)
    clipped, plain = solve([1.0]), solve(None)
    np.testing.assert_allclose(clipped.ys, [[exact]], rtol=1e-7)
    assert int(clipped.stats["num_rejected_steps"]) < int(
        plain.stats["num_rejected_steps"]
    )

"""Bad input: every error names the argument, the value received and the fix.

Concrete values are rejected before anything is compiled (a Python exception whose
message quotes the value); values only known inside `jit` are checked at run time
(`eqx.error_if`), with the same advice. Failures of the solve itself (NaN, too many
steps) are `RESULTS` codes, raised once at the end with `throw=True`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nde

TERM = nde.ODETerm(lambda t, y, args: -y)
Y0 = jnp.array([1.0])


def _solve(**overrides):
    kwargs = dict(terms=TERM, solver=nde.Tsit5(), t0=0.0, t1=1.0, dt0=0.1, y0=Y0)
    kwargs.update(overrides)
    return nde.diffeqsolve(**kwargs)


def _raises(exc, *fragments):
    """pytest.raises matching every fragment (literally, in any order)."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(f)})" for f in fragments)
    return pytest.raises(exc, match=pattern)


# ----- y0 and the vector field -----


@pytest.mark.parametrize(
    "y0,value",
    [("abc", "'abc' of type str"), ({"a": object()}, "of type object")],
)
def test_y0_with_a_non_array_leaf(y0, value):
    with _raises(TypeError, "y0=", value, "jnp.asarray", "args"):
        _solve(y0=y0)


def test_y0_without_arrays():
    with _raises(ValueError, "y0=", "got None", "holds no arrays", "y0=jnp.array("):
        _solve(y0=None)


def test_vector_field_output_structure():
    terms = nde.ODETerm(lambda t, y, args: (y, y))
    with _raises(
        ValueError, "terms", "PyTreeDef((*, *))", "PyTreeDef(*)", "structure of `y0`"
    ):
        _solve(terms=terms)


def test_vector_field_output_shape():
    terms = nde.ODETerm(lambda t, y, args: {"a": jnp.zeros(3), "b": y["b"]})
    y0 = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    with _raises(ValueError, "terms", "(3,)", "y0['a']", "(2,)", "shape of y"):
        _solve(terms=terms, y0=y0)


# ----- dt0 -----


def test_dt0_none_with_a_non_adaptive_controller():
    with _raises(
        ValueError, "dt0=None", "ConstantStepSize()", "dt0=0.01", "PIDController("
    ):
        _solve(dt0=None)


@pytest.mark.parametrize(
    "t0,t1,dt0,fix",
    [
        (0.0, 1.0, -0.1, "dt0=0.1"),
        (1.0, 0.0, 0.1, "dt0=-0.1"),
        (0.0, 2.0, 0.0, "dt0=0.02"),
    ],
)
def test_dt0_against_the_direction_of_time(t0, t1, dt0, fix):
    with _raises(ValueError, f"dt0={dt0}", f"t1 - t0 = {t1 - t0}", fix):
        _solve(t0=t0, t1=t1, dt0=dt0)


def test_traced_dt0_against_the_direction_of_time():
    solve = jax.jit(lambda dt0: _solve(dt0=dt0).ys)
    solve(0.1)  # fine
    with _raises(Exception, "dt0=", "sign of t1 - t0", "reverse-time"):
        solve(-0.1)


def test_dt0_with_step_to():
    controller = nde.StepTo([0.0, 0.5, 1.0])
    with _raises(ValueError, "StepTo(ts)", "dt0=0.1", "dt0=None"):
        _solve(stepsize_controller=controller)


# ----- SaveAt -----


def test_saveat_ts_outside_the_interval():
    with _raises(ValueError, "SaveAt(ts=...)", "[0.0, 1.0]", "from 0.5 to 1.5", "Clip"):
        _solve(saveat=nde.SaveAt(ts=[0.5, 1.5]))


@pytest.mark.parametrize(
    "t0,t1,dt0,ts,direction",
    [
        (0.0, 1.0, 0.1, [0.5, 0.2], "increasing"),
        (1.0, 0.0, -0.1, [0.2, 0.5], "decreasing"),
    ],
)
def test_saveat_ts_not_monotonic(t0, t1, dt0, ts, direction):
    with _raises(ValueError, "SaveAt(ts=...)", direction, "[0.", "Sort it"):
        _solve(t0=t0, t1=t1, dt0=dt0, saveat=nde.SaveAt(ts=ts))


def test_saveat_ts_not_one_dimensional():
    with _raises(ValueError, "SaveAt(ts=...)", "one-dimensional", "(1, 2)"):
        _solve(saveat=nde.SaveAt(ts=[[0.5, 0.6]]))


def test_traced_saveat_ts_outside_the_interval():
    solve = jax.jit(lambda ts: _solve(saveat=nde.SaveAt(ts=ts)).ys)
    solve(jnp.array([0.5, 1.0]))  # fine
    with _raises(Exception, "SaveAt(ts=...)", "within [t0, t1]"):
        solve(jnp.array([0.5, 1.5]))
    with _raises(Exception, "SaveAt(ts=...)", "monotonic"):
        solve(jnp.array([0.5, 0.2]))


def test_traced_inputs_need_no_host_callback():
    """Traced `dt0` and `SaveAt(ts)` (a training loss: times from the batch) are
    checked into the solve's result code, not by host callbacks: with throw=False
    the compiled solve has none (a callback makes every call synchronous and keeps
    the program out of JAX's persistent compilation cache); throw=True adds the one
    error check. An invalid input takes no step and reports its result; under
    `vmap` only that element fails."""

    def solve(t1, dt0, ts, throw):
        sol = _solve(t1=t1, dt0=dt0, saveat=nde.SaveAt(ts=ts), throw=throw)
        return sol.ys, sol.result._value, sol.stats["num_steps"]

    args = (1.0, 0.1, jnp.array([0.5, 1.0]))
    for throw, callbacks in [(False, 0), (True, 1)]:
        hlo = jax.jit(solve, static_argnums=3).lower(*args, throw).as_text()
        assert len(re.findall(r"python_\w+_callback\(", hlo)) // 2 == callbacks, throw
    batched = jax.vmap(solve, in_axes=(None, 0, 0, None))
    dt0s = jnp.array([0.1, -0.1, 0.1, 0.1])
    ts = jnp.array([[0.5, 1.0], [0.5, 1.0], [0.5, 1.5], [1.0, 0.5]])
    ys, results, steps = jax.jit(batched, static_argnums=3)(1.0, dt0s, ts, False)
    want = [nde.RESULTS.successful, nde.RESULTS.invalid_dt0]
    want += [nde.RESULTS.saveat_ts_outside, nde.RESULTS.saveat_ts_not_monotonic]
    np.testing.assert_array_equal(results, [int(r._value) for r in want])
    np.testing.assert_array_equal(steps, [10, 0, 0, 0])
    np.testing.assert_allclose(ys[0], np.exp(-np.array([0.5, 1.0]))[:, None], rtol=1e-6)
    assert not np.any(np.isfinite(ys[1:]))


def test_saveat_that_saves_nothing():
    with _raises(ValueError, "SaveAt()", "saves nothing", "SaveAt(t1=True)"):
        nde.SaveAt()
    with _raises(ValueError, "SubSaveAt", "saves nothing", "t1=True"):
        nde.SubSaveAt()
    with _raises(ValueError, "subs=", "cannot be combined", "SubSaveAt"):
        nde.SaveAt(t1=True, subs=nde.SubSaveAt(t0=True))


@pytest.mark.parametrize(
    "saveat,what",
    [
        (nde.SaveAt(steps=True), "SaveAt(steps=True)"),
        (nde.SaveAt(dense=True), "SaveAt(dense=True)"),
    ],
)
def test_per_step_saving_needs_max_steps(saveat, what):
    with _raises(ValueError, what, "max_steps=None", "max_steps` (e.g. 4096)"):
        _solve(saveat=saveat, max_steps=None)


@pytest.mark.parametrize("max_steps", [0, -3, 2.5])
def test_max_steps_not_a_positive_int(max_steps):
    with _raises(
        ValueError, "max_steps=", f"got {max_steps!r}", "positive int or None"
    ):
        _solve(max_steps=max_steps)


# ----- controllers -----


@pytest.mark.parametrize(
    "kwargs,fragments",
    [
        (dict(rtol=0.0, atol=1e-6), ("rtol=", "rtol=0.0", "1e-3")),
        (dict(rtol=-1e-3, atol=1e-6), ("rtol=", "rtol=-0.001", "1e-3")),
        (dict(rtol=jnp.array(-1e-3), atol=1e-6), ("rtol=", "-0.001", "1e-3")),
        (dict(rtol=1e-3, atol=-1.0), ("atol=", "atol=-1.0", "atol=1e-6")),
        (dict(rtol=1e-3, atol=1e-6, safety=0.0), ("safety=", "0.0", "positive")),
    ],
)
def test_pid_controller_tolerances(kwargs, fragments):
    with _raises(ValueError, "PIDController(", *fragments):
        nde.PIDController(**kwargs)


def test_traced_pid_tolerances():
    solve = jax.jit(
        lambda rtol, atol: (
            _solve(
                dt0=None, stepsize_controller=nde.PIDController(rtol=rtol, atol=atol)
            ).ys
        )
    )
    solve(1e-3, 1e-6)  # fine
    with _raises(Exception, "PIDController(rtol=..., atol=...)", "rtol > 0"):
        solve(-1e-3, 1e-6)
    with _raises(Exception, "PIDController(rtol=..., atol=...)", "atol >= 0"):
        solve(1e-3, -1e-6)


@pytest.mark.parametrize(
    "ts,fragments",
    [
        ([0.1, 0.5, 1.0], ("t0 = 0.0", "from 0.1 to 1.0")),
        ([0.0, 0.5, 0.9], ("t1 = 1.0", "from 0.0 to 0.9")),
    ],
)
def test_step_to_must_span_the_solve(ts, fragments):
    with _raises(
        ValueError, "StepTo(ts)", *fragments, "StepTo(jnp.linspace(t0, t1, n))"
    ):
        _solve(dt0=None, stepsize_controller=nde.StepTo(ts))


def test_step_to_must_be_monotonic():
    with _raises(ValueError, "StepTo(ts)", "strictly monotonic", "[0.  0.7 0.5 1. ]"):
        _solve(dt0=None, stepsize_controller=nde.StepTo([0.0, 0.7, 0.5, 1.0]))
    with _raises(ValueError, "StepTo(ts=...)", "at least two times"):
        nde.StepTo([0.0])


def test_traced_step_to_must_span_the_solve():
    solve = jax.jit(lambda ts: _solve(dt0=None, stepsize_controller=nde.StepTo(ts)).ys)
    solve(jnp.array([0.0, 0.5, 1.0]))  # fine
    with _raises(Exception, "StepTo(ts)", "start at `t0`", "StepTo(jnp.linspace"):
        solve(jnp.array([0.1, 0.5, 1.0]))


def test_traced_controller_inputs_need_no_host_callback():
    """Traced `PIDController` tolerances and `StepTo` times are checked into the
    result code too: no callback with throw=False, no step taken when invalid, per
    element under `vmap`."""

    def pid(rtol, throw):
        controller = nde.PIDController(rtol=rtol, atol=1e-6)
        sol = _solve(dt0=None, stepsize_controller=controller, throw=throw)
        return sol.result._value, sol.stats["num_steps"]

    def step_to(ts, throw):
        sol = _solve(dt0=None, stepsize_controller=nde.StepTo(ts), throw=throw)
        return sol.result._value, sol.stats["num_steps"]

    ts = jnp.array([0.0, 0.5, 1.0])
    for fn, arg in [(pid, 1e-3), (step_to, ts)]:
        for throw, callbacks in [(False, 0), (True, 1)]:
            hlo = jax.jit(fn, static_argnums=1).lower(arg, throw).as_text()
            assert len(re.findall(r"python_\w+_callback\(", hlo)) // 2 == callbacks
    results, steps = jax.jit(jax.vmap(pid, in_axes=(0, None)), static_argnums=1)(
        jnp.array([1e-3, -1e-3]), False
    )
    np.testing.assert_array_equal(results, [0, nde.RESULTS.invalid_tolerances._value])
    assert steps[0] > 0 and steps[1] == 0
    batch = jnp.array(
        [[0.0, 0.5, 1.0], [0.1, 0.5, 1.0], [0.0, 0.5, 0.9], [0.0, 1.5, 1.0]]
    )
    results, steps = jax.jit(jax.vmap(step_to, in_axes=(0, None)), static_argnums=1)(
        batch, False
    )
    want = [nde.RESULTS.successful, nde.RESULTS.stepto_ends, nde.RESULTS.stepto_ends]
    want += [nde.RESULTS.stepto_not_monotonic]
    np.testing.assert_array_equal(results, [int(r._value) for r in want])
    np.testing.assert_array_equal(steps, [2, 0, 0, 0])
    # A reverse-time solve: the times run from t0 down to t1.
    sol = jax.jit(
        lambda ts: _solve(t0=1.0, t1=0.0, dt0=None, stepsize_controller=nde.StepTo(ts))
    )(jnp.array([1.0, 0.4, 0.0]))
    assert int(sol.stats["num_steps"]) == 2


def test_step_to_inside_clip_is_checked():
    """A concrete `StepTo` inside `ClipStepSizeController` is checked before the
    solve too (it is not the controller `diffeqsolve` sees)."""
    controller = nde.ClipStepSizeController(nde.StepTo([0.0, 0.7, 0.5, 1.0]))
    with _raises(ValueError, "StepTo(ts)", "strictly monotonic"):
        _solve(dt0=None, stepsize_controller=controller)


def test_non_adaptive_solver_with_adaptive_controller():
    controller = nde.PIDController(rtol=1e-3, atol=1e-3)
    with _raises(
        ValueError,
        "`Euler`",
        "no error estimate",
        "PIDController(...)",
        "ConstantStepSize()",
        "Tsit5()",
    ):
        _solve(solver=nde.Euler(), stepsize_controller=controller)


# ----- failures of the solve -----


def _nan_field(t, y, args):
    return jnp.where(t > 0.45, jnp.nan, -y)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("max_steps", [4096, None])
def test_vector_field_returning_nan(adaptive, max_steps):
    """No infinite loop, even unbounded: the solve stops with `nonfinite`. (An
    adaptive solve first creeps up to t = 0.45 with ever smaller steps, about 120,
    until the step size underflows.)"""
    controller = (
        nde.PIDController(rtol=1e-6, atol=1e-6) if adaptive else nde.ConstantStepSize()
    )
    kwargs = dict(
        terms=nde.ODETerm(_nan_field),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    sol = _solve(throw=False, **kwargs)
    assert sol.result == nde.RESULTS.nonfinite
    if max_steps is not None:
        assert int(sol.stats["num_steps"]) < max_steps
    with _raises(Exception, "NaN or inf", "vector field", "Check the vector field"):
        _solve(**kwargs)


def test_max_steps_reached():
    sol = _solve(max_steps=3, throw=False)
    assert sol.result == nde.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 3
    with _raises(Exception, "maximum number of solver steps", "max_steps=", "rtol"):
        _solve(max_steps=3)


def test_dt_min_reached():
    controller = nde.PIDController(rtol=1e-12, atol=1e-12, dtmin=0.1, force_dtmin=False)
    sol = _solve(dt0=None, stepsize_controller=controller, throw=False)
    assert sol.result == nde.RESULTS.dt_min_reached
    with _raises(Exception, "step size became too small", "dtmin=", "rtol/atol"):
        _solve(dt0=None, stepsize_controller=controller)


def test_dense_output_without_saveat_dense():
    sol = _solve()
    with _raises(ValueError, "Solution.evaluate", "SaveAt(dense=True)"):
        sol.evaluate(0.5)

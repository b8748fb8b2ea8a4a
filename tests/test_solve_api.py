"""`diffeqsolve` as a user meets it: reverse time, t0 == t1, PyTree states,
float32/float64, jit, vmap, noinline vector fields, unbounded loops, progress
meters, results and `throw`, and Diffrax code run with `import nde as diffrax`."""

import subprocess
import sys
import textwrap

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nde

DECAY = nde.ODETerm(lambda t, y, args: -args * y)
PID = nde.PIDController(rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("adaptive", [False, True])
def test_reverse_time(adaptive):
    """From t0 = 1 back to t1 = -1: y(t) = y(t0) exp(-a (t - t0))."""
    controller = PID if adaptive else nde.ConstantStepSize()
    sol = nde.diffeqsolve(
        DECAY,
        nde.Tsit5(),
        1.0,
        -1.0,
        -0.05,
        jnp.array([1.0, 2.0]),
        args=0.7,
        saveat=nde.SaveAt(t0=True, ts=[0.5, 0.0], t1=True),
        stepsize_controller=controller,
    )
    np.testing.assert_array_equal(sol.ts, [1.0, 0.5, 0.0, -1.0])
    expected = np.exp(-0.7 * (np.asarray(sol.ts) - 1.0))[:, None] * np.array([1, 2])
    np.testing.assert_allclose(sol.ys, expected, rtol=1e-7)
    assert sol.t0 == 1.0 and sol.t1 == -1.0


def test_traced_direction_under_jit():
    """With t0 and t1 traced, the direction of time is only known at run time."""
    solve = jax.jit(
        lambda t0, t1, dt0: nde.diffeqsolve(
            DECAY,
            nde.Tsit5(),
            t0,
            t1,
            dt0,
            jnp.array([1.0]),
            args=1.0,
            stepsize_controller=PID,
        ).ys[-1, 0]
    )
    np.testing.assert_allclose(solve(0.0, 1.0, 0.1), np.exp(-1.0), rtol=1e-7)
    np.testing.assert_allclose(solve(1.0, 0.0, -0.1), np.exp(1.0), rtol=1e-7)


def test_t0_equals_t1():
    y0 = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    sol = nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: jax.tree.map(jnp.negative, y)),
        nde.Tsit5(),
        0.5,
        0.5,
        0.1,
        y0,
        saveat=nde.SaveAt(t0=True, ts=[0.5], t1=True, dense=True),
    )
    assert int(sol.stats["num_steps"]) == 0
    assert sol.result == nde.RESULTS.successful
    np.testing.assert_array_equal(sol.ts, [0.5, 0.5, 0.5])
    for key in y0:
        np.testing.assert_array_equal(sol.ys[key], jnp.stack([y0[key]] * 3))
        np.testing.assert_array_equal(sol.evaluate(0.5)[key], y0[key])


def _pytree_vf(t, y, args):
    # Leaves of different shapes and dtypes, coupled through terms that vanish on
    # the exact solution a = exp(-t), b = exp(-2t), c = c0 exp(-t/2), so that the
    # dtypes must be mixed explicitly (strict promotion rejects silent mixing)
    # and the float32 leaf stays float32.
    a, (b, c) = y["a"], y["bc"]
    a_error = (b - jnp.exp(-2 * t)).astype(a.dtype)
    b_error = jnp.mean(a).astype(c.dtype) - jnp.exp(-t)
    return {"a": -a + a_error, "bc": (-2 * b, -0.5 * c + b_error)}


@pytest.mark.parametrize("adaptive", [False, True])
def test_pytree_state_of_mixed_shapes_and_dtypes(adaptive):
    y0 = {
        "a": jnp.ones((2, 3), jnp.float32),
        "bc": (jnp.array(1.0, jnp.float64), jnp.array([0.5, -0.25], jnp.float64)),
    }
    controller = nde.ConstantStepSize()
    if adaptive:
        controller = nde.PIDController(rtol=1e-6, atol=1e-6)
    sol = nde.diffeqsolve(
        nde.ODETerm(_pytree_vf),
        nde.Tsit5(),
        0.0,
        1.0,
        0.01,
        y0,
        saveat=nde.SaveAt(ts=[0.5, 1.0], dense=True),
        stepsize_controller=controller,
    )
    assert sol.ys["a"].shape == (2, 2, 3) and sol.ys["a"].dtype == jnp.float32
    assert sol.ys["bc"][0].shape == (2,) and sol.ys["bc"][0].dtype == jnp.float64
    assert sol.ys["bc"][1].shape == (2, 2)
    assert sol.evaluate(0.75)["a"].dtype == jnp.float32
    ts = np.array([0.5, 1.0])
    # 1e-5: the tolerance (1e-6) plus float32 round-off over ~100 steps.
    np.testing.assert_allclose(
        sol.ys["a"], np.exp(-ts)[:, None, None] * np.ones((2, 3)), rtol=1e-5
    )
    np.testing.assert_allclose(sol.ys["bc"][0], np.exp(-2 * ts), rtol=1e-5)
    expected_c = np.exp(-ts / 2)[:, None] * np.array([0.5, -0.25])
    np.testing.assert_allclose(sol.ys["bc"][1], expected_c, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_float32_and_float64(dtype):
    """The state's dtype is kept, and the accuracy is that of the dtype: float32
    round-off accumulates to ~1e-6 over 100 steps."""
    y0 = jnp.array([1.0, 2.0], dtype)
    tdtype = dtype
    sol = nde.diffeqsolve(
        DECAY,
        nde.Tsit5(),
        jnp.asarray(0.0, tdtype),
        jnp.asarray(1.0, tdtype),
        jnp.asarray(0.01, tdtype),
        y0,
        args=jnp.asarray(1.0, dtype),
        saveat=nde.SaveAt(ts=jnp.linspace(0.0, 1.0, 3, dtype=tdtype)),
    )
    assert sol.ys.dtype == dtype and sol.ts.dtype == tdtype
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(
        sol.ys, np.exp(-np.array([0.0, 0.5, 1.0]))[:, None] * [1, 2], rtol=rtol
    )


def test_integer_y0_is_promoted_to_float():
    sol = nde.diffeqsolve(DECAY, nde.Tsit5(), 0, 1, 0.1, 1, args=1.0)
    assert jnp.issubdtype(sol.ys.dtype, jnp.floating)
    np.testing.assert_allclose(sol.ys, [np.exp(-1.0)], rtol=1e-6)


def test_jit_with_everything_traced_matches_eager():
    def solve(t0, t1, dt0, y0, args):
        return nde.diffeqsolve(
            DECAY,
            nde.Dopri5(),
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=nde.SaveAt(ts=jnp.linspace(t0, t1, 5)),
            stepsize_controller=PID,
        ).ys

    inputs = (0.0, 2.0, 0.1, jnp.array([1.0, 3.0]), jnp.array(0.3))
    np.testing.assert_allclose(jax.jit(solve)(*inputs), solve(*inputs), rtol=1e-14)


def test_vmap_over_y0_args_and_t1_with_per_element_steps():
    """Each batch element takes its own steps (stiffer elements take more) and
    equals its own unbatched solve."""

    def solve(y0, args, t1):
        sol = nde.diffeqsolve(
            DECAY, nde.Tsit5(), 0.0, t1, None, y0, args=args, stepsize_controller=PID
        )
        return sol.ys[-1], sol.stats["num_accepted_steps"]

    y0s = jnp.array([[1.0], [2.0], [3.0]])
    args = jnp.array([0.5, 1.0, 5.0])
    t1s = jnp.array([1.0, 2.0, 3.0])
    ys, steps = jax.jit(jax.vmap(solve))(y0s, args, t1s)
    assert len(set(np.asarray(steps).tolist())) == 3
    single = jax.jit(solve)
    for i in range(3):
        y, n = single(y0s[i], args[i], t1s[i])
        assert int(n) == int(steps[i])
        np.testing.assert_allclose(ys[i], y, rtol=1e-13)
    exact = np.asarray(y0s[:, 0]) * np.exp(-args * t1s)
    np.testing.assert_allclose(ys[:, 0], exact, rtol=1e-6, atol=1e-8)


def test_noinline_vector_field():
    """`equinox.internal.noinline` stages the vector field out into its own
    compiled function (a compile-time trick from Diffrax's FAQ): the solve is
    the same, under jit and vmap."""
    vf = eqxi.noinline(lambda t, y, args: -args * y)

    def solve(args):
        return nde.diffeqsolve(
            nde.ODETerm(vf),
            nde.Tsit5(),
            0.0,
            1.0,
            0.1,
            jnp.array([1.0]),
            args=args,
            stepsize_controller=PID,
        ).ys[-1, 0]

    np.testing.assert_allclose(jax.jit(solve)(2.0), np.exp(-2.0), rtol=1e-7)
    np.testing.assert_allclose(
        jax.vmap(solve)(jnp.array([1.0, 2.0])), np.exp(-np.array([1.0, 2.0])), rtol=1e-7
    )


def test_unbounded_loop_with_max_steps_none():
    """A harmonic oscillator over 150 periods needs more steps than the default
    `max_steps=4096`; `max_steps=None` runs until t1."""
    sol = nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: jnp.stack([y[1], -y[0]])),
        nde.Tsit5(),
        0.0,
        1000.0,
        None,
        jnp.array([1.0, 0.0]),
        stepsize_controller=nde.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=None,
    )
    assert int(sol.stats["num_steps"]) > 4096
    assert sol.stats["max_steps"] is None
    # The phase error grows linearly: ~1000 x 1e-10 x the error amplification.
    np.testing.assert_allclose(sol.ys[-1], [np.cos(1000.0), -np.sin(1000.0)], atol=1e-5)


def _progress_solve(meter, y0):
    return nde.diffeqsolve(
        DECAY,
        nde.Tsit5(),
        0.0,
        1.0,
        0.05,
        y0,
        args=1.0,
        progress_meter=meter,
    ).ys.sum()


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
def test_text_progress_meter(transform, capfd):
    meter = nde.TextProgressMeter(minimum_increase=0.25)
    y0 = jnp.array([1.0])
    if transform == "jit":
        value = jax.jit(_progress_solve, static_argnums=0)(meter, y0)
        np.testing.assert_allclose(value, np.exp(-1.0), rtol=1e-6)
    elif transform == "grad":
        grad = jax.grad(_progress_solve, argnums=1)(meter, y0)
        np.testing.assert_allclose(grad, [np.exp(-1.0)], rtol=1e-6)
    else:
        values = jax.vmap(_progress_solve, in_axes=(None, 0))(meter, jnp.ones((3, 1)))
        np.testing.assert_allclose(values, np.exp(-1.0), rtol=1e-6)
    jax.effects_barrier()
    lines = capfd.readouterr().out.split()
    assert lines[0] == "0.00%" and lines[-1] == "100.00%", lines
    percentages = [float(x.rstrip("%")) for x in lines]
    assert percentages == sorted(percentages)
    assert len(lines) <= 8  # steps of at least 25%, and the final 100%


def test_tqdm_progress_meter(capfd):
    value = jax.jit(_progress_solve, static_argnums=0)(
        nde.TqdmProgressMeter(refresh_steps=5), jnp.array([1.0])
    )
    jax.effects_barrier()
    np.testing.assert_allclose(value, np.exp(-1.0), rtol=1e-6)
    assert "100.00%" in capfd.readouterr().err


def test_results_and_throw():
    def solve(max_steps, throw):
        return nde.diffeqsolve(
            DECAY,
            nde.Tsit5(),
            0.0,
            1.0,
            0.1,
            jnp.array([1.0]),
            args=1.0,
            max_steps=max_steps,
            throw=throw,
        )

    ok = solve(16, True)
    assert ok.result == nde.RESULTS.successful
    assert bool(nde.is_successful(ok.result)) and bool(nde.is_okay(ok.result))
    failed = solve(3, False)
    assert failed.result == nde.RESULTS.max_steps_reached
    assert not bool(nde.is_successful(failed.result))
    assert int(failed.stats["num_steps"]) == 3
    with pytest.raises(Exception, match="maximum number of solver steps was reached"):
        solve(3, True)
    # Every failure tells the user what to change.
    names = [r.name for r in nde.RESULTS]
    assert names[:4] == [
        "successful",
        "max_steps_reached",
        "dt_min_reached",
        "nonfinite",
    ]
    for result in list(nde.RESULTS)[1:4]:
        assert "`" in result.message or "Check" in result.message
        assert nde.RESULTS[result] == result.message
    assert repr(nde.RESULTS.nonfinite) == "RESULTS.nonfinite"
    # Under vmap the result is batched.
    batched = nde.RESULTS.where(
        jnp.array([True, False]), nde.RESULTS.successful, nde.RESULTS.nonfinite
    )
    np.testing.assert_array_equal(nde.is_successful(batched), [True, False])


class _Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


def test_module_vector_field_parameters_are_leaves_of_terms():
    """An `eqx.Module` vector field's parameters are leaves of `terms`: they are
    inputs of a jitted solve (new values, no new compilation) and what gradients
    with respect to `terms` are taken for."""
    field = _Field(eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jr.PRNGKey(0)))
    terms = nde.ODETerm(field)
    leaves = jax.tree.leaves(eqx.filter(terms, eqx.is_inexact_array))
    assert any(leaf is field.mlp.layers[0].weight for leaf in leaves)
    traces = []

    @eqx.filter_jit
    def solve(terms):
        traces.append(None)
        return nde.diffeqsolve(
            terms, nde.Tsit5(), 0.0, 1.0, 0.1, jnp.array([0.5, -0.3])
        ).ys

    before = solve(terms)
    scaled = eqx.tree_at(
        lambda t: t.vector_field.mlp.layers[1].weight, terms, replace_fn=lambda w: 2 * w
    )
    after = solve(scaled)
    assert len(traces) == 1
    assert np.abs(after - before).max() > 1e-3


def test_multiterm_sums_its_terms():
    terms = nde.MultiTerm(
        nde.ODETerm(lambda t, y, args: -y), nde.ODETerm(lambda t, y, args: 0.5 * y)
    )
    sol = nde.diffeqsolve(terms, nde.Tsit5(), 0.0, 1.0, 0.05, jnp.array([1.0]))
    np.testing.assert_allclose(sol.ys, [[np.exp(-0.5)]], rtol=1e-7)


# A typical Diffrax script (its documentation's first example, then a neural ODE
# trained for a few steps), run unchanged with `import nde as diffrax`, in a fresh
# interpreter with JAX's defaults: float32, standard dtype promotion.
_DIFFRAX_SCRIPT = """
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import nde as diffrax
from nde import diffeqsolve, ODETerm, Dopri5, SaveAt, PIDController

vector_field = lambda t, y, args: -y
term = ODETerm(vector_field)
solver = Dopri5()
saveat = SaveAt(ts=[0., 1., 2., 3.])
stepsize_controller = PIDController(rtol=1e-5, atol=1e-5)
sol = diffeqsolve(term, solver, t0=0, t1=3, dt0=0.1, y0=1, saveat=saveat,
                  stepsize_controller=stepsize_controller)
assert sol.ts.tolist() == [0.0, 1.0, 2.0, 3.0], sol.ts
assert jnp.allclose(sol.ys, jnp.exp(-sol.ts), rtol=1e-4), sol.ys
assert sol.ys.dtype == jnp.float32


class Func(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(y)


class NeuralODE(eqx.Module):
    func: Func

    def __call__(self, ts, y0):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(self.func), diffrax.Tsit5(), t0=ts[0], t1=ts[-1],
            dt0=ts[1] - ts[0], y0=y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            saveat=diffrax.SaveAt(ts=ts),
        )
        return solution.ys


ts = jnp.linspace(0, 1, 20)
ys = jnp.stack([jnp.cos(ts), jnp.sin(ts)], axis=-1)
model = NeuralODE(Func(jr.PRNGKey(0)))
optim = optax.adam(1e-2)
opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))


@eqx.filter_value_and_grad
def grad_loss(model):
    return jnp.mean((model(ts, ys[0]) - ys) ** 2)


@eqx.filter_jit
def make_step(model, opt_state):
    loss, grads = grad_loss(model)
    updates, opt_state = optim.update(grads, opt_state)
    return loss, eqx.apply_updates(model, updates), opt_state


losses = []
for _ in range(20):
    loss, model, opt_state = make_step(model, opt_state)
    losses.append(float(loss))
assert losses[-1] < 0.5 * losses[0], losses
print("ok")
"""


@pytest.mark.slow  # a fresh interpreter, and the compilation of a training step
def test_import_nde_as_diffrax_runs_diffrax_code():
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DIFFRAX_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")

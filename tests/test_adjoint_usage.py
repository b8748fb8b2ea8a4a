"""Adjoints as users meet them: the two examples of the seed FAQ (a model captured
by a closure, and the same model inside `terms`), `adjoint_rms_seminorm`, and the
error text of every combination an adjoint cannot differentiate.

Tolerances: the closure and `terms` versions of a FAQ example are the same
computation, so their gradients agree to round-off (1e-12). (How accurate
BacksolveAdjoint's gradients are is measured in `test_adjoints.py`.)
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import nde


def _mlp():
    return eqx.nn.MLP(1, 1, 8, 2, key=jr.PRNGKey(0), dtype=jnp.float64)


def _max_rel(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(
        float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
        for x, y in zip(a, b, strict=True)
    )


class VectorField(eqx.Module):
    model: eqx.Module

    def __call__(self, t, y, args):
        return self.model(y)


def _faq_wrong(adjoint):
    """The FAQ's "wrong" example: the model is captured by a closure."""

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def run(model):
        def f(t, y, args):  # `model` is not part of the `terms` PyTree
            return model(y)

        sol = nde.diffeqsolve(
            nde.ODETerm(f), nde.Euler(), 0, 1, 0.1, jnp.array([1.0]), adjoint=adjoint
        )
        return jnp.sum(sol.ys)

    return run(_mlp())


def _faq_right(adjoint):
    """The FAQ's corrected example: the model is a field of the vector field."""

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def run(model):
        f = VectorField(model)
        sol = nde.diffeqsolve(
            nde.ODETerm(f), nde.Euler(), 0, 1, 0.1, jnp.array([1.0]), adjoint=adjoint
        )
        return jnp.sum(sol.ys)

    return run(_mlp())


def test_faq_closure_example_gives_the_correct_gradient():
    # Where Diffrax raises CustomVJPException, nde closure-converts the field.
    value_wrong, grad_wrong = _faq_wrong(nde.BacksolveAdjoint())
    value_right, grad_right = _faq_right(nde.BacksolveAdjoint())
    assert value_wrong == value_right
    assert _max_rel(grad_wrong, grad_right) < 1e-12
    # Not all zeros (a silently dropped closure would give zeros).
    leaves = jax.tree_util.tree_leaves(grad_wrong)
    assert all(bool(jnp.any(x != 0)) for x in leaves)


def test_faq_closure_example_with_the_default_adjoint():
    _, grad_wrong = _faq_wrong(nde.RecursiveCheckpointAdjoint())
    _, grad_right = _faq_right(nde.RecursiveCheckpointAdjoint())
    assert _max_rel(grad_wrong, grad_right) < 1e-12


def _count_calls():
    count = [0]

    def bump():
        count[0] += 1

    return count, bump


def _max_of_parts_norm(x):
    """A norm controlling every part of the adjoint state `(y, a_y, a_args,
    a_terms)`: the largest RMS norm of the four."""
    return jnp.max(jnp.stack([nde.rms_norm(part) for part in x]))


def test_adjoint_rms_seminorm_takes_fewer_steps_for_the_same_gradient():
    # A neural ODE (a rotation plus an MLP of 1,218 parameters) on [0, 10]. Against
    # a norm that controls the error of every part of the adjoint state, the
    # seminorm stops controlling the parameter integrals a_terms, which feed back
    # into nothing: fewer backward evaluations (measured 197 vs 221), the same
    # gradient to the tolerance of the solves. (Against `rms_norm` over the whole
    # state it is *not* cheaper here: the RMS average over 1,218 parameter
    # components already dilutes the error of y and a_y; see the adjoints README.)
    mlp = eqx.nn.MLP(
        2, 2, 32, 2, activation=jnp.tanh, key=jr.PRNGKey(1), dtype=jnp.float64
    )
    count, bump = _count_calls()

    class Counted(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, t, y, args):
            jax.debug.callback(bump)
            return jnp.stack([y[1], -y[0]]) + self.mlp(y)

    def grad(norm):
        controller = nde.PIDController(rtol=1e-6, atol=1e-6, norm=norm)
        adjoint = nde.BacksolveAdjoint(stepsize_controller=controller)

        @eqx.filter_jit
        @eqx.filter_grad
        def g(model):
            sol = nde.diffeqsolve(
                nde.ODETerm(Counted(model)),
                nde.Tsit5(),
                0.0,
                10.0,
                0.1,
                jnp.array([1.0, -0.5]),
                stepsize_controller=nde.PIDController(rtol=1e-6, atol=1e-6),
                adjoint=adjoint,
            )
            return jnp.sum(sol.ys**2)

        count[0] = 0
        out = jax.block_until_ready(g(mlp))
        return out, count[0]  # forward + backward evaluations

    g_parts, calls_parts = grad(_max_of_parts_norm)
    g_semi, calls_semi = grad(nde.adjoint_rms_seminorm)
    # The forward solves are identical, so the difference is in the backward solve.
    assert calls_semi < calls_parts, (calls_semi, calls_parts)
    assert _max_rel(g_semi, g_parts) < 1e-4


def test_adjoint_rms_seminorm_outside_backsolve():
    with pytest.raises(ValueError, match="adjoint state"):
        nde.adjoint_rms_seminorm(jnp.ones(3))


def _solve(adjoint, y0=None, dt0=0.1, **kwargs):
    options = dict(saveat=nde.SaveAt(t1=True), max_steps=64)
    options.update(kwargs)
    return nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: -y),
        nde.Tsit5(),
        0.0,
        1.0,
        dt0,
        jnp.array([1.0]) if y0 is None else y0,
        adjoint=adjoint,
        **options,
    )


@pytest.mark.parametrize(
    "saveat,what",
    [
        (nde.SaveAt(steps=True), "steps=True"),
        (nde.SaveAt(t1=True, dense=True), "dense=True"),
        (nde.SaveAt(t1=True, fn=lambda t, y, args: y**2), "fn"),
        (
            nde.SaveAt(subs=[nde.SubSaveAt(t1=True), nde.SubSaveAt(steps=True)]),
            "steps=True",
        ),
    ],
)
def test_backsolve_unsupported_saveat(saveat, what):
    with pytest.raises(ValueError) as info:
        jax.grad(lambda y0: _solve(nde.BacksolveAdjoint(), y0, saveat=saveat).ys.sum())(
            jnp.array([1.0])
        )
    message = str(info.value)
    assert "BacksolveAdjoint" in message and what in message
    assert "RecursiveCheckpointAdjoint" in message  # the fix


def test_backsolve_with_step_to_needs_its_own_controller():
    controller = nde.StepTo(jnp.linspace(0.0, 1.0, 11))
    with pytest.raises(
        ValueError, match=re.escape("BacksolveAdjoint(stepsize_controller=")
    ):
        _solve(nde.BacksolveAdjoint(), stepsize_controller=controller, dt0=None)


def test_recursive_checkpoint_unbounded_needs_checkpoints():
    # Forward solves with max_steps=None are fine ...
    sol = _solve(nde.RecursiveCheckpointAdjoint(), max_steps=None)
    assert jnp.isfinite(sol.ys).all()
    # ... differentiating one says what to set.
    f = lambda y0: _solve(nde.RecursiveCheckpointAdjoint(), y0, max_steps=None).ys.sum()
    with pytest.raises(ValueError) as info:
        jax.grad(f)(jnp.array([1.0]))
    message = str(info.value)
    assert "max_steps=None" in message and "checkpoints=" in message


def test_recursive_checkpoint_unbounded_with_checkpoints():
    adjoint = nde.RecursiveCheckpointAdjoint(checkpoints=8)
    g = jax.grad(lambda y0: _solve(adjoint, y0, max_steps=None).ys.sum())(
        jnp.array([1.0])
    )
    # Tsit5 with dt = 0.1 on y' = -y: within 1e-6 of the exact exp(-1).
    assert jnp.allclose(g, jnp.exp(-1.0), rtol=1e-6)


@pytest.mark.parametrize("checkpoints", [0, -3, 2.5])
def test_recursive_checkpoint_bad_checkpoints(checkpoints):
    adjoint = nde.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
    with pytest.raises(ValueError, match=re.escape(repr(checkpoints))):
        jax.grad(lambda y0: _solve(adjoint, y0).ys.sum())(jnp.array([1.0]))


def test_direct_adjoint_needs_max_steps():
    with pytest.raises(ValueError) as info:
        _solve(nde.DirectAdjoint(), max_steps=None)
    assert "DirectAdjoint" in str(info.value) and "max_steps" in str(info.value)


@pytest.mark.parametrize(
    "clip", [dict(step_ts=jnp.linspace(0.0, 1.0, 5)), dict(jump_ts=jnp.array([0.5]))]
)
def test_gradient_through_clip_step_size_controller(clip):
    # y' = -a y, y(0) = (1, 1): d/da sum y(1) = -2 exp(-a) at a = 1. PID 1e-8: the
    # solve, and so its derivative, is accurate to about 1e-8.
    def loss(a):
        controller = nde.ClipStepSizeController(
            nde.PIDController(rtol=1e-8, atol=1e-8), **clip
        )
        sol = nde.diffeqsolve(
            nde.ODETerm(lambda t, y, args: -args * y),
            nde.Tsit5(),
            0.0,
            1.0,
            None,
            jnp.ones(2),
            args=a,
            stepsize_controller=controller,
        )
        return sol.ys[-1].sum()

    assert jnp.allclose(jax.grad(loss)(1.0), -2 * jnp.exp(-1.0), rtol=1e-7)

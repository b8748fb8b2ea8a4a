"""ReversibleHeun and ReversibleAdjoint: exact inversion of a step, order on ODEs,
and gradients equal to backpropagation through the solver's own steps."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nde

# Reconstructing the states backwards repeats the forward computations in reverse,
# so ReversibleAdjoint's gradients differ from RecursiveCheckpointAdjoint's only by
# round-off: relative 1e-10 leaves room for growth over 20-40 steps of ~1e-15 each.
ROUND_OFF = 1e-10


class Drift(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.weight @ y) * args - 0.1 * y


class Diffusion(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return 0.3 * jnp.tanh(self.weight * y[:, None] + t)


def _params():
    return Drift(jr.normal(jr.key(1), (2, 2))), Diffusion(jr.normal(jr.key(2), (2, 2)))


def _terms(drift, diffusion, sde: bool):
    if not sde:
        return nde.ODETerm(drift)
    bm = nde.VirtualBrownianTree(0.0, 1.0, 2**-10, (2,), jr.key(0))
    return nde.MultiTerm(nde.ODETerm(drift), nde.ControlTerm(diffusion, bm))


CASES = {
    "sde-t1-constant": (True, nde.SaveAt(t1=True), nde.ConstantStepSize()),
    "sde-ts-steps-pid": (
        True,
        nde.SaveAt(t0=True, ts=jnp.array([0.0, 0.3, 0.7, 1.0]), steps=True),
        nde.PIDController(rtol=1e-3, atol=1e-3),
    ),
    "ode-subs-fn-constant": (
        False,
        nde.SaveAt(
            subs=[
                nde.SubSaveAt(ts=jnp.linspace(0.0, 1.0, 5)),
                nde.SubSaveAt(t1=True, fn=lambda t, y, args: jnp.sin(y) * args),
            ]
        ),
        nde.ConstantStepSize(),
    ),
}


@ft.partial(jax.jit, static_argnums=(3, 4, 5))
def _grads(params, y0, args, case, adjoint, solver=nde.ReversibleHeun()):
    sde, saveat, controller = CASES[case]

    def loss(params, y0, args):
        sol = nde.diffeqsolve(
            _terms(*params, sde),
            solver,
            0.0,
            1.0,
            0.05,
            y0,
            args,
            saveat=saveat,
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=128,  # the adaptive SDE case takes 37 + 29 rejected steps
        )
        return sum(
            jnp.sum(jnp.where(jnp.isfinite(y), y, 0) ** 2)
            for y in jax.tree.leaves(sol.ys)
        )

    return jax.grad(loss, argnums=(0, 1, 2))(params, y0, args)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_equal_recursive_checkpoint(case):
    args = (_params(), jnp.array([0.5, -0.3]), jnp.array(1.2))
    reversible = _grads(*args, case, nde.ReversibleAdjoint())
    checkpoint = _grads(*args, case, nde.RecursiveCheckpointAdjoint())
    leaves = jax.tree.leaves(checkpoint)
    # (On the ODE the diffusion's parameters are unused: zero gradient.)
    assert all(np.all(np.isfinite(b)) for b in leaves)
    assert sum(bool(np.any(np.asarray(b) != 0)) for b in leaves) >= (
        4 if CASES[case][0] else 3
    )
    for a, b in zip(jax.tree.leaves(reversible), leaves, strict=True):
        np.testing.assert_allclose(
            a, b, rtol=ROUND_OFF, atol=ROUND_OFF * np.abs(b).max()
        )


class UserReversibleHeun(nde.ReversibleHeun):
    """A reversible solver nde does not know: `ReversibleAdjoint` takes its generic
    path (`backward_step`, then the VJP of `step`) instead of the sweep fused for
    `ReversibleHeun` (one vector field evaluation per step back)."""


@pytest.mark.parametrize("case", list(CASES))
def test_fused_and_generic_backward_sweeps_agree(case):
    args = (_params(), jnp.array([0.5, -0.3]), jnp.array(1.2))
    fused = _grads(*args, case, nde.ReversibleAdjoint())
    generic = _grads(*args, case, nde.ReversibleAdjoint(), UserReversibleHeun())
    for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(generic), strict=True):
        np.testing.assert_allclose(
            a, b, rtol=ROUND_OFF, atol=ROUND_OFF * np.abs(b).max()
        )


@jax.jit
def _step_and_back(y0):
    drift, diffusion = _params()
    terms = _terms(drift, diffusion, sde=True)
    solver = nde.ReversibleHeun()
    # The two states of the solver need not agree.
    state = solver.init(terms, 0.1, 0.2, y0 + 0.01, 1.0)
    y1, _, _, state1, _ = solver.step(terms, 0.1, 0.2, y0, 1.0, state, False)
    back_y, back_state = solver.backward_step(terms, 0.1, 0.2, y1, 1.0, state1)
    return (y0, state), (back_y, back_state)


def test_backward_step_inverts_step():
    before, after = _step_and_back(jnp.array([0.4, -0.2]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


@jax.jit
def _ode_error(dt):
    # y' = A y: a rotation with decay, against the matrix exponential.
    a = jnp.array([[-0.2, 1.0], [-1.0, -0.2]])
    y0 = jnp.array([1.0, 0.0])
    term = nde.ODETerm(lambda t, y, args: a @ y)
    sol = nde.diffeqsolve(term, nde.ReversibleHeun(), 0.0, 2.0, dt, y0, max_steps=512)
    return jnp.linalg.norm(sol.ys[0] - jax.scipy.linalg.expm(2.0 * a) @ y0)


def test_second_order_on_odes():
    dts = 2.0 ** -np.arange(3, 8)
    errors = [float(_ode_error(dt)) for dt in dts]
    order = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert abs(order - 2) < 0.1, (order, errors)
    assert nde.ReversibleHeun().order(None) == 2


def test_errors():
    term = nde.ODETerm(lambda t, y, args: -y)
    rev = nde.ReversibleAdjoint()
    with pytest.raises(ValueError, match="algebraically reversible solver; got"):
        nde.diffeqsolve(term, nde.Heun(), 0.0, 1.0, 0.1, 1.0, adjoint=rev)
    with pytest.raises(ValueError, match=r"SaveAt\(dense=True\)"):
        nde.diffeqsolve(
            term,
            nde.ReversibleHeun(),
            0,
            1,
            0.1,
            1.0,
            saveat=nde.SaveAt(dense=True),
            adjoint=rev,
        )
    clip = nde.ClipStepSizeController(nde.ConstantStepSize(), jump_ts=[0.5])
    with pytest.raises(ValueError, match="discontinuities"):
        nde.diffeqsolve(
            term,
            nde.ReversibleHeun(),
            0,
            1,
            0.1,
            1.0,
            stepsize_controller=clip,
            adjoint=rev,
        )
    with pytest.raises(ValueError, match="needs an integer"):
        nde.diffeqsolve(
            term, nde.ReversibleHeun(), 0, 1, 0.1, 1.0, adjoint=rev, max_steps=None
        )

    def final(t1):
        sol = nde.diffeqsolve(
            term, nde.ReversibleHeun(), 0.0, t1, 0.1, 1.0, adjoint=rev
        )
        return sol.ys[0]

    with pytest.raises(NotImplementedError, match="not with respect to `t0`, `t1`"):
        jax.grad(final)(1.0)


@ft.partial(jax.jit, static_argnums=(2, 3, 4))
def _vmapped_grads(params, y0s, adjoint, batched_params, solver=nde.ReversibleHeun()):
    """Gradients of a `vmap` of adaptive SDE solves (the elements take different
    numbers of steps), with parameters shared by the batch or one set per element."""

    def solve(params, y0):
        sol = nde.diffeqsolve(
            _terms(*params, sde=True),
            solver,
            0.0,
            1.0,
            0.05,
            y0,
            jnp.array(1.2),
            stepsize_controller=nde.PIDController(rtol=1e-2, atol=1e-2),
            adjoint=adjoint,
            max_steps=256,
        )
        return sol.ys[-1], sol.stats["num_accepted_steps"]

    def loss(params, y0s):
        axes = (0 if batched_params else None, 0)
        ys, steps = jax.vmap(solve, in_axes=axes)(params, y0s)
        return jnp.sum(
            jnp.sin(ys) * jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape)
        ), steps

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, y0s)


@pytest.mark.parametrize(
    "batched_params, solver",
    [
        (False, nde.ReversibleHeun()),
        (True, nde.ReversibleHeun()),
        (False, UserReversibleHeun()),
    ],
)
def test_vmapped_gradients_equal_recursive_checkpoint(batched_params, solver):
    """`grad` of a `vmap`: the backward sweep runs while any element has steps
    left; the shared parameters' cotangents are summed over the batch."""
    y0s = jnp.array([[0.5, -0.3], [2.0, 1.0], [-1.5, 0.2]])
    params = _params()
    if batched_params:
        params = jax.tree.map(lambda p: jnp.stack([p, 0.8 * p, 1.1 * p]), params)
    rev, steps = _vmapped_grads(
        params, y0s, nde.ReversibleAdjoint(), batched_params, solver
    )
    ref, _ = _vmapped_grads(
        params, y0s, nde.RecursiveCheckpointAdjoint(), batched_params
    )
    assert len(set(np.asarray(steps).tolist())) > 1, steps  # different step counts
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(ref), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(
            a, b, rtol=ROUND_OFF, atol=ROUND_OFF * np.abs(b).max()
        )


@ft.partial(jax.jit, static_argnums=1)
def _per_element_grads(y0s, adjoint):
    """`vmap` of `grad`: one gradient of the shared parameters per element."""

    def loss(params, y0):
        sol = nde.diffeqsolve(
            _terms(*params, sde=True),
            nde.ReversibleHeun(),
            0.0,
            1.0,
            0.05,
            y0,
            jnp.array(1.2),
            stepsize_controller=nde.PIDController(rtol=1e-2, atol=1e-2),
            adjoint=adjoint,
            max_steps=256,
        )
        return jnp.sum(jnp.sin(sol.ys[-1]))

    return jax.vmap(jax.grad(loss), in_axes=(None, 0))(_params(), y0s)


def test_vmap_of_gradients_equal_recursive_checkpoint():
    y0s = jnp.array([[0.5, -0.3], [2.0, 1.0], [-1.5, 0.2]])
    rev = _per_element_grads(y0s, nde.ReversibleAdjoint())
    ref = _per_element_grads(y0s, nde.RecursiveCheckpointAdjoint())
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(ref), strict=True):
        assert a.shape == b.shape == (3,) + b.shape[1:]
        np.testing.assert_allclose(
            a, b, rtol=ROUND_OFF, atol=ROUND_OFF * np.abs(b).max()
        )


class CDEField(eqx.Module):
    weight: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.weight @ y)[:, None] * jnp.array([1.0, -0.5])


@ft.partial(jax.jit, static_argnums=(3, 4))
def _cde_grads(field, xs, y0, adjoint, solver):
    """Gradients of a CDE driven by a path through data `xs`: the control depends
    on what is differentiated."""

    def loss(field, xs, y0):
        ts = jnp.linspace(0.0, 1.0, xs.shape[0])
        control = nde.LinearInterpolation(ts, xs)
        sol = nde.diffeqsolve(
            nde.ControlTerm(field, control),
            solver,
            0.0,
            1.0,
            0.1,
            y0,
            saveat=nde.SaveAt(ts=ts),
            adjoint=adjoint,
            max_steps=64,
        )
        return jnp.sum(
            jnp.sin(sol.ys) * jnp.arange(1.0, 1.0 + sol.ys.size).reshape(sol.ys.shape)
        )

    return jax.grad(loss, argnums=(0, 1, 2))(field, xs, y0)


@pytest.mark.parametrize("solver", [nde.ReversibleHeun(), UserReversibleHeun()])
def test_cde_gradients_with_respect_to_the_data(solver):
    field = CDEField(jr.normal(jr.key(3), (2, 2)))
    xs = jnp.stack(
        [jnp.linspace(0.0, 1.0, 11), jnp.sin(jnp.linspace(0.0, 3.0, 11))], -1
    )
    y0 = jnp.array([0.3, -0.2])
    rev = _cde_grads(field, xs, y0, nde.ReversibleAdjoint(), solver)
    ref = _cde_grads(field, xs, y0, nde.RecursiveCheckpointAdjoint(), solver)
    assert np.any(np.asarray(ref[1]) != 0)
    for a, b in zip(jax.tree.leaves(rev), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(
            a, b, rtol=ROUND_OFF, atol=ROUND_OFF * np.abs(b).max()
        )

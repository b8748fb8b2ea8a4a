"""`BacksolveAdjoint`: the continuous adjoint method (optimise-then-discretise)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._loop import Problem, State, run
from .._saveat import SaveAt, save_y, sub_saveats
from .._terms import AbstractTerm, is_ode_term
from ..controllers import AbstractStepSizeController, StepTo
from ..solvers import AbstractSolver
from ._adjoint_term import AdjointTerm
from ._base import AbstractAdjoint, plain_while_loop
from ._closure_convert import closure_convert_terms


class BacksolveAdjoint(AbstractAdjoint):
    """Differentiate by solving the adjoint equations backwards in time (the
    "continuous adjoint" of Chen, Rubanova, Bettencourt & Duvenaud, NeurIPS 2018).

    Memory is `O(1)` in the number of steps: nothing is stored on the forward pass
    but the saved outputs; the backward pass re-solves the state together with its
    adjoint from `t1` to `t0` (see `_adjoint_term.py`), jumping the adjoint by the
    loss's gradient at each save time. The gradients are those of the exact
    solution, approximated to the tolerance of the backward solve, so they differ
    slightly from the gradient of the numerical forward solution that
    `RecursiveCheckpointAdjoint` returns.

    Gradients are computed with respect to `y0`, `args`, every floating-point array
    inside `terms` (e.g. the parameters of an `eqx.Module` vector field), and the
    times `t0`, `t1` and `SaveAt(ts=...)` of an ODE. A vector field that uses a
    model through a closure (`lambda t, y, args: model(y)`) works too: it is
    closure-converted, so the model's parameters are differentiated as if they were
    part of `terms`.

    On SDEs the backward solve replays the same Brownian path, so it needs a
    `VirtualBrownianTree` and a solver converging to the Stratonovich solution.

    **Arguments:**

    - `solver`: the solver of the backward solve (default: the forward solver).
    - `stepsize_controller`: its controller (default: the forward one). A
      `PIDController(..., norm=adjoint_rms_seminorm)` takes fewer backward steps.

    Only `SaveAt(t0=..., t1=..., ts=...)` (also in `SubSaveAt`s) with the default
    `fn` is supported.
    """

    solver: AbstractSolver | None = None
    stepsize_controller: AbstractStepSizeController | None = None

    def validate(self, problem: Problem) -> None:
        what = _unsupported_saveat(problem.saveat)
        if what is not None:
            raise ValueError(
                f"`BacksolveAdjoint` cannot differentiate a solve saved with {what}: "
                "it supports `SaveAt(t0=..., t1=..., ts=...)` with the default `fn`. "
                "Use `adjoint=RecursiveCheckpointAdjoint()` (the default), or save "
                "at `ts` and compute the function of the state outside the solve."
            )
        if self.stepsize_controller is None and _is_step_to(problem.controller):
            raise ValueError(
                "`BacksolveAdjoint` with `stepsize_controller=StepTo(ts)` needs its "
                "own controller for the backward solve, which runs between save "
                "times rather than on the forward grid: pass e.g. "
                "`BacksolveAdjoint(stepsize_controller=PIDController(rtol=..., "
                "atol=...))`."
            )

    def loop(self, problem: Problem) -> State:
        terms = closure_convert_terms(
            problem.terms, problem.t0, problem.y0, problem.args
        )
        problem = eqx.tree_at(lambda p: p.terms, problem, terms)
        return _backsolve(problem, self)


def _unsupported_saveat(saveat: SaveAt) -> str | None:
    if saveat.dense:
        return "`SaveAt(dense=True)`"
    for sub in sub_saveats(saveat):
        if sub.steps:
            return "`SaveAt(steps=True)`"
        if sub.fn is not save_y:
            return "`SaveAt(fn=...)`"
    return None


def _is_step_to(controller) -> bool:
    inner = getattr(controller, "controller", None)
    return isinstance(controller, StepTo) or isinstance(inner, StepTo)


@eqx.filter_custom_vjp
def _backsolve(problem, adjoint):
    return run(problem, plain_while_loop)


@_backsolve.def_fwd
def _backsolve_fwd(perturbed, problem, adjoint):
    del perturbed
    state = run(problem, plain_while_loop)
    return state, state


@_backsolve.def_bwd
def _backsolve_bwd(state, ct_state, perturbed, problem, adjoint):
    return _Backward(problem, state, perturbed, adjoint).run(ct_state)


def _zeros_if_none(ct, like):
    return jtu.tree_map(
        lambda c, x: jnp.zeros_like(x) if c is None else c,
        ct,
        like,
        is_leaf=lambda c: c is None,
    )


def _rate(terms: AbstractTerm, t, y, args):
    """`dy/dt` of an ODE term: the derivative of its increment over `[t, s]` at `s=t`."""
    increment = lambda s: terms.vf_prod(t, y, args, terms.contr(t, s))
    return jax.jvp(increment, (t,), (jnp.ones_like(t),))[1]


def _dot(a, b):
    products = [
        jnp.sum(x * y)
        for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b), strict=True)
    ]
    return sum(products[1:], start=products[0])


class _Backward:
    """The backward pass: one reverse-time solve of the augmented system between
    consecutive save times, from the last to the first."""

    def __init__(self, problem: Problem, state: State, perturbed, adjoint):
        p = self.problem = problem
        self.state = state
        self.perturbed = perturbed
        _check_controls_not_perturbed(perturbed.terms)
        self.term_diff, term_rest = eqx.partition(p.terms, perturbed.terms)
        self.args_diff, self.args_rest = eqx.partition(p.args, perturbed.args)
        self.adjoint_term = AdjointTerm(term_rest)
        self.solver = p.solver if adjoint.solver is None else adjoint.solver
        self.controller = (
            p.controller
            if adjoint.stepsize_controller is None
            else adjoint.stepsize_controller
        )
        self.is_ode = is_ode_term(p.terms)

    def integrate(self, aug, t_from, t_to):
        from .._solve import diffeqsolve  # a solve inside a solve's backward pass

        p = self.problem
        sol = diffeqsolve(
            self.adjoint_term,
            self.solver,
            t_from,
            t_to,
            None if p.dt0 is None else -p.dt0,
            aug,
            args=(self.args_diff, self.args_rest, self.term_diff),
            saveat=SaveAt(t1=True),
            stepsize_controller=self.controller,
            max_steps=p.max_steps,
        )
        return jtu.tree_map(lambda x: x[0], sol.ys)

    def save_points(self, ct_state):
        """Every saved `(t, y, ct)`, latest first; and which input each time is."""
        p, state = self.problem, self.state
        ct_saves = getattr(ct_state, "saves", None) or [None] * len(state.saves)
        ts, ys, cts, kinds = [], [], [], []
        for sub, save, ct in zip(
            sub_saveats(p.saveat), state.saves, ct_saves, strict=True
        ):
            ts.append(save.ts)
            ys.append(save.ys)
            cts.append(_zeros_if_none(getattr(ct, "ys", None), save.ys))
            num_ts = 0 if sub.ts is None else len(sub.ts)
            kinds += [0] * int(sub.t0) + [1] * num_ts + [2] * int(sub.t1)
        cat = lambda trees: jtu.tree_map(lambda *x: jnp.concatenate(x), *trees)
        ts, ys, cts = jnp.concatenate(ts), cat(ys), cat(cts)
        order = jnp.argsort(-ts, stable=True)
        take = lambda tree: jtu.tree_map(lambda x: x[order], tree)
        return (ts, ys, cts), (take(ts), take(ys), take(cts)), jnp.asarray(kinds)

    def run(self, ct_state):
        p, state = self.problem, self.state
        ct_y = _zeros_if_none(getattr(ct_state, "y", None), state.y)
        unsorted, points, kinds = self.save_points(ct_state)
        zeros = lambda tree: jtu.tree_map(jnp.zeros_like, tree)
        aug = (state.y, ct_y, zeros(self.args_diff), zeros(self.term_diff))

        def between_saves(carry, point):
            t_now, aug = carry
            t_save, y_save, ct_save = point
            y, a_y, a_args, a_terms = self.integrate(aug, t_now, t_save)
            del y  # restart from the forward solve's value: no drift accumulates
            a_y = jtu.tree_map(jnp.add, a_y, ct_save)
            return (t_save, (y_save, a_y, a_args, a_terms)), None

        (t_now, aug), _ = jax.lax.scan(between_saves, (p.t1, aug), points)
        _, a_y0, a_args, a_terms = self.integrate(aug, t_now, p.t0)
        return self.cotangents(ct_y, unsorted, kinds, a_y0, a_args, a_terms)

    def cotangents(self, ct_y, unsorted, kinds, a_y0, a_args, a_terms):
        p = self.problem
        ct = jtu.tree_map(lambda _: None, eqx.filter(p, eqx.is_inexact_array))
        none = lambda x: x is None
        ct = eqx.tree_at(lambda c: c.y0, ct, a_y0, is_leaf=none)
        ct = eqx.tree_at(lambda c: c.args, ct, a_args, is_leaf=none)
        ct = eqx.tree_at(lambda c: c.terms, ct, a_terms, is_leaf=none)
        if self.is_ode:
            ct = self.time_cotangents(ct, ct_y, unsorted, kinds, a_y0)
        return ct

    def time_cotangents(self, ct, ct_y, unsorted, kinds, a_y0):
        # d y(tau) / d tau = f(tau, y(tau)) and d y(tau) / d t0 = -(dy(tau)/dy0) f0.
        p, state = self.problem, self.state
        ts, ys, cts = unsorted
        rate = jax.vmap(lambda t, y: _rate(p.terms, t, y, p.args))(ts, ys)
        per_point = jax.vmap(_dot)(cts, rate)
        f1 = _rate(p.terms, p.t1, state.y, p.args)
        ct_t1 = _dot(ct_y, f1) + jnp.sum(jnp.where(kinds == 2, per_point, 0))
        # `SaveAt(t0=True)` saves y0 itself, which does not depend on t0.
        direct = jtu.tree_map(
            lambda c: jnp.sum(
                jnp.where((kinds == 0).reshape((-1,) + (1,) * (c.ndim - 1)), c, 0),
                axis=0,
            ),
            cts,
        )
        a_traj = jtu.tree_map(jnp.subtract, a_y0, direct)
        ct_t0 = -_dot(a_traj, _rate(p.terms, p.t0, p.y0, p.args))
        none = lambda x: x is None
        ct = eqx.tree_at(lambda c: c.t0, ct, ct_t0.astype(p.t0.dtype), is_leaf=none)
        ct = eqx.tree_at(lambda c: c.t1, ct, ct_t1.astype(p.t1.dtype), is_leaf=none)
        ct_ts, start = [], 0
        for sub in sub_saveats(p.saveat):
            start += int(sub.t0)
            if sub.ts is not None:
                n = len(sub.ts)
                ct_ts.append(per_point[start : start + n].astype(ts.dtype))
                start += n
            start += int(sub.t1)
        with_ts = [i for i, s in enumerate(sub_saveats(p.saveat)) if s.ts is not None]
        if with_ts:
            ct = eqx.tree_at(
                lambda c: [sub_saveats(c.saveat)[i].ts for i in with_ts],
                ct,
                ct_ts,
                is_leaf=none,
            )
        return ct


def _check_controls_not_perturbed(perturbed_terms):
    """Gradients flow through vector fields only: the continuous adjoint has no
    term for a differentiated control path (e.g. CDE data in a `ControlTerm`)."""
    in_vector_fields = sum(
        sum(jtu.tree_leaves(v)) for v in _vector_fields(perturbed_terms)
    )
    if sum(jtu.tree_leaves(perturbed_terms)) > in_vector_fields:
        raise ValueError(
            "`BacksolveAdjoint` can differentiate with respect to the parameters of "
            "vector fields, but here a term's control (e.g. the data path of a "
            "`ControlTerm`) is differentiated too. Use `ControlTerm(...).to_ode()`, "
            "which makes the path part of the vector field, or "
            "`adjoint=RecursiveCheckpointAdjoint()`."
        )


def _vector_fields(terms) -> list:
    """Every `vector_field` attribute inside `terms`."""
    found = []

    def visit(x):
        if isinstance(x, AbstractTerm):
            if hasattr(x, "vector_field"):
                found.append(x.vector_field)
            for value in vars(x).values():
                visit(value)
        elif isinstance(x, (tuple, list)):
            for v in x:
                visit(v)

    visit(terms)
    return found

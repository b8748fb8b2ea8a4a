"""Control terms `g(t, y, args) dx(t)`: the diffusion of an SDE (`x` a Brownian
motion) or the vector field of a CDE (`x` an interpolated data path).

An SDE is `MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian_motion))`; a
CDE is `ControlTerm(vector_field, LinearInterpolation(ts, data))`, or, for a smooth
path, `ControlTerm(...).to_ode()`.
"""

import sys
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from ._brownian import AbstractBrownianPath
from ._custom_types import VF, RealScalarLike
from ._paths import AbstractPath
from ._terms import AbstractTerm, MultiTerm, ODETerm, _DirectedTerm


class _CallableToPath(AbstractPath):
    """A control given as a function `(t0, t1) -> increment`."""

    fn: Callable

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True):
        if t1 is None:
            raise ValueError(
                "This control was given as a function `(t0, t1) -> increment`, so it "
                "only has increments, not values. Pass an `AbstractPath` (e.g. "
                "`LinearInterpolation`) where values are needed."
            )
        return self.fn(t0, t1)


def _as_path(control) -> AbstractPath:
    if isinstance(control, AbstractPath):
        return control
    if callable(control):
        return _CallableToPath(control)
    raise TypeError(
        "The control of a `ControlTerm` must be an `AbstractPath` (e.g. "
        "`VirtualBrownianTree`, `LinearInterpolation`) or a function "
        f"`(t0, t1) -> increment`; got {type(control).__name__}."
    )


def _linear_operator_types() -> tuple[type, ...]:
    # Lineax is optional: if it has been imported, a vector field may return a
    # `lineax.AbstractLinearOperator` (as Diffrax allows), applied with `.mv`.
    lineax = sys.modules.get("lineax")
    return () if lineax is None else (lineax.AbstractLinearOperator,)


def _contract(v, c):
    """Contract the trailing axes of `v` (shape `y.shape + c.shape`) with `c`."""
    v, c = jnp.asarray(v), jnp.asarray(c)
    return jnp.tensordot(v, c.astype(v.dtype), axes=c.ndim)


def _multiply(v, c):
    v, c = jnp.asarray(v), jnp.asarray(c)
    return v * c.astype(v.dtype)


class _AbstractControlTerm(AbstractTerm):
    vector_field: Callable[..., VF]
    control: AbstractPath

    def __init__(self, vector_field: Callable[..., VF], control):
        self.vector_field = vector_field
        self.control = _as_path(control)

    def vf(self, t, y, args):
        return self.vector_field(t, y, args)

    def contr(self, t0, t1, **kwargs):
        if kwargs.get("use_levy", False) and not isinstance(
            self.control, AbstractBrownianPath
        ):
            raise ValueError(
                "This solver needs the Lévy area of a Brownian motion, but the control "
                f"of this `{type(self).__name__}` is a {type(self.control).__name__}. "
                "Use `VirtualBrownianTree(..., levy_area=SpaceTimeLevyArea)`."
            )
        return self.control.evaluate(t0, t1, **kwargs)

    def to_ode(self) -> ODETerm:
        """This term as an ODE, `g(t, y, args) dx/dt dt`, for a differentiable
        control (e.g. `CubicInterpolation`): then any ODE solver, adaptive steps and
        dense output apply.

        **Example:**

            term = ControlTerm(vector_field, CubicInterpolation(ts, coeffs)).to_ode()
            diffeqsolve(term, Tsit5(), ...)
        """
        return ODETerm(_ControlledVectorField(self))


class ControlTerm(_AbstractControlTerm):
    """The term `g(t, y, args) dx(t)` where the vector field is a matrix (per leaf)
    acting on the control increment.

    If a leaf of `y` has shape `(m,)` and the control increment has shape `(n,)`,
    `vector_field` returns shape `(m, n)` and the term is the matrix-vector product.
    In general, per leaf, the vector field has shape `y.shape + dx.shape` and the
    trailing `dx.ndim` axes are contracted with the increment; `vector_field` and the
    control have the same PyTree structure (that of `y`). A vector field may instead
    return a Lineax linear operator, applied to the increment with `.mv`.

    **Arguments:**

    - `vector_field`: `(t, y, args) -> g`, e.g. an `eqx.Module` holding a network
      (its parameters are then part of `terms` and are differentiated).
    - `control`: an `AbstractPath` (`VirtualBrownianTree`, `UnsafeBrownianPath`,
      `LinearInterpolation`, `CubicInterpolation`, ...) or a function
      `(t0, t1) -> increment`.

    **Example:**

        bm = VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=jr.key(0))
        drift = ODETerm(lambda t, y, args: -y)                        # y: shape (3,)
        diffusion = ControlTerm(lambda t, y, args: 0.1 * jnp.ones((3, 2)), bm)
        diffeqsolve(MultiTerm(drift, diffusion), Euler(), 0.0, 1.0, 0.01, y0)
    """

    def prod(self, vf, control):
        ops = _linear_operator_types()
        if ops and isinstance(vf, ops):
            return vf.mv(control)  # pyright: ignore
        return jtu.tree_map(_contract, vf, control)


class WeaklyDiagonalControlTerm(_AbstractControlTerm):
    """The term `g(t, y, args) dx(t)` where `g` is a diagonal matrix, represented by
    its diagonal: the vector field and the control increment both have the shape of
    `y`, and are multiplied elementwise. (Diagonal noise: each component of `y` is
    driven by its own Brownian motion. "Weakly": each diagonal entry may depend on
    all of `y`.)

    **Arguments:** as `ControlTerm`.

    **Example:**

        bm = VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(3,), key=jr.key(0))
        diffusion = WeaklyDiagonalControlTerm(lambda t, y, args: 0.5 * y, bm)
    """

    def prod(self, vf, control):
        return jtu.tree_map(_multiply, vf, control)


class _ControlledVectorField(eqx.Module):
    """`g(t, y, args) dx/dt`: a control term seen as an ODE's vector field."""

    term: _AbstractControlTerm

    def __call__(self, t, y, args):
        return self.term.vf_prod(t, y, args, self.term.control.derivative(t))


def is_sde(terms) -> bool:
    """Whether `terms` has a term driven by Brownian motion."""
    is_path = lambda x: isinstance(x, AbstractPath)
    leaves = jtu.tree_leaves(terms, is_leaf=is_path)
    return any(isinstance(x, AbstractBrownianPath) for x in leaves)


def has_control_term(terms) -> bool:
    """Whether `terms` (a term, a `MultiTerm`, possibly time-reversed) has a control
    term, i.e. is an SDE or a CDE rather than an ODE."""
    if isinstance(terms, _DirectedTerm):
        return has_control_term(terms.term)
    if isinstance(terms, MultiTerm):
        return any(has_control_term(t) for t in terms.terms)
    return isinstance(terms, _AbstractControlTerm)


def drift_and_diffusion(
    terms: AbstractTerm, solver_name: str
) -> tuple[AbstractTerm, AbstractTerm]:
    """Split `MultiTerm(drift, diffusion)` (as passed by the solve, possibly wrapped
    to run backwards in time) into its two terms, for solvers that treat them
    differently."""
    direction: RealScalarLike | None = None
    inner = terms
    if isinstance(inner, _DirectedTerm):
        direction, inner = inner.direction, inner.term
    if not (isinstance(inner, MultiTerm) and len(inner.terms) == 2):
        raise ValueError(
            f"`{solver_name}` solves SDEs given as "
            "`terms=MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian_motion))`; "
            f"got terms of type {type(inner).__name__}."
        )
    drift, diffusion = inner.terms
    if direction is None:
        return drift, diffusion
    return _DirectedTerm(drift, direction), _DirectedTerm(diffusion, direction)


def brownian_motion_of(term: AbstractTerm) -> AbstractBrownianPath | None:
    """The Brownian motion driving a (possibly time-reversed) control term."""
    if isinstance(term, _DirectedTerm):
        return brownian_motion_of(term.term)
    if isinstance(term, _AbstractControlTerm) and isinstance(
        term.control, AbstractBrownianPath
    ):
        return term.control
    return None

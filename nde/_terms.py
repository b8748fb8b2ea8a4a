"""Terms: the pieces of a differential equation `dy = f(t, y, args) dx(t)`.

A term knows its vector field `vf(t, y, args)`, the control increment over an interval
`contr(t0, t1)` (`t1 - t0` for an ODE, a Brownian increment for an SDE), and how the
two combine, `prod(vf, control)`. Solvers only ever talk to terms through these three
methods, which is what lets the same Runge--Kutta code solve ODEs, CDEs and SDEs.

Terms are PyTrees: an `eqx.Module` vector field's parameters are leaves of `terms`,
so gradients with respect to them flow through `diffeqsolve`.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._custom_types import VF, Args, Control, RealScalarLike, Y


class AbstractTerm(eqx.Module):
    """A term `f(t, y, args) dx(t)` of a differential equation.

    Subclasses implement `vf`, `contr` and `prod`; `vf_prod` may be overridden when
    the product can be computed without materialising the vector field (e.g. a
    matrix-free control term).
    """

    @abc.abstractmethod
    def vf(self, t: RealScalarLike, y: Y, args: Args) -> VF:
        """The vector field at `(t, y)`."""

    @abc.abstractmethod
    def contr(self, t0: RealScalarLike, t1: RealScalarLike, **kwargs) -> Control:
        """The control increment over `[t0, t1]`. Keyword arguments go to the control
        (e.g. `use_levy=True` asks a Brownian motion for its Lévy area too)."""

    @abc.abstractmethod
    def prod(self, vf: VF, control: Control) -> Y:
        """Combine a vector field with a control increment into a state increment."""

    def vf_prod(self, t: RealScalarLike, y: Y, args: Args, control: Control) -> Y:
        """`prod(vf(t, y, args), control)`."""
        return self.prod(self.vf(t, y, args), control)


def _scale(leaf, dt):
    # Cast the time increment to the state's dtype so that float32 states stay
    # float32 under strict dtype promotion when time is float64.
    return leaf * jnp.asarray(dt).astype(jnp.result_type(leaf))


class ODETerm(AbstractTerm):
    """The term `f(t, y, args) dt` of an ODE `dy/dt = f(t, y, args)`.

    **Arguments:**

    - `vector_field`: a callable `(t, y, args) -> dy/dt` returning a PyTree with the
      structure of `y`. Make it an `eqx.Module` (e.g. holding an `eqx.nn.MLP`) so its
      parameters are part of the `terms` PyTree.

    **Example:**

        term = ODETerm(lambda t, y, args: -args * y)
    """

    vector_field: Callable[..., VF]

    def vf(self, t, y, args):
        return self.vector_field(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: _scale(v, control), vf)


class MultiTerm(AbstractTerm):
    """Several terms acting on the same state, e.g. drift and diffusion of an SDE.

    `vf` and `contr` return tuples with one entry per term; `prod` sums the
    increments.

    **Arguments:**

    - `*terms`: the terms, e.g. `MultiTerm(ODETerm(drift), ControlTerm(diffusion, bm))`.
    """

    terms: tuple[AbstractTerm, ...]

    def __init__(self, *terms: AbstractTerm):
        self.terms = tuple(terms)

    def __check_init__(self):
        if len(self.terms) == 0:
            raise ValueError("`MultiTerm(*terms)` needs at least one term; got none.")

    def vf(self, t, y, args):
        return tuple(term.vf(t, y, args) for term in self.terms)

    def contr(self, t0, t1, **kwargs):
        return tuple(term.contr(t0, t1, **kwargs) for term in self.terms)

    def prod(self, vf, control):
        increments = [
            term.prod(v, c) for term, v, c in zip(self.terms, vf, control, strict=True)
        ]
        return jtu.tree_map(lambda *xs: sum(xs[1:], start=xs[0]), *increments)

    def vf_prod(self, t, y, args, control):
        increments = [
            term.vf_prod(t, y, args, c)
            for term, c in zip(self.terms, control, strict=True)
        ]
        return jtu.tree_map(lambda *xs: sum(xs[1:], start=xs[0]), *increments)


class _DirectedTerm(AbstractTerm):
    """Internal: runs a term in the time variable `s = direction * t`.

    The solve loop always integrates forwards in time; a reverse-time solve
    (`t1 < t0`) is the forward solve of this wrapped term, with `direction = -1`.
    """

    term: AbstractTerm
    direction: RealScalarLike

    def vf(self, t, y, args):
        return self.term.vf(t * self.direction, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0 * self.direction, t1 * self.direction, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)

    def vf_prod(self, t, y, args, control):
        return self.term.vf_prod(t * self.direction, y, args, control)


def is_ode_term(terms) -> bool:
    """Whether `terms` is a plain ODE (no stochastic or control terms)."""
    if isinstance(terms, _DirectedTerm):
        return is_ode_term(terms.term)
    if isinstance(terms, MultiTerm):
        return all(is_ode_term(t) for t in terms.terms)
    return isinstance(terms, ODETerm)


def vf_output_shape(terms: AbstractTerm, t, y, args):
    """Abstract evaluation of the vector field, for validation before the solve."""
    return jax.eval_shape(lambda: terms.vf_prod(t, y, args, terms.contr(t, t)))

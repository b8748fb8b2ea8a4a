"""One generic explicit Runge--Kutta step, driven by a `ButcherTableau`.

A new method is a tableau and a few-line class; this step never changes.

Every explicit RK method's first stage is `f(t0, y0)`. The step therefore ends by
providing `f(t1, y1)` (free for FSAL methods, whose last stage is exactly that;
one evaluation otherwise, which replaces the next step's first stage), so each step
still costs `s` evaluations, and the dense output can use the true derivative at
both ends of the step.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._results import RESULTS
from ._base import AbstractSolver
from ._tableau import ButcherTableau


def _combine(y0, weights, ks):
    """`y0 + sum_j weights[j] ks[j]` with Python-float weights; zeros skipped."""
    terms = [(w, k) for w, k in zip(weights, ks, strict=False) if w != 0]

    def leaf(y, *k_leaves):
        out = y
        for (w, _), k in zip(terms, k_leaves, strict=True):
            out = out + float(w) * k
        return out

    return jtu.tree_map(leaf, y0, *[k for _, k in terms])


def _contract(weights, ks):
    """`sum_j weights[..., j] ks[j]` (numpy `weights`), as one contraction over the
    stages with a non-zero weight. (A chain of scaled adds is as many operations
    per stage, which cost compile time even where XLA removes them as unused.)"""
    weights = np.asarray(weights)
    used = [j for j in range(weights.shape[-1]) if (weights[..., j] != 0).any()]
    if not used:
        return jtu.tree_map(
            lambda k: jnp.zeros(weights.shape[:-1] + k.shape, k.dtype), ks[0]
        )

    def leaf(*k):
        stacked = jnp.stack([k[j] for j in used])
        w = jnp.asarray(weights[..., used], stacked.dtype)
        return jnp.tensordot(w, stacked, axes=1)

    return jtu.tree_map(leaf, *ks)


# `scan_stages=None`: a state leaf at least this large (elements), and a vector field
# without matrix products, runs the stages in a loop. (Measured per Tsit5 step on
# CPU, scanned over unrolled: a 256-point stencil 0.18x, a pointwise field 1.11x;
# at 1,024 points 0.09x and 0.62x; at 64 points 0.48x and 2.2x.)
SCAN_STAGES_MIN_SIZE = 256
_MATRIX_PRODUCTS = frozenset({"dot_general", "conv_general_dilated"})


def _prefers_scanned_stages(terms, t0, y0, args) -> bool:
    """The rule of `scan_stages=None` (see `AbstractRungeKutta`)."""
    sizes = [jnp.size(x) for x in jtu.tree_leaves(y0)]
    if max(sizes, default=0) < SCAN_STAGES_MIN_SIZE:
        return False
    # Tracing the field once more costs about one stage's tracing, only here.
    jaxpr = jax.make_jaxpr(lambda t, y: terms.vf(t, y, args))(t0, y0)
    return not _has_matrix_product(jaxpr.jaxpr)


def _has_matrix_product(jaxpr) -> bool:
    return not _MATRIX_PRODUCTS.isdisjoint(primitive_names(jaxpr))


def primitive_names(jaxpr, found=None) -> set[str]:
    """The names of every primitive in `jaxpr`, its sub-jaxprs (jit, vmap, cond,
    loops, custom derivatives) included."""
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    primitive_names(sub, found)
    return found


class AbstractRungeKutta(AbstractSolver):
    """An explicit Runge--Kutta method given by `tableau`.

    **Arguments:**

    - `scan_stages`: evaluate the stages inside a `lax.scan` (`True`) rather than
      unrolled (`False`). Scanned, the vector field is traced once instead of once
      per stage (shorter compile times), the numbers are the same up to round-off,
      and each stage's input is computed once, in memory, before the field reads
      it. Unrolled, XLA fuses each stage's input into the field's own kernels: the
      fewest kernels per step (fastest for small states and for fields built on
      matrix products), but for a field made only of elementwise and shifting
      operations on a large state (a stencil, `jnp.roll`: a discretised PDE) it
      recomputes the earlier stages inside every later one, and a shift keeps
      that code from vectorising: measured on CPU, a 1,024-point stencil field ran
      11x slower per step unrolled. The default `None` chooses: scanned when the
      state has a leaf of at least 256 elements and the vector field contains no
      matrix product (`dot_general` or a convolution), unrolled otherwise.
    """

    tableau: ClassVar[ButcherTableau]
    scan_stages: bool | None = eqx.field(static=True, default=None, kw_only=True)

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self.tableau
        control = terms.contr(t0, t1)
        vf0 = self._first_vf(terms, t0, y0, args, solver_state, made_jump)
        k0 = terms.prod(vf0, control)
        scan = self.scan_stages
        if scan is None:
            scan = _prefers_scanned_stages(terms, t0, y0, args)
        if scan:
            ks, vf_last = self._scanned_stages(terms, t0, t1, y0, args, control, k0)
        else:
            ks, vf_last = self._unrolled_stages(terms, t0, t1, y0, args, control, k0)
        y1 = _combine(y0, tab.b_sol, ks)
        if tab.fsal:
            vf1 = vf_last
        else:
            vf1 = terms.vf(t1, y1, args)
            ks = ks + [terms.prod(vf1, control)]
        y_error = None if tab.b_error is None else _contract(tab.b_error, ks)
        dense_info = dict(y0=y0, coeffs=self._dense_coeffs(ks))
        return y1, y_error, dense_info, vf1, RESULTS.successful

    def _first_vf(self, terms, t0, y0, args, fsal_vf, made_jump):
        # After a discontinuity (`made_jump`), f(t0, y0) differs from the stored
        # f(t1, y1) of the previous step and must be recomputed.
        if made_jump is False:
            return fsal_vf
        return lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: fsal_vf)

    def _stage_time(self, i, t0, t1):
        # A Python float is weakly typed: float32 times stay float32.
        c = float(self.tableau.c[i])
        return t1 if c == 1 else t0 + c * (t1 - t0)

    def _unrolled_stages(self, terms, t0, t1, y0, args, control, k0):
        ks, vf = [k0], None
        for i, row in enumerate(self.tableau.a_lower, start=1):
            yi = _combine(y0, row, ks)
            vf = terms.vf(self._stage_time(i, t0, t1), yi, args)
            ks.append(terms.prod(vf, control))
        return ks, vf

    def _scanned_stages(self, terms, t0, t1, y0, args, control, k0):
        tab = self.tableau
        s = tab.num_stages
        if s == 1:
            return [k0], None
        buffer = jtu.tree_map(lambda k: jnp.zeros((s,) + k.shape, k.dtype), k0)
        buffer = jtu.tree_map(lambda b, k: b.at[0].set(k), buffer, k0)
        tdtype = jnp.result_type(t0, t1)
        cs = jnp.asarray(tab.c[1:], dtype=tdtype)
        is_one = jnp.asarray(tab.c[1:] == 1)

        def stage(buf, x):
            i, a_row, c, one = x
            yi = jtu.tree_map(
                lambda y, b: y + jnp.tensordot(a_row.astype(b.dtype), b, axes=1),
                y0,
                buf,
            )
            ti = jnp.where(one, t1, t0 + c * (t1 - t0))
            vf = terms.vf(ti, yi, args)
            ki = terms.prod(vf, control)
            buf = jtu.tree_map(
                lambda b, k: lax.dynamic_update_index_in_dim(b, k, i, 0), buf, ki
            )
            return buf, vf

        xs = (jnp.arange(1, s), jnp.asarray(tab.a[1:]), cs, is_one)
        buffer, vfs = lax.scan(stage, buffer, xs)
        ks = [jtu.tree_map(lambda b, i=i: b[i], buffer) for i in range(s)]
        return ks, jtu.tree_map(lambda v: v[-1], vfs)

    def _dense_coeffs(self, ks):
        dense = self.tableau.dense
        assert dense is not None
        # coeffs[d] = sum_j W[j, d] k_j: the polynomial's coefficient of theta**(d+1).
        return _contract(dense.T, ks)

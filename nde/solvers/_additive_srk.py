"""Stochastic Runge--Kutta methods for additive noise, as data.

For `dy = f(t, y) dt + g(t) dW` (the diffusion does not depend on `y`), a step of
length `h` with Brownian increment `W` and space-time Lévy area `H` is

    Y_i = y0 + h sum_j a_ij f(t0 + c_j h, Y_j) + g(t0) (w_i W + l_i H)
    y1  = y0 + h sum_i b_i f(t0 + c_i h, Y_i) + (g(t0) + g(t1)) W / 2 + (g(t0) - g(t1)) H

The last two terms integrate `g(t) dW` exactly when `g` is linear in time (so
exactly for constant `g`): with `int_{t0}^{t1} (s - t0) dW(s) = h W / 2 - h H`.
The embedded error estimate is `h sum_i e_i f(t0 + c_i h, Y_i)`.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._control_terms import drift_and_diffusion
from .._results import RESULTS
from ._base import AbstractAdaptiveSolver
from ._local_linear import linear_dense_info

_TOL = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class AdditiveNoiseTableau:
    """The coefficients of an additive-noise SRK method (see the module docstring).

    **Arguments:**

    - `c`: stage times, `c[0] == 0`.
    - `a_lower`: the drift coefficients; row `i - 1` holds `a[i][0:i]`.
    - `w`, `l`: per stage, the coefficients of `g W` and `g H` in the stage value.
    - `b_sol`, `b_error`: solution and error weights of the drift evaluations.

    `__post_init__` checks that rows of `a` sum to `c`, `b_sol` to 1, `b_error` to 0.
    """

    c: np.ndarray
    a_lower: tuple[np.ndarray, ...]
    w: np.ndarray
    l: np.ndarray  # noqa: E741
    b_sol: np.ndarray
    b_error: np.ndarray

    def __post_init__(self):
        s = len(self.c)
        if self.c[0] != 0 or len(self.a_lower) != s - 1:
            raise ValueError("AdditiveNoiseTableau: need c[0] = 0 and s - 1 rows of a.")
        for i, row in enumerate(self.a_lower, start=1):
            if len(row) != i or abs(np.sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"AdditiveNoiseTableau: row {i} of `a` != c[{i}].")
        for name in ("w", "l", "b_sol", "b_error"):
            if len(getattr(self, name)) != s:
                raise ValueError(f"AdditiveNoiseTableau: `{name}` needs {s} entries.")
        if abs(np.sum(self.b_sol) - 1) > _TOL or abs(np.sum(self.b_error)) > _TOL:
            raise ValueError("AdditiveNoiseTableau: b_sol must sum to 1, b_error to 0.")


def _combine(y0, terms):
    """`y0 + sum_j w_j x_j` over `(w, x)` pairs, skipping zero weights."""
    terms = [(float(w), x) for w, x in terms if w != 0]

    def leaf(y, *xs):
        for (w, _), x in zip(terms, xs, strict=True):
            y = y + w * x
        return y

    return jtu.tree_map(leaf, y0, *[x for _, x in terms])


class AbstractAdditiveSRK(AbstractAdaptiveSolver):
    """An additive-noise SRK method given by `tableau` (an `AdditiveNoiseTableau`).

    Needs `terms=MultiTerm(ODETerm(drift), ControlTerm(diffusion, bm))` with a
    diffusion independent of `y`, and a Brownian motion with
    `levy_area=SpaceTimeLevyArea`.
    """

    tableau: ClassVar[AdditiveNoiseTableau]

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 1.5

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        tab = self.tableau
        drift, diffusion = drift_and_diffusion(terms, type(self).__name__)
        h = drift.contr(t0, t1)
        levy = diffusion.contr(t0, t1, use_levy=True)
        # Additive noise: g is evaluated at y0 only (it does not depend on y).
        g0, g1 = diffusion.vf(t0, y0, args), diffusion.vf(t1, y0, args)
        g0_w, g0_h = diffusion.prod(g0, levy.W), diffusion.prod(g0, levy.H)
        g1_w, g1_h = diffusion.prod(g1, levy.W), diffusion.prod(g1, levy.H)
        ks = []
        for i, c in enumerate(tab.c):
            row = list(tab.a_lower[i - 1]) if i > 0 else []
            shifts = [*zip(row, ks, strict=True), (tab.w[i], g0_w), (tab.l[i], g0_h)]
            t_i = t0 + float(c) * (t1 - t0)
            ks.append(drift.vf_prod(t_i, _combine(y0, shifts), args, h))
        noise = [(0.5, g0_w), (0.5, g1_w), (1.0, g0_h), (-1.0, g1_h)]
        y1 = _combine(y0, [*zip(tab.b_sol, ks, strict=True), *noise])
        zero = jtu.tree_map(jnp.zeros_like, y0)
        y_error = _combine(zero, list(zip(tab.b_error, ks, strict=True)))
        return y1, y_error, linear_dense_info(y0, y1), None, RESULTS.successful

import jax.tree_util as jtu

from .._control_terms import drift_and_diffusion
from .._results import RESULTS
from ._base import AbstractSolver
from ._local_linear import linear_dense_info


class EulerHeun(AbstractSolver):
    """The Euler--Heun method for Stratonovich SDEs: Euler for the drift, Heun's
    predictor-corrector for the diffusion,

        y' = y0 + g(t0, y0) dW
        y1 = y0 + f(t0, y0) dt + (g(t0, y0) + g(t0, y')) dW / 2.

    Strong order 0.5 (1.0 for additive noise); one drift and two diffusion
    evaluations per step; no error estimate (fixed steps). Dense output is linear.
    Converges to the Stratonovich solution. Call with
    `terms=MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian_motion))`.

    Reference: Kloeden & Platen, "Numerical Solution of Stochastic Differential
    Equations", Springer 1992, sec. 11.1 (Heun scheme), with the drift taken
    explicitly as in Burrage, Burrage & Tian, "Numerical methods for strong
    solutions of stochastic differential equations: an overview", Proc. R. Soc. A
    2004.
    """

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        drift, diffusion = drift_and_diffusion(terms, "EulerHeun")
        dt, dw = drift.contr(t0, t1), diffusion.contr(t0, t1)
        f0 = drift.vf_prod(t0, y0, args, dt)
        g0 = diffusion.vf_prod(t0, y0, args, dw)
        y_pred = jtu.tree_map(lambda y, g: y + g, y0, g0)
        g_pred = diffusion.vf_prod(t0, y_pred, args, dw)
        y1 = jtu.tree_map(lambda y, f, a, b: y + f + (a + b) / 2, y0, f0, g0, g_pred)
        return y1, None, linear_dense_info(y0, y1), None, RESULTS.successful

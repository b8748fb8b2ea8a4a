import jax.tree_util as jtu

from .._control_terms import drift_and_diffusion
from .._results import RESULTS
from ._base import AbstractSolver
from ._local_linear import linear_dense_info
from ._milstein import directional_derivative


class StratonovichMilstein(AbstractSolver):
    """Milstein's method for Stratonovich SDEs with commutative noise,

        y1 = y0 + f dt + g dW + (1/2) sum_jk g_j' g_k dW_j dW_k,

    all terms at `(t0, y0)`; the last term is one Jacobian-vector product of
    `y -> g(t0, y) dW` along `g(t0, y0) dW`. Strong order 1.0 when the noise is
    commutative (not checked; otherwise 0.5). One drift evaluation and one diffusion
    JVP per step; no error estimate (fixed steps). Dense output is linear. Converges
    to the Stratonovich solution. Call with
    `terms=MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian_motion))`.

    Reference: Kloeden & Platen, "Numerical Solution of Stochastic Differential
    Equations", Springer 1992, sec. 10.3 (the Stratonovich form of the scheme).
    """

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 1.0

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        drift, diffusion = drift_and_diffusion(terms, "StratonovichMilstein")
        dw = diffusion.contr(t0, t1)
        f = drift.vf_prod(t0, y0, args, drift.contr(t0, t1))
        g_dw, second = directional_derivative(diffusion, t0, y0, args, dw)
        y1 = jtu.tree_map(lambda y, a, b, c: y + a + b + c / 2, y0, f, g_dw, second)
        return y1, None, linear_dense_info(y0, y1), None, RESULTS.successful

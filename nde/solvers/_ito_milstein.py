import jax.numpy as jnp
import jax.tree_util as jtu

from .._control_terms import drift_and_diffusion
from .._results import RESULTS
from ._base import AbstractSolver
from ._local_linear import linear_dense_info
from ._milstein import directional_derivative, ito_correction


class ItoMilstein(AbstractSolver):
    """Milstein's method for Itô SDEs with commutative noise,

        y1 = y0 + f dt + g dW + (1/2) sum_jk g_j' g_k (dW_j dW_k - delta_jk dt),

    all terms at `(t0, y0)`; `g_j` is column `j` of the diffusion and `g_j'` its
    derivative in `y` (computed with Jacobian-vector products, never formed).
    Strong order 1.0 when the noise is commutative (`g_j' g_k = g_k' g_j`: scalar,
    diagonal or additive noise, for example); this is not checked, and otherwise the
    order drops to 0.5. One drift evaluation and `1 + d` diffusion JVPs per step for
    `d`-dimensional noise; no error estimate (fixed steps). Dense output is linear.
    Converges to the Itô solution. Call with
    `terms=MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian_motion))`.

    Reference: Milstein, "Approximate integration of stochastic differential
    equations", Theory Probab. Appl. 1975; Kloeden & Platen, "Numerical Solution of
    Stochastic Differential Equations", Springer 1992, sec. 10.3.
    """

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 1.0

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        drift, diffusion = drift_and_diffusion(terms, "ItoMilstein")
        dw = diffusion.contr(t0, t1)
        f = drift.vf_prod(t0, y0, args, drift.contr(t0, t1))
        g_dw, second = directional_derivative(diffusion, t0, y0, args, dw)
        correction = ito_correction(diffusion, t0, y0, args, dw)
        # E[dW_j dW_k] = delta_jk (t1 - t0), in the solve's forward time.
        dt = t1 - t0
        y1 = jtu.tree_map(
            lambda y, a, b, c, d: y + a + b + (c - d * jnp.asarray(dt, d.dtype)) / 2,
            y0,
            f,
            g_dw,
            second,
            correction,
        )
        return y1, None, linear_dense_info(y0, y1), None, RESULTS.successful

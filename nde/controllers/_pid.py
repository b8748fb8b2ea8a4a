from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._custom_types import RealScalarLike
from .._norms import rms_norm
from .._results import RESULTS
from ._base import AbstractStepSizeController
from ._initial_step import select_initial_step


def _is_concrete(x) -> bool:
    # Concrete JAX arrays too; only tracers (tolerances inside `jit`) are checked
    # at run time instead (`traced_input_result`).
    return isinstance(x, (int, float, np.ndarray, np.generic)) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
    )


class PIDController(AbstractStepSizeController):
    r"""Adaptive step sizes from the solver's error estimate (PI/PID control).

    A step is accepted when the scaled error
    `e = norm(y_error / (atol + rtol * max(|y0|, |y1|)))` is below 1. The next step
    is `dt * clip(safety * e_n^(-b1) * e_{n-1}^(-b2) * e_{n-2}^(-b3), ...)` with
    `b1 = (icoeff + pcoeff + dcoeff) / q`, `b2 = -(pcoeff + 2 dcoeff) / q`,
    `b3 = dcoeff / q`, `q` the solver's error order (Soderlind, "Digital filters in
    adaptive time-stepping", ACM TOMS 2003). The defaults (`icoeff=1`, others 0) give
    the classical integral controller; `pcoeff=0.3, icoeff=0.3` is a good PI choice
    for noisy or stiff problems.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerances (required; may be traced
      arrays: changing them does not recompile).
    - `pcoeff`, `icoeff`, `dcoeff`: the PID coefficients.
    - `dtmin`, `dtmax`: bounds on the step size. With `force_dtmin=True` a step of
      at most `dtmin` is accepted regardless of its error; otherwise the solve stops with
      `RESULTS.dt_min_reached`.
    - `factormin`, `factormax`: bounds on the change of step size per step.
    - `safety`: multiplies every proposed step size.
    - `norm`: maps a PyTree to a scalar, e.g. `rms_norm` (default) or
      `adjoint_rms_seminorm`.
    - `error_order`: override the solver's error order (needed for SDEs).
    """

    rtol: RealScalarLike
    atol: RealScalarLike
    pcoeff: RealScalarLike = 0
    icoeff: RealScalarLike = 1
    dcoeff: RealScalarLike = 0
    dtmin: RealScalarLike | None = None
    dtmax: RealScalarLike | None = None
    force_dtmin: bool = eqx.field(static=True, default=True)
    factormin: RealScalarLike = 0.2
    factormax: RealScalarLike = 10.0
    safety: RealScalarLike = 0.9
    norm: Callable = eqx.field(static=True, default=rms_norm)
    error_order: RealScalarLike | None = None

    def __check_init__(self):
        if _is_concrete(self.rtol) and np.any(np.asarray(self.rtol) <= 0):
            raise ValueError(
                f"`PIDController(rtol=...)` must be positive, got rtol={self.rtol!r}. "
                "Typical values are 1e-3 (training) to 1e-8 (accurate solves)."
            )
        if _is_concrete(self.atol) and np.any(np.asarray(self.atol) < 0):
            raise ValueError(
                f"`PIDController(atol=...)` must be non-negative, got atol={self.atol!r}. "
                "Pass e.g. `atol=1e-6` (or `atol=0` for a purely relative tolerance)."
            )
        for name in ("factormin", "factormax", "safety"):
            value = getattr(self, name)
            if _is_concrete(value) and np.any(np.asarray(value) <= 0):
                raise ValueError(
                    f"`PIDController({name}=...)` must be positive, got {value!r}."
                )

    @property
    def is_adaptive(self) -> bool:
        return True

    def wrap(self, direction):
        return self

    def _error_order(self, error_order):
        order = self.error_order if self.error_order is not None else error_order
        if order is None:
            raise ValueError(
                "PIDController could not determine the order of the solver's error "
                "estimate (e.g. for an SDE). Pass `PIDController(..., error_order=...)`; "
                "for an SDE solver of strong order p, `error_order=p + 0.5` is typical."
            )
        return order

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tdtype = jnp.result_type(t0)
        if dt0 is None:
            order = self._error_order(error_order)
            rtol, atol = lax.stop_gradient((self.rtol, self.atol))
            dt0 = select_initial_step(
                terms, t0, y0, args, func, order, rtol, atol, self.norm
            )
            dt0 = lax.stop_gradient(dt0)
        dt0 = jnp.asarray(dt0, dtype=tdtype)
        if self.dtmax is not None:
            dt0 = jnp.minimum(dt0, self.dtmax)
        at_dtmin = jnp.asarray(False)
        if self.dtmin is not None:
            at_dtmin = dt0 <= self.dtmin
            dt0 = jnp.maximum(dt0, self.dtmin)
        one = jnp.asarray(1.0, dtype=tdtype)
        return t0 + dt0, (one, one, at_dtmin)

    def traced_input_result(self, t0, t1):
        if _is_concrete(self.rtol) and _is_concrete(self.atol):
            return None  # checked in __check_init__
        bad = jnp.any(jnp.asarray(self.rtol) <= 0) | jnp.any(jnp.asarray(self.atol) < 0)
        return jnp.where(
            bad, RESULTS.invalid_tolerances._value, RESULTS.successful._value
        ).astype(jnp.int32)

    def _scaled_error(self, y0, y1_candidate, y_error):
        def scale(y0_, y1_, err):
            # If y1 is NaN (the step left the vector field's domain), scale by y0
            # and let the NaN error reject the step.
            y = jnp.maximum(
                jnp.abs(y0_), jnp.abs(jnp.where(jnp.isfinite(y1_), y1_, y0_))
            )
            cast = lambda x: jnp.asarray(x).astype(err.dtype)
            return err / (cast(self.atol) + cast(self.rtol) * y)

        return self.norm(jtu.tree_map(scale, y0, y1_candidate, y_error))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        if y_error is None:
            raise ValueError(
                "PIDController needs a solver with an error estimate, but this solver "
                "has none (e.g. Euler). Use `ConstantStepSize()`, or an adaptive solver "
                "such as `Tsit5()`."
            )
        order = self._error_order(error_order)
        prev_inv, prev_prev_inv, at_dtmin = controller_state
        tdtype = jnp.result_type(t1)
        # The step size is a discrete decision: no gradients flow through it.
        y0, y1_candidate, y_error = lax.stop_gradient((y0, y1_candidate, y_error))
        error = self._scaled_error(y0, y1_candidate, y_error).astype(tdtype)
        finite = jnp.isfinite(error)
        keep_step = finite & (error < 1)
        if self.dtmin is not None and self.force_dtmin:
            # A step no longer than dtmin is kept, also one cut short by t1 (a retry
            # at dtmin would be no shorter) or one that measures a few ulps of t
            # longer than the dtmin it was proposed as (times are rounded).
            slack = 8 * jnp.finfo(tdtype).eps * jnp.maximum(jnp.abs(t0), jnp.abs(t1))
            keep_step = keep_step | at_dtmin | (t1 - t0 <= self.dtmin + slack)
        inv = jnp.where(finite, 1 / jnp.where(error == 0, 1, error), 0)
        inv = jnp.where(error == 0, jnp.inf, inv)
        factor = self._factor(inv, prev_inv, prev_prev_inv, order, keep_step)
        dt = ((t1 - t0) * factor).astype(tdtype)
        # An infinite or zero inverse error (error 0 or inf) must not bias later steps.
        inv = jnp.where((inv == 0) | jnp.isinf(inv), 1, inv).astype(tdtype)
        result = RESULTS.successful
        if self.dtmax is not None:
            dt = jnp.minimum(dt, self.dtmax)
        if self.dtmin is not None:
            if not self.force_dtmin:
                # Only a rejected step fails: after an accepted one (e.g. the short
                # last step) a small proposal is merely raised to dtmin.
                fail = jnp.logical_not(keep_step) & (dt < self.dtmin)
                result = RESULTS.where(fail, RESULTS.dt_min_reached, result)
            at_dtmin = dt <= self.dtmin
            dt = jnp.maximum(dt, self.dtmin)
        next_t0 = jnp.where(keep_step, t1, t0)
        state = (
            jnp.where(keep_step, inv, prev_inv),
            jnp.where(keep_step, prev_inv, prev_prev_inv),
            at_dtmin,
        )
        return keep_step, next_t0, next_t0 + dt, False, state, result

    def _factor(self, inv, prev_inv, prev_prev_inv, order, keep_step):
        def power(x, coeff):
            if isinstance(coeff, (int, float)) and coeff == 0:
                return 1
            return x ** (coeff / order)

        raw = (
            self.safety
            * power(inv, self.icoeff + self.pcoeff + self.dcoeff)
            * power(prev_inv, -(self.pcoeff + 2 * self.dcoeff))
            * power(prev_prev_inv, self.dcoeff)
        )
        # An accepted step never shrinks the next one; a rejected one always does.
        low = jnp.where(keep_step, 1, self.factormin)
        high = jnp.where(keep_step, self.factormax, self.safety)
        return lax.stop_gradient(jnp.clip(raw, low, high))

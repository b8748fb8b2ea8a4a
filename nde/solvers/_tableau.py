"""Butcher tableaux: a Runge--Kutta method as data that checks itself."""

import dataclasses

import numpy as np

_TOL = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """The coefficients of an explicit Runge--Kutta method.

    ```
    c[0] = 0 |
    c[1]     | a[1][0]
    c[2]     | a[2][0]  a[2][1]
    ...      | ...
    ---------+-----------------------
             | b_sol[0] ... b_sol[s-1]
             | b_error[0] ... b_error[s-1]
    ```

    Stage `i` evaluates `k_i = f(t0 + c_i dt, y0 + sum_j a_ij k_j) dt`; the step is
    `y1 = y0 + sum_i b_sol_i k_i` and its local error estimate
    `y_error = sum_i b_error_i k_i` (the difference between the method and its
    embedded lower-order partner).

    **Arguments:**

    - `c`: the `s` stage times, `c[0] == 0`.
    - `a_lower`: `s - 1` rows; row `i - 1` holds `a[i][0:i]`.
    - `b_sol`: the `s` solution weights.
    - `b_error`: the `s` error weights, or `None` for a method without an embedded
      error estimate (it then cannot be used with an adaptive controller).
    - `dense`: optional `(s or s + 1, degree)` matrix `W` of a continuous extension:
      `y(t0 + theta dt) = y0 + sum_d theta**(d + 1) sum_j W[j, d] k_j`, where
      `k_s = f(t1, y1) dt` is the first stage of the next step (row `s` exists only
      for non-FSAL methods). `None` selects cubic Hermite interpolation.

    `__post_init__` checks consistency: each row of `a` sums to its `c`, `b_sol`
    sums to 1 and `b_error` to 0, and the dense output matches the step at
    `theta = 1`.
    """

    c: np.ndarray
    a_lower: tuple[np.ndarray, ...]
    b_sol: np.ndarray
    b_error: np.ndarray | None = None
    dense: np.ndarray | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("c", np.asarray(self.c, dtype=np.float64))
        set_("a_lower", tuple(np.asarray(r, dtype=np.float64) for r in self.a_lower))
        set_("b_sol", np.asarray(self.b_sol, dtype=np.float64))
        if self.b_error is not None:
            set_("b_error", np.asarray(self.b_error, dtype=np.float64))
        self._check_shapes()
        self._check_consistency()
        dense = self._hermite() if self.dense is None else self.dense
        set_("dense", np.asarray(dense, dtype=np.float64))
        self._check_dense()

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First Same As Last: the last stage is `f(t1, y1)`, reused next step."""
        last = self.a_lower[-1] if self.a_lower else np.zeros(0)
        return bool(
            self.num_stages > 1
            and self.c[-1] == 1
            and self.b_sol[-1] == 0
            and np.array_equal(last, self.b_sol[:-1])
        )

    @property
    def num_dense_k(self) -> int:
        """How many stage increments the dense output uses."""
        return self.num_stages if self.fsal else self.num_stages + 1

    @property
    def a(self) -> np.ndarray:
        """The full `(s, s)` strictly lower-triangular matrix."""
        a = np.zeros((self.num_stages, self.num_stages))
        for i, row in enumerate(self.a_lower, start=1):
            a[i, :i] = row
        return a

    def _check_shapes(self):
        s = self.num_stages
        if self.c[0] != 0:
            raise ValueError(f"ButcherTableau: c[0] must be 0, got {self.c[0]}.")
        if len(self.a_lower) != s - 1 or any(
            len(r) != i for i, r in enumerate(self.a_lower, start=1)
        ):
            raise ValueError("ButcherTableau: `a_lower` row i must have i entries.")
        if self.b_sol.shape != (s,):
            raise ValueError(f"ButcherTableau: `b_sol` must have {s} entries.")
        if self.b_error is not None and self.b_error.shape != (s,):
            raise ValueError(f"ButcherTableau: `b_error` must have {s} entries.")

    def _check_consistency(self):
        for i, row in enumerate(self.a_lower, start=1):
            if abs(row.sum() - self.c[i]) > _TOL:
                raise ValueError(
                    f"ButcherTableau: row {i} of `a` sums to {row.sum()}, "
                    f"but c[{i}] = {self.c[i]}."
                )
        if abs(self.b_sol.sum() - 1) > _TOL:
            raise ValueError(f"ButcherTableau: `b_sol` sums to {self.b_sol.sum()}.")
        if self.b_error is not None and abs(self.b_error.sum()) > _TOL:
            raise ValueError(f"ButcherTableau: `b_error` sums to {self.b_error.sum()}.")

    def _padded_b(self) -> np.ndarray:
        return np.pad(self.b_sol, (0, self.num_dense_k - self.num_stages))

    def _hermite(self) -> np.ndarray:
        # Cubic Hermite through (y0, f0) and (y1, f1), written in the stage
        # increments: with D = y1 - y0 = sum_j b_j k_j, F0 = k_0 and F1 = k_last,
        # y(theta) = y0 + theta F0 + theta^2 (3D - 2F0 - F1) + theta^3 (F0 + F1 - 2D).
        n = self.num_dense_k
        b, f0, f1 = self._padded_b(), np.eye(n)[0], np.eye(n)[n - 1]
        return np.stack([f0, 3 * b - 2 * f0 - f1, f0 + f1 - 2 * b], axis=1)

    def _check_dense(self):
        dense = self.dense
        assert dense is not None
        if dense.shape[0] != self.num_dense_k:
            raise ValueError(
                f"ButcherTableau: `dense` needs {self.num_dense_k} rows, "
                f"got {dense.shape[0]}."
            )
        if np.abs(dense.sum(axis=1) - self._padded_b()).max() > 1e-9:
            raise ValueError("ButcherTableau: dense output does not reach y1 at t1.")

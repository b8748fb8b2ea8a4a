"""Agreement with `scipy.integrate.solve_ivp` (DOP853, rtol = atol = 1e-12) on four
classic non-stiff problems, compared at 11 times through `SaveAt(ts=...)`.

Each solve runs at two tolerances through one compilation (`rtol`/`atol` are traced
arrays). The global error of an adaptive solve is the local tolerance times a
problem-dependent amplification (how fast nearby trajectories separate), so each
problem states a bound `error <= GROWTH * tol`, set from the measured amplification
with a margin of about 3; and tightening the tolerance 100x must shrink the error
at least 10x (tolerance proportionality). The reference's own error (about 1e-9 on
Arenstorf, 1e-11 elsewhere) is far below both tolerances used.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import nde

# Each right-hand side is written once for any array module `xp` (numpy for
# scipy, jax.numpy for nde) so that both solve literally the same equations.


def lotka_volterra(y, xp):
    a, b, c, d = 1.5, 1.0, 1.0, 3.0
    return xp.stack([a * y[0] - b * y[0] * y[1], c * y[0] * y[1] - d * y[1]])


def van_der_pol(y, xp, mu=1.0):
    return xp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


_MU = 0.012277471  # Hairer, Norsett & Wanner, Solving ODEs I, sec. II.0


def arenstorf(y, xp):
    x, v = y[:2], y[2:]
    nu = 1 - _MU
    d1 = ((x[0] + _MU) ** 2 + x[1] ** 2) ** 1.5
    d2 = ((x[0] - nu) ** 2 + x[1] ** 2) ** 1.5
    ax = x[0] + 2 * v[1] - nu * (x[0] + _MU) / d1 - _MU * (x[0] - nu) / d2
    ay = x[1] - 2 * v[0] - nu * x[1] / d1 - _MU * x[1] / d2
    return xp.stack([v[0], v[1], ax, ay])


def two_body(y, xp):
    q, p = y[:2], y[2:]
    r3 = (q[0] ** 2 + q[1] ** 2) ** 1.5
    return xp.stack([p[0], p[1], -q[0] / r3, -q[1] / r3])


_ECC = 0.5
# name: (rhs, y0, t1, GROWTH)
PROBLEMS = {
    "lotka_volterra": (lotka_volterra, [1.0, 1.0], 10.0, 200),
    "van_der_pol": (van_der_pol, [2.0, 0.0], 10.0, 200),
    # One period of the Arenstorf orbit; two close approaches to the Moon amplify
    # errors 1e3-3e4 fold.
    "arenstorf": (
        arenstorf,
        [0.994, 0.0, 0.0, -2.00158510637908252240537862224],
        17.0652165601579625588917206249,
        1e5,
    ),
    # One period (2 pi) of a Kepler orbit of eccentricity 0.5, from pericentre.
    "two_body": (
        two_body,
        [1 - _ECC, 0.0, 0.0, np.sqrt((1 + _ECC) / (1 - _ECC))],
        2 * np.pi,
        1e3,
    ),
}


def _reference(name):
    rhs, y0, t1, _ = PROBLEMS[name]
    ts = np.linspace(0, t1, 11)
    out = scipy.integrate.solve_ivp(
        lambda t, y: rhs(y, np),
        (0.0, t1),
        np.asarray(y0),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
        t_eval=ts,
    )
    assert out.success
    return ts, out.y.T


def _check(solver, name, tols, dense_times):
    rhs, y0, t1, growth = PROBLEMS[name]
    ts, ref = _reference(name)
    if not dense_times:  # compare at t1 only: SaveAt(ts) costs about 1 s of compile
        ts, ref = ts[-1:], ref[-1:]
    term = nde.ODETerm(lambda t, y, args: rhs(y, jnp))

    @jax.jit
    def solve(tol):
        sol = nde.diffeqsolve(
            term,
            solver,
            0.0,
            t1,
            None,
            jnp.asarray(y0),
            saveat=nde.SaveAt(ts=jnp.asarray(ts)),
            stepsize_controller=nde.PIDController(rtol=tol, atol=tol),
            max_steps=16384,
        )
        return sol.ys

    errors = []
    for tol in tols:
        ys = np.asarray(solve(jnp.asarray(tol)))
        errors.append(np.abs(ys - ref).max())
        assert errors[-1] <= growth * tol, (name, tol, errors[-1])
    assert errors[1] < errors[0] / 10, errors
    if name in ("arenstorf", "two_body"):
        # Independent of scipy: after one period the orbit is back at its start.
        np.testing.assert_allclose(ys[-1], y0, atol=growth * tols[1])
    if name == "two_body":
        # ... and the Kepler orbit conserves its energy -1 / (2a), a = 1.
        q, p = ys[:, :2], ys[:, 2:]
        energy = 0.5 * np.sum(p**2, axis=1) - 1 / np.linalg.norm(q, axis=1)
        np.testing.assert_allclose(energy, -0.5, atol=growth * tols[1])


# Tsit5 (the default), Dopri8 on every problem; Dopri5 where its error estimate
# differs most from Tsit5's (the orbits). Dopri8 runs its stages in a scan: the
# unrolled form is covered by tests/test_solvers.py, and this halves its compile.
CASES = [(nde.Tsit5(), name) for name in PROBLEMS]
CASES += [(nde.Dopri8(scan_stages=True), name) for name in PROBLEMS]
CASES += [(nde.Dopri5(), "arenstorf"), (nde.Dopri5(), "two_body")]


@pytest.mark.parametrize(
    "solver,name", CASES, ids=[f"{type(s).__name__}-{n}" for s, n in CASES]
)
def test_high_order_solvers_match_scipy(solver, name):
    # Tsit5 is compared along the whole trajectory (its dense output at 11 times),
    # the others at t1.
    _check(solver, name, (1e-8, 1e-10), dense_times=isinstance(solver, nde.Tsit5))


@pytest.mark.parametrize("solver", [nde.Heun(), nde.Midpoint(), nde.Ralston()])
def test_second_order_solvers_match_scipy(solver):
    _check(solver, "van_der_pol", (1e-4, 1e-6), dense_times=False)


def test_bosh3_matches_scipy():
    _check(nde.Bosh3(), "lotka_volterra", (1e-5, 1e-7), dense_times=True)

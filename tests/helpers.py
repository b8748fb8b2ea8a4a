"""One list of every ODE solver, driving the parametrised tests."""

import nde

# (solver class, order on ODEs, has an error estimate)
ODE_SOLVERS = [
    (nde.Euler, 1, False),
    (nde.Heun, 2, True),
    (nde.Midpoint, 2, True),
    (nde.Ralston, 2, True),
    (nde.Bosh3, 3, True),
    (nde.Tsit5, 5, True),
    (nde.Dopri5, 5, True),
    (nde.Dopri8, 8, True),
]
ADAPTIVE_SOLVERS = [s for s in ODE_SOLVERS if s[2]]

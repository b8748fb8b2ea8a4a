"""One list of every ODE solver and one of every SDE solver, driving the
parametrised tests."""

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

# (solver class, strong order on SDEs with (general, commutative, additive) noise;
# None where the solver does not apply). Orders that the tests measure are those of
# `tests/test_sde.py`; the others are stated by the solvers' references.
SDE_SOLVERS = [
    (nde.Euler, (0.5, 0.5, 1.0)),
    (nde.Heun, (0.5, 1.0, 1.0)),
    (nde.Midpoint, (0.5, 1.0, 1.0)),
    (nde.EulerHeun, (0.5, 1.0, 1.0)),
    (nde.ReversibleHeun, (0.5, None, 1.0)),
    (nde.ItoMilstein, (None, 1.0, 1.0)),
    (nde.StratonovichMilstein, (None, 1.0, 1.0)),
    (nde.SRA1, (None, None, 1.5)),
    (nde.ShARK, (None, None, 1.5)),
]

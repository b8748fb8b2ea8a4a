"""Names for solvers, step size controllers and adjoints, as used in configs.

`solver=dopri5 adjoint=backsolve` on the command line become objects here. The
tables map a name to the attribute of `nde` that implements it and are resolved
only when a run starts, so a name whose class is not part of this version of nde
(yet) is listed but gives a clear error only if someone asks for it. A
`"package.module:Class"` string names any other class.
"""

import importlib

from ._config import ODEConfig

# name -> attribute of `nde`
SOLVERS: dict[str, str] = {
    "euler": "Euler",
    "heun": "Heun",
    "midpoint": "Midpoint",
    "ralston": "Ralston",
    "bosh3": "Bosh3",
    "tsit5": "Tsit5",
    "dopri5": "Dopri5",
    "dopri8": "Dopri8",
    # SDE solvers
    "euler_heun": "EulerHeun",
    "milstein": "ItoMilstein",
    "stratonovich_milstein": "StratonovichMilstein",
    "reversible_heun": "ReversibleHeun",
    "sea": "SEA",
    "sra1": "SRA1",
    "shark": "ShARK",
}
CONTROLLERS: dict[str, str] = {
    "pid": "PIDController",
    "constant": "ConstantStepSize",
}
ADJOINTS: dict[str, str] = {
    "recursive_checkpoint": "RecursiveCheckpointAdjoint",
    "direct": "DirectAdjoint",
    "forward": "ForwardMode",
    "backsolve": "BacksolveAdjoint",
    "reversible": "ReversibleAdjoint",
    "implicit": "ImplicitAdjoint",
}


def _available(table: dict[str, str]) -> list[str]:
    import nde

    return [name for name, attr in table.items() if hasattr(nde, attr)]


def _resolve(kind: str, name: str, table: dict[str, str]) -> type:
    import nde

    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{kind}={name!r}: cannot import it ({e}).") from e
    available = ", ".join(_available(table))
    if name not in table:
        raise ValueError(
            f"Unknown {kind} {name!r}. Available: {available}; or give "
            f"'package.module:Class'."
        )
    attr = table[name]
    if not hasattr(nde, attr):
        raise ValueError(
            f"{kind}={name!r} means nde.{attr}, which this version of nde does not "
            f"provide. Available: {available}."
        )
    return getattr(nde, attr)


def get_solver(name: str):
    """The solver called `name`, e.g. `get_solver("dopri5")` is `nde.Dopri5()`."""
    return _resolve("solver", name, SOLVERS)()


def get_adjoint(name: str):
    """The adjoint called `name`, e.g. `get_adjoint("backsolve")`."""
    return _resolve("adjoint", name, ADJOINTS)()


def get_controller(name: str, ode: ODEConfig):
    """The step size controller called `name`; `pid` takes its tolerances and
    coefficients from `ode`."""
    cls = _resolve("controller", name, CONTROLLERS)
    if name == "pid":
        return cls(
            rtol=ode.rtol,
            atol=ode.atol,
            pcoeff=ode.pcoeff,
            icoeff=ode.icoeff,
            dcoeff=ode.dcoeff,
        )
    return cls()

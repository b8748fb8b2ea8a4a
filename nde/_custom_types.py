"""Type aliases shared across nde (jaxtyping), in one place."""

from typing import Any

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real

RealScalarLike = float | int | Real[ArrayLike, ""]
BoolScalarLike = bool | Bool[ArrayLike, ""]
IntScalarLike = int | Int[ArrayLike, ""]
FloatScalar = Float[Array, ""]

Y = PyTree[Array]
"""The state of a differential equation: a PyTree of arrays."""
VF = PyTree[Array]
"""The output of a vector field."""
Control = PyTree[Array]
"""A control increment: a time increment for ODEs, a Brownian increment for SDEs."""
Args = PyTree[Any]
"""Extra arguments passed to every vector field call."""
DenseInfo = PyTree[Array]
"""What a solver returns about one step so that it can be interpolated."""

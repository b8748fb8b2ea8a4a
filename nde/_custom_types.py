"""Type aliases shared across nde (jaxtyping), in one place."""

from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real

if TYPE_CHECKING:
    # What static type checkers see: plain aliases (jaxtyping's shape-annotated
    # types are runtime objects, which pyright does not accept in annotations).
    RealScalarLike: TypeAlias = float | int | Array | np.ndarray
    BoolScalarLike: TypeAlias = bool | Array | np.ndarray
    IntScalarLike: TypeAlias = int | Array | np.ndarray
    FloatScalar: TypeAlias = Array
    Y: TypeAlias = Any
    VF: TypeAlias = Any
    Control: TypeAlias = Any
    Args: TypeAlias = Any
    DenseInfo: TypeAlias = Any
else:
    RealScalarLike = float | int | Real[ArrayLike, ""]
    BoolScalarLike = bool | Bool[ArrayLike, ""]
    IntScalarLike = int | Int[ArrayLike, ""]
    FloatScalar = Float[Array, ""]

    Y = PyTree[Array]
    """The state of a differential equation: a PyTree of arrays."""
    VF = PyTree[Array]
    """The output of a vector field."""
    Control = PyTree[Array]
    """A control increment: a time increment for ODEs, a Brownian increment for
    SDEs."""
    Args = PyTree[Any]
    """Extra arguments passed to every vector field call."""
    DenseInfo = PyTree[Array]
    """What a solver returns about one step so that it can be interpolated."""

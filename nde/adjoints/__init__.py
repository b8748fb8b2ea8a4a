"""Adjoints: how a solve is differentiated. See README.md in this folder."""

from ._adjoint_term import adjoint_rms_seminorm as adjoint_rms_seminorm
from ._backsolve import BacksolveAdjoint as BacksolveAdjoint
from ._base import AbstractAdjoint as AbstractAdjoint
from ._direct import DirectAdjoint as DirectAdjoint
from ._forward_mode import ForwardMode as ForwardMode
from ._recursive_checkpoint import (
    RecursiveCheckpointAdjoint as RecursiveCheckpointAdjoint,
)
from ._reversible import ReversibleAdjoint as ReversibleAdjoint

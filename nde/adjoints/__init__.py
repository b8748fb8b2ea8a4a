"""Adjoints: how a solve is differentiated. See README.md in this folder."""

from ._base import AbstractAdjoint as AbstractAdjoint
from ._recursive_checkpoint import (
    RecursiveCheckpointAdjoint as RecursiveCheckpointAdjoint,
)

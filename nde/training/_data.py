"""Data: what `make_data` returns, and the seeded order in which it is batched.

The order is host-side and stateless given `(seed, epoch)`: each epoch is one
permutation drawn from `numpy.random.default_rng([seed, epoch])`, consumed
`batch_size` examples at a time (the tail that does not fill a batch is dropped, as
in every epoch-based loader, so that all batches have one shape and the train step
compiles once). Its whole state is `(epoch, position)`, which goes into every
checkpoint: a resumed run sees exactly the batches the uninterrupted run would have.
"""

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The data of a run.

    **Arguments:**

    - `train`: a PyTree of arrays sharing a leading axis of examples (numpy or JAX).
      Batches are drawn from it by index (`Trainer.make_batch`).
    - `val`: the same for validation, or `None`; the default `Trainer.evaluate`
      computes `loss` on all of it.
    - `extra`: anything else the recipe wants to keep (e.g. the true vector field
      for plots); the trainer ignores it.
    """

    train: Any
    val: Any = None
    extra: Any = None

    def __post_init__(self):
        num_train(self.train)  # fail early on an empty or ragged tree
        if self.val is not None:
            num_train(self.val, what="Dataset.val")


def num_train(tree, what: str = "Dataset.train") -> int:
    """The number of examples: the common length of the leading axes."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no arrays; give a PyTree of arrays.")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        shown = sorted("scalar" if s < 0 else str(s) for s in sizes)
        raise ValueError(
            f"{what}: every array needs the same leading (example) axis; got "
            f"leading sizes {shown}."
        )
    return sizes.pop()


@dataclasses.dataclass
class BatchOrder:
    """Seeded shuffled epochs over `num_examples`, `batch_size` at a time."""

    num_examples: int
    batch_size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _cache: tuple = dataclasses.field(default=(-1, None), init=False, repr=False)

    def __post_init__(self):
        if self.batch_size > self.num_examples:
            raise ValueError(
                f"trainer.batch_size={self.batch_size} is larger than the training "
                f"set ({self.num_examples} examples); lower trainer.batch_size."
            )

    def next(self) -> np.ndarray:
        """The indices of the next batch."""
        if self.position + self.batch_size > self.num_examples:
            self.epoch, self.position = self.epoch + 1, 0
        perm = self._permutation(self.epoch)
        idx = perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cache[0] != epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                perm = rng.permutation(self.num_examples)
            else:
                perm = np.arange(self.num_examples)
            self._cache = (epoch, perm)
        return self._cache[1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

"""Data parallelism: a 1-D `jax.sharding.Mesh` over the devices, the batch split along
it, the model and optimizer state replicated.

The train step itself is unchanged: `jit` sees sharded inputs and XLA partitions the
computation (GSPMD), inserting the all-reduce of the gradients where the loss
averages over the batch. The same code runs on one device, on several devices of one
host, and on several hosts (after `jax.distributed.initialize()`), where every
process builds the same global batch indices and contributes its own rows.
"""

import dataclasses

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The devices of a run and the shardings of its arrays.

    **Arguments:**

    - `devices`: how many of `jax.devices()` to use (`None`: all of them).
    """

    mesh: Mesh

    @classmethod
    def create(cls, devices: int | None = None) -> "DataParallel":
        available = jax.devices()
        if devices is not None and devices > len(available):
            raise ValueError(
                f"trainer.devices={devices}, but JAX sees {len(available)} "
                f"device(s): {available}. Lower trainer.devices (or leave it null)."
            )
        chosen = available if devices is None else available[:devices]
        return cls(Mesh(np.asarray(chosen), (AXIS,)))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batched(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(AXIS))

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_devices:
            raise ValueError(
                f"trainer.batch_size={batch_size} does not split evenly over "
                f"{self.num_devices} devices; use a multiple of {self.num_devices} "
                f"or set trainer.devices."
            )

    def replicate(self, tree):
        """Put every array of `tree` on every device."""
        arrays, static = eqx.partition(tree, eqx.is_array)
        return eqx.combine(jax.device_put(arrays, self.replicated), static)

    def shard_batch(self, batch):
        """Split every array of `batch` along its leading axis over the devices.

        On several hosts each process holds the same global batch (the indices are
        seeded identically) and hands over only its own rows.
        """
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batched)
        return jax.tree_util.tree_map(self._global_array, batch)

    def _global_array(self, x):
        x = np.asarray(x)
        rows = x.shape[0] // jax.process_count()
        start = jax.process_index() * rows
        local = x[start : start + rows]
        return jax.make_array_from_process_local_data(self.batched, local, x.shape)

    def put_eval(self, tree):
        """Validation data: split over the devices when it divides evenly, else
        replicated (a validation set need not be a multiple of the device count)."""
        sizes = {np.shape(x)[0] for x in jax.tree_util.tree_leaves(tree)}
        if all(s % self.num_devices == 0 for s in sizes):
            return self.shard_batch(tree)
        return self.replicate(tree)


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` once: on a cluster (SLURM, Cloud TPU, or the
    `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables)
    it discovers the other processes; afterwards `jax.devices()` lists every host's
    devices and the mesh spans them all."""
    if not jax.distributed.is_initialized():
        jax.distributed.initialize()

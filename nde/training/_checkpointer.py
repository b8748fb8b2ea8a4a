"""Checkpoints over `orbax.checkpoint.CheckpointManager`.

One checkpoint is a step directory `<run>/checkpoints/<step>/` with two items:

- `state`: the array leaves of the `TrainState` (model arrays, optimizer state,
  step, PRNG key), saved as a flat list;
- `meta`: JSON: the step, the data-order state, the run's config, and the
  *signature* of the state (path, shape and dtype of every leaf).

Orbax writes each checkpoint into a temporary directory and renames it when it is
complete, so a process killed at any moment (also in the middle of a save) leaves
either a complete checkpoint or a temporary directory that is ignored and cleaned
up. Saving is asynchronous: `save` returns once the arrays are copied off the
device and the files are written by a background thread.

Restoring goes into a template (`eqx.filter_eval_shape` of the initial state, so
no arrays are allocated twice) and is checked against the stored signature first:
a checkpoint of a different model fails with an error that names the path and the
first mismatching leaf, instead of an error from deep inside the storage layer.
"""

import logging
import pathlib
import warnings

import equinox as eqx
import jax
import jax.tree_util as jtu

log = logging.getLogger("nde.training")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (unreadable, or saved from a different model)."""


def is_array_like(x) -> bool:
    """An array, or the shape and dtype of one (a template leaf)."""
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def signature(state) -> list[list]:
    """`[path, shape, dtype]` of every array leaf of `state`."""
    leaves = jtu.tree_leaves_with_path(eqx.filter(state, is_array_like))
    return [[jtu.keystr(p), list(x.shape), str(x.dtype)] for p, x in leaves]


def _mismatch(saved: list, expected: list) -> str | None:
    if len(saved) != len(expected):
        return (
            f"it holds {len(saved)} arrays, the model and optimizer state have "
            f"{len(expected)}"
        )
    for s, e in zip(saved, expected, strict=True):
        if s != e:
            return (
                f"{e[0]} is saved with shape {tuple(s[1])} and dtype {s[2]}, but the "
                f"current run has shape {tuple(e[1])} and dtype {e[2]}"
            )
    return None


class Checkpointer:
    """Saves and restores `TrainState`s in `directory`.

    **Arguments:**

    - `directory`: where the step directories go (created if missing).
    - `max_to_keep`: how many checkpoints to keep (the oldest are deleted); `None`:
      all.
    - `async_save`: write in a background thread.
    """

    def __init__(
        self, directory, *, max_to_keep: int | None = 3, async_save: bool = True
    ):
        import orbax.checkpoint as ocp

        # Orbax reports every save at INFO through absl; keep them out of the run's
        # log unless the user configured that logger.
        absl_log = logging.getLogger("absl")
        if absl_log.level == logging.NOTSET:
            absl_log.setLevel(logging.WARNING)
        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            # Temporary directories are what a killed save leaves behind.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, state, meta: dict) -> None:
        """Save `state` (its array leaves) and the JSON-able `meta` as `step`."""
        ocp = self._ocp
        leaves = jtu.tree_leaves(eqx.filter(state, eqx.is_array))
        meta = dict(meta, step=step, signature=signature(state))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, template, step: int | None = None):
        """The latest readable checkpoint (or `step`) as `(state, meta)`, or `None`
        if there is none.

        `template` is a state of the right structure (e.g. from
        `eqx.filter_eval_shape`; array leaves may be `jax.ShapeDtypeStruct`s with a
        sharding). An unreadable checkpoint is skipped with a warning for the one
        before it; a checkpoint of a different model raises `CheckpointError`.
        """
        steps = self.steps() if step is None else [step]
        failures = []
        for s in reversed(steps):
            try:
                return self._restore_step(s, template)
            except CheckpointError:
                raise
            except Exception as e:  # orbax / tensorstore / json raise many types
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                failures.append(f"{self.path(s)} ({reason})")
                warnings.warn(
                    f"Checkpoint {self.path(s)} is unreadable ({reason}); "
                    f"falling back to the previous one.",
                    stacklevel=2,
                )
        if failures:
            raise CheckpointError(
                "No readable checkpoint in "
                f"{self.directory}: " + "; ".join(failures) + ". Delete the "
                "directory or set trainer.resume=false to start afresh."
            )
        return None

    def _restore_step(self, step: int, template):
        ocp = self._ocp
        meta = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
        expected = signature(template)
        problem = _mismatch(meta["signature"], expected)
        if problem is not None:
            raise CheckpointError(
                f"Checkpoint {self.path(step)} does not fit this run: {problem}. It "
                "was saved by a different model or optimizer configuration; resume "
                "with the config it was saved with (config.yaml in its run "
                "directory), or start a new run directory (or trainer.resume=false)."
            )
        arrays, static = eqx.partition(template, is_array_like)
        abstract = [_abstract(x) for x in jtu.tree_leaves(arrays)]
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
        ).state
        arrays = jtu.tree_unflatten(jtu.tree_structure(arrays), restored)
        log.info("Restored checkpoint %s", self.path(step))
        return eqx.combine(arrays, static), meta

    def delete(self, step: int) -> None:
        """Remove the checkpoint of `step`."""
        self._manager.delete(step)

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

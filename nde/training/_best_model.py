"""The best model by a monitored validation metric: Lightning's
`ModelCheckpoint(monitor=...)`, kept in memory and in `<run_dir>/best/`."""

import collections
import logging
import math
import warnings

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from ._checkpointer import Checkpointer
from ._config import BestModelConfig
from ._monitor import improves, monitored

log = logging.getLogger("nde.training")


def copy_arrays(model):
    """`model` with its arrays copied: the train step donates the state, so the next
    step reuses the buffers of the model it was given."""
    return jtu.tree_map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, model)


class BestModel:
    """Keeps a copy of the model of the best evaluation of `config.monitor`.

    `update(step, metrics, model)` copies the model when the metric improved (a NaN
    or infinite value never does) and saves it to `directory` (if given) as `step`.
    Every regular checkpoint records the best step and value (`on_checkpoint`), and
    `restore` brings that step's model back from `directory` on resume.

    **Arguments:**

    - `config`: the monitored metric and mode; `monitor=None` tracks nothing.
    - `directory`: where the best model is saved (`<run_dir>/best/`), or `None`.
    - `max_to_keep`: how many regular checkpoints are kept.
    - `async_save`: write in a background thread.

    The directory holds the best model as its newest step. The best model that one
    of the last `max_to_keep` regular checkpoints recorded stays there too, until
    none does: a run resumed from that checkpoint gets that model back, not a later
    one from the steps it trains again.
    """

    def __init__(
        self,
        config: BestModelConfig,
        directory=None,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
    ):
        self.config = config
        self.step: int | None = None
        self.value = math.nan
        self.model = None
        self._ckpt = None
        if config.monitor is not None and directory is not None:
            # All steps kept: `_prune` decides which go.
            self._ckpt = Checkpointer(
                directory, max_to_keep=None, async_save=async_save
            )
        self._recorded = collections.deque(maxlen=max_to_keep)

    def update(self, step: int, metrics: dict[str, float], model) -> bool:
        """Keep (and save) `model` if `metrics` improved on the best; return whether
        they did."""
        c = self.config
        if c.monitor is None:
            return False
        value = monitored("trainer.best.monitor", c.monitor, metrics)
        if not improves(value, self.value, c.mode):
            return False
        self.step, self.value, self.model = step, value, copy_arrays(model)
        if self._ckpt is not None:
            meta = {"monitor": c.monitor, "mode": c.mode, "value": value}
            self._ckpt.save(step, self.model, meta)
            self._prune()
        return True

    def on_checkpoint(self) -> dict:
        """The best step and value, for the meta of a regular checkpoint being saved:
        the model of that step stays on disk while the checkpoint is kept."""
        self._recorded.append(self.step)
        if self._ckpt is not None:
            self._prune()
        return {
            "monitor": self.config.monitor,
            "mode": self.config.mode,
            "step": self.step,
            "value": None if math.isnan(self.value) else self.value,
        }

    def restore(self, recorded: dict, template, resumed_step: int) -> None:
        """Continue from a regular checkpoint of `resumed_step` that recorded
        `recorded` (`on_checkpoint`'s dict): load that best model from the directory
        into `template` (a model, e.g. of `eqx.filter_eval_shape`)."""
        if self._ckpt is None:
            return
        for newer in [s for s in self._ckpt.steps() if s > resumed_step]:
            self._ckpt.delete(newer)  # the resumed run evaluates these steps again
        step = recorded.get("step")
        c = self.config
        if step is None:
            return
        if (recorded.get("monitor"), recorded.get("mode")) != (c.monitor, c.mode):
            log.info(
                "trainer.best was monitor=%r, mode=%r at the checkpoint: tracking the "
                "best model starts afresh.",
                recorded.get("monitor"),
                recorded.get("mode"),
            )
            return
        if step not in self._ckpt.steps():
            warnings.warn(
                f"The best model of step {step} is not in {self._ckpt.directory}: "
                f"tracking the best model starts afresh from step {resumed_step}.",
                stacklevel=2,
            )
            return
        restored = self._ckpt.restore(template, step)
        assert restored is not None  # a given step is restored or raises
        self.model = restored[0]
        self.step, self.value = step, float(recorded["value"])
        self._recorded.append(step)

    def _prune(self) -> None:
        assert self._ckpt is not None
        keep = {self.step, *self._recorded}
        for step in self._ckpt.steps():
            if step not in keep:
                self._ckpt.delete(step)

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()

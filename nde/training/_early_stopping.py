"""Early stopping on a monitored evaluation metric."""

import dataclasses
import math

from ._config import EarlyStoppingConfig
from ._monitor import improves, monitored


@dataclasses.dataclass
class EarlyStopping:
    """Counts evaluations without improvement of `config.monitor`.

    `update(metrics)` returns `True` when training should stop. Its state (`best`,
    `bad_evals`) is saved with every checkpoint, so a resumed run keeps counting.
    """

    config: EarlyStoppingConfig
    best: float = math.nan
    bad_evals: int = 0

    @property
    def enabled(self) -> bool:
        return self.config.monitor is not None

    def update(self, metrics: dict[str, float]) -> bool:
        c = self.config
        if c.monitor is None:
            return False
        value = monitored("trainer.early_stopping.monitor", c.monitor, metrics)
        if improves(value, self.best, c.mode, c.min_delta):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= c.patience

    def state_dict(self) -> dict:
        return {
            "best": None if math.isnan(self.best) else self.best,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict) -> None:
        best = state.get("best")
        self.best = math.nan if best is None else float(best)
        self.bad_evals = int(state.get("bad_evals", 0))

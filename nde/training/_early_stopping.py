"""Early stopping on a monitored evaluation metric."""

import dataclasses
import math

from ._config import EarlyStoppingConfig


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
        if not self.enabled:
            return False
        name = self.config.monitor
        if name not in metrics:
            raise ValueError(
                f"trainer.early_stopping.monitor={name!r} is not a metric returned "
                f"by evaluate; it returned: {', '.join(sorted(metrics)) or 'nothing'}."
            )
        value = metrics[name]
        if self._improved(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.config.patience

    def _improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return math.isfinite(value)
        delta = self.config.min_delta
        if self.config.mode == "min":
            return value < self.best - delta
        return value > self.best + delta

    def state_dict(self) -> dict:
        return {
            "best": None if math.isnan(self.best) else self.best,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict) -> None:
        best = state.get("best")
        self.best = math.nan if best is None else float(best)
        self.bad_evals = int(state.get("bad_evals", 0))

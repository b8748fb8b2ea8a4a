"""Progress: a tqdm bar on a terminal, plain periodic log lines otherwise.

Both are updated with values already pulled to the host at log intervals, so the
progress display never forces a device synchronisation.
"""

import logging
import sys
import time

log = logging.getLogger("nde.training")


def _format(metrics: dict[str, float], names) -> str:
    return " | ".join(f"{n} {metrics[n]:.4g}" for n in names if n in metrics)


class Progress:
    """`update(step)` every step, `report(step, metrics)` at log intervals.

    **Arguments:**

    - `total`: the last step.
    - `initial`: the step training starts from (after a resume).
    - `mode`: `"auto"` (a bar if stderr is a terminal, else lines), `"bar"`,
      `"plain"` or `"none"`.
    """

    shown = ("train/loss", "val/loss", "time/steps_per_sec")

    def __init__(self, total: int, *, initial: int = 0, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode, self.total, self.start = mode, total, time.perf_counter()
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True
            )

    def update(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)  # tqdm rate-limits the redraws

    def report(self, step: int, metrics: dict[str, float]) -> None:
        text = _format(metrics, self.shown)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(text)
        elif self.mode == "plain":
            elapsed = time.perf_counter() - self.start
            log.info("step %d/%d | %s | %.0f s", step, self.total, text, elapsed)

    def message(self, text: str) -> None:
        """A line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text)
        elif self.mode != "none":
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

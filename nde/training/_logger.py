"""Logging to TensorBoard (tensorboardX) and to `metrics.jsonl` in the run directory.

The surface is Lightning's: `log_metrics(metrics, step)`, `log_hyperparams(params,
metrics)`, plus `log_figure(tag, figure, step)`. `metrics.jsonl` (one JSON object
per logged step) is there for scripts and tests that do not want to parse event
files.
"""

import contextlib
import json
import math
import pathlib
import sys
import time


@contextlib.contextmanager
def _without_torch():
    # tensorboardX imports torch, when it is installed, only to accept torch tensors
    # (we never pass one); that import alone costs over a second per process.
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        yield
    finally:
        del sys.modules["torch"]


def _summary_writer():
    with _without_torch():
        from tensorboardX import SummaryWriter
    return SummaryWriter


class Logger:
    """Writes scalars, hyperparameters and figures for one run.

    **Arguments:**

    - `directory`: the run directory; events go to `<directory>/tb`.
    - `purge_step`: when resuming from step k, events of steps >= k written by the
      interrupted run are dropped (TensorBoard shows one curve, not two).
    """

    def __init__(self, directory, *, purge_step: int | None = None):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tb_dir = self.directory / "tb"
        # tensorboardX names the file by the second it opens and the host; a run
        # resumed within the same second (or two loggers of one run directory) would
        # reopen the same name and overwrite the first's events. The nanosecond
        # suffix keeps every file, and sorts them in order of creation as
        # TensorBoard reads them (by name).
        self._writer = _summary_writer()(
            logdir=str(self.tb_dir),
            purge_step=purge_step,
            flush_secs=30,
            filename_suffix=f".{time.time_ns():020d}",
        )
        self._jsonl_path = self.directory / "metrics.jsonl"
        if purge_step is not None:
            self._truncate_jsonl(purge_step)
        self._jsonl = open(self._jsonl_path, "a")

    def _truncate_jsonl(self, purge_step: int) -> None:
        if not self._jsonl_path.exists():
            return
        lines = self._jsonl_path.read_text().splitlines()
        keep = [line for line in lines if _step_of(line) < purge_step]
        self._jsonl_path.write_text("".join(line + "\n" for line in keep))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One scalar per name, e.g. `{"train/loss": 0.1}`."""
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        record = {"step": step, **{k: _json_float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def log_hyperparams(self, params: dict, metrics: dict[str, float]) -> None:
        """The flattened config and the final metrics, for TensorBoard's HParams
        tab (values that are not numbers, strings or booleans are written as
        strings)."""
        clean = {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in params.items()
        }
        finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self._writer.add_hparams(clean, finite, name="hparams")

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib `Figure` as an image."""
        self._writer.add_figure(tag, figure, step, close=False)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._jsonl.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut short by a kill: drop it


def _json_float(v: float):
    # JSON has no NaN/inf; keep them readable as strings.
    return v if math.isfinite(v) else str(v)

"""One call of `Trainer.fit`: the loop, read top to bottom in `Run.train`.

Per step: next batch -> jitted train step (state donated) -> `on_step_end`. Only at
intervals: pull the accumulated metrics to the host and log them (`log_every`),
evaluate (`eval_every`; the best model by `trainer.best.monitor` is kept then), plot
(`plot_every`), checkpoint (`checkpoint_every`). The non-finite check reads one
scalar of the state at those same points. At the end: `test`, on the best model when
one is tracked.
"""

import contextlib
import logging
import math
import time

import jax
import numpy as np

from ._best_model import BestModel
from ._checkpointer import Checkpointer
from ._config import flatten, to_dict
from ._early_stopping import EarlyStopping
from ._logger import Logger
from ._progress import Progress

log = logging.getLogger("nde.training")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf and `trainer.on_nan="stop"`."""


def host_metrics(metrics: dict) -> dict[str, float]:
    """Device (or host) scalars -> Python floats, in one transfer."""
    out = {}
    for name, value in jax.device_get(metrics).items():
        if np.ndim(value) != 0:
            raise ValueError(
                f"Metric {name!r} has shape {np.shape(value)}; metrics must be "
                "scalars (average them, e.g. jnp.mean)."
            )
        out[name] = float(value)
    return out


def _mean_over_steps(pending: list[dict]) -> dict[str, float]:
    rows = [host_metrics(m) for m in jax.device_get(pending)]
    out = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        out[name] = sum(values) if name == "skipped" else sum(values) / len(values)
    return out


def _due(step: int, every: int, last: bool) -> bool:
    return every > 0 and (step % every == 0 or last)


class Run:
    """The state of one `fit`: checkpointer, logger, progress, clocks."""

    def __init__(self, trainer):
        self.tr = trainer
        self.tc = trainer.config.trainer
        self.dev_run = self.tc.fast_dev_run > 0
        self.total = self.tc.fast_dev_run if self.dev_run else self.tc.steps
        self.main_process = jax.process_index() == 0
        self.ckpt: Checkpointer | None = None
        self.logger: Logger | None = None
        # Replaced in `_open`; silent, and writing nothing, until then.
        self.progress = Progress(self.total, mode="none")
        self.best = BestModel(self.tc.best)

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _open(self) -> None:
        tr, tc = self.tr, self.tc
        template, init = tr._setup()
        self.order = tr._batch_order()
        self.stopper = EarlyStopping(tc.early_stopping)
        self.best = tr._best = BestModel(
            tc.best,
            None if self.dev_run else tr.run_dir / "best",
            max_to_keep=tc.max_to_keep,
            async_save=tc.async_checkpointing,
        )
        self.start = 0
        if not self.dev_run:
            self.ckpt = Checkpointer(
                tr.run_dir / "checkpoints",
                max_to_keep=tc.max_to_keep,
                async_save=tc.async_checkpointing,
            )
            if tc.resume:
                self._resume(self.ckpt, template)
        if self.start == 0:
            tr.state = init()
        self.last_saved = self.start or None
        if not self.dev_run and self.main_process:
            # Events after the checkpoint were logged by the interrupted run and
            # are logged again now: drop the old ones.
            purge = self.start + 1 if self.start else None
            self.logger = Logger(tr.run_dir, purge_step=purge)
            self._write_config()
        self.progress = Progress(self.total, initial=self.start, mode=tc.progress)

    def __exit__(self, *exc):
        self.progress.close()
        for closable in (self.ckpt, self.best, self.logger):
            if closable is not None:
                closable.close()
        return False

    def _resume(self, ckpt: Checkpointer, template) -> None:
        restored = ckpt.restore(template)
        if restored is None:
            return
        self.tr.state, meta = restored
        self.start = int(meta["step"])
        for newer in [s for s in ckpt.steps() if s > self.start]:
            # Unreadable ones we fell back from: the run will save these steps anew.
            log.warning("Removing unreadable checkpoint %s", ckpt.path(newer))
            ckpt.delete(newer)
        if self.order is not None and meta.get("data_order"):
            self.order.load_state_dict(meta["data_order"])
        self.stopper.load_state_dict(meta.get("early_stopping", {}))
        self.best.restore(meta.get("best_model", {}), template.model, self.start)
        log.info("Resumed from step %d (%s)", self.start, ckpt.path(self.start))
        _log_config_changes(meta.get("config", {}), to_dict(self.tr.config))

    def _write_config(self) -> None:
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.structured(self.tr.config))
        (self.tr.run_dir / "config.yaml").write_text(text)

    # ---- the loop ---------------------------------------------------------------

    def train(self) -> None:
        tr, tc = self.tr, self.tc
        tr.should_stop = False
        tr.on_train_start(tr.state)
        self.final = {}
        pending, step = [], self.start
        self.clock, self.paused_s = (time.perf_counter(), self.start), 0.0
        for step in range(self.start + 1, self.total + 1):
            batch = tr._next_batch(self.order, step - 1)
            tr.state, metrics = tr._train_step(batch, tr.state)
            pending.append(metrics)
            tr.on_step_end(step, metrics)
            self.progress.update(step)
            if step == self.start + 1:
                self._time_first_step(metrics, step)
            last = step == self.total or tr.should_stop
            if step % tc.log_every == 0 or last:
                self._log_train(step, pending)
                pending = []
            if self._interval_work(step, last):
                break
        self._finish(step)

    def _interval_work(self, step: int, last: bool) -> bool:
        """Evaluate, plot and save when due; return whether training ends here."""
        tc = self.tc
        evaluate = _due(step, tc.eval_every, last) or (self.dev_run and last)
        plot = tc.plot_every > 0 and step % tc.plot_every == 0 and not last
        save = _due(step, tc.checkpoint_every, last)
        if not (evaluate or plot or save or last):
            return False
        with self._paused():
            if evaluate:
                self._eval(step)
                last = last or self.tr.should_stop
            if plot:
                self._plot(step)
            if save or last:
                self._save(step)
        return last

    @contextlib.contextmanager
    def _paused(self):
        # Evaluation, plots and saves are not training: keep them out of steps/s.
        jax.block_until_ready(self.tr.state)
        start = time.perf_counter()
        yield
        self.paused_s += time.perf_counter() - start

    def _time_first_step(self, metrics, step: int) -> None:
        # The first step includes compilation: time it on its own, so that
        # steps/s measures training only.
        jax.block_until_ready(metrics["loss"])
        now = time.perf_counter()
        self.first_step_s = now - self.clock[0]
        self.clock, self.paused_s = (now, step), 0.0

    def _log_train(self, step: int, pending: list) -> None:
        values = _mean_over_steps(pending)
        skipped = int(values.pop("skipped"))
        if skipped:
            self.progress.message(
                f"step {step}: skipped {skipped} update(s) with a non-finite loss or "
                f"gradient (trainer.on_nan=skip); {int(self.tr.state.num_skipped)} in "
                "all."
            )
        now = time.perf_counter()
        metrics = {k if "/" in k else f"train/{k}": v for k, v in values.items()}
        if self.tc.on_nan == "skip":
            metrics["train/skipped_steps"] = float(int(self.tr.state.num_skipped))
        if step > self.clock[1]:
            elapsed = now - self.clock[0] - self.paused_s
            metrics["time/steps_per_sec"] = (step - self.clock[1]) / elapsed
        if hasattr(self, "first_step_s"):
            metrics["time/first_step_s"] = self.first_step_s
            del self.first_step_s
        self.clock, self.paused_s = (now, step), 0.0
        self._log(step, metrics)
        self._check_finite(step)

    def _eval(self, step: int) -> None:
        metrics = self.tr._evaluate(step)
        if metrics:
            self._log(step, metrics)
            self.tr.on_eval_end(step, metrics)
        self.best.update(step, metrics, self.tr.model)
        if self.stopper.update(metrics):
            self.progress.message(
                f"Early stopping at step {step}: {self.stopper.config.monitor} has "
                f"not improved for {self.stopper.config.patience} evaluations "
                f"(best {self.stopper.best:.4g})."
            )
            self.tr.should_stop = True

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        self.final.update(metrics)
        self.tr.history.append({"step": step, **metrics})
        self.progress.report(step, self.final)
        if self.logger is not None:
            self.logger.log_metrics(metrics, step)

    def _plot(self, step: int) -> None:
        figure = self.tr.plot(self.tr.model)
        if figure is None or self.logger is None:
            return
        self.logger.log_figure("plot", figure, step)
        folder = self.tr.run_dir / "plots"
        folder.mkdir(exist_ok=True)
        figure.savefig(folder / f"step_{step:07d}.png", dpi=100)

    def _save(self, step: int) -> None:
        if self.ckpt is None or step == self.last_saved:
            return
        self._check_finite(step)
        meta = self.tr._meta(self.order, self.stopper, self.best)
        self.ckpt.save(step, self.tr.state, meta)
        self.last_saved = step

    def _check_finite(self, step: int) -> None:
        if self.tc.on_nan != "stop":
            return
        bad = int(self.tr.state.first_bad_step)
        if bad >= 0:
            raise NonFiniteLossError(self._nan_message(bad))

    def _nan_message(self, bad: int) -> str:
        cfg = self.tr.config
        steps = self._drop_checkpoints_from(bad - 1)
        kept = "no good checkpoint was saved before it"
        if steps and self.ckpt is not None:
            path = self.ckpt.path(steps[-1])
            kept = f"the last good checkpoint is step {steps[-1]} ({path})"
        return (
            f"The loss or its gradient became NaN/inf at step {bad} "
            f"(trainer.on_nan=stop): training stopped, and {kept}; `trainer.state` "
            f"holds the model the bad loss was computed with. Things to try: float64 "
            f"(trainer.x64=true); a lower learning rate (optimizer.lr={cfg.optimizer.lr}"
            f" now); tighter solver tolerances (ode.rtol={cfg.ode.rtol}, "
            f"ode.atol={cfg.ode.atol} now) or more solver steps (ode.max_steps="
            f"{cfg.ode.max_steps} now: a solve that runs out of steps returns inf); "
            f"gradient clipping (optimizer.clip_norm={cfg.optimizer.clip_norm} now); "
            "or trainer.on_nan=skip to drop such steps."
        )

    def _drop_checkpoints_from(self, first: int) -> list[int]:
        """Delete the checkpoints of steps >= `first`; return the remaining steps.

        The loss of step k is computed with the model saved as step k - 1, so when
        step k is non-finite, the checkpoint of step k - 1 holds the model that
        produced it: not one to resume from."""
        if self.ckpt is None:
            return []
        self.ckpt.wait()
        for step in self.ckpt.steps():
            if step >= first:
                self.ckpt.delete(step)
        return self.ckpt.steps()

    def _finish(self, step: int) -> None:
        tr = self.tr
        if step > self.start or self.dev_run:
            self._plot(step)
        if self.ckpt is not None:
            self.ckpt.wait()
        test = tr._test(step, self._test_model())
        if test:
            self._log(step, test)
        if self.logger is not None:
            finals = {k: v for k, v in self.final.items() if math.isfinite(v)}
            self.logger.log_hyperparams(flatten(to_dict(tr.config)), finals)
        summary = " | ".join(
            f"{k} {v:.4g}"
            for k, v in self.final.items()
            if k.endswith("loss") or k.startswith("test/")
        )
        where = "" if self.dev_run else f" | {tr.run_dir}"
        self.progress.message(f"Finished at step {step} | {summary}{where}")
        tr.on_train_end(tr.state)

    def _test_model(self):
        """The best model when one is tracked (and found), else the last."""
        best, name = self.best, self.tc.best.monitor
        if name is None:
            return self.tr.model
        if best.model is None:
            self.progress.message(
                f"trainer.best.monitor={name!r} never had a finite value: testing "
                "the last model."
            )
            return self.tr.model
        self.progress.message(
            f"Best model by {name}: step {best.step} ({name} {best.value:.4g}); "
            "the test runs on it."
        )
        return best.model


def _log_config_changes(saved: dict, current: dict) -> None:
    before, after = flatten(saved), flatten(current)
    changed = [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]
    if changed:
        log.info("Config differs from the checkpoint's: %s", "; ".join(changed))

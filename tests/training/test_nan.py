"""Non-finite losses: `trainer.on_nan="stop"` keeps the last good state and
checkpoint and says what to try; `"skip"` drops those updates and goes on.

The tiny trainer's `data.nan_after` adds `sqrt(threshold - max(bias))` to the loss:
minimising it pushes the bias up until it passes the threshold, and from then on
the loss is NaN (deterministically, a few steps in)."""

import dataclasses
import math

import numpy as np
import pytest
from tiny_trainer import TinyConfig, TinyTrainer

from nde.training import Checkpointer, NonFiniteLossError


def nan_config(on_nan: str) -> TinyConfig:
    config = TinyConfig()
    config.data.nan_after = 0.3
    config.trainer = dataclasses.replace(
        config.trainer,
        steps=20,
        on_nan=on_nan,
        log_every=5,  # the failure is noticed at the next log, not at once
        checkpoint_every=2,
        eval_every=0,
    )
    return config


def test_stop_keeps_last_good_state_and_checkpoint(tmp_path):
    trainer = TinyTrainer(nan_config("stop"), run_dir=tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    bad = int(trainer.state.first_bad_step)
    assert 1 < bad <= 20
    message = str(info.value)
    assert f"NaN/inf at step {bad} (trainer.on_nan=stop)" in message
    for advice in ("trainer.x64=true", "optimizer.lr=0.05", "ode.rtol=", "max_steps"):
        assert advice in message
    # The loss of step k is computed with the model after step k - 1: checkpoints
    # from step bad - 1 on hold a model with a NaN loss, and are gone.
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert saved and max(saved) < bad - 1
    assert f"last good checkpoint is step {max(saved)}" in message
    good = Checkpointer(tmp_path / "checkpoints")
    state, _ = good.restore(trainer.state)
    good.close()
    assert max(np.asarray(state.model.bias)) < 0.3  # its loss is finite
    # Training froze at the first bad step: the model in memory is the one whose
    # loss was NaN (to inspect), not a later one.
    assert max(np.asarray(trainer.model.bias)) > 0.3
    # Noticed at the next checkpoint (every 2 steps), every update from the bad
    # step on dropped.
    steps = int(trainer.state.step)
    assert bad <= steps <= bad + 1
    assert int(trainer.state.num_skipped) == steps - bad + 1


def test_skip_drops_bad_updates_and_finishes(tmp_path):
    config = nan_config("skip")
    config.trainer = dataclasses.replace(config.trainer, log_every=1)
    trainer = TinyTrainer(config, run_dir=tmp_path)
    trainer.fit()
    assert int(trainer.state.step) == 20
    losses = [h["train/loss"] for h in trainer.history if "train/loss" in h]
    skipped = [i + 1 for i, x in enumerate(losses) if not math.isfinite(x)]
    assert skipped  # the threshold was crossed ...
    assert int(trainer.state.num_skipped) == len(skipped)  # ... and each one skipped
    assert trainer.history[-1]["train/skipped_steps"] == len(skipped)
    # Every bad step was dropped, so the model stays where the first NaN appeared.
    assert np.isfinite(np.asarray(trainer.model.bias)).all()
    assert np.isfinite(np.asarray(trainer.model.weight)).all()

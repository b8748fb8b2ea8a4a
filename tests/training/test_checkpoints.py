"""Checkpoints: exact resume, a SIGKILL at any moment (also during a save), corrupt
and incompatible checkpoints."""

import dataclasses
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_trainer import Linear, TinyConfig, TinyTrainer
from trainer_helpers import ROOT, TINY, read_events, read_jsonl

from nde.training import Checkpointer, CheckpointError


def tiny_config(**trainer) -> TinyConfig:
    config = TinyConfig()
    config.trainer = dataclasses.replace(config.trainer, **trainer)
    return config


def per_step_losses(history) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in history if "train/loss" in h}


class Interrupted(Exception):
    pass


class StopsAtFive(TinyTrainer):
    def on_step_end(self, step, metrics):
        if step == 5:
            raise Interrupted  # after the checkpoint of step 3 and the log of step 4


def arrays(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


def test_resume_is_exact(tmp_path):
    config = tiny_config()
    whole = TinyTrainer(config, run_dir=tmp_path / "whole")
    whole.fit()

    with pytest.raises(Interrupted):
        StopsAtFive(config, run_dir=tmp_path / "cut").fit()
    resumed = TinyTrainer(config, run_dir=tmp_path / "cut")
    resumed.fit()

    # Steps 4-6 of the resumed run repeat the uninterrupted run bit for bit: the
    # model, optimizer state, key and data order all came back from step 3.
    expected = per_step_losses(whole.history)
    assert per_step_losses(resumed.history) == {s: expected[s] for s in (4, 5, 6)}
    for a, b in zip(arrays(resumed.model), arrays(whole.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # The run's logs hold each step once, from 1 to 6: what the interrupted run had
    # logged after its last checkpoint (step 4) was replaced by the resumed run.
    logged = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert per_step_losses(logged) == expected
    events = read_events(tmp_path / "cut" / "tb")
    assert sorted(s for s, _ in events["train/loss"]) == [1, 2, 3, 4, 5, 6]


def test_resume_within_the_same_second_keeps_the_first_runs_events(
    tmp_path, monkeypatch
):
    """tensorboardX names an event file by the second it was opened: a run resumed
    in the second its predecessor stopped (common for small runs) must not reopen,
    and overwrite, the first file."""
    import tensorboardX.event_file_writer as event_file_writer

    from nde.training._logger import Logger

    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.5)
    first = Logger(tmp_path)
    for step in (1, 2, 3):
        first.log_metrics({"train/loss": float(step)}, step)
    first.close()
    second = Logger(tmp_path, purge_step=3)
    second.log_metrics({"train/loss": 30.0}, 3)
    second.close()
    assert len(list((tmp_path / "tb").iterdir())) == 2
    events = read_events(tmp_path / "tb")
    assert events["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_corrupt_checkpoint_falls_back_then_fails_clearly(tmp_path):
    trainer = TinyTrainer(tiny_config(), run_dir=tmp_path)
    trainer.fit()
    ckpt_dir = tmp_path / "checkpoints"
    for path in (ckpt_dir / "6" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")

    resumed = TinyTrainer(tiny_config(steps=7), run_dir=tmp_path)
    with pytest.warns(UserWarning, match=rf"{ckpt_dir / '6'} is unreadable.*previous"):
        resumed.fit()
    # It went back to step 3 and trained steps 4 to 7 again.
    assert [h["step"] for h in resumed.history if "train/loss" in h] == [4, 5, 6, 7]

    for step in ("3", "6", "7"):
        for path in (ckpt_dir / step / "state").rglob("*"):
            if path.is_file():
                path.write_bytes(b"garbage")
    checkpointer = Checkpointer(ckpt_dir)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as info:
        checkpointer.restore(resumed.state)
    checkpointer.close()
    message = str(info.value)
    assert f"No readable checkpoint in {ckpt_dir}" in message
    assert str(ckpt_dir / "7") in message and str(ckpt_dir / "3") in message
    assert "trainer.resume=false" in message


class Wider(TinyTrainer):
    def make_model(self, *, key):
        return Linear(jax.numpy.zeros((2, 2)), jax.numpy.zeros((3,)))


def test_incompatible_checkpoint_names_path_and_leaf(tmp_path):
    TinyTrainer(tiny_config(fast_dev_run=0, steps=3), run_dir=tmp_path).fit()
    with pytest.raises(CheckpointError) as info:
        Wider(tiny_config(), run_dir=tmp_path).fit()
    message = str(info.value)
    assert (
        f"Checkpoint {tmp_path / 'checkpoints' / '3'} does not fit this run" in message
    )
    assert ".model.bias is saved with shape (2,)" in message
    assert "current run has shape (3,)" in message


def _complete_steps(ckpt_dir: pathlib.Path) -> set[int]:
    return {int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()}


def _saving(ckpt_dir: pathlib.Path) -> bool:
    return any("tmp" in p.name for p in ckpt_dir.iterdir())


@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_from_last_complete_checkpoint(
    tmp_path, cache_dir
):
    run_dir, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    command = [
        sys.executable,
        "-m",
        "nde.train",
        f"recipe={TINY}",
        f"hydra.run.dir={run_dir}",
        "trainer.steps=100000",
        "trainer.checkpoint_every=1",  # a save every step: kills land in saves
        "trainer.max_to_keep=2",
        "trainer.eval_every=0",
        f"trainer.compilation_cache={cache_dir}",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    rng = random.Random(0)

    outputs = []

    def start():
        outputs.append(tmp_path / f"output{len(outputs)}.txt")
        with open(outputs[-1], "w") as out:  # a file: a full pipe would block it
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)

    def kill_when(ready, proc):
        deadline = time.monotonic() + 180
        while not ready():
            assert proc.poll() is None, outputs[-1].read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        logged = read_jsonl(run_dir / "metrics.jsonl", tolerant=True)
        return _complete_steps(ckpt_dir), logged

    # 1. Killed in the middle of a save (its temporary directory exists).
    proc = start()
    steps, logged_before = kill_when(
        lambda: (
            ckpt_dir.exists()
            and len(_complete_steps(ckpt_dir)) >= 2
            and _saving(ckpt_dir)
        ),
        proc,
    )
    # 2. Restarted: resumes from the newest complete checkpoint; killed again at a
    # random moment.
    proc = start()
    marker = time.monotonic()
    steps2, logged_between = kill_when(
        lambda: (
            time.monotonic() > marker + 8 + rng.uniform(0, 2)
            and max(_complete_steps(ckpt_dir)) > max(steps) + 3
        ),
        proc,
    )
    output = outputs[-1].read_text()
    assert f"Resumed from step {max(steps)}" in output, output[-3000:]

    # 3. Restarted with a near end: it resumes again and finishes.
    last = max(steps2) + 3
    done = subprocess.run(
        [*command[:5], f"trainer.steps={last}", *command[6:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Resumed from step {max(steps2)}" in done.stdout + done.stderr
    assert max(_complete_steps(ckpt_dir)) == last

    # Every step is logged once, and the steps that were run twice (after a
    # checkpoint, before a kill) gave the same losses both times.
    final = per_step_losses(read_jsonl(run_dir / "metrics.jsonl"))
    assert sorted(final) == list(range(1, last + 1))
    for earlier in (logged_before, logged_between):
        for step, loss in per_step_losses(earlier).items():
            assert final[step] == loss, step

"""Model selection: the best model by a monitored validation metric
(`trainer.best`), the test on it, its exact resume, and its errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_trainer import Linear, TinyConfig, TinyTrainer

from nde.training import BestModelConfig, Checkpointer, TrainerConfig
from nde.training._best_model import BestModel

# A validation score per step, best (lowest) at step 4: after the checkpoint of
# step 3 and before the interruption at step 5 below, and not the last step.
SCORES = {1: 5.0, 2: 3.0, 3: 4.0, 4: 1.0, 5: 2.0, 6: 6.0}


def tiny_config(monitor: str | None = "val/score", **trainer) -> TinyConfig:
    config = TinyConfig()
    trainer = {"eval_every": 1, "best": BestModelConfig(monitor), **trainer}
    config.trainer = dataclasses.replace(config.trainer, **trainer)
    return config


def arrays(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model)]


def assert_same(a, b) -> None:
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bit for bit


def host_copy(model):
    # Copied on the device first: reading an array itself to the host caches a view
    # of its buffer, which then cannot be donated to the next step, and that would
    # hide what the best model's own copy guards against.
    return jax.tree_util.tree_map(lambda x: np.asarray(jnp.copy(x)), model)


class Scored(TinyTrainer):
    """Evaluates to a fixed score per step; snapshots the model at every evaluation
    (on the host: the device buffers are donated to the next step); tests the
    model it is given."""

    def evaluate(self, model, *, key):
        assert self.state is not None
        step = int(self.state.step)
        self.snapshots = {**getattr(self, "snapshots", {}), step: host_copy(model)}
        return {**super().evaluate(model, key=key), "score": SCORES[step]}

    def test(self, model, *, key):
        loss, _ = self.loss(model, self.data.val, key=key)
        return {"loss": float(loss), "weight_sum": float(jnp.sum(model.weight))}

    def on_train_start(self, state):
        self.best_at_start = (self.best_step, host_copy(self.best_model))


def test_best_model_is_the_model_of_the_best_evaluation_and_is_tested(tmp_path):
    trainer = Scored(tiny_config(), run_dir=tmp_path)
    model = trainer.fit()

    assert trainer.best_step == 4
    assert_same(trainer.best_model, trainer.snapshots[4])
    assert model is trainer.model  # fit returns the last model ...
    assert not np.array_equal(model.weight, trainer.best_model.weight)
    # ... and the test ran on the best one.
    (tested,) = [h for h in trainer.history if "test/weight_sum" in h]
    assert tested["step"] == 6
    assert tested["test/weight_sum"] == float(jnp.sum(trainer.snapshots[4].weight))
    # On disk: the best model (the newest step of best/), and the step-2 one that
    # the checkpoint of step 3 recorded.
    best = Checkpointer(tmp_path / "best")
    assert best.steps() == [2, 4]
    restored = best.restore(trainer.best_model)
    assert restored is not None
    model_on_disk, meta = restored
    best.close()
    assert_same(model_on_disk, trainer.best_model)
    assert meta["value"] == 1.0 and meta["monitor"] == "val/score"


class Interrupted(Exception):
    pass


class StopsAtFive(Scored):
    def on_step_end(self, step, metrics):
        if step == 5:
            raise Interrupted  # after the checkpoint of step 3 and the new best at 4


def test_resume_restores_the_best_model_and_tests_the_same(tmp_path):
    config = tiny_config()
    whole = Scored(config, run_dir=tmp_path / "whole")
    whole.fit()
    with pytest.raises(Interrupted):
        StopsAtFive(config, run_dir=tmp_path / "cut").fit()
    cut_best = Checkpointer(tmp_path / "cut" / "best")
    assert cut_best.steps() == [2, 4]
    cut_best.close()
    resumed = Scored(config, run_dir=tmp_path / "cut")
    resumed.fit()

    # The resumed run starts from the checkpoint of step 3: its best model is the
    # one of step 2 (from best/, not the interrupted run's later step 4) ...
    step, model = resumed.best_at_start
    assert step == 2
    assert_same(model, whole.snapshots[2])
    # ... and it ends as the uninterrupted run did, test metrics included.
    assert resumed.best_step == whole.best_step == 4
    assert_same(resumed.best_model, whole.best_model)
    tests = [
        {k: v for h in t.history for k, v in h.items() if k.startswith("test/")}
        for t in (whole, resumed)
    ]
    assert tests[0] == tests[1] and len(tests[0]) == 2


def test_fast_dev_run_and_tracking_rules(tmp_path):
    # fast_dev_run: tracked in memory, nothing written. (Nothing else reads the
    # model to the host here, so its buffers are donated to the next step: the best
    # model must be a copy.)
    trainer = Scored(tiny_config(fast_dev_run=6), run_dir=tmp_path / "never")
    trainer.fit()
    assert trainer.best_step == 4
    assert_same(trainer.best_model, trainer.snapshots[4])
    assert not (tmp_path / "never").exists()
    # Not tracking: no best model.
    off = TinyTrainer(tiny_config(None, fast_dev_run=1), run_dir=tmp_path / "never")
    off.fit()
    assert off.best_model is None and off.best_step is None

    # NaN and inf never improve; mode=max.
    best = BestModel(BestModelConfig("val/x", mode="max"))
    model = Linear(jnp.zeros((2, 2)), jnp.zeros(2))
    values = [math.nan, 1.0, math.inf, math.nan, 3.0, 2.0]
    improved = [best.update(i, {"val/x": v}, model) for i, v in enumerate(values)]
    assert improved == [False, True, False, False, True, False]
    assert (best.step, best.value) == (4, 3.0)


def test_config_and_metric_errors(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.best.mode='up' is not one of"):
        BestModelConfig("val/loss", mode="up")
    with pytest.raises(ValueError, match=r"needs evaluations: set trainer.eval_every"):
        TrainerConfig(eval_every=0, best=BestModelConfig("val/loss"))
    trainer = TinyTrainer(tiny_config("val/nope", fast_dev_run=1), run_dir=tmp_path)
    with pytest.raises(
        ValueError,
        match=r"trainer.best.monitor='val/nope' is not a metric returned by "
        r"evaluate; it returned: val/loss, val/mae, ",
    ):
        trainer.fit()

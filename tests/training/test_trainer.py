"""The Trainer end to end on a tiny subclass: the loop, the compile-once step, what
is logged and written, seeds, x64, fast_dev_run, early stopping, hooks, and the
errors of a broken subclass."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from tiny_trainer import TinyConfig, TinyTrainer
from trainer_helpers import read_events, read_jsonl

import nde
from nde.training import EarlyStoppingConfig
from nde.training._early_stopping import EarlyStopping


def tiny_config(**trainer) -> TinyConfig:
    config = TinyConfig()
    config.trainer = dataclasses.replace(config.trainer, **trainer)
    return config


def losses(trainer) -> list[float]:
    return [h["train/loss"] for h in trainer.history if "train/loss" in h]


def test_fit_end_to_end(tmp_path):
    trainer = TinyTrainer(tiny_config(), run_dir=tmp_path)
    model = trainer.fit()

    # One compilation for all 6 steps: the step is traced once, never again.
    assert trainer.num_compiles == 1
    assert model is trainer.state.model and int(trainer.state.step) == 6
    assert model.weight.dtype == jnp.float64  # trainer.x64=True

    train = [h for h in trainer.history if "train/loss" in h]
    assert [h["step"] for h in train] == [1, 2, 3, 4, 5, 6]
    assert losses(trainer)[-1] < losses(trainer)[0]
    # t in [0, 1] with dt0 = 0.25: exactly four Euler steps per solve, none rejected.
    assert all(h["solve/num_steps"] == 4.0 for h in train)
    assert all(h["solve/num_rejected_steps"] == 0.0 for h in train)
    assert all(h["optim/lr"] == pytest.approx(0.05) for h in train)
    assert all(h["optim/grad_norm"] > 0 for h in train)
    assert all(h["time/steps_per_sec"] > 0 for h in train[1:])
    assert "time/first_step_s" in train[0]
    val = [h for h in trainer.history if "val/loss" in h]
    assert [h["step"] for h in val] == [3, 6]
    assert val[0]["val/solve/num_steps"] == 4.0

    # The run directory: config, metrics, checkpoints, events, plot.
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved == dataclasses.asdict(trainer.config)
    assert read_jsonl(tmp_path / "metrics.jsonl") == trainer.history
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
    assert (tmp_path / "plots" / "step_0000006.png").stat().st_size > 1000
    events = read_events(tmp_path / "tb")
    for tag in (
        "train/loss",
        "train/mae",
        "val/loss",
        "optim/lr",
        "optim/grad_norm",
        "solve/num_steps",
        "solve/num_rejected_steps",
        "time/steps_per_sec",
    ):
        assert tag in events, tag
    assert [s for s, _ in events["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert events["train/loss"][-1][1] == pytest.approx(losses(trainer)[-1])
    assert events["plot"] == [(6, "image")]
    hparams = read_events(tmp_path / "tb" / "hparams")
    assert any(tag.startswith("_hparams_") for tag in hparams)
    assert hparams["train/loss"] == [(0, pytest.approx(losses(trainer)[-1]))]


def test_same_seed_same_run_and_fast_dev_run(tmp_path):
    def run(seed):
        config = tiny_config(fast_dev_run=3)
        config.seed = seed
        trainer = TinyTrainer(config, run_dir=tmp_path / "never")
        trainer.fit()
        return losses(trainer)

    first = run(0)
    assert run(0) == first  # bit for bit
    assert len(first) == 3
    assert not (tmp_path / "never").exists()  # fast_dev_run writes nothing


class Recording(TinyTrainer):
    def on_train_start(self, state):
        self.calls = [("start", int(state.step))]

    def on_step_end(self, step, metrics):
        self.calls.append(("step", step))
        assert isinstance(metrics["loss"], jax.Array)  # not pulled to the host

    def on_eval_end(self, step, metrics):
        self.calls.append(("eval", step, sorted(metrics)[0]))

    def on_train_end(self, state):
        self.calls.append(("end", int(state.step)))


def test_hooks_early_stopping_and_float32(tmp_path):
    # Improving by 1e9 is impossible: the second evaluation (step 6 of 60) stops.
    stop = EarlyStoppingConfig(monitor="val/loss", patience=1, min_delta=1e9)
    config = tiny_config(steps=60, early_stopping=stop, x64=False)
    trainer = Recording(config, run_dir=tmp_path)
    trainer.fit()
    steps = [("step", i) for i in range(1, 7)]
    assert trainer.calls == [
        ("start", 0),
        *steps[:3],
        ("eval", 3, "val/loss"),
        *steps[3:],
        ("eval", 6, "val/loss"),
        ("end", 6),
    ]
    assert int(trainer.state.step) == 6
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 6]
    # trainer.x64=False trains in float32, within fit only: the test process keeps
    # its float64 default.
    assert trainer.model.weight.dtype == jnp.float32
    assert jnp.zeros(()).dtype == jnp.float64
    assert np.isfinite(losses(trainer)).all()


def test_early_stopping_rules():
    stopper = EarlyStopping(EarlyStoppingConfig(monitor="val/mse", patience=2))
    with pytest.raises(
        ValueError, match=r"monitor='val/mse' is not a metric.*val/loss"
    ):
        stopper.update({"val/loss": 1.0})
    assert [stopper.update({"val/mse": v}) for v in (3.0, 2.0, 2.0, 1.0, 5.0, 5.0)] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert stopper.best == 1.0
    up = EarlyStopping(EarlyStoppingConfig(monitor="acc", mode="max", patience=1))
    assert [up.update({"acc": v}) for v in (0.5, 0.6, 0.6)] == [False, False, True]


class ScalarLoss(TinyTrainer):
    def loss(self, model, batch, *, key):
        return jnp.sum(model.weight)


class VectorLoss(TinyTrainer):
    def loss(self, model, batch, *, key):
        return model.weight, {}


class NotAModule(TinyTrainer):
    def make_model(self, *, key):
        return jnp.zeros(2)


class BadData(TinyTrainer):
    def make_data(self, *, key):
        return np.zeros((4, 2))


class Incomplete(nde.Trainer):
    def make_model(self, *, key):
        return eqx.nn.Linear(1, 1, key=key)


@pytest.mark.parametrize(
    "cls, error, match",
    [
        (ScalarLoss, ValueError, r"must return a pair \(loss, metrics\)"),
        (VectorLoss, ValueError, r"loss has shape \(2, 2\)"),
        (NotAModule, TypeError, "make_model must return an eqx.Module"),
        (BadData, TypeError, "make_data must return an nde.training.Dataset"),
    ],
)
def test_contract_errors(tmp_path, cls, error, match):
    with pytest.raises(error, match=match):
        cls(tiny_config(fast_dev_run=1), run_dir=tmp_path).fit()


def test_abstract_methods_and_config_type():
    with pytest.raises(TypeError, match="abstract method.*loss"):
        Incomplete()
    with pytest.raises(TypeError, match="config must be an instance of TinyConfig"):
        TinyTrainer({"seed": 0})


def test_batch_and_device_errors(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.batch_size=64 is larger"):
        TinyTrainer(tiny_config(batch_size=64), run_dir=tmp_path).fit()
    with pytest.raises(ValueError, match=r"trainer.devices=5, but JAX sees 1"):
        TinyTrainer(tiny_config(devices=5), run_dir=tmp_path).fit()


def test_import_nde_stays_light():
    from trainer_helpers import run_python

    code = (
        "import sys, nde; heavy = ['optax', 'orbax.checkpoint', 'tensorboardX', "
        "'hydra', 'matplotlib']; print([m for m in heavy if m in sys.modules]); "
        "nde.Trainer; print('orbax.checkpoint' in sys.modules)"
    )
    out = run_python(["-c", code]).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "False"


class TinyWithTestSet(TinyTrainer):
    def test(self, model, *, key):
        # Test metrics: the validation set's loss under another name, and a value
        # that shows which model was tested (the final one).
        loss, _ = self.loss(model, self.data.val, key=key)
        return {"loss": float(loss), "weight_sum": float(jnp.sum(model.weight))}


def test_test_metrics_logged_once_at_the_end(tmp_path):
    trainer = TinyWithTestSet(tiny_config(), run_dir=tmp_path)
    model = trainer.fit()
    tested = [h for h in trainer.history if any(k.startswith("test/") for k in h)]
    assert len(tested) == 1 and tested[0]["step"] == 6
    assert tested[0]["test/weight_sum"] == pytest.approx(float(jnp.sum(model.weight)))
    assert tested[0]["test/loss"] == pytest.approx(trainer.history[-2]["val/loss"])
    assert read_jsonl(tmp_path / "metrics.jsonl") == trainer.history
    events = read_events(tmp_path / "tb")
    assert [s for s, _ in events["test/loss"]] == [6]

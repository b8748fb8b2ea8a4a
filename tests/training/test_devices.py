"""Data parallelism: two (simulated) CPU devices give the same training as one.

JAX fixes its device count at start-up, so this runs in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`. The batch (8 series) is split
4 + 4 over a 1-D mesh and the model replicated; the gradient is then a sum over
devices, a different order of additions than on one device, so the runs agree to
rounding (float64: 1e-12 relative), not bit for bit."""

import json

import numpy as np
import pytest
from trainer_helpers import run_python

SCRIPT = r"""
import dataclasses, json, sys
import jax
import numpy as np
sys.path.insert(0, "tests/training")
from tiny_trainer import TinyConfig, TinyTrainer

def fit(devices):
    config = TinyConfig()
    config.trainer = dataclasses.replace(
        config.trainer, fast_dev_run=4, devices=devices, progress="none")
    trainer = TinyTrainer(config)
    trainer.fit()
    shardings = {
        "model": str(trainer.model.weight.sharding.spec),
        "model_devices": len(trainer.model.weight.sharding.device_set),
        "mesh": trainer.parallel.num_devices,
    }
    losses = [h["train/loss"] for h in trainer.history if "train/loss" in h]
    leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(trainer.model)]
    return {"losses": losses, "leaves": leaves, **shardings}

try:
    config = TinyConfig()
    config.trainer = dataclasses.replace(config.trainer, batch_size=7, fast_dev_run=1)
    TinyTrainer(config).fit()
    odd = "no error"
except ValueError as e:
    odd = str(e)
print(json.dumps({"devices": len(jax.devices()), "one": fit(1), "two": fit(None),
                  "odd": odd}))
"""


@pytest.mark.slow
def test_two_devices_match_one():
    flags = "--xla_force_host_platform_device_count=2"
    out = run_python(["-c", SCRIPT], env={"XLA_FLAGS": flags}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    one, two = result["one"], result["two"]
    assert result["devices"] == 2
    assert (one["mesh"], two["mesh"]) == (1, 2)
    assert two["model_devices"] == 2  # replicated on both
    assert len(one["losses"]) == 4
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-12)
    for a, b in zip(one["leaves"], two["leaves"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    assert "batch_size=7 does not split evenly over 2 devices" in result["odd"]

"""The command line `python -m nde.train`: a 2-step smoke run of every registered
recipe, a user's recipe file with a sweep, and the errors of a bad command."""

import json

import pytest
import yaml
from trainer_helpers import TINY, read_events, read_jsonl, run_python

import recipes
from nde import train


@pytest.mark.slow
@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_smoke(tmp_path, cache_dir, name):
    run_dir = tmp_path / name
    run_python(
        [
            "-m",
            "nde.train",
            f"recipe={name}",
            "trainer.steps=2",
            "trainer.log_every=1",
            "trainer.eval_every=2",
            "trainer.checkpoint_every=2",
            "trainer.progress=plain",
            f"trainer.compilation_cache={cache_dir}",
            f"hydra.run.dir={run_dir}",
            *recipes.smoke_overrides(name),
        ],
        # The smoke run checks the wiring (config, checkpoints, logs), not numbers or
        # speed: XLA's backend without its LLVM optimisations compiles the recipe's
        # programs about a quarter faster.
        env={"XLA_FLAGS": "--xla_backend_optimization_level=0"},
        timeout=300,
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["recipe"] == name and config["trainer"]["steps"] == 2
    assert (run_dir / ".hydra" / "overrides.yaml").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["2"]
    logged = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in logged if "train/loss" in r] == [1, 2]
    assert "val/loss" in logged[-1] or "val/loss" in logged[-2]
    events = read_events(run_dir / "tb")
    assert [s for s, _ in events["train/loss"]] == [1, 2]


@pytest.mark.slow
def test_user_recipe_file_and_sweep(tmp_path, cache_dir):
    result = run_python(
        [
            "-m",
            "nde.train",
            "-m",
            f"recipe={TINY}",
            "seed=0,1",
            "trainer.steps=2",
            "trainer.eval_every=0",
            f"trainer.compilation_cache={cache_dir}",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    assert "#0 : recipe=" in result.stdout + result.stderr
    losses = []
    for job, seed in (("0", 0), ("1", 1)):
        config = yaml.safe_load((tmp_path / job / "config.yaml").read_text())
        assert config["seed"] == seed and config["recipe"] == str(TINY)
        assert [p.name for p in (tmp_path / job / "checkpoints").iterdir()] == ["2"]
        losses.append(read_jsonl(tmp_path / job / "metrics.jsonl")[0]["train/loss"])
    assert losses[0] != losses[1]  # the seeds differ


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


def test_missing_and_unknown_recipe(capsys):
    code, out = run_main([], capsys)
    assert code == 2 and "recipe=NAME is required" in out and "neural_ode" in out
    code, out = run_main(["recipe=nonexistent"], capsys)
    assert code == 2 and "Unknown recipe 'nonexistent'. Registered: " in out
    assert "neural_ode" in out.split("Registered: ")[1]
    code, out = run_main(["recipe=no/such/file.py"], capsys)
    assert code == 2 and "no such file" in out
    code, out = run_main(["-m", "recipe=neural_ode,other"], capsys)
    assert code == 2 and "sweep one recipe at a time" in out
    train.main(["--help"])
    assert "usage: python -m nde.train recipe=NAME" in capsys.readouterr().out


ERRORS = [
    # Hydra's own checks against the structured config:
    ("trainer.stepz=3", "Key 'stepz' not in 'TrainerConfig'"),
    ("trainer.steps=many", "Value 'many' of type 'str' could not be converted"),
    ("ode.rtol=[1]", "ode.rtol"),
    # ours, in the dataclasses and the name tables:
    ("trainer.on_nan=maybe", "trainer.on_nan='maybe' is not one of 'stop', 'skip'"),
    ("optimizer.name=sgd", "optimizer.name='sgd' is not one of 'adam'"),
    ("trainer.best.mode=up", "trainer.best.mode='up' is not one of 'min', 'max'"),
    ("solver=rk99", "Unknown solver 'rk99'. Available: euler, heun"),
    ("adjoint=backsolv", "Unknown adjoint 'backsolv'. Available:"),
]

# Hydra configures logging in the process it runs in (handlers on the streams of
# the moment), which outlives a pytest capture: run the commands in a subprocess,
# all in one to start Python once.
ERRORS_SCRIPT = r"""
import contextlib, io, json, sys
from nde import train
out = []
for argv in json.loads(sys.argv[1]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            train.main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    out.append([code, buffer.getvalue()])
print(json.dumps(out))
"""


def test_config_errors(tmp_path):
    argvs = [
        [f"recipe={TINY}", override, f"hydra.run.dir={tmp_path / str(i)}"]
        for i, (override, _) in enumerate(ERRORS)
    ]
    result = run_python(["-c", ERRORS_SCRIPT, json.dumps(argvs)])
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    for i, ((override, expected), (code, out)) in enumerate(
        zip(ERRORS, outputs, strict=True)
    ):
        assert code == 1, (override, out)
        assert expected in out, (override, out)
        assert not (tmp_path / str(i) / "checkpoints").exists()  # nothing ran

"""The command line: `python -m nde.train recipe=NAME [key=value ...]`.

    python -m nde.train recipe=neural_ode trainer.steps=2000 optimizer.lr=3e-3 \\
        solver=dopri5 adjoint=backsolve seed=1
    python -m nde.train -m recipe=neural_ode seed=0,1,2        # a sweep
    python -m nde.train recipe=path/to/my_recipe.py            # your own recipe
    python -m nde.train recipe=neural_ode --cfg job            # print the config

`recipe` picks a `nde.Trainer` subclass (see `recipes/`); its config dataclass is
the Hydra structured config, so every other argument is checked against it (an
unknown key or a wrong type is an error before anything runs). Each run gets a
directory, by default `runs/<recipe>/<date>_<time>/` (`hydra.run.dir=...` to
choose), holding `config.yaml` (the resolved config), `checkpoints/`, `tb/`
(TensorBoard events), `metrics.jsonl`, `plots/` and Hydra's own `.hydra/` and log.
Rerunning with the same `hydra.run.dir` resumes from its latest checkpoint.
"""

import logging
import pathlib
import sys
from typing import NoReturn

USAGE = """usage: python -m nde.train recipe=NAME [key=value ...] [hydra options]

  recipe=NAME            a registered recipe: {names}
  recipe=path/to/file.py a file defining a nde.Trainer subclass
  recipe=package.module  a module defining one (optionally :ClassName)

Then any config value, e.g. trainer.steps=2000 optimizer.lr=3e-3 solver=dopri5
adjoint=backsolve seed=1; `-m seed=0,1,2` sweeps; `--cfg job` prints the config;
`--help` after recipe=NAME lists its options."""


def _recipe_spec(argv: list[str]) -> str | None:
    for arg in argv:
        key, eq, value = arg.lstrip("+").partition("=")
        if eq and key == "recipe":
            return value
    return None


def _recipe_stem(spec: str) -> str:
    module = spec.partition(":")[0]
    if module.endswith(".py"):
        return pathlib.Path(module).stem
    return module.rpartition(".")[2]


def _with_run_dirs(argv: list[str], stem: str) -> list[str]:
    """Hydra's output directories under `runs/<recipe>/`, unless given."""
    given = {a.lstrip("+").partition("=")[0] for a in argv}
    defaults = {
        "hydra.run.dir": f"runs/{stem}/${{now:%Y-%m-%d_%H-%M-%S}}",
        "hydra.sweep.dir": f"runs/{stem}/multirun_${{now:%Y-%m-%d_%H-%M-%S}}",
        "hydra.sweep.subdir": "${hydra.job.num}",
    }
    return argv + [f"{k}={v}" for k, v in defaults.items() if k not in given]


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with `argv` (default `sys.argv[1:]`)."""
    import recipes

    argv = list(sys.argv[1:] if argv is None else argv)
    spec = _recipe_spec(argv)
    if spec is None:
        usage = USAGE.format(names=", ".join(recipes.names()))
        if {"-h", "--help"} & set(argv):
            print(usage)
            return
        _fail(f"recipe=NAME is required.\n\n{usage}")
    if "," in spec:
        _fail(f"recipe={spec}: sweep one recipe at a time (one command per recipe).")
    try:
        trainer_cls = recipes.load(spec)
    except ValueError as e:
        _fail(str(e))
    _run_hydra(trainer_cls, _with_run_dirs(argv, _recipe_stem(spec)))


def _run_hydra(trainer_cls, argv: list[str]) -> None:
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="nde_train", node=trainer_cls.config_class)

    @hydra.main(version_base="1.3", config_path=None, config_name="nde_train")
    def task(cfg) -> dict:
        # Hydra shows INFO records of every library; JAX's search for TPUs and GPUs
        # at start-up is not news.
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
        config = OmegaConf.to_object(cfg)
        run_dir = HydraConfig.get().runtime.output_dir
        trainer = trainer_cls(config, run_dir=run_dir)
        trainer.fit()
        return {k: v for h in trainer.history for k, v in h.items()}

    saved = sys.argv
    sys.argv = [saved[0] if saved else "nde.train", *argv]
    try:
        task()  # pyright: ignore[reportCallIssue]  (Hydra passes the config)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()

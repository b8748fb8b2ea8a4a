"""Recipes: reproducible training runs, one file each.

A recipe is a module `recipes/<name>.py` that defines a `nde.Trainer` subclass (with
its `config_class`, a `nde.training.Config` dataclass) and names it `RECIPE`:

    @dataclasses.dataclass
    class MyConfig(nde.training.Config):
        ...

    class MyRecipe(nde.Trainer):
        config_class = MyConfig
        ...

    RECIPE = MyRecipe
    SMOKE_OVERRIDES = ["data.num_series=16"]  # optional: keeps the 2-step test small

Adding the file is all it takes: `names()` lists every module of this package (no
import needed), `python -m nde.train recipe=<name>` runs it, and the test suite
smoke-tests it. `load` also accepts a file (`recipe=path/to/my_recipe.py`) or a
module (`recipe=mypackage.my_recipe`, `recipe=mypackage.my_recipe:MyTrainer`).
"""

import importlib
import importlib.util
import pathlib
import pkgutil
import sys


def names() -> list[str]:
    """The registered recipes: the public modules of this package."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
    )


def load(spec: str) -> type:
    """The `Trainer` subclass of a recipe.

    **Arguments:**

    - `spec`: a registered name (`"neural_ode"`), a Python file
      (`"path/to/recipe.py"`), or a module with an optional class
      (`"package.module"`, `"package.module:MyTrainer"`).
    """
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py") or pathlib.Path(module_name).is_file():
        module = _import_file(pathlib.Path(module_name))
    elif module_name in names():
        module = importlib.import_module(f"{__name__}.{module_name}")
    elif "." in module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"recipe={spec!r}: cannot import it ({e}).") from e
    else:
        raise ValueError(
            f"Unknown recipe {spec!r}. Registered: {', '.join(names())}; or give a "
            "file (recipe=path/to/recipe.py) or a module (recipe=package.module)."
        )
    return _trainer_class(module, attr, spec)


def smoke_overrides(name: str) -> list[str]:
    """Config overrides that make a 2-step smoke run of `name` cheap."""
    module = importlib.import_module(f"{__name__}.{name}")
    return list(getattr(module, "SMOKE_OVERRIDES", []))


def _import_file(path: pathlib.Path):
    if not path.is_file():
        raise ValueError(f"recipe={str(path)!r}: no such file.")
    name = f"_nde_recipe_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _trainer_class(module, attr: str, spec: str) -> type:
    from nde.training import Trainer

    if attr:
        cls = getattr(module, attr, None)
    elif hasattr(module, "RECIPE"):
        cls = module.RECIPE
    else:
        # A user's file: accept its one Trainer subclass without a RECIPE line.
        found = [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, Trainer)
            and v.__module__ == module.__name__
        ]
        cls = found[0] if len(found) == 1 else None
        if cls is None:
            raise ValueError(
                f"recipe={spec!r}: {module.__name__} defines "
                f"{len(found)} Trainer subclasses; name one with RECIPE = ... or "
                f"recipe={spec}:ClassName."
            )
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise ValueError(
            f"recipe={spec!r}: {module.__name__}.{attr or 'RECIPE'} is not a "
            f"nde.Trainer subclass (got {cls!r})."
        )
    return cls

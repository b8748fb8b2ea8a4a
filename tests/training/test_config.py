"""The pieces a run is built from, without training: config checks, the default
optimizer and schedules, the name tables, batching, the recipe registry, and the
neural_ode recipe's data."""

import dataclasses
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nde
import recipes
from nde.training import (
    BatchOrder,
    Config,
    Dataset,
    ODEConfig,
    OptimizerConfig,
    TrainerConfig,
    _registry,
    get_adjoint,
    get_controller,
    get_solver,
    make_optimizer,
    make_schedule,
)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TrainerConfig(on_nan="ignore"), r"trainer.on_nan='ignore' is not one"),
        (lambda: TrainerConfig(progress="fancy"), r"trainer.progress='fancy'"),
        (lambda: TrainerConfig(steps=0), r"trainer.steps must be > 0, got 0"),
        (lambda: TrainerConfig(eval_every=-1), r"trainer.eval_every must be >= 0"),
        (lambda: OptimizerConfig(name="sgd"), r"optimizer.name='sgd' is not one of"),
        (lambda: OptimizerConfig(schedule="step"), r"optimizer.schedule='step'"),
        (lambda: OptimizerConfig(lr=-1.0), r"optimizer.lr must be > 0"),
        (
            lambda: OptimizerConfig(schedule="exponential"),
            r"needs optimizer.final_lr_factor > 0",
        ),
        (lambda: ODEConfig(max_steps=0), r"ode.max_steps must be > 0"),
        (lambda: Config(controller="constant"), r"needs a step size: set ode.dt0"),
        (lambda: Config(seed=-1), r"seed must be >= 0"),
    ],
)
def test_config_checks(make, match):
    with pytest.raises(ValueError, match=match):
        make()


PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
GRADS = {"w": jnp.array([30.0, 40.0, 0.0]), "b": jnp.array(0.0)}  # norm 50


@pytest.mark.parametrize(
    "name, reference",
    [
        ("adam", lambda lr: optax.adam(lr, b1=0.8, b2=0.99, eps=1.0)),
        (
            "adamw",
            lambda lr: optax.adamw(lr, b1=0.8, b2=0.99, eps=1.0, weight_decay=0.1),
        ),
        ("adabelief", lambda lr: optax.adabelief(lr, b1=0.8, b2=0.99, eps=1.0)),
    ],
)
def test_default_optimizer_is_clip_then_named_optimizer(name, reference):
    # eps=1 makes the update depend on the gradient's scale, so that clipping shows.
    config = OptimizerConfig(
        name=name, lr=0.1, b1=0.8, b2=0.99, eps=1.0, weight_decay=0.1, clip_norm=5.0
    )
    clipped = optax.chain(optax.clip_by_global_norm(5.0), reference(0.1))
    for ours, ref, same in (
        (make_optimizer(config, steps=10), clipped, True),
        (
            make_optimizer(dataclasses.replace(config, clip_norm=None), 10),
            clipped,
            False,
        ),
    ):
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-clean
            s1, s2 = ours.init(PARAMS), ref.init(PARAMS)
            for _ in range(3):  # a few steps, so that the moments matter
                u1, s1 = ours.update(GRADS, s1, PARAMS)
                u2, s2 = ref.update(GRADS, s2, PARAMS)
        close = all(np.allclose(u1[k], u2[k], rtol=1e-12, atol=0) for k in PARAMS)
        assert close == same


def test_schedules():
    lr = 0.2
    warm = make_schedule(OptimizerConfig(lr=lr, warmup_steps=10), steps=100)
    assert float(warm(0)) == 0.0
    assert float(warm(5)) == pytest.approx(lr / 2)
    assert float(warm(50)) == pytest.approx(lr)
    cos = make_schedule(
        OptimizerConfig(lr=lr, schedule="cosine", final_lr_factor=0.1), steps=100
    )
    assert float(cos(0)) == pytest.approx(lr)
    assert float(cos(50)) == pytest.approx(lr * (0.1 + 0.9 * 0.5))
    assert float(cos(100)) == pytest.approx(lr * 0.1)
    lin = make_schedule(OptimizerConfig(lr=lr, schedule="linear"), steps=100)
    assert float(lin(25)) == pytest.approx(0.75 * lr)
    exp = make_schedule(
        OptimizerConfig(lr=lr, schedule="exponential", final_lr_factor=0.01), steps=100
    )
    assert float(exp(50)) == pytest.approx(lr * 0.1)
    assert float(exp(100)) == pytest.approx(lr * 0.01)
    # The learning rate sits in the optimizer state, where the trainer reads it.
    opt = make_optimizer(OptimizerConfig(lr=lr, warmup_steps=10), steps=100)
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-clean
        state = opt.init(PARAMS)
        for _ in range(6):
            _, state = opt.update(GRADS, state, PARAMS)
    from nde.training._state import learning_rate

    assert float(learning_rate(state)) == pytest.approx(float(warm(5)))


def test_name_tables():
    assert isinstance(get_solver("dopri5"), nde.Dopri5)
    assert isinstance(
        get_adjoint("recursive_checkpoint"), nde.RecursiveCheckpointAdjoint
    )
    pid = get_controller("pid", ODEConfig(rtol=1e-5, atol=1e-7, pcoeff=0.2))
    assert isinstance(pid, nde.PIDController)
    assert (pid.rtol, pid.atol, pid.pcoeff) == (1e-5, 1e-7, 0.2)
    assert isinstance(get_controller("constant", ODEConfig()), nde.ConstantStepSize)
    assert isinstance(get_solver("nde:Heun"), nde.Heun)  # "module:Class"
    with pytest.raises(ValueError, match=r"Unknown solver 'rk4'. Available: euler"):
        get_solver("rk4")
    with pytest.raises(ValueError, match=r"solver='nde:Nope': cannot import it"):
        get_solver("nde:Nope")


def test_name_not_yet_in_nde(monkeypatch):
    # Names are resolved when used: one whose class has not landed says so.
    monkeypatch.setitem(_registry.ADJOINTS, "future", "FutureAdjoint")
    with pytest.raises(ValueError, match=r"adjoint='future' means nde.FutureAdjoint"):
        get_adjoint("future")


def test_every_listed_name_that_exists_builds():
    for table, get in (
        (_registry.SOLVERS, get_solver),
        (_registry.ADJOINTS, get_adjoint),
    ):
        for name, attr in table.items():
            if hasattr(nde, attr):
                assert type(get(name)).__name__ == attr


def test_batch_order_epochs_and_resume():
    order = BatchOrder(num_examples=10, batch_size=4, seed=3)
    batches = [order.next() for _ in range(4)]
    # Two batches per epoch (the tail of 2 is dropped), each epoch a permutation.
    epoch0 = np.concatenate(batches[:2])
    assert len(set(epoch0)) == 8 and set(epoch0) <= set(range(10))
    assert not np.array_equal(batches[0], batches[2])  # reshuffled
    again = BatchOrder(num_examples=10, batch_size=4, seed=3)
    assert all(np.array_equal(a, again.next()) for a in batches)
    # Resuming from the state dict continues the same sequence.
    state = order.state_dict()
    expected = [order.next() for _ in range(3)]
    resumed = BatchOrder(num_examples=10, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, resumed.next()) for a in expected)
    plain = BatchOrder(num_examples=6, batch_size=3, seed=0, shuffle=False)
    assert [list(plain.next()) for _ in range(3)] == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]


def test_dataset_checks():
    with pytest.raises(ValueError, match=r"same leading \(example\) axis"):
        Dataset(train=(np.zeros((4, 2)), np.zeros((5, 2))))
    with pytest.raises(ValueError, match="Dataset.val has no arrays"):
        Dataset(train=np.zeros((4, 2)), val=())


def test_recipe_registry(tmp_path):
    assert "neural_ode" in recipes.names()
    from recipes.neural_ode import NeuralODE

    assert recipes.load("neural_ode") is NeuralODE
    assert recipes.load("recipes.neural_ode") is NeuralODE
    assert recipes.load("recipes.neural_ode:NeuralODE") is NeuralODE
    two = tmp_path / "two.py"
    two.write_text(
        textwrap.dedent(
            """
            import nde
            class A(nde.Trainer):
                pass
            class B(nde.Trainer):
                pass
            """
        )
    )
    with pytest.raises(ValueError, match="defines 2 Trainer subclasses; name one"):
        recipes.load(str(two))
    assert recipes.load(f"{two}:B").__name__ == "B"
    with pytest.raises(ValueError, match="is not a nde.Trainer subclass"):
        recipes.load("recipes.neural_ode:simulate")


def test_neural_ode_data_and_curriculum():
    from recipes.neural_ode import A, NeuralODE, NeuralODEConfig, simulate

    # The data are exact: compare with a tight nde solve of dy/dt = A y.
    y0 = np.array([[1.0, 0.5]])
    ts = np.linspace(0.0, 10.0, 11)
    sol = nde.diffeqsolve(
        nde.ODETerm(lambda t, y, args: jnp.asarray(A) @ y),
        nde.Dopri8(),
        0.0,
        10.0,
        0.01,
        jnp.asarray(y0[0]),
        saveat=nde.SaveAt(ts=jnp.asarray(ts)),
        stepsize_controller=nde.PIDController(rtol=1e-12, atol=1e-12),
    )
    np.testing.assert_allclose(simulate(y0, ts)[0], sol.ys, rtol=1e-9, atol=1e-10)

    config = NeuralODEConfig()
    trainer = NeuralODE(config)
    data = trainer.make_data(key=jax.random.PRNGKey(0))
    trainer.data = data
    ts_, ys = data.train
    assert ys.shape == (256, 100, 2) and ts_.shape == (256, 100)
    radius = np.linalg.norm(ys[:, 0], axis=-1)
    assert radius.min() >= 0.5 and radius.max() <= 1.5
    assert trainer.curriculum_length(0) == 10  # 10% of each series ...
    assert trainer.curriculum_length(299) == 10  # ... for 30% of the steps ...
    assert trainer.curriculum_length(300) == 100  # ... then all of it
    ts_b, ys_b, n = trainer.make_batch(np.arange(4), step=0)
    assert ys_b.shape == (4, 100, 2) and list(n) == [10] * 4
    assert dataclasses.asdict(config)["model"]["scale"] > 0
    assert math.isfinite(float(np.max(ys)))

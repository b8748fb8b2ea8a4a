"""Training throughput of the `neural_ode` recipe's step: nde's Trainer vs the same
model in a hand-written Diffrax loop vs torchdiffeq.

    python -m benchmarks.training [--steps 600] [--chunk 25] [--no-torch] [--quick]

The problem is the recipe's, after its curriculum (whole series): batch 32 of 2-D
series with 100 points on [0, 10], vector field `4 tanh(MLP(y))` (MLP 2-64-64-2,
softplus), MSE along the series, Adam(3e-3) after `clip_by_global_norm(1)`, float32.

- **nde**: `recipes.neural_ode.NeuralODE(...).fit()` itself: Tsit5 + PID(rtol=1e-3,
  atol=1e-6), RecursiveCheckpointAdjoint, the Trainer's loop (host batching,
  device transfer, one jitted step with donated buffers, metrics kept on device).
- **diffrax**: the loop a Diffrax user writes: `eqx.filter_jit` step with
  `eqx.filter_value_and_grad`, `diffrax.diffeqsolve` (Tsit5, PIDController with the
  same tolerances, RecursiveCheckpointAdjoint) vmapped over the series, optax,
  `eqx.apply_updates`; same initial parameters and batches.
- **torchdiffeq**: `odeint` (dopri5, the same tolerances; backpropagation through
  the solver) on the batch as one system, an `nn.Sequential` with the same weights,
  `torch.optim.Adam` after `clip_grad_norm_`.

All three start from the same initial step size (dt0=0.1: see ode_forward.py on
Diffrax's dt0=None) and the same initial parameters, and run the same `3 + --steps`
steps on the same batches; nde's and Diffrax's mean losses should be close (not
equal: the two solvers' step-size sequences need not coincide, see the solver
steps column).

**In turns.** The shared machine's speed drifts over seconds (by up to 2x):
600-step runs of one contestant after the other gave nde/Diffrax ratios from 1.11x
to 1.73x within one invocation. So the contestants train side by side, in turns:
nde's Trainer runs `fit()`, and from its `on_step_end` hook, after every `--chunk`
steps (25: about half a second of nde), the Diffrax loop and then the torchdiffeq
loop run the same steps on the same batches. Each turn's wall time is charged to
its contestant: for nde, everything between two hooks that take turns (host
batching, transfer, the jitted step, the Trainer's bookkeeping). Steps/s is the
steps timed over the summed time of the turns; the first three steps (compilation,
warm-up) are not timed. The per-turn ratios to nde are shown as median and
quartiles. Last, "fixed work": the jitted gradient of one batch at the model nde
trained, nde's and Diffrax's called in alternation (`fixed_work`), and the forward
solves alone: the part of the step that differs (a secondary figure, not the
target).
Targets: nde >= 1.25x Diffrax, nde >= 20x torchdiffeq (steps/s).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

WARMUP = 3


def make_config(steps: int):
    from nde.training import ODEConfig, OptimizerConfig, TrainerConfig
    from recipes.neural_ode import NeuralODEConfig

    config = NeuralODEConfig()
    config.data.curriculum_steps = 0.0  # whole series from the start
    config.ode = ODEConfig(rtol=1e-3, atol=1e-6, dt0=0.1)
    # The optimizer of the other contestants (the recipe's own default is lr 5e-3
    # with a cosine decay, which changes the model faster: more solver steps).
    config.optimizer = OptimizerConfig(lr=3e-3, schedule="constant", clip_norm=1.0)
    config.trainer = TrainerConfig(
        steps=steps,
        batch_size=32,
        log_every=steps,  # one pull of the metrics, at the end
        eval_every=0,
        checkpoint_every=0,
        progress="none",
        compilation_cache=None,
    )
    return config


def initial_model_and_batches(steps: int):
    """The Trainer's initial model and the batches of its first `steps` steps."""
    import jax

    from nde.training import BatchOrder
    from recipes.neural_ode import NeuralODE

    config = make_config(steps)
    trainer = NeuralODE(config)
    model_key, data_key, _, _ = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    trainer.data = trainer.make_data(key=data_key)
    model = trainer.make_model(key=model_key)
    order = BatchOrder(256, 32, config.seed)
    batches = [trainer.make_batch(order.next(), step=s) for s in range(steps)]
    return model, batches


def diffrax_loss(model, ts, ys):
    """The recipe's loss written for Diffrax: (MSE along the series, solver steps)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    def solve(model, ts, y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(model),
            diffrax.Tsit5(),
            ts[0],
            ts[-1],
            0.1,
            y0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            max_steps=4096,
        )
        return sol.ys, sol.stats["num_steps"]

    pred, n = jax.vmap(solve, in_axes=(None, 0, 0))(model, ts, ys[:, 0])
    return jnp.mean((pred - ys) ** 2), n


def fixed_work(model, rounds: int = 7, calls: int = 20) -> dict:
    """The jitted gradient of one batch's loss at a fixed model (the one nde's
    Trainer trained in `run_interleaved`), nde's (the recipe's `loss`) and Diffrax's, and the loss
    alone (the forward solves), called in alternation: the same work every call,
    so the machine's drift over a run cancels out of the ratio. Milliseconds per
    call, the median over `rounds`."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from recipes.neural_ode import NeuralODE

    trainer = NeuralODE(make_config(1))
    _, batches = initial_model_and_batches(1)
    ts, ys, n = (jnp.asarray(x) for x in batches[0])
    key = jax.random.PRNGKey(0)
    losses = {
        "nde": lambda m: trainer.loss(m, (ts, ys, n), key=key)[0],
        "diffrax": lambda m: diffrax_loss(m, ts, ys)[0],
    }
    fns = {name: eqx.filter_jit(eqx.filter_grad(f)) for name, f in losses.items()}
    # The forward solves alone too (100 save times per series, vmapped).
    fns.update({f"{name} forward": eqx.filter_jit(f) for name, f in losses.items()})
    times = {name: [] for name in fns}
    for f in fns.values():
        jax.block_until_ready(f(model))
    for _ in range(rounds):
        for name, f in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = f(model)
            jax.block_until_ready(out)
            times[name].append(1e3 * (time.perf_counter() - start) / calls)
    out = {name: _median(t) for name, t in times.items()}
    out["diffrax_over_nde"] = out["diffrax"] / out["nde"]
    out["forward_diffrax_over_nde"] = out["diffrax forward"] / out["nde forward"]
    return out


class DiffraxLoop:
    """The loop a Diffrax user writes, one step at a time: `step(i)` trains on the
    `i`-th of the Trainer's batches (steps must come in order) and waits for it."""

    def __init__(self, steps: int):
        import equinox as eqx
        import jax.numpy as jnp
        import optax

        self.model, self.batches = initial_model_and_batches(steps)
        optim = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
        self.opt_state = optim.init(eqx.filter(self.model, eqx.is_inexact_array))
        loss = eqx.filter_value_and_grad(diffrax_loss, has_aux=True)

        @eqx.filter_jit
        def make_step(ts, ys, model, opt_state):
            (value, n), grads = loss(model, ts, ys)
            updates, opt_state = optim.update(grads, opt_state, model)
            return (
                value,
                jnp.mean(n.astype(jnp.float32)),
                eqx.apply_updates(model, updates),
                opt_state,
            )

        self.make_step = make_step
        self.values, self.counts = [], []

    def step(self, i: int) -> None:
        import jax
        import jax.numpy as jnp

        ts, ys, _ = self.batches[i]
        value, n, self.model, self.opt_state = self.make_step(
            jnp.asarray(ts), jnp.asarray(ys), self.model, self.opt_state
        )
        jax.block_until_ready(value)
        self.values.append(value), self.counts.append(n)


def run_interleaved(steps: int, chunk: int, torch: bool) -> dict:
    """nde's Trainer (`fit`, the recipe's model) and the other contestants trained
    side by side: after nde's first `WARMUP` steps each other loop runs its own
    (their compilation or warm-up), then every `chunk` nde steps each other loop
    runs the same `chunk` steps, on the same batches, from the Trainer's
    `on_step_end` hook. Each turn's wall time is charged to its contestant (nde's:
    its whole loop between two hooks: batching, transfer, the jitted step, the
    bookkeeping), so that all meet the same machine speed within seconds. Returns
    each contestant's figures and the per-turn ratios to nde."""
    import tempfile

    import jax

    from recipes.neural_ode import NeuralODE

    total = WARMUP + steps
    others = {"diffrax": DiffraxLoop(total)}
    if torch:
        others["torchdiffeq"] = TorchdiffeqLoop(total)
    times = {name: [] for name in ("nde", *others)}
    first, clock = {}, {}

    def turn(steps):
        for name, loop in others.items():
            start = time.perf_counter()
            for i in steps:
                loop.step(i)
            times[name].append(time.perf_counter() - start)

    class Interleaved(NeuralODE):
        def plot(self, model):
            return None

        def on_step_end(self, step, metrics):
            jax.block_until_ready(metrics)
            now = time.perf_counter()
            if step == WARMUP:
                turn(range(WARMUP))
                first.update({name: times[name].pop() for name in others})
            elif step > WARMUP and (step - WARMUP) % chunk == 0:
                times["nde"].append(now - clock["mark"])
                turn(range(step - chunk, step))
            else:
                return
            clock["mark"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Interleaved(make_config(total), run_dir=tmp)
        trainer.fit()
    (log,) = [h for h in trainer.history if "train/loss" in h]  # one log, at the end
    timed = chunk * len(times["nde"])
    out = {
        "nde": {
            "steps_per_sec": timed / sum(times["nde"]),
            "first_step_s": log["time/first_step_s"],
            "num_steps": log["solve/num_steps"],
            "loss_mean": log["train/loss"],
            "steps_timed": timed,
        },
        "model": trainer.state.model,  # for `fixed_work`; not reported
    }
    for name, loop in others.items():
        counts = getattr(loop, "counts", None)
        out[name] = {
            "steps_per_sec": timed / sum(times[name]),
            "first_step_s": first[name],  # its first WARMUP steps
            "num_steps": float(np.mean(counts)) if counts else float("nan"),
            "loss_mean": float(np.mean(loop.values)),  # over the same steps as nde's
            "steps_timed": timed,
            "turn_ratios": [
                o / n for n, o in zip(times["nde"], times[name], strict=True)
            ],
        }
    return out


class TorchdiffeqLoop:
    """The same model and loss in PyTorch with torchdiffeq, one step at a time:
    `odeint` (dopri5, the same tolerances; backpropagation through the solver) on
    the batch as one system, an `nn.Sequential` with the same initial weights,
    `torch.optim.Adam` after `clip_grad_norm_`."""

    def __init__(self, steps: int):
        import torch

        model, self.batches = initial_model_and_batches(steps)
        layers = []
        for i, layer in enumerate(model.mlp.layers):
            linear = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(layer.weight)))
                linear.bias.copy_(torch.from_numpy(np.array(layer.bias)))
            layers.append(linear)
            if i < len(model.mlp.layers) - 1:
                layers.append(torch.nn.Softplus())
        net = torch.nn.Sequential(*layers)
        scale = model.scale

        class Func(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, t, y):
                return scale * torch.tanh(self.net(y))

        self.func = Func()
        self.optim = torch.optim.Adam(self.func.parameters(), lr=3e-3)
        self.values = []

    def step(self, i: int) -> None:
        import torch
        from torchdiffeq import odeint

        ts, ys, _ = self.batches[i]
        t = torch.from_numpy(np.array(ts[0], np.float32))
        target = torch.from_numpy(np.array(ys, np.float32))
        self.optim.zero_grad()
        pred = odeint(
            self.func,
            target[:, 0],
            t,
            rtol=1e-3,
            atol=1e-6,
            method="dopri5",
            options={"first_step": 0.1},
        )  # (T, B, 2)
        loss = torch.mean((pred.transpose(0, 1) - target) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.func.parameters(), 1.0)
        self.optim.step()
        self.values.append(loss.item())


def _median(xs):
    return float(np.median(np.asarray(xs)))


def to_markdown(results: dict, env: dict) -> str:
    nde, dfx, tdq = (results.get(k) for k in ("nde", "diffrax", "torchdiffeq"))
    lines = [
        "## Training: steps/s of the neural_ode step",
        "",
        f"load average at start {env['loadavg_start'][0]:.2f}, at end "
        f"{env['loadavg_end'][0]:.2f}; jax {env['jax']}, diffrax {env['diffrax']}, "
        f"torch {env['torch']}",
        "",
        "| contestant | steps/s | first step (compile) | solver steps/series |"
        " mean loss | steps timed |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("nde", "diffrax", "torchdiffeq"):
        if name not in results:
            continue
        r = results[name]
        lines.append(
            f"| {name} | {r['steps_per_sec']:.2f} | {r['first_step_s']:.1f} s | "
            f"{r['num_steps']:.1f} | {r['loss_mean']:.4g} | {r['steps_timed']} |"
        )
    lines += ["", "| target | ratio | |", "|---|---|---|"]

    def target(name, label, least):
        ratio = results[f"nde_over_{name}"]
        q1, q2, q3 = np.percentile(results[name]["turn_ratios"], [25, 50, 75])
        ok = "PASS" if ratio >= least else "FAIL"
        turns = len(results[name]["turn_ratios"])
        return (
            f"| nde >= {least:g}x {label} | {ratio:.2f}x (the {turns} turns: median "
            f"{q2:.2f}x, quartiles {q1:.2f}x-{q3:.2f}x) | **{ok}** |"
        )

    if nde and dfx:
        lines.append(target("diffrax", "Diffrax", 1.25))
    if "fixed_work" in results:
        fw = results["fixed_work"]
        lines.append(
            f"| (the batch gradient alone, fixed work, alternating: nde "
            f"{fw['nde']:.2f} ms, Diffrax {fw['diffrax']:.2f} ms) | "
            f"{fw['diffrax_over_nde']:.2f}x | |"
        )
        lines.append(
            f"| (its forward solve alone: nde {fw['nde forward']:.2f} ms, Diffrax "
            f"{fw['diffrax forward']:.2f} ms) | {fw['forward_diffrax_over_nde']:.2f}x "
            "| |"
        )
    if nde and tdq:
        lines.append(target("torchdiffeq", "torchdiffeq", 20))
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import jax

    env = {"jax": jax.__version__, "python": sys.version.split()[0]}
    for name in ("diffrax", "torch", "torchdiffeq"):
        try:
            env[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            env[name] = "-"
    return env


def main(argv=None) -> tuple[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="timed steps (JAX)")
    parser.add_argument("--chunk", type=int, default=25, help="steps per turn")
    parser.add_argument("--quick", action="store_true", help="10 and 2 steps")
    parser.add_argument("--no-torch", action="store_true", help="skip torchdiffeq")
    opts = parser.parse_args(argv)
    steps = 10 if opts.quick else opts.steps
    chunk = 5 if opts.quick else opts.chunk
    if steps < chunk:
        parser.error(f"--steps ({steps}) must be at least --chunk ({chunk})")
    load_start = os.getloadavg()
    import jax

    # float32 throughout, also when run after a float64 benchmark in one process.
    with jax.enable_x64(False):
        print("[training] contestants in turns ...", file=sys.stderr, flush=True)
        results = run_interleaved(steps - steps % chunk, chunk, not opts.no_torch)
        if not opts.quick:
            print("[training] fixed work ...", file=sys.stderr, flush=True)
            results["fixed_work"] = fixed_work(results["model"])
    del results["model"]
    for name in ("diffrax", "torchdiffeq"):
        if name in results:
            results[f"nde_over_{name}"] = (
                results["nde"]["steps_per_sec"] / results[name]["steps_per_sec"]
            )
    env = environment()
    env["loadavg_start"], env["loadavg_end"] = load_start, os.getloadavg()
    md = to_markdown(results, env)
    return md, {"environment": env, "results": results}


if __name__ == "__main__":
    md, data = main()
    print(md)
    print(json.dumps(data, indent=1), file=sys.stderr)

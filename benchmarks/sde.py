"""Neural SDEs, side by side in one process: nde, Diffrax and torchsde; and the
peak memory of ReversibleAdjoint as the number of steps grows.

The problem: state 16, general (non-diagonal) noise of dimension 8, drift MLP
16-64-64-16 and diffusion MLP 16-64-64-(16x8), tanh, float32, batch 256, t in [0, 1],
100 fixed steps (dt = 0.01). Brownian motion: nde and Diffrax a
`VirtualBrownianTree(tol=1e-3)` per sample (the batch is a `vmap` over samples with
their own keys); torchsde its default `BrownianInterval` over the batch (a fresh
one per call, as nde and Diffrax get fresh keys per call). The loss of the gradient
cases is the mean of `y(1)**2`, differentiated with respect to both networks.

| case | nde | Diffrax | torchsde |
|---|---|---|---|
| `euler_forward` | Euler | Euler | `sdeint(method="euler")` (Itô) |
| `euler_grad` | + RecursiveCheckpointAdjoint | + RecursiveCheckpointAdjoint | backprop through `sdeint` |
| `revheun_forward` | ReversibleHeun | ReversibleHeun | `sdeint(method="reversible_heun")` |
| `revheun_grad` | + ReversibleAdjoint | + RecursiveCheckpointAdjoint (Diffrax has no reversible adjoint) | `sdeint_adjoint(adjoint_method="adjoint_reversible_heun")` |

`revheun_grad` also times `nde[checkpoint]` (ReversibleHeun + RecursiveCheckpointAdjoint,
the same algorithm as Diffrax's). Every case also times two references: `nde[unsafe]`,
nde with an `UnsafeBrownianPath` (one normal draw per step, no tree), and `scan`, a
hand-written `lax.scan` loop of the same recurrence with the cheapest noise (all
steps' increments drawn up front in one call; gradients: reverse mode through the
scan, storing every step) -- the floor for any JAX implementation, and what
separates the tree's cost from the loop's. Each JAX contestant is one `jax.jit`;
per-call times are medians, round-robin over the contestants (`_timing.per_call_times`).

Memory (`--memory`): one subprocess per (method, number of steps), so that each
measures only itself: the peak resident set size while the compiled gradient runs
(the high-water mark is reset after compilation through `/proc/self/clear_refs`),
for 100 to 3200 steps (dt = 1 / steps, one compiled function for all, `max_steps`
fixed), with a larger state (batch 256, state 64, noise 16) so that the states
themselves are visible. O(1)-memory methods stay flat; backpropagation through
stored steps grows linearly.

    python -m benchmarks.sde [--quick] [--memory]
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import nde  # noqa: E402

from . import _timing  # noqa: E402
from ._memory import reset_peak, rss_kib  # noqa: E402

BATCH, STATE, NOISE, WIDTH, STEPS = 256, 16, 8, 64, 100
TOL = 1e-3
F32 = jnp.float32


class Drift(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y)


class Diffusion(eqx.Module):
    mlp: eqx.nn.MLP
    noise: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        return self.mlp(y).reshape(y.shape[0], self.noise)


def make_params(state=STATE, noise=NOISE, width=WIDTH, *, key):
    k1, k2 = jr.split(key)
    mlp = lambda out, k: eqx.nn.MLP(
        state, out, width, 2, activation=jnp.tanh, dtype=F32, key=k
    )
    # A diffusion of moderate size, so that 100 steps stay well inside the range.
    diffusion = Diffusion(mlp(state * noise, k2), noise)
    diffusion = eqx.tree_at(
        lambda d: d.mlp.layers[-1].weight,
        diffusion,
        diffusion.mlp.layers[-1].weight / 4,
    )
    return Drift(mlp(state, k1)), diffusion


def jax_solve(lib, solver, adjoint, params, y0, key, steps=STEPS, noise=NOISE):
    """One sample's SDE solve with `lib` (nde or diffrax); returns y(1)."""
    drift, diffusion = params
    # Float32 times (x64 is on for the process): everything is float32.
    t0, t1 = jnp.asarray(0.0, F32), jnp.asarray(1.0, F32)
    shape = jax.ShapeDtypeStruct((noise,), F32)
    # The tree's interval as Python numbers (as users write it): its depth is then
    # known when tracing.
    bm = lib.VirtualBrownianTree(0.0, 1.0, TOL, shape, key)
    terms = lib.MultiTerm(lib.ODETerm(drift), lib.ControlTerm(diffusion, bm))
    sol = lib.diffeqsolve(
        terms, solver, t0, t1, t1 / steps, y0, adjoint=adjoint, max_steps=4 * STEPS
    )
    return sol.ys[0]


def scan_solve(euler: bool, params, y0, key, steps=STEPS, noise=NOISE):
    """The floor: the same SDE as a hand-written `lax.scan` loop with the cheapest
    noise (every step's increment drawn up front in one `jr.normal` call, and
    indexed by the step) instead of a Brownian tree; Euler-Maruyama or the
    reversible Heun recurrence."""
    drift, diffusion = params
    dt = jnp.asarray(1.0 / steps, F32)
    t = lambda k: k.astype(F32) * dt
    increments = jnp.sqrt(dt) * jr.normal(key, (steps, noise), F32)
    dw = lambda k: increments[k]
    field = lambda k, y: (drift(t(k), y, None), diffusion(t(k), y, None))
    prod = lambda v, w: v[0] * dt + v[1] @ w

    if euler:

        def step(y, k):
            return y + prod(field(k, y), dw(k)), None

        return lax.scan(step, y0, jnp.arange(steps))[0]

    def step(carry, k):
        y, z, v = carry
        w = dw(k)
        p0 = prod(v, w)
        z1 = 2 * y - z + p0
        v1 = field(k + 1, z1)
        return (y + (p0 + prod(v1, w)) / 2, z1, v1), None

    carry = (y0, y0, field(jnp.asarray(0), y0))
    return lax.scan(step, carry, jnp.arange(steps))[0][0]


def unsafe_solve(lib, solver, adjoint, params, y0, key, steps=STEPS, noise=NOISE):
    """`jax_solve` with an `UnsafeBrownianPath` (one draw per step) instead of the
    tree: the solver loop's cost without the tree's."""
    drift, diffusion = params
    t0, t1 = jnp.asarray(0.0, F32), jnp.asarray(1.0, F32)
    bm = lib.UnsafeBrownianPath(jax.ShapeDtypeStruct((noise,), F32), key)
    terms = lib.MultiTerm(lib.ODETerm(drift), lib.ControlTerm(diffusion, bm))
    sol = lib.diffeqsolve(
        terms, solver, t0, t1, t1 / steps, y0, adjoint=adjoint, max_steps=4 * STEPS
    )
    return sol.ys[0]


def batched(solve, grad: bool, static):
    """A `jax.jit` function of `(arrays of the params, y0s, keys)` that `vmap`s
    `solve(params, y0, key)` over the batch (or its gradient)."""

    def forward(dynamic, y0s, keys):
        params = eqx.combine(dynamic, static)
        return jax.vmap(lambda y0, k: solve(params, y0, k))(y0s, keys)

    if not grad:
        return jax.jit(forward)
    loss = lambda dynamic, y0s, keys: jnp.mean(forward(dynamic, y0s, keys) ** 2)
    return jax.jit(jax.grad(loss))


def jax_contestant(lib, solver, adjoint, grad: bool, static):
    """A `jax.jit` function of `(arrays of the params, y0s, keys)`; the non-array
    parts of the params (activation functions) are closed over."""
    solve = lambda params, y0, k: jax_solve(lib, solver, adjoint, params, y0, k)
    return batched(solve, grad, static)


def contestants(case: str):
    """`name -> (fn, args)` for the JAX contestants of `case`."""
    grad = case.endswith("_grad")
    euler = case.startswith("euler")
    ndes = nde.Euler() if euler else nde.ReversibleHeun()
    dfxs = diffrax.Euler() if euler else diffrax.ReversibleHeun()
    if not grad:
        pairs = {"nde": (nde, ndes, None), "diffrax": (diffrax, dfxs, None)}
    elif euler:
        pairs = {
            "nde": (nde, ndes, nde.RecursiveCheckpointAdjoint()),
            "diffrax": (diffrax, dfxs, diffrax.RecursiveCheckpointAdjoint()),
        }
    else:
        pairs = {
            "nde": (nde, ndes, nde.ReversibleAdjoint()),
            "nde[checkpoint]": (nde, ndes, nde.RecursiveCheckpointAdjoint()),
            "diffrax": (diffrax, dfxs, diffrax.RecursiveCheckpointAdjoint()),
        }
    dynamic, static = eqx.partition(make_params(key=jr.key(0)), eqx.is_array)
    y0s = jr.normal(jr.key(1), (BATCH, STATE), F32)
    keys = jr.split(jr.key(2), BATCH)
    out = {}
    for name, (lib, solver, adjoint) in pairs.items():
        if adjoint is None:
            adjoint = lib.RecursiveCheckpointAdjoint()
        fn = jax_contestant(lib, solver, adjoint, grad, static)
        out[name] = (fn, (dynamic, y0s, keys))
    nde_solver, nde_adjoint = pairs["nde"][1], pairs["nde"][2]
    nde_adjoint = nde_adjoint or nde.RecursiveCheckpointAdjoint()
    unsafe = lambda p, y0, k: unsafe_solve(nde, nde_solver, nde_adjoint, p, y0, k)
    out["nde[unsafe]"] = (batched(unsafe, grad, static), (dynamic, y0s, keys))
    scan = lambda p, y0, k: scan_solve(euler, p, y0, k)
    out["scan"] = (batched(scan, grad, static), (dynamic, y0s, keys))
    return out


def torch_contestant(case: str):
    """`(fn, args)` for torchsde, or None if it is not installed."""
    try:
        import torch
        import torchsde
    except ImportError:
        return None
    torch.manual_seed(0)
    euler = case.startswith("euler")

    class SDE(torch.nn.Module):
        noise_type = "general"
        sde_type = "ito" if euler else "stratonovich"

        def __init__(self):
            super().__init__()
            mlp = lambda out: torch.nn.Sequential(
                torch.nn.Linear(STATE, WIDTH),
                torch.nn.Tanh(),
                torch.nn.Linear(WIDTH, WIDTH),
                torch.nn.Tanh(),
                torch.nn.Linear(WIDTH, out),
            )
            self.drift, self.diffusion = mlp(STATE), mlp(STATE * NOISE)
            with torch.no_grad():
                self.diffusion[-1].weight /= 4

        def f(self, t, y):
            return self.drift(y)

        def g(self, t, y):
            return self.diffusion(y).view(y.shape[0], STATE, NOISE)

    sde = SDE()
    y0 = torch.randn(BATCH, STATE)
    ts = torch.tensor([0.0, 1.0])
    method = "euler" if euler else "reversible_heun"
    dt = 1.0 / STEPS

    def brownian():
        # (`dt` is only a hint for its cache; torchsde 0.2.6 fails with `tol`
        # but without `dt`.)
        return torchsde.BrownianInterval(
            t0=0.0, t1=1.0, size=(BATCH, NOISE), dtype=torch.float32, tol=TOL, dt=dt
        )

    if case.endswith("_forward"):

        def fn():
            with torch.no_grad():
                return torchsde.sdeint(sde, y0, ts, bm=brownian(), method=method, dt=dt)

    elif euler:

        def fn():
            sde.zero_grad()
            ys = torchsde.sdeint(sde, y0, ts, bm=brownian(), method=method, dt=dt)
            (ys[-1] ** 2).mean().backward()

    else:

        def fn():
            sde.zero_grad()
            ys = torchsde.sdeint_adjoint(
                sde,
                y0,
                ts,
                bm=brownian(),
                method=method,
                adjoint_method="adjoint_reversible_heun",
                dt=dt,
            )
            (ys[-1] ** 2).mean().backward()

    return fn, ()


CASES = ("euler_forward", "euler_grad", "revheun_forward", "revheun_grad")


def run_case(case: str, quick: bool) -> dict:
    fns, args = {}, {}
    for name, (fn, a) in contestants(case).items():
        fns[name], args[name] = fn, a
    torch_case = torch_contestant(case)
    if torch_case is not None:
        fns["torchsde"], args["torchsde"] = torch_case
    target = 0.5 if quick else 2.0
    times = _timing.per_call_times(
        fns, args, target_s=target, min_calls=5 if quick else 10, rounds=3
    )
    return dict(
        case=case,
        per_call_ms={k: 1e3 * v.median_s for k, v in times.items()},
        iqr_rel={k: v.iqr_rel for k, v in times.items()},
        calls={k: v.n for k, v in times.items()},
    )


# ---------------------------------------------------------------------------------
# Memory: one subprocess per (method, steps).
# ---------------------------------------------------------------------------------

MEMORY_STEPS = (100, 400, 1600, 3200)
MEMORY_METHODS = ("nde-reversible", "nde-checkpoint", "torchsde-adjoint", "torchsde")
MEM_BATCH, MEM_STATE, MEM_NOISE = 256, 64, 16


def memory_case(method: str, steps: int) -> dict:
    """Run in a fresh process: peak RSS of one gradient evaluation."""
    if method.startswith("nde"):
        adjoint = (
            nde.ReversibleAdjoint()
            if method == "nde-reversible"
            else nde.RecursiveCheckpointAdjoint()
        )
        params = make_params(MEM_STATE, MEM_NOISE, key=jr.key(0))
        params, static = eqx.partition(params, eqx.is_array)
        y0s = jr.normal(jr.key(1), (MEM_BATCH, MEM_STATE), F32)
        keys = jr.split(jr.key(2), MEM_BATCH)

        def loss(dynamic, dt):
            def one(y0, key):
                drift, diffusion = eqx.combine(dynamic, static)
                bm = nde.VirtualBrownianTree(0.0, 1.0, TOL / 4, (MEM_NOISE,), key)
                terms = nde.MultiTerm(
                    nde.ODETerm(drift), nde.ControlTerm(diffusion, bm)
                )
                sol = nde.diffeqsolve(
                    terms,
                    nde.ReversibleHeun(),
                    0.0,
                    1.0,
                    dt,
                    y0,
                    adjoint=adjoint,
                    max_steps=max(MEMORY_STEPS),
                )
                return sol.ys[0]

            return jnp.mean(jax.vmap(one)(y0s, keys) ** 2)

        grad = jax.jit(jax.grad(loss)).lower(params, jnp.asarray(0.01, F32)).compile()
        before = rss_kib()
        reset_peak()
        start = time.perf_counter()
        jax.block_until_ready(grad(params, jnp.asarray(1.0 / steps, F32)))
        seconds = time.perf_counter() - start
    else:
        import torch
        import torchsde

        torch.manual_seed(0)

        class SDE(torch.nn.Module):
            noise_type, sde_type = "general", "stratonovich"

            def __init__(self):
                super().__init__()
                self.drift = torch.nn.Sequential(
                    torch.nn.Linear(MEM_STATE, WIDTH),
                    torch.nn.Tanh(),
                    torch.nn.Linear(WIDTH, MEM_STATE),
                )
                self.diffusion = torch.nn.Sequential(
                    torch.nn.Linear(MEM_STATE, WIDTH),
                    torch.nn.Tanh(),
                    torch.nn.Linear(WIDTH, MEM_STATE * MEM_NOISE),
                )

            def f(self, t, y):
                return self.drift(y)

            def g(self, t, y):
                return 0.25 * self.diffusion(y).view(y.shape[0], MEM_STATE, MEM_NOISE)

        sde = SDE()
        y0 = torch.randn(MEM_BATCH, MEM_STATE)
        ts = torch.tensor([0.0, 1.0])
        bm = torchsde.BrownianInterval(
            t0=0.0, t1=1.0, size=(MEM_BATCH, MEM_NOISE), tol=TOL / 4, dt=1.0 / steps
        )
        kwargs = dict(bm=bm, method="reversible_heun", dt=1.0 / steps)
        before = rss_kib()
        reset_peak()
        start = time.perf_counter()
        if method == "torchsde-adjoint":
            kwargs["adjoint_method"] = "adjoint_reversible_heun"
            ys = torchsde.sdeint_adjoint(sde, y0, ts, **kwargs)
        else:
            ys = torchsde.sdeint(sde, y0, ts, **kwargs)
        (ys[-1] ** 2).mean().backward()
        seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    return dict(
        method=method,
        steps=steps,
        peak_mib=peak / 1024,
        run_growth_mib=(peak - before) / 1024,
        seconds=seconds,
    )


def run_memory() -> list[dict]:
    rows = []
    for method in MEMORY_METHODS:
        for steps in MEMORY_STEPS:
            cmd = [sys.executable, "-m", "benchmarks.sde", "--memory-case", method]
            cmd.append(str(steps))
            print(f"[sde] memory {method} {steps} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append(dict(method=method, steps=steps, error=out.stderr[-500:]))
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


# ---------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------


def targets(results: list[dict]) -> list[dict]:
    checks = []
    for r in results:
        t = r["per_call_ms"]
        if "diffrax" in t:
            ratio = t["nde"] / t["diffrax"]
            checks.append(
                dict(
                    case=r["case"],
                    target="nde <= 1.0x Diffrax",
                    value=ratio,
                    ok=ratio <= 1.0,
                )
            )
        if "torchsde" in t:
            speedup = t["torchsde"] / t["nde"]
            checks.append(
                dict(
                    case=r["case"],
                    target="nde >= 3x faster than torchsde",
                    value=speedup,
                    ok=speedup >= 3.0,
                )
            )
    return checks


def environment() -> dict:
    env = dict(
        python=platform.python_version(),
        jax=jax.__version__,
        diffrax=diffrax.__version__,
        nde=str(pathlib.Path(nde.__file__).parent),
        cpus=os.cpu_count(),
        loadavg=os.getloadavg(),
    )
    try:
        import torch
        import torchsde

        env.update(
            torch=torch.__version__,
            torchsde=torchsde.__version__,
            torch_threads=torch.get_num_threads(),
        )
    except ImportError:
        pass
    return env


def to_markdown(results, checks, memory, env) -> str:
    lines = ["## Neural SDE (batch 256, 100 steps): per call, ms (median)", ""]
    names = ["nde", "nde[checkpoint]", "diffrax", "torchsde", "nde[unsafe]", "scan"]
    lines.append("| case | " + " | ".join(names) + " | nde/Diffrax | torchsde/nde |")
    lines.append("|---" * (len(names) + 3) + "|")
    for r in results:
        t = r["per_call_ms"]
        cells = [f"{t[n]:.1f}" if n in t else "" for n in names]
        ratio = f"{t['nde'] / t['diffrax']:.2f}" if "diffrax" in t else ""
        speed = f"{t['torchsde'] / t['nde']:.1f}" if "torchsde" in t else ""
        lines.append(
            f"| {r['case']} | " + " | ".join(cells) + f" | {ratio} | {speed} |"
        )
    lines += ["", "| target | case | value | |", "|---|---|---|---|"]
    for c in checks:
        mark = "PASS" if c["ok"] else "FAIL"
        lines.append(f"| {c['target']} | {c['case']} | {c['value']:.2f} | {mark} |")
    if memory:
        lines += [
            "",
            "## Peak memory of one gradient (batch 256, state 64, noise 16)",
            "",
        ]
        lines.append(
            "| method | steps | peak RSS MiB | growth during the run MiB | s |"
        )
        lines.append("|---|---|---|---|---|")
        for m in memory:
            if "error" in m:
                lines.append(f"| {m['method']} | {m['steps']} | error | | |")
                continue
            lines.append(
                f"| {m['method']} | {m['steps']} | {m['peak_mib']:.0f} | "
                f"{m['run_growth_mib']:.1f} | {m['seconds']:.2f} |"
            )
    lines += ["", f"Environment: {json.dumps(env)}"]
    return "\n".join(lines)


def main(argv=None) -> tuple[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--memory", action="store_true", help="also peak memory")
    parser.add_argument("--cases", default="", help="comma-separated case names")
    parser.add_argument("--memory-case", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.memory_case:
        method, steps = opts.memory_case
        print(json.dumps(memory_case(method, int(steps))))
        sys.exit(0)
    wanted = {c for c in opts.cases.split(",") if c}
    load_start = os.getloadavg()
    results = []
    for case in CASES:
        if wanted and case not in wanted:
            continue
        print(f"[sde] {case} ...", file=sys.stderr, flush=True)
        results.append(run_case(case, opts.quick))
    memory = run_memory() if opts.memory else []
    checks = targets(results)
    env = environment()
    env["loadavg_start"] = load_start
    md = to_markdown(results, checks, memory, env)
    return md, dict(environment=env, results=results, targets=checks, memory=memory)


if __name__ == "__main__":
    md, data = main()
    print(md)

"""Forward ODE solves, side by side in one process: nde, Diffrax,
`jax.experimental.ode.odeint` and a hand-written `lax.scan` fixed-step Tsit5 loop.

Cases:

- `neural_adaptive`: neural ODE, MLP 4->64->64->4 (tanh), batch 256 (state (256, 4),
  the MLP vmapped over the batch inside the vector field, an `eqx.Module` held in
  the term), t in [0, 1], Tsit5 + PIDController(rtol=atol=1e-3), dt0=0.1. odeint
  (its own adaptive Dopri5, rtol=atol=1e-3) for comparison.
- `neural_fixed`: the same network, 100 fixed Tsit5 steps (dt0=0.01).
- `lotka_volterra_f64`: Lotka--Volterra in float64, t in [0, 140], Tsit5 +
  PIDController(rtol=atol=1e-8), dt0=0.1; odeint (Dopri5, 1e-8) for comparison.

The adaptive cases pass an explicit dt0 (the same to nde and Diffrax): with
dt0=None, Diffrax 0.7.2 inside `diffeqsolve` always starts with 0.01 (its
`_select_initial_step` tests `isinstance(terms, ODETerm)`, but `diffeqsolve` has
wrapped the term in a `WrapTerm` by then), while nde uses the Hairer--Norsett--Wanner
starting step, so the step counts would differ for a reason unrelated to the loop.
- `tiny_fixed`: batch 1, dim 4, MLP width 32 depth 2, 100 fixed Tsit5 steps.
- `stencil_fixed`: a discretised PDE, Allen-Cahn on a periodic grid of 1,024 points
  (a 3-point stencil through `jnp.roll`), float32, 100 fixed Tsit5 steps: a large
  state and a field without matrix products, where nde's default runs the stages in
  a loop (`scan_stages=None`; unrolled, XLA's fused kernels cost about 10x more).

x64 is enabled at process start (for the float64 case) and the neural-ODE arrays,
parameters and times are explicitly float32, so every case runs in this one
process. Every contestant is a pure function of its array inputs wrapped in one
`jax.jit` around the whole solve (the network's parameters are a jit argument, not
a baked-in constant). nde runs with `Tsit5()` (the default `scan_stages=None`:
unrolled stages for every case here, small states or fields with matrix
products); `nde[scan_stages]` is `Tsit5(scan_stages=True)`.
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental.ode import odeint  # noqa: E402

import nde  # noqa: E402

from . import _timing  # noqa: E402

# ---------------------------------------------------------------------------------
# The hand-written baseline: fixed-step Tsit5 in a `lax.scan`, tableau inline.
# Tsitouras (2011), Table 1. Seven stages, FSAL: the seventh stage is f(t1, y1), so
# a step costs six vector-field evaluations (plus one before the first step).
# ---------------------------------------------------------------------------------

TSIT5_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
TSIT5_A = (
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (
        5.86145544294642,
        -12.92096931784711,
        8.159367898576159,
        -0.071584973281401,
        -0.028269050394068383,
    ),
    # = b (the fifth-order weights): the input of stage 7 is y1.
    (
        0.09646076681806523,
        0.01,
        0.4798896504144996,
        1.379008574103742,
        -3.290069515436081,
        2.324710524099774,
    ),
)


def scan_tsit5(field, t0, dt, num_steps, y0, args):
    """`num_steps` fixed Tsit5 steps of size `dt` from `(t0, y0)`; returns y."""
    dtype = y0.dtype

    def step(carry, i):
        y, f0 = carry
        t = t0 + i.astype(t0.dtype) * dt
        ks = [f0]
        yi = y
        for c, row in zip(TSIT5_C[1:], TSIT5_A, strict=True):
            incr = sum(a * k for a, k in zip(row, ks, strict=False) if a != 0)
            yi = y + dt.astype(dtype) * incr
            ks.append(field(t + c * dt, yi, args))
        return (yi, ks[-1]), None

    f0 = field(t0, y0, args)
    (y, _), _ = jax.lax.scan(step, (y0, f0), jnp.arange(num_steps))
    return y


# ---------------------------------------------------------------------------------
# Vector fields.
# ---------------------------------------------------------------------------------


class BatchedMLPField(eqx.Module):
    """The neural ODE's vector field: an MLP applied to each row of the state."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y)


def reaction_diffusion(t, y, args):
    """Allen-Cahn on a periodic 1-D grid: a 3-point stencil (`jnp.roll`) plus a
    cubic reaction; `args` = the diffusion coefficient (grid units)."""
    return args * (jnp.roll(y, 1) - 2 * y + jnp.roll(y, -1)) + y - y**3


def lotka_volterra(t, y, args):
    alpha, beta, gamma, delta = args[0], args[1], args[2], args[3]
    prey, predator = y[0], y[1]
    return jnp.stack(
        [
            alpha * prey - beta * prey * predator,
            -gamma * predator + delta * prey * predator,
        ]
    )


_NFE = [0]


def _count():
    _NFE[0] += 1


class Counted(eqx.Module):
    """Wraps a vector field to count its evaluations at run time (a host
    callback per evaluation: only for the separate, untimed NFE run)."""

    inner: Any

    def __call__(self, t, y, args):
        jax.debug.callback(_count)
        return self.inner(t, y, args)


# ---------------------------------------------------------------------------------
# Contestants: pure functions of `(params, y0)` returning (y(t1), accepted, rejected).
# `make_field(params)` builds the vector field; `count=True` wraps it in `Counted`.
# ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    name: str
    description: str
    make_field: Callable  # params -> field(t, y, args)
    field_args: Callable  # params -> args passed to the field (None or params)
    params: Any
    y0: Any
    t0: Any
    t1: Any
    adaptive: bool
    rtol: float = 0.0
    dt0: Any = None
    num_steps: int = 0
    contestants: tuple[str, ...] = ()


def _field(problem: Problem, params, count: bool):
    field = problem.make_field(params)
    return Counted(field) if count else field


def make_contestant(problem: Problem, name: str, count: bool = False) -> Callable:
    p = problem
    if name in ("nde", "nde[scan_stages]", "diffrax"):
        lib = diffrax if name == "diffrax" else nde
        solver = (
            nde.Tsit5(scan_stages=True) if name == "nde[scan_stages]" else lib.Tsit5()
        )
        if p.adaptive:
            controller = lib.PIDController(rtol=p.rtol, atol=p.rtol)
        else:
            controller = lib.ConstantStepSize()

        def fn(params, y0):
            sol = lib.diffeqsolve(
                lib.ODETerm(_field(p, params, count)),
                solver,
                p.t0,
                p.t1,
                p.dt0,
                y0,
                args=p.field_args(params),
                stepsize_controller=controller,
                max_steps=4096,
            )
            return (
                sol.ys[-1],
                sol.stats["num_accepted_steps"],
                sol.stats["num_rejected_steps"],
            )

        return fn
    if name == "scan":

        def fn(params, y0):
            field = _field(p, params, count)
            args = p.field_args(params)
            y = scan_tsit5(
                field, jnp.asarray(p.t0), jnp.asarray(p.dt0), p.num_steps, y0, args
            )
            return y, None, None

        return fn
    if name == "odeint":

        def fn(params, y0):
            field = _field(p, params, count)
            args = p.field_args(params)
            ts = jnp.asarray([p.t0, p.t1], dtype=jnp.result_type(p.t0))
            ys = odeint(
                lambda y, t, prm: field(t, y, args),
                y0,
                ts,
                params,
                rtol=p.rtol,
                atol=p.rtol,
            )
            return ys[-1], None, None

        return fn
    raise ValueError(name)


# ---------------------------------------------------------------------------------
# Problems.
# ---------------------------------------------------------------------------------


def _mlp_field(width, depth, key):
    mlp = eqx.nn.MLP(
        4, 4, width, depth, activation=jnp.tanh, key=key, dtype=jnp.float32
    )
    return BatchedMLPField(mlp)


def _neural(name, description, batch, width, adaptive, contestants, seed):
    kfield, ky = jr.split(jr.PRNGKey(seed))
    field = _mlp_field(width, 2, kfield)
    params, static = eqx.partition(field, eqx.is_array)
    y0 = jr.normal(ky, (batch, 4), dtype=jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    return Problem(
        name=name,
        description=description,
        make_field=lambda prm: eqx.combine(prm, static),
        field_args=lambda prm: None,
        params=params,
        y0=y0,
        t0=np.float32(0.0),
        t1=np.float32(1.0),
        adaptive=adaptive,
        rtol=1e-3,
        dt0=np.float32(0.1) if adaptive else np.float32(0.01),
        num_steps=0 if adaptive else 100,
        contestants=contestants,
    )


def problems() -> list[Problem]:
    lv = Problem(
        name="lotka_volterra_f64",
        description=(
            "Lotka-Volterra, float64, t in [0, 140], y0=(10, 10), "
            "args=(0.1, 0.02, 0.4, 0.02), Tsit5 + PID rtol=atol=1e-8, dt0=0.1 "
            "(odeint: Dopri5, rtol=atol=1e-8, own first step)"
        ),
        make_field=lambda prm: lotka_volterra,
        field_args=lambda prm: prm,
        params=jnp.asarray([0.1, 0.02, 0.4, 0.02], dtype=jnp.float64),
        y0=jnp.asarray([10.0, 10.0], dtype=jnp.float64),
        t0=np.float64(0.0),
        t1=np.float64(140.0),
        adaptive=True,
        rtol=1e-8,
        dt0=np.float64(0.1),
        contestants=("nde", "diffrax", "odeint", "nde[scan_stages]"),
    )
    x = np.linspace(0.0, 2 * np.pi, 1024, endpoint=False)
    stencil = Problem(
        name="stencil_fixed",
        description=(
            "Allen-Cahn y' = D (y[i-1] - 2 y[i] + y[i+1]) + y - y^3 on a periodic "
            "grid of 1,024 points (jnp.roll), D=0.5, float32, t in [0, 1], 100 "
            "fixed Tsit5 steps (dt0=0.01): a discretised PDE, no matrix product"
        ),
        make_field=lambda prm: reaction_diffusion,
        field_args=lambda prm: prm,
        params=jnp.asarray(0.5, dtype=jnp.float32),
        y0=jnp.asarray(0.5 * np.sin(x) + 0.2 * np.cos(7 * x), dtype=jnp.float32),
        t0=np.float32(0.0),
        t1=np.float32(1.0),
        adaptive=False,
        dt0=np.float32(0.01),
        num_steps=100,
        contestants=("nde", "diffrax", "scan", "nde[scan_stages]"),
    )
    return [
        _neural(
            "neural_adaptive",
            "MLP 4-64-64-4 tanh, batch 256, float32, t in [0, 1], Tsit5 + PID "
            "rtol=atol=1e-3, dt0=0.1 (odeint: Dopri5, rtol=atol=1e-3, own first step)",
            batch=256,
            width=64,
            adaptive=True,
            contestants=("nde", "diffrax", "odeint", "nde[scan_stages]"),
            seed=0,
        ),
        _neural(
            "neural_fixed",
            "MLP 4-64-64-4 tanh, batch 256, float32, t in [0, 1], 100 fixed Tsit5 "
            "steps (dt0=0.01)",
            batch=256,
            width=64,
            adaptive=False,
            contestants=("nde", "diffrax", "scan", "nde[scan_stages]"),
            seed=0,
        ),
        lv,
        stencil,
        _neural(
            "tiny_fixed",
            "batch 1, dim 4, MLP 4-32-32-4 tanh, float32, 100 fixed Tsit5 steps "
            "(dt0=0.01)",
            batch=1,
            width=32,
            adaptive=False,
            contestants=("nde", "diffrax", "scan", "nde[scan_stages]"),
            seed=1,
        ),
    ]


# ---------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------


def _warm_process():
    """Compile something unrelated with each library once, so that one-off costs
    (first use of a primitive's lowering, imports inside libraries) are not
    charged to whichever contestant is measured first."""
    y0 = jnp.ones((3,), jnp.float32)
    for lib in (nde, diffrax):

        def f(y0, lib=lib):
            return lib.diffeqsolve(
                lib.ODETerm(lambda t, y, a: -y),
                lib.Tsit5(),
                np.float32(0),
                np.float32(1),
                None,
                y0,
                stepsize_controller=lib.PIDController(rtol=1e-3, atol=1e-3),
            ).ys

        _timing.block(jax.jit(f)(y0))
    _timing.block(
        jax.jit(lambda y: odeint(lambda y, t: -y, y, jnp.asarray([0.0, 1.0])))(y0)
    )


def run_problem(problem: Problem, quick: bool) -> dict:
    args = (problem.params, problem.y0)
    names = problem.contestants
    rows: dict[str, dict] = {name: {} for name in names}
    # Per-call times: one jitted function per contestant, timed round-robin.
    jitted = {name: jax.jit(make_contestant(problem, name)) for name in names}
    outputs = {}
    for name in names:
        outputs[name] = jax.device_get(jitted[name](*args))
    times = _timing.per_call_times(
        jitted,
        {name: args for name in names},
        target_s=0.5 if quick else 3.0,
        rounds=3 if quick else 7,
    )
    # Compile times: cold, fresh jit objects.
    cts = _timing.compile_times(
        {name: make_contestant(problem, name) for name in names},
        {name: args for name in names},
        repeats=1 if quick else 5,
    )
    for name in names:
        rows[name]["compile"] = dataclasses.asdict(cts[name])
    # Number of vector field evaluations (separate, instrumented, untimed run).
    for name in names:
        _NFE[0] = 0
        _timing.block(jax.jit(make_contestant(problem, name, count=True))(*args))
        jax.effects_barrier()
        rows[name]["nfe"] = _NFE[0]
    ref_name = "diffrax"
    ref = np.asarray(outputs[ref_name][0])
    for name in names:
        y, acc, rej = outputs[name]
        y = np.asarray(y)
        rows[name].update(
            per_call=dataclasses.asdict(times[name]),
            accepted=None if acc is None else int(acc),
            rejected=None if rej is None else int(rej),
            max_abs_diff_vs_diffrax=float(np.max(np.abs(y - ref))),
            max_abs_y=float(np.max(np.abs(y))),
        )
    jax.clear_caches()
    return dict(name=problem.name, description=problem.description, rows=rows)


def _ratio(rows, a, b, key):
    if a not in rows or b not in rows:
        return None
    if key == "per_call":
        return rows[a]["per_call"]["median_s"] / rows[b]["per_call"]["median_s"]
    return rows[a]["compile"]["total_s"] / rows[b]["compile"]["total_s"]


def targets(results: list[dict]) -> list[dict]:
    """The performance targets, each PASS/FAIL on the medians."""
    by = {r["name"]: r["rows"] for r in results}
    out = []

    def add(target, case, value, limit, unit="x"):
        if value is None:
            return
        out.append(
            dict(
                target=target,
                case=case,
                value=value,
                limit=limit,
                unit=unit,
                passed=bool(value <= limit),
            )
        )

    for case, rows in by.items():
        add(
            "forward per call <= 1.0x Diffrax",
            case,
            _ratio(rows, "nde", "diffrax", "per_call"),
            1.0,
        )
    for case in ("neural_fixed",):
        if case in by:
            add(
                "fixed-step forward <= 1.15x lax.scan",
                case,
                _ratio(by[case], "nde", "scan", "per_call"),
                1.15,
            )
    for case, rows in by.items():
        add(
            "compile time <= 0.7x Diffrax",
            case,
            _ratio(rows, "nde", "diffrax", "compile"),
            0.7,
        )
    for case, rows in by.items():
        n, d = rows["nde"], rows["diffrax"]
        diff = max(
            abs(n["accepted"] - d["accepted"]), abs(n["rejected"] - d["rejected"])
        )
        add("accepted/rejected steps = Diffrax (within 1)", case, diff, 1, "steps")
    if "tiny_fixed" in by:
        add(
            "tiny problem forward <= 1.3x lax.scan",
            "tiny_fixed",
            _ratio(by["tiny_fixed"], "nde", "scan", "per_call"),
            1.3,
        )
    return out


# ---------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------


def _fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 0.9995:  # below this, 3 significant digits of ms stay below 1000
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def environment() -> dict:
    cpu = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        rev = "unknown"
    return dict(
        cpu=cpu,
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        jax=jax.__version__,
        jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        equinox=eqx.__version__,
        diffrax=diffrax.__version__,
        nde=nde.__version__,
        git=rev,
        backend=jax.default_backend(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        nde_path=os.path.dirname(nde.__file__),
        loadavg_end=os.getloadavg(),
    )


def to_markdown(results: list[dict], checks: list[dict], env: dict) -> str:
    lines = ["# ODE forward benchmarks", ""]
    lines.append(
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), backend {env['backend']}; "
        f"jax {env['jax']}, equinox {env['equinox']}, diffrax {env['diffrax']}, "
        f"nde {env['nde']} (git {env['git']}, from `{env['nde_path']}`); "
        f"python {env['python']}."
    )
    lines.append("")
    fmt = lambda la: "/".join(f"{x:.2f}" for x in la)
    lines.append(
        f"Load average (1/5/15 min) at start {fmt(env['loadavg_start'])}, at end "
        f"{fmt(env['loadavg_end'])}: on {env['cpu_count']} cores, a load well above "
        "what this benchmark adds (~1) means other processes competed for the CPU."
    )
    lines.append("")
    lines.append(
        "Per call: median wall time of a call of the compiled `jax.jit` function "
        "(block_until_ready), after warm-up; in brackets the interquartile range "
        "relative to the median, and the number of calls. Compile: cold "
        "`jit(f).lower(...).compile()` after `jax.clear_caches()`, median of "
        "repeats (trace+lower / XLA). NFE: vector-field evaluations, counted in a "
        "separate instrumented run. Δy: max |y(t1) - y_diffrax(t1)|."
    )
    for r in results:
        rows = r["rows"]
        lines += ["", f"## {r['name']}", "", r["description"], ""]
        lines.append(
            "| contestant | per call | compile (trace+lower / XLA) | "
            "accepted / rejected | NFE | Δy vs diffrax |"
        )
        lines.append("|---|---|---|---|---|---|")
        for name, row in rows.items():
            pc, ct = row["per_call"], row["compile"]
            steps = (
                "-"
                if row["accepted"] is None
                else f"{row['accepted']} / {row['rejected']}"
            )
            lines.append(
                f"| {name} | {_fmt_time(pc['median_s'])} "
                f"(IQR {100 * (pc['p75_s'] - pc['p25_s']) / pc['median_s']:.0f}%, "
                f"n={pc['n']}) | {_fmt_time(ct['total_s'])} "
                f"({_fmt_time(ct['lower_s'])} / {_fmt_time(ct['xla_s'])}) | "
                f"{steps} | {row['nfe']} | {row['max_abs_diff_vs_diffrax']:.2e} |"
            )
        lines.append("")
        pairs = [
            ("nde", "diffrax"),
            ("nde", "scan"),
            ("diffrax", "scan"),
            ("nde", "odeint"),
            ("diffrax", "odeint"),
            ("nde[scan_stages]", "diffrax"),
            ("nde[scan_stages]", "nde"),
        ]
        lines.append("| ratio | per call | compile |")
        lines.append("|---|---|---|")
        for a, b in pairs:
            pc = _ratio(rows, a, b, "per_call")
            if pc is None:
                continue
            lines.append(
                f"| {a} / {b} | {_fmt_ratio(pc)} | "
                f"{_fmt_ratio(_ratio(rows, a, b, 'compile'))} |"
            )
    lines += ["", "## Targets", "", "| target | case | value | limit | result |"]
    lines.append("|---|---|---|---|---|")
    for c in checks:
        value = (
            f"{c['value']:.2f}x" if c["unit"] == "x" else f"{c['value']} {c['unit']}"
        )
        limit = f"{c['limit']}x" if c["unit"] == "x" else f"{c['limit']} {c['unit']}"
        lines.append(
            f"| {c['target']} | {c['case']} | {value} | {limit} | "
            f"{'PASS' if c['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> tuple[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--cases", default="", help="comma-separated case names")
    opts = parser.parse_args(argv)
    wanted = {c for c in opts.cases.split(",") if c}
    load_start = os.getloadavg()
    _warm_process()
    results = []
    for problem in problems():
        if wanted and problem.name not in wanted:
            continue
        print(f"[ode_forward] {problem.name} ...", file=sys.stderr, flush=True)
        results.append(run_problem(problem, opts.quick))
    checks = targets(results)
    env = environment()
    env["loadavg_start"] = load_start
    md = to_markdown(results, checks, env)
    data = dict(environment=env, results=results, targets=checks)
    return md, data


if __name__ == "__main__":
    md, data = main()
    print(md)
    json.dump(data, sys.stderr, indent=1)

"""Gradients of ODE solves, side by side in one process: nde and Diffrax with the
same adjoint, and reverse mode through the hand-written `lax.scan` Tsit5 loop.

Cases (the problems of `ode_forward.py`; loss `sum(y(t1)**2)`, gradient with
respect to the network's parameters and y0):

- `neural_fixed`: MLP 4->64->64->4 tanh, batch 256, 100 fixed Tsit5 steps.
- `neural_adaptive`: the same network, Tsit5 + PIDController(rtol=atol=1e-3).
- `tiny_fixed`: batch 1, dim 4, MLP width 32, 100 fixed Tsit5 steps (overhead-bound).

For each: per-call time of the gradient (median, round-robin), compile time of the
gradient (cold, median of repeats), and nde's forward per-call time, for the ratio
"gradient / forward". Contestants: `nde` (RecursiveCheckpointAdjoint, the default),
`diffrax` (its RecursiveCheckpointAdjoint, the default), `scan` (jax.grad through
`lax.scan`, fixed-step cases only), `nde[backsolve]` / `diffrax[backsolve]`, and on
the fixed-step cases `nde[every step]` / `diffrax[every step]`:
`RecursiveCheckpointAdjoint(checkpoints=max_steps)` with `max_steps` the number of
steps (nde then records every state on the forward pass and recomputes no forward
step).

Peak memory is measured by `ode_gradient_memory.py` (one subprocess per case).
"""

import argparse
import dataclasses
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import nde  # noqa: E402

from . import _timing  # noqa: E402
from .ode_forward import (  # noqa: E402
    Problem,
    _fmt_ratio,
    _fmt_time,
    _warm_process,
    environment,
    problems,
    scan_tsit5,
)

CASES = ("neural_fixed", "neural_adaptive", "tiny_fixed")


def _solve(lib, adjoint_name, p: Problem, params, y0):
    max_steps = 4096
    if adjoint_name == "every_step":
        # A checkpoint for every step (fixed steps only: their number is known).
        max_steps = p.num_steps
        adjoint = lib.RecursiveCheckpointAdjoint(checkpoints=max_steps)
    else:
        adjoint = {
            "recursive": lib.RecursiveCheckpointAdjoint(),
            "backsolve": lib.BacksolveAdjoint(),
        }[adjoint_name]
    if p.adaptive:
        controller = lib.PIDController(rtol=p.rtol, atol=p.rtol)
    else:
        controller = lib.ConstantStepSize()
    sol = lib.diffeqsolve(
        lib.ODETerm(p.make_field(params)),
        lib.Tsit5(),
        p.t0,
        p.t1,
        p.dt0,
        y0,
        args=p.field_args(params),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    return sol.ys[-1]


def contestants(p: Problem) -> dict:
    """name -> loss(params, y0); the benchmark differentiates each."""
    out = {}
    for name, lib, adjoint in [
        ("nde", nde, "recursive"),
        ("diffrax", diffrax, "recursive"),
        ("nde[backsolve]", nde, "backsolve"),
        ("diffrax[backsolve]", diffrax, "backsolve"),
    ]:
        out[name] = lambda params, y0, lib=lib, adjoint=adjoint: jnp.sum(
            _solve(lib, adjoint, p, params, y0) ** 2
        )
    if not p.adaptive:
        for name, lib in [("nde[every step]", nde), ("diffrax[every step]", diffrax)]:
            out[name] = lambda params, y0, lib=lib: jnp.sum(
                _solve(lib, "every_step", p, params, y0) ** 2
            )

        def scan_loss(params, y0):
            y = scan_tsit5(
                p.make_field(params),
                jnp.asarray(p.t0),
                jnp.asarray(p.dt0),
                p.num_steps,
                y0,
                p.field_args(params),
            )
            return jnp.sum(y**2)

        out["scan"] = scan_loss
    return out


def run_problem(p: Problem, quick: bool) -> dict:
    args = (p.params, p.y0)
    losses = contestants(p)
    grads = {name: jax.grad(f, argnums=(0, 1)) for name, f in losses.items()}
    jitted = {name: jax.jit(g) for name, g in grads.items()}
    jitted["nde forward"] = jax.jit(losses["nde"])
    # What differentiating the vector field itself costs: ten chained evaluations
    # and their VJP (forward and backward), so a gradient's floor can be read off.
    jitted["field x10"], jitted["field x10 VJP"] = _field_chain(p)
    values = {name: jax.device_get(f(*args)) for name, f in jitted.items()}
    times = _timing.per_call_times(
        jitted,
        {name: args for name in jitted},
        target_s=0.5 if quick else 3.0,
        rounds=3 if quick else 7,
    )
    cts = _timing.compile_times(
        grads, {name: args for name in grads}, repeats=1 if quick else 3
    )
    ref = _flat(values["diffrax"])
    rows = {}
    for name in jitted:
        row = dict(per_call=dataclasses.asdict(times[name]))
        if name in cts:
            row["compile"] = dataclasses.asdict(cts[name])
            diff = np.max(np.abs(_flat(values[name]) - ref)) / np.max(np.abs(ref))
            row["rel_diff_vs_diffrax"] = float(diff)
        rows[name] = row
    jax.clear_caches()
    return dict(name=p.name, description=p.description, rows=rows)


def _field_chain(p: Problem):
    def chain(params, y0):
        field, args = p.make_field(params), p.field_args(params)
        y = y0
        for i in range(10):
            y = y + 0.01 * field(0.01 * i, y, args)
        return jnp.sum(y**2)

    return jax.jit(chain), jax.jit(jax.grad(chain, argnums=(0, 1)))


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _pc(rows, name):
    return rows[name]["per_call"]["median_s"] if name in rows else None


def _ct(rows, name):
    row = rows.get(name, {})
    return row["compile"]["total_s"] if "compile" in row else None


def targets(results: list[dict]) -> list[dict]:
    by = {r["name"]: r["rows"] for r in results}
    out = []

    def add(target, case, num, den, limit):
        if num is None or den is None:
            return
        value = num / den
        out.append(
            dict(
                target=target,
                case=case,
                value=value,
                limit=limit,
                passed=value <= limit,
            )
        )

    for case in ("neural_fixed", "neural_adaptive"):
        if case in by:
            r = by[case]
            add(
                "gradient per call <= 0.7x Diffrax",
                case,
                _pc(r, "nde"),
                _pc(r, "diffrax"),
                0.7,
            )
            add(
                "gradient compile <= 0.6x Diffrax",
                case,
                _ct(r, "nde"),
                _ct(r, "diffrax"),
                0.6,
            )
    if "neural_fixed" in by:
        r = by["neural_fixed"]
        add(
            "nde gradient / nde forward <= 3.5",
            "neural_fixed",
            _pc(r, "nde"),
            _pc(r, "nde forward"),
            3.5,
        )
    if "tiny_fixed" in by:
        r = by["tiny_fixed"]
        add(
            "tiny gradient <= 2x lax.scan reverse mode",
            "tiny_fixed",
            _pc(r, "nde"),
            _pc(r, "scan"),
            2.0,
        )
    return out


def to_markdown(results, checks, env) -> str:
    lines = ["# ODE gradient benchmarks", ""]
    lines.append(
        f"CPU: {env['cpu']} ({env['cpu_count']} cores); jax {env['jax']}, diffrax "
        f"{env['diffrax']}, nde {env['nde']} (git {env['git']}). Load average at "
        f"start {env['loadavg_start'][0]:.2f}, at end {env['loadavg_end'][0]:.2f}."
    )
    lines.append("")
    lines.append(
        "Gradient of `sum(y(t1)**2)` with respect to the parameters and y0. Per call: "
        "median of round-robin calls of the compiled function; compile: cold "
        "`jit(grad(f)).lower().compile()`, median of repeats. `nde forward` is the "
        "forward solve alone. `field x10`: ten chained evaluations of the vector field "
        "(Euler-like updates), and `field x10 VJP` their gradient: the cost of "
        "differentiating the field itself. Rel. diff: max |g - g_diffrax| / max "
        "|g_diffrax|."
    )
    for r in results:
        rows = r["rows"]
        lines += ["", f"## {r['name']}", "", r["description"], ""]
        lines.append(
            "| contestant | per call | compile (trace+lower / XLA) | rel. diff |"
        )
        lines.append("|---|---|---|---|")
        for name, row in rows.items():
            pc = row["per_call"]
            ct = row.get("compile")
            compile_txt = (
                "-"
                if ct is None
                else f"{_fmt_time(ct['total_s'])} ({_fmt_time(ct['lower_s'])} / "
                f"{_fmt_time(ct['xla_s'])})"
            )
            diff = row.get("rel_diff_vs_diffrax")
            lines.append(
                f"| {name} | {_fmt_time(pc['median_s'])} (IQR "
                f"{100 * (pc['p75_s'] - pc['p25_s']) / pc['median_s']:.0f}%) | "
                f"{compile_txt} | {'-' if diff is None else f'{diff:.1e}'} |"
            )
        lines += ["", "| ratio | per call | compile |", "|---|---|---|"]
        for a, b in [
            ("nde", "diffrax"),
            ("nde", "scan"),
            ("diffrax", "scan"),
            ("nde", "nde forward"),
            ("nde[backsolve]", "diffrax[backsolve]"),
            ("nde[every step]", "diffrax[every step]"),
            ("nde[every step]", "diffrax"),
            ("nde[every step]", "nde forward"),
            ("nde[every step]", "scan"),
            ("field x10 VJP", "field x10"),
        ]:
            if a in rows and b in rows:
                pc = _pc(rows, a) / _pc(rows, b)
                ca, cb = _ct(rows, a), _ct(rows, b)
                ct = None if ca is None or cb is None else ca / cb
                lines.append(f"| {a} / {b} | {_fmt_ratio(pc)} | {_fmt_ratio(ct)} |")
    lines += ["", "## Targets", "", "| target | case | value | limit | result |"]
    lines.append("|---|---|---|---|---|")
    for c in checks:
        lines.append(
            f"| {c['target']} | {c['case']} | {c['value']:.2f}x | {c['limit']}x | "
            f"{'PASS' if c['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> tuple[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--cases", default="", help="comma-separated case names")
    opts = parser.parse_args(argv)
    wanted = {c for c in opts.cases.split(",") if c} or set(CASES)
    load_start = os.getloadavg()
    _warm_process()
    results = []
    for p in problems():
        if p.name not in wanted:
            continue
        print(f"[ode_gradient] {p.name} ...", file=sys.stderr, flush=True)
        results.append(run_problem(p, opts.quick))
    checks = targets(results)
    env = environment()
    env["loadavg_start"] = load_start
    return to_markdown(results, checks, env), dict(
        environment=env, results=results, targets=checks
    )


if __name__ == "__main__":
    md, data = main()
    print(md)

"""Peak memory of the gradient of a long solve: nde vs Diffrax, per adjoint.

The problem: a 1,000-dimensional state, `dy/dt = -a * y + b * tanh(roll(y, 1))`
(parameters `a`, `b`: vectors of 1,000), float32, t in [0, 1], Tsit5 with a fixed
step `1 / steps` for 1,000 and 10,000 steps, loss `sum(y(1)**2)`, gradient with
respect to `a`, `b` and y0. A cheap vector field on purpose: what a stored step
costs (the state and the stages, 4 KB each) then dominates, so the memory the
adjoint keeps shows; a state this size is that of a small PDE or a batch of
neural ODEs.

Adjoints: `RecursiveCheckpointAdjoint()` (default checkpoints: about log2(max_steps)
in both libraries), `DirectAdjoint()` and `BacksolveAdjoint()`, each with
`max_steps = steps + 8` (float32 times: `steps` additions of `1 / steps` may fall
short of 1 by more than the solver's snapping tolerance, leaving one sliver step).

Each run is its own process, so that it measures only itself (every case runs
`--repeats` times, default 3, the cases taking turns; the median counts): the process's
peak resident set size (`VmHWM`) while the compiled gradient runs once, after
compilation and a first call. Before the measured call, freed heap is returned to
the system (`malloc_trim`; otherwise what the compiler freed stays resident and
differs from process to process by tens of MiB) and the high-water mark is reset
through `/proc/self/clear_refs`. "Growth" is that peak minus the resident size just
before the call (what the gradient itself holds), and "XLA temp" the temporary
buffers of the compiled gradient (`memory_analysis()`: exact, what the adjoint
stores).

Targets (issue 3): nde's peak <= Diffrax's with the same adjoint; nde at 10,000
steps <= 2x nde at 1,000 steps (RecursiveCheckpointAdjoint and BacksolveAdjoint:
the adjoints whose memory does not grow with the number of steps).

    python -m benchmarks.ode_gradient_memory
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from ._memory import reset_peak, rss_kib, trim_heap

STEPS = (1_000, 10_000)
DIM = 1_000
ADJOINTS = ("recursive", "direct", "backsolve")
LIBS = ("nde", "diffrax")


def memory_case(lib_name: str, adjoint_name: str, steps: int) -> dict:
    """Run in a fresh process: peak RSS of one gradient evaluation."""
    import jax
    import jax.numpy as jnp

    if lib_name == "nde":
        import nde as lib
    else:
        import diffrax as lib

    adjoint = {
        "recursive": lib.RecursiveCheckpointAdjoint,
        "direct": lib.DirectAdjoint,
        "backsolve": lib.BacksolveAdjoint,
    }[adjoint_name]()

    def field(t, y, args):
        a, b = args
        return -a * y + b * jnp.tanh(jnp.roll(y, 1))

    def loss(params, y0):
        sol = lib.diffeqsolve(
            lib.ODETerm(field),
            lib.Tsit5(),
            0.0,
            1.0,
            1.0 / steps,
            y0,
            args=params,
            adjoint=adjoint,
            max_steps=steps + 8,
        )
        return jnp.sum(sol.ys[-1] ** 2)

    f32 = jnp.float32
    i = jnp.arange(DIM, dtype=f32)
    params = (0.5 + 0.1 * jnp.sin(i), 0.8 + 0.1 * jnp.cos(i))
    y0 = jnp.cos(0.01 * i)
    start = time.perf_counter()
    grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, y0).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(grad(params, y0))  # first call: allocations settle
    trim_heap()
    before = rss_kib()
    reset_peak()
    start = time.perf_counter()
    g = jax.block_until_ready(grad(params, y0))
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    mem = grad.memory_analysis()
    return dict(
        xla_temp_mib=mem.temp_size_in_bytes / 2**20,
        xla_code_mib=mem.generated_code_size_in_bytes / 2**20,
        lib=lib_name,
        adjoint=adjoint_name,
        steps=steps,
        peak_mib=peak / 1024,
        growth_mib=(peak - before) / 1024,
        seconds=seconds,
        compile_s=compile_s,
        grad_norm=float(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g))),
    )


def run_all(libs=LIBS, adjoints=ADJOINTS, steps=STEPS, repeats=3) -> list[dict]:
    """Each case `repeats` times, in fresh processes taking turns (the machine's
    state drifts: one process's peak RSS moved by +-3 MiB from run to run); a
    case's row is its run with the median peak, with every peak listed."""
    runs: dict[tuple, list[dict]] = {}
    for rep in range(repeats):
        for adjoint in adjoints:
            for n in steps:
                for lib in libs:
                    print(
                        f"[memory] {lib} {adjoint} {n} ({rep + 1}/{repeats}) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.setdefault((adjoint, n, lib), []).append(
                        _run_case(lib, adjoint, n)
                    )
    rows = []
    for results in runs.values():
        ok = sorted(
            (r for r in results if "error" not in r), key=lambda r: r["peak_mib"]
        )
        if not ok:
            rows.append(results[0])
            continue
        row = dict(ok[(len(ok) - 1) // 2])  # the median (the lower one if even)
        row["peaks_mib"] = [r["peak_mib"] for r in results if "error" not in r]
        rows.append(row)
    return rows


def _run_case(lib: str, adjoint: str, n: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.ode_gradient_memory"]
    cmd += ["--case", lib, adjoint, str(n)]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return dict(lib=lib, adjoint=adjoint, steps=n, error=out.stderr[-800:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _find(rows, lib, adjoint, steps):
    for r in rows:
        if (r["lib"], r["adjoint"], r["steps"]) == (lib, adjoint, steps) and (
            "error" not in r
        ):
            return r
    return None


def _check(target: str, a, b, limit: float) -> dict | None:
    """`a`'s peak over `b`'s against `limit`; None if either case failed."""
    if not (a and b):
        return None
    value = a["peak_mib"] / b["peak_mib"]
    return dict(target=target, value=value, limit=limit, passed=value <= limit)


def targets(rows) -> list[dict]:
    checks = [
        _check(
            f"peak <= Diffrax ({adjoint}, {n} steps)",
            _find(rows, "nde", adjoint, n),
            _find(rows, "diffrax", adjoint, n),
            1.0,
        )
        for adjoint in ADJOINTS
        for n in STEPS
    ]
    checks += [
        _check(
            f"nde peak {STEPS[-1]} / {STEPS[0]} steps <= 2 ({adjoint})",
            _find(rows, "nde", adjoint, STEPS[-1]),
            _find(rows, "nde", adjoint, STEPS[0]),
            2.0,
        )
        for adjoint in ("recursive", "backsolve")
    ]
    return [c for c in checks if c is not None]


def to_markdown(rows, checks) -> str:
    import platform

    lines = ["# Gradient peak memory (ode_gradient_memory.py)", ""]
    lines.append(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
        f"State {DIM}, float32, Tsit5 fixed steps, gradient w.r.t. parameters and "
        "y0; one process per run, each case run several times in turn. Peak: the "
        "process's peak RSS during one call of the compiled gradient, the median "
        "of the runs (all runs' peaks in brackets); growth: peak minus RSS before "
        "the call."
    )
    lines += [
        "",
        "| adjoint | steps | lib | peak RSS | growth | XLA temp | time per call | compile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            err = r["error"].strip().splitlines()[-1][:120]
            lines.append(
                f"| {r['adjoint']} | {r['steps']} | {r['lib']} | error: {err} | | | | |"
            )
            continue
        lines.append(
            f"| {r['adjoint']} | {r['steps']} | {r['lib']} | {r['peak_mib']:.0f} MiB "
            f"({', '.join(f'{p:.0f}' for p in r.get('peaks_mib', []))}) | "
            f"{r['growth_mib']:.1f} MiB | {r['xla_temp_mib']:.2f} MiB | "
            f"{r['seconds']:.2f} s | {r['compile_s']:.1f} s |"
        )
    lines += ["", "| target | value | limit | result |", "|---|---|---|---|"]
    for c in checks:
        lines.append(
            f"| {c['target']} | {c['value']:.2f}x | {c['limit']}x | "
            f"{'PASS' if c['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> tuple[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--libs", default=",".join(LIBS))
    parser.add_argument("--adjoints", default=",".join(ADJOINTS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per case")
    opts = parser.parse_args(argv)
    if opts.case:
        lib, adjoint, steps = opts.case
        print(json.dumps(memory_case(lib, adjoint, int(steps))))
        sys.exit(0)
    rows = run_all(opts.libs.split(","), opts.adjoints.split(","), repeats=opts.repeats)
    checks = targets(rows)
    return to_markdown(rows, checks), dict(rows=rows, targets=checks)


if __name__ == "__main__":
    md, data = main()
    out = pathlib.Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "ode_gradient_memory.md").write_text(md)
    (out / "ode_gradient_memory.json").write_text(json.dumps(data, indent=1))
    print(md)

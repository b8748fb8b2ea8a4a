"""Shared timing helpers for the benchmarks.

Two measurements, each defined once here so that every contestant is measured the
same way:

- **Compile time** (`compile_time`): the wall time of `jax.jit(fn).lower(*args)`
  (tracing + lowering to StableHLO: the Python-side cost) plus `.compile()` (XLA),
  for a fresh `jax.jit` object after `jax.clear_caches()`, so that no tracing or
  lowering cache of an earlier run (ours or the library's nested `jit`s) is hit. The
  median of `repeats` such cold compiles within one warm process (the process has
  already imported everything and compiled something unrelated, so one-off import
  and JAX start-up costs are not charged to whoever happens to run first).
  Repeats go round-robin over the contestants.
  `first_call_compile_time` is the other common definition (first call minus the
  steady-state call), kept for cross-checking.

- **Per-call time** (`per_call_times`): the median wall time of a call of the
  already-compiled `jax.jit` function, `jax.block_until_ready` on its output, after
  warm-up calls. Contestants are timed round-robin (a batch of calls of each, then
  the next, repeated) so that slow drift of the machine (frequency scaling, other
  load) affects all of them alike.
"""

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class CompileTime:
    lower_s: float  # trace + lower to StableHLO (median)
    xla_s: float  # XLA compile (median)
    total_s: float  # median of lower + compile over the repeats
    all_total_s: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class CallTime:
    median_s: float
    p25_s: float
    p75_s: float
    n: int

    @property
    def iqr_rel(self) -> float:
        """Interquartile range relative to the median: a noise indicator."""
        return (self.p75_s - self.p25_s) / self.median_s


def block(x):
    return jax.block_until_ready(x)


def compile_times(
    fns: dict[str, Callable], args: dict[str, Sequence], repeats: int = 3
) -> dict[str, CompileTime]:
    """Cold `jax.jit(fn).lower(*args).compile()` time of each contestant; see the
    module docstring. The repeats go round-robin over the contestants, so that a
    change of machine load affects all of them alike."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            jax.clear_caches()
            gc.collect()
            jitted = jax.jit(fn)
            start = time.perf_counter()
            lowered = jitted.lower(*args[name])
            mid = time.perf_counter()
            lowered.compile()
            end = time.perf_counter()
            samples[name].append((mid - start, end - mid))
    jax.clear_caches()
    out = {}
    for name, s in samples.items():
        totals = [a + b for a, b in s]
        out[name] = CompileTime(
            lower_s=statistics.median(a for a, _ in s),
            xla_s=statistics.median(b for _, b in s),
            total_s=statistics.median(totals),
            all_total_s=tuple(totals),
        )
    return out


def compile_time(fn: Callable, args: Sequence, repeats: int = 3) -> CompileTime:
    """`compile_times` of one function."""
    return compile_times({"fn": fn}, {"fn": args}, repeats)["fn"]


def first_call_compile_time(fn: Callable, args: Sequence, steady_s: float) -> float:
    """First call of a fresh `jax.jit(fn)` (after `jax.clear_caches()`) minus the
    steady-state per-call time `steady_s`."""
    jax.clear_caches()
    jitted = jax.jit(fn)
    start = time.perf_counter()
    block(jitted(*args))
    return time.perf_counter() - start - steady_s


def per_call_times(
    fns: dict[str, Callable],
    args: dict[str, Sequence],
    *,
    warmup: int = 3,
    target_s: float = 2.0,
    min_calls: int = 20,
    max_calls: int = 2000,
    rounds: int = 5,
) -> dict[str, CallTime]:
    """Median per-call time of each already-jitted `fns[name](*args[name])`.

    Each contestant gets about `target_s` seconds of timed calls (between
    `min_calls` and `max_calls`), split into `rounds` round-robin batches.
    """
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            block(fn(*args[name]))
        start = time.perf_counter()
        block(fn(*args[name]))
        one = max(time.perf_counter() - start, 1e-7)
        calls[name] = int(min(max_calls, max(min_calls, target_s / one)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name, fn in fns.items():
                a = args[name]
                n = calls[name] // rounds + (r < calls[name] % rounds)
                for _ in range(n):
                    start = time.perf_counter()
                    block(fn(*a))
                    samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4)
        out[name] = CallTime(
            median_s=statistics.median(s), p25_s=q[0], p75_s=q[2], n=len(s)
        )
    return out

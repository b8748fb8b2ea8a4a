"""Progress meters for long solves.

The loop reports its progress `(t - t0) / (t1 - t0)` through `jax.debug.callback`,
which works under `jit`, `vmap` (one report per batch element; the meter shows the
furthest) and `grad` (reports are ignored by differentiation). The meter's display
lives on the host, keyed by a per-trace id.
"""

import abc
import itertools
import sys
import threading

import equinox as eqx
import jax
import jax.numpy as jnp

_ids = itertools.count()
_lock = threading.Lock()
_displays: dict[int, "_Display"] = {}


class _Display(abc.ABC):
    def __init__(self):
        self.progress = 0.0

    @abc.abstractmethod
    def update(self, progress: float) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _TextDisplay(_Display):
    def __init__(self, minimum_increase: float):
        super().__init__()
        self.minimum_increase = minimum_increase
        self.last_printed = -1.0
        self.update(0.0)

    def update(self, progress):
        self.progress = max(self.progress, progress)
        if self.progress - self.last_printed >= self.minimum_increase or (
            self.progress >= 1 and self.last_printed < 1
        ):
            self.last_printed = self.progress
            print(f"{100 * self.progress:.2f}%", file=sys.stdout, flush=True)

    def close(self):
        self.update(1.0)


class _TqdmDisplay(_Display):
    def __init__(self, refresh_steps: int):
        super().__init__()
        self.refresh_steps = refresh_steps
        self.reports = 0
        import tqdm  # an optional dependency: imported only when used

        self.bar = tqdm.tqdm(total=100.0, unit="%", bar_format="{l_bar}{bar}| {n:.2f}%")

    def update(self, progress):
        self.reports += 1
        progress = max(self.progress, progress)
        due = self.reports % self.refresh_steps == 0 or progress >= 1
        if due and progress > self.progress:
            self.bar.update(100 * (progress - self.progress))
            self.progress = progress

    def close(self):
        self.update(1.0)
        self.bar.close()


class AbstractProgressMeter(eqx.Module):
    """Reports the progress of the forward solve."""

    @abc.abstractmethod
    def _make_display(self) -> _Display | None: ...

    def init(self) -> int | None:
        """Called at trace time: a host-side id for this solve's display."""
        if isinstance(self, NoProgressMeter):
            return None
        key = next(_ids)
        jax.debug.callback(lambda: self._open(key))
        return key

    def _open(self, key):
        with _lock:
            if key not in _displays:
                _displays[key] = self._make_display()  # pyright: ignore

    def step(self, key: int | None, progress) -> None:
        if key is None:
            return
        jax.debug.callback(lambda p: _update(key, float(p)), jnp.asarray(progress))

    def close(self, key: int | None) -> None:
        if key is None:
            return
        jax.debug.callback(lambda: _close(key))


def _update(key, progress):
    with _lock:
        display = _displays.get(key)
        if display is not None:
            display.update(min(max(progress, 0.0), 1.0))


def _close(key):
    with _lock:
        display = _displays.pop(key, None)
    if display is not None:
        display.close()


class NoProgressMeter(AbstractProgressMeter):
    """No output (the default)."""

    def _make_display(self):
        return None


class TextProgressMeter(AbstractProgressMeter):
    """Prints the percentage done, each time it has grown by `minimum_increase`.

    **Arguments:**

    - `minimum_increase`: the fraction between two printed lines (default 2%).
    """

    minimum_increase: float = eqx.field(static=True, default=0.02)

    def _make_display(self):
        return _TextDisplay(self.minimum_increase)


class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm progress bar (requires `tqdm`).

    **Arguments:**

    - `refresh_steps`: redraw the bar every this many reports. (Each step reports
      to the host through a callback, which costs microseconds per step: use a
      progress meter for long solves, not inside a training loop.)
    """

    refresh_steps: int = eqx.field(static=True, default=20)

    def _make_display(self):
        return _TqdmDisplay(self.refresh_steps)

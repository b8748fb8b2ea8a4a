"""A monitored evaluation metric (e.g. `val/loss`), shared by early stopping and
the best model: look it up, and decide whether a value improves on the best."""

import math


def monitored(where: str, name: str, metrics: dict[str, float]) -> float:
    """`metrics[name]`, or an error naming the config field `where` and listing the
    metrics that `evaluate` returned."""
    if name not in metrics:
        raise ValueError(
            f"{where}={name!r} is not a metric returned by evaluate; it returned: "
            f"{', '.join(sorted(metrics)) or 'nothing'}."
        )
    return metrics[name]


def improves(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` (NaN: no best yet) by more than `min_delta` in
    `mode` (min | max). A NaN or infinite value never does: a failed evaluation must
    not be selected."""
    if not math.isfinite(value):
        return False
    if math.isnan(best):
        return True
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta

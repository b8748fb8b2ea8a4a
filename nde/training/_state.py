"""The train state and the one jitted train step.

Only `TrainState` crosses `jit`: the model (an `eqx.Module`), the optimizer state,
the step, the PRNG key and the bookkeeping of non-finite steps. The step is
compiled once; everything it reports comes back as device arrays that the trainer
pulls to the host only at log intervals.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

STATS = ("num_steps", "num_accepted_steps", "num_rejected_steps")


class TrainState(eqx.Module):
    """Everything that changes during training.

    - `model`: the model being trained.
    - `opt_state`: the optax state.
    - `step`: optimizer steps taken so far (including skipped ones).
    - `key`: split once per step; the loss gets a fresh key every step.
    - `num_skipped`: steps whose update was dropped for a non-finite loss/gradient.
    - `first_bad_step`: the first such step (1-based), or -1.
    """

    model: eqx.Module
    opt_state: optax.OptState
    step: Array
    key: PRNGKeyArray
    num_skipped: Array
    first_bad_step: Array


def _optax_promotion():
    # optax mixes Python floats and int32 counters (e.g. Adam's `b1 ** count`),
    # which `jax_numpy_dtype_promotion="strict"` rejects: run the optimizer with
    # standard promotion whatever the user's setting (their loss keeps theirs).
    return jax.numpy_dtype_promotion("standard")


def init_state(model, optimizer: optax.GradientTransformation, *, key) -> TrainState:
    """The state before the first step."""
    with _optax_promotion():
        opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(
        model=model,
        opt_state=opt_state,
        step=jnp.array(0, jnp.int32),
        key=key,
        num_skipped=jnp.array(0, jnp.int32),
        first_bad_step=jnp.array(-1, jnp.int32),
    )


def _select(pred, on_true, on_false):
    # Leaf-wise `where` over the array leaves; the static parts are shared.
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(pred, a, b) if eqx.is_array(a) else a,
        on_true,
        on_false,
    )


def _reduce_metrics(metrics: dict) -> dict:
    """Scalars for logging: means over any batch axes; `sol.stats` returned under the
    key `"stats"` becomes `solve/num_steps`, `solve/num_rejected_steps`, ..."""
    out = {}
    for name, value in metrics.items():
        if name == "stats":
            for stat in STATS:
                if stat in value:
                    out[f"solve/{stat}"] = jnp.mean(jnp.asarray(value[stat], float))
        else:
            out[name] = jnp.mean(value)
    return out


def _global_norm(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in leaves))


def _has_hyperparams(x) -> bool:
    return isinstance(getattr(x, "hyperparams", None), dict)


def learning_rate(opt_state) -> Array | None:
    """The learning rate of the last update, if the optimizer keeps it in its state
    (`optax.inject_hyperparams`); the first one found."""
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_has_hyperparams):
        if _has_hyperparams(node) and "learning_rate" in node.hyperparams:
            return node.hyperparams["learning_rate"]
    return None


def _check_loss(out) -> tuple:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(
            "`loss` must return a pair (loss, metrics), e.g. `return loss, {}`; got "
            f"{type(out).__name__}."
        )
    loss, metrics = out
    if jnp.shape(loss) != ():
        raise ValueError(
            f"`loss` must return (a scalar loss, a dict of metrics); the loss has "
            f"shape {jnp.shape(loss)}. Average it, e.g. `jnp.mean(...)`."
        )
    if not isinstance(metrics, dict):
        raise ValueError(
            f"`loss` must return (loss, metrics) with metrics a dict (possibly "
            f"empty); got metrics of type {type(metrics).__name__}."
        )
    return loss, metrics


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    on_nan: str,
    replicated,
    on_trace: Callable[[], None] = lambda: None,
):
    """`train_step(batch, state) -> (state, metrics)`, jitted once, donating `state`.

    The update is kept only if the loss and the gradient norm are finite; otherwise
    the previous model and optimizer state are kept. With `on_nan="stop"` the first
    bad step freezes training (every later update is dropped too) so that the state
    the host finds at its next check is the last good one.

    `on_trace` is called whenever the step is traced (i.e. compiled).
    """

    def checked_loss(model, batch, *, key):
        return _check_loss(loss_fn(model, batch, key=key))

    grad_fn = eqx.filter_value_and_grad(checked_loss, has_aux=True)

    @eqx.filter_jit(donate="all-except-first")
    def train_step(batch, state: TrainState):
        on_trace()
        key, step_key = jax.random.split(state.key)
        (loss, metrics), grads = grad_fn(state.model, batch, key=step_key)
        params = eqx.filter(state.model, eqx.is_inexact_array)
        with _optax_promotion():
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
            model = eqx.apply_updates(state.model, updates)
        grad_norm = _global_norm(grads)
        step = state.step + 1
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = finite
        if on_nan == "stop":
            keep = finite & (state.first_bad_step < 0)
        model, opt_state = _select(
            keep, (model, opt_state), (state.model, state.opt_state)
        )
        first_bad = jnp.where(
            ~finite & (state.first_bad_step < 0), step, state.first_bad_step
        )
        new = TrainState(
            model=model,
            opt_state=opt_state,
            step=step,
            key=key,
            num_skipped=state.num_skipped + (~keep).astype(jnp.int32),
            first_bad_step=first_bad,
        )
        # Keep the model and optimizer state replicated across the devices.
        new = jax.tree_util.tree_map(
            lambda x: (
                jax.lax.with_sharding_constraint(x, replicated)
                if eqx.is_array(x)
                else x
            ),
            new,
        )
        out = {
            "loss": loss,
            "optim/grad_norm": grad_norm,
            "skipped": (~keep).astype(jnp.int32),
        }
        lr = learning_rate(opt_state)
        if lr is not None:
            out["optim/lr"] = lr
        out.update(_reduce_metrics(metrics))
        return new, out

    return train_step


def make_eval_step(loss_fn: Callable):
    """`eval_step(model, batch, key) -> metrics` (the loss and its metrics), jitted."""

    @eqx.filter_jit
    def eval_step(model, batch, key):
        loss, metrics = _check_loss(loss_fn(model, batch, key=key))
        return {"loss": loss, **_reduce_metrics(metrics)}

    return eval_step

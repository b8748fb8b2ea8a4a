"""The default optimizer: `clip_by_global_norm`, then Adam / AdamW / AdaBelief on an
optax schedule, built from `OptimizerConfig`."""

import optax

from ._config import OptimizerConfig


def make_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    """The learning rate as a function of the step: an optional linear warm-up from
    0 to `lr` over `warmup_steps`, then `schedule` over the remaining steps."""
    lr, end = config.lr, config.lr * config.final_lr_factor
    decay_steps = max(steps - config.warmup_steps, 1)
    if config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(
            lr, decay_steps, alpha=config.final_lr_factor
        )
    elif config.schedule == "linear":
        main = optax.linear_schedule(lr, end, decay_steps)
    else:  # exponential: lr * factor ** (step / decay_steps)
        main = optax.exponential_decay(lr, decay_steps, config.final_lr_factor)
    if config.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
    return optax.join_schedules([warmup, main], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """`optax.chain(clip_by_global_norm, <name>(schedule))`.

    The optimizer is wrapped in `optax.inject_hyperparams`, which keeps the current
    learning rate in the optimizer state, where the trainer reads it to log
    `optim/lr` (for any optimizer built that way, also a user's own).
    """
    schedule = make_schedule(config, steps)
    # Only the learning rate (and weight decay) become state; the moment
    # coefficients stay Python constants.
    common = dict(b1=config.b1, b2=config.b2, eps=config.eps)
    inject = lambda opt: optax.inject_hyperparams(opt, static_args=tuple(common))
    if config.name == "adam":
        opt = inject(optax.adam)(learning_rate=schedule, **common)
    elif config.name == "adamw":
        opt = inject(optax.adamw)(
            learning_rate=schedule, weight_decay=config.weight_decay, **common
        )
    else:
        opt = inject(optax.adabelief)(learning_rate=schedule, **common)
    if config.clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)

"""Optax chains from a config: linear warm-up + cosine decay, gradient clipping, AdamW."""
from __future__ import annotations

import optax


def learning_rate_schedule(*, lr: float, warmup_steps: int, total_steps: int,
                           kind: str = "cosine") -> optax.Schedule:
    """Linear warm-up from 0 to `lr` over `warmup_steps`, then cosine decay to 0 (or constant)."""
    if lr <= 0 or warmup_steps < 0 or total_steps < 1:
        raise ValueError(
            f"schedule: need lr > 0, warmup_steps >= 0, total_steps >= 1; got lr={lr}, "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    warmup_steps = min(warmup_steps, total_steps)
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    if kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
    elif kind == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {kind!r}")
    if warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(config, *, lr: float | None = None) -> tuple[optax.GradientTransformation,
                                                               optax.Schedule]:
    """AdamW (b1, b2, weight_decay) behind global-norm clipping, with the config's schedule.

    `lr` overrides `config.lr` (the discriminator uses `config.disc_lr`). Returns (chain, schedule).
    """
    schedule = learning_rate_schedule(lr=config.lr if lr is None else lr,
                                      warmup_steps=config.warmup_steps,
                                      total_steps=config.total_steps, kind=config.lr_schedule)
    parts = []
    if config.clip_grad_norm:
        parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2,
                             weight_decay=config.weight_decay))
    return optax.chain(*parts), schedule

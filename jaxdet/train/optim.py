"""Optimizer and learning-rate schedule of the detection recipes.

mmdetection's 1x schedule: SGD momentum 0.9, weight decay 1e-4, linear warm-up
(500 iterations from lr * 0.001), step decay x0.1 at epochs 8 and 11 of 12.
Frozen parameters (see `jaxdet.models.freeze`) get neither updates nor decay.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxdet.models import freeze


def make_schedule(cfg: Any, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """lr schedule from `config.optimizer`.

    Fields: lr, warmup_steps, warmup_ratio, schedule ('step' | 'cosine' |
    'constant'), decay_epochs (for 'step'), decay_factor.
    """
    base = float(cfg.lr)
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "step":
        boundaries = {
            int(e * steps_per_epoch): float(cfg.decay_factor)
            for e in cfg.decay_epochs
            if int(e * steps_per_epoch) < total_steps
        }
        main = optax.piecewise_constant_schedule(base, boundaries)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(base, max(total_steps, 1), alpha=0.0)
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(base)
    else:
        raise ValueError(f"unknown optimizer.schedule {cfg.schedule!r} (step | cosine | constant)")
    if warmup <= 0:
        return main

    def schedule(step):
        # mmdet 'linear' warm-up: factor goes from warmup_ratio to 1 over warmup steps.
        frac = jax.numpy.minimum(step / warmup, 1.0)
        factor = float(cfg.warmup_ratio) + (1.0 - float(cfg.warmup_ratio)) * frac
        return main(step) * factor

    return schedule


def make_optimizer(
    cfg: Any, schedule: optax.Schedule, trainable_mask: Any | None = None
) -> optax.GradientTransformation:
    """SGD(momentum) with decoupled-from-loss L2 weight decay (as torch SGD) and clipping.

    `trainable_mask`: pytree of bools like params (True = trained). Frozen leaves
    get zero updates.
    """
    parts = []
    if cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
    name = cfg.name
    if name == "sgd":
        # torch SGD's weight decay adds wd * p to the gradient before momentum.
        if cfg.weight_decay:
            parts.append(optax.add_decayed_weights(float(cfg.weight_decay)))
        parts.append(optax.sgd(schedule, momentum=float(cfg.momentum), nesterov=False))
    elif name == "adamw":  # decoupled weight decay inside adamw
        parts.append(optax.adamw(schedule, weight_decay=float(cfg.weight_decay)))
    else:
        raise ValueError(f"unknown optimizer.name {name!r} (sgd | adamw)")
    tx = optax.chain(*parts)
    if trainable_mask is None:
        return tx
    return freeze.masked_optimizer(tx, trainable_mask)

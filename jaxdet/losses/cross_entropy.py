"""Cross-entropy losses, element-wise and unreduced.

All functions compute in float32 (bf16 inputs are upcast) and use log-sigmoid /
log-softmax forms, so values and gradients stay finite for any finite logits
(e.g. +-100). Weighting and normalisation happen in the detector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def sigmoid_binary_cross_entropy(logits: Array, targets: Array) -> Array:
    """Binary cross-entropy with logits -> same shape as `logits`.

    `targets` in [0, 1] (soft targets allowed), broadcastable to `logits`.
    Equals torch's `F.binary_cross_entropy_with_logits(..., reduction='none')`:
    -(t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))).
    """
    x = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    return -(t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy: logits [..., C], integer labels [...] -> [...].

    `logsumexp(logits) - logits[label]`. Labels outside [0, C) (e.g. -1 for
    padding) give a loss of exactly 0 and no gradient, like torch's
    `ignore_index`.
    """
    x = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    num_classes = x.shape[-1]
    in_range = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(in_range, labels, 0)
    log_probs = jax.nn.log_softmax(x, axis=-1)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return jnp.where(in_range, -picked, 0.0)

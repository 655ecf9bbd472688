"""Focal losses on sigmoid logits, element-wise and unreduced.

- `sigmoid_focal_loss`: RetinaNet's focal loss (Lin et al., ICCV 2017, "Focal
  Loss for Dense Object Detection"), the same values as torchvision's
  `sigmoid_focal_loss` and mmdetection's `py_sigmoid_focal_loss` /
  `FocalLoss(use_sigmoid=True)` with `reduction='none'`. Paper defaults:
  alpha=0.25, gamma=2.0.
- `quality_focal_loss`: QFL of Generalized Focal Loss (Li et al., NeurIPS 2020),
  the soft-target form of mmdetection's `quality_focal_loss_tensor_target`.
  Paper default beta=2.0.

Inputs are upcast to float32; the cross-entropy uses log-sigmoid forms so the
loss and its gradient are finite for logits of any magnitude (+-100 included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy

Array = jnp.ndarray

# Modulating factors are computed as max(x, _TINY) ** gamma: identical values
# up to _TINY ** gamma, and no inf * 0 gradient at x = 0 when gamma < 1.
_TINY = 1e-12


def _safe_pow(x: Array, exponent: float) -> Array:
    return jnp.power(jnp.maximum(x, _TINY), exponent)


def sigmoid_focal_loss(
    logits: Array, targets: Array, alpha: float = 0.25, gamma: float = 2.0
) -> Array:
    """Sigmoid focal loss: logits [..., C], targets [..., C] in [0, 1] -> [..., C] float32.

    targets are one-hot class indicators (all zeros for background); soft values
    are accepted and treated with the same linear formulas as torchvision/mmdet:
        p    = sigmoid(x)
        1-pt = p * (1 - t) + (1 - p) * t
        loss = alpha_t * (1 - pt) ** gamma * BCE(x, t),
        alpha_t = alpha * t + (1 - alpha) * (1 - t); alpha < 0 disables it.
    """
    x = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(targets, jnp.float32)
    p = jax.nn.sigmoid(x)
    one_minus_pt = p * (1.0 - t) + (1.0 - p) * t
    loss = sigmoid_binary_cross_entropy(x, t) * _safe_pow(one_minus_pt, gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return loss


def quality_focal_loss(logits: Array, soft_targets: Array, beta: float = 2.0) -> Array:
    """Quality focal loss (GFL): logits [..., C], soft_targets [..., C] in [0, 1] -> [..., C].

    BCE(x, y) * |sigmoid(x) - y| ** beta, where y is the IoU-quality of the
    positive class (e.g. IoU of the predicted box with its GT) and 0 elsewhere.
    """
    x = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(soft_targets, jnp.float32)
    scale = _safe_pow(jnp.abs(jax.nn.sigmoid(x) - y), beta)
    return sigmoid_binary_cross_entropy(x, y) * scale

"""L1-type regression losses, element-wise and unreduced (float32).

`smooth_l1_loss` has the semantics of mmdetection's `smooth_l1_loss` /
`SmoothL1Loss` (default beta=1.0, as mmdet and Fast R-CNN); RetinaNet-style
configs commonly pass beta=0.11 (~1/9, Detectron's RetinaNet) and RepPoints
0.11. Unlike mmdet (which asserts beta > 0), beta=0 is allowed and gives the
plain L1 loss, like torch's `F.smooth_l1_loss`.
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def l1_loss(pred: Array, target: Array) -> Array:
    """|pred - target| element-wise -> broadcast shape, float32."""
    return jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))


def smooth_l1_loss(pred: Array, target: Array, beta: float = 1.0) -> Array:
    """Smooth L1 (Huber / beta) loss element-wise -> broadcast shape, float32.

    d = |pred - target|;  0.5 * d**2 / beta if d < beta else d - 0.5 * beta.
    beta: static float >= 0; beta == 0 is the L1 loss.
    """
    if beta < 0:
        raise ValueError(f"smooth_l1_loss needs beta >= 0, got {beta}")
    diff = l1_loss(pred, target)
    if beta == 0:
        return diff
    return jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)

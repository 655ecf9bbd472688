"""Bounded IoU loss (Tychsen-Smith & Petersson, "Improving Object Localization with
Fitness NMS and Bounded IoU Loss", CVPR 2018), as mmdetection's `BoundedIoULoss`
(Guided Anchoring's anchor-shape loss, beta 0.2, eps 1e-3).

For aligned boxes pred, target [..., 4] xyxy, with centres (x, y), sizes (w, h) and
dx = x_t - x_p, dy = y_t - y_p:

    l_dx = 1 - max((w_t - 2|dx|) / (w_t + 2|dx| + eps), 0)
    l_dy = 1 - max((h_t - 2|dy|) / (h_t + 2|dy| + eps), 0)
    l_dw = 1 - min(w_t / (w_p + eps), w_p / (w_t + eps))
    l_dh = 1 - min(h_t / (h_p + eps), h_p / (h_t + eps))

each passed through smooth L1 at beta: 0.5 l^2 / beta if l < beta, else l - 0.5 beta.
The output is the four components [..., 4] (mmdetection's per-coordinate loss, which
its weights [..., 4] multiply before the sum / avg_factor). The target carries no
gradient (mmdetection computes its centre and size under `no_grad`).

Finite for padding rows of zeros and any boxes of non-negative width and height (every
denominator is then at least eps; decoded anchors always qualify); the caller masks
non-positives by multiplication.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def _centre_size(b: Array) -> tuple[Array, Array, Array, Array]:
    return ((b[..., 0] + b[..., 2]) * 0.5, (b[..., 1] + b[..., 3]) * 0.5,
            b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


def bounded_iou_loss(pred: Array, target: Array, beta: float = 0.2, eps: float = 1e-3) -> Array:
    """Bounded IoU loss of aligned boxes pred, target [..., 4] -> components [..., 4]
    (dx, dy, dw, dh), float32. beta: smooth-L1 knee (0.2); eps: 1e-3."""
    pred = jnp.asarray(pred, jnp.float32)
    target = jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))
    px, py, pw, ph = _centre_size(pred)
    tx, ty, tw, th = _centre_size(target)
    dx, dy = jnp.abs(tx - px), jnp.abs(ty - py)
    l_dx = 1 - jnp.maximum((tw - 2 * dx) / (tw + 2 * dx + eps), 0.0)
    l_dy = 1 - jnp.maximum((th - 2 * dy) / (th + 2 * dy + eps), 0.0)
    l_dw = 1 - jnp.minimum(tw / (pw + eps), pw / (tw + eps))
    l_dh = 1 - jnp.minimum(th / (ph + eps), ph / (th + eps))
    comb = jnp.stack([l_dx, l_dy, l_dw, l_dh], axis=-1)
    return jnp.where(comb < beta, 0.5 * comb * comb / beta, comb - 0.5 * beta)

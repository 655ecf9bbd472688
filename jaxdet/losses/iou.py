"""IoU-based box regression losses on aligned boxes, element-wise and unreduced.

pred, target: [..., 4] (x1, y1, x2, y2), same shape; output [...] float32.
Overlaps come from `jaxdet.core.boxes.aligned_iou`, which treats degenerate
boxes (x2 < x1 or y2 < y1) as area 0 and divides by max(union, eps): the loss
and its gradient are finite for degenerate predictions and for padding rows of
zeros (where the caller's weight is 0 anyway).

- `iou_loss`: UnitBox / mmdetection `IoULoss` (eps=1e-6):
    linear: 1 - iou,  square: 1 - iou**2,  log: -log(iou); iou clamped to >= eps.
  mode='log' (UnitBox's -ln IoU) is mmdet's default and what its FCOS and FSAF
  configs use.
- `giou_loss`: Rezatofighi et al., CVPR 2019; mmdetection `GIoULoss`
  (eps=1e-6, the class default used by configs): 1 - giou, in [0, 2].

Difference from mmdet: its `bbox_overlaps` does not clamp the area of a
degenerate box at 0 (it can go negative); jaxdet's box ops do.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.core.boxes import aligned_iou

Array = jnp.ndarray


def iou_loss(pred: Array, target: Array, mode: str = "log", eps: float = 1e-6) -> Array:
    """IoU loss of aligned boxes [..., 4] -> [...]; mode 'linear' | 'square' | 'log'."""
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    iou = jnp.maximum(aligned_iou(pred, target, mode="iou", eps=eps), eps)
    if mode == "linear":
        return 1.0 - iou
    if mode == "square":
        return 1.0 - iou * iou
    if mode == "log":
        return -jnp.log(iou)
    raise ValueError(f"unknown iou_loss mode {mode!r}; expected 'linear', 'square' or 'log'")


def giou_loss(pred: Array, target: Array, eps: float = 1e-6) -> Array:
    """Generalised IoU loss of aligned boxes [..., 4] -> [...] = 1 - giou."""
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    return 1.0 - aligned_iou(pred, target, mode="giou", eps=eps)

"""Box geometry on `[..., 4]` (x1, y1, x2, y2) float arrays, continuous coordinates.

Pairwise functions take `a [N, 4]`, `b [M, 4]` and return `[N, M]`; `aligned_*`
functions take two `[..., 4]` arrays of the same shape and return `[...]`.
Degenerate boxes (x2 < x1) have area 0; no function divides by zero (eps).
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray
EPS = 1e-6


def areas(boxes: Array) -> Array:
    """[..., 4] -> [...] area, 0 for degenerate boxes."""
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def centers(boxes: Array) -> Array:
    """[..., 4] -> [..., 2] (cx, cy)."""
    return jnp.stack(
        [(boxes[..., 0] + boxes[..., 2]) * 0.5, (boxes[..., 1] + boxes[..., 3]) * 0.5], axis=-1
    )


def widths_heights(boxes: Array) -> Array:
    """[..., 4] -> [..., 2] (w, h)."""
    return jnp.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], axis=-1)


def clip(boxes: Array, image_hw: Array) -> Array:
    """Clips [..., 4] boxes to an image of size `image_hw` = (h, w) (broadcastable)."""
    image_hw = jnp.asarray(image_hw, boxes.dtype)
    h = image_hw[..., 0:1]
    w = image_hw[..., 1:2]
    x1 = jnp.clip(boxes[..., 0:1], 0.0, w)
    y1 = jnp.clip(boxes[..., 1:2], 0.0, h)
    x2 = jnp.clip(boxes[..., 2:3], 0.0, w)
    y2 = jnp.clip(boxes[..., 3:4], 0.0, h)
    return jnp.concatenate([x1, y1, x2, y2], axis=-1)


def _intersection(a: Array, b: Array) -> Array:
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    return wh[..., 0] * wh[..., 1]


def _enclosing_area(a: Array, b: Array) -> Array:
    lt = jnp.minimum(a[..., :2], b[..., :2])
    rb = jnp.maximum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    return wh[..., 0] * wh[..., 1]


def aligned_iou(a: Array, b: Array, mode: str = "iou", eps: float = EPS) -> Array:
    """Element-wise overlap of two [..., 4] arrays -> [...].

    mode: 'iou', 'iof' (intersection over the area of `a`, the foreground), or
    'giou' (generalised IoU, in [-1, 1]).
    """
    inter = _intersection(a, b)
    area_a = areas(a)
    if mode == "iof":
        return inter / jnp.maximum(area_a, eps)
    union = area_a + areas(b) - inter
    iou = inter / jnp.maximum(union, eps)
    if mode == "iou":
        return iou
    if mode == "giou":
        enclose = _enclosing_area(a, b)
        return iou - (enclose - union) / jnp.maximum(enclose, eps)
    raise ValueError(f"unknown overlap mode {mode!r}; expected 'iou', 'iof' or 'giou'")


def pairwise_iou(a: Array, b: Array, mode: str = "iou", eps: float = EPS) -> Array:
    """Overlaps of every box in a [N, 4] with every box in b [M, 4] -> [N, M].

    Same values as mmdetection's `bbox_overlaps(a, b, mode)` (no +1).
    """
    return aligned_iou(a[:, None, :], b[None, :, :], mode=mode, eps=eps)


def pairwise_iof(a: Array, b: Array) -> Array:
    """Intersection over the area of `a` [N, 4] vs b [M, 4] -> [N, M]."""
    return pairwise_iou(a, b, mode="iof")


def pairwise_giou(a: Array, b: Array) -> Array:
    """Generalised IoU of a [N, 4] vs b [M, 4] -> [N, M]."""
    return pairwise_iou(a, b, mode="giou")


def points_inside(points: Array, boxes: Array, eps: float = 0.0) -> Array:
    """points [N, 2] (x, y) strictly inside boxes [M, 4] by more than eps -> [N, M] bool."""
    x = points[:, None, 0]
    y = points[:, None, 1]
    l_ = x - boxes[None, :, 0]
    t = y - boxes[None, :, 1]
    r = boxes[None, :, 2] - x
    b = boxes[None, :, 3] - y
    return jnp.minimum(jnp.minimum(l_, t), jnp.minimum(r, b)) > eps

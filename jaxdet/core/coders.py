"""Box coders: `encode(priors, boxes) -> deltas` / `decode(priors, deltas) -> boxes`.

- Delta-XYWH (R-CNN / RetinaNet / ATSS-anchor), same as mmdetection's
  `DeltaXYWHBBoxCoder` (non-legacy: w = x2 - x1), with target means/stds and the
  log(1000/16) clamp of dw, dh at decode.
- Distance (FCOS / ATSS-point / FSAF): (left, top, right, bottom) distances from
  a point to the box sides, divided by a normaliser (e.g. the stride).
- YOLO (YOLOv3 / Gaussian YOLOv3), same as mmdetection's `YOLOBBoxCoder`: the centre
  as an offset in the cell (x / stride + 0.5, in (0, 1), predicted through a sigmoid)
  and log(w_gt / w_anchor), log(h_gt / h_anchor).

Shapes broadcast: priors [..., 4] (or points [..., 2]), boxes/deltas [..., 4].
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxdet.core import boxes as box_ops

Array = jnp.ndarray
WH_RATIO_CLIP = math.log(1000.0 / 16.0)


def delta_xywh_encode(
    priors: Array,
    gt: Array,
    means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
    stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
) -> Array:
    """Encodes gt [..., 4] relative to priors [..., 4] -> deltas [..., 4] (dx, dy, dw, dh)."""
    pw = jnp.maximum(priors[..., 2] - priors[..., 0], 1e-6)
    ph = jnp.maximum(priors[..., 3] - priors[..., 1], 1e-6)
    px = (priors[..., 0] + priors[..., 2]) * 0.5
    py = (priors[..., 1] + priors[..., 3]) * 0.5
    gw = jnp.maximum(gt[..., 2] - gt[..., 0], 1e-6)
    gh = jnp.maximum(gt[..., 3] - gt[..., 1], 1e-6)
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    deltas = jnp.stack(
        [(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1
    )
    return (deltas - jnp.asarray(means, deltas.dtype)) / jnp.asarray(stds, deltas.dtype)


def delta_xywh_decode(
    priors: Array,
    deltas: Array,
    means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
    stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
    max_ratio: float = WH_RATIO_CLIP,
    image_hw: Array | None = None,
) -> Array:
    """Decodes deltas [..., 4] against priors [..., 4] -> boxes [..., 4].

    dw, dh are clamped to [-max_ratio, max_ratio]; boxes are clipped to
    `image_hw` (h, w) when given.
    """
    d = deltas * jnp.asarray(stds, deltas.dtype) + jnp.asarray(means, deltas.dtype)
    dx, dy = d[..., 0], d[..., 1]
    dw = jnp.clip(d[..., 2], -max_ratio, max_ratio)
    dh = jnp.clip(d[..., 3], -max_ratio, max_ratio)
    pw = priors[..., 2] - priors[..., 0]
    ph = priors[..., 3] - priors[..., 1]
    px = (priors[..., 0] + priors[..., 2]) * 0.5
    py = (priors[..., 1] + priors[..., 3]) * 0.5
    gw = pw * jnp.exp(dw)
    gh = ph * jnp.exp(dh)
    gx = px + pw * dx
    gy = py + ph * dy
    out = jnp.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], axis=-1)
    if image_hw is not None:
        out = box_ops.clip(out, image_hw)
    return out


def distance_encode(points: Array, gt: Array, normalizer: Array | float = 1.0) -> Array:
    """points [..., 2] (x, y), gt [..., 4] -> (l, t, r, b) / normalizer [..., 4].

    `normalizer` broadcasts against [...] (e.g. per-prior strides [N]).
    """
    norm = jnp.asarray(normalizer, gt.dtype)
    if norm.ndim:
        norm = norm[..., None]
    x, y = points[..., 0], points[..., 1]
    d = jnp.stack([x - gt[..., 0], y - gt[..., 1], gt[..., 2] - x, gt[..., 3] - y], axis=-1)
    return d / norm


def distance_decode(
    points: Array,
    distances: Array,
    normalizer: Array | float = 1.0,
    image_hw: Array | None = None,
) -> Array:
    """points [..., 2], distances [..., 4] (l, t, r, b) * normalizer -> boxes [..., 4]."""
    norm = jnp.asarray(normalizer, distances.dtype)
    if norm.ndim:
        norm = norm[..., None]
    d = distances * norm
    x, y = points[..., 0], points[..., 1]
    out = jnp.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], axis=-1)
    if image_hw is not None:
        out = box_ops.clip(out, image_hw)
    return out


def yolo_encode(anchors: Array, gt: Array, stride: Array | float, eps: float = 1e-6) -> Array:
    """mmdetection's `YOLOBBoxCoder.encode`: anchors, gt [..., 4] -> (tx, ty, tw, th) [..., 4].

    tx = clip((cx_gt - cx_anchor) / stride + 0.5, eps, 1 - eps) (ty alike), the target of
    the sigmoid of the predicted offset; tw = log(max(w_gt / w_anchor, eps)) (th alike).
    `stride` broadcasts against [...] (e.g. per-anchor strides [N]).
    """
    s = jnp.asarray(stride, gt.dtype)
    gx, gy = (gt[..., 0] + gt[..., 2]) * 0.5, (gt[..., 1] + gt[..., 3]) * 0.5
    ax, ay = (anchors[..., 0] + anchors[..., 2]) * 0.5, (anchors[..., 1] + anchors[..., 3]) * 0.5
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    tw = jnp.log(jnp.maximum((gt[..., 2] - gt[..., 0]) / aw, eps))
    th = jnp.log(jnp.maximum((gt[..., 3] - gt[..., 1]) / ah, eps))
    tx = jnp.clip((gx - ax) / s + 0.5, eps, 1.0 - eps)
    ty = jnp.clip((gy - ay) / s + 0.5, eps, 1.0 - eps)
    return jnp.stack([tx, ty, tw, th], axis=-1)


def yolo_decode(anchors: Array, pred: Array, stride: Array | float) -> Array:
    """mmdetection's `YOLOBBoxCoder.decode`: anchors [..., 4], pred [..., 4] -> boxes [..., 4].

    `pred` is (sigmoid(tx), sigmoid(ty), tw, th): the centre is the anchor's centre plus
    (offset - 0.5) * stride, w = w_anchor * exp(tw). No clamp of tw, th (as mmdetection).
    """
    s = jnp.asarray(stride, pred.dtype)
    if s.ndim:
        s = s[..., None]
    ctr = (anchors[..., :2] + anchors[..., 2:]) * 0.5 + (pred[..., :2] - 0.5) * s
    half = (anchors[..., 2:] - anchors[..., :2]) * 0.5 * jnp.exp(pred[..., 2:])
    return jnp.concatenate([ctr - half, ctr + half], axis=-1)

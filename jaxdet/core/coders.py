"""Box coders: `encode(priors, boxes) -> deltas` / `decode(priors, deltas) -> boxes`.

- Delta-XYWH (R-CNN / RetinaNet / ATSS-anchor), same as mmdetection's
  `DeltaXYWHBBoxCoder` (non-legacy: w = x2 - x1), with target means/stds and the
  log(1000/16) clamp of dw, dh at decode.
- Distance (FCOS / ATSS-point / FSAF): (left, top, right, bottom) distances from
  a point to the box sides, divided by a normaliser (e.g. the stride).

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

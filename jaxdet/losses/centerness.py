"""FCOS centerness: targets from (l, t, r, b) distances and the BCE loss.

Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019;
also used by ATSS (Zhang et al., CVPR 2020). Same values as mmdetection's
`FCOSHead.centerness_target` / `ATSSHead.centerness_target` on positives.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy

Array = jnp.ndarray


def _side_ratio(a: Array, b: Array) -> Array:
    lo = jnp.minimum(a, b)
    hi = jnp.maximum(a, b)
    ok = lo > 0
    return jnp.where(ok, lo / jnp.where(ok, hi, 1.0), 0.0)


def centerness_targets(ltrb: Array) -> Array:
    """ltrb [..., 4] distances from a point to the box sides -> [...] in [0, 1].

    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)). Where a distance is
    <= 0 (point on or outside the box, e.g. at non-positive priors) the target
    is 0; never NaN, with finite gradients everywhere. Computed in float32.
    """
    d = jnp.asarray(ltrb, jnp.float32)
    prod = _side_ratio(d[..., 0], d[..., 2]) * _side_ratio(d[..., 1], d[..., 3])
    pos = prod > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, prod, 1.0)), 0.0)


def centerness_loss(logits: Array, targets: Array) -> Array:
    """Centerness loss: sigmoid BCE of logits [...] against targets [...] in [0, 1]."""
    return sigmoid_binary_cross_entropy(logits, targets)

"""RepPoints' pseudo-boxes and point losses (Yang et al., ICCV 2019, arXiv 1904.11490).

A point set of K points is [..., 2K] in (y, x) order, (y_0, x_0, y_1, x_1, ...), as the
head's offset channels and mmdetection's `RepPointsHead.points2bbox(pts, y_first=True)`.
The pseudo-box transforms (`points_to_boxes`):
  minmax:          (min x, min y, max x, max y) over all K points;
  partial_minmax:  the same over the first 4 points;
  moment:          (mean x - sx, mean y - sy, mean x + sx, mean y + sy) with
                   sx = std(x) * exp(l_w), sy = std(y) * exp(l_h), std unbiased (torch's
                   `torch.std`), and (l_w, l_h) the learnable 2-vector `moment_transfer`
                   (initialised to 0) seen through `moment_lambda` (its gradient scaled
                   by `moment_mul`, mmdetection's 0.01).
All three commute with a scale and shift of the points, so boxes of points in stride
units around a location, times the stride, plus the location, are the boxes of the
absolute points (what mmdetection's loss computes).

`point_loss`: mmdetection's loss on pseudo-boxes, SmoothL1(beta 0.11) on boxes divided
by `point_base_scale x stride`, summed over the 4 coordinates (weights 0.5 for the init
points and 1.0 for the refined ones are applied by the detector).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.losses.smooth_l1 import smooth_l1_loss

Array = jnp.ndarray
TRANSFORMS = ("minmax", "partial_minmax", "moment")


def moment_lambda(moment_transfer: Array, moment_mul: float = 0.01) -> Array:
    """moment_mul * l + (1 - moment_mul) * stop_gradient(l): the value of `l` [2] with
    its gradient scaled by `moment_mul` (mmdetection's learning-rate trick)."""
    return moment_mul * moment_transfer + (1 - moment_mul) * jax.lax.stop_gradient(
        moment_transfer)


def _unbiased_std(v: Array) -> Array:
    """torch.std over the last axis (n - 1); gradient 0 (not NaN) where all are equal."""
    n = v.shape[-1]
    d = v - jnp.mean(v, axis=-1, keepdims=True)
    var = jnp.sum(d * d, axis=-1) / (n - 1)
    pos = var > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)


def points_to_boxes(
    pts: Array,
    transform: str = "moment",
    moment_transfer: Array | None = None,
    moment_mul: float = 0.01,
) -> Array:
    """Pseudo-boxes of point sets.

    Args:
      pts: [..., 2K] point sets in (y, x) order (K >= 2; >= 4 for partial_minmax).
      transform: 'minmax' | 'partial_minmax' | 'moment'.
      moment_transfer: [2] (l_w, l_h) for 'moment' (None: zeros).
      moment_mul: gradient scale of `moment_transfer` (0.01).
    Returns:
      [..., 4] float32 boxes (x1, y1, x2, y2) in the units of `pts`.
    """
    pts = jnp.asarray(pts, jnp.float32)
    ys, xs = pts[..., 0::2], pts[..., 1::2]
    if transform == "partial_minmax":
        ys, xs = ys[..., :4], xs[..., :4]
    if transform in ("minmax", "partial_minmax"):
        return jnp.stack([xs.min(-1), ys.min(-1), xs.max(-1), ys.max(-1)], axis=-1)
    if transform != "moment":
        raise ValueError(f"transform {transform!r} not in {TRANSFORMS}")
    if moment_transfer is None:
        moment_transfer = jnp.zeros((2,), jnp.float32)
    lam = moment_lambda(jnp.asarray(moment_transfer, jnp.float32), moment_mul)
    mx, my = xs.mean(-1), ys.mean(-1)
    half_w = _unbiased_std(xs) * jnp.exp(lam[0])
    half_h = _unbiased_std(ys) * jnp.exp(lam[1])
    return jnp.stack([mx - half_w, my - half_h, mx + half_w, my + half_h], axis=-1)


def point_loss(pred_boxes: Array, target_boxes: Array, scale: Array, beta: float = 0.11
               ) -> Array:
    """SmoothL1 of pseudo-boxes against GT boxes, both divided by `scale`.

    Args:
      pred_boxes, target_boxes: [..., 4] xyxy in pixels.
      scale: [...] normaliser (point_base_scale x stride of the prior's level).
      beta: SmoothL1 beta (RepPoints: 0.11).
    Returns:
      [...] float32, the sum over the 4 coordinates (unreduced, unweighted).
    """
    s = jnp.asarray(scale, jnp.float32)[..., None]
    return jnp.sum(smooth_l1_loss(pred_boxes / s, target_boxes / s, beta), axis=-1)

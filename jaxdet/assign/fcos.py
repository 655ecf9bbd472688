"""FCOS target assignment (Tian et al., ICCV 2019, arXiv 1904.01355).

Same results as mmdetection's `FCOSHead._get_targets_single`, per image,
jittable and vmappable: `jax.vmap(lambda g: fcos.assign(points, g))(gt_batch)`,
with `points = priors.make_points(feature_shapes, strides)`.

A point (x, y) of level l may take GT j when
  1. it is inside the GT: min(l, t, r, b) > 0 with l = x - x1, t = y - y1,
     r = x2 - x, b = y2 - y; with `center_sampling`, inside the GT's centre box
     instead: the square of half-side `center_sample_radius * stride_l` around
     the GT centre, clipped to the GT box;
  2. max(l, t, r, b) (distances to the full GT box) lies in the level's
     regression range [lo, hi] (both ends included).
Among the GTs it may take, the smallest area wins (ties: lower GT index, as
torch's `min`). GT areas are (x2 - x1) * (y2 - y1); GTs of area >= 1e8
(mmdetection's INF) are never taken (mmdetection takes such a GT only when no
other GT competes for the point).

jaxdet additions: points strictly inside an ignore region (valid & ignore rows)
are ignored (-2) unless they are positive for a real GT (mmdetection's FCOS has
no ignore regions); `quality` is 1 for positives (the centerness target is
computed from the box targets by the head).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdet.assign import common
from jaxdet.core.types import Assignment, GroundTruth, Priors

INF = 1e8
REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))


def _fold_level(px, py, lo, hi, radius, boxes, rows, center_sampling, chunk):
    """Best GT row per point of one level ([n] int32, -1 = none): mmdetection's rules."""

    def body(carry, box, k, live):
        best_area, best = carry
        x1, y1, x2, y2 = box[0], box[1], box[2], box[3]
        left, top, right, bottom = px - x1, py - y1, x2 - px, y2 - py
        if center_sampling:
            cx = (x1 + x2) / 2
            cy = (y1 + y2) / 2
            # mmdetection: the centre square clipped to the GT box (its
            # `where(a > b, a, b)` is max(a, b) for these finite values).
            cx1 = jnp.maximum(cx - radius, x1)
            cy1 = jnp.maximum(cy - radius, y1)
            cx2 = jnp.minimum(cx + radius, x2)
            cy2 = jnp.minimum(cy + radius, y2)
            inner = jnp.minimum(jnp.minimum(px - cx1, py - cy1), jnp.minimum(cx2 - px, cy2 - py))
        else:
            inner = jnp.minimum(jnp.minimum(left, top), jnp.minimum(right, bottom))
        reach = jnp.maximum(jnp.maximum(left, top), jnp.maximum(right, bottom))
        area = (x2 - x1) * (y2 - y1)
        take = live & (inner > 0) & (reach >= lo) & (reach <= hi) & (area < best_area)
        return jnp.where(take, area, best_area), jnp.where(take, k, best)

    init = (jnp.full(px.shape, INF, jnp.float32), jnp.full(px.shape, -1, jnp.int32))
    return common.fold_gts(body, init, boxes, rows, chunk)[1]


def assign(
    points: Priors,
    gt: GroundTruth,
    *,
    regress_ranges: tuple[tuple[float, float], ...] = REGRESS_RANGES,
    center_sampling: bool = True,
    center_sample_radius: float = 1.5,
    use_ignore: bool = True,
    chunk: int = 1,
) -> Assignment:
    """FCOS assignment of one image.

    Args:
      points: point priors (`centers` [N, 2], `strides` [N], `level_sizes`).
      gt: one image's GroundTruth, leaves [M, ...].
      regress_ranges: (lo, hi) of max(l, t, r, b) per level (paper: 64, 128,
        256, 512 boundaries, P3-P7).
      center_sampling: restrict positives to the GT's centre box (FCOS
        "improvements"; mmdetection's FCOSHead defaults to False).
      center_sample_radius: half-side of the centre box in strides (1.5).
      use_ignore: points inside an ignore region become -2 unless positive.
      chunk: GT rows per loop step (speed only).
    Returns:
      Assignment: gt_index [N] int32, quality [N] float32 (1 for positives).
    """
    if len(regress_ranges) != len(points.level_sizes):
        raise ValueError(
            f"{len(regress_ranges)} regress ranges for {len(points.level_sizes)} levels"
        )
    pts = common.as_f32(points.centers)
    n = pts.shape[0]
    boxes, match_rows, ignore_rows = common.split_gt(gt)
    # A point strictly inside a GT has max(w, h) / 2 <= max(l, t, r, b) <= max(w, h)
    # (also after float rounding, which is monotone), so a GT can only be taken on
    # the levels whose range meets [s / 2, s], s = max(w, h): usually one or two.
    # Each level folds over its own GTs only (a 1e-6 margin keeps this conservative).
    side = jnp.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    best = []
    for lvl, (start, size) in enumerate(zip(points.level_starts, points.level_sizes)):
        lo, hi = (np.float32(v) for v in regress_ranges[lvl])
        rows = match_rows & (side * (0.5 - 1e-6) <= hi) & (side * (1 + 1e-6) >= lo)
        radius = common.as_f32(points.strides[start]) * center_sample_radius
        px = pts[start : start + size, 0]
        py = pts[start : start + size, 1]
        best.append(_fold_level(px, py, lo, hi, radius, boxes, rows, center_sampling, chunk))
    best = jnp.concatenate(best)

    if use_ignore:
        ignored = common.ignored_by_point(pts, boxes, ignore_rows, chunk)
    else:
        ignored = jnp.zeros((n,), bool)
    gt_index = jnp.where(best >= 0, best, common.unmatched(ignored))
    return common.finish(gt_index, jnp.ones((n,), jnp.float32))

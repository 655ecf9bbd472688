"""RepPoints' point assignment (Yang et al., "RepPoints: Point Set Representation for
Object Detection", ICCV 2019, arXiv 1904.11490).

Same results as mmdetection's `PointAssigner(scale=4, pos_num=1)`, per image, jittable
and vmappable: `jax.vmap(lambda g: point_assigner.assign(points, g))(gt_batch)`.

mmdetection's rules:
  1. a point's level is log2(its stride) (P3 = 3, ...);
  2. a GT of width w and height h (both clamped to >= 1e-6) belongs to level
     trunc(0.5 * (log2(w / scale) + log2(h / scale))), clamped to the points' levels
     (truncation and floor differ only below 0, which the clamp removes);
  3. per GT, in row order, the `pos_num` points of its level nearest to its centre by
     the distance || (point - centre) / (w, h) || (ties: the lower point index, as
     `lax.top_k`) are claimed: a claimed point goes to the GT if that distance is
     strictly below the distance recorded for the point by an earlier GT (so a point
     claimed by two GTs goes to the closer one, an exact tie to the earlier row).
Every other point is background (-1).

jaxdet conventions: padding rows never take part; ignore rows (crowd) are never
assigned and, as in mmdetection (which has no ignore regions here), make no point -2:
the init stage reads only the positives. `quality` is 1 for positives.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxdet.assign import common
from jaxdet.core.types import Assignment, GroundTruth, Priors


def point_levels(strides: jnp.ndarray) -> jnp.ndarray:
    """[N] int32 log2(stride) (mmdetection's `points_lvl`; stride 8 -> 3)."""
    return jnp.round(jnp.log2(common.as_f32(strides))).astype(jnp.int32)


def gt_levels(boxes: jnp.ndarray, scale: float, lvl_min: jnp.ndarray | int,
              lvl_max: jnp.ndarray | int) -> jnp.ndarray:
    """[M] int32 level of GT boxes [M, 4]: trunc(mean of log2(w / scale), log2(h / scale)),
    clamped to [lvl_min, lvl_max]; w, h clamped to >= 1e-6 (mmdetection)."""
    wh = jnp.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6)
    lvl = jnp.trunc((jnp.log2(wh[:, 0] / scale) + jnp.log2(wh[:, 1] / scale)) / 2)
    return jnp.clip(lvl, lvl_min, lvl_max).astype(jnp.int32)


def assign(
    points: Priors,
    gt: GroundTruth,
    *,
    scale: float = 4.0,
    pos_num: int = 1,
    chunk: int = 8,
) -> Assignment:
    """Point assignment of one image.

    Args:
      points: point priors: `centers` [N, 2] (x, y), `strides` [N] (powers of 2);
        `level_sizes` static. (mmdetection's priors [N, 3] = x, y, stride.)
      gt: one image's GroundTruth, leaves [M, ...].
      scale: GT size of level 0 (paper / mmdetection: 4, `point_base_scale`).
      pos_num: points claimed per GT (1).
      chunk: GT rows per loop step (speed only).
    Returns:
      Assignment: gt_index [N] int32 (-1 background, k matched to GT row k; never -2),
      quality [N] float32 (1 for positives).
    """
    pts = common.as_f32(points.centers)
    n = pts.shape[0]
    if pos_num > min(points.level_sizes):
        raise ValueError(f"pos_num={pos_num} exceeds the smallest level's {points.level_sizes}")
    p_lvl = point_levels(points.strides)
    boxes, match_rows, _ = common.split_gt(gt)
    g_lvl = gt_levels(boxes, scale, jnp.min(p_lvl), jnp.max(p_lvl))
    ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = jnp.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6)
    # The fold reads each row as (level, centre x, centre y, w, h): one [M, 5] array.
    packed = jnp.concatenate([g_lvl[:, None].astype(jnp.float32), ctr, wh], axis=1)

    def body(carry, row, k, live):
        best_dist, best = carry
        dx = (pts[:, 0] - row[1]) / row[3]
        dy = (pts[:, 1] - row[2]) / row[4]
        dist = jnp.sqrt(dx * dx + dy * dy)
        dist = jnp.where(p_lvl == row[0].astype(jnp.int32), dist, jnp.inf)
        neg, idx = lax.top_k(-dist, pos_num)
        d = -neg
        take = live & (d < best_dist[idx])
        best_dist = best_dist.at[idx].set(jnp.where(take, d, best_dist[idx]))
        best = best.at[idx].set(jnp.where(take, k, best[idx]))
        return best_dist, best

    init = (jnp.full((n,), jnp.inf, jnp.float32), jnp.full((n,), -1, jnp.int32))
    _, best = common.fold_gts(body, init, packed, match_rows, chunk)
    return common.finish(best, jnp.ones((n,), jnp.float32))

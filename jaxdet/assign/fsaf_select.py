"""FSAF online feature selection (Zhu et al., CVPR 2019, Sec. 3.4) and the size heuristic.

Online selection: every GT k is first a candidate on every level (the level-agnostic
`center_region.assign(..., selected_level=None)`); with the current predictions
(stop_gradient-ed by the caller) each candidate prior gets a loss
    loss_n = sum_c focal(cls_n, c) + IoU loss(box_n, GT)
(mmdetection's `FSAFHead.collect_loss_level_single`: focal summed over the classes,
IoU loss); the level whose priors owned by k have the smallest mean loss trains k:
    s_k = argmin_l mean_{n owned by k on level l} loss_n.
A level where k owns no prior counts `NO_PRIOR_LOSS` (1e6, as mmdetection); ties go to
the lower level (torch's `min`). Everything is one segment-sum over the N priors into
[M, L] bins: no loop over GTs or levels, jittable and vmappable.

Size heuristic (paper Eq. 1, FPN's rule): l' = floor(l0 + log2(sqrt(w h) / s0)),
canonical size s0 = 224 at level l0 = 5, clipped to the pyramid's levels. On an
image scaled by r the same rule keeps s0 * r (e.g. 128 px `shapes` against 800 px
COCO: s0 = 224 * 0.16 = 35.84, see configs/fsaf/fsaf_tiny_shapes.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jnp.ndarray
NO_PRIOR_LOSS = 1e6
CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 5


def level_losses(
    prior_loss: Array, gt_index: Array, prior_levels: Array, num_gts: int, num_levels: int
) -> tuple[Array, Array]:
    """Mean loss of each GT's priors on each level.

    prior_loss: [N] float; gt_index: [N] int32 (k >= 0: prior owned by GT k; others
    ignored); prior_levels: [N] int32 in [0, L). Returns (mean [M, L] float32, with
    NO_PRIOR_LOSS where the GT owns no prior on the level; count [M, L] int32).
    """
    pos = gt_index >= 0
    bins = jnp.where(pos, gt_index * num_levels + prior_levels, num_gts * num_levels)
    size = num_gts * num_levels + 1  # last bin collects the non-positives
    # One segment sum of (loss, 1) pairs (the count is exact in float32 below 2^24 priors).
    pairs = jnp.stack([jnp.where(pos, prior_loss, 0.0), pos.astype(jnp.float32)], -1)
    sums = jax.ops.segment_sum(pairs.astype(jnp.float32), bins, num_segments=size)[:-1]
    total = sums[:, 0].reshape(num_gts, num_levels)
    count = sums[:, 1].astype(jnp.int32).reshape(num_gts, num_levels)
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1), NO_PRIOR_LOSS)
    return mean.astype(jnp.float32), count


def select_levels(level_loss: Array) -> Array:
    """[M, L] mean losses -> [M] int32 argmin level (ties: the lower level)."""
    return jnp.argmin(level_loss, axis=-1).astype(jnp.int32)


def heuristic_levels(
    boxes: Array,
    strides: Sequence[int],
    canonical_size: float = CANONICAL_SIZE,
    canonical_level: int = CANONICAL_LEVEL,
) -> Array:
    """FPN's scale rule: boxes [M, 4] -> [M] int32 level index (0 = first of `strides`).

    Pyramid level of a stride s is log2(s) (stride 8 = P3). Degenerate boxes go to the
    first level.
    """
    first = int(round(math.log2(strides[0])))
    size = jnp.sqrt(jnp.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]),
                                1e-6))
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_size))
    return jnp.clip(level - first, 0, len(strides) - 1).astype(jnp.int32)


def online_select(
    prior_loss: Array,
    gt_index: Array,
    prior_levels: Array,
    num_gts: int,
    num_levels: int,
) -> tuple[Array, Array]:
    """Per image: (selected level [M] int32, has_candidate [M] bool: owns a prior somewhere).

    GTs without any candidate prior get level 0; they train nowhere (no prior owns them).
    """
    mean, count = level_losses(prior_loss, gt_index, prior_levels, num_gts, num_levels)
    return select_levels(mean), jnp.any(count > 0, axis=-1)

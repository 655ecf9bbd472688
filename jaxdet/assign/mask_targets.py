"""Mask R-CNN mask targets (mmdetection `mask_target_single` semantics), static shapes.

For each RoI matched to a GT row, the GT's binary mask is cropped to the RoI and
resized to size x size as mmdetection's `BitmapMasks.crop_and_resize` does:
the RoI is clipped to the mask's extent, the mask is RoIAligned over it
(`jaxdet.ops.roi_align`, aligned=True, adaptive sampling ratio) and binarised
with >= 0.5. The masks here are at 1/mask_stride of the padded input (mmdet's are
at full resolution), so the RoIs are scaled by 1/mask_stride: a mask pixel
(i, j) covers input pixels [i, i + 1) * mask_stride x [j, j + 1) * mask_stride.
RoIAlign's adaptive grid is capped at `DEFAULT_MAX_SAMPLING_RATIO` samples per
axis and bin: exact for RoIs up to size * 4 mask pixels per side, larger RoIs
averaged over 4 evenly spread samples per axis and bin.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdet.ops.roi_align import roi_align

Array = jnp.ndarray


@functools.partial(jax.jit, static_argnames=("mask_stride", "size"))
def mask_targets(
    rois: Array,
    gt_index: Array,
    gt_masks: Array,
    *,
    mask_stride: int,
    size: int = 28,
) -> tuple[Array, Array]:
    """Binary mask targets of one image's RoIs.

    rois: [R, 4] xyxy in input pixels.
    gt_index: [R] int32, the matched GT row (>= 0), or < 0 for no target.
    gt_masks: [M, Hm, Wm] uint8 (or bool/float) in {0, 1}, at 1/mask_stride of the
      padded input.
    mask_stride: static input pixels per mask pixel.
    size: static output side (mmdet `mask_size`, 28).

    Returns (targets [R, size, size] float32 in {0, 1}, valid [R] bool = gt_index
    >= 0 and M > 0); rows without a target are zero. Jitted with the sizes static;
    vmap it over a batch.
    """
    rois = jnp.asarray(rois, jnp.float32)
    gt_index = jnp.asarray(gt_index, jnp.int32)
    r = rois.shape[0]
    m, hm, wm = gt_masks.shape
    if m == 0 or r == 0:
        return jnp.zeros((r, size, size), jnp.float32), jnp.zeros((r,), bool)
    valid = gt_index >= 0
    limit = jnp.asarray([wm, hm, wm, hm], jnp.float32) * mask_stride
    rois = jnp.clip(rois, 0.0, limit)
    maps = jnp.asarray(gt_masks).astype(jnp.float32)[..., None]  # [M, Hm, Wm, 1]
    crops = roi_align(
        maps,
        rois,
        jnp.clip(gt_index, 0, m - 1),
        output_size=size,
        spatial_scale=1.0 / mask_stride,
        sampling_ratio=0,
        aligned=True,
        valid=valid,
    )[..., 0]
    # NaN RoIs give NaN crops: NaN >= 0.5 is False, so their targets are 0.
    return (crops >= 0.5).astype(jnp.float32), valid

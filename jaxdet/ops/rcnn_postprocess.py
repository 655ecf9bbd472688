"""Second-stage (R-CNN) post-processing with static shapes.

`rcnn_postprocess` follows mmdetection's `multiclass_nms` as called by
`BBoxHead._predict_by_feat_single`: every (RoI, class) pair with score >
score_thr is a candidate, boxes are clipped to the image, class-aware greedy NMS
(`jaxdet.ops.nms.batched_nms`), and the first max_det kept by score. Static
shapes: only the `pre_nms_topk` best candidates over the R * C pairs enter NMS
(mmdet keeps them all; with 1000 RoIs and score_thr 0.05 rarely more than a few
hundred pass). Ties in score go to the lower (RoI, class) index.

`paste_masks` follows mmdetection's `_do_paste_mask` (skip_empty=False): each
S x S mask is stretched over its box with `grid_sample(align_corners=False)`,
bilinear with zero padding, at every pixel centre of the output frame. The
bilinear weights are separable, so the paste is Wy [K, H, S] . mask . Wx^T
[K, S, W] (two batched matmuls, no loop over K). Degenerate boxes (w or h <= 0,
or non-finite) give an all-zero mask where mmdet's replacement of the infinite
grid coordinates by 0 would stretch the mask's centre over whole rows/columns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.core.boxes import clip
from jaxdet.ops.nms import batched_nms

Array = jnp.ndarray


@functools.partial(jax.jit, static_argnames=("max_det", "pre_nms_topk"))
def rcnn_postprocess(
    boxes: Array,
    scores: Array,
    valid: Array,
    image_hw: Array,
    *,
    score_thr: float,
    nms_iou: float,
    max_det: int,
    pre_nms_topk: int = 1000,
) -> tuple[Array, Array, Array, Array]:
    """One image's decoded R-CNN outputs -> detections.

    boxes: [R, C, 4] class-specific decoded xyxy boxes in input pixels, or
      [R, 1, 4] class-agnostic.
    scores: [R, C] foreground class probabilities (softmax, background dropped).
    valid: [R] bool, False for padding RoIs.
    image_hw: [2] (h, w) of the valid image, for clipping.
    score_thr: candidates need score > score_thr (mmdet 0.05; may be traced).
    nms_iou: class-aware NMS IoU threshold (mmdet 0.5; may be traced).
    max_det: static detections per image (mmdet `max_per_img`, 100).
    pre_nms_topk: static number of candidates entering NMS (<= 0: all R * C).

    Returns (boxes [max_det, 4], scores [max_det], classes [max_det] int32,
    valid [max_det] bool) in descending score order; padding rows are zero with
    valid False. NaN scores never become detections. Jitted with the sizes
    static; vmap it over a batch.
    """
    r, c = scores.shape
    if boxes.ndim != 3 or boxes.shape[0] != r or boxes.shape[1] not in (1, c):
        raise ValueError(f"boxes {boxes.shape} must be [R, C, 4] or [R, 1, 4], scores {(r, c)}")
    flat = jnp.asarray(scores, jnp.float32).reshape(-1)
    ok = (flat > score_thr) & jnp.repeat(jnp.asarray(valid, bool), c)  # NaN > t is False
    k = r * c if pre_nms_topk <= 0 else min(pre_nms_topk, r * c)
    if k == 0:
        z = jnp.zeros((max_det,), jnp.float32)
        return jnp.zeros((max_det, 4)), z, jnp.zeros((max_det,), jnp.int32), z > 0
    top, pair = lax.top_k(jnp.where(ok, flat, -jnp.inf), k)
    cand_valid = top > -jnp.inf
    roi, cls = pair // c, (pair % c).astype(jnp.int32)
    col = cls if boxes.shape[1] == c else jnp.zeros_like(cls)
    cand_boxes = clip(jnp.asarray(boxes, jnp.float32)[roi, col], image_hw)
    cand_scores = jnp.where(cand_valid, top, 0.0)
    keep, keep_valid = batched_nms(
        cand_boxes, cand_scores, cls, cand_valid, iou_threshold=nms_iou, max_output=max_det
    )
    return (
        jnp.where(keep_valid[:, None], cand_boxes[keep], 0.0),
        jnp.where(keep_valid, cand_scores[keep], 0.0),
        jnp.where(keep_valid, cls[keep], 0),
        keep_valid,
    )


def _axis_weights(lo: Array, hi: Array, n_out: int, s: int, ok: Array) -> Array:
    """grid_sample's bilinear weights (align_corners=False, zero padding) along one axis.

    lo, hi: [K] box extent in output pixels; returns [K, n_out, s]: the weight of
    mask cell t for output pixel i, whose centre i + 0.5 maps to grid coordinate
    g in [-1, 1] over the box and to the mask coordinate ((g + 1) * s - 1) / 2.
    """
    centre = jnp.arange(n_out, dtype=jnp.float32) + 0.5
    extent = jnp.where(ok, hi - lo, 1.0)
    g = (centre[None, :] - lo[:, None]) / extent[:, None] * 2.0 - 1.0  # [K, n_out]
    u = ((g + 1.0) * s - 1.0) * 0.5
    w = jnp.maximum(1.0 - jnp.abs(u[..., None] - jnp.arange(s, dtype=jnp.float32)), 0.0)
    return jnp.where(ok[:, None, None], w, 0.0)


@functools.partial(jax.jit, static_argnames=("out_hw", "stride"))
def paste_masks(
    mask_probs: Array,
    boxes: Array,
    *,
    out_hw: tuple[int, int],
    stride: int = 1,
) -> Array:
    """Pastes K RoI masks into the image frame at 1/stride resolution.

    mask_probs: [K, S, S] mask probabilities in [0, 1]; boxes: [K, 4] xyxy in
    input pixels; out_hw: static (H, W) of the output frame; stride: static input
    pixels per output pixel (boxes are divided by it).

    Returns [K, H, W] float32 in [0, 1]: mmdet's `_do_paste_mask` of each mask,
    0 outside its box. Jitted with the sizes static; vmap it over a batch.
    """
    masks = jnp.asarray(mask_probs, jnp.float32)
    k, sh, sw = masks.shape
    b = jnp.asarray(boxes, jnp.float32) / stride
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    ok = jnp.all(jnp.isfinite(b), axis=-1) & (x1 > x0) & (y1 > y0)
    wy = _axis_weights(y0, y1, out_hw[0], sh, ok)  # [K, H, S]
    wx = _axis_weights(x0, x1, out_hw[1], sw, ok)  # [K, W, S]
    masks = jnp.where(jnp.isnan(masks), 0.0, masks)
    hi = lax.Precision.HIGHEST
    out = jnp.einsum("khs,kst->kht", wy, masks, precision=hi)
    out = jnp.einsum("kht,kwt->khw", out, wx, precision=hi)
    return jnp.clip(out, 0.0, 1.0)

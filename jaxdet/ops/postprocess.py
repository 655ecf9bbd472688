"""Dense-detector post-processing: per-level top-k, score threshold, class-aware NMS.

Pure jnp, static shapes: used by the `predict` of one-stage detectors
(RetinaNet, ATSS, FCOS, FSAF, GFL, ...). Semantics follow mmdetection 3.x
`BaseDenseHead._predict_by_feat_single` + `_bbox_post_process`:

1. per level, over the flattened (prior, class) pairs of that level: keep the
   pairs with score > score_thr, then the `pre_nms_topk` best of them
   (`filter_scores_and_topk`, mmdet's `nms_pre`); a prior can thus enter with
   several classes. (mmdet 2.x RetinaNet instead took the top-k priors by their
   max class score and then every class above the threshold; not implemented.)
   With multi_label=False each prior only competes with its best class.
2. boxes clipped to the image (mmdet clips at decode with `max_shape`);
3. scores multiplied by `score_factors` (FCOS/ATSS centerness) when given:
   after the threshold and the top-k, before NMS, as mmdet 3.x does (2.x
   multiplied before the threshold);
4. boxes with width or height <= min_bbox_size dropped (mmdet's RetinaNet,
   FCOS and ATSS test configs set min_bbox_size=0; None disables);
5. class-aware greedy NMS, then the `max_det` best kept (mmdet `max_per_img`).

Differences from mmdet: torch's sort leaves ties in an unspecified order,
here ties go to the lower index; and mmdet's per-level top-k list is shorter
when fewer pairs pass the threshold, here it is padded with invalid entries.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.core.boxes import clip, widths_heights
from jaxdet.core.types import Detections
from jaxdet.ops.nms import batched_nms

Array = jnp.ndarray


def _level_topk(
    scores: Array, score_thr: float, k: int, multi_label: bool
) -> tuple[Array, Array, Array, Array]:
    """scores [N_l, C] of one level -> (prior index, class, score, valid), each [k]."""
    num_priors, num_classes = scores.shape
    if multi_label:
        flat = scores.reshape(-1)
        masked = jnp.where(flat > score_thr, flat, -jnp.inf)
        top, flat_idx = lax.top_k(masked, min(k, flat.shape[0]))
        prior, cls = flat_idx // num_classes, flat_idx % num_classes
    else:
        best = jnp.max(scores, axis=-1)
        masked = jnp.where(best > score_thr, best, -jnp.inf)
        top, prior = lax.top_k(masked, min(k, num_priors))
        cls = jnp.argmax(scores, axis=-1)[prior]
    valid = top > -jnp.inf
    return prior, cls.astype(jnp.int32), jnp.where(valid, top, 0.0), valid


@functools.partial(
    jax.jit,
    static_argnames=(
        "level_sizes",
        "score_thr",
        "pre_nms_topk",
        "max_det",
        "multi_label",
        "min_bbox_size",
    ),
)
def dense_postprocess(
    boxes: Array,
    scores: Array,
    level_sizes: tuple[int, ...],
    image_hw: Array,
    *,
    score_thr: float = 0.05,
    pre_nms_topk: int = 1000,
    iou_threshold: float = 0.5,
    max_det: int = 100,
    multi_label: bool = True,
    min_bbox_size: float | None = 0.0,
    score_factors: Array | None = None,
    extra: Any = None,
) -> Detections | tuple[Detections, Any]:
    """Decoded boxes and class probabilities of one image -> padded Detections.

    boxes: [N, 4] decoded xyxy boxes in input pixels (N = sum(level_sizes),
      priors in the order of `jaxdet.core.types.Priors`).
    scores: [N, C] class probabilities (sigmoid; a softmax head passes its
      foreground columns).
    level_sizes: static tuple, priors per level.
    image_hw: [2] (h, w) true image size before padding, for clipping.
    score_thr: keep (prior, class) pairs with score > score_thr (mmdet 0.05).
    pre_nms_topk: candidates per level before NMS (mmdet `nms_pre`, 1000).
    iou_threshold: NMS IoU threshold (RetinaNet/FCOS 0.5, ATSS 0.6).
    max_det: detections per image (mmdet `max_per_img`, 100).
    multi_label: rank (prior, class) pairs (True, mmdet 3.x) or each prior's best
      class only (False).
    min_bbox_size: drop boxes with w or h <= this after clipping; None keeps all.
    score_factors: optional [N] multiplier of the scores (centerness, already
      sigmoid-ed), applied after the threshold and the top-k, before NMS.
    extra: optional pytree of per-prior arrays [N, ...] (e.g. box std of
      uncertainty methods), gathered to the kept detections.

    Returns Detections(boxes [max_det, 4], scores [max_det], classes [max_det]
    int32, valid [max_det] bool), sorted by score, padding rows zero with
    valid=False; with `extra`, the tuple (Detections, extra gathered to
    [max_det, ...], zero on padding rows). Jitted with the sizes and
    thresholds static (iou_threshold may be traced); vmap it over a batch.
    """
    if boxes.shape[0] != sum(level_sizes) or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"boxes {boxes.shape} / scores {scores.shape} do not match level_sizes {level_sizes}"
        )
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    priors, classes, cand_scores, cand_valid = [], [], [], []
    start = 0
    for size in level_sizes:
        p, c, s, v = _level_topk(scores[start : start + size], score_thr, pre_nms_topk, multi_label)
        priors.append(p + start)
        classes.append(c)
        cand_scores.append(s)
        cand_valid.append(v)
        start += size
    prior = jnp.concatenate(priors)
    cls = jnp.concatenate(classes)
    cand_score = jnp.concatenate(cand_scores)
    valid = jnp.concatenate(cand_valid)

    cand_boxes = clip(boxes[prior], image_hw)
    if score_factors is not None:
        cand_score = cand_score * jnp.asarray(score_factors, jnp.float32)[prior]
    if min_bbox_size is not None:
        valid = valid & jnp.all(widths_heights(cand_boxes) > min_bbox_size, axis=-1)

    keep, keep_valid = batched_nms(
        cand_boxes, cand_score, cls, valid, iou_threshold=iou_threshold, max_output=max_det
    )

    def take(x: Array) -> Array:
        x = x[keep]
        mask = keep_valid.reshape(keep_valid.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, x, jnp.zeros_like(x))

    dets = Detections(
        boxes=take(cand_boxes),
        scores=take(cand_score),
        classes=take(cls),
        valid=keep_valid,
    )
    if extra is None:
        return dets
    return dets, jax.tree_util.tree_map(lambda x: take(jnp.asarray(x)[prior]), extra)

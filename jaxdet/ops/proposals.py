"""RPN proposal generation with static shapes (mmdetection 3.x `RPNHead` semantics).

`generate_proposals` follows `RPNHead._predict_by_feat_single` + `_bbox_post_process`:

1. scores = sigmoid(objectness); per level, the min(pre_nms_topk, n_l) best
   anchors by score (mmdet's `nms_pre`; pre_nms_topk <= 0 keeps the whole level);
2. deltas decoded against their anchors (`delta_xywh_decode`: means 0, `box_stds`,
   dw/dh clamped to log(1000/16)) and clipped to the valid image size;
3. boxes with w <= min_size or h <= min_size marked invalid (mmdet removes them);
4. greedy NMS per level (`batched_nms` with the level as the class: a box is only
   suppressed by a box of its own level), then the first `post_nms_topk` kept
   boxes over all levels by score (mmdet's `max_per_img`).

Differences from mmdet: ties in score go to the lower index (torch's sort leaves
them unspecified); padding anchors (`valid` False), NaN scores and boxes with a NaN
coordinate never enter the candidates. The outputs carry no gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.core.boxes import widths_heights
from jaxdet.core.coders import delta_xywh_decode
from jaxdet.ops.nms import batched_nms

Array = jnp.ndarray


def _level_candidates(scores: Array, start: int, size: int, k: int) -> tuple[Array, Array]:
    """The k best of scores[start:start + size] ( -inf = excluded) -> (index, valid), [k]."""
    top, idx = lax.top_k(lax.slice_in_dim(scores, start, start + size), k)
    return idx.astype(jnp.int32) + start, top > -jnp.inf


@functools.partial(
    jax.jit,
    static_argnames=(
        "level_sizes",
        "pre_nms_topk",
        "post_nms_topk",
        "box_stds",
    ),
)
def generate_proposals(
    objectness: Array,
    deltas: Array,
    anchors: Array,
    image_hw: Array,
    *,
    level_sizes: tuple[int, ...],
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_iou: float,
    min_size: float = 0.0,
    box_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    valid: Array | None = None,
) -> tuple[Array, Array, Array]:
    """One image's RPN outputs -> its proposals.

    objectness: [N] logits; deltas: [N, 4]; anchors: [N, 4] xyxy, level-major
      (the order of `jaxdet.core.types.Priors.boxes`), N = sum(level_sizes).
    image_hw: [2] (h, w) of the valid image inside the padded input (clipping).
    level_sizes: static anchors per level.
    pre_nms_topk: candidates per level before NMS (mmdet `nms_pre`: 2000 train,
      1000 test); <= 0 keeps every anchor.
    post_nms_topk: K, proposals returned (mmdet `max_per_img`, 1000).
    nms_iou: NMS IoU threshold (0.7; may be traced).
    min_size: boxes with w <= min_size or h <= min_size after clipping are dropped
      (may be traced).
    box_stds: the coder's target stds (means are 0).
    valid: optional [N] bool, False for anchors that must not give proposals.

    Returns (boxes [K, 4], scores [K] sigmoid, valid [K] bool), in descending
    score order; slots past the number of survivors are zero with valid False.
    No gradient flows to the inputs. Jitted with the sizes static; vmap it over
    a batch.
    """
    n = sum(level_sizes)
    if objectness.shape != (n,) or deltas.shape != (n, 4) or anchors.shape != (n, 4):
        raise ValueError(
            f"objectness {objectness.shape} / deltas {deltas.shape} / anchors "
            f"{anchors.shape} do not match level_sizes {level_sizes}"
        )
    objectness, deltas, anchors, image_hw = (
        lax.stop_gradient(jnp.asarray(x, jnp.float32))
        for x in (objectness, deltas, anchors, image_hw)
    )
    scores = jax.nn.sigmoid(objectness)
    usable = ~jnp.isnan(scores)
    if valid is not None:
        usable = usable & lax.stop_gradient(jnp.asarray(valid, bool))
    ranked = jnp.where(usable, scores, -jnp.inf)

    idx, cand_valid, levels = [], [], []
    start = 0
    for lvl, size in enumerate(level_sizes):
        if size > 0:
            k = size if pre_nms_topk <= 0 else min(pre_nms_topk, size)
            i, v = _level_candidates(ranked, start, size, k)
            idx.append(i)
            cand_valid.append(v)
            levels.append(jnp.full((k,), lvl, jnp.int32))
        start += size
    if not idx:
        return jnp.zeros((post_nms_topk, 4)), jnp.zeros((post_nms_topk,)), jnp.zeros(
            (post_nms_topk,), bool
        )
    idx = jnp.concatenate(idx)
    cand_valid = jnp.concatenate(cand_valid)
    levels = jnp.concatenate(levels)

    boxes = delta_xywh_decode(anchors[idx], deltas[idx], stds=box_stds, image_hw=image_hw)
    cand_scores = scores[idx]
    # NaN > x is False: boxes with a NaN coordinate are dropped here as well.
    cand_valid = cand_valid & jnp.all(widths_heights(boxes) > min_size, axis=-1)

    keep, keep_valid = batched_nms(
        boxes, cand_scores, levels, cand_valid, iou_threshold=nms_iou, max_output=post_nms_topk
    )
    out_boxes = jnp.where(keep_valid[:, None], boxes[keep], 0.0)
    out_scores = jnp.where(keep_valid, cand_scores[keep], 0.0)
    return out_boxes, out_scores, keep_valid

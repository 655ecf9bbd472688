"""Region Proposal Network (Ren et al., NeurIPS 2015) with FPN (Lin et al., CVPR 2017).

As mmdetection's `rpn_r50_fpn_1x` / the RPN of `faster-rcnn_r50_fpn_1x`: anchors of
one scale (`octave_base_scale` 8) and ratios 0.5 / 1 / 2 on P2-P6; max-IoU assignment
0.7 / 0.3 with low-quality matches (min 0.3), crowd boxes ignored; per image 256
anchors sampled at most half positive (`jaxdet.assign.sampler.balanced_sample`, seeded
by the step's rng); sigmoid BCE on the sampled anchors and L1 on the positives'
delta-xywh (stds 1), both / the number of sampled anchors of the batch. Proposals
(`proposals`): per-level top-k, decode, clip, NMS 0.7 per level, top-K over levels
(`jaxdet.ops.proposals.generate_proposals`), without gradient.

The module-level functions are what Faster / Mask R-CNN call for their first stage;
`RPN` is the RPN-only detector: its detections are the proposals (class 0, score =
objectness), evaluated by proposal recall (`config.test.metric = 'proposal'`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import max_iou, targets
from jaxdet.assign.sampler import balanced_sample
from jaxdet.core import coders
from jaxdet.core.types import Assignment, Detections, GroundTruth, Priors
from jaxdet.detectors.dense import DenseDetector, StepContext, normalizer
from jaxdet.detectors.retinanet import anchors, num_anchors
from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy
from jaxdet.losses.smooth_l1 import l1_loss, smooth_l1_loss
from jaxdet.models.heads.rpn_head import RPNHead
from jaxdet.ops.per_shard import per_shard
from jaxdet.ops.proposals import generate_proposals


def rpn_head(config: Any) -> RPNHead:
    """RPNHead of `config.anchor`'s anchors per location, width config.model.fpn.channels."""
    return RPNHead(num_anchors=num_anchors(config.anchor),
                   feat_channels=int(config.model.fpn.channels),
                   dtype=jnp.dtype(config.model.dtype), platform=platform_lib.from_config(config))


def rpn_assign(priors: Priors, gt: GroundTruth, hp: Any) -> Assignment:
    """Batched max-IoU assignment of the anchors with `config.rpn`'s thresholds."""
    return jax.vmap(
        lambda g: max_iou.assign(
            priors, g, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
            min_pos_iou=hp.min_pos_iou, match_low_quality=True,
            ignore_iof_thr=hp.ignore_iof_thr,
        )
    )(gt)


def rpn_losses(outputs: dict, priors: Priors, gt: GroundTruth, assignment: Assignment,
               rng: jax.Array, hp: Any) -> dict[str, jax.Array]:
    """RPN terms over `hp.num_samples` anchors sampled per image.

    outputs: 'objectness' [B, N], 'box_deltas' [B, N, 4]; assignment [B, N]; rng the
    step's key (split per image; None: a fixed key). priors.boxes [N, 4], or [B, N, 4]
    per image (GA-RPN's guided anchors). Returns loss_rpn_cls (BCE over the sampled
    anchors), loss_rpn_box (L1 on the sampled positives' delta-xywh; smooth L1 where
    `hp.smooth_l1_beta` exists and is > 0), both / the batch's number of sampled anchors,
    and rpn_num_pos (sampled positives per image).
    """
    b, n = outputs["objectness"].shape
    keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, b)
    sample = jax.vmap(
        lambda k, a: balanced_sample(k, a.positive, a.negative, num=int(hp.num_samples),
                                     pos_fraction=float(hp.pos_fraction))
    )
    idx, valid = per_shard(sample, keys, assignment)  # its top-k: per data shard
    weight = jax.vmap(
        lambda i, v: jnp.zeros((n,), jnp.float32).at[i].add(v.astype(jnp.float32))
    )(idx, valid)  # 1 on the sampled anchors (indices are distinct)
    pos = assignment.positive
    avg = normalizer(weight)
    bce = sigmoid_binary_cross_entropy(outputs["objectness"], pos.astype(jnp.float32))
    loss_cls = jnp.sum(bce * weight) / avg
    gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
    box_t = coders.delta_xywh_encode(jnp.broadcast_to(priors.boxes, gt_boxes.shape), gt_boxes,
                                     stds=tuple(hp.box_stds))
    box_w = weight * pos
    beta = float(hp.get("smooth_l1_beta", 0.0))
    box_l = (smooth_l1_loss(outputs["box_deltas"], box_t, beta) if beta > 0
             else l1_loss(outputs["box_deltas"], box_t))
    loss_box = jnp.sum(box_l * box_w[..., None]) / avg
    return dict(loss_rpn_cls=hp.cls_weight * loss_cls, loss_rpn_box=hp.box_weight * loss_box,
                rpn_num_pos=jnp.sum(box_w) / b)


def proposals(outputs: dict, priors: Priors, image_hw: jax.Array, hp: Any, *, train: bool,
              valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched proposals: outputs [B, N, ...], image_hw [B, 2] -> (boxes [B, K, 4],
    scores [B, K], valid [B, K]); K = hp.{train,test}_post_nms_topk. No gradient.
    priors.boxes [N, 4], or [B, N, 4] per image (GA-RPN); `valid` [B, N] bool, optional:
    False for anchors that give no proposal (GA-RPN's location filter)."""
    mode = "train" if train else "test"
    outputs = jax.lax.stop_gradient(outputs)
    extra = {}  # per-image inputs besides the outputs
    if priors.boxes.ndim == 3:
        extra["anchors"] = priors.boxes
    if valid is not None:
        extra["valid"] = valid

    def one(obj, deltas, hw, extra):
        return generate_proposals(
            obj, deltas, extra.get("anchors", priors.boxes), hw,
            level_sizes=priors.level_sizes, pre_nms_topk=int(hp[f"{mode}_pre_nms_topk"]),
            post_nms_topk=int(hp[f"{mode}_post_nms_topk"]), nms_iou=float(hp.nms_iou),
            min_size=float(hp.min_size), box_stds=tuple(hp.box_stds), valid=extra.get("valid"),
        )

    # per data shard: the per-level top-k would otherwise gather the global batch
    return per_shard(jax.vmap(one), outputs["objectness"], outputs["box_deltas"], image_hw,
                     extra)


class RPN(DenseDetector):
    """The RPN alone: trains the first stage; its detections are the test proposals."""

    def __init__(self, config: Any):
        self.anchor = config.anchor
        super().__init__(config, rpn_head(config))
        self.hp = config.rpn

    def priors(self, image_hw, outputs=None):
        return anchors(self.anchor, self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        return rpn_assign(priors, gt, self.hp)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext):
        return rpn_losses(outputs, priors, gt, assignment, ctx.rng, self.hp)

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """Detections [B, K, ...]: the proposals, class 0, score = sigmoid(objectness)."""
        outputs = self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]))
        boxes, scores, valid = proposals(outputs, priors, image_hw, self.hp, train=False)
        return Detections(boxes=boxes, scores=jnp.where(valid, scores, 0.0),
                          classes=jnp.zeros(scores.shape, jnp.int32), valid=valid)


def make(config: Any) -> RPN:
    return RPN(config)

"""AlignDet (Chen et al., "Revisiting Feature Alignment for One-stage Object Detection",
arXiv 1908.01570): a dense first stage refines one anchor per location; RoIConv (a 3x3
deformable conv whose sampling points are a 3x3 grid over the refined box,
`jaxdet.ops.roi_conv`) reads the features of the refined box for the final
classification and regression. Fully convolutional, one stage.

The paper has no released code; the choices below that it does not fix are this
implementation's:
Head: `AlignDetHead` (GN towers; 1 square anchor per location, side
  `anchor.octave_base_scale` x stride, 8 as ATSS; RoIConv grid `aligndet.grid`, 'bins':
  RoIAlign's bin centres; `aligndet.roi_conv=False`: a plain 3x3 conv in its place).
Priors: {'anchors': the anchor lattice, 'refined': `Priors.from_boxes` of the
  first-stage boxes (detached), [B, N, 4]}.
Assigners: first stage ATSS (`jaxdet.assign.atss`, topk 9) on the anchors; second stage
  max-IoU (0.5 / 0.4, min_pos_iou 0, low-quality matches; `jaxdet.assign.max_iou`) on
  the refined boxes, as RepPoints' refine stage.
Losses (num_pos of each stage summed over the global batch):
  obj:      class-agnostic sigmoid focal (0.25, 2), first assignment / first num_pos,
            x `loss.init_weight`
  box_init: GIoU(anchor decoded with `aligndet.init_box_stds`, GT) over the first
            positives / first num_pos, x `loss.box_weight` x `loss.init_weight`
  cls:      sigmoid focal (0.25, 2), second assignment / second num_pos
  box:      GIoU(refined box decoded with `aligndet.box_stds`, GT) over the second
            positives / second num_pos, x `loss.box_weight`
Inference: the second-stage boxes with the final sigmoid class scores (the objectness
is not used), per-level top-1000, score > 0.05, NMS, 100 detections.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import atss as atss_assign
from jaxdet.assign import max_iou, targets
from jaxdet.core import coders
from jaxdet.core.types import Assignment, GroundTruth, Priors
from jaxdet.detectors.dense import (
    DenseDetector,
    StepContext,
    check_assigner,
    focal_classification_loss,
    normalizer,
)
from jaxdet.detectors.retinanet import anchors
from jaxdet.losses.iou import giou_loss
from jaxdet.models.heads.aligndet_head import AlignDetHead
from jaxdet.ops.per_shard import per_shard


def refined_boxes(init_deltas: jax.Array, anchor_priors: Priors,
                  stds: tuple[float, ...]) -> jax.Array:
    """First-stage boxes [..., N, 4]: the anchors decoded with init_deltas [..., N, 4]."""
    a = jnp.broadcast_to(anchor_priors.boxes, init_deltas.shape)
    return coders.delta_xywh_decode(a, init_deltas, stds=stds)


def giou_stage_loss(pred_boxes: jax.Array, gt: GroundTruth, assignment: Assignment
                    ) -> tuple[jax.Array, jax.Array]:
    """(sum of GIoU losses over the positives / global num_pos, num_pos).
    pred_boxes [B, N, 4]; gt, assignment batched."""
    gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
    pos = assignment.positive
    num_pos = normalizer(pos.astype(jnp.float32))
    safe_gt = jnp.where(pos[..., None], gt_boxes, jax.lax.stop_gradient(pred_boxes))
    return jnp.sum(jnp.where(pos, giou_loss(pred_boxes, safe_gt), 0.0)) / num_pos, num_pos


class AlignDet(DenseDetector):
    def __init__(self, config: Any):
        h, ad, a = config.model.head, config.aligndet, config.anchor
        if int(a.scales_per_octave) != 1 or tuple(a.ratios) != (1.0,):
            raise ValueError("aligndet: one square anchor per location "
                             "(anchor.scales_per_octave=1, anchor.ratios=(1.0,))")
        head = AlignDetHead(
            num_classes=int(config.data.num_classes),
            strides=tuple(int(s) for s in config.model.strides),
            anchor_scale=float(a.octave_base_scale),
            init_box_stds=tuple(ad.init_box_stds),
            feat_channels=h.channels,
            stacked_convs=h.num_convs,
            norm=h.norm,
            gn_groups=h.gn_groups,
            roi_conv=bool(ad.roi_conv),
            grid=ad.grid,
            prior_prob=float(config.loss.prior_prob),
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
            sampling_backend=config.model.sampling_backend,
        )
        super().__init__(config, head)
        check_assigner(config, ("atss",))
        self.anchor = a
        self.ad = ad
        self.hp = config.assigner
        self.loss_cfg = config.loss

    def priors(self, image_hw, outputs=None):
        """{'anchors': Priors [N], 'refined': Priors with boxes [B, N, 4] (detached
        first-stage boxes; None without outputs)}."""
        base = anchors(self.anchor, self.strides, image_hw)
        if outputs is None:
            return {"anchors": base, "refined": None}
        boxes = jax.lax.stop_gradient(
            refined_boxes(outputs["init_deltas"], base, tuple(self.ad.init_box_stds)))
        return {"anchors": base,
                "refined": Priors.from_boxes(boxes, self.strides, base.level_sizes)}

    def level_sizes(self, priors):
        return priors["anchors"].level_sizes

    def assign(self, outputs, priors, gt):
        """{'init': ATSS on the anchors, 'final': max-IoU on the refined boxes}, [B, N]."""
        hp = self.hp
        init = per_shard(lambda g: atss_assign.assign_batch(
            priors["anchors"], g, topk=hp.topk, ignore_iof_thr=hp.ignore_iof_thr), gt)
        refined = priors["refined"]

        def final_one(boxes, centers, g):
            p = dataclasses.replace(refined, boxes=boxes, centers=centers)
            return max_iou.assign(
                p, g, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
                min_pos_iou=hp.min_pos_iou, ignore_iof_thr=hp.ignore_iof_thr, method="dense")

        final = jax.vmap(final_one)(refined.boxes, refined.centers, gt)
        return {"init": init, "final": final}

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        lc, ad = self.loss_cfg, self.ad
        init, final = assignment["init"], assignment["final"]
        agnostic = gt.replace(labels=jnp.zeros_like(gt.labels))
        loss_obj, _, _ = focal_classification_loss(
            outputs["obj_logits"][..., None], init, agnostic, 1, lc.focal_alpha, lc.focal_gamma)
        loss_cls, _, _ = focal_classification_loss(
            outputs["cls_logits"], final, gt, self.num_classes, lc.focal_alpha, lc.focal_gamma)
        init_boxes = refined_boxes(outputs["init_deltas"], priors["anchors"],
                                   tuple(ad.init_box_stds))
        loss_box_init, _ = giou_stage_loss(init_boxes, gt, init)
        final_boxes = coders.delta_xywh_decode(priors["refined"].boxes, outputs["box_deltas"],
                                               stds=tuple(ad.box_stds))
        loss_box, _ = giou_stage_loss(final_boxes, gt, final)
        b = final.gt_index.shape[0]
        return dict(loss_obj=lc.init_weight * loss_obj,
                    loss_box_init=lc.init_weight * lc.box_weight * loss_box_init,
                    loss_cls=loss_cls, loss_box=lc.box_weight * loss_box,
                    num_pos=jnp.sum(final.positive) / b,
                    num_pos_init=jnp.sum(init.positive) / b)

    def decode(self, outputs, priors):
        """One image: the second-stage boxes and the final class scores."""
        ad = self.ad
        refined = refined_boxes(outputs["init_deltas"], priors["anchors"],
                                tuple(ad.init_box_stds))
        boxes = coders.delta_xywh_decode(refined, outputs["box_deltas"], stds=tuple(ad.box_stds))
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def make(config: Any) -> AlignDet:
    return AlignDet(config)

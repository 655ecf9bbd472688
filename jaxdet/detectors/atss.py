"""ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020).

Head: `ATSSHead` (GN towers, 1 square anchor per location of scale 8 * stride,
centerness from the reg tower). Assigner: `jaxdet.assign.atss` (topk 9).
Losses as mmdetection's `ATSSHead.loss_by_feat`:
  cls:        sigmoid focal (0.25, 2) / num_pos
  box:        GIoU(decoded, gt) weighted by the centerness target, / sum of
              centerness targets, x2.0
  centerness: BCE(logit, centerness target) over positives / num_pos
num_pos and the centerness sum are summed over the global batch (under jit
over the data mesh, a sum over the batch axis is global).
Inference: sigmoid scores x sigmoid centerness, per-level top-1000, NMS 0.6.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import atss as atss_assign
from jaxdet.assign import targets
from jaxdet.core import coders
from jaxdet.detectors.dense import (
    DenseDetector,
    StepContext,
    check_assigner,
    focal_classification_loss,
)
from jaxdet.detectors.fcos import centerness_losses
from jaxdet.detectors.retinanet import anchors
from jaxdet.losses.iou import giou_loss
from jaxdet.models.heads.atss_head import ATSSHead
from jaxdet.ops.per_shard import per_shard

BOX_STDS = (0.1, 0.1, 0.2, 0.2)


class ATSS(DenseDetector):
    def __init__(self, config: Any):
        h = config.model.head
        head = ATSSHead(
            num_classes=int(config.data.num_classes),
            num_anchors=1,
            feat_channels=h.channels,
            stacked_convs=h.num_convs,
            norm=h.norm,
            gn_groups=h.gn_groups,
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
        )
        super().__init__(config, head)
        check_assigner(config, ("atss",))
        self.anchor = config.anchor
        self.hp = config.assigner
        self.loss_cfg = config.loss

    def priors(self, image_hw, outputs=None):
        return anchors(self.anchor, self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        """Batched ATSS (lattice-window search, exact; `atss.assign_batch`), run per data
        shard (`per_shard`: its top-k would otherwise gather the global batch)."""
        hp = self.hp
        return per_shard(lambda g: atss_assign.assign_batch(
            priors, g, topk=hp.topk, ignore_iof_thr=hp.ignore_iof_thr), gt)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        lc = self.loss_cfg
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        loss_cls, num_pos, pos = focal_classification_loss(
            outputs["cls_logits"], assignment, gt, self.num_classes, lc.focal_alpha,
            lc.focal_gamma,
        )
        anchor_boxes = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
        pred_boxes = coders.delta_xywh_decode(anchor_boxes, outputs["box_deltas"], stds=BOX_STDS)
        loss_box, loss_ctr = centerness_losses(
            pred_boxes, gt_boxes, priors.centers, outputs["centerness"], pos, num_pos,
            giou_loss, lc.box_weight,
        )
        return dict(loss_cls=loss_cls, loss_box=loss_box, loss_ctr=loss_ctr,
                    num_pos=jnp.sum(pos) / pos.shape[0])

    def decode(self, outputs, priors):
        boxes = coders.delta_xywh_decode(priors.boxes, outputs["box_deltas"], stds=BOX_STDS)
        return (boxes, jax.nn.sigmoid(outputs["cls_logits"]),
                jax.nn.sigmoid(outputs["centerness"]))


def make(config: Any) -> ATSS:
    return ATSS(config)

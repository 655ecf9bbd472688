"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019).

Head: `FCOSHead` (GN towers, per-level Scale, norm_on_bbox: distances in units
of the stride, centerness on the reg tower). Assigner: `jaxdet.assign.fcos`
(scale ranges (-1, 64, 128, 256, 512, inf), centre sampling radius 1.5,
smallest-area GT wins). Losses as mmdetection's `FCOSHead.loss_by_feat`:
  cls:        sigmoid focal (0.25, 2) / num_pos
  box:        IoU loss ('iou' = -log IoU as mmdet's IoULoss, or 'giou') weighted
              by the centerness target / sum of centerness targets
  centerness: BCE over positives / num_pos
Inference: sigmoid scores x sigmoid centerness, per-level top-1000, NMS 0.5.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import fcos as fcos_assign
from jaxdet.assign import targets
from jaxdet.core import coders
from jaxdet.core import priors as priors_lib
from jaxdet.detectors.dense import (
    DenseDetector,
    StepContext,
    check_assigner,
    focal_classification_loss,
    normalizer,
)
from jaxdet.losses.centerness import centerness_loss, centerness_targets
from jaxdet.losses.iou import giou_loss, iou_loss
from jaxdet.models.heads.fcos_head import FCOSHead


def points(strides: tuple[int, ...], image_hw: tuple[int, int]):
    """One point per feature-map location, at the cell centre (offset 0.5), as jnp."""
    p = priors_lib.make_points(priors_lib.feature_shapes(image_hw, strides), strides, offset=0.5)
    return jax.tree_util.tree_map(jnp.asarray, p)


def centerness_losses(pred_boxes: jax.Array, gt_boxes: jax.Array, centers: jax.Array,
                      centerness_logits: jax.Array, pos: jax.Array, num_pos: jax.Array,
                      box_fn: Any, box_weight: float) -> tuple[jax.Array, jax.Array]:
    """FCOS's box and centerness terms (ATSS uses them too): (loss_box, loss_ctr).

    pred_boxes, gt_boxes [B, N, 4] xyxy; centers [N, 2]; centerness_logits, pos [B, N].
    loss_box = box_weight x sum of box_fn(pred, gt) weighted by the centerness target
    over the positives / the targets' global sum; loss_ctr = BCE(logit, target) over the
    positives / num_pos.
    """
    ltrb_t = coders.distance_encode(centers, gt_boxes)  # pixels
    ctr_t = jnp.where(pos, centerness_targets(ltrb_t), 0.0)
    ctr_sum = normalizer(ctr_t, 1e-6)
    loss_box = (
        box_weight * jnp.sum(jnp.where(pos, box_fn(pred_boxes, gt_boxes) * ctr_t, 0.0)) / ctr_sum
    )
    loss_ctr = jnp.sum(jnp.where(pos, centerness_loss(centerness_logits, ctr_t), 0.0)) / num_pos
    return loss_box, loss_ctr


class FCOS(DenseDetector):
    def __init__(self, config: Any):
        h = config.model.head
        head = FCOSHead(
            num_classes=int(config.data.num_classes),
            feat_channels=h.channels,
            stacked_convs=h.num_convs,
            norm=h.norm,
            gn_groups=h.gn_groups,
            norm_on_bbox=True,
            centerness_on_reg=True,
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
        )
        super().__init__(config, head)
        check_assigner(config, ("fcos",))
        self.hp = config.assigner
        self.loss_cfg = config.loss

    def priors(self, image_hw, outputs=None):
        return points(self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        hp = self.hp
        ranges = tuple(tuple(float(v) for v in r) for r in hp.regress_ranges)
        return jax.vmap(
            lambda g: fcos_assign.assign(
                priors,
                g,
                regress_ranges=ranges,
                center_sampling=hp.center_sampling,
                center_sample_radius=hp.center_sample_radius,
            )
        )(gt)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        lc = self.loss_cfg
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        loss_cls, num_pos, pos = focal_classification_loss(
            outputs["cls_logits"], assignment, gt, self.num_classes, lc.focal_alpha,
            lc.focal_gamma,
        )
        # Boxes from distances in stride units (norm_on_bbox): IoU is scale-invariant.
        pred_boxes = coders.distance_decode(priors.centers, outputs["box_ltrb"], priors.strides)
        box_fn = giou_loss if lc.box_loss == "giou" else iou_loss
        loss_box, loss_ctr = centerness_losses(
            pred_boxes, gt_boxes, priors.centers, outputs["centerness"], pos, num_pos, box_fn,
            lc.box_weight,
        )
        return dict(loss_cls=loss_cls, loss_box=loss_box, loss_ctr=loss_ctr,
                    num_pos=jnp.sum(pos) / pos.shape[0])

    def decode(self, outputs, priors):
        boxes = coders.distance_decode(priors.centers, outputs["box_ltrb"], priors.strides)
        return (boxes, jax.nn.sigmoid(outputs["cls_logits"]),
                jax.nn.sigmoid(outputs["centerness"]))


def make(config: Any) -> FCOS:
    return FCOS(config)

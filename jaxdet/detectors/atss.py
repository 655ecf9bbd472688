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
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import Priors, ground_truth_from_batch
from jaxdet.detectors.dense import DenseDetector, focal_classification_loss, normalizer
from jaxdet.losses.centerness import centerness_loss, centerness_targets
from jaxdet.losses.iou import giou_loss
from jaxdet.models.heads.atss_head import ATSSHead

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
            gn_groups=h.get("gn_groups", 32),
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
        )
        super().__init__(config, head)
        self.anchor = config.anchor
        self.hp = config.assigner
        self.loss_cfg = config.loss

    def make_priors(self, image_hw: tuple[int, int]) -> Priors:
        return priors_lib.make_anchors(
            priors_lib.feature_shapes(image_hw, self.strides),
            self.strides,
            octave_base_scale=self.anchor.octave_base_scale,
            scales_per_octave=self.anchor.scales_per_octave,
            ratios=tuple(self.anchor.ratios),
        )

    def assign(self, priors: Priors, gt):
        """Batched ATSS (lattice-window search, exact; `atss.assign_batch`)."""
        return atss_assign.assign_batch(
            priors, gt, topk=self.hp.topk, ignore_iof_thr=self.hp.ignore_iof_thr
        )

    def loss_fn(self, params, batch, rng, det_state, step):
        del rng, step
        images = batch["image"]
        out = self.apply(params, images)
        priors = self.priors_for(images)
        gt = ground_truth_from_batch(batch)
        assignment = self.assign(priors, gt)
        loss, metrics = self.losses(out, priors, gt, assignment)
        return loss, (metrics, det_state)

    def losses(self, out, priors, gt, assignment):
        """Loss terms given the head outputs and a (batched) assignment."""
        lc = self.loss_cfg
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        loss_cls, num_pos, pos = focal_classification_loss(
            out["cls_logits"], assignment, gt, self.num_classes, lc.focal_alpha, lc.focal_gamma
        )
        anchors = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
        pred_boxes = coders.delta_xywh_decode(anchors, out["box_deltas"], stds=BOX_STDS)
        ltrb = coders.distance_encode(priors.centers, gt_boxes)
        ctr_t = jnp.where(pos, centerness_targets(ltrb), 0.0)
        ctr_sum = normalizer(ctr_t, 1e-6)
        loss_box = (
            lc.box_weight
            * jnp.sum(jnp.where(pos, giou_loss(pred_boxes, gt_boxes) * ctr_t, 0.0))
            / ctr_sum
        )
        loss_ctr = jnp.sum(jnp.where(pos, centerness_loss(out["centerness"], ctr_t), 0.0)) / num_pos
        loss = loss_cls + loss_box + loss_ctr
        metrics = dict(
            loss_cls=loss_cls,
            loss_box=loss_box,
            loss_ctr=loss_ctr,
            num_pos=jnp.sum(pos) / pos.shape[0],
        )
        return loss, metrics

    def decode(self, out, priors):
        boxes = coders.delta_xywh_decode(priors.boxes, out["box_deltas"], stds=BOX_STDS)
        return boxes, jax.nn.sigmoid(out["cls_logits"]), jax.nn.sigmoid(out["centerness"])


def make(config: Any) -> ATSS:
    return ATSS(config)

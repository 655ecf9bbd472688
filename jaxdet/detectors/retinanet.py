"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Head: `RetinaHead` (4 convs of 256, no norm, A = 9 anchors: 3 scales x 3 ratios,
octave base scale 4). Assigner: max-IoU (pos 0.5, neg 0.4, min_pos 0.0, low-quality
matches) or, with `config.assigner.name = 'atss'`, ATSS's adaptive selection (the
ATSS paper's "RetinaNet + ATSS" row). Losses as mmdetection's `RetinaHead`:
sigmoid focal (0.25, 2) / num_pos, L1 on delta-xywh (stds 1) / num_pos.
Inference: sigmoid scores, per-level top-1000, score > 0.05, NMS 0.5, 100 dets.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import atss as atss_assign
from jaxdet.assign import max_iou, targets
from jaxdet.core import coders
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import Priors, ground_truth_from_batch
from jaxdet.detectors.dense import DenseDetector, focal_classification_loss
from jaxdet.losses.smooth_l1 import smooth_l1_loss
from jaxdet.models.heads.retina_head import RetinaHead


class RetinaNet(DenseDetector):
    def __init__(self, config: Any):
        h = config.model.head
        self.anchor = config.anchor
        num_anchors = len(self.anchor.ratios) * int(self.anchor.scales_per_octave)
        head = RetinaHead(
            num_classes=int(config.data.num_classes),
            num_anchors=num_anchors,
            feat_channels=h.channels,
            stacked_convs=h.num_convs,
            prior_prob=float(config.loss.get("prior_prob", 0.01)),
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
        )
        super().__init__(config, head)
        self.hp = config.assigner
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)

    def make_priors(self, image_hw: tuple[int, int]) -> Priors:
        return priors_lib.make_anchors(
            priors_lib.feature_shapes(image_hw, self.strides),
            self.strides,
            octave_base_scale=self.anchor.octave_base_scale,
            scales_per_octave=self.anchor.scales_per_octave,
            ratios=tuple(self.anchor.ratios),
        )

    def assign(self, priors: Priors, gt):
        hp = self.hp
        if hp.name == "max_iou":
            fn = lambda g: max_iou.assign(
                priors,
                g,
                pos_iou_thr=hp.pos_iou_thr,
                neg_iou_thr=hp.neg_iou_thr,
                min_pos_iou=hp.min_pos_iou,
                ignore_iof_thr=hp.ignore_iof_thr,
            )
        elif hp.name == "atss":
            return atss_assign.assign_batch(
                priors, gt, topk=hp.topk, ignore_iof_thr=hp.ignore_iof_thr
            )
        else:
            raise ValueError(f"unknown assigner.name {hp.name!r} (max_iou | atss)")
        return jax.vmap(fn)(gt)

    def loss_fn(self, params, batch, rng, det_state, step):
        del rng, step
        images = batch["image"]
        out = self.apply(params, images)
        priors = self.priors_for(images)
        gt = ground_truth_from_batch(batch)
        loss, metrics = self.losses(out, priors, gt, self.assign(priors, gt))
        return loss, (metrics, det_state)

    def losses(self, out, priors, gt, assignment):
        lc = self.loss_cfg
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        loss_cls, num_pos, pos = focal_classification_loss(
            out["cls_logits"], assignment, gt, self.num_classes, lc.focal_alpha, lc.focal_gamma
        )
        anchors = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
        box_t = coders.delta_xywh_encode(anchors, gt_boxes, stds=self.box_stds)
        box_l = smooth_l1_loss(out["box_deltas"], box_t, beta=lc.smooth_l1_beta)
        loss_box = lc.box_weight * jnp.sum(jnp.where(pos[..., None], box_l, 0.0)) / num_pos
        metrics = dict(loss_cls=loss_cls, loss_box=loss_box, num_pos=jnp.sum(pos) / pos.shape[0])
        return loss_cls + loss_box, metrics

    def decode(self, out, priors):
        boxes = coders.delta_xywh_decode(priors.boxes, out["box_deltas"], stds=self.box_stds)
        return boxes, jax.nn.sigmoid(out["cls_logits"]), None


def make(config: Any) -> RetinaNet:
    return RetinaNet(config)

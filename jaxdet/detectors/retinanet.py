"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Head: `RetinaHead` (4 convs of 256, no norm, A = 9 anchors: 3 scales x 3 ratios,
octave base scale 4). Assigner (`config.assigner.name`): 'max_iou' (pos 0.5, neg 0.4,
min_pos 0.0, low-quality matches) or 'atss', ATSS's adaptive selection (the ATSS
paper's "RetinaNet + ATSS" row). Losses as mmdetection's `RetinaHead`: sigmoid focal
(0.25, 2) / num_pos, smooth L1 (beta 0: L1) on delta-xywh / num_pos.
Inference: sigmoid scores, per-level top-1000, score > 0.05, NMS 0.5, 100 dets.

The pieces other methods reuse are module-level functions: `anchors`, `retina_head`,
`max_iou_assign`, `box_loss`, `retina_losses`, `decode_boxes`.
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
from jaxdet.core.types import Assignment, GroundTruth, Priors
from jaxdet.detectors.dense import (
    DenseDetector,
    StepContext,
    check_assigner,
    focal_classification_loss,
)
from jaxdet.losses.smooth_l1 import smooth_l1_loss
from jaxdet.models.heads.retina_head import RetinaHead


def num_anchors(anchor_cfg: Any) -> int:
    """Anchors per location: len(ratios) x scales_per_octave."""
    return len(anchor_cfg.ratios) * int(anchor_cfg.scales_per_octave)


def anchors(anchor_cfg: Any, strides: tuple[int, ...], image_hw: tuple[int, int]) -> Priors:
    """The anchor lattice of `config.anchor` for a padded input of size image_hw (jnp).

    Optional fields (default False): `round_base` rounds the base anchors and
    `torchvision_grid` spaces the anchor centres by (H // h_l, W // w_l) per level, as
    torchvision's `AnchorGenerator` (`priors.make_anchors`)."""
    shapes = priors_lib.feature_shapes(image_hw, strides)
    steps = None
    if anchor_cfg.get("torchvision_grid", False):
        steps = [(image_hw[0] // h, image_hw[1] // w) for h, w in shapes]
    p = priors_lib.make_anchors(
        shapes, strides,
        octave_base_scale=anchor_cfg.octave_base_scale,
        scales_per_octave=anchor_cfg.scales_per_octave, ratios=tuple(anchor_cfg.ratios),
        round_base=bool(anchor_cfg.get("round_base", False)), grid_steps=steps,
    )
    return jax.tree_util.tree_map(jnp.asarray, p)


def retina_head(config: Any, num_anchors: int) -> RetinaHead:
    """RetinaHead from config.model.head, config.loss.prior_prob and the class count."""
    h = config.model.head
    return RetinaHead(
        num_classes=int(config.data.num_classes), num_anchors=num_anchors,
        feat_channels=h.channels, stacked_convs=h.num_convs, norm=h.norm, gn_groups=h.gn_groups,
        prior_prob=float(config.loss.prior_prob), dtype=jnp.dtype(config.model.dtype),
        platform=platform_lib.from_config(config),
    )


def max_iou_assign(priors: Priors, gt: GroundTruth, hp: Any) -> Assignment:
    """Batched max-IoU assignment with `config.assigner`'s thresholds: gt [B, M, ...]."""
    return jax.vmap(
        lambda g: max_iou.assign(
            priors, g, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
            min_pos_iou=hp.min_pos_iou, ignore_iof_thr=hp.ignore_iof_thr,
        )
    )(gt)


def box_loss(box_deltas: jax.Array, priors: Priors, gt: GroundTruth, assignment: Assignment,
             num_pos: jax.Array, loss_cfg: Any, box_stds: tuple[float, ...]) -> jax.Array:
    """box_weight x smooth L1 on delta-xywh over the positives / num_pos.

    box_deltas [B, N, 4]; priors [N, ...]; gt and assignment batched.
    """
    gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
    anchor_boxes = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
    box_t = coders.delta_xywh_encode(anchor_boxes, gt_boxes, stds=box_stds)
    box_l = smooth_l1_loss(box_deltas, box_t, beta=loss_cfg.smooth_l1_beta)
    pos = assignment.positive
    return loss_cfg.box_weight * jnp.sum(jnp.where(pos[..., None], box_l, 0.0)) / num_pos


def retina_losses(outputs: dict, priors: Priors, gt: GroundTruth, assignment: Assignment,
                  num_classes: int, loss_cfg: Any, box_stds: tuple[float, ...]) -> dict:
    """RetinaNet's terms: loss_cls (focal / num_pos), loss_box (`box_loss`), num_pos
    (per image). outputs: 'cls_logits' [B, N, C], 'box_deltas' [B, N, 4]."""
    loss_cls, num_pos, pos = focal_classification_loss(
        outputs["cls_logits"], assignment, gt, num_classes, loss_cfg.focal_alpha,
        loss_cfg.focal_gamma,
    )
    loss_box = box_loss(outputs["box_deltas"], priors, gt, assignment, num_pos, loss_cfg, box_stds)
    return dict(loss_cls=loss_cls, loss_box=loss_box, num_pos=jnp.sum(pos) / pos.shape[0])


def decode_boxes(box_deltas: jax.Array, priors: Priors, box_stds: tuple[float, ...]) -> jax.Array:
    """Delta-xywh regressions [..., N, 4] -> boxes [..., N, 4] (xyxy)."""
    anchor_boxes = jnp.broadcast_to(priors.boxes, box_deltas.shape)
    return coders.delta_xywh_decode(anchor_boxes, box_deltas, stds=box_stds)


class RetinaNet(DenseDetector):
    assigners = ("max_iou", "atss")

    def __init__(self, config: Any):
        self.anchor = config.anchor
        super().__init__(config, retina_head(config, num_anchors(config.anchor)))
        self.hp = config.assigner
        self.assigner = check_assigner(config, self.assigners)
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)

    def priors(self, image_hw, outputs=None):
        return anchors(self.anchor, self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        hp = self.hp
        if self.assigner == "atss":
            return atss_assign.assign_batch(
                priors, gt, topk=hp.topk, ignore_iof_thr=hp.ignore_iof_thr
            )
        return max_iou_assign(priors, gt, hp)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        return retina_losses(outputs, priors, gt, assignment, self.num_classes, self.loss_cfg,
                             self.box_stds)

    def decode(self, outputs, priors):
        boxes = decode_boxes(outputs["box_deltas"], priors, self.box_stds)
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def make(config: Any) -> RetinaNet:
    return RetinaNet(config)

"""HAMBox (Liu et al., "HAMBox: Delving into Online High-quality Anchors Mining for
Detecting Outer Faces", CVPR 2020, arXiv 1912.09231) on a RetinaNet network.

Network and inference are RetinaNet's (`jaxdet.detectors.retinanet`: `RetinaHead`,
sigmoid scores, per-level top-k, NMS); the paper's anchors are one square anchor per
location of size 0.68 x 4 x stride (`anchor.octave_base_scale = 2.72`). Training:
  stage 1   anchors with IoU >= 0.35 are positive, the rest negative, each GT keeps
            its best anchor (`jaxdet.assign.hambox.match`);
  stage 2   the regressions are decoded without gradient and each GT with fewer
            than K = 5 matched anchors gains up to K - n of the negatives whose
            regressed box has IoU >= 0.5 with it (`hambox.compensate`);
  losses    regression-aware focal loss (focal 0.25 / 2, compensated anchors
            weighted by their regressed IoU) over all non-ignored anchors / num_pos,
            smooth L1 (beta 0.11) on delta-xywh over matched + compensated anchors /
            num_pos; num_pos = matched + compensated anchors of the global batch.
`assigner.k = 0` is the paper's baseline: stage 1 alone, plain focal loss.

config.assigner: name 'hambox', pos_iou_thr (T1), k (K), comp_iou_thr (T2),
  count_matched, best_anchor_all_ties, ignore_iof_thr.
config.loss: focal_alpha, focal_gamma, box_weight, smooth_l1_beta, box_stds, prior_prob.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.assign import hambox as ham
from jaxdet.assign import targets
from jaxdet.core.types import Assignment, GroundTruth, Priors
from jaxdet.detectors import retinanet
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner, normalizer
from jaxdet.losses.regression_aware_focal import regression_aware_focal_loss


class HAMBox(DenseDetector):
    """RetinaNet's network and inference; HAMBox's online anchor compensation.

    Assignment: (final Assignment [B, N] with quality = 1 for matched anchors and the
    regressed IoU for compensated ones, compensated [B, N] bool).
    """

    def __init__(self, config: Any):
        self.anchor = config.anchor
        head = retinanet.retina_head(config, retinanet.num_anchors(config.anchor))
        super().__init__(config, head)
        check_assigner(config, ("hambox",))
        self.hp = config.assigner
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)

    def priors(self, image_hw, outputs=None):
        return retinanet.anchors(self.anchor, self.strides, image_hw)

    def match(self, priors: Priors, gt: GroundTruth) -> Assignment:
        """Stage 1 for a batch: gt [B, M, ...] -> Assignment [B, N] (quality 1 on positives)."""
        hp = self.hp
        return jax.vmap(
            lambda g: ham.match(
                priors, g, pos_iou_thr=hp.pos_iou_thr,
                best_anchor_all_ties=hp.best_anchor_all_ties, ignore_iof_thr=hp.ignore_iof_thr,
            )
        )(gt)

    def pred_boxes(self, outputs: dict, priors: Priors) -> jax.Array:
        """Decoded regressions [B, N, 4] of the head outputs, without gradient."""
        deltas = jax.lax.stop_gradient(outputs["box_deltas"])
        return retinanet.decode_boxes(deltas, priors, self.box_stds)

    def assign(self, outputs, priors, gt) -> tuple[Assignment, jax.Array]:
        """Stage 1, then stage 2 from the detached regressions: (final, compensated)."""
        hp = self.hp
        final, comp = jax.vmap(
            lambda a, g, b: ham.compensate(
                a, g, b, k=hp.k, iou_thr=hp.comp_iou_thr, count_matched=hp.count_matched,
                priors=priors,
            )
        )(self.match(priors, gt), gt, self.pred_boxes(outputs, priors))
        return final, comp

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        """Regression-aware focal loss and smooth L1 over matched + compensated anchors."""
        assignment, compensated = assignment
        lc = self.loss_cfg
        pos = assignment.positive
        num_pos = normalizer(pos.astype(jnp.float32))
        cls_t = jax.vmap(
            lambda a, g: targets.classification_targets(a, g.labels, self.num_classes)
        )(assignment, gt)
        weight = jnp.where(pos, assignment.quality, 1.0) * (~assignment.ignored)
        loss_cls = jnp.sum(regression_aware_focal_loss(
            outputs["cls_logits"], cls_t, weight, lc.focal_alpha, lc.focal_gamma)) / num_pos
        box_l = retinanet.box_loss(outputs["box_deltas"], priors, gt, assignment, num_pos, lc,
                                   self.box_stds)
        b = pos.shape[0]
        n_comp = jnp.sum(compensated)
        return dict(
            loss_cls=loss_cls,
            loss_box=box_l,
            num_pos=jnp.sum(pos) / b,
            num_compensated=n_comp / b,
            comp_iou=jnp.sum(jnp.where(compensated, assignment.quality, 0.0))
            / jnp.maximum(n_comp, 1),
        )

    def decode(self, outputs, priors):
        boxes = retinanet.decode_boxes(outputs["box_deltas"], priors, self.box_stds)
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def make(config: Any) -> HAMBox:
    return HAMBox(config)

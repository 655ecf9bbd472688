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
from jaxdet.core import coders
from jaxdet.core.types import Assignment, Priors, ground_truth_from_batch
from jaxdet.detectors.dense import normalizer
from jaxdet.detectors.retinanet import RetinaNet
from jaxdet.losses.regression_aware_focal import regression_aware_focal_loss
from jaxdet.losses.smooth_l1 import smooth_l1_loss


class HAMBox(RetinaNet):
    def assign(self, priors: Priors, gt) -> Assignment:
        """Stage 1 for a batch: gt [B, M, ...] -> Assignment [B, N] (quality 1 on positives)."""
        hp = self.hp
        return jax.vmap(
            lambda g: ham.match(
                priors, g, pos_iou_thr=hp.pos_iou_thr,
                best_anchor_all_ties=hp.best_anchor_all_ties, ignore_iof_thr=hp.ignore_iof_thr,
            )
        )(gt)

    def pred_boxes(self, out, priors: Priors) -> jax.Array:
        """Decoded regressions [B, N, 4] of the head outputs, without gradient."""
        deltas = jax.lax.stop_gradient(out["box_deltas"])
        anchors = jnp.broadcast_to(priors.boxes, deltas.shape)
        return coders.delta_xywh_decode(anchors, deltas, stds=self.box_stds)

    def assign_online(self, out, priors: Priors, gt) -> tuple[Assignment, Assignment, jax.Array]:
        """(stage-1 Assignment, final Assignment, compensated [B, N] bool) for a batch."""
        hp = self.hp
        matched = self.assign(priors, gt)
        final, comp = jax.vmap(
            lambda a, g, b: ham.compensate(
                a, g, b, k=hp.k, iou_thr=hp.comp_iou_thr, count_matched=hp.count_matched,
                priors=priors,
            )
        )(matched, gt, self.pred_boxes(out, priors))
        return matched, final, comp

    def loss_fn(self, params, batch, rng, det_state, step):
        del rng, step
        images = batch["image"]
        out = self.apply(params, images)
        priors = self.priors_for(images)
        gt = ground_truth_from_batch(batch)
        _, assignment, comp = self.assign_online(out, priors, gt)
        loss, metrics = self.hambox_losses(out, priors, gt, assignment, comp)
        return loss, (metrics, det_state)

    def hambox_losses(self, out, priors, gt, assignment, compensated):
        """Loss terms from the head outputs [B, N, ...] and the final assignment."""
        lc = self.loss_cfg
        pos = assignment.gt_index >= 0
        num_pos = normalizer(pos.astype(jnp.float32))
        cls_t = jax.vmap(lambda a, g: targets.classification_targets(a, g.labels,
                                                                     self.num_classes))(
            assignment, gt
        )
        weight = jnp.where(pos, assignment.quality, 1.0) * (assignment.gt_index != -2)
        loss_cls = jnp.sum(regression_aware_focal_loss(
            out["cls_logits"], cls_t, weight, lc.focal_alpha, lc.focal_gamma)) / num_pos
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        anchors = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
        box_t = coders.delta_xywh_encode(anchors, gt_boxes, stds=self.box_stds)
        box_l = jnp.sum(smooth_l1_loss(out["box_deltas"], box_t, beta=lc.smooth_l1_beta), -1)
        loss_box = lc.box_weight * jnp.sum(jnp.where(pos, box_l, 0.0)) / num_pos
        b = pos.shape[0]
        n_comp = jnp.sum(compensated)
        metrics = dict(
            loss_cls=loss_cls,
            loss_box=loss_box,
            num_pos=jnp.sum(pos) / b,
            num_compensated=n_comp / b,
            comp_iou=jnp.sum(jnp.where(compensated, assignment.quality, 0.0))
            / jnp.maximum(n_comp, 1),
        )
        return loss_cls + loss_box, metrics


def make(config: Any) -> HAMBox:
    return HAMBox(config)

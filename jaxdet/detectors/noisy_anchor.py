"""RetinaNet trained from noisy anchors (Li et al., "Learning from Noisy Anchors for
One-stage Object Detection", CVPR 2020, arXiv 1912.05086).

Network, anchors and inference are RetinaNet's (`jaxdet.detectors.retinanet`:
`RetinaHead`, 9 anchors per location, sigmoid scores, NMS 0.5); only training
changes:
  assignment  each GT's candidate bag = its top-N anchors by IoU (paper N = 50),
              everything else background (`jaxdet.assign.noisy_anchor.candidate_bags`);
  soft label  the cleanliness c = alpha * IoU(regressed box, GT) + (1 - alpha) *
              p(GT class), alpha = 0.75, from stop_gradient-ed predictions
              (`noisy_anchor.cleanliness_terms`), the target of the GT class;
  weights     r = (alpha f(loc) + (1 - alpha) f(cls))^gamma, f(x) = 1 / (1 - x),
              gamma = 1, mean 1 over the positives of the global batch
              (`jaxdet.losses.noisy_anchor.reweight_factors`), multiplies the
              classification and the box loss of every positive;
  losses      soft-label focal loss (0.25, 2) over all non-ignored anchors / num_pos,
              RetinaNet's box loss (L1 on delta-xywh) over the positives / num_pos,
              num_pos = the number of bag anchors in the global batch.

config.assigner: name 'noisy_anchor', topk (N), alpha, min_pos_iou, ignore_iof_thr.
config.loss: RetinaNet's fields + reweight_gamma, max_score (clip inside f), soft_label:
  'cleanliness' (default: the paper's soft label c itself) or 'rescaled' (the unofficial
  mmdetection port's labels, c rescaled onto [mean IoU, 1] over the batch's positives;
  `losses.noisy_anchor.rescaled_soft_labels`; the port also uses focal alpha 0.5).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.assign import noisy_anchor as na_assign
from jaxdet.assign import targets
from jaxdet.core import coders
from jaxdet.core.types import Assignment, GroundTruth, Priors
from jaxdet.detectors import retinanet
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner, normalizer
from jaxdet.losses import noisy_anchor as na_loss
from jaxdet.losses.smooth_l1 import smooth_l1_loss
from jaxdet.ops.per_shard import per_shard


class NoisyAnchorRetinaNet(DenseDetector):
    """RetinaNet's network and inference, trained from candidate bags with soft labels.

    Assignment: (Assignment [B, N] with quality = cleanliness, loc [B, N], cls [B, N]).
    """

    def __init__(self, config: Any):
        self.anchor = config.anchor
        head = retinanet.retina_head(config, retinanet.num_anchors(config.anchor))
        super().__init__(config, head)
        check_assigner(config, ("noisy_anchor",))
        if config.loss.soft_label not in ("cleanliness", "rescaled"):
            raise ValueError(f"loss.soft_label={config.loss.soft_label!r}; "
                             "expected 'cleanliness' or 'rescaled'")
        self.hp = config.assigner
        self.loss_cfg = config.loss
        self.box_stds = tuple(config.loss.box_stds)

    def priors(self, image_hw, outputs=None):
        return retinanet.anchors(self.anchor, self.strides, image_hw)

    def candidate_bags(self, priors: Priors, gt: GroundTruth) -> Assignment:
        """Batched candidate bags, prediction-free (quality = anchor IoU); gt [B, M, ...].
        Run per data shard (`per_shard`: the top-k would otherwise gather the batch)."""
        hp = self.hp
        bags = jax.vmap(
            lambda g: na_assign.candidate_bags(
                priors, g, topk=hp.topk, min_pos_iou=hp.min_pos_iou,
                ignore_iof_thr=hp.ignore_iof_thr,
            )
        )
        return per_shard(bags, gt)

    def assign(self, outputs, priors, gt):
        """(Assignment with quality = cleanliness, loc [B, N], cls [B, N]) from the
        stop_gradient-ed head outputs ([B, N, ...])."""
        bags = self.candidate_bags(priors, gt)
        deltas = jax.lax.stop_gradient(outputs["box_deltas"])
        pred_boxes = retinanet.decode_boxes(deltas, priors, self.box_stds)
        probs = jax.nn.sigmoid(jax.lax.stop_gradient(outputs["cls_logits"]))
        loc, cls = jax.vmap(na_assign.cleanliness_terms)(bags.gt_index, gt, pred_boxes, probs)
        quality = na_assign.cleanliness(loc, cls, self.hp.alpha)
        if self.loss_cfg.soft_label == "rescaled":
            quality = na_loss.rescaled_soft_labels(loc, cls, bags.gt_index >= 0,
                                                   alpha=self.hp.alpha)
        return Assignment(gt_index=bags.gt_index, quality=quality), loc, cls

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        """Soft-label focal loss and box loss, both re-weighted by the cleanliness terms."""
        assignment, loc, cls = assignment
        lc = self.loss_cfg
        pos = assignment.positive
        num_pos = normalizer(pos.astype(jnp.float32))
        r = na_loss.reweight_factors(
            loc, cls, pos, alpha=self.hp.alpha, gamma=lc.reweight_gamma, max_score=lc.max_score
        )
        gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
        cls_t = targets.classification_targets(assignment, gt.labels, self.num_classes, soft=True)
        cls_w = targets.sample_weights(assignment)["cls_weight"] * r  # ignored: no loss
        soft = jnp.where(pos, assignment.quality, 0.0)
        cls_l = na_loss.soft_focal_loss(outputs["cls_logits"], cls_t, lc.focal_alpha,
                                        lc.focal_gamma)
        loss_cls = jnp.sum(cls_l * cls_w[..., None]) / num_pos
        anchor_boxes = jnp.broadcast_to(priors.boxes, gt_boxes.shape)
        box_t = coders.delta_xywh_encode(anchor_boxes, gt_boxes, stds=self.box_stds)
        box_l = jnp.sum(smooth_l1_loss(outputs["box_deltas"], box_t, beta=lc.smooth_l1_beta), -1)
        loss_box = lc.box_weight * jnp.sum(jnp.where(pos, box_l * r, 0.0)) / num_pos
        n_pos = jnp.maximum(jnp.sum(pos), 1)
        return dict(
            loss_cls=loss_cls,
            loss_box=loss_box,
            num_pos=jnp.sum(pos) / pos.shape[0],
            soft_label=jnp.sum(soft) / n_pos,
            loc_iou=jnp.sum(loc) / n_pos,
            r_max=jnp.max(jnp.where(pos, r, 0.0)),
        )

    def decode(self, outputs, priors):
        boxes = retinanet.decode_boxes(outputs["box_deltas"], priors, self.box_stds)
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]), None


def make(config: Any) -> NoisyAnchorRetinaNet:
    return NoisyAnchorRetinaNet(config)

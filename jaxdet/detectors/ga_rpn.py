"""GA-RPN (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019, arXiv
1901.03278), as mmdetection's `GARPNHead`: the RPN of `rpn.py` with guided anchors.

Head: `GARPNHead` (3x3 conv, loc / shape branches, FeatureAdaption, 1x1 objectness and
deltas; one guided anchor per location). Anchors as GA-RetinaNet (`ga_retinanet.py`):
approximate anchors `config.anchor` (mmdetection: 8 x 2^(i/3) x stride, ratios
0.5 / 1 / 2), squares `ga.square_scale` x stride, guided anchors = squares decoded by the
detached shape prediction with `ga.anchor_stds` (0.07, 0.07, 0.14, 0.14).
Training: loc / shape terms of `ga_retinanet.guidance_losses` (approx assigner 0.7 / 0.3 /
0.3, 256 sampled); the RPN terms of `rpn.rpn_losses` on the guided anchors (max-IoU
0.7 / 0.3 / 0.3 with low-quality matches, 256 sampled at most half positive, sigmoid
BCE, smooth L1 with `rpn.smooth_l1_beta` (1.0) on delta-xywh with `rpn.box_stds`
(0.07, 0.07, 0.11, 0.11)).
Proposals: `rpn.proposals` on each image's guided anchors, locations with
sigmoid(loc) < ga.loc_filter_thr (0.01) marked invalid (mmdetection's location filter).
The detections are the test proposals (class 0, score = objectness), evaluated by proposal
recall (`config.test.metric = 'proposal'`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.core.types import Detections, Priors
from jaxdet.detectors import ga_retinanet as gar
from jaxdet.detectors import retinanet, rpn
from jaxdet.detectors.dense import DenseDetector, StepContext
from jaxdet.models.heads.ga_head import GARPNHead


def ga_rpn_head(config: Any) -> GARPNHead:
    ga = config.ga
    return GARPNHead(feat_channels=int(config.model.fpn.channels),
                     deform_groups=int(ga.deform_groups),
                     feature_adaption=bool(ga.feature_adaption),
                     dtype=jnp.dtype(config.model.dtype),
                     platform=platform_lib.from_config(config),
                     sampling_backend=config.model.sampling_backend)


class GARPN(DenseDetector):
    """GA-RPN alone: trains the guided first stage; its detections are the proposals."""

    def __init__(self, config: Any):
        super().__init__(config, ga_rpn_head(config))
        self.hp, self.ga = config.rpn, config.ga

    def priors(self, image_hw, outputs):
        """{'guided': per-image guided anchors [B, N], 'squares', 'approxs'}."""
        squares = gar.square_anchors(self.ga, self.strides, image_hw)
        return {"guided": gar.guided_priors(squares, outputs["shape_pred"],
                                            tuple(self.ga.anchor_stds), self.strides),
                "squares": squares,
                "approxs": retinanet.anchors(self.config.anchor, self.strides, image_hw)}

    def assign(self, outputs, priors, gt):
        hp = self.hp
        return gar.assign_guided(priors["guided"], gt, pos_iou_thr=hp.pos_iou_thr,
                                 neg_iou_thr=hp.neg_iou_thr, min_pos_iou=hp.min_pos_iou,
                                 match_low_quality=True, ignore_iof_thr=hp.ignore_iof_thr)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        rng = None if ctx is None else ctx.rng
        terms = rpn.rpn_losses(outputs, priors["guided"], gt, assignment, rng, self.hp)
        ga_rng = None if rng is None else jax.random.fold_in(rng, 1)
        terms.update(gar.guidance_losses(outputs, priors, gt, ga_rng, self.ga, self.strides,
                                         float(self.config.anchor.octave_base_scale)))
        return terms

    def proposals(self, outputs: dict, guided: Priors, image_hw: jax.Array, *, train: bool
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`rpn.proposals` of the guided anchors [B, N]: (boxes [B, K, 4], scores [B, K],
        valid [B, K]); locations under the location filter give none."""
        keep = gar.loc_keep(outputs, self.ga.loc_filter_thr)
        return rpn.proposals(outputs, guided, image_hw, self.hp, train=train, valid=keep)

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """Detections [B, K, ...]: the proposals, class 0, score = sigmoid(objectness)."""
        outputs = self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]), outputs)["guided"]
        boxes, scores, valid = self.proposals(outputs, priors, image_hw, train=False)
        return Detections(boxes=boxes, scores=jnp.where(valid, scores, 0.0),
                          classes=jnp.zeros(scores.shape, jnp.int32), valid=valid)


def make(config: Any) -> GARPN:
    return GARPN(config)

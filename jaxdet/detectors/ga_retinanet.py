"""GA-RetinaNet (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019,
arXiv 1901.03278), as mmdetection's `GARetinaHead` / `GuidedAnchorHead`.

Head: `GARetinaHead` (RetinaNet towers, loc and shape branches, FeatureAdaption, one
guided anchor per location). Anchors:
  approximate anchors: `config.anchor` (RetinaNet's: octave base scale 4, 3 scales x 3
    ratios), only for the shape targets;
  square anchors: one per location of size `ga.square_scale` x stride;
  guided anchors (the priors of the cls / reg branches): the squares decoded by the
    DETACHED shape prediction (delta-xywh with dx = dy = 0, stds `ga.anchor_stds`, dw/dh
    clamped at |log 1e-6|, as mmdetection's `wh_ratio_clip=1e-6`).
Targets and assigners:
  loc:   `ga_targets.loc_targets` (centre 0.2 / ignore 0.5 regions, negatives 0.1);
  shape: `ga_targets.shape_targets` (`approx_max_iou` 0.5 / 0.4 / 0.4, 256 sampled at
         most half positive);
  cls / reg: `max_iou` of the guided anchors (0.5 / 0.5, min_pos 0.0).
Losses (mmdetection's, summed):
  loss_loc:   ga.loc_weight x focal(0.25, 2) x loc weights / (images x locations / 200);
  loss_shape: ga.shape_weight x bounded IoU (beta 0.2) of the decoded (undetached) shape
              against the assigned GT, over the sampled positives / the sampled count;
  loss_cls:   focal(0.25, 2) / num_pos; loss_box: SmoothL1(beta 0.04) on delta-xywh
              (stds 1) against the guided anchors / num_pos (`retinanet.retina_losses`).
The loc focal loss takes target 1 on the positive region (the paper's objective,
"the probability that an object centre is at this location").
Inference: sigmoid scores, zeroed where sigmoid(loc) < ga.loc_filter_thr (0.01; a mask,
mmdetection's location filter), boxes decoded against the guided anchors, then the
dense post-processing (per-level top-1000, score > 0.05, NMS 0.5, 100 detections).

`priors` returns {'guided', 'squares', 'approxs'}. Module-level functions
(`square_anchors`, `guided_priors`, `guidance_losses`, `assign_guided`, `loc_keep`)
are what GA-RPN (`ga_rpn.py`) reuses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import ga_targets, max_iou
from jaxdet.core import coders
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import Assignment, Detections, GroundTruth, Priors
from jaxdet.detectors import retinanet
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner, normalizer
from jaxdet.losses.bounded_iou import bounded_iou_loss
from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.models.heads.ga_head import GARetinaHead
from jaxdet.ops.per_shard import per_shard
from jaxdet.ops.postprocess import dense_postprocess

SHAPE_RATIO_CLIP = abs(math.log(1e-6))  # mmdetection's wh_ratio_clip=1e-6 of the shapes


def square_anchors(ga: Any, strides: tuple[int, ...], image_hw: tuple[int, int]) -> Priors:
    """One square anchor per location, side ga.square_scale x stride (jnp leaves)."""
    p = priors_lib.make_anchors(priors_lib.feature_shapes(image_hw, strides), strides,
                                octave_base_scale=ga.square_scale, scales_per_octave=1,
                                ratios=(1.0,))
    return jax.tree_util.tree_map(jnp.asarray, p)


def decode_shape(squares: jax.Array, shape_pred: jax.Array, stds: tuple[float, ...]
                 ) -> jax.Array:
    """Squares [..., N, 4] and (dw, dh) [..., N, 2] -> anchors [..., N, 4] (xyxy)."""
    deltas = jnp.concatenate([jnp.zeros_like(shape_pred), shape_pred], axis=-1)
    squares = jnp.broadcast_to(squares, deltas.shape)
    return coders.delta_xywh_decode(squares, deltas, stds=stds, max_ratio=SHAPE_RATIO_CLIP)


def guided_priors(squares: Priors, shape_pred: jax.Array, stds: tuple[float, ...],
                  strides: tuple[int, ...]) -> Priors:
    """The guided anchors of a batch: Priors with boxes [B, N, 4], centres [B, N, 2]
    (strides / levels [N]) from the detached shape predictions [B, N, 2]."""
    boxes = decode_shape(squares.boxes, jax.lax.stop_gradient(shape_pred), stds)
    return Priors.from_boxes(boxes, strides, squares.level_sizes)


def one_image(priors: Priors, boxes: jax.Array, centers: jax.Array) -> Priors:
    """The Priors of one image of a batched `guided_priors`: boxes [N, 4], centres [N, 2]."""
    return dataclasses.replace(priors, boxes=boxes, centers=centers)


def assign_guided(priors: Priors, gt: GroundTruth, **hp: Any) -> Assignment:
    """Batched `max_iou.assign` (dense) of per-image guided anchors [B, N, 4] -> [B, N]."""
    return jax.vmap(lambda b, c, g: max_iou.assign(one_image(priors, b, c), g, method="dense",
                                                   **hp))(priors.boxes, priors.centers, gt)


def loc_keep(outputs: dict, thr: float) -> jax.Array:
    """[..., N] bool: locations kept at test time, sigmoid(loc) >= thr."""
    return jax.nn.sigmoid(outputs["loc_logits"]) >= thr


def guidance_losses(outputs: dict, priors: dict, gt: GroundTruth, rng: jax.Array | None,
                    ga: Any, strides: tuple[int, ...], approx_scale: float
                    ) -> dict[str, jax.Array]:
    """loss_loc and loss_shape of a batch (module docstring).

    outputs: 'loc_logits' [B, N], 'shape_pred' [B, N, 2]; priors: 'squares' (N) and
    'approxs' (N x A) lattices; gt batched; rng the step's key (split per image); ga the
    `config.ga` fields; approx_scale the approximate anchors' octave base scale."""
    squares, approxs = priors["squares"], priors["approxs"]
    b = outputs["loc_logits"].shape[0]
    shapes = squares.feature_shapes
    loc_t, loc_w = jax.vmap(lambda g: ga_targets.loc_targets(
        g, shapes, strides, octave_base_scale=approx_scale, center_ratio=ga.center_ratio,
        ignore_ratio=ga.ignore_ratio, neg_weight=ga.neg_weight))(gt)
    focal = sigmoid_focal_loss(outputs["loc_logits"][..., None], loc_t[..., None],
                               ga.loc_alpha, ga.loc_gamma)[..., 0]
    loss_loc = jnp.sum(focal * loc_w) / ga_targets.loc_normalizer(b, shapes)

    keys = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng, b)
    target = jax.vmap(lambda k, g: ga_targets.shape_targets(
        squares, approxs, g, k, pos_iou_thr=ga.pos_iou_thr, neg_iou_thr=ga.neg_iou_thr,
        min_pos_iou=ga.min_pos_iou, ignore_iof_thr=ga.ignore_iof_thr,
        num_samples=int(ga.num_samples), pos_fraction=float(ga.pos_fraction)))
    gt_boxes, weights, avg = per_shard(target, keys, gt)  # the sampler's top-k: per shard
    pred = decode_shape(squares.boxes, outputs["shape_pred"], tuple(ga.anchor_stds))
    per = jnp.sum(bounded_iou_loss(pred, gt_boxes, beta=ga.shape_beta), axis=-1)
    loss_shape = jnp.sum(jnp.where(weights > 0, per, 0.0)) / normalizer(avg)
    return dict(loss_loc=ga.loc_weight * loss_loc, loss_shape=ga.shape_weight * loss_shape,
                shape_num_pos=jnp.sum(weights) / b)


def ga_retina_head(config: Any) -> GARetinaHead:
    h, ga = config.model.head, config.ga
    return GARetinaHead(
        num_classes=int(config.data.num_classes), feat_channels=h.channels,
        stacked_convs=h.num_convs, deform_groups=int(ga.deform_groups),
        feature_adaption=bool(ga.feature_adaption), prior_prob=float(config.loss.prior_prob),
        norm=h.norm, gn_groups=h.gn_groups, dtype=jnp.dtype(config.model.dtype),
        platform=platform_lib.from_config(config),
        sampling_backend=config.model.sampling_backend)


class GARetinaNet(DenseDetector):
    def __init__(self, config: Any):
        super().__init__(config, ga_retina_head(config))
        check_assigner(config, ("max_iou",))
        self.ga, self.hp, self.loss_cfg = config.ga, config.assigner, config.loss
        self.box_stds = tuple(config.loss.box_stds)

    def squares(self, image_hw: tuple[int, int]) -> Priors:
        return square_anchors(self.ga, self.strides, image_hw)

    def approxs(self, image_hw: tuple[int, int]) -> Priors:
        return retinanet.anchors(self.config.anchor, self.strides, image_hw)

    def priors(self, image_hw, outputs):
        """{'guided': per-image guided anchors [B, N], 'squares', 'approxs'}."""
        squares = self.squares(image_hw)
        return {"guided": guided_priors(squares, outputs["shape_pred"],
                                        tuple(self.ga.anchor_stds), self.strides),
                "squares": squares, "approxs": self.approxs(image_hw)}

    def assign(self, outputs, priors, gt):
        hp = self.hp
        return assign_guided(priors["guided"], gt, pos_iou_thr=hp.pos_iou_thr,
                             neg_iou_thr=hp.neg_iou_thr, min_pos_iou=hp.min_pos_iou,
                             ignore_iof_thr=hp.ignore_iof_thr)

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        terms = retinanet.retina_losses(outputs, priors["guided"], gt, assignment,
                                        self.num_classes, self.loss_cfg, self.box_stds)
        terms.update(guidance_losses(outputs, priors, gt, None if ctx is None else ctx.rng,
                                     self.ga, self.strides,
                                     float(self.config.anchor.octave_base_scale)))
        return terms

    def decode(self, outputs, priors):
        boxes = retinanet.decode_boxes(outputs["box_deltas"], priors, self.box_stds)
        keep = loc_keep(outputs, self.ga.loc_filter_thr)
        return boxes, jax.nn.sigmoid(outputs["cls_logits"]) * keep[:, None], None

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """As `DenseDetector.predict`, with each image's own guided anchors."""
        outputs = self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]), outputs)["guided"]
        t = self.config.test

        def one(out, boxes, centers, hw):
            b, s, f = self.decode(out, one_image(priors, boxes, centers))
            return dense_postprocess(b, s, priors.level_sizes, hw, score_thr=t.score_thr,
                                     pre_nms_topk=t.pre_nms_topk, iou_threshold=t.nms_iou,
                                     max_det=t.max_det, score_factors=f)

        return jax.vmap(one)(outputs, priors.boxes, priors.centers, image_hw)


def make(config: Any) -> GARetinaNet:
    return GARetinaNet(config)

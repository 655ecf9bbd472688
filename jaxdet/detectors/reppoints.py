"""RepPoints (Yang et al., "RepPoints: Point Set Representation for Object Detection",
ICCV 2019, arXiv 1904.11490).

Head: `RepPointsHead` (GN towers, 9 init points from the location, DeformConv
classification and refinement). Priors: one point per location at offset 0
((j * stride, i * stride), mmdetection's `MlvlPointGenerator(offset=0)`).
Pseudo-boxes: `config.reppoints.transform` ('moment' | 'minmax' | 'partial_minmax',
`jaxdet.losses.reppoints.points_to_boxes`) of the points, times the stride, plus the
location.
Assigners: init stage `jaxdet.assign.point_assigner` (scale 4, pos_num 1), or with
`assigner.name='max_iou'` max-IoU (0.5 / 0.4, min_pos_iou 0) of the squares of side
point_base_scale x stride at the locations (mmdetection's `centers_to_bboxes`, its
box-anchor baseline); refine stage `jaxdet.assign.max_iou` (0.5 / 0.4, min_pos_iou 0) of
the pseudo-boxes of the (detached) init points.
Box representation (`reppoints.use_grid_points`, with transform 'minmax': the paper's
bounding-box baseline in the same network, mmdetection's `reppoints-bbox_*_grid`
configs): the head regresses boxes and its point sets are their 3x3 grids
(`RepPointsHead`); everything else is unchanged.
Losses as mmdetection's `RepPointsHead.loss_by_feat` (num_pos of a stage: the sum over the
images of max(the image's positives, 1), mmdetection's avg_factor):
  cls:        sigmoid focal (0.25, 2) with the refine assignment / refine num_pos
  pts_init:   0.5 x SmoothL1(0.11) of init pseudo-boxes / (4 x stride) / init num_pos
  pts_refine: 1.0 x SmoothL1(0.11) of refined pseudo-boxes / (4 x stride) / refine num_pos
Inference: sigmoid scores, refined pseudo-boxes, per-level top-1000, score > 0.05,
NMS 0.5, 100 detections.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import max_iou, point_assigner, targets
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import Assignment, GroundTruth, Priors
from jaxdet.detectors.dense import (
    DenseDetector,
    StepContext,
    check_assigner,
    focal_classification_loss,
    per_image_normalizer,
)
from jaxdet.losses import reppoints as rp_loss
from jaxdet.models.heads.reppoints_head import RepPointsHead
from jaxdet.ops.per_shard import per_shard


def points(strides: tuple[int, ...], image_hw: tuple[int, int]) -> Priors:
    """One point per feature-map location at (j * stride, i * stride) (offset 0), as jnp."""
    p = priors_lib.make_points(priors_lib.feature_shapes(image_hw, strides), strides, offset=0.0)
    return jax.tree_util.tree_map(jnp.asarray, p)


def pseudo_boxes(pts: jax.Array, priors: Priors, transform: str, moment_transfer: jax.Array,
                 moment_mul: float) -> jax.Array:
    """Pseudo-boxes in pixels of point sets [..., N, 2K] ((y, x) in strides around each
    prior): `points_to_boxes` x stride + the prior's (x, y, x, y). -> [..., N, 4]."""
    boxes = rp_loss.points_to_boxes(pts, transform, moment_transfer, moment_mul)
    ctr = jnp.concatenate([priors.centers, priors.centers], axis=-1)
    return boxes * priors.strides[:, None] + ctr


def point_stage_loss(pred_boxes: jax.Array, priors: Priors, gt: GroundTruth,
                     assignment: Assignment, point_base_scale: float, beta: float
                     ) -> tuple[jax.Array, jax.Array]:
    """(sum of `point_loss` over the positives / num_pos, num_pos) of one stage, num_pos
    the sum over the images of max(positives, 1) (`per_image_normalizer`, mmdetection's
    avg_factor). pred_boxes [B, N, 4] pixels; assignment, gt batched."""
    gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
    pos = assignment.positive
    per = rp_loss.point_loss(pred_boxes, gt_boxes, point_base_scale * priors.strides, beta)
    num_pos = per_image_normalizer(pos)
    return jnp.sum(jnp.where(pos, per, 0.0)) / num_pos, num_pos


class RepPoints(DenseDetector):
    def __init__(self, config: Any):
        h = config.model.head
        rp = config.reppoints
        head = RepPointsHead(
            num_classes=int(config.data.num_classes),
            num_points=rp.num_points,
            feat_channels=h.channels,
            point_feat_channels=h.channels,
            stacked_convs=h.num_convs,
            norm=h.norm,
            gn_groups=h.gn_groups,
            gradient_mul=rp.gradient_mul,
            dtype=jnp.dtype(config.model.dtype),
            platform=platform_lib.from_config(config),
            sampling_backend=config.model.sampling_backend,
            use_grid_points=bool(rp.get("use_grid_points", False)),
            point_base_scale=float(rp.point_base_scale),
        )
        super().__init__(config, head)
        self.init_assigner = check_assigner(config, ("point", "max_iou"))
        if rp.transform not in rp_loss.TRANSFORMS:
            raise ValueError(f"reppoints.transform={rp.transform!r}; one of {rp_loss.TRANSFORMS}")
        self.rp = rp
        self.hp = config.assigner
        self.loss_cfg = config.loss

    def boxes(self, outputs: dict, key: str, priors: Priors) -> jax.Array:
        """Pseudo-boxes [..., N, 4] of outputs[key] ('pts_init' | 'pts_refine')."""
        moment = outputs["moment_transfer"]
        if moment.ndim == 2:  # batched outputs: the same parameter on every row
            moment = moment[0]
        return pseudo_boxes(outputs[key], priors, self.rp.transform, moment, self.rp.moment_mul)

    def priors(self, image_hw, outputs=None):
        return points(self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        """{'init': point (or max-IoU of the base squares) assignment, 'refine': max-IoU
        of the init pseudo-boxes}, [B, N]."""
        hp = self.hp

        def by_iou(boxes, g):
            p = dataclasses.replace(priors, boxes=boxes, feature_shapes=None)
            return max_iou.assign(
                p, g, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
                min_pos_iou=hp.min_pos_iou, ignore_iof_thr=hp.ignore_iof_thr, method="dense")

        if self.init_assigner == "max_iou":
            half = 0.5 * self.rp.point_base_scale * priors.strides[:, None]
            squares = jnp.concatenate([priors.centers - half, priors.centers + half], -1)
            init = jax.vmap(lambda g: by_iou(squares, g))(gt)
        else:
            init = per_shard(jax.vmap(lambda g: point_assigner.assign(  # top-k: per shard
                priors, g, scale=hp.scale, pos_num=hp.pos_num)), gt)
        init_boxes = jax.lax.stop_gradient(self.boxes(outputs, "pts_init", priors))
        return {"init": init, "refine": jax.vmap(by_iou)(init_boxes, gt)}

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        lc, rp = self.loss_cfg, self.rp
        refine = assignment["refine"]
        loss_cls, _, _ = focal_classification_loss(
            outputs["cls_logits"], refine, gt, self.num_classes, lc.focal_alpha, lc.focal_gamma,
            num_pos=per_image_normalizer(refine.positive))
        stage = lambda key, a: point_stage_loss(
            self.boxes(outputs, key, priors), priors, gt, a, rp.point_base_scale,
            lc.smooth_l1_beta)
        loss_init, _ = stage("pts_init", assignment["init"])
        loss_refine, _ = stage("pts_refine", refine)
        b = refine.gt_index.shape[0]
        return dict(loss_cls=loss_cls, loss_pts_init=lc.init_weight * loss_init,
                    loss_pts_refine=lc.refine_weight * loss_refine,
                    num_pos=jnp.sum(refine.positive) / b,
                    num_pos_init=jnp.sum(assignment["init"].positive) / b)

    def decode(self, outputs, priors):
        return (self.boxes(outputs, "pts_refine", priors),
                jax.nn.sigmoid(outputs["cls_logits"]), None)


def make(config: Any) -> RepPoints:
    return RepPoints(config)

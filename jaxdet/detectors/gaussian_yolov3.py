"""Gaussian YOLOv3 (Choi et al., "Gaussian YOLOv3: An Accurate and Fast Object Detector
Using Localization Uncertainty for Autonomous Driving", ICCV 2019).

YOLOv3 (`jaxdet.detectors.yolov3`: network, anchors, assignment, objectness and class
losses, inference) whose head predicts, per anchor, 8 + 1 + C outputs: a mean and a
standard deviation for each of tx, ty, tw, th (darknet's order mu_x, sigma_x, mu_y,
sigma_y, mu_w, sigma_w, mu_h, sigma_h), sigmoid on mu_x, mu_y and on every sigma.
Localisation loss (`jaxdet.losses.gaussian_yolo`, darknet's `delta_gaussian_yolo_box`):
on the positives, the sum over the four coordinates of

    (2 - w_gt * h_gt) / 2 * -log(N(t; mu, sigma) + 1e-9)

(w, h normalised by the input size; targets t from `coders.yolo_encode`, the tx, ty
targets being the offsets in the cell), summed over the batch and divided like
YOLOv3's terms (`loss.images_per_sum`), weight `loss.box_weight` (1). The code adds
`loss.sigma_const` (0.3) to sigma in the density's normaliser; 0 gives the paper's
formula. Objectness and class BCE as YOLOv3.
Inference: YOLOv3's thresholds (objectness >= conf_thr, class > score_thr, top 1000),
then score = objectness x class x (1 - mean of the four sigmas) before the NMS
(`test.use_uncertainty`; False scores as YOLOv3; darknet instead thresholds the
product); the detections carry the four sigmas as `box_std` (in the units of tx, ty,
tw, th).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.detectors import yolov3
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner
from jaxdet.losses.gaussian_yolo import box_scale, gaussian_nll
from jaxdet.losses.yolo import yolov3_terms
from jaxdet.ops.postprocess import dense_postprocess


def split_gaussian(box: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Raw [..., 8] outputs -> (means [..., 4] (sigmoid on x, y), sigmas [..., 4] in (0, 1))."""
    mu = box[..., 0::2]
    mu = jnp.concatenate([jax.nn.sigmoid(mu[..., :2]), mu[..., 2:]], axis=-1)
    return mu, jax.nn.sigmoid(box[..., 1::2])


def raw_means(box: jax.Array) -> jax.Array:
    """Raw [..., 8] -> the means before any sigmoid [..., 4] (YOLOv3's raw (tx, ty, tw, th))."""
    return box[..., 0::2]


class GaussianYOLOv3(DenseDetector):
    def __init__(self, config: Any):
        backbone, neck, head = yolov3.network(config, box_dims=8)
        super().__init__(config, head, backbone_neck=(backbone, neck))
        check_assigner(config, ("grid", "darknet"))

    def init(self, rng, image_hw):
        return yolov3.init_params(self.net, rng, image_hw), self.init_state()

    def trainable_mask(self, params):
        return yolov3.trainable_mask(params, self.config.model.backbone.norm)

    def priors(self, image_hw, outputs=None):
        return yolov3.anchors(self.config.anchor, self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        return yolov3.grid_assign(self.config, priors, gt, raw_means(outputs["box"]))

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        lc = self.config.loss
        box_t, cls_t, gt_boxes = yolov3.yolo_targets(priors, gt, assignment, self.num_classes)
        pos, neg = assignment.positive, assignment.negative
        t = yolov3_terms(raw_means(outputs["box"]), outputs["obj_logits"],
                         outputs["cls_logits"], box_t, cls_t, pos, neg)
        mu, sigma = split_gaussian(outputs["box"])
        nll = gaussian_nll(mu, sigma, box_t, sigma_const=lc.sigma_const)  # [B, N, 4]
        image_hw = tuple(self.config.data.image_size)
        scale = 0.5 * box_scale(gt_boxes, image_hw)
        box = jnp.where(pos, jnp.sum(nll, axis=-1) * scale, 0.0)
        norm = yolov3.image_groups(pos.shape[0], lc)
        return dict(
            loss_cls=yolov3.LOSS_WEIGHTS["loss_cls"] * jnp.sum(t["cls"]) / norm,
            loss_conf=yolov3.LOSS_WEIGHTS["loss_conf"] * jnp.sum(t["conf"]) / norm,
            loss_box=lc.box_weight * jnp.sum(box) / norm,
            num_pos=jnp.sum(pos) / pos.shape[0],
            mean_sigma=jnp.sum(jnp.where(pos[..., None], sigma, 0.0))
            / jnp.maximum(4.0 * jnp.sum(pos), 1.0),
        )

    def level_sizes(self, priors):
        return (priors.num_priors,)

    def decode(self, outputs, priors):
        _, sigma = split_gaussian(outputs["box"])
        boxes = yolov3.decode_boxes(raw_means(outputs["box"]), priors)
        obj = jax.nn.sigmoid(outputs["obj_logits"])
        keep = obj >= self.config.test.conf_thr
        scores = jax.nn.sigmoid(outputs["cls_logits"]) * keep[:, None]
        if self.config.test.use_uncertainty:
            obj = obj * (1.0 - jnp.mean(sigma, axis=-1))
        return boxes, scores, obj

    def predict(self, params, images, image_hw):
        """As the template's, with the four sigmas of each detection as `box_std`."""
        outputs = self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]), outputs)
        t = self.config.test

        def one(out, hw):
            boxes, scores, factors = self.decode(out, priors)
            dets, std = dense_postprocess(
                boxes, scores, self.level_sizes(priors), hw, score_thr=t.score_thr,
                pre_nms_topk=t.pre_nms_topk, iou_threshold=t.nms_iou, max_det=t.max_det,
                score_factors=factors, extra=split_gaussian(out["box"])[1])
            return dets.replace(box_std=std)

        return jax.vmap(one)(outputs, image_hw)


def make(config: Any) -> GaussianYOLOv3:
    return GaussianYOLOv3(config)

"""YOLOv3 (Redmon & Farhadi, "YOLOv3: An Incremental Improvement", arXiv 2018).

As mmdetection 3.x's `YOLOV3` with `configs/yolo/yolov3_d53_8xb8-*-273e_coco.py`:
Network: `Darknet` (-53, or narrow) -> `YOLOV3Neck` -> `YOLOV3Head` (3 anchors per
scale, 5 + C outputs per anchor); every level list in stride order (8, 16, 32).
Priors: `priors.make_yolo_anchors` (COCO: (10, 13) ... (373, 326)).
Assigner: `yolo_grid.assign` (mmdetection's `GridAssigner`: 0.5 / 0.5 / 0) or, with
`assigner.name='darknet'`, `yolo_grid.assign_darknet` (best shape-IoU anchor of nine,
decoded predictions with IoU > ignore_thr ignored).
Targets: `coders.yolo_encode` of the matched GT (mmdetection's `YOLOBBoxCoder`).
Losses (`jaxdet.losses.yolo`), each summed as mmdetection's reduction 'sum', with
weights cls 1, conf 1, xy 2, wh 2; the sums are divided by
B / `loss.images_per_sum` (mmdetection sums over each GPU's 8 images and averages the
GPUs' gradients: images_per_sum 8 is that loss for any global batch).
Inference (mmdetection's `predict_by_feat`): objectness >= conf_thr (0.005), class
probability > score_thr (0.05), the 1000 best (anchor, class) pairs of all levels,
score = class x objectness, NMS 0.45, 100 detections. Unlike mmdetection the boxes
are clipped to the image (`dense_postprocess`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import targets, yolo_grid
from jaxdet.core import coders
from jaxdet.core import priors as priors_lib
from jaxdet.core.types import Priors
from jaxdet.detectors.dense import DenseDetector, StepContext, check_assigner
from jaxdet.losses.yolo import yolov3_terms
from jaxdet.models import freeze
from jaxdet.models.backbones.darknet import Darknet
from jaxdet.models.heads.yolo_head import YOLOV3Head
from jaxdet.models.necks.yolo_neck import YOLOV3Neck

LOSS_WEIGHTS = dict(loss_cls=1.0, loss_conf=1.0, loss_xy=2.0, loss_wh=2.0)


def network(config: Any, box_dims: int) -> tuple[Any, Any, Any]:
    """(Darknet, YOLOV3Neck, YOLOV3Head) of `config.model` with `box_dims` box outputs."""
    m = config.model
    kw = dict(norm=m.backbone.norm, gn_groups=m.backbone.gn_groups,
              dtype=jnp.dtype(m.dtype), platform=platform_lib.from_config(config))
    backbone = Darknet(width=m.backbone.width, blocks=tuple(m.backbone.blocks), **kw)
    neck = YOLOV3Neck(out_channels=tuple(m.neck.channels), **kw)
    head = YOLOV3Head(num_classes=int(config.data.num_classes),
                      strides=tuple(int(s) for s in m.strides),
                      feat_channels=tuple(m.head.channels),
                      num_anchors=len(config.anchor.base_sizes[0]), box_dims=box_dims, **kw)
    return backbone, neck, head


def anchors(anchor_cfg: Any, strides: tuple[int, ...], image_hw: tuple[int, int]) -> Priors:
    """YOLO anchors (`anchor_cfg.base_sizes`, (w, h) per level) as jnp."""
    shapes = priors_lib.feature_shapes(image_hw, strides)
    base = tuple(tuple(tuple(float(v) for v in wh) for wh in lvl)
                 for lvl in anchor_cfg.base_sizes)
    p = priors_lib.make_yolo_anchors(shapes, strides, base)
    return jax.tree_util.tree_map(jnp.asarray, p)


def decode_boxes(box_xywh: jax.Array, priors: Priors) -> jax.Array:
    """Raw (tx, ty, tw, th) [..., N, 4] -> xyxy boxes [..., N, 4] (sigmoid on tx, ty)."""
    pred = jnp.concatenate([jax.nn.sigmoid(box_xywh[..., :2]), box_xywh[..., 2:4]], axis=-1)
    return coders.yolo_decode(priors.boxes, pred, priors.strides)


def grid_assign(config: Any, priors: Priors, gt: Any, pred_xywh: jax.Array) -> Any:
    """Batched assignment [B, N] by `config.assigner` ('grid' or 'darknet'); pred_xywh
    [B, N, 4] raw box means (read, detached, only by 'darknet')."""
    hp = config.assigner
    if hp.name == "darknet":
        pred = jax.lax.stop_gradient(decode_boxes(pred_xywh, priors))
        return jax.vmap(lambda g, p: yolo_grid.assign_darknet(
            priors, g, p, ignore_thr=hp.ignore_thr))(gt, pred)
    return jax.vmap(lambda g: yolo_grid.assign(
        priors, g, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
        min_pos_iou=hp.min_pos_iou, ignore_iof_thr=hp.ignore_iof_thr))(gt)


def yolo_targets(priors: Priors, gt: Any, assignment: Any, num_classes: int
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(encoded box targets [B, N, 4], one-hot [B, N, C], matched GT boxes [B, N, 4])."""
    gt_boxes, _ = jax.vmap(targets.gather_gt)(assignment, gt)
    box_t = coders.yolo_encode(priors.boxes, gt_boxes, priors.strides)
    cls_t = jax.vmap(lambda a, g: targets.classification_targets(a, g.labels, num_classes))(
        assignment, gt)
    return box_t, cls_t, gt_boxes


def image_groups(batch_size: int, loss_cfg: Any) -> float:
    """The divisor of the summed losses: B / loss.images_per_sum."""
    return batch_size / float(loss_cfg.images_per_sum)


def trainable_mask(params: Any, norm: str) -> Any:
    """True everywhere but fixed norm statistics ('bn_eval': mean, var; 'frozen_bn': all)."""
    patterns = {"bn_eval": [r".*/norm/(mean|var)$"], "frozen_bn": [r".*/norm/.*"]}
    return freeze.trainable_mask(params, patterns.get(norm, []))


def init_params(net: Any, rng: jax.Array, image_hw: tuple[int, int]) -> Any:
    return jax.jit(net.init)(rng, jnp.zeros((1, *image_hw, 3), jnp.float32))["params"]


class YOLOv3(DenseDetector):
    def __init__(self, config: Any):
        backbone, neck, head = network(config, box_dims=4)
        super().__init__(config, head, backbone_neck=(backbone, neck))
        check_assigner(config, ("grid", "darknet"))

    def init(self, rng, image_hw):
        return init_params(self.net, rng, image_hw), self.init_state()

    def trainable_mask(self, params):
        return trainable_mask(params, self.config.model.backbone.norm)

    def priors(self, image_hw, outputs=None):
        return anchors(self.config.anchor, self.strides, image_hw)

    def assign(self, outputs, priors, gt):
        return grid_assign(self.config, priors, gt, outputs["box"])

    def losses(self, outputs, priors, gt, assignment, ctx: StepContext | None = None):
        box_t, cls_t, _ = yolo_targets(priors, gt, assignment, self.num_classes)
        t = yolov3_terms(outputs["box"], outputs["obj_logits"], outputs["cls_logits"], box_t,
                         cls_t, assignment.positive, assignment.negative)
        norm = image_groups(outputs["box"].shape[0], self.config.loss)
        sums = dict(loss_cls=t["cls"], loss_conf=t["conf"], loss_xy=t["xy"], loss_wh=t["wh"])
        terms = {k: LOSS_WEIGHTS[k] * jnp.sum(v) / norm for k, v in sums.items()}
        terms["num_pos"] = jnp.sum(assignment.positive) / assignment.positive.shape[0]
        return terms

    def level_sizes(self, priors):
        return (priors.num_priors,)  # mmdetection's nms_pre runs over all levels at once

    def decode(self, outputs, priors):
        obj = jax.nn.sigmoid(outputs["obj_logits"])
        keep = obj >= self.config.test.conf_thr
        scores = jax.nn.sigmoid(outputs["cls_logits"]) * keep[:, None]
        return decode_boxes(outputs["box"], priors), scores, obj


def make(config: Any) -> YOLOv3:
    return YOLOv3(config)

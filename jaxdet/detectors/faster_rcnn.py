"""Two-stage detectors: Faster R-CNN with FPN (Ren et al. 2015; Lin et al. 2017).

The composition of torchvision's `GeneralizedRCNN`, with static shapes throughout:

    features  = neck(backbone(images))                    # P2..P6
    rpn       = rpn_head(features)                        # first stage (jaxdet.detectors.rpn)
    proposals = generate_proposals(stop_gradient(rpn))    # [B, K, 4] + valid
    rois      = proposals + GT boxes -> max-IoU -> sample  # [B, S, 4] + valid, positives first
    box       = box_head(RoIAlign(features[:4], rois))    # [B * S, C + 1], [B * S, C, 4]

`FasterRCNN.loss_fn` sums the RPN terms (loss_rpn_cls, loss_rpn_box) and the RoI
terms (loss_cls, loss_box, and loss_mask in Mask R-CNN: `roi_losses` is the hook), as
mmdetection's `faster-rcnn_r50_fpn_1x`: RoI assignment max-IoU 0.5 / 0.5 (no
low-quality matches, crowd GT ignored), the GT boxes added to the proposals,
`roi.num_samples` (512) RoIs per image at most `roi.pos_fraction` (0.25) positive;
softmax cross-entropy over C + 1 classes / the sampled RoIs; L1 on the positives'
class-specific delta-xywh (stds 0.1 / 0.1 / 0.2 / 0.2) / the sampled RoIs.
`predict`: test proposals, the box head on them, class-specific decode, score > 0.05,
class-aware NMS 0.5, 100 detections (`jaxdet.ops.rcnn_postprocess`); with
`test.min_box_size` > 0 (torchvision: 1e-2) the (RoI, class) boxes narrower or lower
than it once clipped are not candidates.

Parameters: {'backbone', 'neck', 'rpn_head', 'box_head'[, 'mask_head']}.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import max_iou
from jaxdet.assign.sampler import balanced_sample
from jaxdet.core import coders
from jaxdet.core.boxes import clip, widths_heights
from jaxdet.core.types import Assignment, Detections, GroundTruth, Priors, ground_truth_from_batch
from jaxdet.detectors import rpn as rpn_lib
from jaxdet.detectors.dense import (
    StepContext,
    backbone_trainable_mask,
    build_backbone_neck,
    init_network,
    normalizer,
    total_loss,
)
from jaxdet.detectors.retinanet import anchors
from jaxdet.losses.cross_entropy import softmax_cross_entropy
from jaxdet.losses.smooth_l1 import l1_loss
from jaxdet.models.heads.roi_heads import BoxHead, MaskHead
from jaxdet.ops.per_shard import per_shard
from jaxdet.ops.rcnn_postprocess import rcnn_postprocess
from jaxdet.ops.roi_align import multilevel_roi_align


class TwoStageNetwork(nn.Module):
    """Backbone -> neck -> RPN head; box (and mask) heads on RoI features.

    `features(images)` -> per-level maps; `rpn(features)` -> the RPN's dict;
    `box(roi_features [R, 7, 7, C])` -> the box head's dict; `mask(roi_features
    [R, 14, 14, C])` -> [R, 28, 28, classes]. `__call__` runs every part once (init).
    """

    backbone: nn.Module
    neck: nn.Module
    rpn_head: nn.Module
    box_head: nn.Module
    mask_head: nn.Module | None = None
    box_size: int = 7
    mask_size: int = 14

    def features(self, images: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(self.neck(self.backbone(images)))

    def rpn(self, features: tuple[jax.Array, ...]) -> dict[str, jax.Array]:
        return self.rpn_head(features)

    def box(self, roi_features: jax.Array) -> dict[str, jax.Array]:
        return self.box_head(roi_features)

    def mask(self, roi_features: jax.Array) -> jax.Array:
        return self.mask_head(roi_features)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        feats = self.features(images)
        c = feats[0].shape[-1]
        out = {"rpn": self.rpn(feats),
               "box": self.box(jnp.zeros((1, self.box_size, self.box_size, c), feats[0].dtype))}
        if self.mask_head is not None:
            out["mask"] = self.mask(jnp.zeros((1, self.mask_size, self.mask_size, c),
                                              feats[0].dtype))
        return out


def roi_assign(rois: jax.Array, roi_valid: jax.Array, gt: GroundTruth, hp: Any) -> Assignment:
    """One image: rois [R, 4], roi_valid [R] -> Assignment [R] (max-IoU with
    `config.roi`'s thresholds; invalid rows -2, never sampled)."""
    n = rois.shape[0]
    priors = Priors(boxes=rois, centers=(rois[:, :2] + rois[:, 2:]) / 2,
                    strides=jnp.ones((n,), jnp.float32), levels=jnp.zeros((n,), jnp.int32),
                    level_sizes=(n,))
    a = max_iou.assign(priors, gt, pos_iou_thr=hp.pos_iou_thr, neg_iou_thr=hp.neg_iou_thr,
                       min_pos_iou=hp.min_pos_iou, match_low_quality=False,
                       ignore_iof_thr=hp.ignore_iof_thr, method="dense")
    return Assignment(gt_index=jnp.where(roi_valid, a.gt_index, -2), quality=a.quality)


def sample_rois(rng: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
                gt: GroundTruth, hp: Any, num_classes: int) -> dict[str, jax.Array]:
    """One image: proposals [K, 4] (+ valid) and its GT [M] -> the sampled RoIs.

    The GT boxes (not crowd) are appended to the proposals (`hp.add_gt`), assigned by
    `roi_assign` and `hp.num_samples` = S of them sampled (positives first). Returns
    rois [S, 4], valid [S], positive [S], labels [S] (GT class, background = C),
    gt_index [S] (matched GT row, -1 for background / padding), box_targets [S, 4]
    (delta-xywh of the matched GT, stds `hp.box_stds`). No gradient.
    """
    if hp.add_gt:
        proposals = jnp.concatenate([proposals, gt.boxes], axis=0)
        proposal_valid = jnp.concatenate([proposal_valid, gt.positive_valid], axis=0)
    a = roi_assign(proposals, proposal_valid, gt, hp)
    idx, valid = balanced_sample(rng, a.positive, a.negative, num=int(hp.num_samples),
                                 pos_fraction=float(hp.pos_fraction))
    rois = proposals[idx]
    gt_index = jnp.where(valid, a.gt_index[idx], -1)
    positive = gt_index >= 0
    safe = jnp.maximum(gt_index, 0)
    labels = jnp.where(positive, gt.labels[safe], num_classes)
    box_t = coders.delta_xywh_encode(rois, gt.boxes[safe], stds=tuple(hp.box_stds))
    out = dict(rois=rois, valid=valid, positive=positive, labels=labels, gt_index=gt_index,
               box_targets=jnp.where(positive[:, None], box_t, 0.0))
    return jax.lax.stop_gradient(out)


def box_losses(box_out: dict, sampled: dict, num_classes: int, hp: Any) -> dict[str, jax.Array]:
    """RoI head terms. box_out: 'cls_logits' [B, S, C + 1], 'box_deltas' [B, S, C|1, 4];
    sampled: `sample_rois` outputs [B, S, ...]. loss_cls: softmax CE over the sampled
    RoIs / their number; loss_box: L1 on the positives' deltas of their class / the
    same number (mmdetection's avg_factor); acc: accuracy over the sampled RoIs."""
    valid, pos, labels = sampled["valid"], sampled["positive"], sampled["labels"]
    num = normalizer(valid.astype(jnp.float32))
    ce = softmax_cross_entropy(box_out["cls_logits"], labels)
    loss_cls = jnp.sum(jnp.where(valid, ce, 0.0)) / num
    deltas = box_out["box_deltas"]
    if deltas.shape[-2] > 1:  # class-specific: the deltas of the GT class
        cls = jnp.clip(labels, 0, num_classes - 1)
        deltas = jnp.take_along_axis(deltas, cls[..., None, None], axis=-2)
    l1 = jnp.sum(l1_loss(deltas[..., 0, :], sampled["box_targets"]), axis=-1)
    loss_box = jnp.sum(jnp.where(pos, l1, 0.0)) / num
    correct = jnp.argmax(box_out["cls_logits"], axis=-1) == labels
    acc = jnp.sum(correct & valid) / num
    return dict(loss_cls=hp.cls_weight * loss_cls, loss_box=hp.box_weight * loss_box, acc=acc,
                roi_num_pos=jnp.sum(pos) / pos.shape[0])


class FasterRCNN:
    """Faster R-CNN FPN (`mask=True` in subclasses adds a mask head: Mask R-CNN)."""

    mask = False

    def __init__(self, config: Any):
        self.config = config
        self.num_classes = int(config.data.num_classes)
        self.strides = tuple(int(s) for s in config.model.strides)
        self.rpn_hp, self.roi_hp = config.rpn, config.roi
        self.roi_strides = tuple(int(s) for s in config.roi.featmap_strides)
        if self.roi_strides != self.strides[: len(self.roi_strides)]:
            raise ValueError(f"roi.featmap_strides {self.roi_strides} must be the first "
                             f"model.strides {self.strides}")
        platform = platform_lib.from_config(config)
        self.target = platform.target
        backbone, neck = build_backbone_neck(config.model, platform)
        dtype = jnp.dtype(config.model.dtype)
        r = config.roi
        box_head = BoxHead(num_classes=self.num_classes, num_fcs=r.num_fcs,
                           fc_channels=r.fc_channels, class_agnostic=r.class_agnostic,
                           dtype=dtype)
        mask_head = None
        if self.mask:
            mask_head = MaskHead(num_classes=self.num_classes, num_convs=r.mask_convs,
                                 channels=r.mask_channels, dtype=dtype,
                                 platform=platform.in_conditional())  # `lax.switch` branches
        self.net = TwoStageNetwork(backbone=backbone, neck=neck,
                                   rpn_head=self.make_rpn_head(config), box_head=box_head,
                                   mask_head=mask_head, box_size=r.box_size,
                                   mask_size=r.mask_size)

    @staticmethod
    def make_rpn_head(config: Any):
        """The first stage's head (GA-Faster R-CNN: the GA-RPN head)."""
        return rpn_lib.rpn_head(config)

    # -- the network, stage by stage ------------------------------------------------
    def _call(self, params: Any, method: Any, *args) -> Any:
        return self.net.apply({"params": params}, *args, method=method)

    def features(self, params: Any, images: jax.Array) -> tuple[jax.Array, ...]:
        return self._call(params, TwoStageNetwork.features, images)

    def roi_features(self, feats: tuple[jax.Array, ...], rois: jax.Array, valid: jax.Array,
                     size: int, images: jax.Array | None = None) -> jax.Array:
        """rois [B, R, 4] (+ valid [B, R]) -> RoIAlign features [B * R, size, size, C], run
        per data shard (`per_shard`: each device reads its own images' features). Row b's
        RoIs are on image b, or with `images` [B, R] int32 on those images, indexed within
        each data shard's rows (what `jaxdet.detectors.mask_rcnn.pack_positives` gives)."""
        h = self.roi_hp

        def align(levels, rois, valid, images=None):
            b, r = rois.shape[:2]
            if images is None:
                images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, r))
            return multilevel_roi_align(
                levels, rois.reshape(b * r, 4), images.reshape(b * r),
                strides=self.roi_strides, output_size=size,
                sampling_ratio=int(h.sampling_ratio), aligned=bool(h.aligned),
                finest_scale=float(h.finest_scale), valid=valid.reshape(b * r),
                target=self.target)

        extra = () if images is None else (images,)
        return per_shard(align, tuple(feats[: len(self.roi_strides)]), rois, valid, *extra)

    def priors(self, image_hw: tuple[int, int]) -> Priors:
        return anchors(self.config.anchor, self.strides, image_hw)

    # -- the contract -------------------------------------------------------------------
    def init(self, rng: jax.Array, image_hw: tuple[int, int]) -> tuple[Any, dict]:
        return init_network(self.net, rng, image_hw, self.config.model), {}

    def trainable_mask(self, params: Any) -> Any:
        return backbone_trainable_mask(params, self.config.model)

    def loss_fn(self, params: Any, batch: dict, rng: jax.Array, det_state: Any,
                step: jax.Array) -> tuple[jax.Array, tuple[dict, Any]]:
        """(loss, (metrics, det_state)): the RPN's and the RoI heads' terms summed."""
        images = batch["image"]
        gt = ground_truth_from_batch(batch)
        rng = jax.random.PRNGKey(0) if rng is None else rng
        rpn_rng, roi_rng = jax.random.split(rng)
        ctx = StepContext(rng=roi_rng, step=step, det_state=det_state)
        feats = self.features(params, images)
        rpn_out = self._call(params, TwoStageNetwork.rpn, feats)
        terms, props, props_valid = self.rpn_stage(
            rpn_out, tuple(images.shape[1:3]), batch["image_hw"], gt,
            StepContext(rng=rpn_rng, step=step, det_state=det_state))
        keys = jax.random.split(roi_rng, images.shape[0])
        sample = jax.vmap(lambda k, p, v, g: sample_rois(k, p, v, g, self.roi_hp,
                                                         self.num_classes))
        sampled = per_shard(sample, keys, props, props_valid, gt)  # its top-k: per shard
        terms.update(self.roi_losses(params, feats, sampled, gt, ctx))
        return total_loss(terms), (terms, det_state)

    def rpn_stage(self, rpn_out: dict, image_shape: tuple[int, int], image_hw: jax.Array,
                  gt: GroundTruth | None, ctx: StepContext | None
                  ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
        """The first stage on its outputs: (loss terms, proposals [B, K, 4], valid [B, K]);
        training when `gt` is given (train-time proposal counts), else ({}, test proposals)."""
        priors = self.priors(image_shape)
        train = gt is not None
        terms = {}
        if train:
            assignment = rpn_lib.rpn_assign(priors, gt, self.rpn_hp)
            terms = rpn_lib.rpn_losses(rpn_out, priors, gt, assignment, ctx.rng, self.rpn_hp)
        props, _, valid = rpn_lib.proposals(rpn_out, priors, image_hw, self.rpn_hp, train=train)
        return terms, props, valid

    def roi_losses(self, params: Any, feats: tuple[jax.Array, ...], sampled: dict,
                   gt: GroundTruth, ctx: StepContext) -> dict[str, jax.Array]:
        """The second stage's terms on the sampled RoIs ([B, S, ...]); Mask R-CNN adds."""
        b, s = sampled["valid"].shape
        x = self.roi_features(feats, sampled["rois"], sampled["valid"], self.roi_hp.box_size)
        out = self._call(params, TwoStageNetwork.box, x)
        out = jax.tree_util.tree_map(lambda a: a.reshape(b, s, *a.shape[1:]), out)
        return box_losses(out, sampled, self.num_classes, self.roi_hp)

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """images [B, H, W, 3], image_hw [B, 2] -> Detections [B, max_det, ...]."""
        feats = self.features(params, images)
        rpn_out = self._call(params, TwoStageNetwork.rpn, feats)
        _, props, valid = self.rpn_stage(rpn_out, tuple(images.shape[1:3]), image_hw, None, None)
        b, k = valid.shape
        x = self.roi_features(feats, props, valid, self.roi_hp.box_size)
        out = self._call(params, TwoStageNetwork.box, x)
        scores = jax.nn.softmax(out["cls_logits"], axis=-1)[:, : self.num_classes]
        deltas = out["box_deltas"]
        rois = jnp.broadcast_to(props.reshape(b * k, 1, 4), deltas.shape)
        boxes = coders.delta_xywh_decode(rois, deltas, stds=tuple(self.roi_hp.box_stds))
        t = self.config.test
        min_size = float(t.get("min_box_size", 0.0))

        def one(bx, sc, v, hw):
            if min_size > 0:  # (RoI, class) boxes under min_size once clipped: no candidate
                big = jnp.all(widths_heights(clip(bx, hw)) >= min_size, axis=-1)
                sc = jnp.where(big, sc, 0.0)
            return rcnn_postprocess(bx, sc, v, hw, score_thr=t.score_thr, nms_iou=t.nms_iou,
                                    max_det=t.max_det, pre_nms_topk=t.pre_nms_topk)

        boxes, scores, classes, det_valid = jax.vmap(one)(
            boxes.reshape(b, k, *boxes.shape[1:]), scores.reshape(b, k, -1), valid, image_hw)
        dets = Detections(boxes=boxes, scores=scores, classes=classes, valid=det_valid)
        return self.predict_masks(params, feats, dets, tuple(images.shape[1:3]))

    def predict_masks(self, params: Any, feats: tuple[jax.Array, ...], dets: Detections,
                      image_hw: tuple[int, int]) -> Detections:
        """Detections unchanged (Mask R-CNN adds their masks)."""
        del params, feats, image_hw
        return dets


def make(config: Any) -> FasterRCNN:
    return FasterRCNN(config)

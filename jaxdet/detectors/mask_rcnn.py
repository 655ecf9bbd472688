"""Mask R-CNN (He et al., ICCV 2017) with FPN: Faster R-CNN plus a mask head.

As mmdetection's `mask-rcnn_r50_fpn_1x`: the positive sampled RoIs (at most
P = num_samples x pos_fraction per image: the sampler puts positives first, so they are
the first slots) are pooled by RoIAlign at 14 x 14 and the `MaskHead` (4 convs of 256,
a 2x upsampling deconv, per-class 28 x 28 logits) predicts their masks; the loss is
the binary cross-entropy of the GT class's logits against the GT mask cropped to the
RoI and resized to 28 x 28 (`jaxdet.assign.mask_targets`), averaged over the
positives' pixels. The mask branch's shapes are static, but it need not run on all P
slots: `roi.mask_slot_buckets` (e.g. (16, 32, 64)) are smaller slot counts, each
compiled once, and `lax.switch` runs the branch of the smallest that holds every
image's positives in the step (P when none does). The loss is the same whichever
branch runs (the slots past an image's positives carry no weight); the cost follows
the number of positives, as with dynamic shapes, at the price of compiling the branch
once per bucket. At test time the final detections' boxes are pooled, the mask of
the detected class is taken (sigmoid) and pasted into the image frame at
1 / `test.mask_stride` of the padded input (`jaxdet.ops.rcnn_postprocess.paste_masks`;
`test.mask_paste='torchvision'`: `jaxdet.ops.paste_torchvision`, torchvision's integer
box corners); the evaluation binarises them at 0.5.

Needs `config.data.with_masks` (the batch's 'masks' [B, M, H / s, W / s], s =
`data.mask_stride`). Crowd GT are never positive, so never a mask target.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.assign.mask_targets import mask_targets
from jaxdet.core.types import Detections, GroundTruth
from jaxdet.detectors.dense import StepContext
from jaxdet.detectors.faster_rcnn import FasterRCNN, TwoStageNetwork
from jaxdet.losses.cross_entropy import sigmoid_binary_cross_entropy
from jaxdet.ops.paste_torchvision import paste_masks_torchvision
from jaxdet.ops.rcnn_postprocess import paste_masks

PASTE = {"mmdet": paste_masks, "torchvision": paste_masks_torchvision}


class MaskRCNN(FasterRCNN):
    mask = True

    def __init__(self, config: Any):
        if not config.data.with_masks:
            raise ValueError("mask_rcnn needs instance masks: set config.data.with_masks=True "
                             "(the batch field 'masks')")
        super().__init__(config)
        self.max_pos = int(config.roi.num_samples * config.roi.pos_fraction)
        buckets = tuple(int(n) for n in config.roi.get("mask_slot_buckets", ()))
        if any(n <= 0 for n in buckets):
            raise ValueError(f"roi.mask_slot_buckets={buckets}: expected positive slot counts")
        self.mask_slots = tuple(sorted({n for n in buckets if n < self.max_pos})) + (
            self.max_pos,)
        self.mask_stride = int(config.data.mask_stride)
        self.mask_paste = config.test.get("mask_paste", "mmdet")
        if self.mask_paste not in PASTE:
            raise ValueError(f"test.mask_paste={self.mask_paste!r} not in {sorted(PASTE)}")

    def roi_losses(self, params: Any, feats: tuple[jax.Array, ...], sampled: dict,
                   gt: GroundTruth, ctx: StepContext) -> dict[str, jax.Array]:
        terms = super().roi_losses(params, feats, sampled, gt, ctx)
        if gt.masks is None:
            raise ValueError("mask_rcnn: the batch has no 'masks' (config.data.with_masks)")
        slots = self.mask_slots
        if len(slots) == 1:
            loss = self.mask_loss(params, feats, sampled, gt, slots[0])
        else:  # the smallest slot count that holds every image's positives
            most = jnp.max(jnp.sum(sampled["positive"][:, : self.max_pos], axis=1))
            branch = jnp.sum(jnp.asarray(slots[:-1]) < most)
            loss = jax.lax.switch(branch, [
                functools.partial(self.mask_loss, params, feats, sampled, gt, p) for p in slots
            ])
        terms["loss_mask"] = self.roi_hp.mask_weight * loss
        return terms

    def mask_loss(self, params: Any, feats: tuple[jax.Array, ...], sampled: dict,
                  gt: GroundTruth, p: int) -> jax.Array:
        """The mask loss on the first p sampled slots of each image (all of its positives
        when p >= their count): BCE of the GT class's 28 x 28 logits, averaged over the
        positives' pixels."""
        rois, pos = sampled["rois"][:, :p], sampled["positive"][:, :p]
        gt_index = jnp.where(pos, sampled["gt_index"][:, :p], -1)
        size = 2 * int(self.roi_hp.mask_size)
        target, t_valid = jax.vmap(
            lambda r, g, m: mask_targets(r, g, m, mask_stride=self.mask_stride, size=size)
        )(rois, gt_index, gt.masks)
        x = self.roi_features(feats, rois, pos, self.roi_hp.mask_size)
        logits = self._call(params, TwoStageNetwork.mask, x)  # [B * p, 28, 28, C]
        b = rois.shape[0]
        labels = jnp.clip(sampled["labels"][:, :p], 0, self.num_classes - 1).reshape(-1)
        logits = jnp.take_along_axis(logits, labels[:, None, None, None], axis=-1)[..., 0]
        bce = sigmoid_binary_cross_entropy(logits, target.reshape(b * p, size, size))
        w = (pos & t_valid).reshape(-1).astype(jnp.float32)
        num = jax.lax.stop_gradient(jnp.maximum(jnp.sum(w), 1.0)) * size * size
        return jnp.sum(bce * w[:, None, None]) / num

    def predict_masks(self, params: Any, feats: tuple[jax.Array, ...], dets: Detections,
                      image_hw: tuple[int, int]) -> Detections:
        """Adds masks [B, K, H / s, W / s] (probabilities, s = config.test.mask_stride)."""
        b, k = dets.valid.shape
        x = self.roi_features(feats, dets.boxes, dets.valid, self.roi_hp.mask_size)
        logits = self._call(params, TwoStageNetwork.mask, x)
        cls = jnp.clip(dets.classes, 0, self.num_classes - 1).reshape(-1)
        probs = jax.nn.sigmoid(jnp.take_along_axis(logits, cls[:, None, None, None], -1)[..., 0])
        s = int(self.config.test.mask_stride)
        out_hw = (image_hw[0] // s, image_hw[1] // s)
        paste = PASTE[self.mask_paste]
        masks = jax.vmap(lambda m, bx: paste(m, bx, out_hw=out_hw, stride=s))(
            probs.reshape(b, k, *probs.shape[1:]), dets.boxes)
        masks = jnp.where(dets.valid[:, :, None, None], masks, 0.0)
        return dets.replace(masks=masks)


def make(config: Any) -> MaskRCNN:
    return MaskRCNN(config)

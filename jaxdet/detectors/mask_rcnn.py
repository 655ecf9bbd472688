"""Mask R-CNN (He et al., ICCV 2017) with FPN: Faster R-CNN plus a mask head.

As mmdetection's `mask-rcnn_r50_fpn_1x`: the positive sampled RoIs (at most
P = num_samples x pos_fraction per image) are pooled by RoIAlign at 14 x 14 and the
`MaskHead` (4 convs of 256, a 2x upsampling deconv, per-class 28 x 28 logits) predicts
their masks; the loss is the binary cross-entropy of the GT class's logits against the
GT mask cropped to the RoI and resized to 28 x 28 (`jaxdet.assign.mask_targets`),
averaged over the positives' pixels. The mask branch's shapes are static, but it need
not run on B x P RoIs: the positives of the images of a data shard are packed one image
after the other (`pack_positives`) into b x p rows (b images per shard), p one of
`roi.mask_slot_buckets` (e.g. (16, 32, 64)) or P, each compiled once; `lax.switch` runs
the branch of the smallest p whose rows hold every shard's positives. The loss is the
same whichever branch runs; the cost follows the number of positives, as with dynamic
shapes, at the price of compiling the branch once per bucket. At test time the final
detections' boxes are pooled, the mask of the detected class is taken (sigmoid) and
pasted into the image frame at 1 / `test.mask_stride` of the padded input
(`jaxdet.ops.rcnn_postprocess.paste_masks`; `test.mask_paste='torchvision'`:
`jaxdet.ops.paste_torchvision`, torchvision's integer box corners); the evaluation
binarises them at 0.5.

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
from jaxdet.ops.per_shard import data_axis_size, per_shard
from jaxdet.ops.rcnn_postprocess import paste_masks

PASTE = {"mmdet": paste_masks, "torchvision": paste_masks_torchvision}


def pack_positives(positive: jax.Array, p: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The positive slots of b images one image after the other in b x p rows.

    positive: [b, S] bool. Returns (image [b * p] int32, slot [b * p] int32, valid
    [b * p] bool): row t is slot `slot[t]` of image `image[t]`, the positives of image 0
    first, each image's in slot order; rows past the positives (and positives past
    b * p rows) are invalid and point at slot 0 of image 0.
    """
    b, s = positive.shape
    count = jnp.sum(positive, axis=1, dtype=jnp.int32)
    ends = jnp.cumsum(count)
    t = jnp.arange(b * p, dtype=jnp.int32)
    image = jnp.minimum(jnp.searchsorted(ends, t, side="right"), b - 1).astype(jnp.int32)
    rank = jnp.clip(t - (ends - count)[image], 0, s - 1)  # among the image's positives
    order = jnp.argsort(~positive, axis=1, stable=True).astype(jnp.int32)  # positives first
    valid = t < ends[-1]
    return (jnp.where(valid, image, 0), jnp.where(valid, order[image, rank], 0), valid)


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
        # The branch's operands are only what it reads (the mask head's parameters, the
        # RoI levels, four sampled fields, the GT masks), and it is rematerialised: under
        # `grad`, `lax.switch` makes every branch return the residuals of all branches,
        # zero-filled, which for the mask head's activations cost a second per R50 step.
        args = ({"mask_head": params["mask_head"]}, tuple(feats[: len(self.roi_strides)]),
                {k: sampled[k] for k in ("rois", "positive", "labels", "gt_index")}, gt.masks)
        if len(slots) == 1:
            loss = self.mask_loss(*args, slots[0])
        else:  # the smallest p whose b x p rows hold the positives of every data shard
            count = jnp.sum(sampled["positive"][:, : self.max_pos], axis=1)
            n = data_axis_size()
            shards = n if count.shape[0] % n == 0 else 1
            per = count.shape[0] // shards
            need = -(-jnp.max(jnp.sum(count.reshape(shards, per), axis=1)) // per)
            branch = jnp.sum(jnp.asarray(slots[:-1]) < need)
            loss = jax.lax.switch(branch, [
                jax.checkpoint(functools.partial(self.mask_loss, p=p)) for p in slots], *args)
        terms["loss_mask"] = self.roi_hp.mask_weight * loss
        return terms

    def mask_loss(self, params: Any, feats: tuple[jax.Array, ...], sampled: dict,
                  masks: jax.Array, p: int) -> jax.Array:
        """The mask loss on the positives packed into b x p rows per data shard of b images
        (all of them when the shard has at most b x p): BCE of the GT class's 28 x 28
        logits, averaged over the positives' pixels. masks: the GT masks [B, M, Hm, Wm]."""
        size = 2 * int(self.roi_hp.mask_size)

        def pack(rois, positive, labels, gt_index, masks):  # one data shard
            b, m = masks.shape[:2]
            image, slot, ok = pack_positives(positive[:, : self.max_pos], p)
            g = gt_index[image, slot]
            ok = ok & (g >= 0)
            target, t_valid = mask_targets(
                rois[image, slot], jnp.where(ok, image * m + g, -1),
                masks.reshape(b * m, *masks.shape[2:]), mask_stride=self.mask_stride, size=size)
            rows = lambda x: x.reshape(b, p, *x.shape[1:])  # noqa: E731
            return (rows(rois[image, slot]), rows(image), rows(labels[image, slot]),
                    rows(target), rows(ok & t_valid))

        rois, images, labels, target, w = per_shard(
            pack, sampled["rois"], sampled["positive"], sampled["labels"],
            sampled["gt_index"], masks)
        x = self.roi_features(feats, rois, w, self.roi_hp.mask_size, images=images)
        logits = self._call(params, TwoStageNetwork.mask, x)  # [B * p, 28, 28, C]
        labels = jnp.clip(labels, 0, self.num_classes - 1).reshape(-1)
        logits = jnp.take_along_axis(logits, labels[:, None, None, None], axis=-1)[..., 0]
        bce = sigmoid_binary_cross_entropy(logits, target.reshape(-1, size, size))
        w = w.reshape(-1).astype(jnp.float32)
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

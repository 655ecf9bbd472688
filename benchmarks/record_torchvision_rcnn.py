"""Records torchvision Faster / Mask R-CNN reference outputs for `jaxdet.interop.torchvision`.

    PY benchmarks/record_torchvision_rcnn.py [--out tests/fixtures/torchvision_rcnn]
    PY benchmarks/record_torchvision_rcnn.py --r50 maskrcnn_resnet50_fpn --out /tmp/tv_r50

`PY` is a Python with torch and torchvision (not jaxdet's dependencies; torch 2.14.1 +
torchvision 0.29.1 made the committed fixtures). Default: a NARROW Mask R-CNN built from
torchvision's own classes (`MaskRCNN`, `BackboneWithFPN` over a ResNet-18 subclass of base
width 4, FPN of 16 channels, `TwoMLPHead` of 32, `MaskRCNNHeads` 4 x 16, 3 classes +
background), so its state-dict keys are torchvision's; `--r50` records the full
`fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` (weights=None) instead. Every
parameter and BN statistic is redrawn from a fixed seed (torchvision's init leaves the
RPN objectness near 0 and the BN statistics trivial, which would test nothing).
Eval mode, two images of 128 x 160 and 128 x 144 (min_size 128 / max_size 160: the
transform does not resize; the second is zero-padded to 128 x 160 after normalisation).

Writes (np.savez_compressed) `weights.npz` (the state dict, float32) and
`reference.npz`: image0 / image1 (uint8 HWC), image_hw [2, 2], feat0..feat4 (P2..P6,
NCHW), anchors [N, 4], objectness [2, N], rpn_deltas [2, N, 4], proposals [2, P, 4] /
proposal_scores [2, P] (zero-padded) / num_proposals [2], roi_levels [sum P] (the
pooler's level of each proposal), class_logits [sum P, C + 1], box_regression
[sum P, 4 (C + 1)], mask_boxes [2, M, 4] / mask_logits [2 M, C + 1, 28, 28] (the first
M detections of each image), det_boxes [2, 100, 4] / det_scores / det_labels (zero-padded)
/ num_dets [2], det_masks0 / det_masks1 [M, h_i, w_i] (the first M detections' pasted
probabilities x 255, uint8, in each image's own size).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

NUM_MASKS = 6
# Weight std multipliers (of 1 / sqrt(fan_in)): moderate RPN / class logits (distinct
# scores, no ties at sigmoid 1.0), peaked mask logits.
SCALE = {"head.bbox_pred": 0.3, "head.cls_logits": 1.5, "box_predictor.cls_score": 3.0,
         "box_predictor.bbox_pred": 1.0, "mask_predictor.mask_fcn_logits": 10.0}


def images() -> list[np.ndarray]:
    """Two uint8 images (96 x 128, 96 x 112) of coloured rectangles / discs on a gradient."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((128, 160), (128, 144)):
        yy, xx = np.mgrid[:h, :w]
        img = np.stack([xx * 200 / w, yy * 200 / h, (xx + yy) * 100 / (h + w)], -1) + 20
        for _ in range(5):
            x0, y0 = rng.integers(0, w - 16), rng.integers(0, h - 16)
            bw, bh = rng.integers(12, 48, 2)
            colour = rng.integers(0, 256, 3)
            if rng.random() < 0.5:
                img[y0:y0 + bh, x0:x0 + bw] = colour
            else:
                inside = ((xx - x0 - bw / 2) / bw * 2) ** 2 + ((yy - y0 - bh / 2) / bh * 2) ** 2
                img[inside <= 1] = colour
        img += rng.normal(0, 8, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def narrow_model(num_classes: int = 4, width: int = 4, channels: int = 16, rep: int = 32,
                 mask_channels: int = 16):
    """torchvision's MaskRCNN over a ResNet-18 of base width `width` (FrozenBatchNorm2d)."""
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import BasicBlock, ResNet
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    class NarrowResNet(ResNet):
        """torchvision's ResNet (same module names) with `width` stem channels and
        width * 2**i planes in stage i + 1."""

        def __init__(self, block, layers, width):
            super().__init__(block, layers, norm_layer=FrozenBatchNorm2d)
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = FrozenBatchNorm2d(width)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
            self.fc = nn.Linear(8 * width * block.expansion, 10)

    body = NarrowResNet(BasicBlock, [2, 2, 2, 2], width)
    layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
    backbone = BackboneWithFPN(body, layers, [width * 2**i for i in range(4)], channels,
                               extra_blocks=LastLevelMaxPool())
    return MaskRCNN(
        backbone, num_classes=None, min_size=128, max_size=160,
        box_head=TwoMLPHead(channels * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        mask_head=MaskRCNNHeads(channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
    )


def randomize(model, seed: int = 0) -> None:
    """Redraws every parameter / BN buffer: weights N(0, 1 / fan_in) times `SCALE`,
    biases N(0, 0.1^2), BN affine U(0.5, 1.5) / N(0, 0.1^2), running mean N(0, 0.1^2),
    running var U(0.5, 2)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean") or (t.ndim == 1 and name.endswith("bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # BN weight
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                transposed = "conv5_mask" in name  # ConvTranspose2d: [in, out, kh, kw]
                fan_in = t.shape[0] if transposed else int(np.prod(t.shape[1:]))
                module = name.rsplit(".", 1)[0].split(".", 1)[-1]  # e.g. 'head.cls_logits'
                std = (1.0 / fan_in) ** 0.5 * SCALE.get(module, 1.0)
                t.copy_(torch.randn(t.shape, generator=g) * std)


def balance_classes(model, imgs: list[np.ndarray]) -> None:
    """Shifts the classifier's biases by minus their mean logit over the test proposals,
    so that no class wins on every RoI (the random features share a large mean)."""
    import torch

    model.eval()
    x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in imgs]
    with torch.no_grad():
        batch, _ = model.transform(x)
        feats = model.backbone(batch.tensors)
        boxes, _ = model.rpn(batch, feats)
        rh = model.roi_heads
        logits, _ = rh.box_predictor(rh.box_head(rh.box_roi_pool(feats, boxes,
                                                                  batch.image_sizes)))
        rh.box_predictor.cls_score.bias -= logits.mean(0)


def pad_rows(rows: list[np.ndarray], n: int) -> np.ndarray:
    out = np.zeros((len(rows), n, *rows[0].shape[1:]), rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:n]
    return out


def record(model, imgs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the model stage by stage and end to end; the arrays of `reference.npz`."""
    import torch
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    model.eval()
    x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in imgs]
    ref = {f"image{i}": im for i, im in enumerate(imgs)}
    with torch.no_grad():
        batch, _ = model.transform(x)
        sizes = batch.image_sizes
        assert [tuple(s) for s in sizes] == [im.shape[:2] for im in imgs], sizes  # no resize
        feats = model.backbone(batch.tensors)
        fl = list(feats.values())
        rpn = model.rpn
        obj, reg = rpn.head(fl)
        anchors = rpn.anchor_generator(batch, fl)
        per_level = [o[0].numel() for o in obj]
        objectness, deltas = concat_box_prediction_layers(obj, reg)
        props = rpn.box_coder.decode(deltas, anchors).view(len(x), -1, 4)
        boxes, scores = rpn.filter_proposals(props, objectness, sizes, per_level)
        rpn_boxes, _ = rpn(batch, feats)
        assert all(torch.equal(a, b) for a, b in zip(boxes, rpn_boxes))
        rh = model.roi_heads
        pooled = rh.box_roi_pool(feats, boxes, sizes)
        levels = rh.box_roi_pool.map_levels(boxes)
        class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
        dets = model(x)
        mask_boxes = [d["boxes"][:NUM_MASKS] for d in dets]
        if rh.has_mask():
            pooled = rh.mask_roi_pool(feats, mask_boxes, sizes)
            ref["mask_logits"] = rh.mask_predictor(rh.mask_head(pooled)).numpy()
    ref["image_hw"] = np.array([list(s) for s in sizes], np.int32)
    for i, f in enumerate(fl):
        ref[f"feat{i}"] = f.numpy()
    ref["anchors"] = anchors[0].numpy()
    ref["objectness"] = objectness.reshape(len(x), -1).numpy()
    ref["rpn_deltas"] = deltas.reshape(len(x), -1, 4).numpy()
    n = max(len(b) for b in boxes)
    ref["proposals"] = pad_rows([b.numpy() for b in boxes], n)
    ref["proposal_scores"] = pad_rows([s.numpy() for s in scores], n)
    ref["num_proposals"] = np.array([len(b) for b in boxes], np.int32)
    ref["roi_levels"] = levels.numpy().astype(np.int32)
    ref["class_logits"] = class_logits.numpy()
    ref["box_regression"] = box_regression.numpy()
    ref["mask_boxes"] = pad_rows([b.numpy() for b in mask_boxes], NUM_MASKS)
    k = model.roi_heads.detections_per_img
    ref["det_boxes"] = pad_rows([d["boxes"].numpy() for d in dets], k)
    ref["det_scores"] = pad_rows([d["scores"].numpy() for d in dets], k)
    ref["det_labels"] = pad_rows([d["labels"].numpy().astype(np.int32) for d in dets], k)
    ref["num_dets"] = np.array([len(d["boxes"]) for d in dets], np.int32)
    if "masks" in dets[0]:
        for i, d in enumerate(dets):
            m = d["masks"][:NUM_MASKS, 0].numpy()
            ref[f"det_masks{i}"] = np.round(m * 255).astype(np.uint8)
    return ref


def check_faster_rcnn(mask_model, imgs: list[np.ndarray]) -> None:
    """A FasterRCNN with the Mask R-CNN's weights detects the same boxes."""
    import torch
    from torchvision.models.detection import FasterRCNN

    rh = mask_model.roi_heads
    faster = FasterRCNN(mask_model.backbone, num_classes=None, min_size=128, max_size=160,
                        rpn_head=mask_model.rpn.head,
                        box_head=rh.box_head, box_predictor=rh.box_predictor).eval()
    x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in imgs]
    with torch.no_grad():
        a, b = faster(x), mask_model(x)
    for da, db in zip(a, b):
        assert torch.equal(da["boxes"], db["boxes"]) and torch.equal(da["labels"], db["labels"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "torchvision_rcnn"))
    ap.add_argument("--r50", default="", choices=("", "fasterrcnn_resnet50_fpn",
                                                  "maskrcnn_resnet50_fpn"))
    args = ap.parse_args()
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.r50:
        model = getattr(torchvision.models.detection, args.r50)(
            weights=None, weights_backbone=None, min_size=128, max_size=160)
    else:
        model = narrow_model()
    randomize(model)
    imgs = images()
    balance_classes(model, imgs)
    ref = record(model, imgs)
    if not args.r50:
        check_faster_rcnn(model, imgs)
    os.makedirs(args.out, exist_ok=True)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()
          if v.is_floating_point()}
    np.savez_compressed(os.path.join(args.out, "weights.npz"), **sd)
    np.savez_compressed(os.path.join(args.out, "reference.npz"), **ref)
    print(f"torch {torch.__version__} torchvision {torchvision.__version__}: "
          f"{sum(v.size for v in sd.values())} parameters, proposals {ref['num_proposals']}, "
          f"detections {ref['num_dets']} -> {args.out}")


if __name__ == "__main__":
    main()

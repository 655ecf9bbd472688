"""Two-stage training targets: proposals, RoI sampling and mask targets, jitted.

    python benchmarks/rcnn_targets_bench.py [--images 8] [--repeats 10] [--torch-python PY]

What Faster / Mask R-CNN compute between the RPN and the RoI heads in a train step,
on B = 8 images of 800 x 1333 (padded to 800 x 1344), the R50 config's anchors on
P2-P6 (268,569 per image) and random inputs from one seed:

1. proposals: `jaxdet.detectors.rpn.proposals` (`generate_proposals`: per level the
   2000 best, decode, clip, NMS 0.7 per level, 1000 kept: `config.rpn`'s train values)
   from random objectness logits and deltas;
2. RoI sampling: `jaxdet.detectors.faster_rcnn.sample_rois` (the GT boxes appended,
   max-IoU 0.5 / 0.5, `balanced_sample` of 512 at 0.25, the box targets);
3. mask targets: `jaxdet.assign.mask_targets` of the sampled positives (the first 128
   slots, as `MaskRCNN.roi_losses`) from GT masks at `data.mask_stride` 4.

GT: 1-20 random boxes per image (padded to `data.max_boxes`, 100) with elliptic masks;
objectness logits N(0, 1) plus 4 on the anchors of IoU >= 0.5 with a GT box, deltas
N(0, 0.2^2).
Prints the median wall time per image over `--repeats` calls after compilation (and
the process CPU time per image), for the three stages together and each alone.
With `--torch-python PY` (a Python with torch and torchvision, not jaxdet
dependencies) the inputs are saved to a temporary .npz and
`benchmarks/torchvision_rcnn_targets.py` runs torchvision's defaults on them right
after; the ratios jaxdet / torchvision are printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.mask_rcnn import mask_rcnn_r50_fpn_1x_coco  # noqa: E402
from jaxdet.assign.mask_targets import mask_targets  # noqa: E402
from jaxdet.core.types import GroundTruth  # noqa: E402
from jaxdet.detectors import rpn as rpn_lib  # noqa: E402
from jaxdet.detectors.faster_rcnn import sample_rois  # noqa: E402
from jaxdet.detectors.retinanet import anchors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PADDED_HW, IMAGE_HW = (800, 1344), (800, 1333)
STAGES = ("proposals", "sampling", "mask targets")


def max_iou(anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N] the largest IoU of each anchor [N, 4] with the boxes [n, 4]."""
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    lt = np.maximum(anchors[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(anchors[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return np.max(inter / (area(anchors)[:, None] + area(boxes)[None] - inter), axis=1)


def make_inputs(anchor_boxes: np.ndarray, images: int, max_boxes: int, mask_stride: int,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random RPN outputs and GT (boxes inside IMAGE_HW, elliptic masks) as NumPy:
    objectness logits N(0, 1), 4 more for anchors of IoU >= 0.5 with a GT box (a
    trained RPN's scores peak on the objects), deltas N(0, 0.2^2)."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    n = rng.integers(1, 21, size=images)
    xy = rng.uniform(0, 0.85, size=(images, max_boxes, 2)) * [w, h]
    wh = rng.uniform(0.02, 0.5, size=(images, max_boxes, 2)) * [w, h]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
    valid = np.arange(max_boxes)[None] < n[:, None]
    boxes = np.where(valid[..., None], boxes, 0.0).astype(np.float32)
    hm, wm = PADDED_HW[0] // mask_stride, PADDED_HW[1] // mask_stride
    masks = np.zeros((images, max_boxes, hm, wm), np.uint8)
    yy, xx = np.mgrid[0:hm, 0:wm] + 0.5
    for b, m in zip(*np.nonzero(valid)):
        x1, y1, x2, y2 = boxes[b, m] / mask_stride
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        masks[b, m] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    num_anchors = anchor_boxes.shape[0]
    objectness = rng.normal(size=(images, num_anchors)).astype(np.float32)
    for b in range(images):
        objectness[b] += 4.0 * (max_iou(anchor_boxes, boxes[b, : n[b]]) >= 0.5)
    return dict(
        objectness=objectness,
        deltas=(0.2 * rng.normal(size=(images, num_anchors, 4))).astype(np.float32),
        image_hw=np.tile(np.asarray(IMAGE_HW, np.int32), (images, 1)),
        boxes=boxes, labels=rng.integers(0, 80, size=(images, max_boxes)).astype(np.int32),
        valid=valid, ignore=np.zeros((images, max_boxes), bool), masks=masks,
    )


def stage_fns(config):
    """(proposals, sampling, mask targets) as batched functions, and the anchors."""
    priors = anchors(config.anchor, tuple(config.model.strides), PADDED_HW)
    rpn_hp, roi_hp = config.rpn, config.roi
    max_pos = int(roi_hp.num_samples * roi_hp.pos_fraction)
    stride = int(config.data.mask_stride)

    def proposals(objectness, deltas, image_hw):
        out = dict(objectness=objectness, box_deltas=deltas)
        boxes, _, valid = rpn_lib.proposals(out, priors, image_hw, rpn_hp, train=True)
        return boxes, valid

    def sampling(rng, props, props_valid, gt):
        keys = jax.random.split(rng, props.shape[0])
        return jax.vmap(lambda k, p, v, g: sample_rois(k, p, v, g, roi_hp, 80))(
            keys, props, props_valid, gt)

    def targets(sampled, masks):
        rois, pos = sampled["rois"][:, :max_pos], sampled["positive"][:, :max_pos]
        gt_index = jnp.where(pos, sampled["gt_index"][:, :max_pos], -1)
        return jax.vmap(lambda r, g, m: mask_targets(r, g, m, mask_stride=stride, size=28))(
            rois, gt_index, masks)

    return (proposals, sampling, targets), priors


def timed(fn, args, repeats: int) -> tuple[float, float, object]:
    """fn jitted and compiled -> (median wall s, median CPU s, output) over `repeats` calls."""
    compiled = jax.jit(fn).lower(*args).compile()
    out = jax.block_until_ready(compiled(*args))
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu)), out


def run_jaxdet(inputs: dict, config, repeats: int) -> dict[str, float]:
    (proposals, sampling, targets), _ = stage_fns(config)
    x = jax.device_put(inputs)
    gt = GroundTruth(boxes=x["boxes"], labels=x["labels"], valid=x["valid"],
                     ignore=x["ignore"], masks=x["masks"])
    rng = jax.random.PRNGKey(0)
    b = x["objectness"].shape[0]

    def total(objectness, deltas, image_hw, gt, rng):
        props, valid = proposals(objectness, deltas, image_hw)
        sampled = sampling(rng, props, valid, gt)
        return sampled, targets(sampled, gt.masks)

    results = {}
    wall, cpu, (sampled, (_, t_valid)) = timed(
        total, (x["objectness"], x["deltas"], x["image_hw"], gt, rng), repeats)
    results["total"] = wall / b
    print(f"jaxdet  {'total':14s} {wall / b * 1e3:8.2f} ms / image  ({cpu / b * 1e3:8.2f} CPU-ms)"
          f"  | {float(jnp.mean(jnp.sum(sampled['positive'], -1))):.1f} positives, "
          f"{float(jnp.mean(jnp.sum(t_valid, -1))):.1f} mask targets per image")
    wall, cpu, (props, valid) = timed(proposals, (x["objectness"], x["deltas"], x["image_hw"]),
                                      repeats)
    parts = [(wall, cpu)]
    wall, cpu, sampled = timed(sampling, (rng, props, valid, gt), repeats)
    parts.append((wall, cpu))
    wall, cpu, _ = timed(targets, (sampled, gt.masks), repeats)
    parts.append((wall, cpu))
    for name, (wall, cpu) in zip(STAGES, parts):
        results[name] = wall / b
        print(f"jaxdet  {name:14s} {wall / b * 1e3:8.2f} ms / image  "
              f"({cpu / b * 1e3:8.2f} CPU-ms)")
    return results


def run_torch(python: str, inputs: dict, priors, level_sizes, config, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rcnn_targets_inputs.npz")
        np.savez(path, anchors=np.asarray(priors.boxes), level_sizes=np.asarray(level_sizes),
                 mask_stride=int(config.data.mask_stride), **inputs)
        cmd = [python, os.path.join(HERE, "torchvision_rcnn_targets.py"), path,
               "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--post-nms-topk", str(args.torch_post_nms_topk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results = {}
    for line in out.strip().splitlines():
        print(f"torch   {line}")
        if "=" in line and line.split("=")[0] in ("total", *STAGES):
            key, value = line.split("=")
            results[key] = float(value.split()[0]) / 1e3
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-boxes", type=int, default=0, help="GT rows (0: data.max_boxes)")
    ap.add_argument("--torch-python", default="",
                    help="a Python with torch + torchvision: run the reference after")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--torch-post-nms-topk", type=int, default=0,
                    help="torchvision's proposals per image (0: its default, 2000)")
    args = ap.parse_args()
    config = mask_rcnn_r50_fpn_1x_coco.get_config()
    config.data.num_classes = 80
    _, priors = stage_fns(config)
    max_boxes = args.max_boxes or int(config.data.max_boxes)
    inputs = make_inputs(np.asarray(priors.boxes), args.images, max_boxes,
                         int(config.data.mask_stride))
    print(f"devices: {jax.devices()}; {args.images} images of {IMAGE_HW} padded to {PADDED_HW}, "
          f"{priors.boxes.shape[0]} anchors, {inputs['valid'].sum(1).tolist()} GT boxes")
    ours = run_jaxdet(inputs, config, args.repeats)
    if args.torch_python:
        ref = run_torch(args.torch_python, inputs, priors, priors.level_sizes, config, args)
        for key in ("total", *STAGES):
            if key in ref:
                print(f"jaxdet / torchvision, {key}: {ours[key] / ref[key]:.2f}x")


if __name__ == "__main__":
    main()

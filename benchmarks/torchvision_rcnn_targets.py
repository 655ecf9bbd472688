"""The reference of rcnn_targets_bench: torchvision's proposals, RoI sampling, mask targets.

    python benchmarks/torchvision_rcnn_targets.py INPUTS.npz [--repeats 10] [--threads 2]

Runs with any Python that has torch and torchvision (not jaxdet's dependencies);
`rcnn_targets_bench.py --torch-python PYTHON` writes INPUTS.npz (random RPN outputs,
anchors, GT boxes and masks) and runs this right after. The RPN and RoI heads are
those of `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)`
in training mode, i.e. torchvision's defaults: 2000 proposals per level before NMS
0.7, 2000 per image after (`--post-nms-topk` changes it), RoI sampling of 512 at 0.25
positive with IoU 0.5 / 0.5 and the GT boxes added. Timed, per batch, without gradient:

1. proposals: `rpn.box_coder.decode` of every anchor's deltas +
   `RegionProposalNetwork.filter_proposals` (as `RegionProposalNetwork.forward`);
2. sampling: `RoIHeads.select_training_samples`;
3. mask targets: `project_masks_on_boxes` (28 x 28) of each image's positive sampled
   RoIs, as `RoIHeads.forward` and `maskrcnn_loss`, from the GT masks at the input
   resolution (torchvision's; the .npz holds them at 1/mask_stride, repeated here).

Prints the median milliseconds per image over `--repeats` runs after one warm-up,
for the three together (`total=`) and each alone (`proposals=`, `sampling=`,
`mask targets=`).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--post-nms-topk", type=int, default=0,
                    help="proposals per image in training (0: torchvision's default)")
    args = ap.parse_args()
    import numpy as np
    import torch
    import torchvision
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    if args.threads:
        torch.set_num_threads(args.threads)
    data = np.load(args.inputs)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    model.train()
    rpn, roi_heads = model.rpn, model.roi_heads
    if args.post_nms_topk:
        rpn._post_nms_top_n["training"] = args.post_nms_topk
    b = data["objectness"].shape[0]
    s = int(data["mask_stride"])
    anchors = [torch.from_numpy(data["anchors"])] * b
    objectness = torch.from_numpy(data["objectness"]).reshape(-1, 1)
    deltas = torch.from_numpy(data["deltas"]).reshape(-1, 4)
    image_shapes = [tuple(int(v) for v in hw) for hw in data["image_hw"]]
    level_sizes = [int(n) for n in data["level_sizes"]]
    targets = []
    for i in range(b):
        keep = data["valid"][i]
        masks = data["masks"][i][keep].repeat(s, axis=1).repeat(s, axis=2)
        targets.append(dict(boxes=torch.from_numpy(data["boxes"][i][keep]),
                            labels=torch.from_numpy(data["labels"][i][keep]).long() + 1,
                            masks=torch.from_numpy(np.ascontiguousarray(masks))))

    def proposals():
        boxes = rpn.box_coder.decode(deltas, anchors).view(b, -1, 4)
        return rpn.filter_proposals(boxes, objectness, image_shapes, level_sizes)[0]

    def sampling(props):
        return roi_heads.select_training_samples(props, targets)

    def mask_targets(sampled):
        rois, matched_idxs, labels, _ = sampled
        out = []
        for i in range(b):
            pos = torch.where(labels[i] > 0)[0]
            out.append(project_masks_on_boxes(targets[i]["masks"], rois[i][pos],
                                              matched_idxs[i][pos], 28))
        return out

    def timed(fn, *a):
        times, out = [], None
        for r in range(args.repeats + 1):
            t = time.perf_counter()
            out = fn(*a)
            if r:  # the first run warms up
                times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3 / b, out

    with torch.no_grad():
        total, _ = timed(lambda: mask_targets(sampling(proposals())))
        t_props, props = timed(proposals)
        t_sampling, sampled = timed(sampling, props)
        t_masks, masks = timed(mask_targets, sampled)
    pos = sum(int(m.shape[0]) for m in masks) / b
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads; {rpn.post_nms_top_n()} proposals per image, "
          f"{sum(int(p.shape[0]) for p in props) / b:.0f} kept; {pos:.1f} mask targets per image")
    print(f"total={total:.2f} ms / image")
    print(f"proposals={t_props:.2f} ms / image")
    print(f"sampling={t_sampling:.2f} ms / image")
    print(f"mask targets={t_masks:.2f} ms / image")


if __name__ == "__main__":
    main()
